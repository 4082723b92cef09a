"""The dataset protocol of the Trainer, and loading of the built-in datasets by name.

**Protocol.** Any map-style dataset works: an object with ``__len__()`` and ``__getitem__(i)``
returning ``(image, label)``, where ``image`` is a float tensor (C, H, W) in [0, 1] and ``label`` an
int (or 0-d tensor). `dataset_to_tensors` stacks it once into memory; the Trainer then samples
batches and augments them with `hardneg.data.augment.Augment`. Pass your own via
``Trainer(config, run_dir, train_data=my_ds, test_data=my_test_ds)`` (datasets or ``(X, y)`` tuples).
With ``data.workers`` set, the Trainer reads the data set lazily instead (`hardneg.data.loader`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from hardneg.data.digits import load_digits_split
from hardneg.data.fashion_mnist import load_fashion_mnist


@runtime_checkable
class LabeledImageDataset(Protocol):
    """``len(ds)`` and ``ds[i] -> (image (C,H,W) float tensor in [0,1], int label)``."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]: ...


def dataset_to_tensors(data: Any, *, name: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Turn ``(X, y)`` tensors or a `LabeledImageDataset` into ``(X (n,C,H,W) float32, y (n,) int64)``.
    """
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        X, y = data
    elif isinstance(data, LabeledImageDataset):
        if len(data) == 0:
            raise ValueError(f"{name} is empty")
        items = [data[i] for i in range(len(data))]
        if not all(isinstance(it, tuple | list) and len(it) == 2 for it in items):
            raise TypeError(f"{name}[i] must return (image tensor (C, H, W), int label)")
        xs, ys = zip(*items)
        X = torch.stack([torch.as_tensor(x) for x in xs])
        y = torch.as_tensor([int(v) for v in ys])
    else:
        raise TypeError(f"{name} must be an (X, y) tuple of tensors or a dataset with __len__/__getitem__")
    X = X.float()
    if X.ndim == 3:
        X = X[:, None]
    if X.ndim != 4:
        raise ValueError(f"{name} images must have shape (n, C, H, W), got {tuple(X.shape)}")
    y = y.long().reshape(-1)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{name}: {X.shape[0]} images but {y.shape[0]} labels")
    return X.contiguous(), y.contiguous()


def load_named(
    name: str, split: str, *, data_dir: str | None = None, limit: int | None = None, seed: int = 0
):
    """Load a built-in dataset: ``"digits"`` (scikit-learn) or ``"fashion_mnist"`` (idx files)."""
    if name == "digits":
        X, y = load_digits_split(split, seed=seed)
        if limit is not None:
            X, y = X[:limit], y[:limit]
        return X, y
    if name == "fashion_mnist":
        return load_fashion_mnist(split, data_dir=data_dir, limit=limit)
    raise ValueError(f"unknown dataset {name!r}; expected 'digits' or 'fashion_mnist'")
