"""The text-level mining pipeline behind ``hardneg mine``: pairs + corpus → encode → mine → files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hardneg._optional import require
from hardneg.io import WriterLock, check_writable, process_temp_dir, remove_stale_temps
from hardneg.mining.encode import encode_texts, load_sentence_model, store_linear_weights_in_bf16
from hardneg.mining.estimate import MiningEstimate, available_memory, estimate_mining, parse_memory
from hardneg.mining.formats import build_rows, write_rows
from hardneg.mining.mine import MineConfig, MinedNegatives, knob, mine_embeddings
from hardneg.mining.onnx_encoder import OnnxSentenceEncoder, onnx_encoder
from hardneg.mining.pairs import PairGroups, anchor_labels, anchor_positives, group_pairs
from hardneg.mining.store import write_store
from hardneg.mining.summary import build_summary, format_summary, save_summary
from hardneg.mining.token_batching import release_freed_memory
from hardneg.vector_search import check_index_fits


def _norm(t: str) -> str:
    return " ".join(t.lower().split())


@dataclass
class MineResult:
    """Mined negatives with the texts they index, the output rows and the summary dict."""

    queries: list[str]
    positives: list[str]
    corpus: list[str]
    negatives: MinedNegatives
    rows: list[dict]
    summary: dict


def check_texts(values: Sequence, what: str) -> list[str]:
    """``values`` as a list of strings; a ``ValueError`` naming ``what`` and the first row that holds
    something else (a missing value, a number) before any model sees it."""
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise ValueError(f"{what}: row {i} is {v!r}, not a text; drop or fill the rows without one")
    return out


def prepare_corpus(positives: Sequence[str], corpus: Sequence[str] | None, pos_labels=None, corpus_labels=None):
    """Corpus = distinct texts of ``corpus`` + ``positives`` (first-appearance order), the positive's
    row per pair, and per-document label sets (given ones, else the union of the pairs' labels)."""
    texts = list(dict.fromkeys([*(corpus or []), *positives]))
    row = {t: i for i, t in enumerate(texts)}
    pos_ids = np.fromiter((row[p] for p in positives), dtype=np.int64, count=len(positives))
    labels = None
    if corpus_labels is not None or pos_labels is not None:
        labs: list[set] = [set() for _ in texts]
        if corpus_labels is not None:
            for t, lab in zip(corpus or [], corpus_labels):
                labs[row[t]].update([lab] if isinstance(lab, (str, int)) else (lab or []))
        if pos_labels is not None and corpus_labels is None:
            for p, lab in zip(positives, pos_labels):
                labs[row[p]].update([lab] if isinstance(lab, (str, int)) else (lab or []))
        labels = [sorted(x, key=str) for x in labs]
    return texts, pos_ids, labels


def make_guide(guide, queries: Sequence[str], corpus: Sequence[str], *, batch_size: int = 64,
               cache_dir=None, show_progress: bool = False):
    """``guide_score(q_rows, c_ids)`` for a CrossEncoder (``predict``) or a bi-encoder (cosine)."""
    if isinstance(guide, require("sentence_transformers", "text").CrossEncoder):
        def score(q_rows: np.ndarray, c_ids: np.ndarray) -> np.ndarray:
            pairs = [(queries[r], corpus[c]) for r, c in zip(q_rows, c_ids)]
            if not pairs:
                return np.zeros(0, np.float32)
            return np.asarray(guide.predict(pairs, batch_size=batch_size, show_progress_bar=show_progress))
        return score

    def score_bi(q_rows: np.ndarray, c_ids: np.ndarray) -> np.ndarray:
        if len(q_rows) == 0:
            return np.zeros(0, np.float32)
        uq, qi = np.unique(q_rows, return_inverse=True)
        uc, ci = np.unique(c_ids, return_inverse=True)
        qe = encode_texts(guide, [queries[i] for i in uq], batch_size=batch_size, precision="fp32",
                          cache_dir=cache_dir, show_progress=show_progress)
        ce = encode_texts(guide, [corpus[i] for i in uc], batch_size=batch_size, precision="fp32",
                          cache_dir=cache_dir, show_progress=show_progress)
        return np.einsum("nd,nd->n", qe[qi], ce[ci])
    return score_bi


#: builds the output from the mined pairs: ``layout(queries, positives, corpus, neg_ids, neg_scores, pos_scores,
#: format, scores)`` → (rows, queries dropped), one of each per (query, positive) pair (`build_rows`)
Layout = Callable[[list[str], list[str], list[str], np.ndarray, np.ndarray, np.ndarray, str, bool], tuple[Any, int]]


def mine_texts(
    queries: Sequence[str],
    positives: Sequence[str],
    corpus: Sequence[str] | None = None,
    config: MineConfig | None = None,
    *,
    model: Any = None,
    q_labels: Sequence | None = None,
    corpus_labels: Sequence | None = None,
    guide: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
    store_dir: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
    log: Callable[[str], Any] | None = None,
    prompts: tuple[str, str] = ("", ""),
    layout: Layout = build_rows,
    names: str = "python",
) -> MineResult:
    """Mine hard negatives for (query, positive) text pairs with the knobs of ``config``; see
    `hardneg.mining.mine`.

    ``config.store``: where the corpus embeddings live while mining — ``"memory"`` (a float32 array),
    ``"float16"`` / ``"bfloat16"`` / ``"float32"`` (encoded in chunks of ``STORE_CHUNK`` texts into a
    memory-mapped file in a temporary folder under ``store_dir``, deleted afterwards), or ``"auto"``
    (memory when the estimate fits, else float16). Before encoding, an estimate of time and peak
    memory is made (passed line by line to ``log``, kept in the summary as ``"estimate"``) and the run
    is refused with a ValueError when the peak exceeds ``config.max_memory`` (default: the available memory).

    ``config.backend``: ``"torch"`` (``config.precision`` applies), ``"onnx"`` or ``"onnx-int8"`` — the
    model's transformer in ONNX Runtime (`hardneg.mining.onnx_encoder`), exported once under
    ``<cache_dir>/onnx/`` (without a ``cache_dir``: into a temporary folder, deleted once the model is loaded).

    ``model``: a loaded model (used as it is, and left as it is), a model folder, or None (the default
    model). A model loaded from a folder is this run's alone: it holds only what its encoding needs
    (`_load_model`: the same embeddings) and its weights are freed before the search.

    ``prompts``: (query prompt, document prompt) prepended to the texts the model encodes (not to those
    compared for ``dedupe``, scored by the guide or written). ``layout`` builds ``rows``. Messages name
    the knobs as Python arguments or, with ``names="cli"``, as ``hardneg mine``'s options
    (`hardneg.mining.mine.knob`).

    ``cache_dir`` and ``store_dir`` are checked writable, and the index against the corpus size and
    the shards, before anything is encoded.
    """
    cfg = config or MineConfig()
    cfg.validate()
    max_memory = None if cfg.max_memory is None else parse_memory(cfg.max_memory, knob("max_memory", names))
    queries, positives = check_texts(queries, "queries"), check_texts(positives, "positives")
    corpus = None if corpus is None else check_texts(corpus, "corpus")
    _check_inputs(queries, positives, q_labels)
    if cache_dir is not None:
        check_writable(cache_dir, "cache_dir", folder=True)
    if store_dir is not None and cfg.store != "memory":
        check_writable(store_dir, "store_dir", folder=True)
    groups = group_pairs(queries, positives)  # the one multi-positive rule (hardneg.mining.pairs)
    pair_labels = None if q_labels is None else [q_labels[r] for r in groups.rows]
    texts, pos_ids, c_labels = prepare_corpus(groups.positives, corpus, pair_labels, corpus_labels)
    if len(texts) - 1 < cfg.range_min + cfg.num_negatives:
        raise ValueError(
            f"corpus has {len(texts)} documents (positives included), fewer than the window needs "
            f"(range_min={cfg.range_min} + num_negatives={cfg.num_negatives} besides the positive); "
            f"give a larger corpus or lower {knob('range_min', names)} / {knob('num_negatives', names)}"
        )
    owned = _loaded_here(model)
    model = _load_model(model, cfg.backend, cfg.precision, cache_dir)
    enc: dict[str, Any] = dict(batch_size=cfg.batch_size, precision=cfg.precision, cache_dir=cache_dir,
                               show_progress=show_progress)
    est, store = _estimate(model, groups.anchors, texts, groups.max_positives + 1, cfg, max_memory, enc)
    if log is not None:
        for line in est.lines():
            log(line)
    est.check(max_memory, names)  # after the lines: a refused run shows what the estimate was made of
    q_texts, c_texts = ([p + t for t in ts] if p else ts for p, ts in zip(prompts, (groups.anchors, texts)))
    with process_temp_dir("hardneg-store-", store_dir) as tmp:
        t0 = time.perf_counter()
        q_emb = encode_texts(model, q_texts, desc="queries", **enc)
        c_emb = _encode_corpus(model, c_texts, store, os.path.join(tmp, f"corpus.{store}.npy"), enc)
        t_enc = time.perf_counter() - t0
        if owned:  # its weights go before the search; to the meta device at once, as its reference cycles wait
            _release_weights(model)  # for a garbage collection that a corpus's texts in memory make slow
        del model
        res, rows, summary = _mine_encoded(groups, texts, q_emb, c_emb, pos_ids, cfg, guide=guide,
                                           q_labels=pair_labels, c_labels=c_labels, layout=layout, enc=enc)
    res.timings["encode_s"] = t_enc
    summary["store"] = store
    summary["backend"] = cfg.backend
    summary["estimate"] = est.as_dict()
    return MineResult(groups.queries, groups.positives, texts, res, rows, summary)


def _check_inputs(queries: list[str], positives: list[str], q_labels: Sequence | None) -> None:
    if len(queries) != len(positives):
        raise ValueError(f"queries ({len(queries)}) and positives ({len(positives)}) must have the same length")
    if not queries:
        raise ValueError("no query/positive pairs given")
    if q_labels is not None and len(q_labels) != len(queries):
        raise ValueError(f"q_labels must have one entry per pair ({len(queries)}), got {len(q_labels)}")


def _loaded_here(model: Any) -> bool:
    """Whether ``mine_texts`` loads the model itself (a folder, or None: the default model): such a
    model is this run's alone, so its memory may be cut and freed; a loaded model is the caller's."""
    return model is None or isinstance(model, (str, os.PathLike))


def _load_model(model: Any, backend: str, precision: str, cache_dir: str | os.PathLike[str] | None) -> Any:
    """The encoder: a loaded model as given, a folder (or None: the default model) loaded, and for an ONNX
    ``backend`` its transformer exported under ``<cache_dir>/onnx`` (without a cache: a temporary folder).
    A model loaded here is this run's alone, so its memory is cut to what the encoding needs: with
    ``backend="torch"`` and ``precision="bf16"`` its linear layers are kept in bfloat16
    (`hardneg.mining.encode.store_linear_weights_in_bf16`: the same embeddings); with an ONNX backend its
    torch weights are freed as soon as the export no longer needs them (before the quantization and the
    session, whose peaks they would add to). A loaded model given by the caller is left as it is."""
    owned = _loaded_here(model)
    if owned:
        model = load_sentence_model(model)
    if backend == "torch":
        if owned and precision == "bf16":
            store_linear_weights_in_bf16(model)
        return model
    if cache_dir is not None:
        return onnx_encoder(model, backend, Path(cache_dir), own_model=owned)
    with process_temp_dir("hardneg-onnx-") as tmp:  # no cache: the exported model is not kept either
        return onnx_encoder(model, backend, tmp, own_model=owned)


def _release_weights(model: Any) -> None:
    """Free the torch weights of a model `_load_model` loaded (an ONNX encoder's are gone already)."""
    if isinstance(model, OnnxSentenceEncoder):
        return
    model.to("meta")
    release_freed_memory()


#: texts encoded per piece when the corpus goes to a memory-mapped store
STORE_CHUNK = 65536


def _encode_corpus(model, texts: list[str], store: str, path: str, enc: dict):
    """Corpus embeddings: one float32 array, or a store written chunk by chunk (one chunk in memory)."""
    if store == "memory":
        return encode_texts(model, texts, desc="corpus", **enc)
    chunks = (encode_texts(model, texts[a : a + STORE_CHUNK], desc=f"corpus {a:,}+", **enc)
              for a in range(0, len(texts), STORE_CHUNK))
    d = model.get_embedding_dimension()
    return write_store(path, chunks, n=len(texts), d=d, dtype=store)


def _estimate(model: Any, queries: list[str], texts: list[str], n_pos: int, cfg: MineConfig, limit: int | None,
              enc: dict[str, Any]) -> tuple[MiningEstimate, str]:
    """The estimate of this run (encoding included) and the store it will use; refuses what cannot fit.
    ``queries``: the distinct anchors mined; ``n_pos``: the most positives an anchor has."""
    d = model.get_embedding_dimension()
    check_index_fits(cfg.index, len(texts), d, cfg.workers)  # what FAISS would refuse after encoding
    K = min(cfg.effective_range_max() + n_pos, len(texts))
    n_enc = len(queries) + len(texts)
    # one batch of texts spread over the corpus; an encoder that runs batches on several cores at once
    # (the ONNX one) ran this one on one of its ``workers``
    probe = texts[:: max(1, len(texts) // 64)][:64]
    encode_texts(model, probe[:2], **{**enc, "cache_dir": None, "show_progress": False})  # warm-up
    t0 = time.perf_counter()
    encode_texts(model, probe, **{**enc, "cache_dir": None, "show_progress": False})
    per_text = (time.perf_counter() - t0) / max(len(probe), 1) / getattr(model, "workers", 1)

    def make(st: str):
        chunk = len(texts) if st == "memory" else min(len(texts), STORE_CHUNK)
        working = {"encoding (model activations, one chunk of outputs)": 300 * 2**20 + 2 * chunk * d * 4}
        if enc.get("cache_dir") is not None:  # the cache holds what it has read or written, in float32
            working["embedding cache"] = n_enc * (d * 4 + 200)
        return estimate_mining(len(texts), len(queries), d, K, index=cfg.index,
                               store=None if st == "memory" else st, workers=cfg.workers, nprobe=cfg.nprobe,
                               rerank=cfg.rerank, recall_sample=cfg.recall_sample, extra_bytes=working,
                               extra_seconds={"encoding (uncached texts)": n_enc * per_text})

    store = cfg.store
    if store == "auto":
        est = make("memory")
        cap = available_memory()[0] if limit is None else limit
        store = "memory" if est.peak_bytes <= cap else "float16"
    return make(store), store


def _mine_encoded(groups: PairGroups, texts: list[str], q_emb: np.ndarray, c_emb: Any, pos_ids: np.ndarray,
                  cfg: MineConfig, *, guide: Any, q_labels: list | None, c_labels: list | None, layout: Layout,
                  enc: dict[str, Any]) -> tuple[MinedNegatives, Any, dict]:
    """Mining on the encoded texts, once per distinct anchor (``q_emb``, one row per ``groups.anchors``;
    ``pos_ids`` and ``q_labels`` one per pair): text ids for dedupe, the guide, the rows and the summary."""
    main_pos, others, pair_scores = anchor_positives(groups, pos_ids, q_emb, c_emb, texts)
    q_tid, c_tid, guide_fn = text_ids_and_guide(groups.anchors, texts, guide, batch_size=enc["batch_size"],
                                                cache_dir=enc["cache_dir"])
    res = mine_embeddings(
        q_emb, c_emb, main_pos, cfg,
        extra_pos_ids=others,
        q_text_ids=q_tid, c_text_ids=c_tid,
        q_labels=anchor_labels(groups, q_labels) if q_labels is not None and c_labels is not None else None,
        c_labels=c_labels, guide_score=guide_fn, show_progress=enc["show_progress"],
    )
    a = groups.pair_anchor
    rows, dropped = layout(groups.queries, groups.positives, texts, res.neg_ids[a], res.neg_scores[a],
                           pair_scores, cfg.format, cfg.scores)
    n_rows = len(rows) if isinstance(rows, list) else len(next(iter(rows.values()), []))  # rows or columns
    summary = build_summary(res, cfg, n_corpus=len(texts), rows_written=n_rows, queries_dropped=dropped,
                            output_format=cfg.format)
    return res, rows, summary


def text_ids_and_guide(queries, texts, guide, *, batch_size: int, cache_dir) -> tuple[np.ndarray, np.ndarray, Any]:
    """Integer ids of the normalised query and corpus texts (one vocabulary, for ``dedupe``) and the
    guide's scoring function (None without a guide; a path is loaded)."""
    vocab: dict[str, int] = {}
    q_tid = np.fromiter((vocab.setdefault(_norm(t), len(vocab)) for t in queries), np.int64, len(queries))
    c_tid = np.fromiter((vocab.setdefault(_norm(t), len(vocab)) for t in texts), np.int64, len(texts))
    guide_fn = None
    if guide is not None:
        if isinstance(guide, (str, os.PathLike)):
            guide = load_guide(guide)
        guide_fn = make_guide(guide, queries, texts, batch_size=batch_size, cache_dir=cache_dir)
    return q_tid, c_tid, guide_fn


def load_guide(path: str | os.PathLike[str]):
    """A guide model from a local folder: a CrossEncoder if its config says so, else a bi-encoder."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"guide model path {str(p)!r} does not exist or is not a folder")
    is_ce = (p / "config_sentence_transformers.json").exists() is False and (p / "modules.json").exists() is False
    try:
        import json

        cfg = json.loads((p / "config.json").read_text()) if (p / "config.json").exists() else {}
        archs = " ".join(cfg.get("architectures", []))
        is_ce = is_ce or "SequenceClassification" in archs
    except (OSError, ValueError):
        pass
    return load_sentence_model(p, kind="cross-encoder" if is_ce else "bi-encoder")


#: the summary's ``written_by``: with ``output`` (the rows file's name) it marks a pair of files as
#: hardneg's own, which ``--overwrite`` may replace
WRITTEN_BY = "hardneg mine"


def summary_file(out: str | os.PathLike[str]) -> Path:
    """Where the summary of the mined file ``out`` goes: ``<out>.summary.json`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".summary.json")


def _is_own_summary(sp: Path, out: Path) -> bool:
    try:
        s = json.loads(sp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(s, dict) and s.get("written_by") == WRITTEN_BY and s.get("output") == out.name


def check_output(out: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Refuse an output that would replace files: without ``overwrite`` any existing ``out`` or
    ``<out>.summary.json``; with it, files that hardneg mine did not write (recognised by a summary
    beside them whose ``written_by`` and ``output`` name them)."""
    out = Path(out)
    sp = summary_file(out)
    if out.is_dir() or sp.is_dir():
        raise FileExistsError(f"{out if out.is_dir() else sp} is a folder; give a file name to --out")
    existing = [str(p) for p in (out, sp) if p.exists()]
    if not existing:
        return
    if not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise FileExistsError(f"{' and '.join(existing)} already {verb}; pass --overwrite to replace")
    if not _is_own_summary(sp, out):
        why = f"{sp} is not its hardneg mine summary" if sp.exists() else f"there is no {sp.name} beside it"
        raise FileExistsError(
            f"refusing to --overwrite {existing[0]}: hardneg mine did not write it ({why}); "
            "move it away or choose another --out"
        )


def lock_output(out: str | os.PathLike[str], *, overwrite: bool = False) -> WriterLock:
    """Lock the output ``out`` against other writers (the lock file ``.<name>.lock`` beside it, deleted
    when released) and check it again under the lock (`check_output`: a writer that held the lock
    may have written it meanwhile). A second ``hardneg mine`` to the same output is refused, naming the
    output and the holder's PID."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(out.with_name(f".{out.name}.lock"), f"output {out}")
    try:
        check_output(out, overwrite=overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def write_result(result: MineResult, out: str | os.PathLike[str], *, summary_path=None) -> Path:
    """Write the rows (atomically) and the summary JSON beside them (``<out>.summary.json``), which
    records that hardneg wrote them (``written_by``, ``output``)."""
    out = Path(out)
    sp = Path(summary_path) if summary_path else summary_file(out)
    remove_stale_temps(out.parent, [out.name])  # left by a mine killed while writing these very files
    remove_stale_temps(sp.parent, [sp.name])
    write_rows(result.rows, out)
    result.summary = {"written_by": WRITTEN_BY, "output": out.name, **result.summary}
    save_summary(result.summary, sp)
    return sp


__all__ = [
    "Layout", "MineResult", "check_output", "check_texts", "format_summary", "load_guide", "lock_output", "mine_texts",
    "prepare_corpus", "summary_file", "write_result",
]
