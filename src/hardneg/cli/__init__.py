"""`hardneg` command line. Each sub-command lives in its own module and registers on ``app``."""

from hardneg.cli import train_cmds  # noqa: F401  (registers train, compare, eval, bounds, report)
from hardneg.cli.app import app, main

__all__ = ["app", "main"]
