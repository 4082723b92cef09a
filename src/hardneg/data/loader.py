"""Batches through a torch ``DataLoader``: samples read lazily, augmented in worker processes.

The Trainer's default keeps the training set in memory as one tensor and augments whole batches in
the training process. With ``data.workers`` set, it reads samples through a ``DataLoader`` instead:
a data set larger than memory (a memory-mapped array, `MemmapImages`; an image folder; any
map-style data set of the `LabeledImageDataset` protocol) trains, and
the augmentations run in ``workers`` processes.

Reproducibility does not depend on the number of workers or of training processes, nor on where a
run was resumed:

- `EpochBatches` yields the batches of the epoch's permutation (drawn by the Trainer from its
  data generator, stored in checkpoints) from a given batch on, and of each global batch only the
  rows of this process — what ``DistributedSampler`` does, but resumable in the middle of an epoch;
- `TwoViews` augments sample i of epoch e with its own generator, seeded from
  ``(seed, e, i)``, so every view is the same whichever worker or process draws it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hardneg.arrays import integer_labels, load_array_file
from hardneg.data.augment import Augment


class EpochBatches(Sampler[list[int]]):
    """Batches ``start, start + 1, …`` of ``perm`` (``batch_size`` indices each, the last partial
    batch dropped); of each, rows ``rank·b … (rank+1)·b − 1`` with ``b = batch_size / world``."""

    def __init__(self, perm: torch.Tensor, batch_size: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes ({world})")
        self.perm, self.bs, self.start, self.rank, self.world = perm, batch_size, start, rank, world

    def __len__(self) -> int:
        return max(0, self.perm.numel() // self.bs - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        b = self.bs // self.world
        for i in range(self.start, self.perm.numel() // self.bs):
            batch = self.perm[i * self.bs : (i + 1) * self.bs]
            yield batch[self.rank * b : (self.rank + 1) * b].tolist()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s augmentations in ``epoch`` (independent streams per sample)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def image_of(item: Any, name: str = "data") -> tuple[torch.Tensor, int]:
    """``(image (C, H, W) float32, label)`` from a data set item ``(image, label)``."""
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise TypeError(f"{name}[i] must return (image tensor (C, H, W), int label)")
    x = torch.as_tensor(np.asarray(item[0]) if not isinstance(item[0], torch.Tensor) else item[0]).float()
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"{name} images must have shape (C, H, W), got {tuple(x.shape)}")
    return x, int(item[1])


class TwoViews(Dataset):
    """Sample i → ``(view 1, view 2, label, i)``: two augmentations with the generator of
    `sample_seed` (set `epoch` before iterating an epoch)."""

    def __init__(self, data: Any, augment: Augment, seed: int) -> None:
        self.data, self.augment, self.seed, self.epoch = data, augment, seed, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        x, y = image_of(self.data[i], "train_data")
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, i))
        return self.augment(x[None], g)[0], self.augment(x[None], g)[0], y, i


class Plain(Dataset):
    """Sample i → ``(image, label)`` as stored (evaluation)."""

    def __init__(self, data: Any, name: str) -> None:
        self.data, self.name = data, name

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return image_of(self.data[i], self.name)


class MemmapImages:
    """Images and labels kept on disk: ``images`` a ``.npy`` of shape (n, C, H, W) or (n, H, W)
    (uint8 in 0…255 or float in [0, 1]), ``labels`` a ``.npy`` of n ints; opened memory-mapped, so
    only the samples a batch needs are read."""

    def __init__(self, images: str | Path, labels: str | Path) -> None:
        self.images_path, self.labels_path = Path(images), Path(labels)
        for p in (self.images_path, self.labels_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such file")
        self._x: np.ndarray | None = None
        self._y = integer_labels(load_array_file(self.labels_path, "labels"), str(self.labels_path))
        n = len(self._open())
        if self._y.shape != (n,):
            raise ValueError(f"{self.labels_path}: {self._y.shape[0]} labels for {n} images in {self.images_path}")

    def _open(self) -> np.ndarray:
        if self._x is None:  # opened in each worker process on first use
            self._x = load_array_file(self.images_path, "images", mmap=True)
        return self._x

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_x": None}

    def __len__(self) -> int:
        return int(self._y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = np.array(self._open()[i])
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        return torch.from_numpy(x), int(self._y[i])


def _quiet_worker(_: int) -> None:
    # Ctrl-C reaches the whole process group: the training process finishes its step and writes a
    # checkpoint, which needs its workers alive
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def loader(dataset: Dataset, workers: int, **kwargs: Any) -> DataLoader:
    """A ``DataLoader`` with ``workers`` processes that ignore Ctrl-C and SIGTERM (the training
    process handles them)."""
    return DataLoader(dataset, num_workers=workers, worker_init_fn=_quiet_worker if workers else None, **kwargs)
