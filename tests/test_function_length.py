"""No function or method over 100 lines (docs/design.md §6), in the package, the reproductions, the
benchmarks, the tests and dev/: counted from its ``def`` line to its last line, docstring included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 100
FOLDERS = ("src", "reproduce", "benchmarks", "tests", "dev")


def long_functions(source: str, limit: int = LIMIT) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function in ``source`` longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((node.name, node.lineno, length))
    return found


def test_the_counter_measures_from_def_to_last_line():
    function = "def f():\n" + "".join(f"    x{i} = {i}\n" for i in range(99))  # 100 lines
    method = "class C:\n    def g(self):\n" + "".join(f"        x{i} = {i}\n" for i in range(100))  # 101
    assert long_functions(function) == []
    assert long_functions(method) == [("g", 2, 101)]


def test_no_function_over_100_lines():
    too_long = [f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)"
                for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))
                for name, line, n in long_functions(p.read_text(encoding="utf-8"))]
    assert too_long == []
