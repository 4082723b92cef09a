"""Does ``torch.compile`` (CPU inductor) beat the kernel's eager passes over one chunk's tile?

The kernel's elementwise work per chunk, for H-SCL / H-UCL at β = 1 (the most passes of any named
loss), on a (chunk × candidates) tile ``S`` that already holds 2s/t with −∞ masks:

    lse_b = logsumexp(S);  π̃ = softmax(S);  √π̃;  z = Σ√π̃;  D = π̃ − b·√π̃ / z

Eager: the kernel's own sequence (``_softmax_lse_``, ``torch.sqrt``, ``sum``, ``addcmul_``) on
preallocated buffers. Compiled: the same formula as one function given to ``torch.compile`` (inductor
fuses the elementwise loops and reductions into generated C++). Both are timed in this process,
interleaved, median of ``--repeats``; compilation happens before timing and is reported apart.
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

from hardneg.losses.kernel import _softmax_lse_


def eager(S: Tensor, A: Tensor, b: float) -> tuple[Tensor, Tensor]:
    lse_b = _softmax_lse_(S)
    torch.sqrt(S, out=A)
    za = A.sum(1)
    S.addcmul_(A, (-b / za)[:, None])
    return lse_b, S


def fused(S: torch.Tensor, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    lse_b = torch.logsumexp(S, 1)
    p = torch.exp(S - lse_b[:, None])
    r = torch.sqrt(p)
    return lse_b, p - r * (b / r.sum(1))[:, None]


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
    S, A = torch.empty_like(base), torch.empty_like(base)
    dq, dk = torch.empty_like(q), torch.zeros_like(k)
    b = 0.5
    t0 = time.perf_counter()
    compiled = torch.compile(fused, dynamic=False)
    ref = compiled(base.clone(), b)
    compile_s = time.perf_counter() - t0
    S.copy_(base)
    lse, D = eager(S, A, b)
    torch.testing.assert_close(ref[0], lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref[1], D, rtol=1e-4, atol=1e-7)

    def t_eager() -> None:
        S.copy_(base)
        eager(S, A, b)

    def t_compiled() -> None:
        compiled(base, b)

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
