"""The experiment grid of ``hardneg compare``: losses × β × seeds from one :class:`CompareConfig`.

Layout of the output folder::

    <out>/.hardneg               the marker: hardneg created this folder (see hardneg.runs)
    <out>/config.yaml            the validated compare config (a different one is refused)
    <out>/runs/<run>/            one Trainer run directory per grid point (see hardneg.runs)
    <out>/results.json           one row per finished run (written by the report)
    <out>/report.md, *.png       the markdown report and its plots (hardneg.report)

Resumable: a run whose ``summary.json`` exists is not repeated; an interrupted run continues from its
checkpoint; runs not started yet start fresh.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg import runs
from hardneg.train.config import CompareConfig, RunConfig, dump_config
from hardneg.train.losses_from_config import build_loss, has_beta


@dataclass(frozen=True)
class RunSpec:
    label: str
    loss: str
    params: dict[str, Any]
    beta: float | None
    seed: int

    @property
    def name(self) -> str:
        b = "" if self.beta is None else f"_b{self.beta:g}"
        return f"{self.label}{b}_s{self.seed}"


def expand_grid(cfg: CompareConfig) -> list[RunSpec]:
    """Every grid point in a fixed order (loss, β, seed): tilted losses once per β, others once."""
    out = []
    for gl in cfg.grid.losses:
        label = gl.label or gl.name
        betas: list[float | None] = list(cfg.grid.betas) if has_beta(gl.name, gl.params) else [None]
        for b in betas:
            params = dict(gl.params)
            if b is not None:
                params["beta"] = float(b)
            for s in cfg.grid.seeds:
                out.append(RunSpec(label, gl.name, params, b, s))
    return out


def run_config(cfg: CompareConfig, spec: RunSpec) -> RunConfig:
    """The RunConfig of one grid point: the base sections with the loss and seed replaced."""
    base = cfg.model_dump(exclude={"name", "grid", "report"})
    base["loss"] = {"name": spec.loss, "params": spec.params}
    base["train"]["seed"] = spec.seed
    return RunConfig.model_validate(base)


def run_compare(
    cfg: CompareConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    repair_metrics: bool = False,
    echo: Any = print,
) -> Path:
    """Run (or continue) every grid point, then write the report; return the report path.

    Every grid point's loss and the data are checked before the output folder is touched."""
    from hardneg.data.base import load_named
    from hardneg.report.report import write_report
    from hardneg.train.trainer import Trainer

    out = Path(out_dir)
    if resume and overwrite:
        raise ValueError("pass at most one of --resume and --overwrite")
    specs = expand_grid(cfg)
    for spec in specs:
        build_loss(spec.loss, spec.params)
    d = cfg.data
    train = load_named(d.name, "train", data_dir=d.data_dir, limit=d.train_limit, seed=d.split_seed)
    test = load_named(d.name, "test", data_dir=d.data_dir, limit=d.test_limit, seed=d.split_seed)
    if len(train[0]) < cfg.train.batch_size:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is larger than the training set ({len(train[0])})")
    runs.prepare_output(out, "compare", dump_config(cfg), resume=resume, overwrite=overwrite)
    t_all = time.time()
    for i, spec in enumerate(specs, 1):
        rd = out / runs.RUNS / spec.name
        if (rd / runs.SUMMARY).is_file():
            echo(f"[{i}/{len(specs)}] {spec.name}: done before, skipped")
            continue
        t0 = time.time()
        tr = Trainer(run_config(cfg, spec), rd, train_data=train, test_data=test, resume=True,
                     repair_metrics=repair_metrics)
        s = tr.fit()
        lin = f", linear {s['linear_acc']:.4f}" if "linear_acc" in s else ""
        echo(f"[{i}/{len(specs)}] {spec.name}: kNN {s['knn_acc']:.4f}{lin} ({time.time() - t0:.0f} s)")
    echo(f"grid finished in {time.time() - t_all:.0f} s")
    return write_report(out)


def collect(out_dir: str | Path) -> list[dict[str, Any]]:
    """One row per finished run of a compare folder (its summary plus label/β/seed)."""
    from hardneg.train.config import load_config

    out = Path(out_dir)
    cfg_p = out / runs.CONFIG
    if not cfg_p.is_file():
        raise FileNotFoundError(f"{cfg_p} not found; is {out} a compare output folder?")
    cfg = load_config(cfg_p, cls=CompareConfig)
    rows = []
    for spec in expand_grid(cfg):
        sp = out / runs.RUNS / spec.name / runs.SUMMARY
        if sp.is_file():
            s = json.loads(sp.read_text(encoding="utf-8"))
            rows.append({"label": spec.label, "beta": spec.beta, "seed": spec.seed, "run": spec.name, **s})
    return rows
