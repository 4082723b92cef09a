"""Digits loader, torch augmentations and the dataset protocol."""

import pytest
import torch
from sklearn.datasets import load_digits

from hardneg.data.augment import Augment, gaussian_noise, random_erasing, random_resized_crop_flip
from hardneg.data.base import dataset_to_tensors, load_named
from hardneg.data.digits import load_digits_split


def test_digits_split_is_a_stratified_partition():
    Xtr, ytr = load_digits_split("train")
    Xte, yte = load_digits_split("test")
    d = load_digits()
    assert Xtr.shape[1:] == (1, 8, 8) and Xtr.dtype == torch.float32
    assert Xtr.shape[0] + Xte.shape[0] == len(d.target) == 1797
    assert float(Xtr.min()) >= 0 and float(Xtr.max()) <= 1
    # every test image is one of sklearn's images / 16, with its label
    flat = torch.from_numpy(d.images.reshape(1797, -1) / 16.0).float()
    for i in range(5):
        j = int(torch.argmin((flat - Xte[i].reshape(1, -1)).abs().sum(1)))
        assert torch.allclose(flat[j], Xte[i].reshape(-1)) and int(d.target[j]) == int(yte[i])
    # stratified: class proportions equal within one sample
    ctr, cte = torch.bincount(ytr, minlength=10), torch.bincount(yte, minlength=10)
    assert ((ctr.float() / ctr.sum() - cte.float() / cte.sum()).abs() < 0.01).all()
    X2, _ = load_digits_split("train")
    assert torch.equal(Xtr, X2)
    with pytest.raises(ValueError, match="split"):
        load_digits_split("val")


def test_identity_crop_and_flip_are_exact():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    same = random_resized_crop_flip(x, g, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.allclose(same, x, atol=1e-6)
    flipped = random_resized_crop_flip(x, g, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(flipped, torch.flip(x, dims=[-1]), atol=1e-6)


def test_noise_and_erasing_follow_their_definition():
    x = torch.full((3, 1, 10, 10), 0.5)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    y = gaussian_noise(x, g1, std=0.1)
    assert torch.allclose(y, (x + 0.1 * torch.randn(x.shape, generator=g2)).clamp(0, 1))
    e = random_erasing(x, torch.Generator().manual_seed(0), p=1.0, scale=(0.1, 0.2))
    zero = (e == 0).float().flatten(1).mean(1)
    assert ((zero > 0) & (zero <= 0.3)).all()  # one box per image, area near the requested fraction
    assert torch.equal(random_erasing(x, torch.Generator().manual_seed(0), p=0.0), x)


def test_augment_is_deterministic_per_generator_and_in_range():
    x, _ = load_digits_split("train")
    aug = Augment()
    a = aug(x[:16], torch.Generator().manual_seed(3))
    b = aug(x[:16], torch.Generator().manual_seed(3))
    c = aug(x[:16], torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (16, 1, 8, 8) and float(a.min()) >= 0 and float(a.max()) <= 1
    with pytest.raises(ValueError, match="crop_scale"):
        Augment(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        aug(x[0], torch.Generator())


class ListDataset:
    def __init__(self, n):
        self.items = [(torch.full((1, 4, 4), i / n), i % 3) for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_protocol_is_stacked():
    X, y = dataset_to_tensors(ListDataset(7))
    assert X.shape == (7, 1, 4, 4) and y.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert float(X[3, 0, 0, 0]) == pytest.approx(3 / 7)
    with pytest.raises(TypeError, match="train_data"):
        dataset_to_tensors([1, 2, 3], name="train_data")
    with pytest.raises(ValueError, match="labels"):
        dataset_to_tensors((torch.zeros(3, 1, 4, 4), torch.zeros(2)))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_named("cifar", "train")


def test_augmenting_some_rows_equals_those_rows_of_the_whole_batch():
    """What each process of a distributed step does: the same draws, its rows only, bitwise equal."""
    import torch

    from hardneg.data.augment import Augment

    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    aug = Augment((0.5, 1.0), 0.5, 0.05, 0.9)
    g_all, g_rows = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    whole = [aug(x, g_all), aug(x, g_all)]
    part = [aug(x, g_rows, slice(6, 12)), aug(x, g_rows, slice(6, 12))]
    assert all(torch.equal(w[6:], p) for w, p in zip(whole, part, strict=True))
    assert g_all.get_state().equal(g_rows.get_state())  # the generator moved on exactly as far
    assert not torch.equal(whole[0][6:], whole[1][6:])
