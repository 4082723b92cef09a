"""The ```python blocks of docs/dense.md run, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_dense_doc_blocks_run():
    torch.set_num_threads(1)
    text = (ROOT / "docs/dense.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    torch.manual_seed(0)
    ns: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/dense.md[block {i}]", "exec"), ns)
    assert torch.isfinite(ns["loss"]) and ns["encoder"].weight.grad is not None
    assert ns["seg"].last_diagnostics["n_candidates_total"] > 64 * 4  # the memory added candidates
