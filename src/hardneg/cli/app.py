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
"""

from __future__ import annotations

import contextlib
import signal
import sys
import warnings
from collections.abc import Iterator

import typer

from hardneg._optional import MissingExtraError, installed_version
from hardneg.io import HardnegWarning, describe_os_error, is_file_system_error

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


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning) -> str:
    if issubclass(category, HardnegWarning):
        return f"hardneg: warning: {message}\n"
    return _default(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    command = typer.main.get_command(app)
    warnings.formatwarning = _format_warning
    # Ctrl-C and SIGTERM (what schedulers send before they kill) stop every command with one line and
    # 130 / 143; only the main thread may set handlers (an in-process caller may run main in a thread)
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _stop) for s in STOP_SIGNALS} if main_thread else {}
    try:
        rv = _run(command, argv)
    finally:
        for s, h in previous.items():
            if h is not None:
                signal.signal(s, h)
    sys.exit(rv if isinstance(rv, int) else 0)


def _run(command: typer.core.TyperCommand | typer.core.TyperGroup, argv: list[str] | None) -> object:
    """The command's return value; every way it fails exits with its code and one line."""
    try:
        return command.main(args=argv, prog_name="hardneg", standalone_mode=False)
    except _EXIT as e:
        sys.exit(e.exit_code)
    except _CLICK_ERRORS as e:
        e.show()
        sys.exit(2)
    except _ABORT:
        print("hardneg: aborted", file=sys.stderr)
        sys.exit(130)
    except Stopped as e:
        print(f"hardneg: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except USER_ERRORS as e:
        print(f"hardneg: error: {e}", file=sys.stderr)
        sys.exit(2)
    except ChildProcessError as e:  # a worker process died (killed, out of memory): not the user's doing
        print(f"hardneg: error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        if not is_file_system_error(e):
            raise
        print(f"hardneg: error: {describe_os_error(e)}", file=sys.stderr)
        sys.exit(2)
