"""What a training run writes into its run folder (layout, marker and lock: `hardneg.runs`):
``metrics.jsonl`` one record at a time, and at the end ``model.pt``, ``embeddings.pt`` and
``summary.json``. Over several processes only rank 0 writes; the others hold a writer that writes
nothing.

A checkpoint records the length of ``metrics.jsonl`` when it was written; resuming cuts the file back
to that length, so the records of the steps repeated after the checkpoint are not written twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import torch

from hardneg.eval.bounds import summarize_bounds
from hardneg.io import WriterLock, atomic_torch_save, atomic_write_text
from hardneg.runs.config import RunConfig
from hardneg.runs.folders import EMBEDDINGS, METRICS, MODEL, SUMMARY
from hardneg.runs.metrics import metrics_problem, read_metrics, repair_metrics


class RunWriter:
    """Writes a run's files into ``run_dir`` when ``main``; ``lock`` is the run folder's lock, held
    until `release`."""

    def __init__(self, run_dir: Path, main: bool, lock: WriterLock | None) -> None:
        self.run_dir, self.main, self.lock = run_dir, main, lock
        self._fh: IO[str] | None = None

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS

    def log(self, rec: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl`` (keys sorted)."""
        if not self.main:
            return
        if self._fh is None:
            self._fh = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")

    def flush(self) -> None:
        """Hand the records written so far to the file (before a checkpoint records its length)."""
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        """Close ``metrics.jsonl``; a later `log` opens it again."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def release(self) -> None:
        """Close ``metrics.jsonl`` and release the run folder's lock."""
        self.close()
        if self.lock is not None:
            self.lock.release()

    def metrics_bytes(self) -> int:
        """The length of ``metrics.jsonl`` (0 before the first record)."""
        return self.metrics_path.stat().st_size if self.metrics_path.exists() else 0

    def start_over(self) -> None:
        """A resumed run that never reached its first checkpoint starts over: its records go."""
        if self.main and self.metrics_path.exists():
            self.metrics_path.unlink()

    def resume_problem(self, metrics_bytes: int) -> str | None:
        """What keeps ``metrics.jsonl`` from being cut back to ``metrics_bytes`` (damaged records,
        a shorter file), or None (`hardneg.runs.metrics.metrics_problem`); None except on rank 0."""
        return metrics_problem(self.run_dir, metrics_bytes) if self.main else None

    def cut_back(self, metrics_bytes: int, repair: bool) -> None:
        """Cut ``metrics.jsonl`` back to the checkpoint's ``metrics_bytes``; with ``repair``, keep the
        intact records up to there instead (`hardneg.runs.metrics.repair_metrics`)."""
        if not self.main:
            return
        if repair:
            repair_metrics(self.run_dir, metrics_bytes)
        elif self.metrics_path.exists():
            with open(self.metrics_path, "r+b") as f:
                f.truncate(metrics_bytes)

    def finish(
        self, summary: dict[str, Any], model_state: dict[str, torch.Tensor], embeddings: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Write ``model.pt``, ``embeddings.pt`` and ``summary.json``: ``summary`` completed with what
        ``metrics.jsonl`` holds (the last epoch's training loss, the bound check's summary); returns it."""
        self.close()
        recs = read_metrics(self.run_dir)
        bounds = summarize_bounds([r for r in recs if r["type"] == "bounds"])
        atomic_torch_save(model_state, self.run_dir / MODEL)
        atomic_torch_save(embeddings, self.run_dir / EMBEDDINGS)
        final = next((r["train_loss"] for r in reversed(recs) if r["type"] == "epoch"), None)
        out = {**summary, "final_train_loss": final, "bounds": bounds}
        atomic_write_text(self.run_dir / SUMMARY, json.dumps(out, indent=1, sort_keys=True))
        return out


def run_summary(cfg: RunConfig, steps: int, n_train: int, n_test: int) -> dict[str, Any]:
    """The parts of ``summary.json`` the config and the run's size give."""
    return {
        "loss": cfg.loss.name if cfg.loss is not None else None,
        "params": cfg.loss.params if cfg.loss is not None else None,
        "strategy": cfg.strategy,
        "seed": cfg.train.seed,
        "epochs": cfg.train.epochs,
        "steps": steps,
        "n_train": int(n_train),
        "n_test": int(n_test),
    }
