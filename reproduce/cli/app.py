"""The typer application the reproduction commands register on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="python -m reproduce",
    help="Reproduce hardneg's result pages: cross-modal, dense and WordNet retrieval experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
