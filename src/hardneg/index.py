"""FAISS retrieval behind one option string, and the recall of an approximate index against exact search.

Option strings (cosine similarity = inner product of L2-normalised vectors):

- ``"flat"``: exact ``IndexFlatIP`` (default).
- ``"ivf{nlist}"`` (e.g. ``"ivf1024"``): ``IndexIVFFlat`` with ``nlist`` k-means cells, trained on
  the corpus with a fixed seed; ``nprobe`` cells are visited per query.
- ``"hnsw{M}"`` (e.g. ``"hnsw32"``): ``IndexHNSWFlat`` with ``M`` links per node; ``ef_search``
  controls the search beam.
- ``"bf16"``: brute force in two stages — a bfloat16 matrix product (AMX/AVX512-BF16 on recent
  CPUs, several times faster than float32) keeps the top ``max(4k, k+16)`` candidates per query, which
  are then re-scored exactly in float32. Exact unless a true top-k document falls outside the coarse
  list through bf16 rounding; its recall against exact search is measured and reported like the others.

- ``"auto"``: ``"bf16"`` where the CPU multiplies bfloat16 natively (``amx_bf16`` or ``avx512_bf16`` in
  ``/proc/cpuinfo``), else ``"flat"``; the summary names the index that was used.

For the approximate indexes, :func:`recall_at_k` measures recall@k of their result lists against an
exact flat search on a sample of queries; ``hardneg mine`` reports it in its summary.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from hardneg._optional import require

_SPEC = re.compile(r"^(flat|bf16|ivf(\d+)|hnsw(\d+))$")


@functools.cache  # parse_index_spec runs several times per mining call; the CPU does not change
def cpu_has_native_bf16() -> bool:
    """True where ``/proc/cpuinfo`` lists AMX-BF16 or AVX512-BF16 (bf16 matrix products at full speed)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_index_spec(spec: str) -> str:
    """``"auto"`` → ``"bf16"`` on CPUs with native bf16 (see :func:`cpu_has_native_bf16`), else ``"flat"``."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return "bf16" if cpu_has_native_bf16() else "flat"
    return spec


def parse_index_spec(spec: str) -> tuple[str, int]:
    """``"flat"`` → ("flat", 0); ``"ivf256"`` → ("ivf", 256); ``"hnsw32"`` → ("hnsw", 32); ``"auto"`` resolved."""
    if not isinstance(spec, str):
        raise TypeError(f"index must be a string like 'flat', 'ivf1024' or 'hnsw32', got {type(spec).__name__}")
    m = _SPEC.match(resolve_index_spec(spec).strip().lower())
    if not m:
        raise ValueError(
            f"index must be 'auto', 'flat', 'bf16', 'ivf{{nlist}}' or 'hnsw{{M}}' (e.g. ivf1024, hnsw32), got {spec!r}")
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
    return m.group(1), 0


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
    faiss = require("faiss", "mining")

    if threads is not None:
        faiss.omp_set_num_threads(int(threads))
    kind, n = parse_index_spec(spec)
    xb = _as_f32(corpus, "corpus embeddings")
    d = xb.shape[1]
    if kind == "bf16":
        return BF16Index(xb, threads=threads)
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


class BF16Index:
    """Two-stage brute-force inner-product search (see module docstring, ``"bf16"``).

    Stage 1 works on one (corpus block × query chunk) score tile at a time, written into a reused
    buffer laid out (documents, queries) so that every reduction runs along contiguous memory:

    1. ``S = C_b · Q_bᵀ`` in bfloat16 (oneDNN, AMX where present) into the buffer — a fresh tile per
       chunk would cost as much in page faults as the product itself;
    2. the maximum of each group of ``group`` consecutive documents, per query;
    3. the top ``kc`` groups per query. Every document among the block's top ``kc`` lies in one of
       them (a group holding such a document has a maximum at least as large), so gathering those
       ``kc·group`` scores and taking their top ``kc`` gives exactly the block's top ``kc`` in bf16,
       while ``torch.topk`` only ever sees ``1/group`` of the tile;
    4. the block's candidates are merged with the running best ``kc``.

    Stage 2 re-scores the ``kc`` candidates of each query in float32 and keeps the top ``k``.
    Peak extra memory is one ``c_block × q_chunk`` bf16 tile (32 MiB by default) plus the bf16 copy
    of the corpus.
    """

    def __init__(self, corpus: np.ndarray, *, threads: int | None = None, q_chunk: int = 256,
                 c_block: int = 65536, group: int = 32):
        import torch

        if c_block % group:
            raise ValueError(f"c_block ({c_block}) must be a multiple of group ({group})")
        self.xb = corpus
        self.d, self.ntotal = corpus.shape[1], corpus.shape[0]
        self.q_chunk, self.c_block, self.group = q_chunk, c_block, group
        padded = -(-self.ntotal // group) * group
        self.xb_bf16 = torch.zeros(padded, self.d, dtype=torch.bfloat16)  # rows past ntotal score -inf
        self.xb_bf16[: self.ntotal] = torch.from_numpy(corpus)

    def _block_top(self, qbt, b: int, kc: int, buf):
        """bf16 top-``kc`` (values, global ids) of corpus block starting at ``b`` for queries ``qbt`` (d, r)."""
        import torch

        G = self.group
        blk = self.xb_bf16[b : b + self.c_block]
        rows, r = blk.shape[0], qbt.shape[1]
        S = buf[: rows * r].view(rows, r)
        torch.mm(blk, qbt, out=S)
        real = self.ntotal - b
        if real < rows:
            S[real:] = float("-inf")
        gmax = S.view(rows // G, G, r).amax(1)  # (groups, r)
        kg = min(kc, rows // G)
        _, gi = gmax.T.topk(kg, dim=1)  # (r, kg) best groups per query
        docs = (gi[:, :, None] * G + torch.arange(G)).flatten(1)  # (r, kg·G) block-local rows
        v = S.view(-1)[docs * r + torch.arange(r)[:, None]]
        v, j = v.topk(min(kc, v.shape[1]), dim=1)
        return v, torch.gather(docs, 1, j) + b

    def coarse(self, qf, kc: int, buf):
        """Stage 1 for float32 queries ``qf`` (r, d): the bf16 top-``kc`` (values, ids) over all corpus blocks."""
        import torch

        qbt = qf.T.to(torch.bfloat16).contiguous()
        best_v = best_i = None
        for b in range(0, self.xb_bf16.shape[0], self.c_block):
            v, i = self._block_top(qbt, b, kc, buf)
            if best_v is not None:
                v, j = torch.cat([best_v, v], 1).topk(kc, dim=1)
                i = torch.gather(torch.cat([best_i, i], 1), 1, j)
            best_v, best_i = v, i
        return best_v, best_i

    def new_buffer(self, n_queries: int | None = None):
        """The reused (c_block × queries per chunk) bf16 score tile; ``n_queries`` defaults to ``q_chunk``."""
        import torch

        r = self.q_chunk if n_queries is None else n_queries
        return torch.empty(min(self.c_block, self.xb_bf16.shape[0]) * r, dtype=torch.bfloat16)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        kc = min(max(4 * k, k + 16), self.ntotal)
        xq_t = torch.from_numpy(np.ascontiguousarray(xq, dtype=np.float32))
        xb_t = torch.from_numpy(self.xb)
        out_s = np.empty((xq.shape[0], k), np.float32)
        out_i = np.empty((xq.shape[0], k), np.int64)
        buf = self.new_buffer()
        with torch.inference_mode():
            for a in range(0, xq.shape[0], self.q_chunk):
                qf = xq_t[a : a + self.q_chunk]
                _, best_i = self.coarse(qf, kc, buf)
                pad = best_i >= self.ntotal  # only when a query has fewer than kc real documents
                best_i = best_i.masked_fill(pad, 0)
                exact = torch.einsum("nd,nkd->nk", qf, xb_t[best_i]).masked_fill_(pad, float("-inf"))
                v, j = exact.topk(k, dim=1)
                out_s[a : a + self.q_chunk] = v.numpy()
                out_i[a : a + self.q_chunk] = torch.gather(best_i, 1, j).numpy()
        return out_s, out_i


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
