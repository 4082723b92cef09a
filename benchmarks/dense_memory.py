"""Time and peak memory of the per-pixel loss: hardneg's chunked kernel vs a dense torch
implementation, in one process.

    PYTHONPATH=src python benchmarks/dense_memory.py --images 1,2,4,6,32 --size 64 --dim 32 --budget-gb 8

Each case is one training step (forward + backward + Adam) of a 1×1-conv pixel encoder on
``images × size × size`` pixels, every pixel an anchor (``anchors_per_image=None``), positives the
same pixel of a second view, candidates every pixel of the second view (MoCo-style asymmetric
in-batch: n = m = images·size²). Cases:

- ``hardneg``: :class:`hardneg.dense.DenseContrast` with the plain strategy (the kernel's fused path);
- ``hardneg + neighbourhood r=2``: the same with :class:`hardneg.negatives.pixels.NeighbourhoodFilter`
  (the filter runs per chunk inside the kernel);
- ``dense torch``: ``F.cross_entropy(q @ k.T / t, arange(n))`` on the whole (n × m) matrix, run only
  where its estimated footprint (3 float32 n × m matrices) fits in ``--budget-gb``.

Peak memory is the largest resident set size above the process's level before the case, sampled
every millisecond by a thread (``/proc/self/statm``); glibc is told to serve every allocation of
128 KiB or more by ``mmap`` and memory is trimmed before each case, so freed tensors leave the
resident set and one case's peak does not hide inside another's. Time is wall-clock of the step. Ratios are
dense / hardneg at each size both ran. At the smallest size both losses are also compared
numerically (they must agree to float32 precision).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hardneg.dense import DenseContrast
from hardneg.negatives import InBatch, Strategy
from hardneg.negatives.pixels import NeighbourhoodFilter

_PAGE = os.sysconf("SC_PAGE_SIZE")
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: RSS peaks are then upper bounds of reuse-free peaks
        return None


_LIBC = _libc()
if _LIBC is not None:
    _LIBC.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def measure(fn: Callable[[], float]) -> tuple[float, float, float]:
    """(value, seconds, peak RSS above the starting level in MB) of ``fn()``."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    t0 = time.perf_counter()
    v = fn()
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    peak[0] = max(peak[0], _rss())
    return v, dt, (peak[0] - base) / 2**20


def dense_torch_loss(f1: torch.Tensor, f2: torch.Tensor, t: float) -> torch.Tensor:
    """Every pixel of ``f1`` against every pixel of ``f2``; positive: the same pixel."""
    q = F.normalize(f1.permute(0, 2, 3, 1).reshape(-1, f1.shape[1]), dim=1)
    k = F.normalize(f2.permute(0, 2, 3, 1).reshape(-1, f2.shape[1]), dim=1)
    return F.cross_entropy(q @ k.T / t, torch.arange(q.shape[0]))


def step_fn(images: int, size: int, dim: int, loss: str, t: float, seed: int = 0) -> Callable[[], float]:
    """One training step of a 1×1-conv encoder with the ``loss`` case; returns the loss value."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(images, 3, size, size, generator=g)
    x2 = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(3, dim, 1), nn.ReLU(), nn.Conv2d(dim, dim, 1))
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    if loss == "dense torch":
        crit = lambda a, b: dense_torch_loss(a, b, t)  # noqa: E731
    else:
        filters = [NeighbourhoodFilter(2.0)] if "neighbourhood" in loss else None
        dc = DenseContrast(Strategy(source=[InBatch(symmetric=False)], filters=filters, temperature=t,
                                    diagnostics=False), anchors_per_image=None)
        crit = lambda a, b: dc(a, b)  # noqa: E731

    def run() -> float:
        out = crit(enc(x), enc(x2))
        opt.zero_grad()
        out.backward()
        opt.step()
        return float(out.detach())

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="1,2,4,6,32", help="comma-separated numbers of images per step")
    ap.add_argument("--size", type=int, default=64, help="feature maps are size × size")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--budget-gb", type=float, default=8.0, help="largest estimated footprint of the dense case")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-neighbourhood", action="store_true", help="skip the filtered case")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.images.split(",")]
    t = 0.1
    cases = ["hardneg"] + ([] if args.no_neighbourhood else ["hardneg + neighbourhood r=2"]) + ["dense torch"]
    results = []
    for b in sizes:
        n = b * args.size**2
        row = {"images": b, "pixels": n}
        for case in cases:
            if case == "dense torch" and 3 * 4 * n * n > args.budget_gb * 2**30:
                continue
            v, dt, mb = measure(step_fn(b, args.size, args.dim, case, t))
            row[case] = {"loss": v, "seconds": dt, "peak_mb": mb}
        if "dense torch" in row:
            d, h = row["dense torch"], row["hardneg"]
            if b == sizes[0] and abs(d["loss"] - h["loss"]) > 1e-4 * max(1.0, abs(d["loss"])):
                raise SystemExit(f"losses disagree at {n} pixels: dense {d['loss']} vs hardneg {h['loss']}")
            row["ratio_time_dense_over_hardneg"] = d["seconds"] / h["seconds"]
            row["ratio_memory_dense_over_hardneg"] = d["peak_mb"] / max(h["peak_mb"], 1e-9)
        results.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
