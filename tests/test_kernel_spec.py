"""`KernelSpec`: the kernel's options as one object, checked when built, accepted as ``spec=``."""

import dataclasses

import pytest
import torch

from hardneg.losses import KernelSpec, weighted_info_nce


def _views(B=12, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * B, d, generator=g, dtype=torch.float64)
    pos = (torch.arange(2 * B) + B) % (2 * B)
    return z, pos


def _literal_hucl(z, pos, t, beta):
    """HCL (Robinson et al.), N = count of negatives, literal float64: π ∝ e^{β s/t} over j ∉ {i, p}."""
    z = z / z.norm(dim=1, keepdim=True)
    S = z @ z.T / t
    n = S.shape[0]
    out = []
    for i in range(n):
        neg = [j for j in range(n) if j not in (i, int(pos[i]))]
        s = S[i, neg]
        w = torch.softmax(beta * s, 0)
        N = len(neg)
        out.append(-torch.log(torch.exp(S[i, pos[i]]) / (torch.exp(S[i, pos[i]]) + N * (w * torch.exp(s)).sum())))
    return torch.stack(out).mean()


def test_spec_call_equals_the_keyword_call_and_the_literal_formula():
    z, pos = _views()
    self_index = torch.arange(z.shape[0])
    za = z.clone().requires_grad_(True)
    zb = z.clone().requires_grad_(True)
    spec = KernelSpec(t=0.5, beta=1.0)
    a = weighted_info_nce(za, za, spec=spec, pos_index=pos, self_index=self_index)
    b = weighted_info_nce(zb, zb, t=0.5, beta=1.0, pos_index=pos, self_index=self_index)
    zc = z.clone().requires_grad_(True)
    ref = _literal_hucl(zc, pos, 0.5, 1.0)
    assert a.item() == pytest.approx(ref.item(), rel=1e-10) and a.item() == b.item()
    a.backward(), b.backward(), ref.backward()
    torch.testing.assert_close(za.grad, zc.grad, rtol=1e-8, atol=1e-12)
    assert torch.equal(za.grad, zb.grad)


def test_spec_is_checked_when_built_and_frozen():
    with pytest.raises(ValueError, match="beta"):
        KernelSpec(t=0.5, beta=-1.0)
    with pytest.raises(ValueError, match="positives"):
        KernelSpec(t=0.5, positives="others")
    with pytest.raises(ValueError, match="log_weight_block"):
        KernelSpec(t=0.5, beta=1.0, log_weight_block=lambda X, rows, sp: (None, None))
    spec = KernelSpec(t=1, n_neg=10)
    assert spec.t == 1.0 and isinstance(spec.t, float) and spec.n_neg == 10.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.beta = 2.0  # type: ignore[misc]


def test_spec_and_option_keywords_are_not_both_given():
    z, pos = _views()
    with pytest.raises(ValueError, match="not both: beta"):
        weighted_info_nce(z, z, spec=KernelSpec(t=0.5), beta=1.0, pos_index=pos)
    with pytest.raises(ValueError, match="not both: t"):
        weighted_info_nce(z, z, spec=KernelSpec(t=0.5), t=0.5, pos_index=pos)
    with pytest.raises(TypeError, match="KernelSpec"):
        weighted_info_nce(z, z, spec={"t": 0.5}, pos_index=pos)
