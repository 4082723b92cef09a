"""Property test: random compositions equal the literal reference built from explicit masks,
values and gradients (a short run by default, a long one under ``-m slow``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hardneg.negatives import LabelFilter, SimilarityFilter, Strategy, TopK
from tests.negatives_reference import (
    in_batch_valid,
    ref_topk,
    ref_weighted_infonce_t,
    two_view_pos,
    unit,
)

torch.set_num_threads(1)


def _composition_matches_reference(seed, B, d, k, beta, t, max_score, use_labels, n_neg, tau_plus, detach):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    z2 = z1 + torch.randn(B, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (B,), generator=g)
    filters = ([LabelFilter()] if use_labels else []) + ([SimilarityFilter(max_score=max_score)] if max_score else [])
    k = min(k, 2 * B - 2)
    s = Strategy(filters=filters, weighting=TopK(k), beta=beta, t=t, n_neg=n_neg, tau_plus=tau_plus,
                 detach_weights=detach)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()

    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    S = z @ z.T
    yy = np.concatenate([y.numpy(), y.numpy()])
    valid = in_batch_valid(B)
    if use_labels:  # an anchor the filters empty is skipped
        valid = valid & (yy[:, None] != yy[None, :])
    if max_score:
        valid = valid & (max_score >= S)
    if not valid.any():  # every anchor skipped (the filters removed everything): one clear error
        with pytest.raises(ValueError, match="no anchor has both a positive and a valid negative"):
            s(a1, a2, labels=y)
        return
    got = s(a1, a2, labels=y)
    keep = ref_topk(S, valid, k)
    N = None if n_neg == "count" else 2 * B - 2
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    zr = torch.cat([r1, r2])
    ref = ref_weighted_infonce_t(zr, zr, two_view_pos(B), keep, beta=beta, t=t, N=N, tau_plus=tau_plus,
                                 detach_weights=detach)
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-9)
    for a, b in zip(torch.autograd.grad(got, [a1, a2]), torch.autograd.grad(ref, [r1, r2])):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(3, 7),
    k=st.integers(1, 6),
    beta=st.floats(0.0, 2.0),
    t=st.floats(0.1, 1.0),
    max_score=st.one_of(st.none(), st.floats(0.0, 0.9)),
    use_labels=st.booleans(),
    n_neg=st.sampled_from(["count", "nominal"]),
)
def test_random_composition_matches_reference(seed, B, k, beta, t, max_score, use_labels, n_neg):
    _composition_matches_reference(seed, B, 5, k, beta, t, max_score, use_labels, n_neg, 0.0, False)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(3, 12),
    d=st.integers(3, 16),
    k=st.integers(1, 20),
    beta=st.floats(0.0, 3.0),
    t=st.floats(0.1, 1.0),
    max_score=st.one_of(st.none(), st.floats(0.0, 0.9)),
    use_labels=st.booleans(),
    n_neg=st.sampled_from(["count", "nominal"]),
    tau_plus=st.sampled_from([0.0, 0.05, 0.2, 0.5]),
    detach=st.booleans(),
)
def test_random_composition_matches_reference_long(seed, B, d, k, beta, t, max_score, use_labels, n_neg, tau_plus,
                                                   detach):
    _composition_matches_reference(seed, B, d, k, beta, t, max_score, use_labels, n_neg, tau_plus, detach)
