"""`hardneg` command line. Each sub-command lives in its own module and registers on ``app``."""

from hardneg._optional import missing

try:
    import rich  # noqa: F401
    import typer  # noqa: F401
except ImportError as e:
    raise missing("rich" if e.name == "rich" else "typer", feature="the hardneg command") from e

from hardneg.cli import (
    bench,  # noqa: F401  (registers `hardneg bench`)
    train_cmds,  # noqa: F401  (registers train, compare, eval, bounds, report)
)
from hardneg.cli import diagnose as _diagnose  # noqa: F401  (registers `hardneg diagnose`)
from hardneg.cli import mine as _mine  # noqa: F401  (registers `hardneg mine`)
from hardneg.cli import strategies as _strategies  # noqa: F401  (registers `hardneg strategies`)
from hardneg.cli.app import app, main

__all__ = ["app", "main"]
