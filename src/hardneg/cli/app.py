"""The typer application every sub-command registers on, and the error policy of the CLI.

User errors (bad input, missing files, invalid configs) raise ``ValueError``, ``TypeError``,
``FileNotFoundError`` or ``FileExistsError`` in the library; the CLI prints them as one line and
exits with status 2, never with a traceback. A run stopped by Ctrl-C or SIGTERM prints where its
checkpoint went and exits with 128 + the signal number (130, 143).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

from hardneg._optional import MissingExtraError, installed_version

# typer >= 0.20 carries its own copy of click (typer._click), whose exceptions derive from typer's; older
# typer depends on click and uses click's. Only typer is declared, so click is never imported directly.
try:
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - typer < 0.20, which requires click
    from click.exceptions import ClickException as _ClickException  # type: ignore[no-redef]

_EXIT = typer.Exit
_CLICK_ERRORS = _ClickException
_ABORT = typer.Abort

app = typer.Typer(
    name="hardneg",
    help="Negative sampling for contrastive learning: train, compare, mine, evaluate, bench, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: typer's rich panels label every flag (even --help) with a "<bool>" value it does not take
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"hardneg {installed_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the installed version of hardneg and exit."),
) -> None:
    """Negative sampling for contrastive learning: train, compare, mine, evaluate, bench, report."""

# a missing optional dependency is reported like a user error: one line naming the extra to install
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, FileExistsError,
                                                MissingExtraError)


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Around a command's work: a run stopped by Ctrl-C or SIGTERM (a ``KeyboardInterrupt`` with an
    ``exit_code``) prints its message, which says where the checkpoint went, as one line and exits with
    that code; typer alone would exit 130 without a word."""
    try:
        yield
    except KeyboardInterrupt as e:
        print(f"hardneg: {e}" if str(e) else "hardneg: interrupted", file=sys.stderr)
        raise typer.Exit(getattr(e, "exit_code", 130)) from None


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="hardneg", standalone_mode=False)
    except _EXIT as e:
        sys.exit(e.exit_code)
    except _CLICK_ERRORS as e:
        e.show()
        sys.exit(2)
    except _ABORT:
        print("hardneg: aborted", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as e:
        print(f"hardneg: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)
