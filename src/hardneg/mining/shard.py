"""Search sharded over worker processes: each worker indexes one contiguous slice of a memory-mapped
corpus, every query goes to every worker, and the per-shard top-k lists are merged by score.

This is FAISS's ``IndexShards`` layout across processes: a shard's index (a bf16 copy, PQ codes, a
graph) lives only in its worker, so the slices can be as large as one process (or, with the same
split, one machine or one GPU) can hold. For an exact index (``flat``, and ``bf16`` up to its coarse
stage) the merge of per-shard top-k lists *is* the global top-k; an approximate index trains one
quantizer per shard, and its recall is measured on the merged lists like any other.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from typing import Any

import numpy as np

from hardneg.cores import usable_cores
from hardneg.mining.store import EmbeddingStore
from hardneg.vector_search import as_rows, build_index, search


def _serve(conn, path: str, a: int, b: int, spec: str, kw: dict[str, Any], threads: int) -> None:
    """Worker loop: build the index of rows [a, b), then answer (queries, k) requests until None.

    The parent goes away without a word when it stops (an error in another shard, Ctrl-C): a closed
    pipe or an interrupt ends the worker quietly, since the parent reports what happened."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, EOFError, KeyboardInterrupt):
        _serve_until_closed(conn, path, a, b, spec, kw, threads)


def _serve_until_closed(conn, path: str, a: int, b: int, spec: str, kw: dict[str, Any], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        part = EmbeddingStore(path).slice(a, b)
        part.finite_checked = True  # the parent checked the whole store (ShardedIndex)
        index = build_index(part, spec, threads=threads, **kw)
        conn.send(("ready", None))
    except Exception as e:  # the parent re-raises it; a worker never dies silently
        conn.send(("error", _describe(e)))
        return
    while True:
        msg = conn.recv()
        if msg is None:
            return
        xq, k = msg
        try:
            s, i = search(index, xq, k)
            conn.send(("ok", (s, np.where(i >= 0, i + a, -1))))
        except Exception as e:
            conn.send(("error", _describe(e)))


def _describe(e: BaseException) -> tuple[str, str]:
    return type(e).__name__, str(e)


def _reraise(where: str, err: tuple[str, str]) -> None:
    """A worker's error in the parent as one line: a user error as ``ValueError``, anything else (FAISS
    running out of memory, a bug) as ``ChildProcessError`` naming the shard and the exception."""
    name, msg = err
    if name in ("ValueError", "TypeError", "FileNotFoundError", "MissingExtraError"):
        raise ValueError(f"{where}: {msg}")
    first = msg.strip().splitlines()[-1] if msg.strip() else ""
    raise ChildProcessError(f"{where}: the search worker failed with {name}: {first}")


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of several (scores, ids) lists per query, by decreasing score (-1 ids last)."""
    s = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    s = np.where(i >= 0, s, -np.inf)
    j = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, j, 1).astype(np.float32), np.take_along_axis(i, j, 1)


def shard_bounds(n: int, workers: int) -> list[tuple[int, int]]:
    """``workers`` contiguous row ranges covering [0, n), sizes differing by at most one."""
    edges = np.linspace(0, n, workers + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


class ShardedIndex:
    """``workers`` processes, each holding the index of one slice of ``store``; ``search`` like any index.

    Use as a context manager (or call `close`) so the workers end with it."""

    def __init__(self, store: EmbeddingStore, spec: str, workers: int, *, threads: int | None = None,
                 **index_kw: Any) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if workers > store.shape[0]:
            raise ValueError(f"{workers} workers for a corpus of {store.shape[0]} rows; use at most one per row")
        as_rows(store)  # NaN / inf refused here, once, not by every worker
        self.d, self.ntotal = store.d, store.shape[0]
        self.bounds = shard_bounds(self.ntotal, workers)
        threads = threads or max(1, usable_cores() // workers)
        ctx = mp.get_context("spawn")  # a forked child would inherit the parent's OpenMP thread pools
        self._conns, self._procs = [], []
        try:
            for a, b in self.bounds:
                here, there = ctx.Pipe()
                p = ctx.Process(target=_serve, args=(there, str(store.path), store.lo + a, store.lo + b, spec,
                                                     index_kw, threads), daemon=True)
                p.start()
                there.close()
                self._conns.append(here)
                self._procs.append(p)
            for (a, b), c in zip(self.bounds, self._conns):
                tag, err = self._recv(c, a, b)
                if tag == "error":
                    _reraise(f"shard [{a}, {b})", err)
        except BaseException:
            self.close()
            raise

    def _recv(self, conn, a: int, b: int):
        try:
            return conn.recv()
        except (EOFError, ConnectionResetError):
            self._dead(conn, a, b)

    def _dead(self, conn, a: int, b: int) -> None:
        p = self._procs[self._conns.index(conn)]
        p.join(timeout=5)
        code = p.exitcode or 0  # None while the process still runs after the join's timeout
        how = f"was killed by signal {-code}" if code < 0 else f"exited ({p.exitcode})"
        raise ChildProcessError(f"the search worker of shard [{a}, {b}) {how} without an answer "
                                "(out of memory? try fewer --workers or a smaller index)") from None

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        for (a, b), c in zip(self.bounds, self._conns):
            try:
                c.send((xq, k))
            except (BrokenPipeError, ConnectionResetError):
                self._dead(c, a, b)
        parts = []
        for (a, b), c in zip(self.bounds, self._conns):
            tag, payload = self._recv(c, a, b)
            if tag == "error":
                _reraise(f"shard [{a}, {b})", payload)
            parts.append(payload)
        return merge_topk(parts, min(k, self.ntotal))

    def close(self) -> None:
        for c in self._conns:
            try:
                c.send(None)
                c.close()
            except (OSError, BrokenPipeError):
                pass
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
        self._conns, self._procs = [], []

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ShardedIndex", "merge_topk", "shard_bounds"]
