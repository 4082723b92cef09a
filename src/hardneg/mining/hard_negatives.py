"""``mine_hard_negatives`` with the signature and output of ``sentence_transformers.util.mine_hard_negatives``.

A ``datasets.Dataset`` of (anchor, positive) pairs and a loaded ``SentenceTransformer`` go in; a
``Dataset`` in sentence-transformers' ``triplet``, ``n-tuple``, ``labeled-pair`` or ``labeled-list``
layout comes out, so code written for sentence-transformers switches by changing one import.
hardneg's further knobs (duplicate and label filters, a guide model, β-tilted sampling, approximate
indexes, bf16 encoding, the summary) are keyword arguments.

The mining itself is hardneg's one pipeline, `hardneg.mining.pipeline.mine_texts` (what ``hardneg mine``
runs): this module only maps sentence-transformers' arguments onto a `hardneg.mining.mine.MineConfig`,
its prompts onto the texts the model encodes, and its dataset layout onto
`hardneg.mining.formats.st_columns`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from hardneg._optional import require
from hardneg.io import check_writable
from hardneg.mining.encode import load_sentence_model
from hardneg.mining.formats import st_columns
from hardneg.mining.mine import SAMPLING, MineConfig
from hardneg.mining.pairs import group_pairs
from hardneg.mining.pipeline import check_texts, mine_texts
from hardneg.mining.summary import format_summary, save_summary

ST_OUTPUT_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
#: sentence-transformers' sampling names ("top", "random") and hardneg's own ("uniform" = "random", "tilted")
SAMPLING_STRATEGIES = {name: name for name in SAMPLING}


def _prompt(model: Any, prompt: str | None, prompt_name: str | None, defaults: Sequence[str], what: str) -> str:
    """The prompt text ``encode_query`` / ``encode_document`` would prepend (same precedence)."""
    if prompt is not None:
        return prompt
    prompts = getattr(model, "prompts", None) or {}
    if prompt_name is not None:
        if prompt_name not in prompts:
            raise ValueError(f"{what}_prompt_name {prompt_name!r} is not one of the model's prompts {sorted(prompts)}")
        return prompts[prompt_name]
    return next((prompts[n] for n in defaults if n in prompts), "")


def _check_prompts_are_prefixes(model: Any, prompted: bool) -> None:
    modules = list(model) if hasattr(model, "__iter__") else []
    if any(type(m).__name__ == "Router" for m in modules):
        raise ValueError("models with a Router module encode queries and documents through different modules; "
                         "hardneg.mine_hard_negatives encodes both with model.encode and does not support them")
    if prompted and any(getattr(m, "include_prompt", True) is False for m in modules):
        raise ValueError("the model's pooling excludes prompt tokens (include_prompt=False); hardneg prepends "
                         "prompts to the texts, which would pool them: pass no prompt")


def mine_hard_negatives(
    dataset: Any, model: Any, anchor_column_name: str | None = None, positive_column_name: str | None = None,
    corpus: Sequence[str] | None = None, cross_encoder: Any = None, range_min: int = 0, range_max: int | None = None,
    max_score: float | None = None, min_score: float | None = None, absolute_margin: float | None = None,
    relative_margin: float | None = None, num_negatives: int = 3, sampling_strategy: str = "top",
    query_prompt_name: str | None = None, query_prompt: str | None = None, corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None, include_positives: bool = False, output_format: str = "triplet",
    output_scores: bool = False, batch_size: int = 32, faiss_batch_size: int = 16384, use_faiss: bool = False,
    use_multi_process: bool | list[str] = False, verbose: bool = True,
    cache_folder: str | os.PathLike[str] | None = None,
    *, window: str = "filtered", dedupe: bool = False, filter_labels: bool = False, label_column: str | None = None,
    corpus_labels: Sequence | None = None, guide: Any = None, guide_margin: float = 0.0, beta: float = 1.0,
    t: float = 0.05, seed: int = 0, index: str = "flat", nprobe: int = 16, ef_search: int = 128,
    recall_sample: int = 1000, precision: str = "fp32", summary_path: str | os.PathLike[str] | None = None,
    return_summary: bool = False,
) -> Any:
    """Add hard negatives to a dataset of (anchor, positive) pairs, as sentence-transformers' function does.

    The positional arguments, their defaults and the output follow
    ``sentence_transformers.util.mine_hard_negatives`` (see its documentation for each of them): with
    the same arguments and exact search (``index="flat"``, the default) the negatives are the same.
    Duplicate (anchor, positive) rows are mined once, rows are grouped by anchor, every positive of an
    anchor is excluded from its candidates, and ``range_max`` defaults to ``range_min + num_negatives +
    (max positives per anchor)``, or ``range_min + 10·num_negatives + …`` when a margin or ``max_score``
    is set. Scores are cosine similarities of the normalised embeddings; margins are measured against
    the anchor's lowest-scoring positive; a corpus text equal to the anchor is never its negative.

    Not supported: ``cross_encoder`` (filter with ``guide=`` instead), ``include_positives`` and
    ``use_multi_process``. ``faiss_batch_size`` and ``use_faiss`` are accepted for compatibility
    (retrieval is hardneg's ``index``). ``sampling_strategy`` also takes hardneg's ``"tilted"``;
    ``verbose`` prints hardneg's mining summary; ``cache_folder`` is hardneg's embedding cache.

    The keyword-only arguments are hardneg's knobs, the fields of
    `hardneg.mining.mine.MineConfig` of the same name (``hardneg mine``'s options; docs/mining.md):
    ``window``, ``dedupe``, ``filter_labels`` (with ``label_column``, a column of label(s) per pair,
    and ``corpus_labels``, label(s) per ``corpus`` document), ``guide`` (a CrossEncoder, bi-encoder or
    model folder) and ``guide_margin``, ``beta`` and ``t`` of the tilted sampling, ``seed``, ``index``,
    ``nprobe``, ``ef_search``, ``recall_sample``, ``precision`` (``"fp32"``: the embeddings
    ``SentenceTransformer.encode`` gives, or ``"bf16"``). ``summary_path`` writes the mining summary
    as JSON; ``return_summary`` returns ``(dataset, summary dict)`` instead of the dataset.

    Returns:
        A ``datasets.Dataset`` in the requested layout (and the summary dict with ``return_summary``).
    """
    datasets = require("datasets", "text", feature="hardneg.mine_hard_negatives")
    _refuse_unsupported(cross_encoder, include_positives, use_multi_process, faiss_batch_size)
    del use_faiss  # retrieval is hardneg's index (exact by default) either way
    if output_format == "n-tuple-scores":
        output_format, output_scores = "n-tuple", True
    if output_format not in ST_OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {ST_OUTPUT_FORMATS}, got {output_format!r}")
    if sampling_strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"sampling_strategy must be one of {tuple(SAMPLING_STRATEGIES)}, got {sampling_strategy!r}")
    a_col, p_col = _columns(dataset, anchor_column_name, positive_column_name, label_column)
    all_q = check_texts(dataset[a_col], f"anchor column {a_col!r}")
    all_p = check_texts(dataset[p_col], f"positive column {p_col!r}")
    corpus = None if corpus is None else check_texts(corpus, "corpus")
    if range_max is None:
        filtered = any(v is not None for v in (absolute_margin, relative_margin, max_score))
        range_max = range_min + num_negatives * (10 if filtered else 1) + group_pairs(all_q, all_p).max_positives
    cfg = MineConfig(num_negatives=num_negatives, range_min=range_min, range_max=range_max,
                     absolute_margin=absolute_margin, relative_margin=relative_margin, min_score=min_score,
                     max_score=max_score, window=window, dedupe=dedupe, filter_labels=filter_labels,
                     guide_margin=guide_margin, sampling=SAMPLING_STRATEGIES[sampling_strategy], beta=beta, t=t,
                     seed=seed, index=index, nprobe=nprobe, ef_search=ef_search, recall_sample=recall_sample,
                     precision=precision, batch_size=batch_size, store="memory", format=output_format,
                     scores=output_scores)
    cfg.validate()
    for what, path, folder in (("cache_folder", cache_folder, True), ("summary_path", summary_path, False)):
        if path is not None:  # what would fail after the encoding, refused before it, in this function's names
            check_writable(path, what, folder=folder)
    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_sentence_model(model)
    qp = _prompt(model, query_prompt, query_prompt_name, ("query",), "query")
    cp = _prompt(model, corpus_prompt, corpus_prompt_name, ("document", "passage", "corpus"), "corpus")
    _check_prompts_are_prefixes(model, bool(qp or cp))
    res = mine_texts(all_q, all_p, corpus, cfg, model=model,
                     q_labels=None if label_column is None else list(dataset[label_column]),
                     corpus_labels=corpus_labels, guide=guide, cache_dir=cache_folder, show_progress=verbose,
                     prompts=(qp, cp), layout=functools.partial(st_columns, columns=(a_col, p_col)))
    out = datasets.Dataset.from_dict(res.rows)
    if verbose:
        print(format_summary(res.summary))
    if summary_path is not None:
        save_summary(res.summary, summary_path)
    return (out, res.summary) if return_summary else out


def _refuse_unsupported(cross_encoder: Any, include_positives: bool, use_multi_process: bool | list[str],
                        faiss_batch_size: int) -> None:
    """One ValueError for a sentence-transformers argument hardneg does not implement."""
    if cross_encoder is not None:
        raise ValueError("cross_encoder re-scoring is not supported by hardneg.mine_hard_negatives; "
                         "filter with a guide model instead: guide=cross_encoder, guide_margin=...")
    if include_positives:
        raise ValueError("include_positives is not supported by hardneg.mine_hard_negatives")
    if use_multi_process:
        raise ValueError("use_multi_process is not supported by hardneg.mine_hard_negatives")
    if not isinstance(faiss_batch_size, int) or faiss_batch_size <= 0:
        raise ValueError(f"faiss_batch_size must be a positive integer, got {faiss_batch_size!r}")


def _columns(dataset: Any, anchor: str | None, positive: str | None, label_column: str | None) -> tuple[str, str]:
    """The anchor and positive columns as sentence-transformers picks them (a name that is not a column:
    the first, the second column); the label column must be one."""
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    columns = list(dataset.column_names)
    if not anchor or anchor not in columns:
        anchor = columns[0]
    if not positive or positive not in columns:
        if len(columns) < 2:
            raise ValueError(f"the dataset needs an anchor and a positive column, it has {columns}")
        positive = columns[1]
    if label_column is not None and label_column not in columns:
        raise ValueError(f"label_column {label_column!r} is not a column of the dataset {columns}")
    return anchor, positive


__all__ = ["mine_hard_negatives", "ST_OUTPUT_FORMATS", "SAMPLING_STRATEGIES"]
