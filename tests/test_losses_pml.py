"""Where pytorch-metric-learning has the same loss, values (and gradients) match it."""

import pytest
import torch
from pytorch_metric_learning import losses as pml
from pytorch_metric_learning.reducers import MeanReducer, SumReducer

import hardneg.losses as L


def make(B, d, seed, classes=4):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, classes, (B,), generator=g)
    return z1, z2, y


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_ucl_equals_pml_ntxent(t):
    z1, z2, _ = make(16, 8, 0)
    B = 16
    ids = torch.arange(B)
    ref = pml.NTXentLoss(temperature=t)(torch.cat([z1, z2]), torch.cat([ids, ids]))
    ours = L.ucl(z1, z2, t=t)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, [z1, z2]), torch.autograd.grad(ref, [z1, z2])):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_supcon_equals_pml(t):
    z1, z2, y = make(20, 8, 1)
    ref = pml.SupConLoss(temperature=t)(torch.cat([z1, z2]), torch.cat([y, y]))
    ours = L.supcon(z1, z2, y, t=t)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, [z1, z2]), torch.autograd.grad(ref, [z1, z2])):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("margin", [0.05, 0.4])
def test_triplet_equals_pml_mean_reducer(margin):
    z1, z2, y = make(12, 6, 2, classes=3)
    ref = pml.TripletMarginLoss(margin=margin, reducer=MeanReducer())(torch.cat([z1, z2]), torch.cat([y, y]))
    ours = L.triplet(z1, z2, y, margin=margin)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-10)


def test_triplet_sum_equals_pml_sum_reducer():
    z1, z2, y = make(12, 6, 4, classes=3)
    ref = pml.TripletMarginLoss(margin=0.2, reducer=SumReducer())(torch.cat([z1, z2]), torch.cat([y, y]))
    torch.testing.assert_close(L.triplet(z1, z2, y, margin=0.2, reduction="sum"), ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("alpha,b", [(0.2, 1.2), (0.1, 0.9)])
def test_margin_boundary_is_pml_margin_loss_beta(alpha, b):
    """PML's ``MarginLoss(margin=α, beta=b)`` is our ``margin(alpha=α, boundary=b)``: PML's ``beta``
    is the boundary; ours is the tilt, and β = 0 keeps the plain mean over triplets."""
    z1, z2, y = make(12, 6, 5, classes=3)
    ref = pml.MarginLoss(margin=alpha, beta=b, reducer=MeanReducer())(torch.cat([z1, z2]), torch.cat([y, y]))
    ours = L.margin(z1, z2, y, alpha=alpha, boundary=b)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-10)
    for a, g in zip(torch.autograd.grad(ours, [z1, z2]), torch.autograd.grad(ref, [z1, z2])):
        torch.testing.assert_close(a, g, rtol=1e-6, atol=1e-9)


def test_ntxent_with_labels_equals_hscl_all_pairs_beta0_count_n():
    """PML NTXentLoss with class labels = every same-label pair, other-label negatives, plain sum."""
    z1, z2, y = make(10, 5, 3, classes=3)
    z = torch.cat([z1, z2])
    yy = torch.cat([y, y])
    ref = pml.NTXentLoss(temperature=0.3)(z, yy)
    n = len(z)
    ours = L.weighted_info_nce(
        z, z, t=0.3, q_labels=yy, k_labels=yy, self_index=torch.arange(n), positives="labels",
        negatives="other_labels", positive_reduce="pairs",
    )
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_supcon_one_class_skips_every_anchor_as_pml():
    """An anchor whose every candidate shares its label has no negative and is skipped: in a one-class
    batch no anchor contributes — PML returns 0 with zero gradient, hardneg (every anchor skipped)
    raises one line saying why. One sample of another class gives every anchor a negative: PML's
    value and gradient again."""
    from hardneg.losses.candidates import NoValidAnchorError
    from hardneg.negatives import create_strategy

    z1, z2, _ = make(8, 5, 3)
    one = torch.zeros(8, dtype=torch.long)
    ref = pml.SupConLoss(temperature=0.1)(torch.cat([z1, z2]), torch.cat([one, one]))
    assert float(ref) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in torch.autograd.grad(ref, [z1, z2], allow_unused=True))
    for call in (lambda: L.supcon(z1, z2, one), lambda: L.supcon(z1, None, one),
                 lambda: create_strategy("supcon")(z1, z2, labels=one)):
        with pytest.raises(NoValidAnchorError, match="candidate of another label") as e:
            call()
        assert "\n" not in str(e.value)
    almost = one.clone()
    almost[0] = 1
    ref = pml.SupConLoss(temperature=0.1)(torch.cat([z1, z2]), torch.cat([almost, almost]))
    ours = L.supcon(z1, z2, almost, t=0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, [z1, z2]), torch.autograd.grad(ref, [z1, z2])):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
