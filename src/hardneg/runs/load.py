"""Loading a finished or interrupted run folder: its config, summary and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardneg.io import read_json_object
from hardneg.runs.config import RunConfig, load_config
from hardneg.runs.folders import CONFIG, MARKER, MODEL, RUNS, SUMMARY, read_marker


@dataclass
class Run:
    """A run folder: its path, validated config, summary (empty until it finished)."""

    path: Path
    config: RunConfig
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return bool(self.summary.get("finished")) and (self.path / MODEL).is_file()


def read_summary(path: str | Path) -> dict[str, Any]:
    """A run's ``summary.json`` ({} when there is none); a damaged one is one ``ValueError`` naming it."""
    p = Path(path)
    if not p.is_file():
        return {}
    return read_json_object(p, "run summary", "rerun that run (--overwrite) or restore the file")


def load_run(run_dir: str | Path) -> Run:
    """The run in ``run_dir``; a folder that is not a run (missing, a compare folder, no config)
    raises with one line naming it."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"run directory {d} does not exist")
    kind = read_marker(d)
    if kind == "compare":
        raise ValueError(f"{d} is a compare folder, not a run; use one of its runs ({d / RUNS}/<name>)")
    if kind is None and not (d / CONFIG).is_file():
        raise ValueError(f"{d} is not a hardneg run directory (no {MARKER} marker, no {CONFIG})")
    return Run(d, load_config(d / CONFIG, cls=RunConfig), read_summary(d / SUMMARY))
