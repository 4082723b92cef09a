"""Objects a config names by import path, ``"package.module:name"``: a model factory
(``model.encoder``), a strategy component (``kind:`` of a source, filter or weighting).

Importing the module runs its code, so a config that names one is code: run only configs you trust
(docs/reliability.md, "Security model")."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_object", "is_import_path"]


def is_import_path(value: Any) -> bool:
    """True for a string of the form ``"package.module:name"``."""
    return isinstance(value, str) and ":" in value


def import_object(path: str, what: str) -> Any:
    """The object ``name`` (dotted attributes allowed) of module ``package.module``; ``what`` names the
    option in the ``ValueError`` a path that does not import raises."""
    module, sep, name = path.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{what} {path!r} is not an import path 'package.module:name'")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"{what} {path!r} cannot be imported: {e}") from None
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what} {path!r} cannot be imported: module {module!r} has no {name!r}") from None
    return obj
