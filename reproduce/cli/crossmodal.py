"""`python -m reproduce crossmodal-compare`: two towers on captioned scenes, one run per (strategy, seed), and
the results page (docs/results_crossmodal.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reproduce.cli.app import app


@app.command("crossmodal-compare")
def crossmodal_compare(
    config: Annotated[
        list[Path], typer.Option("--config", "-c", help="YAML config (configs/crossmodal_quick.yaml); repeatable.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder; each config's runs go to <out>/<config name>.")
    ] = Path("runs/crossmodal"),
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override, e.g. --set seeds=[0] (repeatable; applies "
                                       "to every config).")
    ] = None,
    docs: Annotated[Path | None, typer.Option("--docs", help="Write the results page to this markdown file.")] = None,
    strategies: Annotated[
        str | None, typer.Option("--strategies", help="Comma-separated subset of the config's strategies.")
    ] = None,
    summarize: Annotated[
        bool, typer.Option("--summarize", help="Train nothing: tabulate the runs already finished.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an output folder that holds another config's runs.")
    ] = False,
) -> None:
    """Train image and text towers with each strategy of each config for each seed (runs already
    finished in the output folder, a hardneg compare folder of the same config, are reused: the full
    experiment resumes), then print and write the tables."""
    from hardneg.io import check_writable
    from reproduce.crossmodal import load_crossmodal_config, results_tables, run_grid, write_results_page

    cfgs = [(p.stem, load_crossmodal_config(p, overrides)) for p in config]
    check_writable(out, "--out", folder=True)
    if docs:
        check_writable(docs, "--docs")
    names = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None
    sections = []
    for stem, cfg in cfgs:
        records = run_grid(cfg, out / stem, names, log=typer.echo, train=not summarize, overwrite=overwrite)
        if not records:
            typer.echo(f"{stem}: no finished runs in {out / stem / 'runs'}")
            continue
        typer.echo(results_tables(records))
        sections.append((stem, cfg, records))
    if docs:
        cmd = " ".join(["python -m reproduce crossmodal-compare", *(f"--config {p}" for p in config), f"--out {out}",
                        *(f"--set {o!r}" for o in overrides or []), f"--docs {docs}"])
        write_results_page(sections, docs, cmd)
        typer.echo(f"wrote {docs}")
