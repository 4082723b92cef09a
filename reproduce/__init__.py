"""The reproductions of hardneg's result pages: the cross-modal, dense and WordNet retrieval experiments,
their configs' runs and the pages they write (docs/results_*.md, docs/retrieval.md).

They live in the repository, not in the installed package: the package ships what a user runs on their
own data (docs/design.md §4, "What the package ships"). Run them from a checkout::

    python -m reproduce --help
"""
