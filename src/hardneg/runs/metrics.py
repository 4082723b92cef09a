"""``metrics.jsonl`` of a run folder: one JSON object per line (``type``: step, epoch or bounds, and
``step``), appended during training; reading it, and checking it against a checkpoint on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from hardneg.io import atomic_open
from hardneg.runs.folders import METRICS


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict]:
    """All records of a run's ``metrics.jsonl``; a corrupt line raises ValueError naming file and line."""
    p = Path(run_dir) / METRICS
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found; is {run_dir} a run directory?")
    out = []
    for i, line in enumerate(p.read_bytes().split(b"\n"), 1):
        if line.strip():
            rec = _record(line)
            if rec is None:
                raise ValueError(f"{p} line {i} is not a metrics record (corrupt)")
            out.append(rec)
    return out


def _record(line: bytes) -> dict | None:
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "type" in rec else None


def metrics_problem(run_dir: str | os.PathLike[str], n_bytes: int) -> str | None:
    """Why ``metrics.jsonl`` cannot continue a checkpoint that saw its first ``n_bytes`` bytes (too short,
    a line cut at that point, or a corrupt line before it, named by number), or None when it can."""
    p = Path(run_dir) / METRICS
    data = p.read_bytes() if p.is_file() else b""
    if len(data) < n_bytes:
        n_lines = data.count(b"\n")
        return (f"{p} holds {len(data):,} bytes ({n_lines} lines) but the checkpoint was written when it "
                f"held {n_bytes:,}")
    lines = data[:n_bytes].split(b"\n")
    for i, line in enumerate(lines[:-1], 1):
        if _record(line) is None:
            return f"{p} line {i} is not a metrics record (corrupt)"
    if lines[-1]:
        return f"{p} line {len(lines)} is cut at the checkpoint's position (byte {n_bytes:,})"
    return None


def repair_metrics(run_dir: str | os.PathLike[str], n_bytes: int) -> int:
    """Keep the intact records among the first ``n_bytes`` bytes of ``metrics.jsonl`` (what the
    checkpoint had seen), drop corrupt lines and everything after; return the new size in bytes."""
    p = Path(run_dir) / METRICS
    data = p.read_bytes()[:n_bytes] if p.is_file() else b""
    keep = [line + b"\n" for line in data.split(b"\n")[:-1] if _record(line) is not None]
    text = b"".join(keep)
    with atomic_open(p, "wb") as f:
        f.write(text)
    return len(text)


def mean_std(v: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of one metric over a
    grid point's seeds: the one definition the report tables (`hardneg.report.stats`) and the
    strategy search's trials use."""
    a = np.asarray(v, dtype=float)
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else 0.0)
