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
- any FAISS ``index_factory`` string, spelled as FAISS spells it (e.g. ``"IVF4096,PQ48"``,
  ``"OPQ48,IVF4096,PQ48"``, ``"HNSW32,Flat"``, ``"IVF1024,SQ8"``): built with the inner-product metric,
  trained on a seeded sample of the corpus (``train_size``; default all rows up to 100,000, at least
  50 per IVF cell), filled in row blocks, searched with ``nprobe`` / ``ef_search``; its candidate lists
  (``max(rerank·k, k+16)`` per query) are re-scored exactly against the corpus rows, so compressed
  codes (PQ, SQ) decide only which documents are looked at, never the scores.

The corpus is an in-memory matrix or anything with the row interface of
`hardneg.mining.store.EmbeddingStore` (``shape``, ``rows(a, b)``, ``take(ids)``,
``bf16_rows(a, b)``; float32 out): a store memory-mapped from disk is read block by block, never
copied whole into float32. ``"flat"`` on such a store is an exact search streamed over row blocks.

For the approximate indexes, `recall_at_k` measures recall@k of their result lists against an
exact flat search on a sample of queries; ``hardneg mine`` reports it in its summary.
"""

from __future__ import annotations

import re

import numpy as np

from hardneg._optional import require
from hardneg.cores import cpu_info

_SPEC = re.compile(r"^(flat|bf16|ivf(\d+)|hnsw(\d+))$")
# what FAISS's index_factory accepts is its own business (it parses and reports); this only tells an
# index_factory string from a typo of a short spec: FAISS components are spelled in capitals
_FACTORY = re.compile(r"^(?=.*[A-Z])[A-Za-z0-9_,.=+-]+$")
_IVF_IN_FACTORY = re.compile(r"IVF(\d+)")
#: rows per block when a corpus is read, copied or added to an index piece by piece
BLOCK = 65536
#: rows per block where a whole-matrix temporary would add to the peak memory (the bf16 index's copy of the
#: corpus, the finiteness check): a few MB at a time
TEMP_BLOCK = 4096


def cpu_has_native_bf16() -> bool:
    """True where the CPU lists AMX-BF16 or AVX512-BF16 (`hardneg.cores.cpu_info`): bf16 matrix
    products at full speed."""
    return bool(cpu_info()[1] & {"amx_bf16", "avx512_bf16"})


def resolve_index_spec(spec: str) -> str:
    """``"auto"`` → ``"bf16"`` on CPUs with native bf16 (see `cpu_has_native_bf16`), else ``"flat"``."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return "bf16" if cpu_has_native_bf16() else "flat"
    return spec


def parse_index_spec(spec: str, d: int | None = None) -> tuple[str, int]:
    """``"flat"`` → ("flat", 0); ``"ivf256"`` → ("ivf", 256); ``"hnsw32"`` → ("hnsw", 32); ``"auto"`` resolved;
    a FAISS index_factory string → ("factory", its IVF cell count or 0).

    With ``d``, a factory string is also built once (untrained, empty) so that FAISS's own parser
    rejects what it cannot build for ``d``-dimensional vectors (``PQ48`` needs ``d % 48 == 0``), and
    what FAISS builds but could not fill row by row is refused too (`_check_usable`)."""
    if not isinstance(spec, str):
        raise TypeError(f"index must be a string like 'flat', 'ivf1024' or 'hnsw32', got {type(spec).__name__}")
    raw = resolve_index_spec(spec).strip()
    m = _SPEC.match(raw.lower())
    if not m:
        if _FACTORY.match(raw):
            if d is not None:
                _check_usable(factory_index(raw, d), raw)
            cells = _IVF_IN_FACTORY.search(raw)
            return "factory", int(cells.group(1)) if cells else 0
        raise ValueError(
            f"index must be 'auto', 'flat', 'bf16', 'ivf{{nlist}}', 'hnsw{{M}}' (e.g. ivf1024, hnsw32) or a FAISS "
            f"index_factory string (e.g. 'IVF4096,PQ48'), got {spec!r}")
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


def _faiss_reason(e: RuntimeError) -> str:
    """The last line of a FAISS exception without its C++ source location."""
    why = str(e).strip().splitlines()[-1]
    return why.split(" failed: ")[-1] if " failed: " in why else why.rsplit(": ", 1)[-1]


def factory_index(spec: str, d: int):
    """``faiss.index_factory`` with the inner-product metric; FAISS's refusal as one ValueError line."""
    faiss = require("faiss", "mining")
    try:
        return faiss.index_factory(int(d), spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"index {spec!r} cannot be built by FAISS for {d}-dimensional vectors: "
                         f"{_faiss_reason(e)}") from None


