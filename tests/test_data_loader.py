"""Training through a DataLoader (``data.workers``): samples read lazily from a memory-mapped array,
augmented in worker processes; the result depends neither on the number of workers nor on an
interruption (exact resume)."""

import json
import os
import signal

import numpy as np
import pytest
import torch

from hardneg.data.augment import Augment
from hardneg.data.digits import load_digits_split
from hardneg.data.loader import EpochBatches, MemmapImages, TwoViews, loader, sample_seed
from hardneg.train.config import validate_config
from hardneg.train.trainer import Trainer
from tests.test_train_trainer import literal_nt_xent

BASE = {
    "data": {"name": "digits", "train_limit": 256, "test_limit": 120},
    "model": {"encoder": "mlp", "hidden": 32, "depth": 1, "head_hidden": 32, "proj_dim": 16},
    "train": {"epochs": 2, "batch_size": 64, "checkpoint_every": 5, "progress": False},
    "eval": {"knn_k": 20, "linear_probe": False},
}


def test_epoch_batches_split_each_global_batch_over_processes():
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    whole = list(EpochBatches(perm, 8, start=0))
    assert whole == [perm[:8].tolist(), perm[8:16].tolist()]  # the partial batch of 4 is dropped
    halves = [list(EpochBatches(perm, 8, start=1, rank=r, world=2)) for r in range(2)]
    assert halves == [[perm[8:12].tolist()], [perm[12:16].tolist()]]
    assert len(EpochBatches(perm, 8, start=1)) == 1


def _memmap_digits(tmp_path, split, n):
    X, y = load_digits_split(split, seed=0)
    np.save(tmp_path / f"{split}_x.npy", (X[:n].numpy() * 255).round().astype(np.uint8))
    np.save(tmp_path / f"{split}_y.npy", y[:n].numpy())
    return MemmapImages(tmp_path / f"{split}_x.npy", tmp_path / f"{split}_y.npy")


def test_two_views_are_the_same_whichever_worker_draws_them(tmp_path):
    ds = _memmap_digits(tmp_path, "train", 40)
    views = TwoViews(ds, Augment((0.5, 1.0), 0.5, 0.05, 0.25), seed=3)
    views.epoch = 2
    got = {}
    for workers in (0, 2):
        batches = loader(views, workers, batch_sampler=EpochBatches(torch.arange(40).flip(0), 8))
        got[workers] = torch.cat([v1 for v1, _, _, _ in batches])
    assert torch.equal(got[0], got[2])
    # sample 39 (the first one read): its own generator, the hand-made draw
    x = torch.from_numpy(np.load(tmp_path / "train_x.npy")[39].astype(np.float32) / 255)  # (1, 8, 8)
    g = torch.Generator().manual_seed(sample_seed(3, 2, 39))
    assert torch.equal(got[0][0], views.augment(x[None], g)[0])
    assert not torch.equal(got[0][0], got[0][1])


def _cfg(workers):
    raw = json.loads(json.dumps(BASE))
    raw["data"]["workers"] = workers
    return validate_config(raw)


def test_memmapped_data_trains_the_same_with_any_number_of_workers_and_resumes_exactly(tmp_path):
    train, test = _memmap_digits(tmp_path, "train", 256), _memmap_digits(tmp_path, "test", 120)
    runs = {}
    for workers in (0, 2):
        d = tmp_path / f"w{workers}"
        runs[workers] = Trainer(_cfg(workers), d, loss_fn=literal_nt_xent, train_data=train, test_data=test).fit()
    assert (tmp_path / "w0" / "metrics.jsonl").read_bytes() == (tmp_path / "w2" / "metrics.jsonl").read_bytes()
    assert runs[0]["n_train"] == 256 and runs[0]["knn_acc"] > 0.3

    calls = [0]

    def interrupting(z1, z2, y):
        calls[0] += 1
        if calls[0] == 6:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C to the training process
        return literal_nt_xent(z1, z2, y)

    d = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved"):
        Trainer(_cfg(2), d, loss_fn=interrupting, train_data=train, test_data=test).fit()
    assert torch.load(d / "checkpoint.pt", weights_only=False)["step"] == 6
    Trainer(_cfg(2), d, loss_fn=literal_nt_xent, train_data=train, test_data=test, resume=True).fit()
    assert (d / "metrics.jsonl").read_bytes() == (tmp_path / "w2" / "metrics.jsonl").read_bytes()


def test_memmap_images_refuse_mismatched_labels(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 8, 8), dtype=np.uint8))
    np.save(tmp_path / "y.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"y\.npy: 3 labels for 4 images"):
        MemmapImages(tmp_path / "x.npy", tmp_path / "y.npy")
