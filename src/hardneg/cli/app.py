"""The typer application every sub-command registers on, and the error policy of the CLI.

User errors (bad input, missing files, invalid configs) raise ``ValueError``, ``TypeError``,
``FileNotFoundError`` or ``FileExistsError`` in the library; the CLI prints them as one line and
exits with status 2, never with a traceback. So are file-system refusals, whichever command meets
them (every command checks its output paths before any work, `hardneg.io.check_writable`): no
permission, a read-only or full disk, a file where a folder is needed or the reverse
(`hardneg.io.is_file_system_error`), printed as ``<path>: <reason>``. Warnings of hardneg's own
(`hardneg.io.HardnegWarning`, e.g. a damaged cache file set aside) are one line each. A command
stopped by Ctrl-C or SIGTERM prints one line (a training run: where its checkpoint went) and exits
with 128 + the signal number (130, 143).
In a worker process of ``--nproc`` that line goes to the launcher (`hardneg.cli.launch`), which
prints one line for all of them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import typer

from hardneg._optional import MissingExtraError, installed_version
from hardneg.io import HardnegWarning, describe_os_error, is_file_system_error

# typer >= 0.20 carries its own copy of click (typer._click), whose exceptions derive from typer's; older
# typer depends on click and uses click's. Only typer is declared, so click is never imported directly.
if TYPE_CHECKING:
    from typer._click.exceptions import ClickException


def _click_exception_class() -> type[ClickException]:
    try:
        return importlib.import_module("typer._click.exceptions").ClickException
    except ImportError:  # pragma: no cover - typer < 0.20, which requires click
        return importlib.import_module("click.exceptions").ClickException


_EXIT = typer.Exit
_CLICK_ERRORS = _click_exception_class()
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
# (file-system refusals, PermissionError and the like, are OSErrors printed by describe_os_error)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, FileExistsError,
                                                MissingExtraError)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """Ctrl-C or SIGTERM reached a command outside the trainer's own handlers. Not a
    ``KeyboardInterrupt``, which typer would turn into a silent exit 130 whatever the signal; not an
    ``Exception``, so no ``except Exception`` swallows it. ``finally`` blocks and atomic writes run."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted ({signal.Signals(signum).name})")
        self.exit_code = 128 + signum


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


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


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning) -> str:
    if issubclass(category, HardnegWarning):
        return f"hardneg: warning: {message}\n"
    return _default(message, category, filename, lineno, line)


def main(argv: list[str] | None = None, application: typer.Typer | None = None, prog: str = "hardneg") -> None:
    """Console entry point: run ``application`` (default: ``hardneg``'s app), turning user errors into one
    line and exit code 2. The repository's reproductions (``python -m reproduce``) run through here too,
    so their commands follow the same error policy."""
    code = _run_with_signals(argv, application or app, prog)
    if "hardneg.distributed" in sys.modules:  # only a command that trained can have joined a process group
        sys.modules["hardneg.distributed"].leave()
    sys.exit(code)


def _run_with_signals(argv: list[str] | None, application: typer.Typer, prog: str) -> int:
    """The exit status of the command ``argv``, Ctrl-C and SIGTERM turned into `Stopped` meanwhile."""
    command = typer.main.get_command(application)
    warnings.formatwarning = _format_warning
    # Ctrl-C and SIGTERM (what schedulers send before they kill) stop every command with one line and
    # 130 / 143; only the main thread may set handlers (an in-process caller may run main in a thread)
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _stop) for s in STOP_SIGNALS} if main_thread else {}
    try:
        return _run(command, argv, prog)
    finally:
        for s, h in previous.items():
            if h is not None:
                signal.signal(s, h)


class _Command(Protocol):
    """What `_run` calls of the command typer builds: its click-style ``main`` (typer's own copy of
    click from typer 0.20, click's before, so no one class names both)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, *,
             standalone_mode: bool = True) -> Any: ...


def _run(command: _Command, argv: list[str] | None, prog: str) -> int:
    """The command's exit status; every way it fails ends with its code and one line (`final_line`)."""
    try:
        rv = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except _EXIT as e:
        return e.exit_code
    except _CLICK_ERRORS as e:
        e.show()
        return 2
    except _ABORT:
        final_line("hardneg: aborted")
        return 130
    except Stopped as e:
        final_line(f"hardneg: {e}")
        return e.exit_code
    except USER_ERRORS as e:
        final_line(f"hardneg: error: {e}")
        return 2
    except ChildProcessError as e:  # a worker process died (killed, out of memory): not the user's doing
        final_line(f"hardneg: error: {e}")
        return 1
    except Exception as e:
        if isinstance(e, OSError) and is_file_system_error(e):
            final_line(f"hardneg: error: {describe_os_error(e)}")
            return 2
        if not os.environ.get(REPORT_ENV):
            raise
        final_line(traceback.format_exc())  # the launcher shows the first failing worker's traceback
        return 1
    return rv if isinstance(rv, int) else 0
