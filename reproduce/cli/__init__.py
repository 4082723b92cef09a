"""``python -m reproduce``: each command lives in its own module and registers on ``app``."""

from __future__ import annotations

from reproduce.cli import crossmodal as _crossmodal  # noqa: F401  (registers `crossmodal-compare`)
from reproduce.cli import dense as _dense  # noqa: F401  (registers `dense-compare`)
from reproduce.cli import readme as _readme  # noqa: F401  (registers `readme-table`)
from reproduce.cli import wordnet as _wordnet  # noqa: F401  (registers `wordnet-export`, `retrieval-compare`)
from reproduce.cli.app import app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run a reproduction command; user errors are one line and exit code 2, as in ``hardneg``."""
    from hardneg.cli.app import main as hardneg_main

    hardneg_main(argv, application=app, prog="python -m reproduce")
