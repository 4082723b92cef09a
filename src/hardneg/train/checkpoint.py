"""Checkpoints of a run directory (its layout and the rules for creating it: :mod:`hardneg.runs`).

``checkpoint.pt`` holds the full training state, is replaced atomically every N steps, at every epoch
end and on Ctrl-C / SIGTERM, and records the SHA-256 of the run's ``config.yaml`` so that a checkpoint
copied from another run is refused on ``--resume``.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch

from hardneg.io import atomic_torch_save
from hardneg.runs.folders import CHECKPOINT, CONFIG, EMBEDDINGS, METRICS, MODEL, SUMMARY, prepare_output

__all__ = [
    "CHECKPOINT", "CONFIG", "EMBEDDINGS", "METRICS", "MODEL", "SUMMARY",
    "config_digest", "load_checkpoint", "prepare_run_dir", "save_checkpoint",
]


def config_digest(config_text: str) -> str:
    """SHA-256 of a run's ``config.yaml`` text: the identity a checkpoint is checked against."""
    return hashlib.sha256(config_text.encode("utf-8")).hexdigest()


def prepare_run_dir(
    run_dir: str | Path, config_text: str, *, resume: bool = False, overwrite: bool = False
) -> bool:
    """Create or check a run directory; True when an existing run of the same config is resumed
    (:func:`hardneg.runs.prepare_output` with ``kind="run"``)."""
    return prepare_output(run_dir, "run", config_text, resume=resume, overwrite=overwrite)


def save_checkpoint(state: dict[str, Any], run_dir: str | Path) -> Path:
    p = Path(run_dir) / CHECKPOINT
    atomic_torch_save(state, p)
    return p


def load_checkpoint(run_dir: str | Path, config_text: str | None = None) -> dict[str, Any] | None:
    """The checkpoint of ``run_dir`` (None when there is none yet). With ``config_text``, a checkpoint
    written by a run of another config raises ValueError naming the file."""
    p = Path(run_dir) / CHECKPOINT
    if not p.is_file():
        return None
    try:
        st = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a checkpoint is only ever renamed into place, so this means outside damage
        # torch's own text for a refused object is several lines and suggests weights_only=False, which
        # would run the file's code: only the first line of other errors is kept
        first = "" if isinstance(e, pickle.UnpicklingError) else (str(e).strip().splitlines() or [""])[0][:160]
        why = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise ValueError(f"checkpoint {p} cannot be read: damaged, or holds objects other than tensors and "
                         f"plain data, which hardneg never unpickles ({why})") from None
    if not isinstance(st, dict) or "model" not in st or "step" not in st:
        raise ValueError(f"checkpoint {p} is not a hardneg training checkpoint")
    digest = st.get("config_sha256")
    if config_text is not None and digest is not None and digest != config_digest(config_text):
        raise ValueError(
            f"checkpoint {p} belongs to another run (written under a different {CONFIG}); "
            "restore this run's checkpoint or start over with --overwrite"
        )
    return st
