"""CLI: ``hardneg init | train | compare | plateau | eval | bounds | report``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from hardneg.cli.app import app, exit_on_interrupt
from hardneg.io import WriterLock, check_writable

if TYPE_CHECKING:
    from hardneg.runs import CompareConfig

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override, e.g. --set train.epochs=3 (repeatable).")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run stored in the output folder.")]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Delete the files hardneg wrote in the output folder and start over "
                 "(a folder holding anything else is refused)."),
]
RepairOpt = Annotated[
    bool,
    typer.Option("--repair-metrics", help="With --resume: keep the intact records of a damaged metrics.jsonl "
                 "up to the checkpoint's step and continue."),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Folder with the Fashion-MNIST .gz idx files (data.data_dir).")
]
RunOutOpt = Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<config name>).")]
NprocOpt = Annotated[
    int,
    typer.Option("--nproc", help="Train on N processes (gloo on CPU, NCCL on GPU); train.batch_size is the "
                 "global batch, split over them."),
]


def _check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise ValueError(f"--nproc must be a positive int, got {nproc}")


def _launch(nproc: int, argv: list[str], lock: WriterLock | None = None) -> None:
    """Run ``hardneg <argv>`` on ``nproc`` processes (`hardneg.cli.launch`) and exit with the
    status they end with. The caller has checked the run and prepared its folder as one process would,
    so the processes get ``--resume`` and continue in it, under the caller's ``lock`` on the folder."""
    import os

    from hardneg.cli.launch import run_workers
    from hardneg.io import LOCK_HELD_ENV

    if lock is not None:
        os.environ[LOCK_HELD_ENV] = str(lock.path.resolve())
    try:
        code = run_workers(nproc, argv)
    finally:
        os.environ.pop(LOCK_HELD_ENV, None)
    if code:
        raise typer.Exit(code)


def _worker_of_a_group() -> bool:
    """Inside a process torchrun started: join the group; True there."""
    from hardneg.distributed import init_from_env

    return init_from_env()


def _common_argv(config: Path, out: Path, overrides: list[str], resume: bool, overwrite: bool,
                 repair: bool) -> list[str]:
    argv = ["--config", str(config), "--out", str(out)]
    for o in overrides:
        argv += ["--set", o]
    return argv + [f for f, on in (("--resume", resume), ("--overwrite", overwrite),
                                   ("--repair-metrics", repair)) if on]


def _echo(msg: str) -> None:
    typer.echo(msg, err=False)


def _with_dir(overrides: list[str] | None, data_dir: Path | None) -> list[str]:
    out = list(overrides or [])
    if data_dir is not None:
        out.append(f"data.data_dir={json.dumps(str(data_dir))}")
    return out


def _compare_config(config: Path, overrides: list[str]) -> CompareConfig:
    """``config`` with ``overrides``, validated as a compare config."""
    from hardneg.runs import CompareConfig, load_config

    # load_config returns an instance of the class it is given; its annotation names the base class
    return cast(CompareConfig, load_config(config, overrides, CompareConfig))


def _run_train(
    config: Path, out: Path | None, overrides: list[str] | None, resume: bool, overwrite: bool, force_bounds: bool,
    repair: bool, nproc: int = 1, command: str = "train", finish: Callable[[Path], Any] | None = None,
) -> tuple[Path, dict | None, Any]:
    """Train (or, with ``nproc`` > 1, launch the processes that train); the summary on the process
    that writes files, None elsewhere, and what ``finish(run_dir)`` returned there: it runs after
    training while the run directory is still locked (the report of ``bounds``)."""
    from hardneg.runs import RunConfig, apply_overrides, dump_config, load_raw, validate_config
    from hardneg.train.checkpoint import prepare_run_dir
    from hardneg.train.trainer import Trainer, check_run

    _check_nproc(nproc)
    raw = apply_overrides(load_raw(config), overrides)
    if force_bounds:
        raw = apply_overrides(raw, ["bounds.enabled=true"])
    cfg = validate_config(raw, RunConfig, str(config))
    run_dir = out or Path("runs") / config.stem
    if repair and not resume:
        raise ValueError("--repair-metrics works with --resume only")
    check_writable(run_dir, "--out", folder=True)
    if nproc > 1:
        check_run(cfg, nproc)
        _, lock = prepare_run_dir(run_dir, dump_config(cfg), resume=resume, overwrite=overwrite)
        with lock:  # held for the workers' whole run (hardneg.io.LOCK_HELD_ENV)
            _launch(nproc, [command, *_common_argv(config, run_dir, list(overrides or []), True, False, repair)],
                    lock)
        return run_dir, None, None
    _worker_of_a_group()
    with exit_on_interrupt():
        tr = Trainer(cfg, run_dir, resume=resume, overwrite=overwrite, repair_metrics=repair)
        with tr.lock.held() if tr.lock is not None else contextlib.nullcontext():
            summary = tr.fit()
            done = finish(run_dir) if finish is not None and tr.main else None
    return run_dir, summary, done


