"""Passes over the (chunk × candidates) tile per chunk, for each loss and strategy shape, counted.

Every aten operation of one forward + backward is intercepted (``TorchDispatchMode``) with 2B
anchors in a single chunk, and classified by what it does to a tensor of the tile's size (2B × 2B):

- **products**: ``mm`` / ``addmm`` with a tile-sized operand (S = QKᵀ, dQ, dK: the floor has 3);
- **dense passes**: any other operation that reads or writes a whole tile (an elementwise op, a
  reduction, a softmax, a copy), or a block of its rows (counted as its share of the tile, so an
  operation run block by block over the whole tile counts 1). A pass over the whole tile is a sweep
  through memory and at d = 128 costs about as much as a product on CPU; a run of passes done block by
  block, each block small enough to stay in the cache, costs about one sweep for the whole run: the
  count of such sweeps is given as "trips through memory";
- **sparse**: gathers from and scatters into the tile (a few entries per row: the positives'
  similarities, masks, the positives' terms), not counted as passes. Allocations are not counted.
  An operation on a block-sized temporary (a block's cosines, its mask) is a share of a pass within
  the run of its block, not a trip of its own.

Counts do not depend on the machine. ``--before PATH`` counts the same calls in another checkout
of hardneg (its ``src`` is imported in a subprocess) and prints both.

    python benchmarks/pass_count.py --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from revision_speed import CASES

from hardneg.bench.loss_speed import OWN_WORK_PRESETS, PRESETS

#: the named losses and a few presets of ``revision_speed``, every in-batch preset as users call it,
#: then the presets with work of their own (`OWN_WORK_PRESETS`: their tile is anchors × their candidates,
#: the queue, bank or generated rows included; the calibrator's MLP tensors are 3-d and not counted)
COUNTED = {
    **CASES,
    **{f"preset {p} (default diagnostics)": f"P[{p!r}](z1, z2, labels=y, ids=ids)" for p in PRESETS},
    **{f"preset {p} (default diagnostics)": f"O[{p!r}](z1, z2, labels=y, ids=ids)" for p in OWN_WORK_PRESETS},
}

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys, torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
import hardneg.losses as L
from hardneg.negatives import create_strategy
S = {{name: create_strategy(name, diagnostics=False) for name in ("topk", "filtered", "hscl")}}
P = {{name: create_strategy(name) for name in {presets!r}}}  # as users call them: default diagnostics
O = {{name: create_strategy(name, **opts) for name, opts in {own!r}.items()}}
n = {n}
g = torch.Generator().manual_seed(0)
z = torch.nn.functional.normalize(torch.randn(n, 128, generator=g), dim=1)
z1 = z[: n // 2].clone().requires_grad_(True)
z2 = (z[n // 2 :] + 0.1 * torch.randn(n // 2, 128, generator=g)).requires_grad_(True)
y = torch.randint(0, 100, (n // 2,), generator=g)
ids = torch.arange(n // 2)
PRODUCTS = {{"mm", "addmm", "addmm_", "bmm", "matmul"}}
SPARSE = {{"index", "index_select", "gather", "index_put_", "index_put", "scatter_", "scatter", "scatter_add_",
          "scatter_add", "index_add_", "masked_scatter_", "_index_put_impl_"}}
ALLOCATE = {{"empty", "empty_like", "empty_strided", "new_empty"}}  # no pass through memory

class Count(TorchDispatchMode):
    def __init__(self, tile):
        super().__init__()
        self.tile, self.counts, self.ops = tile, {{"products": 0, "dense": 0, "sparse": 0, "trips": 0}}, {{}}
        self.in_run = False  # inside a run of block-by-block passes that started at the tile's first row

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {{}}))
        if func.is_view or func.overloadpacket.__name__ in ALLOCATE:
            return out
        # tile-shaped tensors: rows over every candidate (the whole tile, or one block of its rows)
        leaves = [x for x in tree_leaves((args, kwargs, out)) if isinstance(x, torch.Tensor) and x.dim() == 2
                  and x.shape[-1] == width]
        size = max((x.numel() for x in leaves), default=0)
        if size >= self.tile // 64:  # the whole tile, or one block of its rows (a share of a pass)
            name = func.overloadpacket.__name__
            kind = "products" if name in PRODUCTS else "sparse" if name in SPARSE else "dense"
            self.counts[kind] += size / self.tile
            if kind == "dense":
                self.ops[name] = self.ops.get(name, 0) + size / self.tile
                # trips through memory: a whole-tile pass is one; a run of block passes is one
                big = max((x for x in leaves if x.numel() == size), key=lambda x: x.storage_offset())
                if size >= self.tile:
                    self.counts["trips"] += 1
                    self.in_run = False
                elif big.untyped_storage().nbytes() < self.tile * big.element_size():
                    pass  # a block-sized temporary of the run: it stays in the cache
                elif big.storage_offset() == 0 and not self.in_run:
                    self.counts["trips"] += 1
                    self.in_run = True
                elif big.storage_offset() > 0:
                    self.in_run = False
        return out

({call}).backward()  # warm-up: lazy initialisation is not counted
z1.grad = z2.grad = None
# the tile: anchors × candidates of the counted step (2B × 2B in-batch; a queue, bank or generator adds
# columns, and a queue grows), read from the same step run on a copy of the strategy
rows, width = n, n
if {strategy!r}:
    import copy
    probe = copy.deepcopy({strategy_or_none})
    probe(z1, z2, labels=y, ids=ids).backward()
    z1.grad = z2.grad = None
    rows, width = int(probe.last_diagnostics["n_anchors"]), int(probe.last_diagnostics["n_candidates_total"])
with Count(rows * width) as c:
    ({call}).backward()
print(json.dumps({{**c.counts, "ops": c.ops}}))
"""


