"""Offline hard-negative mining: retrieve, filter, window, select (docs/design.md §3, "offline mined").

For query ``i`` with positive ``p`` and retrieved candidates ``j`` (cosine ``s_ij``), the pipeline keeps
``j`` when

- its text differs from the query's and the positive's (``dedupe``),
- its label set does not intersect the query's (``filter_labels``; known false negatives),
- ``min_score ≤ s_ij ≤ max_score``,
- ``s_ij ≤ s_ip − absolute_margin`` and ``s_ij ≤ s_ip − |s_ip|·relative_margin`` (margins to the
  positive, NV-Retriever's TopK-MarginPos / TopK-PercPos, Moreira et al. 2024; the rules of
  `hardneg.negatives.filters.similarity_drops`, as in sentence-transformers),
- ``g(i, j) ≤ g(i, p) − guide_margin`` for a guide model's score ``g`` (GISTEmbed-style filter,
  Solatorio 2024; a cross-encoder or a second bi-encoder),
- its rank ``r_ij`` lies in ``[range_min, range_max)``. With ``window="filtered"`` (the default, the
  meaning sentence-transformers gives ``range_min``/``range_max``) ``r_ij`` counts the candidates that
  survive the filters above; with ``window="retrieval"`` it counts every retrieved non-positive
  document, before any filter (a fixed mid-rank window of the retrieval order),

and then picks ``num_negatives`` of the survivors:

- ``"top"``: the highest-ranked ones;
- ``"random"`` (sentence-transformers' name) or ``"uniform"``: uniformly without replacement;
- ``"tilted"``: without replacement with probability ∝ ``exp(β·s_ij/t)`` — the tilted negative
  distribution q(x⁻) ∝ η(s)·p(x⁻) of HCL (Robinson et al. 2021), restricted to the window —
  implemented as Gumbel-top-k (Kool et al. 2019), exact for sampling without replacement.

Every step is vectorised over (queries × candidates) arrays; sampling uses a seeded
``numpy.random.Generator``, so mining is deterministic for a given seed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hardneg._optional import require
from hardneg.io import process_temp_dir
from hardneg.losses.checks import check_beta, check_temperature
from hardneg.losses.tilt import tilt_log_weights
from hardneg.mining.encode import PRECISIONS
from hardneg.mining.formats import OUTPUT_FORMATS_ALL
from hardneg.mining.onnx_encoder import BACKENDS
from hardneg.negatives.filters import check_similarity_rules, guide_drops, similarity_drops
from hardneg.negatives.registry import build_filter, build_weighting
from hardneg.vector_search import (
    as_rows,
    build_index,
    check_index_fits,
    check_search_params,
    measure_recall,
    parse_index_spec,
    search,
)

#: "random" is sentence-transformers' name for "uniform" (the same sampling)
SAMPLING = ("top", "random", "uniform", "tilted")
#: what ``range_min``/``range_max`` count: the candidates that survive the filters (sentence-transformers'
#: meaning) or every retrieved non-positive document before any filter
WINDOWS = ("filtered", "retrieval")
#: where the corpus embeddings may live while mining (`hardneg.mining.pipeline.mine_texts`)
STORES = ("memory", "auto", "float16", "bfloat16", "float32")
#: the vocabularies a message may name a `MineConfig` field in: a Python argument or an option of ``hardneg mine``
NAMES = ("python", "cli")
_UNSET: Any = object()


def knob(name: str, names: str = "python", value: Any = _UNSET) -> str:
    """The `MineConfig` field ``name`` (with ``value``) as a caller writes it: in Python ``name`` /
    ``name='v'``, on the command line (``names="cli"``) ``--name-with-dashes`` / ``--name-with-dashes v``.

    Every field of `MineConfig` is the ``hardneg mine`` option of the same name with dashes
    (`hardneg.cli.mine`), so one rule spells both."""
    if names not in NAMES:
        raise ValueError(f"names must be one of {NAMES}, got {names!r}")
    if names == "python":
        return name if value is _UNSET else f"{name}={value!r}"
    flag = "--" + name.replace("_", "-")
    return flag if value is _UNSET else f"{flag} {shlex.quote(str(value))}"


def _knob(default: Any, help: str, **cli: Any) -> Any:
    """A `MineConfig` field: its default, the help text of its ``hardneg mine`` option, and that option's
    particulars (``short``: a one-letter alias; ``cli_default``: the command's default where it differs;
    ``cli_type``: the option's value type where the field's is a union)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class MineConfig:
    """Every knob of the mining pipeline (`mine_embeddings`, `hardneg.mining.pipeline.mine_texts`,
    ``hardneg mine``); names follow ``sentence_transformers.util.mine_hard_negatives``.

    Each field is an option of ``hardneg mine``, named as the field with dashes, with the field's help
    text and default (`hardneg.cli.mine`). The encoding, store and output fields are read by
    `mine_texts` only.
    """

    # the window and the filters
    num_negatives: int = _knob(5, "Negatives per query.", short="-n")
    range_min: int = _knob(0, "Skip the first ranks of the candidates that survive the filters (likely false "
                              "negatives), as sentence-transformers' range_min.")
    range_max: int | None = _knob(None, "Window end: consider ranks below it (default n, or 10n with filters).")
    window: str = _knob("filtered", "What --range-min/--range-max count: filtered (the candidates left by the "
                                    "filters, as sentence-transformers) or retrieval (every retrieved "
                                    "non-positive document, before any filter).")
    absolute_margin: float | None = _knob(None, "Drop candidates scoring above s_pos - m (margin to the positive).")
    relative_margin: float | None = _knob(None, "Drop candidates scoring above s_pos - |s_pos|·m (relative margin).")
    min_score: float | None = _knob(None, "Drop candidates scoring below it.")
    max_score: float | None = _knob(None, "Drop candidates scoring above it.")
    dedupe: bool = _knob(True, "Drop candidates equal to query/positive text.")
    filter_labels: bool = _knob(False, "Drop candidates sharing a label (known FN).")
    guide_margin: float = _knob(0.0, "Keep a candidate only if the guide scores it <= its positive - this.")
    # the selection
    sampling: str = _knob("top", "top, random (uniform over the window; also spelled uniform) or tilted "
                                 "(∝ exp(β s / t)).")
    beta: float = _knob(1.0, "Tilt β of the tilted sampling.")
    t: float = _knob(0.05, "Temperature of the tilted sampling.")
    seed: int = _knob(0, "Seed of the random and tilted sampling.")
    # the retrieval
    index: str = _knob("flat", "auto (bf16 where the CPU has native bf16, else flat), flat (exact), bf16, "
                               "ivf{nlist}, hnsw{M}, or a FAISS index_factory string such as 'IVF4096,PQ48' "
                               "(re-scored exactly).", cli_default="auto")
    nprobe: int = _knob(16, "Cells an ivf index visits per query.")
    ef_search: int = _knob(128, "Search beam of an hnsw index.")
    recall_sample: int = _knob(1000, "Queries on which an approximate index's recall is measured against exact "
                                     "search (0: not measured).")
    rerank: int = _knob(4, "Two-stage indexes (bf16, FAISS strings) re-score max(rerank·k, k+16) candidates.")
    workers: int = _knob(1, "Shard the search over N worker processes.")
    # the texts: encoding, where the corpus embeddings live, the output (read by mine_texts)
    precision: str = _knob("bf16", "bf16 (autocast, fast) or fp32 (torch backend).")
    backend: str = _knob("torch", "torch, onnx or onnx-int8 (the transformer in ONNX Runtime; int8 dynamic "
                                  "quantization).")
    batch_size: int = _knob(64, "Encoding batch size.")
    store: str = _knob("memory", "Corpus embeddings: memory, float16 or bfloat16 (memory-mapped on disk), or auto "
                                 "(memory when the estimate fits, else float16).", cli_default="auto")
    max_memory: int | str | None = _knob(None, "Refuse runs whose estimated peak exceeds this (e.g. 16G; default: "
                                               "available).", cli_type=str)
    format: str = _knob("triplet", "sentence-transformers' output format: triplet, n-tuple, n-tuple-scores, "
                                   "labeled-pair or labeled-list.")
    scores: bool = _knob(False, "Add the similarity scores to the output.")

    def validate(self) -> None:
        """Raise one ValueError naming the first field with a value outside its range."""
        if not isinstance(self.num_negatives, int) or self.num_negatives < 1:
            raise ValueError(f"num_negatives must be an int >= 1, got {self.num_negatives!r}")
        if not isinstance(self.range_min, int) or self.range_min < 0:
            raise ValueError(f"range_min must be an int >= 0, got {self.range_min!r}")
        if self.range_max is not None and (not isinstance(self.range_max, int) or self.range_max <= self.range_min):
            raise ValueError(f"range_max must be an int > range_min={self.range_min}, got {self.range_max!r}")
        if self.range_max is not None and self.range_max - self.range_min < self.num_negatives:
            raise ValueError(
                f"the window [range_min={self.range_min}, range_max={self.range_max}) holds fewer than "
                f"num_negatives={self.num_negatives} candidates; widen it or lower num_negatives"
            )
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {self.sampling!r}")
        check_beta(self.beta)
        check_temperature(self.t, "t (temperature)")
        check_similarity_rules(max_score=self.max_score, min_score=self.min_score,
                               absolute_margin=self.absolute_margin, relative_margin=self.relative_margin)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        parse_index_spec(self.index)
        check_search_params(self.nprobe, self.ef_search)
        if not isinstance(self.recall_sample, int) or self.recall_sample < 0:
            raise ValueError(f"recall_sample must be an int >= 0, got {self.recall_sample!r}")
        if not isinstance(self.rerank, int) or self.rerank < 1:
            raise ValueError(f"rerank must be an int >= 1, got {self.rerank!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {self.workers!r}")
        self._validate_texts()

    def _validate_texts(self) -> None:
        """The fields `mine_texts` reads (``max_memory`` is parsed there, with the caller's option name)."""
        for name, allowed in (("precision", PRECISIONS), ("backend", BACKENDS), ("store", STORES),
                              ("format", OUTPUT_FORMATS_ALL)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")

    def effective_range_max(self) -> int:
        """Default window end as in sentence-transformers: ``range_min + num_negatives`` without
        score filters, ``range_min + 10·num_negatives`` with any of them."""
        if self.range_max is not None:
            return self.range_max
        filtered = any(
            v is not None for v in (self.absolute_margin, self.relative_margin, self.min_score, self.max_score)
        ) or self.filter_labels or self.sampling != "top"
        return self.range_min + self.num_negatives * (10 if filtered else 1)


@dataclass
class MinedNegatives:
    """Result of `mine_embeddings`: ``neg_ids``/``neg_scores`` are (n, num_negatives), -1 / NaN
    padded where fewer survivors existed, ordered by decreasing score."""

    neg_ids: np.ndarray
    neg_scores: np.ndarray
    pos_scores: np.ndarray
    n_found: np.ndarray
    removed: dict[str, int]
    removed_per_query: dict[str, np.ndarray]
    candidates_in_window: int
    positive_rank: np.ndarray  # number of non-positive docs scoring above the positive (within top-K; K if beyond)
    fn_in_window: int | None = None
    fn_selected: int | None = None
    recall: float | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _rowwise_isin(ids: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """(n, K) ids vs (n, P) padded id sets (-1 = none): True where ids[i, k] ∈ sets[i]."""
    return ((ids[:, :, None] == sets[:, None, :]) & (sets[:, None, :] >= 0)).any(-1)


def _labels_intersect(q_rows: np.ndarray, c_ids: np.ndarray, q_labels, c_labels) -> np.ndarray:
    """For flat pairs (q_rows[f], c_ids[f]): do the label sets intersect? (sparse row-wise dot)."""
    sp = require("scipy.sparse", "mining")

    vocab: dict = {}

    def csr(label_lists, n):
        indptr, indices = [0], []
        for lab in label_lists:
            lab = [lab] if isinstance(lab, (str, int)) else (lab or [])
            indices.extend(vocab.setdefault(x, len(vocab)) for x in lab)
            indptr.append(len(indices))
        return indptr, indices

    qp, qi = csr(q_labels, len(q_labels))
    cp, ci = csr(c_labels, len(c_labels))
    L = max(len(vocab), 1)
    Q = sp.csr_matrix((np.ones(len(qi), np.float32), qi, qp), shape=(len(q_labels), L))
    C = sp.csr_matrix((np.ones(len(ci), np.float32), ci, cp), shape=(len(c_labels), L))
    if len(q_rows) == 0:
        return np.zeros(0, dtype=bool)
    hits = np.asarray(Q[q_rows].multiply(C[c_ids]).sum(1)).ravel()
    return hits > 0


def mine_embeddings(
    q_emb: np.ndarray,
    c_emb: np.ndarray,
    pos_ids: Sequence[int] | np.ndarray,
    config: MineConfig | None = None,
    *,
    extra_pos_ids: np.ndarray | None = None,
    q_text_ids: np.ndarray | None = None,
    c_text_ids: np.ndarray | None = None,
    q_labels: Sequence | None = None,
    c_labels: Sequence | None = None,
    guide_score: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    index=None,
    show_progress: bool = True,
    filters: Sequence[Any] = (),
    weighting: Sequence[Any] = (),
) -> MinedNegatives:
    """Mine negatives for queries ``q_emb`` (n, d) from corpus ``c_emb`` (m, d); both L2-normalised.

    ``c_emb`` is an array or a memory-mapped `EmbeddingStore`, read in
    row blocks (never copied whole into float32). With ``config.workers > 1`` the search is sharded
    over that many processes (`ShardedIndex`); an in-memory corpus is
    then written to a temporary float32 store first, so the workers map one file instead of each
    receiving a copy.

    ``pos_ids[i]`` is the corpus row of query i's positive; ``extra_pos_ids`` (n, P) lists further
    positives to exclude (-1 padded). ``q_text_ids``/``c_text_ids`` are integer ids of the normalised
    texts (for ``dedupe``). ``q_labels``/``c_labels`` are label sets (for ``filter_labels`` and the
    false-negative rate). ``guide_score(q_rows, c_ids)`` returns the guide model's scores for flat
    (query row, corpus id) pairs. ``filters`` / ``weighting``: the strategies' own components
    (`Filter`, `Weighting`, or their config
    mappings / kind names), applied to the retrieved (queries × candidates) score matrix with the
    same formulas as in training; a weighting's log-weights shape the sampling distribution.
    """
    filters = [build_filter(f) for f in filters]
    weighting = [build_weighting(w) for w in weighting]
    cfg = config or MineConfig()
    cfg.validate()
    timings: dict[str, float] = {}
    q_emb = np.asarray(q_emb, dtype=np.float32)
    c_emb = as_rows(c_emb)
    pos_ids = np.asarray(pos_ids, dtype=np.int64)
    K = _check_inputs(q_emb, c_emb, pos_ids, cfg, extra_pos_ids, q_labels, c_labels)
    if index is None:  # before a shard worker starts: its refusal would come from every worker at once
        check_index_fits(cfg.index, c_emb.shape[0], c_emb.shape[1], cfg.workers)

    # 1. retrieval
    with _retriever(c_emb, cfg, index) as index:
        scores, ids, recall = _retrieve(index, q_emb, c_emb, K, cfg, timings)

    # 2. filters and window
    t0 = time.perf_counter()
    pos_scores = np.einsum("nd,nd->n", q_emb, c_emb.take(pos_ids)).astype(np.float32)
    w = _Window(scores, ids, pos_ids, pos_scores, extra_pos_ids, cfg, K)
    w.dedupe_and_labels(q_text_ids, c_text_ids, q_labels, c_labels)
    w.similarity_and_filters(filters)
    if guide_score is not None:
        w.guide(guide_score)
    w.window()
    extra_logw = w.weightings(weighting)
    timings["filter_s"] = time.perf_counter() - t0

    # 3. selection
    t0 = time.perf_counter()
    sel_ids, sel_scores, order, picked = _select(scores, ids, w.keep, w.rank, extra_logw, cfg, K)
    n_found = (sel_ids >= 0).sum(1)
    fn_selected = None
    if w.fn_mask is not None:
        fn_selected = int(np.take_along_axis(w.fn_mask, order, 1)[picked].sum())
    timings["select_s"] = time.perf_counter() - t0
    return MinedNegatives(sel_ids, sel_scores, pos_scores, n_found, w.removed, w.removed_q, w.candidates_in_window,
                          w.positive_rank, w.fn_in_window, fn_selected, recall, timings)


@contextlib.contextmanager
def _retriever(c_rows, cfg: MineConfig, index):
    """The index to search: the caller's, one built here, or ``cfg.workers`` shard processes."""
    kw = dict(nprobe=cfg.nprobe, ef_search=cfg.ef_search, seed=cfg.seed, rerank=cfg.rerank)
    if index is not None:
        yield index
    elif cfg.workers == 1:
        yield build_index(c_rows, cfg.index, **kw)
    else:
        from hardneg.mining.shard import ShardedIndex
        from hardneg.mining.store import EmbeddingStore, write_store

        with process_temp_dir("hardneg-shards-") as tmp:
            store = c_rows if isinstance(c_rows, EmbeddingStore) else write_store(
                os.path.join(tmp, "corpus.npy"), c_rows.x, n=c_rows.shape[0], d=c_rows.shape[1], dtype="float32")
            with ShardedIndex(store, cfg.index, cfg.workers, **kw) as sharded:
                yield sharded


def _retrieve(index, q_emb, c_rows, K: int, cfg: MineConfig, timings: dict) -> tuple:
    """Top-K (scores, ids) of every query, and recall@K against exact search on a sample (None for flat)."""
    t0 = time.perf_counter()
    scores, ids = search(index, q_emb, K)
    timings["search_s"] = time.perf_counter() - t0
    recall = None
    if parse_index_spec(cfg.index)[0] != "flat" and cfg.recall_sample > 0:
        t0 = time.perf_counter()
        recall = measure_recall(c_rows, q_emb, index, K, sample=cfg.recall_sample, seed=cfg.seed)
        timings["recall_s"] = time.perf_counter() - t0
    return scores, ids, recall


def _check_inputs(q_emb, c_emb, pos_ids, cfg: MineConfig, extra_pos_ids, q_labels, c_labels) -> int:
    """Validate the arrays against each other and the window; returns K, the neighbours to retrieve."""
    if q_emb.ndim != 2 or c_emb.ndim != 2 or q_emb.shape[1] != c_emb.shape[1]:
        raise ValueError(f"q_emb (n, d) and c_emb (m, d) must share d, got {q_emb.shape} and {c_emb.shape}")
    n, m = q_emb.shape[0], c_emb.shape[0]
    if pos_ids.shape != (n,) or (n and (pos_ids.min() < 0 or pos_ids.max() >= m)):
        raise ValueError(f"pos_ids must be ({n},) corpus rows in [0, {m}), got shape {pos_ids.shape}")
    range_max = cfg.effective_range_max()
    n_pos = 1 if extra_pos_ids is None else 1 + int(np.asarray(extra_pos_ids).shape[1])
    if m - n_pos < range_max and m - n_pos < cfg.range_min + cfg.num_negatives:
        raise ValueError(
            f"corpus has {m} documents, fewer than the window needs (range_min={cfg.range_min} + "
            f"num_negatives={cfg.num_negatives} besides the positive); lower range_min/num_negatives"
        )
    if cfg.filter_labels and (q_labels is None or c_labels is None):
        raise ValueError("filter_labels needs labels for the queries and the corpus")
    return min(range_max + n_pos, m)


class _Window:
    """The retrieved (queries × K) candidates: rank window, then each filter in turn, counting what
    each one removed (``removed``, ``removed_q``)."""

    def __init__(self, scores, ids, pos_ids, pos_scores, extra_pos_ids, cfg: MineConfig, K: int) -> None:
        self.scores, self.ids, self.pos_ids, self.pos_scores, self.cfg = scores, ids, pos_ids, pos_scores, cfg
        pos_sets = pos_ids[:, None] if extra_pos_ids is None else np.concatenate(
            [pos_ids[:, None], np.asarray(extra_pos_ids, dtype=np.int64)], axis=1)
        is_pos = _rowwise_isin(ids, pos_sets)
        valid = (ids >= 0) & ~is_pos
        self.rank = np.cumsum(valid, axis=1) - 1
        # number of non-positive candidates above the positive (positive not retrieved -> K)
        above = valid & (scores > pos_scores[:, None])
        self.positive_rank = np.where(is_pos.any(1), above.sum(1), K)
        in_window = valid & (self.rank >= cfg.range_min) & (self.rank < cfg.effective_range_max())
        # a retrieval window cuts before the filters; a filtered one (window()) after them, so the filters
        # see every retrieved candidate; what they see is what "candidates in the window" counts
        self.keep = in_window if cfg.window == "retrieval" else valid
        self.candidates_in_window = int(self.keep.sum())
        self.in_window = in_window
        self.removed: dict[str, int] = {}
        self.removed_q: dict[str, np.ndarray] = {}
        self.safe_ids = np.where(ids >= 0, ids, 0)
        self.fn_mask: np.ndarray | None = None
        self.fn_in_window: int | None = None

    def apply(self, name: str, drop: np.ndarray) -> None:
        d = self.keep & drop
        self.removed[name] = int(d.sum())
        self.removed_q[name] = d.sum(1)
        self.keep = self.keep & ~drop

    def dedupe_and_labels(self, q_text_ids, c_text_ids, q_labels, c_labels) -> None:
        cfg = self.cfg
        if cfg.dedupe and q_text_ids is not None and c_text_ids is not None:
            c_text_ids = np.asarray(c_text_ids)
            cand_text = c_text_ids[self.safe_ids]
            self.apply("duplicate", (cand_text == np.asarray(q_text_ids)[:, None])
                       | (cand_text == c_text_ids[self.pos_ids][:, None]))
        if q_labels is not None and c_labels is not None:
            rows, cols = np.nonzero(self.keep)
            inter = _labels_intersect(rows, self.safe_ids[rows, cols], q_labels, c_labels)
            self.fn_mask = np.zeros_like(self.keep)
            self.fn_mask[rows, cols] = inter
            self.fn_in_window = int((self.fn_mask & self.in_window).sum())
        if cfg.filter_labels:
            assert self.fn_mask is not None, "_check_inputs requires labels for filter_labels"
            self.apply("false_negative_label", self.fn_mask)

    def similarity_and_filters(self, filters) -> None:
        """The similarity rules and the strategies' own filters on the score matrix."""
        cfg = self.cfg
        S_t, sp_t = torch.from_numpy(self.scores), torch.from_numpy(self.pos_scores)
        drops = similarity_drops(S_t, sp_t, min_score=cfg.min_score, max_score=cfg.max_score,
                                 absolute_margin=cfg.absolute_margin, relative_margin=cfg.relative_margin)
        for name in ("min_score", "max_score", "absolute_margin", "relative_margin"):
            if name in drops:
                self.apply(name, drops[name].numpy())
        ctx = RetrievedContext(sp_t, cfg.beta, cfg.t)
        for f in filters:
            self.apply(f"filter:{f.kind}", f.drop(S_t, slice(0, self.scores.shape[0]), ctx).numpy())

    def window(self) -> None:
        """``window="filtered"``: keep the survivors ranked ``[range_min, range_max)`` among the survivors
        (sentence-transformers skips the first ``range_min`` candidates left by its filters)."""
        if self.cfg.window == "retrieval":
            return
        self.rank = np.cumsum(self.keep, axis=1) - 1
        self.keep = self.keep & (self.rank >= self.cfg.range_min) & (self.rank < self.cfg.effective_range_max())

    def weightings(self, weighting) -> np.ndarray | None:
        """The strategies' weightings on the window's survivors; returns their summed log-weights (None
        without one)."""
        S_t, sp_t = torch.from_numpy(self.scores), torch.from_numpy(self.pos_scores)
        ctx = RetrievedContext(sp_t, self.cfg.beta, self.cfg.t)
        rows = slice(0, self.scores.shape[0])
        extra_logw = None
        for w in weighting:
            keep_t = torch.from_numpy(self.keep)
            if w.selects:
                sel = w.select(S_t, rows, ctx, keep_t)
            else:
                a = w.log_weights(S_t, rows, ctx, keep_t)
                sel = keep_t & (a != float("-inf"))
                a = a.double().numpy()
                extra_logw = a if extra_logw is None else extra_logw + a
            self.apply(f"weighting:{w.kind}", ~sel.numpy())
        return extra_logw

    def guide(self, guide_score) -> None:
        rows, cols = np.nonzero(self.keep)
        g_cand = np.asarray(guide_score(rows, self.safe_ids[rows, cols]), dtype=np.float32)
        g_pos = np.asarray(guide_score(np.arange(self.scores.shape[0]), self.pos_ids), dtype=np.float32)
        drop = np.zeros_like(self.keep)
        drop[rows, cols] = guide_drops(g_cand, g_pos[rows], self.cfg.guide_margin)
        self.apply("guide", drop)


def _select(scores, ids, keep, rank, extra_logw, cfg: MineConfig, K: int):
    """A key per candidate; the ``num_negatives`` largest keys among the survivors, ordered by
    decreasing score and padded (-1 / NaN). Returns (ids, scores, order, picked)."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.sampling == "top":
        key = -rank.astype(np.float64)
    elif cfg.sampling in ("random", "uniform") and extra_logw is None:
        key = rng.random(scores.shape)
    else:  # Gumbel-top-k: sampling without replacement with π ∝ exp(β s / t + a)
        gumbel = -np.log(-np.log(rng.random(scores.shape).clip(1e-300, 1.0)))
        beta = cfg.beta if cfg.sampling == "tilted" else 0.0
        key = tilt_log_weights(scores.astype(np.float64), beta, cfg.t) + gumbel
        if extra_logw is not None:
            key = key + np.where(keep, extra_logw, 0.0)
    key = np.where(keep, key, -np.inf)
    nn_ = min(cfg.num_negatives, K)
    order = np.argsort(-key, axis=1, kind="stable")[:, :nn_]
    picked = np.take_along_axis(keep, order, 1)
    sel_ids = np.where(picked, np.take_along_axis(ids, order, 1), -1)
    sel_scores = np.where(picked, np.take_along_axis(scores, order, 1), np.nan).astype(np.float32)
    o2 = np.argsort(np.where(picked, -sel_scores, np.inf), axis=1, kind="stable")
    sel_ids = np.take_along_axis(sel_ids, o2, 1)
    sel_scores = np.take_along_axis(sel_scores, o2, 1)
    if nn_ < cfg.num_negatives:
        pad = cfg.num_negatives - nn_
        sel_ids = np.pad(sel_ids, ((0, 0), (0, pad)), constant_values=-1)
        sel_scores = np.pad(sel_scores, ((0, 0), (0, pad)), constant_values=np.nan)
    return sel_ids, sel_scores, order, picked


class RetrievedContext:
    """What a strategy component may read while mining: each query's row of retrieved scores, its
    positive's score, β and t. Candidate identities (labels, ids, embeddings) are not available."""

    def __init__(self, pos_scores: torch.Tensor, beta: float, t: float) -> None:
        self._sp, self.beta, self.t = pos_scores, beta, t

    def s_pos(self, S: torch.Tensor, rows: slice) -> torch.Tensor:
        return self._sp[rows]

    def __getattr__(self, name: str) -> Any:
        raise ValueError(
            f"this filter/weighting reads {name!r}, which offline mining does not have (it sees only the "
            "retrieved scores and the positive's score)"
        )
