"""`hardneg` command line. Each sub-command lives in its own module and registers on ``app``."""

from hardneg.cli.app import app, main

__all__ = ["app", "main"]
