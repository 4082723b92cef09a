"""The data a training run reads: its training and test sets, the order and the augmentations it
draws them in, and the rows of each global batch this process embeds.

Two generators seeded from ``train.seed`` make a run reproducible: the data generator draws each
epoch's permutation, the augmentation generator the two views of every batch (`TensorData`). Both
are saved in every checkpoint. With ``data.workers`` set (`LoaderData`) the samples are read through
a DataLoader and each sample is augmented with its own seed (`hardneg.data.loader`), so the workers
need no shared generator.

Several processes draw the same permutation and the same augmentation parameters for the global batch
(``train.batch_size``); each augments only its own slice of it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch

from hardneg.data.augment import Augment
from hardneg.data.base import LabeledImageDataset, dataset_to_tensors, load_named
from hardneg.data.loader import EpochBatches, Plain, TwoViews, image_of, loader
from hardneg.runs.config import DataConfig, RunConfig

#: one batch as the training step takes it: this process's two views, labels and dataset indices
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
#: the offset of the augmentation generator's seed from ``train.seed``
AUG_SEED_OFFSET = 1_000_003


def check_batch(batch_size: int, world: int, n_train: int | None = None) -> None:
    """Refuse a global batch that does not split evenly over ``world`` processes or, given the size of
    the training set, is larger than it."""
    if batch_size % world:
        raise ValueError(
            f"train.batch_size={batch_size} must be divisible by the number of processes (--nproc {world})"
        )
    if n_train is not None and n_train < batch_size:
        raise ValueError(f"train.batch_size={batch_size} is larger than the training set ({n_train})")


def _load_split(d: DataConfig, split: str) -> Any:
    limit = d.train_limit if split == "train" else d.test_limit
    return load_named(d.name, split, data_dir=d.data_dir, limit=limit, seed=d.split_seed)


def load_run_data(d: DataConfig) -> tuple[Any, Any]:
    """The training and test data of a run's ``data`` section (`hardneg.data.base.load_named`)."""
    return _load_split(d, "train"), _load_split(d, "test")


def n_samples(data: Any) -> int:
    """The number of samples of ``(X, y)`` tensors or a data set."""
    return len(data[0]) if isinstance(data, tuple) else len(data)


