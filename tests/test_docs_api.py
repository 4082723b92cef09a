"""The API reference covers the public surface: every name a user imports from a public module has a
docstring and is rendered by a `:::` directive of some page under docs/api/, and no docstring carries a
reStructuredText role, which mkdocstrings would print raw."""

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"

#: the modules a user imports from; each one's ``__all__`` (or, without one, its public classes and
#: functions) is the public surface
PUBLIC_MODULES = (
    "hardneg",
    "hardneg.losses",
    "hardneg.negatives",
    "hardneg.negatives.cross_modal",
    "hardneg.negatives.pixels",
    "hardneg.negatives.text_negatives",
    "hardneg.negatives.caption_edits",
    "hardneg.negatives.diagnostics",
    "hardneg.dense",
    "hardneg.models",
    "hardneg.distributed",
    "hardneg.integrations.open_clip",
    "hardneg.integrations.sentence_transformers",
    "hardneg.mining.hard_negatives",
    "hardneg.data.loader",
)

_DIRECTIVE = re.compile(r"^::: *(\S+)\n((?:[ \t]+.*\n|\n)*)", re.M)
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|math|ref|py:\w+):`")


def _public_names(module_name: str) -> dict[str, object]:
    mod = importlib.import_module(module_name)
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, v in vars(mod).items() if not n.startswith("_")
                 and (inspect.isclass(v) or inspect.isfunction(v)) and v.__module__ == module_name]
    return {f"{module_name}.{n}": getattr(mod, n) for n in names if n != "__version__"}


def _home(obj: object) -> str | None:
    """Where griffe finds an object: the module that defines it, and its qualified name."""
    if inspect.ismodule(obj):
        return obj.__name__
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{mod}.{qual}" if mod and qual else None


def _documented() -> set[str]:
    """Homes of everything the API pages render: a directive on an object renders it; one on a module
    renders its `members` option, or every public class and function it defines."""
    out: set[str] = set()
    for page in sorted(API.glob("*.md")):
        for target, opts in _DIRECTIVE.findall(page.read_text()):
            options = (yaml.safe_load(opts) or {}).get("options", {}) if opts.strip() else {}
            try:
                mod = importlib.import_module(target)
            except ModuleNotFoundError:
                parent, _, name = target.rpartition(".")
                obj = getattr(importlib.import_module(parent), name)
                out.add(_home(obj))
                continue
            members = options.get("members")
            if members is None:
                members = [n for n, v in vars(mod).items() if not n.startswith("_") and _home(v)
                           and getattr(v, "__module__", None) == mod.__name__]
            out.update(_home(getattr(mod, m)) for m in members)
            out.add(mod.__name__)
    return out


def test_every_public_name_has_a_docstring_and_an_api_entry():
    pytest.importorskip("sentence_transformers")
    documented = _documented()
    missing, undocumented = [], []
    for module_name in PUBLIC_MODULES:
        for public, obj in _public_names(module_name).items():
            if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)):
                continue  # constants are documented in their module's docstring
            if not inspect.getdoc(obj):
                undocumented.append(public)
            if _home(obj) not in documented:
                missing.append(public)
    assert not undocumented, f"public names without a docstring: {undocumented}"
    assert not missing, f"public names with no API entry under docs/api/: {missing}"


def test_docstrings_carry_no_restructuredtext_roles():
    found = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "src").rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if _ROLE.search(line)]
    assert not found, f"{len(found)} reStructuredText roles, which the API pages would print raw: {found[:10]}"
