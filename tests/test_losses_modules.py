"""The loss modules: typed options checked when built, labels refused where a loss cannot use them,
and the triplet family's ``reduction`` against the literal loop reference."""

import pytest
import torch
import torch.nn.functional as F

import hardneg.losses as L
from tests import reference_losses as R


def make(B, d, seed, n_classes=3):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.arange(B) % n_classes)[torch.randperm(B, generator=g)]
    return z1, z2, y


@pytest.mark.parametrize("cls", [L.UCL, L.SCL, L.SupCon, L.HUCL, L.DCL, L.HSCL, L.Decoupled, L.Triplet, L.Margin])
def test_loss_modules_refuse_an_unknown_option_when_built(cls):
    with pytest.raises(TypeError, match="betaa"):
        cls(betaa=2)


@pytest.mark.parametrize(
    "cls,kw,words",
    [
        (L.HUCL, {"temperature": -1}, "temperature must be a finite number > 0, got -1"),
        (L.HUCL, {"t": float("nan")}, "temperature must be a finite number > 0, got nan"),
        (L.HUCL, {"beta": -0.5}, "beta must be a finite number >= 0, got -0.5"),
        (L.DCL, {"tau_plus": 1.0}, r"tau_plus must lie in \[0, 1\), got 1.0"),
        (L.UCL, {"reduction": "avg"}, "reduction must be one of .*, got 'avg'"),
        (L.SupCon, {"chunk_size": 0}, "chunk_size must be a positive int or None, got 0"),
        (L.HSCL, {"positives": "pairs"}, "positives must be one of .*, got 'pairs'"),
        (L.Triplet, {"margin": -0.1}, "margin must be a finite number >= 0, got -0.1"),
        (L.Triplet, {"tilt_scale": 0.0}, "tilt_scale must be a finite number > 0, got 0.0"),
        (L.Margin, {"boundary": -1.0}, "boundary must be a finite number >= 0, got -1.0"),
        (L.Margin, {"alpha": "0.2"}, "alpha must be a finite number >= 0, got '0.2'"),
    ],
)
def test_loss_modules_refuse_a_bad_value_when_built_naming_option_and_value(cls, kw, words):
    with pytest.raises(ValueError, match=words):
        cls(**kw)


@pytest.mark.parametrize("cls", [L.UCL, L.HUCL, L.DCL, L.Decoupled])
def test_unsupervised_loss_modules_refuse_labels(cls):
    z1, z2, y = make(6, 4, 0)
    with pytest.raises(ValueError, match=f"{cls.__name__} does not use labels"):
        cls()(z1, z2, y)


def test_loss_modules_give_the_literal_formulas():
    """Each module with its options equals the loop reference of its paper formula."""
    z1, z2, y = make(4, 4, 1)
    cases = [
        (L.UCL(t=0.3)(z1, z2), R.ref_infonce(z1, z2, t=0.3, nominal_n=False)),
        (L.HUCL(beta=1.5, tau_plus=0.1, temperature=0.5)(z1, z2), R.ref_infonce(z1, z2, t=0.5, beta=1.5, tau_plus=0.1)),
        (L.DCL(tau_plus=0.1)(z1, z2), R.ref_infonce(z1, z2, t=0.5, tau_plus=0.1)),
        (L.SCL(t=0.4)(z1, z2, y), R.ref_infonce(z1, z2, t=0.4, labels=y)),
        (L.HSCL(beta=1.5)(z1, z2, y), R.ref_hscl_all(z1, z2, y, t=0.5, beta=1.5)),
        (L.SupCon(t=0.2)(z1, z2, y), R.ref_supcon(z1, z2, y, t=0.2)),
        (L.Decoupled()(z1, z2), R.ref_decoupled(z1, z2, t=0.1)),
        (L.Triplet(margin=0.3, beta=2.0)(z1, z2, y),
         R.ref_triplet_family(z1, z2, y, lambda dp, dn: F.relu(0.3 + dp - dn), beta=2.0)),
    ]
    for ours, ref in cases:
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labelled", [False, True])
def test_triplet_and_margin_reduction_equal_the_literal_reference(reduction, labelled):
    z1, z2, y = make(5, 4, 2)
    y = y if labelled else None
    trip = lambda dp, dn: F.relu(0.3 + dp - dn)  # noqa: E731
    marg = lambda dp, dn: F.relu(0.2 + dp - 1.2) + F.relu(0.2 + 1.2 - dn)  # noqa: E731
    for ours, ref in (
        (L.triplet(z1, z2, y, margin=0.3, beta=2.0, reduction=reduction, chunk_size=3),
         R.ref_triplet_family(z1, z2, y, trip, beta=2.0, reduction=reduction)),
        (L.Margin(beta=1.0, reduction=reduction)(z1, z2, y),
         R.ref_triplet_family(z1, z2, y, marg, beta=1.0, reduction=reduction)),
    ):
        assert ours.shape == (() if reduction != "none" else (10,))
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
        g_ours = torch.autograd.grad(ours.sum(), [z1, z2])
        g_ref = torch.autograd.grad(ref.sum(), [z1, z2])
        for a, b in zip(g_ours, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)



def test_margin_module_learns_a_boundary_given_as_a_parameter():
    """d/db of the margin loss at β = 0 is (#[α + b − d_ij > 0] − #[α + d_ip − b > 0]) / #triplets."""
    z1, z2, y = make(6, 4, 3)
    b = torch.nn.Parameter(torch.tensor(1.2, dtype=torch.float64))
    m = L.Margin(boundary=b)
    assert [p is b for p in m.parameters()] == [True]
    loss = m(z1, z2, y)
    (g,) = torch.autograd.grad(loss, [b])
    z = F.normalize(torch.cat([z1, z2]), dim=1).detach()
    yy = torch.cat([y, y])
    d = torch.sqrt(torch.clamp(2 - 2 * z @ z.T, min=1e-12))
    num, count = 0, 0
    for i in range(12):
        for p in range(12):
            if p == i or yy[p] != yy[i]:
                continue
            for j in range(12):
                if yy[j] != yy[i]:
                    num += int(0.2 + 1.2 - d[i, j] > 0) - int(0.2 + d[i, p] - 1.2 > 0)
                    count += 1
    assert float(g) == pytest.approx(num / count, rel=1e-12)
    with pytest.raises(ValueError, match="boundary must be a finite number >= 0, got -1.0"):
        L.Margin(boundary=torch.nn.Parameter(torch.tensor(-1.0)))
