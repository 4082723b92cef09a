"""What the repository tracks: no file its ignore rules call generated (profiles, caches, run folders,
build outputs), so a profile written by ONNX Runtime or torch.profiler cannot be committed by accident."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def checkout() -> None:
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("not a git checkout (an sdist or a copy)")


def test_no_tracked_file_is_one_the_ignore_rules_call_generated(checkout):
    tracked_ignored = _git("ls-files", "--cached", "--ignored", "--exclude-standard").stdout.split()
    assert tracked_ignored == []


@pytest.mark.parametrize("name", [
    "onnxruntime_profile__2026-12-07_05-00-00.json",  # ONNX Runtime's enable_profiling output
    "src/hardneg/mining/onnxruntime_profile__2026-12-07_05-00-00.json",
    "step.prof",  # cProfile / torch.profiler
    "runs/demo/metrics.jsonl",
    "dist/hardneg-0.1.0.tar.gz",
    "site/index.html",
])
def test_generated_files_are_ignored(checkout, name):
    assert _git("check-ignore", "-q", "--no-index", name).returncode == 0, name
