"""``python -m reproduce <command>``: the result-page reproductions, with hardneg's error policy."""

from reproduce.cli import main

if __name__ == "__main__":
    main()
