"""Diagnostics against a literal NumPy computation of π."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardneg.negatives import create_strategy
from hardneg.negatives.diagnostics import negative_diagnostics
from tests.negatives_reference import in_batch_valid, ref_semihard, two_view_pos, unit

torch.set_num_threads(1)


def test_diagnostics_match_literal_pi():
    B, t, beta = 32, 0.5, 1.0
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(B, 8, generator=g, dtype=torch.float64)
    z2 = z1 + 0.6 * torch.randn(B, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (B,), generator=g)
    s = create_strategy("hucl", beta=beta, t=t)
    s(z1, z2, labels=y)
    d = s.last_diagnostics
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    S = z @ z.T
    valid = in_batch_valid(B)
    yy = np.concatenate([y.numpy(), y.numpy()])
    pos = two_view_pos(B)
    ess, fn, ws, gap, hard, hard_fn = [], [], [], [], [], []
    for i in range(2 * B):
        sv = S[i, valid[i]]
        w = np.exp(beta * sv / t)
        pi = w / w.sum()
        ess.append(1 / (pi**2).sum())
        fn.append(pi[(yy[valid[i]] == yy[i])].sum())
        hard_fn.append(yy[valid[i]][np.argmax(sv)] == yy[i])
        ws.append((pi * sv).sum())
        gap.append(S[i, pos[i]] - sv.max())
        hard.append(sv.max())
    allv = S[valid]
    assert d["ess"] == pytest.approx(np.mean(ess), rel=1e-5)
    assert d["fn_weight_share"] == pytest.approx(np.mean(fn), rel=1e-5)
    assert d["hardest_fn_share"] == pytest.approx(np.mean(hard_fn), abs=1e-12)
    assert 0.0 < d["hardest_fn_share"] < 1.0  # the fixture has both kinds of hardest negative
    assert d["sim_weighted_mean"] == pytest.approx(np.mean(ws), rel=1e-5)
    assert d["pos_gap"] == pytest.approx(np.mean(gap), rel=1e-5)
    assert d["hardest_mean"] == pytest.approx(np.mean(hard), rel=1e-5)
    assert d["sim_mean"] == pytest.approx(allv.mean(), rel=1e-6)
    assert d["n_candidates"] == 2 * B - 2
    for p in (5, 25, 50, 75, 95):
        assert d[f"sim_p{p:02d}"] == pytest.approx(np.percentile(allv, p, method="inverted_cdf"), abs=6e-4)
    # the functional API gives the same numbers
    ar = torch.arange(B)
    f = negative_diagnostics(
        torch.cat([z1, z2]),
        torch.cat([z1, z2]),
        t=t,
        beta=beta,
        pos_index=torch.cat([ar + B, ar]),
        self_index=torch.arange(2 * B),
        q_labels=torch.cat([y, y]),
        k_labels=torch.cat([y, y]),
        chunk_size=7,
    )
    for key in ("ess", "fn_weight_share", "hardest_fn_share", "sim_mean", "pos_gap", "sim_p50"):
        assert f[key] == pytest.approx(d[key], rel=1e-5), key
    # uniform π: ESS is exactly the number of candidates
    u = create_strategy("ucl")
    u(z1, z2)
    assert u.last_diagnostics["ess"] == pytest.approx(2 * B - 2, rel=1e-5)
    # label filter: no weight on false negatives
    h = create_strategy("hscl")
    h(z1, z2, labels=y)
    assert h.last_diagnostics["fn_weight_share"] == 0.0


def test_diagnostics_on_a_sample_of_anchors():
    """Large batches: the diagnostics use `diagnostics_anchors` evenly spaced anchors."""
    B, t, beta = 150, 0.5, 1.0
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(B, 8, generator=g, dtype=torch.float64)
    z2 = z1 + 0.6 * torch.randn(B, 8, generator=g, dtype=torch.float64)
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    S = z @ z.T
    valid = in_batch_valid(B)
    sample = np.round(np.linspace(0, 2 * B - 1, 40)).astype(int)
    ess = []
    for i in sample:
        w = np.exp(beta * S[i, valid[i]] / t)
        pi = w / w.sum()
        ess.append(1 / (pi**2).sum())
    for filters in ([], [{"kind": "similarity", "max_score": 0.999}]):  # plain pass and log_weight_fn path
        s = create_strategy("hucl", beta=beta, t=t, diagnostics_anchors=40, filters=filters)
        s(z1, z2)
        assert s.last_diagnostics["ess"] == pytest.approx(np.mean(ess), rel=1e-5)
        assert s.last_diagnostics["sim_mean"] == pytest.approx(S[sample][valid[sample]].mean(), rel=1e-6)
    full = create_strategy("hucl", beta=beta, t=t, diagnostics_anchors=None)
    full(z1, z2)
    assert full.last_diagnostics["sim_mean"] == pytest.approx(S[valid].mean(), rel=1e-6)


def test_fused_diagnostics_match_literal_pi():
    """A fused preset's diagnostics, kept from the kernel's blocks over several buffers of rows
    (every anchor of a 600-row batch), against the literal semi-hard window."""
    B, t, margin = 300, 0.5, 0.2
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(B, 8, generator=g, dtype=torch.float64)
    z2 = z1 + 0.6 * torch.randn(B, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (B,), generator=g)
    s = create_strategy("semihard", margin=margin, t=t, diagnostics_anchors=None)
    blocks, inner = [], s._block_weights
    s._block_weights = lambda *a: blocks.append(a[1]) or inner(*a)  # type: ignore[method-assign]
    s(z1, z2, labels=y)
    assert len(blocks) > 1  # the kernel's blocks ran the weighting (the fused path)
    d = s.last_diagnostics
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    S = z @ z.T
    pos = two_view_pos(B)
    keep = ref_semihard(S, in_batch_valid(B), pos, margin)
    yy = np.concatenate([y.numpy(), y.numpy()])
    n_keep = keep.sum(1)
    hard = np.array([S[i, keep[i]].max() for i in range(2 * B)])
    fn = np.array([(yy[keep[i]] == yy[i]).mean() for i in range(2 * B)])  # π uniform on the window
    hard_fn = np.array([yy[keep[i]][np.argmax(S[i, keep[i]])] == yy[i] for i in range(2 * B)])
    assert d["n_candidates"] == pytest.approx(n_keep.mean(), rel=1e-12)
    assert d["ess"] == pytest.approx(n_keep.mean(), rel=1e-5)
    assert d["sim_mean"] == pytest.approx(S[keep].mean(), rel=1e-6)
    assert d["sim_weighted_mean"] == pytest.approx(np.mean([S[i, keep[i]].mean() for i in range(2 * B)]), rel=1e-5)
    assert d["hardest_mean"] == pytest.approx(hard.mean(), rel=1e-5)
    assert d["pos_gap"] == pytest.approx(np.mean([S[i, pos[i]] for i in range(2 * B)]) - hard.mean(), rel=1e-5)
    assert d["fn_weight_share"] == pytest.approx(fn.mean(), rel=1e-5)
    assert d["hardest_fn_share"] == pytest.approx(hard_fn.mean(), abs=1e-12)
    assert d["skipped_share"] == 0.0
    for p in (5, 50, 95):
        assert d[f"sim_p{p:02d}"] == pytest.approx(np.percentile(S[keep], p, method="inverted_cdf"), abs=6e-4)
    # the plain path's uniform π (no softmax: counts and row sums) on the same batch
    u = create_strategy("ucl", t=t, diagnostics_anchors=None)
    u(z1, z2, labels=y)
    valid = in_batch_valid(B)
    du = u.last_diagnostics
    assert du["ess"] == pytest.approx(2 * B - 2, rel=1e-12)
    assert du["sim_weighted_mean"] == pytest.approx(np.mean([S[i, valid[i]].mean() for i in range(2 * B)]), rel=1e-5)
    assert du["fn_weight_share"] == pytest.approx(np.mean([(yy[valid[i]] == yy[i]).mean() for i in range(2 * B)]),
                                                  rel=1e-5)


def test_fused_diagnostics_blocks_with_more_sampled_rows_than_the_first():
    """Blocks of 218 rows with 164 sampled ones, then 165 (904 of 1,200 anchors): a block with more
    sampled rows than the buffers were first made for gets buffers of its size."""
    B, t, margin, n_sample = 600, 0.5, 0.2, 904
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(B, 8, generator=g, dtype=torch.float64)
    z2 = z1 + 0.6 * torch.randn(B, 8, generator=g, dtype=torch.float64)
    s = create_strategy("semihard", margin=margin, t=t, diagnostics_anchors=n_sample)
    s(z1, z2)
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    S = z @ z.T
    sp = S[np.arange(2 * B), two_view_pos(B)][:, None]
    keep = in_batch_valid(B) & (sp - margin < S) & (sp > S)
    rows = np.round(np.linspace(0, 2 * B - 1, n_sample)).astype(int)
    assert keep[rows].any(1).all(), "fixture: every sampled row has a semi-hard window"
    d = s.last_diagnostics
    assert d["n_candidates"] == pytest.approx(keep[rows].sum(1).mean(), rel=1e-12)
    assert d["sim_mean"] == pytest.approx(S[rows][keep[rows]].mean(), rel=1e-6)
