"""Loss forward+backward time and peak extra memory against pytorch-metric-learning, on CPU or CUDA.

For every size 2B, in one process (so the ratios compare like with like on a noisy machine; each
case's step is timed between two floor steps and its "× floor" is the median of its ratios to them):

- every hardneg loss computed by the kernel: ``ucl``, ``supcon``, ``hscl`` (paper-code variant,
  β = 1), ``scl``, ``hucl`` (β = 1), ``dcl`` (τ⁺ = 0.1), ``decoupled``;
- pytorch-metric-learning ``SupConLoss`` and ``NTXentLoss`` (the anchors users switch from);
- a plain dense PyTorch SupCon (full similarity matrix + log_softmax);
- the *floor*: the three bare matrix products every InfoNCE loss needs (S = QKᵀ, dQ = G K,
  dK = Gᵀ Q), chunked like our kernel so that it fits in memory at 2B = 65,536.

``hardneg bench strategies`` runs the same harness on the in-batch presets (`PRESET_CASES`):
``create_strategy(name)(z1, z2, labels=y, ids=ids)`` forward + backward, default diagnostics; then the
presets whose step does work besides the loss (`OWN_WORK_PRESETS`), each step split into the loss and
the time of that work, measured inside the same step.

Peak extra memory is measured separately for each case in a fresh subprocess: the peak resident
set size is reset (``/proc/self/clear_refs``) once the inputs exist, and the growth of the peak
(``VmHWM``) over the resident size at that moment is reported.
Cases whose estimated memory exceeds ``--max-gb`` are skipped with the reason printed.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import hardneg.losses as L
from hardneg._optional import require
from hardneg.bench.memory import run_worker, serve_worker
from hardneg.io import atomic_write_text
from hardneg.losses.kernel import default_chunk

D = 128
CLASSES = 100


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "ours" | "anchor" | "floor"
    est_bytes: Callable[[int], float]  # rough peak memory as a function of n = 2B


def _inputs(n: int, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=1)
    z1 = z[: n // 2].clone().to(device).requires_grad_(True)
    z2 = (z[n // 2 :] + 0.1 * torch.randn(n // 2, D, generator=g)).to(device).requires_grad_(True)
    y = torch.randint(0, CLASSES, (n // 2,), generator=g).to(device)
    return z1, z2, y


#: the in-batch presets ``hardneg bench strategies`` times (``create_strategy(name)`` as users call it)
PRESETS = ("ucl", "scl", "supcon", "hucl", "dcl", "hscl", "decoupled", "topk", "semihard", "distance_weighted",
           "filtered")


def _run_preset(name: str, z1, z2, y) -> None:
    """A preset called as users call it: labels, distinct sample ids, default diagnostics."""
    from hardneg.negatives import create_strategy

    ids = torch.arange(z1.shape[0], device=z1.device)
    create_strategy(name)(z1, z2, labels=y, ids=ids).backward()


#: presets whose step does work besides the loss, with the options they need here: the calibrator's
#: MLP (its predictions and its training step), the k-means refresh of cluster-guided (every step
#: here: each timed call builds the strategy, so it refreshes as a run does every ``every`` steps),
#: MoCHi's mixing, AdCo's adversarial bank, the generator and its discriminator
OWN_WORK_PRESETS: dict[str, dict] = {"calibrated": {}, "cluster_guided": {}, "mochi": {}, "adco": {},
                                     "generator": {"dim": D}}

#: seconds the last ``own.<preset>`` case spent in its components' own work (`_own_work_timer`)
_LAST_OWN: list[float] = [0.0]


def _own_work_timer(strategy, spent: list[float]) -> None:
    """Wrap the strategy's components so that the time they spend in their own hooks adds to
    ``spent[0]``: every source's ``extend``, every component's ``begin_step`` and ``after_step``, and
    a weighting's ``log_weights`` where it runs a model of its own (`Calibrated`). The rest of the
    step (the kernel, its masks, the strategy's bookkeeping) is the loss."""
    from hardneg.negatives.weighting import Calibrated

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0
        return wrapper

    for c in strategy.components():
        hooks = ["begin_step", "after_step"] + (["extend"] if c in list(strategy.sources) else [])
        if isinstance(c, Calibrated):
            hooks.append("log_weights")
        for h in hooks:
            if hasattr(c, h):
                setattr(c, h, timed(getattr(c, h)))


def _run_own(name: str, z1, z2, y) -> None:
    """A preset with work of its own, in training mode, as users call it; its own time to `_LAST_OWN`."""
    from hardneg.negatives import create_strategy

    strategy = create_strategy(name, **OWN_WORK_PRESETS[name])
    spent = [0.0]
    _own_work_timer(strategy, spent)
    ids = torch.arange(z1.shape[0], device=z1.device)
    strategy(z1, z2, labels=y, ids=ids).backward()
    _LAST_OWN[0] = spent[0]


def _run_case(name: str, z1, z2, y) -> None:
    """One forward + backward of the named case."""
    if name.startswith("preset."):
        return _run_preset(name[len("preset."):], z1, z2, y)
    if name.startswith("own."):
        return _run_own(name[len("own."):], z1, z2, y)
    if name == "floor":
        # the three products, chunked like the kernel, into preallocated buffers (no page faults)
        q = torch.cat([z1, z2]).detach()
        n = q.shape[0]
        chunk = default_chunk(n, n, q.device) if q.device.type == "cpu" else n
        s = torch.empty(chunk, n, device=q.device)
        dq = torch.empty_like(q)
        dk = torch.zeros_like(q)
        for r0 in range(0, n, chunk):
            r1 = min(n, r0 + chunk)
            torch.mm(q[r0:r1], q.T, out=s[: r1 - r0])
            torch.mm(s[: r1 - r0], q, out=dq[r0:r1])
            dk.addmm_(s[: r1 - r0].T, q[r0:r1])
        return
    if name == "hardneg.supcon":
        loss = L.supcon(z1, z2, y, t=0.1)
    elif name == "hardneg.hscl":
        loss = L.hscl(z1, z2, y, beta=1.0, t=0.5)
    elif name == "hardneg.ucl":
        loss = L.ucl(z1, z2, t=0.5)
    elif name == "hardneg.scl":
        loss = L.scl(z1, z2, y, t=0.5)
    elif name == "hardneg.hucl":
        loss = L.hucl(z1, z2, beta=1.0, t=0.5)
    elif name == "hardneg.dcl":
        loss = L.dcl(z1, z2, tau_plus=0.1, t=0.5)
    elif name == "hardneg.decoupled":
        loss = L.decoupled(z1, z2, t=0.1)
    elif name == "pml.SupConLoss":
        require("pytorch_metric_learning", "bench")
        from pytorch_metric_learning.losses import SupConLoss  # type: ignore[import-untyped]  # no stubs

        loss = SupConLoss(temperature=0.1)(torch.cat([z1, z2]), torch.cat([y, y]))
    elif name == "pml.NTXentLoss":
        require("pytorch_metric_learning", "bench")
        from pytorch_metric_learning.losses import NTXentLoss  # type: ignore[import-untyped]  # no stubs

        ids = torch.arange(z1.shape[0], device=z1.device)
        loss = NTXentLoss(temperature=0.5)(torch.cat([z1, z2]), torch.cat([ids, ids]))
    elif name == "torch.dense_supcon":
        z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
        yy = torch.cat([y, y])
        n = z.shape[0]
        logits = (z @ z.T) / 0.1
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))
        logp = torch.log_softmax(logits, dim=1).masked_fill(eye, 0.0)
        pos = (yy[:, None] == yy[None, :]) & ~eye
        loss = -((logp * pos).sum(1) / pos.sum(1)).mean()
    else:
        raise ValueError(f"unknown case {name!r}")
    loss.backward()


