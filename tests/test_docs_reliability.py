"""docs/reliability.md names, for each guarantee, the test that shows it: every named test exists."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_reliability_md_exists():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    refs = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text))
    assert len(refs) >= 20
    missing = []
    for path, name in sorted(refs):
        f = ROOT / path
        defined = (
            {n.name for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))) if isinstance(n, ast.FunctionDef)}
            if f.is_file() else set()
        )
        if name not in defined:
            missing.append(f"{path}::{name}")
    assert not missing, missing
