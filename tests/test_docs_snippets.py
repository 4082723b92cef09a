"""The ```python blocks of the README, docs/losses.md and docs/design.md run, in order, in one namespace per file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", ["README.md", "docs/losses.md", "docs/design.md"])
def test_python_blocks_run(doc):
    torch.set_num_threads(1)
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{doc} has no python block"
    torch.manual_seed(0)
    ns: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{doc}[block {i}]", "exec"), ns)
    if doc == "README.md":  # the five-line example really trained and built a strategy
        assert ns["z1"].grad is not None and torch.isfinite(ns["z1"].grad).all()
        assert float(ns["loss"].detach()) > 0
