"""What a mining run will cost, said before it starts, and the refusal when it cannot fit.

Memory is counted from the sizes of what the run allocates (embeddings, the index's own copy or codes,
the score tiles, the retrieved candidate arrays, the worker processes) on top of this process's
resident memory now; pages of a memory-mapped store count in full, because a search reads every one
and the kernel counts them in the resident set. Time is floating-point work divided by this
machine's matrix-product speed, measured once per process with a ~0.1 s probe (float32 and bfloat16),
plus the encoding time of a probe batch scaled to the texts to encode. Both are estimates: the
run's summary reports what was measured.
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass, field

from hardneg._optional import require
from hardneg.mining.mine import knob
from hardneg.vector_search import (
    candidates_per_query,
    default_train_size,
    factory_index,
    parse_index_spec,
    resolve_index_spec,
)

#: resident memory of one shard worker before its index: the interpreter, torch and FAISS (measured ~330 MB)
WORKER_BASE_BYTES = 400 * 2**20
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(value: str | int | float, name: str = "--max-memory") -> int:
    """Bytes from ``16G``, ``16GB``, ``500M``, ``1.5T`` (powers of 1024) or a plain number of bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(value).upper())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{name} must be a size like 16G, 500M or a number of bytes, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def rss_bytes() -> int:
    """This process's resident memory now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_memory() -> tuple[int, str]:
    """(bytes, where from) this process may grow to: the kernel's MemAvailable plus what it holds now."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 + rss_bytes(), "available memory"
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") + rss_bytes(), "free memory"


@functools.cache
def machine_rates() -> dict[str, float]:
    """FLOP/s of a float32 and a bfloat16 (queries × documents) product on this machine (~0.1 s each)."""
    import torch

    out = {}
    a = torch.randn(512, 384)
    b = torch.randn(384, 8192)
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        x, y = a.to(dt), b.to(dt)
        x @ y  # warm-up: first calls pick kernels
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.05:
            x @ y
            reps += 1
        out[name] = 2 * 512 * 384 * 8192 * reps / (time.perf_counter() - t0)
    return out


@dataclass
class MiningEstimate:
    """Bytes and seconds by part; ``peak_bytes`` is their sum (everything is alive at the search)."""

    memory: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return int(sum(self.memory.values()))

    @property
    def total_s(self) -> float:
        return float(sum(self.seconds.values()))

    def lines(self) -> list[str]:
        mem = ", ".join(f"{k} {_size(v)}" for k, v in self.memory.items() if v >= 2**20)
        sec = ", ".join(f"{k} {_dur(v)}" for k, v in self.seconds.items() if v >= 0.05)
        return [f"estimate: peak memory {_size(self.peak_bytes)} ({mem})",
                f"estimate: time {_dur(self.total_s)} ({sec})"]

    def as_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "total_s": self.total_s, "memory": dict(self.memory),
                "seconds": dict(self.seconds)}

    def check(self, limit: int | str | None = None, names: str = "cli") -> None:
        """Raise one ValueError line when the peak exceeds ``limit`` (default: the available memory),
        naming the knobs that lower it as arguments (``names="python"``) or ``hardneg mine``'s options."""
        if limit is None:
            cap, where = available_memory()
        else:
            where = knob("max_memory", names)
            cap = parse_memory(limit, where)
        if self.peak_bytes > cap:
            raise ValueError(
                f"estimated peak memory {_size(self.peak_bytes)} exceeds the {_size(cap)} of {where}; "
                f"store the corpus on disk ({knob('store', names, 'float16')}), use a compressed index "
                f"(e.g. {knob('index', names, 'IVF4096,PQ48')}), or raise {knob('max_memory', names)}")


def _size(b: float) -> str:
    return f"{b / 2**30:.2f} GB" if b >= 2**30 else f"{b / 2**20:.0f} MB"


def _dur(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.1f} s"


