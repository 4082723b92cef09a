"""The ``hardneg`` console command (and ``python -m hardneg``).

This module imports nothing optional, so that on the core install (no ``cli`` extra) the command says
in one line which extra to install instead of failing with a traceback.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run the ``hardneg`` command; without the ``cli`` extra print the install line and exit with 2
    (``--version`` still answers)."""
    from hardneg._optional import MissingExtraError, installed_version

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        from hardneg.cli import main as run
    except MissingExtraError as e:
        if args == ["--version"]:
            print(f"hardneg {installed_version()}")
            sys.exit(0)
        print(f"hardneg: error: {e}", file=sys.stderr)
        sys.exit(2)
    run(args)


if __name__ == "__main__":
    main()