def _check_usable(index, spec: str) -> None:
    """Refuse a built factory index that mining could not fill: an ``IDMap`` wrapper (hardneg adds
    rows in order and their row numbers are the ids; FAISS wants ``add_with_ids`` there), and for an
    index that needs no training, whatever FAISS refuses when two rows are added and searched."""
    faiss = require("faiss", "mining")
    if isinstance(faiss.downcast_index(index), (faiss.IndexIDMap, faiss.IndexIDMap2)):
        raise ValueError(f"index {spec!r}: IDMap is not supported (corpus rows are added in order and their "
                         "row numbers are the ids); drop 'IDMap,'")
    if index.is_trained:
        x = np.random.default_rng(0).standard_normal((2, index.d)).astype(np.float32)
        try:
            index.add(x)
            index.search(x[:1], 1)
        except RuntimeError as e:
            raise ValueError(f"index {spec!r} cannot be used by FAISS: {_faiss_reason(e)}") from None


def training_rows(index) -> int:
    """The fewest rows FAISS can train the built ``index`` on: 0 when trained, else the IVF cell
    count and the ``2**nbits`` centroids of a product quantizer (PQ, and OPQ's rotation, which trains
    one of 256), whichever is larger; 1 for any other untrained index."""
    faiss = require("faiss", "mining")
    if index.is_trained:
        return 0
    need = 1
    ivf = faiss.try_extract_index_ivf(index)
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        for i in range(inner.chain.size()):
            if isinstance(faiss.downcast_VectorTransform(inner.chain.at(i)), faiss.OPQMatrix):
                need = max(need, 256)  # faiss/VectorTransform.cpp: OPQ trains a ProductQuantizer of 8 bits
        inner = faiss.downcast_index(inner.index)
    if ivf is not None:
        need = max(need, ivf.nlist)
        inner = faiss.downcast_index(ivf)
    pq = getattr(inner, "pq", None)
    if pq is not None:
        need = max(need, int(pq.ksub))
    return need