def estimate_mining(
    n_corpus: int,
    n_queries: int,
    d: int,
    K: int,
    *,
    index: str = "flat",
    store: str | None = None,
    workers: int = 1,
    nprobe: int = 16,
    rerank: int = 4,
    recall_sample: int = 1000,
    base_bytes: int | None = None,
    extra_bytes: dict[str, int] | None = None,
    extra_seconds: dict[str, float] | None = None,
) -> MiningEstimate:
    """Estimate of `hardneg.mining.mine.mine_embeddings` retrieving ``K`` candidates per query.

    ``store`` is the corpus's on-disk dtype (``"float16"``, ``"bfloat16"``, ``"float32"``) or None for
    a float32 array in memory; ``extra_bytes`` / ``extra_seconds`` add the caller's parts (encoding)."""
    spec = resolve_index_spec(index)
    kind, nlist = parse_index_spec(spec)
    rates = machine_rates()
    f32, bf16 = rates["float32"], rates["bfloat16"]
    n, m = n_corpus, n_queries
    row32 = d * 4
    est = MiningEstimate()
    est.memory["this process now"] = rss_bytes() if base_bytes is None else base_bytes
    est.memory["corpus embeddings"] = n * d * {None: 4, "float32": 4, "float16": 2, "bfloat16": 2}[store]
    est.memory["query embeddings"] = 2 * m * row32  # the float32 array and its contiguous copy
    search_flops = 2.0 * n * m * d
    if kind == "flat":
        est.memory["index"] = n * row32 if store is None else 1024 * 32768 * 4  # FAISS's copy / one tile
        est.seconds["search"] = search_flops / f32
    elif kind == "bf16":
        est.memory["index"] = n * d * 2 + 65536 * 256 * 2
        est.seconds["search"] = search_flops / bf16
    else:
        train = default_train_size(n, nlist)
        if kind == "factory":
            probe = factory_index(spec, d)
            ivf = require("faiss", "mining").try_extract_index_ivf(probe)
            code = int(ivf.code_size) if ivf is not None else int(probe.sa_code_size())
            graph = 2 * 32 * 4 if "HNSW" in spec else 0
        else:
            code, graph = (row32, 0) if kind == "ivf" else (row32, 2 * nlist * 4)
        ids = 8 if nlist else 0
        est.memory["index"] = n * (code + ids + graph) + nlist * row32 + train * row32
        kc = candidates_per_query(K, n, rerank) if kind == "factory" else K
        est.memory["re-scoring"] = min(m, 1024) * kc * row32 if kind == "factory" else 0
        # k-means of the IVF cells, and of each PQ sub-space: the latter runs on (train × d/M) blocks far too
        # thin for the matrix-product speed (measured ~1/25 of it for PQ48 at d=384)
        lossy = kind == "factory" and code < row32
        est.seconds["train"] = (2.0 * train * nlist * d * 10 / f32
                                + (2.0 * min(train, 100_000) * 256 * d * 25 * 25 / f32 if lossy else 0.0))
        est.seconds["add"] = 2.0 * n * max(nlist, 1) * d / f32 + (2.0 * n * 40 * 2 * nlist * d / f32 * 0.2
                                                                  if kind == "hnsw" else 0.0)
        scanned = min(n, nprobe * n / nlist) if nlist else min(n, 2000.0)
        per_code = code if kind == "factory" and code < row32 else 2 * d
        est.seconds["search"] = 2.0 * m * nlist * d / f32 + m * scanned * per_code / (f32 / 8) \
            + 2.0 * m * kc * d / f32
    if workers > 1:
        est.memory[f"{workers} shard workers"] = workers * WORKER_BASE_BYTES
    est.memory["candidates and window"] = m * K * 64  # scores, ids, ranks, masks and sampling keys per candidate
    if kind != "flat" and recall_sample > 0:
        est.memory["recall check"] = n * row32 if store is None else 1024 * 32768 * 4
        est.seconds["recall check"] = 2.0 * min(recall_sample, m) * n * d / f32
    for k, v in (extra_bytes or {}).items():
        est.memory[k] = int(v)
    for k, sec in (extra_seconds or {}).items():
        est.seconds[k] = float(sec)
    return est


__all__ = ["MiningEstimate", "available_memory", "estimate_mining", "machine_rates", "parse_memory", "rss_bytes"]
