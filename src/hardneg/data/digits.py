"""scikit-learn's 8×8 handwritten digits (built in, no download): the data of ``make demo`` and fast tests."""

from __future__ import annotations

import numpy as np
import torch

from hardneg._optional import require


def load_digits_split(
    split: str = "train", *, test_fraction: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(X, y)`` for a stratified, seeded split of scikit-learn's digits.

    ``X`` is float32 of shape (n, 1, 8, 8) scaled to [0, 1] (the raw values are 0..16), ``y`` int64 in
    0..9. ``split`` is ``"train"`` or ``"test"``; the same ``seed`` always gives the same split.
    """
    require("sklearn", "train", feature="the digits data set")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    d = load_digits()
    X = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    sel = tr if split == "train" else te
    return torch.from_numpy(X[sel]).contiguous(), torch.from_numpy(y[sel]).contiguous()