def check_search_params(nprobe: int, ef_search: int) -> None:
    """``nprobe`` (IVF cells visited) and ``ef_search`` (HNSW beam) are ints >= 1."""
    for name, v in (("nprobe", nprobe), ("ef_search", ef_search)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def _too_few_rows(spec: str, need: int, have: int, where: str = "the corpus") -> ValueError:
    return ValueError(f"{spec} needs at least {need} corpus vectors to train, got {have} in {where}; "
                      "choose fewer cells or a smaller index")


def check_index_fits(spec: str, n: int, d: int, workers: int = 1) -> None:
    """Refuse, before anything is encoded, an index that cannot be built over ``n`` rows of dimension
    ``d`` split into ``workers`` shards: what FAISS cannot build for ``d`` (`parse_index_spec`),
    and too few rows in the smallest shard to train it (`training_rows`)."""
    kind, cells = parse_index_spec(spec, d)
    need = cells if kind == "ivf" else training_rows(factory_index(spec.strip(), d)) if kind == "factory" else 0
    smallest = n // max(workers, 1)  # shard sizes differ by at most one (hardneg.mining.shard.shard_bounds)
    if need > smallest:
        where = "the corpus" if workers <= 1 else f"the smallest of {workers} shards (--workers)"
        raise _too_few_rows(spec, need, smallest, where)


def check_finite(x: np.ndarray, name: str, first_row: int = 0) -> None:
    """Refuse NaN or infinite values in the (n, d) rows ``x``, naming the first row holding one
    (``first_row``: the number of ``x``'s row 0 in the whole matrix)."""
    for a in range(0, len(x), TEMP_BLOCK):  # np.isfinite's boolean copy of the whole of x would add to the peak
        ok = np.isfinite(x[a : a + TEMP_BLOCK])
        if not ok.all():
            row = first_row + a + int(np.flatnonzero(~ok.all(axis=1))[0])
            raise ValueError(f"{name} contains non-finite values (NaN or inf; first in row {row})")


def _as_f32(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {x.shape}")
    check_finite(x, name)
    return x


class ArrayRows:
    """An in-memory (n, d) float32 matrix behind the row interface that the indexes read."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = _as_f32(x, "corpus embeddings")
        self.shape, self.ndim = self.x.shape, 2

    @property
    def d(self) -> int:
        return self.shape[1]

    def rows(self, a: int, b: int) -> np.ndarray:
        return self.x[a:b]

    def take(self, ids: np.ndarray) -> np.ndarray:
        return self.x[np.asarray(ids, dtype=np.int64)]

    def bf16_rows(self, a: int, b: int):
        import torch

        return torch.from_numpy(self.x[a:b]).to(torch.bfloat16)


def as_rows(corpus):
    """The corpus behind the row interface, checked finite: an array is wrapped (float32), a store
    passes through after a pass over its row blocks (once per store object: ``finite_checked``)."""
    if all(hasattr(corpus, a) for a in ("rows", "take", "bf16_rows", "shape")):
        if not getattr(corpus, "finite_checked", False):
            where = f"corpus embeddings ({corpus.path})" if hasattr(corpus, "path") else "corpus embeddings"
            for a in range(0, corpus.shape[0], BLOCK):  # block by block: memory stays one block
                check_finite(corpus.rows(a, a + BLOCK), where, a)
            corpus.finite_checked = True
        return corpus
    return ArrayRows(corpus)


def _blocks(src, block: int = BLOCK):
    for a in range(0, src.shape[0], block):
        yield src.rows(a, a + block)


def default_train_size(n: int, nlist: int) -> int:
    """Training rows for a FAISS index: all up to 100,000, and at least 50 per IVF cell (k-means wants
    ~40+ points per centroid; more only slows training)."""
    return min(n, max(100_000, 50 * nlist))


def _train_sample(src, size: int, seed: int) -> np.ndarray:
    n = src.shape[0]
    if size >= n:
        return src.rows(0, n)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return src.take(rows)


def build_index(
    corpus,
    spec: str = "flat",
    *,
    nprobe: int = 16,
    ef_search: int = 128,
    seed: int = 0,
    threads: int | None = None,
    rerank: int = 4,
    train_size: int | None = None,
):
    """Build an inner-product index over ``corpus`` (an (m, d) array or a store) according to ``spec``."""
    faiss = require("faiss", "mining")

    check_search_params(nprobe, ef_search)
    if threads is not None:
        faiss.omp_set_num_threads(int(threads))
    src = as_rows(corpus)
    kind, n = parse_index_spec(spec, src.d)
    m, d = src.shape
    if kind == "bf16":
        return BF16Index(src, threads=threads, rerank=rerank)
    if kind == "flat":
        if isinstance(src, ArrayRows):
            index = faiss.IndexFlatIP(d)
            index.add(src.x)
            return index
        return StreamedFlatIndex(src)
    if kind == "ivf" and n > m:
        raise _too_few_rows(spec, n, m)
    if kind == "ivf":
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, n, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(_train_sample(src, train_size or default_train_size(m, n), seed))
        index.nprobe = min(nprobe, n)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, n, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    else:
        index = factory_index(spec.strip(), d)
        if training_rows(index) > m:
            raise _too_few_rows(spec, training_rows(index), m)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
        if not index.is_trained:
            try:
                index.train(_train_sample(src, train_size or default_train_size(m, n), seed))
            except RuntimeError as e:
                raise ValueError(f"index {spec!r}: FAISS could not train it: {_faiss_reason(e)}") from None
        ps = faiss.ParameterSpace()
        if ivf is not None:
            ps.set_index_parameter(index, "nprobe", min(nprobe, ivf.nlist))
        if "HNSW" in spec:
            ps.set_index_parameter(index, "efSearch", ef_search)
    for blk in _blocks(src):
        index.add(np.ascontiguousarray(blk))
    if kind == "factory":
        return RescoredIndex(index, src, rerank=rerank)
    return index


def candidates_per_query(k: int, ntotal: int, rerank: int) -> int:
    """How many candidates a two-stage search keeps per query before exact re-scoring."""
    return min(max(rerank * k, k + 16), ntotal)


def _rescore(xq: np.ndarray, cand: np.ndarray, src, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 scores of candidate lists ``cand`` (r, kc; -1 = none) and the top ``k`` of each."""
    pad = cand < 0
    safe = np.where(pad, 0, cand)
    exact = np.matmul(src.take(safe), xq[:, :, None])[..., 0]  # batched: one (kc, d)·(d,) per query
    exact[pad] = -np.inf
    j = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(exact, j, 1)
    i = np.take_along_axis(safe, j, 1)
    i[~np.isfinite(s)] = -1
    return s.astype(np.float32), i


class RescoredIndex:
    """A FAISS index that proposes ``max(rerank·k, k+16)`` candidates per query and the exact float32
    scores of the corpus rows that rank them (see module docstring, factory strings)."""

    def __init__(self, index, src, *, rerank: int = 4, q_chunk: int = 1024) -> None:
        if not isinstance(rerank, int) or rerank < 1:
            raise ValueError(f"rerank must be an int >= 1, got {rerank!r}")
        self.index, self.src, self.rerank, self.q_chunk = index, src, rerank, q_chunk
        self.d, self.ntotal = index.d, index.ntotal

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        kc = candidates_per_query(k, self.ntotal, self.rerank)
        out_s = np.empty((xq.shape[0], k), np.float32)
        out_i = np.empty((xq.shape[0], k), np.int64)
        for a in range(0, xq.shape[0], self.q_chunk):  # chunks: the gathered rows are (chunk, kc, d) float32
            q = xq[a : a + self.q_chunk]
            _, cand = self.index.search(q, kc)
            out_s[a : a + len(q)], out_i[a : a + len(q)] = _rescore(q, cand, self.src, k)
        return out_s, out_i


class StreamedFlatIndex:
    """Exact inner-product search over a corpus read in row blocks (a memory-mapped store): per
    (query chunk × corpus block) a float32 score tile, its top ``k``, merged with the running best."""

    def __init__(self, src, *, q_chunk: int = 1024, c_block: int = 32768) -> None:
        self.src, self.q_chunk, self.c_block = src, q_chunk, c_block
        self.d, self.ntotal = src.shape[1], src.shape[0]

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        k = min(k, self.ntotal)
        out_s = np.empty((xq.shape[0], k), np.float32)
        out_i = np.empty((xq.shape[0], k), np.int64)
        with torch.inference_mode():
            for a in range(0, xq.shape[0], self.q_chunk):
                q = torch.from_numpy(np.ascontiguousarray(xq[a : a + self.q_chunk]))
                best_v = best_i = None
                for b in range(0, self.ntotal, self.c_block):
                    S = q @ torch.from_numpy(np.ascontiguousarray(self.src.rows(b, b + self.c_block))).T
                    v, i = S.topk(min(k, S.shape[1]), dim=1)
                    i = i + b
                    if best_v is not None and best_i is not None:
                        v, j = torch.cat([best_v, v], 1).topk(k, dim=1)
                        i = torch.gather(torch.cat([best_i, i], 1), 1, j)
                    best_v, best_i = v, i
                assert best_v is not None and best_i is not None  # an index holds one row at least
                out_s[a : a + len(q)] = best_v.numpy()
                out_i[a : a + len(q)] = best_i.numpy()
        return out_s, out_i


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

    Stage 2 re-scores the ``kc = max(rerank·k, k+16)`` candidates of each query in float32 and keeps
    the top ``k``. Peak extra memory is one ``c_block × q_chunk`` bf16 tile (32 MiB by default) plus the
    bf16 copy of the corpus (filled in blocks of `TEMP_BLOCK` rows from an array or a memory-mapped
    store, so that no block's temporaries weigh on the peak).
    """

    def __init__(self, corpus, *, threads: int | None = None, q_chunk: int = 256,
                 c_block: int = 65536, group: int = 32, rerank: int = 4):
        import torch

        if c_block % group:
            raise ValueError(f"c_block ({c_block}) must be a multiple of group ({group})")
        self.src = as_rows(corpus)
        self.d, self.ntotal = self.src.shape[1], self.src.shape[0]
        self.q_chunk, self.c_block, self.group, self.rerank = q_chunk, c_block, group, rerank
        padded = -(-self.ntotal // group) * group
        self.xb_bf16 = torch.zeros(padded, self.d, dtype=torch.bfloat16)  # rows past ntotal score -inf
        # in small blocks: each block's bf16 (and a store's float32) temporary adds to the copy's memory
        for a in range(0, self.ntotal, TEMP_BLOCK):
            self.xb_bf16[a : min(a + TEMP_BLOCK, self.ntotal)] = self.src.bf16_rows(a, a + TEMP_BLOCK)

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
            if best_v is not None and best_i is not None:
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

        kc = candidates_per_query(k, self.ntotal, self.rerank)
        xq_t = torch.from_numpy(np.ascontiguousarray(xq, dtype=np.float32))
        out_s = np.empty((xq.shape[0], k), np.float32)
        out_i = np.empty((xq.shape[0], k), np.int64)
        buf = self.new_buffer()
        with torch.inference_mode():
            for a in range(0, xq.shape[0], self.q_chunk):
                qf = xq_t[a : a + self.q_chunk]
                _, best_i = self.coarse(qf, kc, buf)
                best_i = best_i.masked_fill(best_i >= self.ntotal, -1)  # a query with fewer than kc documents
                s, i = _rescore(qf.numpy(), best_i.numpy(), self.src, k)
                out_s[a : a + self.q_chunk], out_i[a : a + self.q_chunk] = s, i
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
    exact = build_index(corpus, "flat")  # FAISS flat in memory; streamed over the blocks of a store
    _, e = search(exact, queries[rows], k)
    _, a = search(index, queries[rows], k)
    return recall_at_k(a, e)
