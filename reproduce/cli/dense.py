"""``python -m reproduce dense-compare``: the dense experiments and their results page."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import typer

from reproduce.cli.app import app

TASKS = ("hyperspectral", "instances", "all")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated non-negative ints, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds must be comma-separated non-negative ints, got {text!r}")
    return seeds


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not all(0.0 < v <= 1.0 for v in vals):
        raise ValueError(f"{what} must lie in (0, 1], got {text!r}")
    return vals


@app.command("dense-compare")
def dense_compare_cmd(
    task: Annotated[str, typer.Argument(help="hyperspectral | instances | all")] = "all",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0,1,2",
    abundances: Annotated[str, typer.Option("--abundances", help="Target abundances of the synthetic scenes.")] = (
        "0.02,0.05,0.1,0.2"
    ),
    mixing: Annotated[str, typer.Option("--mixing", help="Comma-separated mixing models of the synthetic scenes: "
                                        "linear, variability.")] = "linear,variability",
    hs_steps: Annotated[int, typer.Option("--hs-steps", help="Training steps of the spectral encoder.")] = 400,
    hs_batch: Annotated[int, typer.Option("--hs-batch", help="Scene pixels per step of the spectral encoder "
                                          "(as many synthetic targets join them).")] = 256,
    inst_steps: Annotated[int, typer.Option("--inst-steps", help="Training steps of the pixel encoder.")] = 300,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Folder with a real scene (NAME.mat, or NAME.hdr + NAME.raw).")
    ] = None,
    scene: Annotated[str | None, typer.Option("--scene", help="Real scene NAME in --data-dir.")] = None,
    results_dir: Annotated[Path, typer.Option("--out", help="Output folder of the JSON rows.")] = Path("docs/results"),
    page: Annotated[
        Path, typer.Option("--docs", help="Write the results page to this markdown file.")
    ] = Path("docs/results_dense.md"),
    threads: Annotated[int, typer.Option("--threads", help="torch threads (1 is fastest on a shared machine).")] = 1,
) -> None:
    """Hyperspectral target detection (contrastive vs CEM / ACE) and instance separation (uniform vs
    hard vs fine-grained negatives); writes the JSON rows and regenerates the results page."""
    import torch

    from hardneg.io import check_writable
    from hardneg.runs import check_path_name
    from reproduce import dense_report
    from reproduce import hyperspectral as hs
    from reproduce import instances as ins

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if (data_dir is None) != (scene is None):
        raise ValueError("--data-dir and --scene go together (a real scene NAME in that folder)")
    if scene is not None:
        check_path_name(scene, "--scene")
    for name, v in (("--hs-steps", hs_steps), ("--hs-batch", hs_batch), ("--inst-steps", inst_steps),
                    ("--threads", threads)):
        if v < 1:
            raise ValueError(f"{name} must be a positive int, got {v}")
    seed_list = _seeds(seeds)
    abund = _floats(abundances, "--abundances")
    models = tuple(m.strip() for m in mixing.split(","))
    if not all(m in hs.MIXING for m in models):
        raise ValueError(f"--mixing must be comma-separated among {', '.join(hs.MIXING)}, got {mixing!r}")
    check_writable(results_dir, "--out", folder=True)
    check_writable(page, "--docs")
    for rows_file in (dense_report.HS_JSON, dense_report.INST_JSON):  # the page reads both: refuse a bad one now
        dense_report.read_results(results_dir / rows_file)
    torch.set_num_threads(threads)
    real = None
    # a real scene is read (and refused) before anything is written
    if data_dir is not None and scene is not None and task in ("hyperspectral", "all"):
        from hardneg.data.hyperspectral import load_scene

        try:
            real = load_scene(data_dir, scene)
        except ImportError as e:  # a missing optional package is a setup error of the user's
            raise ValueError(str(e)) from None
    results_dir.mkdir(parents=True, exist_ok=True)
    command = (f"python -m reproduce dense-compare {task} --seeds {seeds} --abundances {abundances} "
               f"--mixing {mixing} --hs-steps {hs_steps} --hs-batch {hs_batch} --inst-steps {inst_steps}")
    if task in ("hyperspectral", "all"):
        cfg = hs.HSConfig(steps=hs_steps, batch=hs_batch)
        start = time.monotonic()
        rows = hs.run(abund, seed_list, cfg, scene=real, mixing=models)
        dense_report.save_rows(results_dir / dense_report.HS_JSON, rows,
                               {"seeds": list(seed_list), "mixing": {m: hs.MIXING[m] for m in models},
                                **dataclasses.asdict(cfg), "threads": threads,
                                "wall_s": round(time.monotonic() - start)})
        typer.echo(dense_report.hyperspectral_table(rows))
    if task in ("instances", "all"):
        icfg = ins.InstanceConfig(steps=inst_steps)
        rows = ins.run(seed_list, icfg)
        dense_report.save_rows(results_dir / dense_report.INST_JSON, rows,
                               {"seeds": list(seed_list), **dataclasses.asdict(icfg)})
        typer.echo(dense_report.instances_table(rows))
    typer.echo(f"page: {dense_report.write_page(results_dir, page, {'command': command})}")
