"""``python -m reproduce readme-table``: the README's benchmark tables from ``hardneg bench --json`` rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reproduce.cli.app import app


@app.command("readme-table")
def readme_table(
    which: Annotated[str, typer.Argument(help="loss | strategies: the benchmark whose table to write")],
    rows: Annotated[Path, typer.Argument(help="the rows `hardneg bench <which> --json` wrote")],
    readme: Annotated[Path, typer.Option("--readme", help="the README whose bench:<which> section is replaced")] = (
        Path("README.md")),
) -> None:
    """Write the README's table of ``hardneg bench loss`` or ``strategies`` from its JSON rows."""
    from hardneg.io import check_writable
    from reproduce.readme import update_readme

    check_writable(readme, "--readme")
    update_readme(readme, rows, which)
    typer.echo(f"updated {readme}")
