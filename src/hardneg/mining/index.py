"""FAISS retrieval behind one option string, and the recall of an approximate index against exact search.

Option strings (cosine similarity = inner product of L2-normalised vectors):

- ``"flat"``: exact ``IndexFlatIP`` (default).
- ``"ivf{nlist}"`` (e.g. ``"ivf1024"``): ``IndexIVFFlat`` with ``nlist`` k-means cells, trained on
  the corpus with a fixed seed; ``nprobe`` cells are visited per query.
- ``"hnsw{M}"`` (e.g. ``"hnsw32"``): ``IndexHNSWFlat`` with ``M`` links per node; ``ef_search``
  controls the search beam.

For the approximate indexes, :func:`recall_at_k` measures recall@k of their result lists against an
exact flat search on a sample of queries; ``hardneg mine`` reports it in its summary.
"""

from __future__ import annotations

import re

import numpy as np

_SPEC = re.compile(r"^(flat|ivf(\d+)|hnsw(\d+))$")


def parse_index_spec(spec: str) -> tuple[str, int]:
    """``"flat"`` → ("flat", 0); ``"ivf256"`` → ("ivf", 256); ``"hnsw32"`` → ("hnsw", 32)."""
    if not isinstance(spec, str):
        raise TypeError(f"index must be a string like 'flat', 'ivf1024' or 'hnsw32', got {type(spec).__name__}")
    m = _SPEC.match(spec.strip().lower())
    if not m:
        raise ValueError(f"index must be 'flat', 'ivf{{nlist}}' or 'hnsw{{M}}' (e.g. ivf1024, hnsw32), got {spec!r}")
    if m.group(2):
        n = int(m.group(2))
        if n < 1:
            raise ValueError(f"ivf nlist must be >= 1, got {spec!r}")
        return "ivf", n
    if m.group(3):
        n = int(m.group(3))
        if n < 2:
            raise ValueError(f"hnsw M must be >= 2, got {spec!r}")
        return "hnsw", n
    return "flat", 0


def _as_f32(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")
    return x


def build_index(
    corpus: np.ndarray,
    spec: str = "flat",
    *,
    nprobe: int = 16,
    ef_search: int = 128,
    seed: int = 0,
    threads: int | None = None,
):
    """Build a FAISS inner-product index over ``corpus`` (m, d) according to ``spec``."""
    import faiss

    if threads is not None:
        faiss.omp_set_num_threads(int(threads))
    kind, n = parse_index_spec(spec)
    xb = _as_f32(corpus, "corpus embeddings")
    d = xb.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        if n > xb.shape[0]:
            raise ValueError(f"ivf{n} needs at least {n} corpus vectors to train, got {xb.shape[0]}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, n, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(xb)
        index.nprobe = min(nprobe, n)
    else:
        index = faiss.IndexHNSWFlat(d, n, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    index.add(xb)
    return index


def search(index, queries: np.ndarray, k: int, *, batch_size: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) for every query; ids are -1 where fewer than ``k`` results exist."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    xq = _as_f32(queries, "query embeddings")
    if xq.shape[1] != index.d:
        raise ValueError(f"query embeddings have dimension {xq.shape[1]}, the index has {index.d}")
    k_eff = min(k, index.ntotal)
    scores = np.empty((xq.shape[0], k), dtype=np.float32)
    ids = np.empty((xq.shape[0], k), dtype=np.int64)
    for i in range(0, xq.shape[0], batch_size):
        s, j = index.search(xq[i : i + batch_size], k_eff)
        scores[i : i + batch_size, :k_eff] = s
        ids[i : i + batch_size, :k_eff] = j
    if k_eff < k:
        scores[:, k_eff:] = -np.inf
        ids[:, k_eff:] = -1
    scores[ids < 0] = -np.inf
    return scores, ids


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx ∩ exact| / |exact| for two (n, k) id lists (-1 entries ignored)."""
    a, e = np.asarray(approx_ids), np.asarray(exact_ids)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(f"approx_ids and exact_ids must be (n, k) arrays of one shape, got {a.shape}, {e.shape}")
    hits = ((a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)).any(1).sum(1)
    denom = np.maximum((e >= 0).sum(1), 1)
    return float(np.mean(hits / denom))


def measure_recall(
    corpus: np.ndarray, queries: np.ndarray, index, k: int, *, sample: int = 1000, seed: int = 0
) -> float:
    """Recall@k of ``index`` against an exact flat search on up to ``sample`` queries (seeded sample)."""
    rng = np.random.default_rng(seed)
    n = queries.shape[0]
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    exact = build_index(corpus, "flat")
    _, e = search(exact, queries[rows], k)
    _, a = search(index, queries[rows], k)
    return recall_at_k(a, e)
