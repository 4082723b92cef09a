"""Loss speed of this checkout against another checkout of hardneg, in one run.

Each (revision, case) is timed in its own subprocess (``PYTHONPATH`` pointing at that revision's
``src``), and the revisions alternate case by case and repeat by repeat, so machine noise hits both
alike. Prints the median forward+backward time of each case for both revisions and their ratio.

Example (the other revision checked out with ``git worktree add /tmp/before <rev>``)::

    python benchmarks/revision_speed.py --before /tmp/before --sizes 2048,8192 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# calls that both revisions accept: the named losses and a few presets (strategy path)
CASES = {
    "ucl": "L.ucl(z1, z2, t=0.5)",
    "supcon": "L.supcon(z1, z2, y, t=0.1)",
    "hscl": "L.hscl(z1, z2, y, beta=1.0, t=0.5)",
    "scl": "L.scl(z1, z2, y, t=0.5)",
    "hucl": "L.hucl(z1, z2, beta=1.0, t=0.5)",
    "dcl": "L.dcl(z1, z2, tau_plus=0.1, t=0.5)",
    "decoupled": "L.decoupled(z1, z2, t=0.1)",
    "preset topk": "S['topk'](z1, z2, labels=y)",
    "preset filtered": "S['filtered'](z1, z2, labels=y, ids=ids)",
    "preset hscl": "S['hscl'](z1, z2, labels=y)",
}

_CHILD = """
import json, time, torch
torch.set_num_threads({threads})
import hardneg.losses as L
from hardneg.negatives import create_strategy
S = {{name: create_strategy(name, diagnostics=False) for name in ("topk", "filtered", "hscl")}}
def inputs(n):
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(n, 128, generator=g), dim=1)
    z1 = z[: n // 2].clone().requires_grad_(True)
    z2 = (z[n // 2 :] + 0.1 * torch.randn(n // 2, 128, generator=g)).requires_grad_(True)
    y = torch.randint(0, 100, (n // 2,), generator=g)
    return z1, z2, y, torch.arange(n // 2)
z1, z2, y, ids = inputs(64)
({call}).backward()  # warm-up: lazy initialisation is not timed
z1, z2, y, ids = inputs({n})
t0 = time.perf_counter()
({call}).backward()
print(json.dumps(time.perf_counter() - t0))
"""


def _time(src: Path, call: str, n: int, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = _CHILD.format(threads=threads, call=call, n=n)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{src}: {call} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="root of the other checkout (its src/ is imported)")
    p.add_argument("--sizes", default="2048,8192")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    revs = {"before": Path(a.before).resolve() / "src", "after": ROOT / "src"}
    for name, src in revs.items():
        if not (src / "hardneg").is_dir():
            raise SystemExit(f"{name}: no hardneg package under {src}")
    rows = []
    print("| 2B | case | before | after | after / before |")
    print("|---:|---|---:|---:|---:|")
    for n in (int(s) for s in a.sizes.split(",")):
        for case in a.cases.split(","):
            samples: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(a.repeats):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for rev in order:
                    samples[rev].append(_time(revs[rev], CASES[case], n, a.threads))
            b, f = statistics.median(samples["before"]), statistics.median(samples["after"])
            rows.append({"2B": n, "case": case, "before_s": b, "after_s": f, "ratio": f / b})
            print(f"| {n} | {case} | {b * 1e3:.1f} ms | {f * 1e3:.1f} ms | {f / b:.3f} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
