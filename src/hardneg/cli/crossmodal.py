"""`hardneg crossmodal-compare`: two towers on captioned scenes, one run per (strategy, seed), and
the results page (docs/results_crossmodal.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hardneg.cli.app import app


@app.command("crossmodal-compare")
def crossmodal_compare(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config (configs/crossmodal_quick.yaml).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default runs/<config name>).")] = None,
    doc: Annotated[Path | None, typer.Option("--doc", help="Write the results page here.")] = None,
    strategies: Annotated[str | None, typer.Option(help="Comma-separated subset of the config's strategies.")] = None,
) -> None:
    """Train image and text towers with each strategy of the config for each seed (runs already in
    the output folder are reused: the full experiment resumes), then print and write the tables."""
    from hardneg.experiments.crossmodal import load_crossmodal_config, results_tables, run_grid, write_results_page

    cfg = load_crossmodal_config(config)
    out = out or Path("runs") / config.stem
    names = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None
    records = run_grid(cfg, out, names, log=typer.echo)
    typer.echo(results_tables(records))
    if doc:
        cmd = f"hardneg crossmodal-compare --config {config} --out {out} --doc {doc}"
        write_results_page(records, cfg, doc, cmd)
        typer.echo(f"wrote {doc}")
