"""Every ```python block of docs/strategies.md runs, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"


def test_doc_snippets_run(capsys):
    torch.set_num_threads(1)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 15
    ns: dict = {}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{DOC.name}[block {i}]", "exec"), ns)
        except Exception as e:  # pragma: no cover - the message names the failing block
            raise AssertionError(f"docs/strategies.md python block {i} failed: {e!r}\n{code}") from e
    out = capsys.readouterr().out
    assert "62" in out  # the ESS of uniform π printed by the first block