CASES = [
    Case("floor", "floor", lambda n: 3 * 4 * n * D),
    Case("hardneg.ucl", "ours", lambda n: 8 * 4 * n * D + 2 * 4 * n * default_chunk(n, n)),
    Case("hardneg.supcon", "ours", lambda n: 8 * 4 * n * D + 2 * 4 * n * default_chunk(n, n)),
    Case("hardneg.hscl", "ours", lambda n: 8 * 4 * n * D + 8 * 4 * n * default_chunk(n, n)),
    Case("hardneg.scl", "ours", lambda n: 8 * 4 * n * D + 8 * 4 * n * default_chunk(n, n)),
    Case("hardneg.hucl", "ours", lambda n: 8 * 4 * n * D + 8 * 4 * n * default_chunk(n, n)),
    Case("hardneg.dcl", "ours", lambda n: 8 * 4 * n * D + 8 * 4 * n * default_chunk(n, n)),
    Case("hardneg.decoupled", "ours", lambda n: 8 * 4 * n * D + 8 * 4 * n * default_chunk(n, n)),
    Case("pml.SupConLoss", "anchor", lambda n: 45.0 * n * n),  # measured: 2.9 GB at 2B = 8192
    Case("pml.NTXentLoss", "anchor", lambda n: 16.0 * n**3),  # (pairs × negatives) tensor: 17 GB at 1024
    Case("torch.dense_supcon", "anchor", lambda n: 20.0 * n * n),  # 4.8 GB at 16384
]


