"""Cluster-guided and calibrated weighting, and false-negative filters on planted duplicates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardneg.negatives import Calibrated, ClusterGuided, IdFilter, SimilarityFilter, Strategy, create_strategy
from hardneg.negatives.weighting import distance_weighted_log_weights, topk_mask

torch.set_num_threads(1)


def _clustered(B=24, d=8, C=4, seed=0, spread=0.15):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(d)[:C] * 3  # orthogonal cluster centres
    y = torch.arange(B) % C
    x = centers[y] + spread * 3 * torch.randn(B, d, generator=g)
    z1 = x + 0.1 * torch.randn(B, d, generator=g)
    z2 = x + 0.1 * torch.randn(B, d, generator=g)
    return z1, z2, y


def test_topk_mask_functional():
    S = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.3, 0.4, 0.1]])
    valid = torch.tensor([[False, True, True, True], [True, True, True, True]])
    m = topk_mask(S, valid, 2)
    assert m.tolist() == [[False, False, True, True], [False, True, True, False]]


def test_distance_weighted_shape_clip_and_cutoff():
    S = torch.tensor([[0.99, 0.9, 0.7, 0.5, 0.2, -0.5]])
    lw = distance_weighted_log_weights(S, dim=16, cutoff=0.5, nonzero_loss_cutoff=1.4)[0]
    d = torch.sqrt(2 - 2 * S[0])
    assert torch.isneginf(lw[d >= 1.4]).all()  # beyond nonzero_loss_cutoff: removed
    assert lw[0] == lw[1]  # both below the 0.5 clip
    finite = lw[1:5]
    # in ℝ¹⁶ the density q(d) ∝ d¹⁴(1 − d²/4)^6.5 rises steeply up to √2, so 1/q(d) falls with d:
    # the rarely seen near (hard) negatives get the most weight
    assert (finite[1:] < finite[:-1]).all()
    dd = d[1:5].clamp(min=0.5)
    logq = 14 * torch.log(dd) + 6.5 * torch.log(1 - dd * dd / 4)
    torch.testing.assert_close(finite - finite[0], -(logq - logq[0]))


def test_cluster_guided_picks_other_cluster_candidates():
    z1, z2, y = _clustered()
    uni = create_strategy("ucl")
    uni(z1, z2, labels=y)  # labels only feed the diagnostics: fn share = weight on same true cluster
    excl = Strategy(weighting=ClusterGuided(n_clusters=4, every=2, exclude_same=True))
    excl(z1, z2, labels=y)
    pref = Strategy(weighting=ClusterGuided(n_clusters=4, every=2, bonus=2.0, gamma=1.0))
    pref(z1, z2, labels=y)
    u, e, p = (s.last_diagnostics["fn_weight_share"] for s in (uni, excl, pref))
    print(f"\ncluster-guided: weight on same-cluster candidates uniform {u:.3f}, preferred {p:.3f}, excluded {e:.3f}")
    assert e == 0.0  # k-means recovers the 4 planted clusters: only other clusters remain
    assert p < u / 3


def test_cluster_guided_refreshes_every_e_steps_and_second_modality():
    z1, z2, y = _clustered()
    cg = ClusterGuided(n_clusters=4, every=2)
    s = Strategy(weighting=cg)
    for step in range(5):
        s(z1, z2, step=step)
    assert cg.refreshes == 3  # steps 0, 2, 4
    # second modality: a features table indexed by id, whose clusters are the labels y; the
    # embeddings themselves are pure noise, so only the table can tell the clusters apart
    table = F.one_hot(y, 4).float() + 0.01 * torch.randn(len(y), 4, generator=torch.Generator().manual_seed(1))
    noise1, noise2 = torch.randn(24, 8), torch.randn(24, 8)
    s2 = Strategy(weighting=ClusterGuided(n_clusters=4, exclude_same=True, features=table))
    s2(noise1, noise2, labels=y, ids=torch.arange(24))
    assert s2.last_diagnostics["fn_weight_share"] == 0.0
    with pytest.raises(ValueError, match="ids"):
        s2(noise1, noise2, labels=y)


def _planted(n_items=48, n_dup=12, d=16, seed=0):
    """Items with near-duplicate copies under different ids: (x (N×d), group (N,))."""
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(n_items, d, generator=g), dim=1)
    dup = F.normalize(base[:n_dup] + 0.05 * torch.randn(n_dup, d, generator=g), dim=1)
    x = torch.cat([base, dup])
    group = torch.cat([torch.arange(n_items), torch.arange(n_dup)])
    return x, group, g


def _batch(x, group, g, noise=0.08, n_items=48, n_dup=12):
    """8 duplicate pairs (both copies, different ids) and 16 other items; two noisy views."""
    pairs = torch.randperm(n_dup, generator=g)[:8]
    singles = n_dup + torch.randperm(n_items - n_dup, generator=g)[:16]
    idx = torch.cat([pairs, pairs + n_items, singles])
    z1 = x[idx] + noise * torch.randn(len(idx), x.shape[1], generator=g)
    z2 = x[idx] + noise * torch.randn(len(idx), x.shape[1], generator=g)
    return z1, z2, group[idx], idx


def test_calibrated_and_filters_cut_the_weight_on_planted_false_negatives():
    x, group, g = _planted()
    cal = Strategy(weighting=Calibrated(hidden=32, lr=1e-2, train_steps=2, neg_per_anchor=4, seed=0))
    cal.train()
    for _ in range(60):  # train the pair MLP jointly on the known positives
        z1, z2, y, ids = _batch(x, group, g)
        cal(z1, z2, labels=y, ids=ids)
    cal.eval()
    shares = {"uniform": [], "calibrated": [], "similarity filter": [], "id/duplicate filter": []}
    groups_of_ids = group  # id -> duplicate group
    strategies = {
        "uniform": create_strategy("ucl"),
        "calibrated": cal,
        "similarity filter": Strategy(filters=[SimilarityFilter(relative_margin=0.05)]),
        "id/duplicate filter": Strategy(filters=[IdFilter(groups=groups_of_ids)]),
    }
    g_eval = torch.Generator().manual_seed(123)
    for _ in range(10):
        z1, z2, y, ids = _batch(x, group, g_eval)
        for name, s in strategies.items():
            s(z1, z2, labels=y, ids=ids)  # labels = duplicate groups: they only feed the diagnostics
            shares[name].append(s.last_diagnostics["fn_weight_share"])
    m = {k: float(np.mean(v)) for k, v in shares.items()}
    print("\nweight on planted false negatives (duplicates under other ids):")
    for k, v in m.items():
        factor = m["uniform"] / v if v > 0 else float("inf")
        print(f"  {k:22s} {v:.4f}   cut by {factor:.1f}x")
    # uniform π: each of the 32 duplicate anchors has 2 false negatives among 62 candidates
    assert m["uniform"] == pytest.approx(0.5 * 2 / 62, rel=1e-4)
    assert m["calibrated"] < m["uniform"] / 3
    assert m["similarity filter"] < m["uniform"] / 3
    assert m["id/duplicate filter"] == 0.0


def test_pair_calibrator_block_equals_pairwise():
    """The factorised (c × m) evaluation equals the MLP applied to each pair's features."""
    from hardneg.negatives.weighting import PairCalibrator

    torch.manual_seed(0)
    mlp = PairCalibrator(dim=6, hidden=5, rank=3)
    q, k = F.normalize(torch.randn(4, 6), dim=1), F.normalize(torch.randn(7, 6), dim=1)
    block = mlp.block_logits(q, k, max_elems=40)  # several row blocks
    pairs = mlp.pair_logits(q.repeat_interleave(7, 0), k.repeat(4, 1)).reshape(4, 7)
    torch.testing.assert_close(block, pairs)
    # and pair_logits is the literal MLP on [q, k, Pq ⊙ Pk, s]
    i, j = 2, 5
    s = q[i] @ k[j]
    h = torch.relu(mlp.A(q[i]) + mlp.B(k[j]) + mlp.C @ (mlp.P(q[i]) * mlp.P(k[j])) + s * mlp.w)
    torch.testing.assert_close(block[i, j], mlp.out(h)[0])