@app.command("init")
def init_cmd(
    kind: Annotated[str, typer.Argument(help="Which example: train, compare or leaderboard.")],
    path: Annotated[Path | None, typer.Argument(help="Where to write it (default KIND.yaml here; a folder: "
                                                "KIND.yaml in it).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a file that is already there.")] = False,
) -> None:
    """Write one of the example configs shipped with hardneg, to edit and run (`--config KIND` runs it as
    shipped)."""
    from hardneg.io import atomic_write_text, check_writable
    from hardneg.runs import shipped_config

    text = shipped_config(kind)
    dest = path if path is not None else Path(f"{kind}.yaml")
    if dest.is_dir():
        dest = dest / f"{kind}.yaml"
    check_writable(dest, "PATH")
    if dest.exists() and not force:
        raise FileExistsError(f"{dest} already exists; pass --force to replace it")
    atomic_write_text(dest, text)
    command = "train" if kind == "train" else "compare"
    _echo(f"wrote {dest}; run it with: hardneg {command} --config {dest}")


@app.command("train")
def train_cmd(
    config: ConfigOpt,
    out: RunOutOpt = None,
    overrides: SetOpt = None,
    data_dir: DataDirOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    repair: RepairOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Train one model from a config; metrics, checkpoints and the summary go to the run directory."""
    run_dir, s, _ = _run_train(config, out, _with_dir(overrides, data_dir), resume, overwrite, False, repair, nproc)
    if s is None or "knn_acc" not in s:  # the launcher, or a process other than rank 0
        return
    lin = f"  linear {s['linear_acc']:.4f}" if "linear_acc" in s else ""
    _echo(f"kNN {s['knn_acc']:.4f}{lin}  align {s['align']:.3f}  uniform {s['uniform']:.3f}")
    _echo(f"run directory: {run_dir}")


@app.command("bounds")
def bounds_cmd(
    config: ConfigOpt,
    out: RunOutOpt = None,
    overrides: SetOpt = None,
    data_dir: DataDirOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    repair: RepairOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Train with the config's loss while evaluating L_UCL, L_SCL, L_H-UCL, L_H-SCL on the same batches
    (Jiang et al. 2022); print how often each inequality and Assumption 1 hold; plot the four curves."""
    from hardneg.report.report import write_run_report

    _, s, report = _run_train(config, out, _with_dir(overrides, data_dir), resume, overwrite, True, repair, nproc,
                              "bounds", write_run_report)
    if s is None or "bounds" not in s:
        return
    b = s["bounds"]
    _echo(f"batches checked: {b['batches']}")
    for name, key in (
        ("L_H-SCL <= L_H-UCL", "hscl_le_hucl"),
        ("L_H-SCL >= L_SCL", "hscl_ge_scl"),
        ("L_H-UCL >= L_UCL", "hucl_ge_ucl"),
    ):
        bf, af = b["batch_frac_" + key], b["anchor_frac_" + key]
        _echo(f"{name:<19} {bf:.1%} of batches, {af:.1%} of anchors")
    _echo(f"Assumption 1 holds for {b['assumption1']:.1%} of anchors (mean over batches)")
    _echo(f"report: {report}")


@app.command("compare")
def compare_cmd(
    config: ConfigOpt,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default runs/<name>).")] = None,
    overrides: SetOpt = None,
    data_dir: DataDirOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    repair: RepairOpt = False,
    nproc: NprocOpt = 1,
    search: Annotated[bool, typer.Option("--search", help="Successive halving over the config's strategies and "
                                         "their knobs (its search: section) instead of the full grid.")] = False,
    search_seed: Annotated[int | None, typer.Option("--search-seed", help="With --search: the sampler's and "
                                                    "the trials' training seed (search.seed).")] = None,
) -> None:
    """Run the grid losses × β × seeds of a compare config and write the markdown report and plots
    (with --search: a successive-halving search over its strategies instead)."""
    from hardneg.report.report import results_table, write_report
    from hardneg.runs import collect, dump_config, prepare_output
    from hardneg.train.compare import check_compare, run_compare

    _check_nproc(nproc)
    if search_seed is not None and not search:
        raise ValueError("--search-seed works with --search only")
    if search:
        overrides = [*(overrides or []), *([] if search_seed is None else [f"search.seed={search_seed}"])]
    cfg = _compare_config(config, _with_dir(overrides, data_dir))
    out_dir = out or Path("runs") / cfg.name
    if repair and not resume:
        raise ValueError("--repair-metrics works with --resume only")
    check_writable(out_dir, "--out", folder=True)
    if search:
        if nproc > 1 or repair:
            raise ValueError("--search runs on one process and does not take --nproc or --repair-metrics")
        _search(cfg, out_dir, resume, overwrite)
        return
    if nproc > 1:
        check_compare(cfg, nproc)
        _, lock = prepare_output(out_dir, "compare", dump_config(cfg), resume=resume, overwrite=overwrite)
        with lock:  # held for the workers' whole run (hardneg.io.LOCK_HELD_ENV)
            _launch(nproc, ["compare", *_common_argv(config, out_dir, _with_dir(overrides, data_dir), True, False,
                                                     repair)], lock)
        return
    if _worker_of_a_group():
        from hardneg.distributed import is_main

        if not is_main():  # trains its share of every grid point; rank 0 writes and reports
            with exit_on_interrupt():
                run_compare(cfg, out_dir, resume=resume, overwrite=overwrite, repair_metrics=repair,
                            echo=lambda _m: None)
            return
    reports: list[Path] = []
    with exit_on_interrupt():  # the report is written while the folder is still locked
        run_compare(cfg, out_dir, resume=resume, overwrite=overwrite, repair_metrics=repair, echo=_echo,
                    finish=lambda d: reports.append(write_report(d)))
    rp = reports[0]
    _echo("")
    _echo(results_table(collect(out_dir)))
    _echo("")
    _echo(f"report: {rp}")