def _tiles(n: int) -> int:
    return 4 * n * default_chunk(n, n)


#: the floor, every in-batch preset (two (chunk × m) tiles and the strategy's (n × d) copies) and the
#: presets with work of their own (the calibrator's MLP holds a (block × m × hidden) tensor)
PRESET_CASES = (
    [CASES[0]]
    + [Case(f"preset.{p}", "preset", lambda n: 12 * 4 * n * D + 2 * _tiles(n)) for p in PRESETS]
    + [Case(f"own.{p}", "own", lambda n: 12 * 4 * n * D + 2 * _tiles(n) + 4 * 2**22) for p in OWN_WORK_PRESETS]
)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_once(name: str, n: int, device: str = "cpu") -> tuple[float, float]:
    """Seconds of one forward + backward, and of them the seconds of the strategy's own work
    (``own.<preset>`` cases; 0 for the others)."""
    z1, z2, y = _inputs(n, device=device)
    _sync(device)
    _LAST_OWN[0] = 0.0
    t0 = time.perf_counter()
    _run_case(name, z1, z2, y)
    _sync(device)
    return time.perf_counter() - t0, _LAST_OWN[0]


def _measure_cuda_memory(name: str, n: int, device: str) -> float:
    """Peak extra GPU memory (bytes) of one forward+backward, in this process."""
    z1, z2, y = _inputs(n, device=device)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _run_case(name, z1, z2, y)
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - base)


