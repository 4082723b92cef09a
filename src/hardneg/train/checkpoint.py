"""Checkpoints of a run directory (its layout and the rules for creating it: `hardneg.runs`).

``checkpoint.pt`` holds the full training state, is replaced atomically every N steps, at every epoch
end and on Ctrl-C / SIGTERM, and records the SHA-256 of the run's ``config.yaml`` so that a checkpoint
copied from another run is refused on ``--resume``.

A checkpoint is data: tensors, numbers, strings and the lists and dicts that hold them
(`FIELDS`). It is read with ``torch.load(weights_only=True)``, which builds nothing else, so a
crafted file cannot run code; one that refers to anything else, lacks a field or holds a value of the
wrong type is refused with one line naming the file and the field.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from hardneg.io import WriterLock, atomic_torch_save
from hardneg.runs.folders import CHECKPOINT, CONFIG, EMBEDDINGS, METRICS, MODEL, SUMMARY, prepare_output

__all__ = [
    "CHECKPOINT", "CONFIG", "EMBEDDINGS", "FIELDS", "METRICS", "MODEL", "SUMMARY",
    "config_digest", "load_checkpoint", "prepare_run_dir", "save_checkpoint",
]

_NONE = type(None)
#: every field of a training checkpoint and the types its value may have
FIELDS: dict[str, tuple[type, ...]] = {
    "model": (dict,),
    "opt": (dict,),
    "sched": (dict,),
    "g_data": (torch.Tensor,),
    "g_aug": (torch.Tensor,),
    "torch_rng": (torch.Tensor,),
    "cuda_rng": (list,),  # one state per visible GPU, empty without CUDA
    "step": (int,),
    "epoch": (int,),
    "batch_idx": (int,),
    "perm": (torch.Tensor, _NONE),
    "epoch_loss": (list,),
    "train_seconds": (float,),
    "timed_steps": (int,),
    "metrics_bytes": (int,),
    "config_sha256": (str,),
    "strategy": (dict, _NONE),
    "key_encoder": (dict, _NONE),
    "world_size": (int, _NONE),  # the processes that wrote it: resuming on another count is refused
}
#: fields a checkpoint may omit, and the value that stands for them: a checkpoint without GPU random
#: states resumes as one written on a machine without CUDA; one without a process count is not checked
#: against the count it resumes on
OPTIONAL: dict[str, Any] = {"cuda_rng": [], "world_size": None}


def config_digest(config_text: str) -> str:
    """SHA-256 of a run's ``config.yaml`` text: the identity a checkpoint is checked against."""
    return hashlib.sha256(config_text.encode("utf-8")).hexdigest()


def prepare_run_dir(
    run_dir: str | Path, config_text: str, *, resume: bool = False, overwrite: bool = False
) -> tuple[bool, WriterLock]:
    """Create or check a run directory and lock it: ``(resumed, lock)``, resumed True when an existing
    run of the same config is resumed (`hardneg.runs.prepare_output` with ``kind="run"``)."""
    return prepare_output(run_dir, "run", config_text, resume=resume, overwrite=overwrite)


def save_checkpoint(state: dict[str, Any], run_dir: str | Path) -> Path:
    """Write ``state`` (the fields of `FIELDS`) to the run's ``checkpoint.pt`` atomically."""
    p = Path(run_dir) / CHECKPOINT
    atomic_torch_save(state, p)
    return p


def _unreadable(p: Path, e: Exception) -> ValueError:
    """One line saying why ``torch.load`` refused ``p`` (torch's own message spans many lines)."""
    g = re.search(r"GLOBAL ([\w.]+)", str(e))
    if g:
        return ValueError(
            f"checkpoint {p} is refused: it refers to {g.group(1)}, which no hardneg checkpoint holds "
            "(checkpoints are loaded as data only: tensors, numbers, strings, lists and dicts)"
        )
    if isinstance(e, pickle.UnpicklingError):
        return ValueError(f"checkpoint {p} cannot be read: it is damaged or not a checkpoint hardneg wrote")
    first = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
    return ValueError(f"checkpoint {p} cannot be read ({type(e).__name__}: {first})")


def _check_fields(p: Path, st: Any) -> None:
    """Refuse a checkpoint that lacks a field of `FIELDS` or holds a value of another type."""
    if not isinstance(st, dict):
        raise ValueError(f"checkpoint {p} is not a hardneg training checkpoint (it holds a {type(st).__name__})")
    for key, default in OPTIONAL.items():
        st.setdefault(key, default)
    for key, types in FIELDS.items():
        if key not in st:
            raise ValueError(
                f"checkpoint {p} is not a whole hardneg training checkpoint: it lacks {key!r}; "
                "restore this run's checkpoint or start over with --overwrite"
            )
        v = st[key]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            names = " or ".join("None" if t is _NONE else t.__name__ for t in types)
            raise ValueError(f"checkpoint {p}: {key!r} must be {names}, got {type(v).__name__}")
    for key in ("step", "epoch", "batch_idx", "timed_steps", "metrics_bytes"):
        if st[key] < 0:
            raise ValueError(f"checkpoint {p}: {key!r} must be >= 0, got {st[key]}")
    if len(st["epoch_loss"]) != 2 or not all(isinstance(x, (int, float)) for x in st["epoch_loss"]):
        raise ValueError(f"checkpoint {p}: 'epoch_loss' must be [sum, count], got {st['epoch_loss']!r}")
    if not all(isinstance(x, torch.Tensor) for x in st["cuda_rng"]):
        raise ValueError(f"checkpoint {p}: 'cuda_rng' must be a list of tensors")


def load_checkpoint(run_dir: str | Path, config_text: str | None = None) -> dict[str, Any] | None:
    """The checkpoint of ``run_dir`` (None when there is none yet), loaded as data only and checked
    against `FIELDS`: a file that refers to code, lacks a field or holds the wrong type raises
    ValueError naming it. With ``config_text``, so does a checkpoint written by a run of another config."""
    p = Path(run_dir) / CHECKPOINT
    if not p.is_file():
        return None
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it did not write
            warnings.simplefilter("ignore")
            st = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a checkpoint is only ever renamed into place, so this means outside damage
        raise _unreadable(p, e) from None
    _check_fields(p, st)
    if config_text is not None and st["config_sha256"] != config_digest(config_text):
        raise ValueError(
            f"checkpoint {p} belongs to another run (written under a different {CONFIG}); "
            "restore this run's checkpoint or start over with --overwrite"
        )
    return st
