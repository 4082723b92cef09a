"""Does ``torch.compile`` (CPU inductor) beat the kernel's eager passes over one chunk's tile?

The kernel's elementwise work per chunk, for H-SCL / H-UCL at β = 1 (the most passes of any named
loss), on a (chunk × candidates) tile ``S`` of s/t with −∞ masks::

    π = softmax(S);  lse(S);  Σπ²;  D = π ⊙ (π − Σπ²/2)       (the gradient tile, up to a row factor)

Eager: the kernel's own functions (``_softmax_lse_`` with ``then="tilt"``, block by block on
cache-sized blocks of rows, into preallocated buffers). Compiled: the same formula as one function
given to ``torch.compile`` (inductor fuses the elementwise loops and reductions into generated C++).
Both are timed in this process, interleaved, median of ``--repeats``; compilation happens before
timing and is reported apart.
The three matrix products are timed too, as the scale: what fusion can save is at most the tile
passes' share of the step.

    python benchmarks/compile_chunk.py --chunk 1024 --m 8192
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor

from hardneg.losses.kernel import _softmax_lse_, _Workspace


def eager(S: Tensor, ws: _Workspace) -> tuple[Tensor, Tensor]:
    z2 = S.new_empty(S.shape[0])
    lse = _softmax_lse_(S, ws, sumsq=z2, then="tilt")
    return lse, S


def fused(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lse = torch.logsumexp(S, 1)
    p = torch.exp(S - lse[:, None])
    z2 = (p * p).sum(1)
    return lse, p * (p - 0.5 * z2[:, None])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--m", type=int, default=8192)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(a.chunk, a.d, generator=g), dim=1)
    k = torch.nn.functional.normalize(torch.randn(a.m, a.d, generator=g), dim=1)
    base = (q * 4.0) @ k.T
    base[torch.arange(a.chunk), torch.arange(a.chunk)] = float("-inf")
    S = torch.empty_like(base)
    ws = _Workspace(a.chunk, a.m, base.dtype, base.device, 0, a.d)
    dq, dk = torch.empty_like(q), torch.zeros_like(k)
    t0 = time.perf_counter()
    compiled = torch.compile(fused, dynamic=False)
    ref = compiled(base.clone())
    compile_s = time.perf_counter() - t0
    S.copy_(base)
    lse, D = eager(S, ws)
    torch.testing.assert_close(ref[0], lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref[1], D, rtol=1e-4, atol=1e-7)

    def t_eager() -> None:
        S.copy_(base)
        eager(S, ws)

    def t_compiled() -> None:
        compiled(base)

    def t_products() -> None:
        torch.mm(q, k.T, out=S)
        torch.mm(S, k, out=dq)
        dk.addmm_(S.T, q)

    def t_copy() -> None:  # the eager case's copy of the input tile, subtracted from its time
        S.copy_(base)

    cases = {"eager passes": t_eager, "compiled passes": t_compiled, "3 products": t_products, "tile copy": t_copy}
    times: dict[str, list[float]] = {n: [] for n in cases}
    for _ in range(a.repeats):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {n: statistics.median(v) for n, v in times.items()}
    med["eager passes"] -= med["tile copy"]
    print(f"tile {a.chunk} × {a.m}, d = {a.d}, {a.threads} threads; compilation {compile_s:.1f} s (once per shape)")
    print("| case | median time | vs the 3 products |")
    print("|---|---:|---:|")
    for name in ("3 products", "eager passes", "compiled passes"):
        print(f"| {name} | {med[name] * 1e3:.2f} ms | {med[name] / med['3 products']:.2f} |")
    print(f"compiled / eager: {med['compiled passes'] / med['eager passes']:.2f}")


if __name__ == "__main__":
    main()
