"""``python -m hardneg.cli``: the ``hardneg`` command (how ``--nproc`` starts each process)."""

from hardneg.cli.app import main

if __name__ == "__main__":
    main()
