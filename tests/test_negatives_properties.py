"""Property test: random compositions equal the literal reference built from explicit masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hardneg.negatives import LabelFilter, SimilarityFilter, Strategy, TopK
from tests.negatives_reference import in_batch_valid, ref_weighted_infonce, two_view_pos, unit

torch.set_num_threads(1)


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
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, 5, generator=g, dtype=torch.float64)
    z2 = z1 + torch.randn(B, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (B,), generator=g)
    filters = ([LabelFilter()] if use_labels else []) + ([SimilarityFilter(max_score=max_score)] if max_score else [])
    k = min(k, 2 * B - 2)
    s = Strategy(filters=filters, weighting=TopK(k), beta=beta, t=t, n_neg=n_neg)

    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    S = z @ z.T
    yy = np.concatenate([y.numpy(), y.numpy()])
    valid = in_batch_valid(B)
    if use_labels:
        valid &= yy[:, None] != yy[None, :]
    if max_score:
        valid &= max_score >= S
    if not valid.any():  # every anchor skipped (the filters removed everything): one clear error
        with pytest.raises(ValueError, match="no anchor has both a positive and a valid negative"):
            s(z1, z2, labels=y)
        return
    got = s(z1, z2, labels=y).item()
    keep = np.zeros_like(valid)
    for i in range(2 * B):
        cand = [j for j in range(2 * B) if valid[i, j]]
        keep[i, sorted(cand, key=lambda j: -S[i, j])[:k]] = True
    N = None if n_neg == "count" else 2 * B - 2
    ref = ref_weighted_infonce(z, z, two_view_pos(B), keep, beta=beta, t=t, N=N)
    assert got == pytest.approx(ref, rel=1e-9)