def count(src: Path, call: str, n: int) -> dict | None:
    """Counts of one call in the checkout whose package lives under ``src``; None if it fails there."""
    # the native row pass (hardneg.losses.native) is one C call that no aten interceptor sees: count
    # the torch blocks it stands for
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "HARDNEG_NATIVE": "0"}
    strategy = call.split("(")[0] if call[:2] in ("P[", "O[", "S[") else ""  # e.g. O['mochi']
    code = _CHILD.format(n=n, call=call, presets=PRESETS, own=OWN_WORK_PRESETS, strategy=strategy,
                         strategy_or_none=strategy or "None")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=600)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cell(c: dict | None) -> str:
    return "n/a" if c is None else f"{c['products']:.0f} / {c['dense']:.0f} ({c['trips']}) / {c['sparse']:.0f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default=None, help="root of another checkout of hardneg to count as well")
    p.add_argument("--n", type=int, default=2048, help="2B: every anchor in one chunk (default 2048)")
    p.add_argument("--ops", action="store_true", help="also list the dense operations of each case")
    a = p.parse_args(argv)
    revs = {"after": ROOT / "src"}
    if a.before:
        revs = {"before": Path(a.before).resolve() / "src", **revs}
    for name, src in revs.items():
        if not (src / "hardneg").is_dir():
            raise SystemExit(f"{name}: no hardneg package under {src}")
    cols = " | ".join(revs)
    print(f"Per chunk, products / dense passes (trips through memory) / sparse reads and writes over the"
          f" (chunk × candidates) tile, 2B = {a.n}.\n")
    print(f"| case | {cols} |")
    print("|---|" + "---:|" * len(revs))
    for case, call in COUNTED.items():
        got = {rev: count(src, call, a.n) for rev, src in revs.items()}
        print(f"| {case} | " + " | ".join(_cell(c) for c in got.values()) + " |", flush=True)
        if a.ops:
            for rev, c in got.items():
                if c is not None:
                    print(f"|   {rev}: {', '.join(f'{k} {v:.1f}' for k, v in sorted(c['ops'].items()))} | |")


if __name__ == "__main__":
    main()
