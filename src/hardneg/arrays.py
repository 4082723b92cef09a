"""Loading arrays handed to hardneg by value or by path: one loader for every option that takes a
matrix or a vector (pool embeddings, cluster feature tables, guide tables, duplicate groups)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch


def load_array(x: Any, name: str) -> np.ndarray:
    """A numpy array from a tensor, an array, a (nested) list, or a ``.npy`` / ``.pt`` file path.

    Raises ``FileNotFoundError`` naming ``name`` and the path, or ``TypeError`` for anything else."""
    if isinstance(x, (str, os.PathLike)):
        p = os.fspath(x)
        if not os.path.exists(p):
            raise FileNotFoundError(f"{name}: no such file: {p}")
        if p.endswith(".npy"):
            return np.load(p)
        if p.endswith(".pt"):
            return torch.load(p, map_location="cpu", weights_only=True).numpy()
        raise ValueError(f"{name}: expected a .npy or .pt file, got {p}")
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{name} must be a tensor, array, list or a .npy/.pt path, got {type(x).__name__}")
