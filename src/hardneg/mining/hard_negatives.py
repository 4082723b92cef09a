"""``mine_hard_negatives`` with the signature and output of ``sentence_transformers.util.mine_hard_negatives``.

A ``datasets.Dataset`` of (anchor, positive) pairs and a loaded ``SentenceTransformer`` go in; a
``Dataset`` in sentence-transformers' ``triplet``, ``n-tuple``, ``labeled-pair`` or ``labeled-list``
layout comes out, so code written for sentence-transformers switches by changing one import.
hardneg's further knobs (duplicate and label filters, a guide model, β-tilted sampling, approximate
indexes, bf16 encoding, the summary) are keyword arguments.

The mining itself is hardneg's: `hardneg.mining.encode.encode_texts` encodes each distinct text
once, `hardneg.mining.mine.mine_embeddings` retrieves, windows, filters and selects. This module
only maps sentence-transformers' arguments and dataset layout onto them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from hardneg._optional import require
from hardneg.mining.encode import encode_texts, load_sentence_model
from hardneg.mining.mine import SAMPLING, MineConfig, mine_embeddings
from hardneg.mining.pairs import anchor_labels, anchor_positives, group_pairs
from hardneg.mining.pipeline import check_texts, prepare_corpus, text_ids_and_guide
from hardneg.mining.summary import build_summary, format_summary, save_summary

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


def _st_columns(fmt: str, a_col: str, p_col: str, queries: list[str], positives: list[str], corpus: list[str],
                neg_ids: np.ndarray, neg_scores: np.ndarray, pos_scores: np.ndarray,
                output_scores: bool) -> tuple[dict[str, list], int]:
    """sentence-transformers' column layout for pairs grouped by query (the pairs of one query share its
    negatives); returns (columns, pairs left out).

    Unlike `hardneg.mining.formats.build_rows` (rows for ``hardneg mine``'s files, fixed column
    names), this keeps the dataset's column names, and ``labeled-pair`` lists a query's positives and
    then its negatives once, as sentence-transformers does.
    """
    ok = neg_ids >= 0
    n, N = neg_ids.shape
    left_out = 0
    if fmt == "triplet":
        cols: dict[str, list] = {a_col: [], p_col: [], "negative": []}
        if output_scores:
            cols["scores"] = []
        for i in range(n):
            left_out += not ok[i].any()
            for j in np.flatnonzero(ok[i]):
                cols[a_col].append(queries[i])
                cols[p_col].append(positives[i])
                cols["negative"].append(corpus[neg_ids[i, j]])
                if output_scores:
                    cols["scores"].append([float(pos_scores[i]), float(neg_scores[i, j])])
    elif fmt == "n-tuple":
        keep = np.flatnonzero(ok.all(1))
        left_out = n - len(keep)
        cols = {a_col: [queries[i] for i in keep], p_col: [positives[i] for i in keep]}
        for j in range(N):
            cols[f"negative_{j + 1}"] = [corpus[neg_ids[i, j]] for i in keep]
        if output_scores:
            cols["scores"] = [[float(pos_scores[i]), *map(float, neg_scores[i])] for i in keep]
    elif fmt == "labeled-pair":
        last = "score" if output_scores else "label"
        cols = {a_col: [], p_col: [], last: []}
        starts = [i for i in range(n) if i == 0 or queries[i] != queries[i - 1]]
        for i, end in zip(starts, [*starts[1:], n]):
            for r in range(i, end):  # the anchor's positives, then its negatives (shared by its pairs)
                cols[a_col].append(queries[r])
                cols[p_col].append(positives[r])
                cols[last].append(float(pos_scores[r]) if output_scores else 1)
                left_out += not ok[r].any()
            for j in np.flatnonzero(ok[i]):
                cols[a_col].append(queries[i])
                cols[p_col].append(corpus[neg_ids[i, j]])
                cols[last].append(float(neg_scores[i, j]) if output_scores else 0)
    elif fmt == "labeled-list":
        last = "scores" if output_scores else "labels"
        cols = {a_col: [], p_col: [], last: []}
        for i in range(n):
            js = np.flatnonzero(ok[i])
            if not len(js):
                left_out += 1
                continue
            cols[a_col].append(queries[i])
            cols[p_col].append([positives[i], *(corpus[neg_ids[i, j]] for j in js)])
            cols[last].append([float(pos_scores[i]), *(float(neg_scores[i, j]) for j in js)] if output_scores
                              else [1] + [0] * len(js))
    else:
        raise ValueError(f"output_format must be one of {ST_OUTPUT_FORMATS}, got {fmt!r}")
    return cols, left_out


def mine_hard_negatives(
    dataset: Any,
    model: Any,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus: Sequence[str] | None = None,
    cross_encoder: Any = None,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    num_negatives: int = 3,
    sampling_strategy: str = "top",
    query_prompt_name: str | None = None,
    query_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    include_positives: bool = False,
    output_format: str = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    faiss_batch_size: int = 16384,
    use_faiss: bool = False,
    use_multi_process: bool | list[str] = False,
    verbose: bool = True,
    cache_folder: str | os.PathLike[str] | None = None,
    *,
    window: str = "filtered",
    dedupe: bool = False,
    filter_labels: bool = False,
    label_column: str | None = None,
    corpus_labels: Sequence | None = None,
    guide: Any = None,
    guide_margin: float = 0.0,
    beta: float = 1.0,
    t: float = 0.05,
    seed: int = 0,
    index: str = "flat",
    nprobe: int = 16,
    ef_search: int = 128,
    recall_sample: int = 1000,
    precision: str = "fp32",
    summary_path: str | os.PathLike[str] | None = None,
    return_summary: bool = False,
) -> Any:
    """Add hard negatives to a dataset of (anchor, positive) pairs, as sentence-transformers' function does.

    The positional arguments, their defaults and the output follow
    ``sentence_transformers.util.mine_hard_negatives``: with the same arguments and exact search
    (``index="flat"``, the default) the negatives are the same. Duplicate (anchor, positive) rows are
    mined once, rows are grouped by anchor, every positive of an anchor is excluded from its
    candidates, and ``range_max`` defaults to ``range_min + num_negatives + (max positives per
    anchor)``, or ``range_min + 10·num_negatives + …`` when a margin or ``max_score`` is set.

    Args:
        dataset: a ``datasets.Dataset`` with an anchor and a positive column.
        model: a loaded ``SentenceTransformer`` (or the path of a local model folder).
        anchor_column_name: the anchor column; default the first column.
        positive_column_name: the positive column; default the second column.
        corpus: further candidate documents; the positives are always candidates too.
        cross_encoder: not supported (sentence-transformers re-scores candidates with it); use
            ``guide=`` for hardneg's guide-model filter.
        range_min: skip the ``range_min`` highest-ranked candidates that survive the filters.
        range_max: consider candidates ranked below ``range_max`` among those survivors, out of the
            ``range_max + (max positives per anchor) + 1`` nearest documents (see above for the default).
        max_score: drop candidates scoring above it.
        min_score: drop candidates scoring below it.
        absolute_margin: drop candidates with ``s > s_pos − absolute_margin``.
        relative_margin: drop candidates with ``s > s_pos − |s_pos| · relative_margin``.
        num_negatives: negatives per anchor.
        sampling_strategy: ``"top"``, ``"random"`` (uniform over the surviving window) or hardneg's
            ``"tilted"`` (probability ∝ exp(β·s/t), without replacement).
        query_prompt_name: a key of ``model.prompts`` prepended to the anchors (default ``"query"``
            when the model has it).
        query_prompt: a prompt string prepended to the anchors (takes precedence).
        corpus_prompt_name: as ``query_prompt_name`` for documents (default ``"document"``,
            ``"passage"`` or ``"corpus"``).
        corpus_prompt: as ``query_prompt`` for documents.
        include_positives: not supported.
        output_format: ``"triplet"``, ``"n-tuple"``, ``"labeled-pair"`` or ``"labeled-list"``
            (``"n-tuple-scores"`` = ``"n-tuple"`` with ``output_scores=True``).
        output_scores: add the similarity scores (``scores`` / ``score`` columns as in
            sentence-transformers).
        batch_size: encoding batch size.
        faiss_batch_size: accepted for compatibility (hardneg's search chunks queries itself).
        use_faiss: accepted for compatibility; retrieval always uses hardneg's index (``index=``).
        use_multi_process: not supported.
        verbose: show progress bars and print hardneg's mining summary.
        cache_folder: hardneg's embedding cache folder (keyed by model weights and text).
        window: ``"filtered"`` (sentence-transformers' meaning of ``range_min``/``range_max``: ranks among
            the candidates left by the filters) or hardneg's ``"retrieval"``: ranks among all retrieved
            non-positive documents, counted before any filter (a fixed mid-rank window).
        dedupe: also drop candidates whose normalised text equals the anchor's or the positive's.
        filter_labels: drop candidates sharing a label with the anchor (needs ``label_column``).
        label_column: a column of label(s) per pair, for ``filter_labels`` and the false-negative rate.
        corpus_labels: label(s) per ``corpus`` document.
        guide: a guide model (CrossEncoder, bi-encoder or model folder) for the GISTEmbed-style filter.
        guide_margin: keep a candidate only if ``g(q, n) ≤ g(q, p) − guide_margin``.
        beta: tilt β of ``sampling_strategy="tilted"``.
        t: temperature of ``sampling_strategy="tilted"``.
        seed: seed of the random sampling strategies.
        index: ``"flat"`` (exact), ``"bf16"``, ``"auto"``, ``"ivf{nlist}"`` or ``"hnsw{M}"``.
        nprobe: cells visited per query by ``"ivf…"``.
        ef_search: search beam of ``"hnsw…"``.
        recall_sample: queries on which an approximate index's recall is measured.
        precision: ``"fp32"`` (the embeddings ``SentenceTransformer.encode`` gives) or ``"bf16"``.
        summary_path: write the mining summary there as JSON.
        return_summary: return ``(dataset, summary dict)`` instead of the dataset.

    Returns:
        A ``datasets.Dataset`` in the requested layout (and the summary dict with ``return_summary``).

    Scores are cosine similarities of the normalised embeddings (what sentence-transformers uses with
    ``use_faiss=True``, and without it for cosine and dot-product models). As in sentence-transformers,
    margins are measured against the anchor's lowest-scoring positive.
    As in sentence-transformers, a corpus text equal to the anchor is never its negative.
    """
    datasets = require("datasets", "text", feature="hardneg.mine_hard_negatives")
    if cross_encoder is not None:
        raise ValueError("cross_encoder re-scoring is not supported by hardneg.mine_hard_negatives; "
                         "filter with a guide model instead: guide=cross_encoder, guide_margin=...")
    if include_positives:
        raise ValueError("include_positives is not supported by hardneg.mine_hard_negatives")
    if use_multi_process:
        raise ValueError("use_multi_process is not supported by hardneg.mine_hard_negatives")
    if not isinstance(faiss_batch_size, int) or faiss_batch_size <= 0:
        raise ValueError(f"faiss_batch_size must be a positive integer, got {faiss_batch_size!r}")
    del use_faiss  # retrieval is hardneg's index (exact by default) either way
    if output_format == "n-tuple-scores":
        output_format, output_scores = "n-tuple", True
    if output_format not in ST_OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {ST_OUTPUT_FORMATS}, got {output_format!r}")
    if sampling_strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"sampling_strategy must be one of {tuple(SAMPLING_STRATEGIES)}, got {sampling_strategy!r}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    columns = list(dataset.column_names)
    if not anchor_column_name or anchor_column_name not in columns:
        anchor_column_name = columns[0]
    if not positive_column_name or positive_column_name not in columns:
        if len(columns) < 2:
            raise ValueError(f"the dataset needs an anchor and a positive column, it has {columns}")
        positive_column_name = columns[1]
    if label_column is not None and label_column not in columns:
        raise ValueError(f"label_column {label_column!r} is not a column of the dataset {columns}")

    all_q = check_texts(dataset[anchor_column_name], f"anchor column {anchor_column_name!r}")
    all_p = check_texts(dataset[positive_column_name], f"positive column {positive_column_name!r}")
    corpus = None if corpus is None else check_texts(corpus, "corpus")
    all_l = list(dataset[label_column]) if label_column is not None else None
    groups = group_pairs(all_q, all_p)  # the one multi-positive rule (hardneg.mining.pairs)
    queries, positives, uq, pair_q = groups.queries, groups.positives, groups.anchors, groups.pair_anchor
    max_positives = groups.max_positives

    if range_max is None:
        filtered = any(v is not None for v in (absolute_margin, relative_margin, max_score))
        range_max = range_min + num_negatives * (10 if filtered else 1) + max_positives
    cfg = MineConfig(num_negatives=num_negatives, range_min=range_min, range_max=range_max,
                     absolute_margin=absolute_margin, relative_margin=relative_margin, min_score=min_score,
                     max_score=max_score, window=window, dedupe=dedupe, filter_labels=filter_labels,
                     guide_margin=guide_margin, sampling=SAMPLING_STRATEGIES[sampling_strategy], beta=beta, t=t,
                     seed=seed, index=index, nprobe=nprobe, ef_search=ef_search, recall_sample=recall_sample)
    cfg.validate()

    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_sentence_model(model)
    qp = _prompt(model, query_prompt, query_prompt_name, ("query",), "query")
    cp = _prompt(model, corpus_prompt, corpus_prompt_name, ("document", "passage", "corpus"), "corpus")
    _check_prompts_are_prefixes(model, bool(qp or cp))

    pair_labels = [all_l[r] for r in groups.rows] if all_l is not None else None
    texts, pos_rows, c_labels = prepare_corpus(positives, corpus, pair_labels, corpus_labels)
    q_labels = anchor_labels(groups, pair_labels) if pair_labels is not None else None
    enc = dict(batch_size=batch_size, precision=precision, cache_dir=cache_folder, show_progress=verbose)
    q_emb = encode_texts(model, [qp + q for q in uq], desc="queries", **enc)
    c_emb = encode_texts(model, [cp + c for c in texts], desc="corpus", **enc)
    main_pos, others, pair_scores = anchor_positives(groups, pos_rows, q_emb, c_emb, texts)
    q_tid, c_tid, guide_fn = text_ids_and_guide(uq, texts, guide, batch_size=batch_size, cache_dir=cache_folder)
    neg = mine_embeddings(q_emb, c_emb, main_pos, cfg, extra_pos_ids=others,
                          q_text_ids=q_tid, c_text_ids=c_tid, q_labels=q_labels if c_labels is not None else None,
                          c_labels=c_labels, guide_score=guide_fn, show_progress=verbose)
    cols, left_out = _st_columns(output_format, anchor_column_name, positive_column_name, queries, positives,
                                 texts, neg.neg_ids[pair_q], neg.neg_scores[pair_q], pair_scores, output_scores)
    out = datasets.Dataset.from_dict(cols)
    summary = build_summary(neg, cfg, n_corpus=len(texts), rows_written=len(out), queries_dropped=left_out,
                            output_format=output_format)
    if verbose:
        print(format_summary(summary))
    if summary_path is not None:
        save_summary(summary, summary_path)
    return (out, summary) if return_summary else out


__all__ = ["mine_hard_negatives", "ST_OUTPUT_FORMATS", "SAMPLING_STRATEGIES"]
