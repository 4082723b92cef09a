"""No import cycles between the parts of hardneg (subpackages and top-level modules), counting imports
inside functions too; run folders (hardneg.runs) are a leaf that training, evaluation and the report
build on without importing one another."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hardneg"


def import_edges() -> dict[str, set[str]]:
    """part -> the other parts it imports, where a part is hardneg.<part> (a subpackage or module)."""
    edges: dict[str, set[str]] = {}
    for f in SRC.rglob("*.py"):
        a = f.relative_to(SRC).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [n.name for n in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from hardneg import runs` imports the part named after the dot
                names = [f"{node.module}.{n.name}" for n in node.names] if node.module == "hardneg" else [node.module]
            else:
                names = []
            for name in names:
                parts = name.split(".")
                if parts[0] == "hardneg" and len(parts) > 1 and parts[1] != a:
                    edges.setdefault(a, set()).add(parts[1])
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(a: str) -> list[str] | None:
        state[a] = 1
        path.append(a)
        for b in sorted(edges.get(a, ())):
            if state.get(b) == 1:
                return path[path.index(b):] + [b]
            if b not in state and (c := visit(b)):
                return c
        state[a] = 2
        path.pop()
        return None

    for a in sorted(edges):
        if a not in state and (c := visit(a)):
            return c
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_cycles_between_parts_of_hardneg():
    assert find_cycle(import_edges()) is None


def test_run_folders_are_a_leaf_and_eval_report_train_do_not_import_each_other_backwards():
    e = import_edges()
    assert e["runs"] <= {"io", "_optional"}  # leaves only
    assert "train" not in e.get("eval", set()) and "train" not in e.get("report", set())
    assert "report" not in e.get("train", set())
    assert "runs" in e["train"] and "runs" in e["eval"] and "runs" in e["report"]
