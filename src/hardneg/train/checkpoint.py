"""Run directories and checkpoints.

A run directory holds ``config.yaml`` (the validated config), ``metrics.jsonl`` (one JSON object per
step / epoch / bound check), ``checkpoint.pt`` (the full training state, replaced atomically every N
steps, at every epoch end and on Ctrl-C), and when finished ``model.pt``, ``embeddings.pt`` and
``summary.json``. Every file is written to a temporary name and renamed (:mod:`hardneg.io`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from hardneg.io import atomic_torch_save, atomic_write_text

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
MODEL = "model.pt"
EMBEDDINGS = "embeddings.pt"


def prepare_run_dir(
    run_dir: str | Path, config_text: str, *, resume: bool = False, overwrite: bool = False
) -> bool:
    """Create or check ``run_dir``; return True when an existing run of the same config is resumed.

    A folder that already holds files is refused (FileExistsError) unless ``overwrite`` (its content is
    deleted) or ``resume`` with the same ``config.yaml`` (a different config is refused even then).
    """
    if resume and overwrite:
        raise ValueError("pass at most one of --resume and --overwrite")
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise FileExistsError(f"run directory {d} exists and is not a directory")
    occupied = d.is_dir() and any(d.iterdir())
    if occupied and overwrite:
        shutil.rmtree(d)
        occupied = False
    if occupied:
        cfg = d / CONFIG
        if not resume:
            raise FileExistsError(
                f"run directory {d} already holds a run; "
                "pass --resume to continue it or --overwrite to replace it"
            )
        if not cfg.is_file():
            raise FileExistsError(
                f"run directory {d} holds files but no {CONFIG}; refusing to resume into it"
            )
        if cfg.read_text(encoding="utf-8") != config_text:
            raise FileExistsError(
                f"run directory {d} holds a different run (its {CONFIG} differs); "
                "use another directory or --overwrite"
            )
        return True
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / CONFIG, config_text)
    return False


def save_checkpoint(state: dict[str, Any], run_dir: str | Path) -> Path:
    p = Path(run_dir) / CHECKPOINT
    atomic_torch_save(state, p)
    return p


def load_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    p = Path(run_dir) / CHECKPOINT
    if not p.is_file():
        return None
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # a checkpoint is only ever renamed into place, so this means outside damage
        raise ValueError(f"checkpoint {p} cannot be read ({type(e).__name__}: {e})") from None