def _as_dataset(data: Any, name: str) -> Any:
    """A map-style data set from ``(X, y)`` tensors or a `LabeledImageDataset` (kept as is)."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return torch.utils.data.TensorDataset(*data)
    if not isinstance(data, LabeledImageDataset):
        raise TypeError(f"{name} must be an (X, y) tuple of tensors or a dataset with __len__/__getitem__")
    if len(data) == 0:
        raise ValueError(f"{name} is empty")
    return data


class RunData(ABC):
    """The training and test sets of a run (`run_data` picks the kind), the generators and
    augmentation it draws batches with, and this process's rows of the global batch."""

    n_train: int
    n_test: int
    #: the shape of one training sample, which a model built from the config is sized for
    sample_shape: tuple[int, ...]
    #: the number of classes when the labels are in memory; None: counted from the evaluated labels
    num_classes: int | None = None

    def __init__(self, cfg: RunConfig, world: int, rank: int) -> None:
        self.batch_size = cfg.train.batch_size
        self.world, self.rank = world, rank
        b = self.batch_size // world
        self.local = slice(rank * b, (rank + 1) * b)  # this process's rows of the global batch
        a = cfg.augment
        self.augment = Augment(a.crop_scale, a.flip_p, a.noise_std, a.erase_p)
        self.aug_seed = cfg.train.seed + AUG_SEED_OFFSET
        self.g_data = torch.Generator().manual_seed(cfg.train.seed)
        self.g_aug = torch.Generator().manual_seed(self.aug_seed)

    def permutation(self) -> torch.Tensor:
        """The next epoch's order of the training set, from the data generator."""
        return torch.randperm(self.n_train, generator=self.g_data)

    @abstractmethod
    def batches(self, perm: torch.Tensor, start: int, epoch: int) -> Iterator[Batch]:
        """The batches of the epoch ``epoch`` (counted from 0) in the order ``perm``, from batch
        ``start`` on: this process's ``(v1, v2, labels, ids)``."""

    @abstractmethod
    def features(self, which: str, embed: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``embed`` of every image of the ``"train"`` or ``"test"`` set, and the labels."""

    @abstractmethod
    def test_head(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images and labels (the fixed evaluation batch, the saved embeddings)."""


class TensorData(RunData):
    """Both sets held in memory as tensors; each batch is augmented whole in this process."""

    def __init__(self, cfg: RunConfig, world: int, rank: int, train_data: Any, test_data: Any) -> None:
        self.X, self.y = dataset_to_tensors(train_data, name="train_data")
        self.Xt, self.yt = dataset_to_tensors(test_data, name="test_data")
        self.num_classes = int(max(int(self.y.max()), int(self.yt.max())) + 1)
        self.n_train, self.n_test, self.sample_shape = self.X.shape[0], self.Xt.shape[0], tuple(self.X.shape[1:])
        super().__init__(cfg, world, rank)

    def batch(self, idx: torch.Tensor) -> Batch:
        """Two augmented views of the global batch ``idx`` (the same draws on every process), and this
        process's rows of them: ``(v1, v2, labels, ids)``."""
        x, y = self.X[idx], self.y[idx]
        if self.world == 1:
            return self.augment(x, self.g_aug), self.augment(x, self.g_aug), y, idx
        rows = self.local  # the draws of the whole batch, the work of this process's rows
        v1, v2 = self.augment(x, self.g_aug, rows), self.augment(x, self.g_aug, rows)
        return v1, v2, y[rows], idx[rows]

    def batches(self, perm: torch.Tensor, start: int, epoch: int) -> Iterator[Batch]:
        bs = self.batch_size
        for i in range(start, self.n_train // bs):
            yield self.batch(perm[i * bs : (i + 1) * bs])

    def features(self, which: str, embed: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        X, y = (self.X, self.y) if which == "train" else (self.Xt, self.yt)
        return embed(X), y

    def test_head(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.Xt[:n], self.yt[:n]


class LoaderData(RunData):
    """Both sets read through a DataLoader with ``data.workers`` worker processes; each process reads
    and augments its own rows of every batch, each sample with its own seed."""

    def __init__(self, cfg: RunConfig, world: int, rank: int, train_data: Any, test_data: Any) -> None:
        self.workers = cfg.data.workers or 0
        self.train_ds, self.test_ds = _as_dataset(train_data, "train_data"), _as_dataset(test_data, "test_data")
        self.n_train, self.n_test = len(self.train_ds), len(self.test_ds)
        self.sample_shape = tuple(image_of(self.train_ds[0], "train_data")[0].shape)
        super().__init__(cfg, world, rank)

    def batches(self, perm: torch.Tensor, start: int, epoch: int) -> Iterator[Batch]:
        views = TwoViews(self.train_ds, self.augment, self.aug_seed)
        views.epoch = epoch
        sampler = EpochBatches(perm, self.batch_size, start, self.rank, self.world)
        for v1, v2, y, idx in loader(views, self.workers, batch_sampler=sampler):
            yield v1, v2, y.long(), idx.long()

    def features(self, which: str, embed: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ds = Plain(self.train_ds if which == "train" else self.test_ds, f"{which}_data")
        feats, labels = [], []
        for xb, yb in loader(ds, self.workers, batch_size=1024, shuffle=False):
            feats.append(embed(xb))
            labels.append(yb)
        return torch.cat(feats), torch.cat(labels).long()

    def test_head(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [image_of(self.test_ds[i], "test_data") for i in range(min(n, self.n_test))]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def run_data(cfg: RunConfig, world: int, rank: int, train_data: Any = None, test_data: Any = None) -> RunData:
    """The data of a run: ``train_data`` / ``test_data`` (``(X, y)`` tensors or data sets; None: the
    config's ``data`` section), in memory, or read through a DataLoader when ``data.workers`` is set."""
    if train_data is None:
        train_data = _load_split(cfg.data, "train")
    if test_data is None:
        test_data = _load_split(cfg.data, "test")
    kind = TensorData if cfg.data.workers is None else LoaderData
    return kind(cfg, world, rank, train_data, test_data)
