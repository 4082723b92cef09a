"""Second-order gradients: exact where the loss is plain autograd, a clear error where the kernel is used.

The InfoNCE kernel computes its gradients in the forward pass (under ``no_grad``) and only scales
them in backward, so a graph through those gradients would miss every second-order term; it must
refuse ``create_graph=True`` rather than return a wrong Hessian. ``triplet``/``margin`` are torch
autograd with checkpointing, so their double backward is checked numerically and against the
literal float64 reference.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import hardneg.losses as L
from hardneg.negatives import Strategy, TopK
from tests import reference_losses as R


def _views(B=4, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1])[:B]
    return z1, z2, y


KERNEL_LOSSES = {
    "ucl": lambda z1, z2, y: L.ucl(z1, z2),
    "hucl_tilt_debiased": lambda z1, z2, y: L.hucl(z1, z2, beta=1.0, tau_plus=0.1),
    "supcon": lambda z1, z2, y: L.supcon(z1, z2, y),
    "hscl_all": lambda z1, z2, y: L.hscl(z1, z2, y, beta=1.0),
    "decoupled": lambda z1, z2, y: L.decoupled(z1, z2),
    "per_anchor_none": lambda z1, z2, y: L.hucl(z1, z2, beta=1.0, reduction="none").sum(),
    "kernel_log_weight_fn": lambda z1, z2, y: L.weighted_info_nce(
        torch.cat([z1, z2]), torch.cat([z1, z2]), t=0.5, pos_index=torch.tensor([4, 5, 6, 7, 0, 1, 2, 3]),
        self_index=torch.arange(8), log_weight_fn=lambda S, rows: 0.5 * S,
    ),
    "strategy_topk": lambda z1, z2, y: Strategy(weighting=TopK(3), beta=0.5)(z1, z2),
}


@pytest.mark.parametrize("name", sorted(KERNEL_LOSSES))
def test_kernel_refuses_double_backward_with_a_clear_error(name):
    z1, z2, y = _views()
    loss = KERNEL_LOSSES[name](z1, z2, y)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(loss, [z1, z2], create_graph=True)


@pytest.mark.parametrize("name", ["ucl", "hucl_tilt_debiased", "per_anchor_none"])
def test_kernel_first_order_is_exact_and_gradgradcheck_raises_not_mismatches(name):
    z1, z2, y = _views()
    fn = lambda a, b: KERNEL_LOSSES[name](a, b, y)  # noqa: E731
    assert gradcheck(fn, (z1, z2))
    with pytest.raises(RuntimeError, match="does not support double backward"):
        gradgradcheck(fn, (z1, z2))


def test_kernel_backward_inside_enable_grad_is_still_first_order():
    # grad mode around .backward() is not create_graph: the guard must not fire there
    z1, z2, _ = _views()
    with torch.enable_grad():
        L.hucl(z1, z2, beta=1.0).backward()
    ref = torch.autograd.grad(R.ref_infonce(z1, z2, t=0.5, beta=1.0), [z1])[0]
    torch.testing.assert_close(z1.grad, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_kernel_inside_activation_checkpointing_backpropagates(use_reentrant):
    # checkpointing re-runs the forward under grad mode during backward: that is not create_graph
    from torch.utils.checkpoint import checkpoint

    z1, z2, _ = _views()
    lin = torch.nn.Linear(3, 3).double()
    fn = lambda a, b: L.hucl(lin(a), lin(b), beta=1.0)  # noqa: E731
    ref = torch.autograd.grad(fn(z1, z2), [z1])[0]
    checkpoint(fn, z1, z2, use_reentrant=use_reentrant).backward()
    torch.testing.assert_close(z1.grad, ref, rtol=1e-10, atol=1e-12)


TRIPLET_CASES = {
    "triplet_labels": (lambda z1, z2, y: L.triplet(z1, z2, y, margin=0.3, chunk_size=3), 0.0),
    "triplet_views_tilted": (lambda z1, z2, y: L.triplet(z1, z2, None, margin=0.3, beta=1.5, chunk_size=3), 1.5),
    "margin_labels_tilted": (lambda z1, z2, y: L.margin(z1, z2, y, beta=1.0, chunk_size=3), 1.0),
}


@pytest.mark.parametrize("name", sorted(TRIPLET_CASES))
def test_triplet_family_double_backward_is_correct(name):
    fn, beta = TRIPLET_CASES[name]
    z1, z2, y = _views(seed=1)
    assert gradgradcheck(lambda a, b: fn(a, b, y), (z1, z2))
    # Hessian-vector product against the literal float64 reference's
    labels = None if name.startswith("triplet_views") else y
    if name.startswith("triplet"):
        h = lambda dp, dn: F.relu(0.3 + dp - dn)  # noqa: E731
    else:
        h = lambda dp, dn: F.relu(0.2 + dp - 1.2) + F.relu(0.2 + 1.2 - dn)  # noqa: E731
    v = torch.randn(z1.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    hv = []
    for loss in (fn(z1, z2, y), R.ref_triplet_family(z1, z2, labels, h, beta=beta)):
        (g1,) = torch.autograd.grad(loss, [z1], create_graph=True)
        hv.append(torch.autograd.grad((g1 * v).sum(), [z1, z2]))
    for a, b in zip(*hv):
        assert b.abs().max() > 1e-3  # a non-trivial second derivative
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
