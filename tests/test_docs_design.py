"""docs/design.md §4 describes the package as it is: its layout names every module of every part, in
the layer order that `make lint` enforces (the import-linter contract in pyproject.toml)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "hardneg"
ENTRY = re.compile(r"^ {6}(\S+)")  # a part's line in the layout block; its description continues deeper


def layout_entries() -> list[tuple[list[str], str]]:
    """(the parts a line of §4's layout block names, that line with its continuation lines), in order."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    block = text.split("## 4. Layout and dependency order", 1)[1].split("The list above is the layer order", 1)[0]
    entries: list[tuple[list[str], str]] = []
    for line in block.splitlines():
        if line.startswith("    src/hardneg/"):
            continue
        if ENTRY.match(line):
            parts = []
            for word in line.split():  # the leading names: "cli/", "distributed.py", "io.py arrays.py ..."
                if not word.endswith(("/", ".py")):
                    break
                parts.append(word.removesuffix("/").removesuffix(".py"))
            entries.append((parts, line))
        elif entries and line.startswith(" " * 7):
            entries[-1] = (entries[-1][0], entries[-1][1] + "\n" + line)
    return entries


def package_parts() -> dict[str, list[str]]:
    """part -> the module names it holds (a subpackage's modules; a top-level module holds itself)."""
    parts: dict[str, list[str]] = {}
    for p in sorted(SRC.iterdir()):
        if p.is_dir() and (p / "__init__.py").is_file():
            parts[p.name] = sorted(f.stem for f in p.glob("*.py") if f.stem not in ("__init__", "__main__"))
        elif p.suffix == ".py" and p.stem not in ("__init__", "__main__"):
            parts[p.stem] = [p.stem]
    return parts


def test_layout_names_every_part_and_every_module_of_each():
    entries = layout_entries()
    named = {part: text for parts, text in entries for part in parts}
    actual = package_parts()
    assert set(named) == set(actual), (sorted(set(actual) - set(named)), sorted(set(named) - set(actual)))
    missing = {part: [m for m in modules if not re.search(rf"\b{re.escape(m)}\b", named[part])]
               for part, modules in actual.items()}
    assert not {p: m for p, m in missing.items() if m}, missing


def test_layout_lists_the_parts_in_the_contracts_layer_order():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    layer = {name.strip().removeprefix("hardneg."): i
             for i, line in enumerate(contract["layers"]) for name in line.split("|")}
    order = [part for parts, _ in layout_entries() for part in parts]
    assert set(order) == set(layer)  # every part of the package sits in one layer of the contract
    ranks = [layer[p] for p in order]
    assert ranks == sorted(ranks), list(zip(order, ranks, strict=True))