def _search(cfg: CompareConfig, out_dir: Path, resume: bool, overwrite: bool) -> None:
    """``compare --search``: run the search, write the report of its finished trials, print the ranking."""
    from hardneg.report.report import write_report
    from hardneg.runs import CompareConfig, SearchConfig
    from hardneg.train.search import ranking_table, run_search

    if cfg.search is None:  # the default search, recorded in the folder's config
        cfg = CompareConfig.model_validate({**cfg.model_dump(), "search": SearchConfig().model_dump()})
    reports: list[Path] = []
    with exit_on_interrupt():
        summary = run_search(cfg, out_dir, resume=resume, overwrite=overwrite, echo=_echo,
                             finish=lambda d: reports.append(write_report(d)))
    _echo("")
    _echo(ranking_table(summary))
    if reports:
        _echo(f"report: {reports[0]}")
    _echo(f"summary: {out_dir / 'search.json'}")


@app.command("plateau")
def plateau_cmd(
    config: ConfigOpt,
    entry: Annotated[str, typer.Option("--entry", help="The grid entry (its label) to train, e.g. scl_labels.")],
    seed: Annotated[int, typer.Option("--seed", help="Its seed.")] = 0,
    max_epochs: Annotated[int, typer.Option("--max-epochs", help="Train at most this many epochs.")] = 60,
    min_gain: Annotated[float, typer.Option("--min-gain", help="A gain counts above this many pp.")] = 0.2,
    patience: Annotated[int, typer.Option("--patience", help="Evaluations in a row without a gain.")] = 3,
    out: RunOutOpt = None,
    overrides: SetOpt = None,
    data_dir: DataDirOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train one grid entry for up to --max-epochs, evaluating kNN after every epoch, and print the epoch
    after which it stopped rising (no gain > --min-gain pp over --patience evaluations): the config's
    train.epochs."""
    from hardneg.train.plateau import measure_plateau

    cfg = _compare_config(config, _with_dir(overrides, data_dir))
    run_dir = out or Path("runs") / f"{cfg.name}_plateau_{entry}_s{seed}"
    check_writable(run_dir, "--out", folder=True)
    with exit_on_interrupt():
        curve, ep = measure_plateau(cfg, entry, run_dir, seed=seed, max_epochs=max_epochs, min_gain=min_gain / 100,
                                    patience=patience, resume=resume, overwrite=overwrite)
    _echo("epoch  kNN %")
    for e, a in curve:
        _echo(f"{e:>5}  {100 * a:.2f}")
    if ep is None:
        _echo(f"no plateau within {max_epochs} epochs: kNN still gained > {min_gain} pp within the last "
              f"{patience} evaluations; rerun with a larger --max-epochs (and --overwrite)")
    else:
        _echo(f"kNN accuracy stops rising after epoch {ep} (no gain > {min_gain} pp over the next {patience} "
              f"evaluations): set train.epochs: {ep} in {config}")
    _echo(f"run directory: {run_dir}")


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A compare folder or a single run directory.")],
    docs: Annotated[
        Path | None,
        typer.Option("--docs", help="Also write the tables to this markdown file (with report.docs_plots: "
                     "its plots too, in PAGE_files/ beside it)."),
    ] = None,
) -> None:
    """(Re)generate the markdown report and plots of a compare folder or a run directory."""
    from hardneg.report.report import write_report, write_run_report

    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory")
    check_writable(run_dir, "RUN_DIR", folder=True)  # the report goes there
    if docs is not None:
        check_writable(docs, "--docs")
    if (run_dir / "runs").is_dir():
        _echo(f"report: {write_report(run_dir, docs_path=docs)}")
    else:
        if docs is not None:
            raise ValueError("--docs works with compare folders only")
        _echo(f"report: {write_run_report(run_dir)}")


@app.command("eval")
def eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (holds model.pt).")],
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Also fit the linear probe.")] = True,
    k: Annotated[int | None, typer.Option("--k", help="kNN neighbours (default: the run's config).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the full result as JSON to this "
                                                  "file.")] = None,
) -> None:
    """Evaluate a trained model: weighted kNN, linear probe, per-class accuracy and confusion matrix."""
    from hardneg.eval.run_eval import evaluate_run

    if k is not None and k <= 0:
        raise ValueError(f"--k must be a positive int, got {k}")
    r = evaluate_run(run_dir, probe=probe, k=k)
    _echo(f"kNN accuracy {r['knn_acc']:.4f}" + (f"   linear probe {r['linear_acc']:.4f}" if probe else ""))
    _echo("class  kNN    " + ("linear" if probe else ""))
    for c, v in enumerate(r["knn_per_class"]):
        lp = f"  {r['linear_per_class'][c]:.3f}" if probe else ""
        _echo(f"{c:>5}  {v:.3f}{lp}")
    _echo("confusion (kNN; rows true, columns predicted):")
    for row in r["knn_confusion"]:
        _echo(" ".join(f"{v:5d}" for v in row))
    if json_out is not None:
        from hardneg.io import atomic_write_text

        atomic_write_text(json_out, json.dumps(r, indent=1) + "\n")
        _echo(f"json: {json_out}")
