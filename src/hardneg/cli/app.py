"""The typer application every sub-command registers on, and the error policy of the CLI.

User errors (bad input, missing files, invalid configs) raise ``ValueError``, ``TypeError``,
``FileNotFoundError`` or ``FileExistsError`` in the library; the CLI prints them as one line and
exits with status 2, never with a traceback. A run stopped by Ctrl-C or SIGTERM prints where its
checkpoint went and exits with 128 + the signal number (130, 143). In a worker process of ``--nproc``
that line goes to the launcher (:mod:`hardneg.cli.launch`), which prints one line for all of them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator

import click
import typer

from hardneg._optional import MissingExtraError

# typer >= 0.20 ships its own copy of click (typer._click) and its own Exit/Abort; catch both families.
try:
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover - older typer re-uses click
    _TyperClickException = click.ClickException

_EXIT = tuple({click.exceptions.Exit, getattr(typer, "Exit", click.exceptions.Exit)})
_CLICK_ERRORS = tuple({click.ClickException, _TyperClickException})
_ABORT = tuple({click.exceptions.Abort, getattr(typer, "Abort", click.exceptions.Abort)})

app = typer.Typer(
    name="hardneg",
    help="Negative sampling for contrastive learning: train, compare, mine, evaluate, bench, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# a missing optional dependency is reported like a user error: one line naming the extra to install
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, FileExistsError,
                                                MissingExtraError)


#: set by the ``--nproc`` launcher in each worker's environment: the file the worker's last line goes to
REPORT_ENV = "HARDNEG_REPORT"


def final_line(text: str) -> None:
    """Print the line a command ends with (a user error, where an interrupted run stopped) on stderr;
    in a worker of ``--nproc``, hand it to the launcher instead."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        print(text, file=sys.stderr)
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n")


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Around a command's work: a run stopped by Ctrl-C or SIGTERM (a ``KeyboardInterrupt`` with an
    ``exit_code``) prints its message, which says where the checkpoint went, as one line and exits with
    that code; typer alone would exit 130 without a word."""
    try:
        yield
    except KeyboardInterrupt as e:
        final_line(f"hardneg: {e}" if str(e) else "hardneg: interrupted")
        raise typer.Exit(getattr(e, "exit_code", 130)) from None


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    code = _run(argv)
    if "hardneg.distributed" in sys.modules:  # only a command that trained can have joined a process group
        sys.modules["hardneg.distributed"].leave()
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    """The exit status of the command ``argv``, its last line printed (:func:`final_line`)."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="hardneg", standalone_mode=False)
    except _EXIT as e:
        return e.exit_code
    except _CLICK_ERRORS as e:
        e.show()
        return 2
    except _ABORT:
        final_line("hardneg: aborted")
        return 130
    except USER_ERRORS as e:
        final_line(f"hardneg: error: {e}")
        return 2
    except Exception:
        if not os.environ.get(REPORT_ENV):
            raise
        final_line(traceback.format_exc())  # the launcher shows the first failing worker's traceback
        return 1
    return rv if isinstance(rv, int) else 0
