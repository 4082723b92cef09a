"""Running the experiment grid of ``hardneg compare``: every grid point of one `CompareConfig`
(expanded by `hardneg.runs.expand_grid`) trained in its own run folder.

Layout of the output folder::

    <out>/.hardneg               the marker: hardneg created this folder (see hardneg.runs)
    <out>/config.yaml            the validated compare config (a different one is refused)
    <out>/runs/<run>/            one Trainer run directory per grid point
    <out>/results.json           one row per finished run (written by the report)
    <out>/report.md, *.png       the markdown report and its plots (hardneg.report)

Resumable: a run whose ``summary.json`` exists is not repeated; an interrupted run continues from its
checkpoint; runs not started yet start fresh. The report is written by `hardneg.report` from the
finished folder (the command line does both).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hardneg import distributed as D
from hardneg import runs
from hardneg.runs import RunSpec, collect, expand_grid, run_config
from hardneg.train.losses_from_config import build_objective
from hardneg.train.run_data import check_batch, load_run_data, n_samples
from hardneg.train.trainer import Trainer

__all__ = ["RunSpec", "check_compare", "collect", "expand_grid", "load_data", "run_compare", "run_config"]


def check_compare(cfg: runs.CompareConfig, world: int = 1) -> tuple[list[RunSpec], Any, Any]:
    """Refuse what `run_compare` on ``world`` processes refuses before it creates the output
    folder — an unknown loss, preset or option in any grid point, the data set, the batch size against
    the processes and the data — and return the grid and the training and test data."""
    specs = expand_grid(cfg)
    for spec in specs:
        if spec.seed == cfg.grid.seeds[0]:
            build_objective(run_config(cfg, spec))
    train, test = load_data(cfg, world)
    return specs, train, test


def run_compare(
    cfg: runs.CompareConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    repair_metrics: bool = False,
    echo: Any = print,
    finish: Callable[[Path], Any] | None = None,
) -> Path:
    """Run (or continue) every grid point; return the output folder (write its report with
    `hardneg.report.report.write_report`, or pass it as ``finish``: called with the folder on
    the process that writes files, while the folder is still locked against other writers).

    Every grid point's loss and the data are checked before the output folder is touched."""
    out = Path(out_dir)
    if resume and overwrite:
        raise ValueError("pass at most one of --resume and --overwrite")
    specs, train, test = check_compare(cfg, D.world_size())
    if (out / runs.SEARCH_JOURNAL).is_file() and not overwrite:
        raise FileExistsError(f"output folder {out} holds a search (hardneg compare --search), not a grid; "
                              "continue it with --search --resume or choose another folder")
    lock = None
    if D.is_main():  # over several processes, rank 0 makes and locks the folder while the others wait
        _, lock = runs.prepare_output(out, "compare", runs.dump_config(cfg), resume=resume, overwrite=overwrite)
    with lock or contextlib.nullcontext():
        D.broadcast_flag(True)
        _run_grid(cfg, out, specs, train, test, repair_metrics, echo)
        if finish is not None and D.is_main():
            finish(out)
    return out


def load_data(cfg: runs.CompareConfig, world: int = 1) -> tuple[Any, Any]:
    """The training and test sets of a compare config, loaded once for all its runs; a batch that
    ``world`` processes cannot split, or larger than the training set, is refused."""
    train, test = load_run_data(cfg.data)
    check_batch(cfg.train.batch_size, world, n_samples(train))
    return train, test


def _run_grid(cfg: runs.CompareConfig, out: Path, specs: list[RunSpec], train: Any, test: Any,
              repair_metrics: bool, echo: Any) -> None:
    """Train every grid point not finished yet, each in its own run folder under ``out``."""
    t_all = time.time()
    for i, spec in enumerate(specs, 1):
        rd = runs.run_dir(out, spec)
        if (rd / runs.SUMMARY).is_file():
            echo(f"[{i}/{len(specs)}] {spec.name}: done before, skipped")
            continue
        t0 = time.time()
        tr = Trainer(run_config(cfg, spec), rd, train_data=train, test_data=test, resume=True,
                     repair_metrics=repair_metrics)
        s = tr.fit()
        if not D.is_main():  # its share of the run trained; rank 0 evaluated and reports
            continue
        lin = f", linear {s['linear_acc']:.4f}" if "linear_acc" in s else ""
        echo(f"[{i}/{len(specs)}] {spec.name}: kNN {s['knn_acc']:.4f}{lin} ({time.time() - t0:.0f} s)")
    echo(f"grid finished in {time.time() - t_all:.0f} s")
