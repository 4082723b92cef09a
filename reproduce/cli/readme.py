"""``python -m reproduce readme-table``: the benchmark tables of the README and the docs from a
benchmark's JSON rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reproduce.cli.app import app


@app.command("readme-table")
def readme_table(
    which: Annotated[str, typer.Argument(help="loss | strategies | mining: the benchmark whose table to write")],
    rows: Annotated[Path, typer.Argument(
        help="the rows `hardneg bench <which> --json` (mining: `benchmarks/mining_speed.py --out`) wrote")],
    readme: Annotated[Path, typer.Option(
        "--readme", help="the page (README or a doc) whose bench:<which> section is replaced")] = Path("README.md"),
) -> None:
    """Write a page's table of ``hardneg bench loss``, ``strategies`` or ``benchmarks/mining_speed.py``
    from its JSON rows."""
    from hardneg.io import check_writable
    from reproduce.readme import update_readme

    check_writable(readme, "--readme")
    update_readme(readme, rows, which)
    typer.echo(f"updated {readme}")