def _memory_worker(spec: dict) -> dict:
    """In a fresh process (`hardneg.bench.memory.run_worker`): the peak extra resident memory (bytes)
    of one forward+backward of case ``spec["name"]`` at 2B = ``spec["n"]``. The peak (``VmHWM``) is
    reset to the current size (``/proc/self/clear_refs``) once the inputs exist; its growth is reported."""
    import gc

    torch.set_num_threads(spec["threads"])
    _run_case(spec["name"], *_inputs(64))  # lazy initialisation is not the case's memory
    z1, z2, y = _inputs(spec["n"])
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current size
    base = _status_bytes("VmRSS:")
    _run_case(spec["name"], z1, z2, y)
    return {"peak_extra_bytes": _status_bytes("VmHWM:") - base}


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _measure_memory(name: str, n: int, threads: int) -> float | None:
    """Peak extra resident memory (bytes) of one forward+backward, in a fresh subprocess (Linux);
    None where the subprocess fails."""
    try:
        out = run_worker("hardneg.bench.loss_speed", {"name": name, "n": n, "threads": threads}, timeout=3600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return float(out["peak_extra_bytes"])


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _paired_samples(cases: list[Case], n: int, reps: int, device: str
                    ) -> tuple[dict[str, list[tuple[float, float, float]]], list[float]]:
    """Each repeat times the cases in turn with a floor step before the first and after each: per
    case and repeat (seconds, its own work's seconds, 1 / the mean of the floor steps either side),
    and every floor step's seconds. A case's × floor is the median of its ratios to the floor
    steps around it, which cancels the machine's drift over the seconds a repeat takes (the
    medians of two series timed seconds apart differ by a few per cent on a shared 2-core VM)."""
    samples: dict[str, list[tuple[float, float, float]]] = {c.name: [] for c in cases if c.kind != "floor"}
    floors: list[float] = []
    for _ in range(reps):
        before = _time_once("floor", n, device)[0]
        floors.append(before)
        for c in cases:
            if c.kind == "floor":
                continue
            t, own = _time_once(c.name, n, device)
            after = _time_once("floor", n, device)[0]
            floors.append(after)
            samples[c.name].append((t, own, 2.0 / (before + after)))
            before = after
    return samples, floors


def run(
    sizes: list[int],
    repeats: int = 3,
    threads: int = 2,
    max_gb: float = 20.0,
    memory: bool = True,
    cases: list[str] | None = None,
    echo: Callable[[str], None] = print,
    device: str = "cpu",
    case_list: list[Case] | None = None,
    table: Callable[[list[dict]], str] | None = None,
) -> list[dict]:
    """Run the benchmark; return one row per (size, case) and print a table with ratios: a case's
    ``seconds`` is its median step, its ``x_floor`` the median of its steps' ratios to the floor
    steps timed just before and after each (`_paired_samples`).
    ``device="cuda"`` times on the GPU (synchronised) and reports peak GPU memory instead.
    ``case_list`` (default: the losses, `CASES`; `PRESET_CASES` for the presets)
    must hold the floor; ``table`` formats the rows of one size (default `format_table`)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    torch.set_num_threads(threads)
    rows: list[dict] = []
    selected = [c for c in (case_list or CASES) if cases is None or c.name in cases or c.kind == "floor"]
    for n in sizes:
        if n % 2:
            raise ValueError(f"sizes are 2B and must be even, got {n}")
        times: dict[str, float] = {}
        skipped: dict[str, str] = {}
        runnable = []
        for c in selected:
            est = c.est_bytes(n) / 1e9
            if est > max_gb:
                skipped[c.name] = f"skipped: needs ~{est:,.0f} GB (> {max_gb:g} GB)"
            else:
                runnable.append(c)
        reps = repeats if n <= 8192 else 1
        for c in runnable:  # warm-up: lazy imports and first-call initialisation are not timed
            _run_case(c.name, *_inputs(64, device=device))
        samples, floors = _paired_samples(runnable, n, reps, device)
        own: dict[str, float] = {}
        for name, sample in samples.items():  # the median step, with its own share
            times[name], own[name] = sorted(sample)[len(sample) // 2][:2]
        times["floor"] = _median(floors)
        for c in selected:
            row = {"2B": n, "case": c.name, "kind": c.kind, "repeats": reps}
            if c.name in skipped:
                row["skipped"] = skipped[c.name]
            else:
                row["seconds"] = times[c.name]
                row["x_floor"] = 1.0 if c.kind == "floor" else _median([t * f for t, _, f in samples[c.name]])
                if c.kind == "own":
                    row["own_seconds"] = own[c.name]
                    row["loss_x_floor"] = _median([(t - o) * f for t, o, f in samples[c.name]])
                if memory:
                    row["peak_extra_bytes"] = (
                        _measure_cuda_memory(c.name, n, device) if device.startswith("cuda")
                        else _measure_memory(c.name, n, threads)
                    )
            rows.append(row)
        for c in selected:
            if c.kind == "ours" and c.name in times:
                mine = next(r for r in rows if r["2B"] == n and r["case"] == c.name)
                for a in ("pml.SupConLoss", "pml.NTXentLoss", "torch.dense_supcon"):
                    if a in times:
                        mine[f"speedup_vs_{a}"] = times[a] / times[c.name]
        echo((table or format_table)([r for r in rows if r["2B"] == n]))
    return rows


def _fmt_bytes(b: float | None) -> str:
    if b is None:
        return "n/a"
    return f"{b / 2**30:.2f} GB" if b >= 2**30 else f"{b / 2**20:.0f} MB"


def speedup_text(x: float | None) -> str:
    """A time ratio (anchor's time / ours) in words: "2.0× faster", or "2.0× slower" below 1."""
    if not x:
        return ""
    return f"{x:.1f}× faster" if x >= 1 else f"{1 / x:.1f}× slower"


def format_table(rows: list[dict]) -> str:
    """Markdown table: time, × floor, peak extra memory, speed-up over each anchor."""
    lines = [
        "| 2B | case | time | × floor | peak extra mem | vs PML SupCon | vs PML NTXent | vs dense torch |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['2B']} | {r['case']} | {r['skipped']} | | | | | |")
            continue
        sp = [r.get(f"speedup_vs_{a}") for a in ("pml.SupConLoss", "pml.NTXentLoss", "torch.dense_supcon")]
        sps = [speedup_text(x) for x in sp]
        t = r["seconds"]
        ts = f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"
        lines.append(
            f"| {r['2B']} | {r['case']} | {ts} | {r['x_floor']:.2f} | {_fmt_bytes(r.get('peak_extra_bytes'))} | "
            + " | ".join(sps)
            + " |"
        )
    return "\n".join(lines)


def _fmt_time(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def format_own_work_table(rows: list[dict]) -> str:
    """Markdown table of the presets with work of their own: the step split into the loss (× floor)
    and the own work (ms per step); empty when there is no such row."""
    own = [r for r in rows if r["case"].startswith("own.") and "skipped" not in r]
    if not own:
        return ""
    lines = ["| 2B | preset | time | loss (× floor) | own work (ms per step) |", "|---:|---|---:|---:|---:|"]
    for r in own:
        lines.append(f"| {r['2B']} | {r['case'].removeprefix('own.')} | {_fmt_time(r['seconds'])} | "
                     f"{r['loss_x_floor']:.2f} | {r['own_seconds'] * 1e3:.1f} |")
    return "\n".join(lines)


def format_preset_table(rows: list[dict]) -> str:
    """Markdown table of the in-batch presets (time, × floor, peak extra memory), then the presets
    with work of their own, split into loss and own work (`format_own_work_table`)."""
    own = format_own_work_table(rows)
    lines = ["| 2B | preset | time | × floor | peak extra mem |", "|---:|---|---:|---:|---:|"]
    for r in rows:
        if r["case"].startswith("own."):
            continue
        name = r["case"].removeprefix("preset.")
        if "skipped" in r:
            lines.append(f"| {r['2B']} | {name} | {r['skipped']} | | |")
            continue
        t = r["seconds"]
        ts = f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"
        lines.append(f"| {r['2B']} | {name} | {ts} | {r['x_floor']:.2f} | {_fmt_bytes(r.get('peak_extra_bytes'))} |")
    if own:
        lines += ["", "Presets whose step does work besides the loss (their own hooks timed inside the step):", "",
                  own]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="512,2048,8192,32768,65536")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-gb", type=float, default=20.0)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    rows = run([int(s) for s in a.sizes.split(",")], a.repeats, a.threads, a.max_gb, not a.no_memory,
               device=a.device)
    if a.json:
        atomic_write_text(a.json, json.dumps(rows, indent=1))


if __name__ == "__main__":
    if not serve_worker(_memory_worker):
        main()
