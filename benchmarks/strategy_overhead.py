"""Cost of composing a strategy, relative to the bare named loss, in one process.

    PYTHONPATH=src python benchmarks/strategy_overhead.py --sizes 1024,4096 --dim 128 --repeats 3

For each 2B it times forward + backward (round-robin over the cases, median of ``repeats``) of the named losses from
``hardneg.losses`` and of the equivalent / richer strategies, and prints ms and the ratio to the
named ``ucl`` measured in the same run. Diagnostics on (the default) and off are both shown.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from hardneg import losses as L
from hardneg.negatives import create_strategy


def _time(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z1: torch.Tensor, z2: torch.Tensor, repeats: int = 0
) -> float:
    """Milliseconds of one forward + backward (median of ``repeats + 1`` runs)."""
    out = []
    for _ in range(repeats + 1):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        t0 = time.perf_counter()
        fn(a, b).backward()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000.0


def _cases(y: torch.Tensor, ids: torch.Tensor) -> dict[str, Callable]:
    """The named losses and the strategies timed, as ``f(z1, z2) -> loss``."""
    s = {name: create_strategy(name) for name in ("ucl", "hscl", "semihard")}
    s_nd = {name: create_strategy(name, diagnostics=False) for name in ("ucl", "hscl")}
    topk, filtered = create_strategy("topk", k=64), create_strategy("filtered")
    return {
        "losses.ucl": lambda a, b: L.ucl(a, b),
        "strategy ucl": lambda a, b: s["ucl"](a, b),
        "strategy ucl, no diagnostics": lambda a, b: s_nd["ucl"](a, b),
        "strategy ucl + ids": lambda a, b: s["ucl"](a, b, ids=ids),
        "losses.hscl": lambda a, b: L.hscl(a, b, y),
        "strategy hscl": lambda a, b: s["hscl"](a, b, labels=y),
        "strategy hscl, no diagnostics": lambda a, b: s_nd["hscl"](a, b, labels=y),
        "strategy topk k=64": lambda a, b: topk(a, b),
        "strategy semihard": lambda a, b: s["semihard"](a, b),
        "strategy filtered (id + margin)": lambda a, b: filtered(a, b, ids=ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,4096", help="comma-separated 2B values")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for n2 in (int(s) for s in args.sizes.split(",")):
        B = n2 // 2
        g = torch.Generator().manual_seed(0)
        z1 = torch.randn(B, args.dim, generator=g)
        z2 = z1 + 0.5 * torch.randn(B, args.dim, generator=g)
        y = torch.randint(0, 10, (B,), generator=g)
        ids = torch.arange(B)
        cases = _cases(y, ids)
        print(f"\n2B = {n2}, d = {args.dim}, threads = {args.threads} (forward + backward, median of {args.repeats})")
        times: dict[str, list[float]] = {name: [] for name in cases}
        for fn in cases.values():  # warm-up
            _time(fn, z1, z2, 0)
        for _ in range(args.repeats):  # round-robin, so load changes hit every case alike
            for name, fn in cases.items():
                times[name].append(_time(fn, z1, z2, 0))
        base = statistics.median(times["losses.ucl"])
        for name, ts in times.items():
            ms = statistics.median(ts)
            print(f"  {name:34s} {ms:9.1f} ms   x{ms / base:5.2f} of losses.ucl")


if __name__ == "__main__":
    main()
