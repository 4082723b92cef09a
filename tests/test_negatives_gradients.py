"""Values *and gradients* of every strategy component against the literal float64 reference.

For each component the reference builds, from detached similarities, which candidates count (top-k,
semi-hard window, filters, queue identity rule) and their extra log-weights (distance-weighted,
constant tilt, a raw ``log_weight_fn``) — constants, as the strategy treats them — and evaluates the
weighted InfoNCE with one Python loop per anchor and candidate; autograd differentiates it. The β tilt
stays in the graph unless ``detach_weights``. Equal to 1e-6 relative in float64, values and gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardneg import losses as L
from hardneg.negatives import (
    DistanceWeighted,
    GuideFilter,
    IdFilter,
    LabelFilter,
    MemoryQueue,
    SemiHard,
    SimilarityFilter,
    Strategy,
    Tilt,
    TopK,
)
from tests.negatives_reference import (
    in_batch_valid,
    ref_distance_weighted,
    ref_semihard,
    ref_similarity_drop,
    ref_topk,
    ref_weighted_infonce_t,
    two_view_pos,
    unit,
)

torch.set_num_threads(1)


def _views(B=6, d=6, seed=0, classes=3, noise=0.8):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    z2 = z1 + noise * torch.randn(B, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (B,), generator=g)
    return z1, z2, y


def _sims(z1, z2, extra=None):
    """Detached cosine similarities of the 2B anchors [z1; z2] to the candidates [z1; z2; extra]."""
    z = unit(np.concatenate([z1.detach().numpy(), z2.detach().numpy()]))
    k = z if extra is None else np.concatenate([z, extra])
    return z @ k.T


def _check(ours_fn, ref_fn, z1, z2):
    """ours_fn(a1, a2) and ref_fn(r1, r2) on fresh leaves: equal values and gradients wrt z1, z2."""
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ours, ref = ours_fn(a1, a2), ref_fn(r1, r2)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-10)
    for a, b in zip(torch.autograd.grad(ours, [a1, a2]), torch.autograd.grad(ref, [r1, r2])):
        assert b.abs().max() > 1e-3  # a gradient that actually depends on the inputs
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def _ref_batch(valid, **kw):
    """Reference on the in-batch candidates [z1; z2] with the other view as positive."""
    B = valid.shape[0] // 2

    def ref(r1, r2):
        z = torch.cat([r1, r2])
        return ref_weighted_infonce_t(z, z, two_view_pos(B), valid, **kw)

    return ref


# --------------------------------------------------------------------------------------------
# weightings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "beta,detach,n_neg", [(0.0, False, "count"), (1.0, False, "count"), (1.0, True, "count"), (0.5, False, "nominal")]
)
def test_topk_value_and_gradient(beta, detach, n_neg):
    B, k = 6, 3
    z1, z2, _ = _views(B, seed=1)
    valid = ref_topk(_sims(z1, z2), in_batch_valid(B), k)
    s = Strategy(weighting=TopK(k), beta=beta, detach_weights=detach, n_neg=n_neg, t=0.5)
    N = None if n_neg == "count" else 2 * B - 2
    _check(lambda a, b: s(a, b), _ref_batch(valid, beta=beta, detach_weights=detach, t=0.5, N=N), z1, z2)


def test_semihard_value_and_gradient_including_fallback_rows():
    B, m = 10, 0.4
    z1, z2, _ = _views(B, seed=2)
    S = _sims(z1, z2)
    pos = two_view_pos(B)
    base = in_batch_valid(B)
    window = np.array([[base[i, j] and S[i, pos[i]] - m < S[i, j] < S[i, pos[i]] for j in range(2 * B)]
                       for i in range(2 * B)])
    assert 0 < (~window.any(1)).sum() < 2 * B, "fixture: rows with and without a semi-hard window"
    valid = ref_semihard(S, base, pos, m)
    s = Strategy(weighting=SemiHard(m), beta=0.7, t=0.5)
    _check(lambda a, b: s(a, b), _ref_batch(valid, beta=0.7, t=0.5), z1, z2)


def test_distance_weighted_value_and_gradient():
    B, d = 6, 6
    z1, z2, _ = _views(B, d=d, seed=3)
    logw = ref_distance_weighted(_sims(z1, z2), d, 0.5, 1.4)
    base = in_batch_valid(B)
    kept = base & np.isfinite(logw)
    assert kept.any(1).all() and (kept.sum(1) < base.sum(1)).any(), "fixture: the 1.4 cutoff removes some"
    s = Strategy(weighting=DistanceWeighted(0.5, 1.4), t=0.5)
    _check(lambda a, b: s(a, b), _ref_batch(base, logw=logw, t=0.5), z1, z2)


def test_distance_weighted_without_a_far_cutoff_value_and_gradient():
    """nonzero_loss_cutoff = 2 keeps every candidate (d ≤ 2 always): the fused block's clip of d²
    at nonzero_loss_cutoff² changes no kept candidate, and 1 − d²/4 keeps its floor."""
    B, d = 6, 6
    z1, z2, _ = _views(B, d=d, seed=3)
    logw = ref_distance_weighted(_sims(z1, z2), d, 0.5, 2.0)
    base = in_batch_valid(B)
    assert np.isfinite(logw[base]).all(), "fixture: nothing is far"
    s = Strategy(weighting=DistanceWeighted(0.5, 2.0), t=0.5)
    _check(lambda a, b: s(a, b), _ref_batch(base, logw=logw, t=0.5), z1, z2)


def test_constant_tilt_plus_graph_tilt_value_and_gradient():
    # Tilt's β₁ s/t is a constant log-weight; the strategy's own β₂ stays in the graph
    B, t = 6, 0.4
    z1, z2, _ = _views(B, seed=4)
    logw = 1.5 * _sims(z1, z2) / t
    s = Strategy(weighting=Tilt(1.5), beta=0.5, t=t)
    _check(lambda a, b: s(a, b), _ref_batch(in_batch_valid(B), logw=logw, beta=0.5, t=t), z1, z2)


# --------------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_similarity", [False, True])
def test_label_filter_value_and_gradient(with_similarity):
    # alone it runs through the kernel's own label mask; with another filter through log_weight_fn
    B = 8
    z1, z2, y = _views(B, seed=5)
    yy = np.concatenate([y.numpy(), y.numpy()])
    S = _sims(z1, z2)
    valid = in_batch_valid(B) & (yy[:, None] != yy[None, :])
    filters = [LabelFilter()]
    if with_similarity:
        filters.append(SimilarityFilter(max_score=0.3))
        valid = valid & ~ref_similarity_drop(S, two_view_pos(B), max_score=0.3)
    s = Strategy(filters=filters, beta=1.0, t=0.5)
    _check(lambda a, b: s(a, b, labels=y), _ref_batch(valid, beta=1.0, t=0.5), z1, z2)


def test_id_filter_with_groups_value_and_gradient():
    B = 6
    z1, z2, _ = _views(B, seed=6)
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    groups = torch.tensor([0, 1, 0, 2, 1, 3])  # ids 0 and 2 are copies; so are 1 and 4
    gg = np.concatenate([groups.numpy(), groups.numpy()])
    valid = in_batch_valid(B) & (gg[:, None] != gg[None, :])
    s = Strategy(filters=[IdFilter(groups)], beta=0.8, t=0.5)
    _check(lambda a, b: s(a, b, ids=ids), _ref_batch(valid, beta=0.8, t=0.5), z1, z2)


@pytest.mark.parametrize(
    "opts", [{"max_score": 0.3}, {"min_score": -0.2}, {"absolute_margin": 0.1}, {"relative_margin": 0.05}]
)
def test_similarity_filter_value_and_gradient(opts):
    B = 8
    z1, z2, _ = _views(B, seed=7)
    base = in_batch_valid(B)
    drop = ref_similarity_drop(_sims(z1, z2), two_view_pos(B), **opts)
    assert (base & drop).any(), "fixture: the rule drops something"
    valid = base & ~drop
    s = Strategy(filters=[SimilarityFilter(**opts)], beta=0.5, t=0.5)
    _check(lambda a, b: s(a, b), _ref_batch(valid, beta=0.5, t=0.5), z1, z2)


def test_guide_filter_value_and_gradient():
    B = 6
    z1, z2, _ = _views(B, seed=8)
    g = torch.Generator().manual_seed(3)
    T1 = torch.nn.functional.normalize(torch.randn(10, 4, generator=g, dtype=torch.float64), dim=1)
    T2 = torch.nn.functional.normalize(T1 + 0.9 * torch.randn(10, 4, generator=g, dtype=torch.float64), dim=1)
    ids = torch.tensor([9, 3, 4, 0, 7, 1])
    G = torch.cat([T1[ids], T2[ids]]).numpy()  # guide rows: anchors' texts from T1, positives' from T2
    GS = G @ G.T
    pos = two_view_pos(B)
    base = in_batch_valid(B)
    valid = np.array([[base[i, j] and not GS[i, j] > GS[i, pos[i]] for j in range(2 * B)] for i in range(2 * B)])
    assert (valid.sum(1) < base.sum(1)).any() and valid.any(1).all(), "fixture: the guide drops some, not all"
    s = Strategy(filters=[GuideFilter((T1, T2))], t=0.5)
    _check(lambda a, b: s(a, b, ids=ids), _ref_batch(valid, t=0.5), z1, z2)


# --------------------------------------------------------------------------------------------
# queue source
# --------------------------------------------------------------------------------------------


def test_memory_queue_value_and_gradient_over_steps():
    """Queued keys are constants; a queued key of the anchor's own id is excluded (identity rule)."""
    B, d, size = 4, 5, 6
    s = Strategy(source=MemoryQueue(size), filters=[LabelFilter()], beta=1.0, t=0.5)
    g = torch.Generator().manual_seed(9)
    fifo: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (unit keys, labels, ids) per step
    id_hits = 0
    for step, ids in enumerate([[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 0, 6]]):
        z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
        z2 = z1 + 0.6 * torch.randn(B, d, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (B,), generator=g)
        ids_t = torch.tensor(ids)
        qk = np.concatenate([f[0] for f in fifo])[-size:] if fifo else np.zeros((0, d))
        ql = np.concatenate([f[1] for f in fifo])[-size:] if fifo else np.zeros(0, int)
        qi = np.concatenate([f[2] for f in fifo])[-size:] if fifo else np.zeros(0, int)
        n, m = 2 * B, 2 * B + len(qk)
        yy, ii = np.concatenate([y.numpy(), y.numpy()]), np.concatenate([ids, ids])
        base = np.zeros((n, m), bool)
        base[:, : 2 * B] = in_batch_valid(B)
        base[:, 2 * B :] = ii[:, None] != qi[None, :]  # not an earlier view of the same sample
        id_hits += int((~base[:, 2 * B :]).sum())
        ky = np.concatenate([yy, ql])
        valid = base & (yy[:, None] != ky[None, :])
        keys = torch.as_tensor(qk)

        def ref(r1, r2, valid=valid, keys=keys):
            z = torch.cat([r1, r2])
            return ref_weighted_infonce_t(z, torch.cat([z, keys]), two_view_pos(B), valid, beta=1.0, t=0.5)

        _check(lambda a, b, y=y, ids_t=ids_t, step=step: s(a, b, labels=y, ids=ids_t, step=step), ref, z1, z2)
        fifo.append((unit(z2.numpy()), y.numpy(), np.array(ids)))
    assert id_hits > 0, "fixture: some queued key shares an anchor's id"
    assert len(s.sources[0]) == size


# --------------------------------------------------------------------------------------------
# the kernel's log_weight_fn and the debiasing clamp
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "beta,tau_plus,include_positive", [(0.7, 0.0, True), (0.0, 0.2, True), (0.7, 0.0, False), (1.0, 0.1, True)]
)
def test_kernel_log_weight_fn_value_and_gradient(beta, tau_plus, include_positive):
    """A raw ``log_weight_fn`` (constant extra log-weights, −∞ removes) given per chunk of anchors."""
    B = 6
    n = 2 * B
    z1, z2, _ = _views(B, seed=10)
    g = torch.Generator().manual_seed(11)
    table = torch.randn(n, n, generator=g, dtype=torch.float64)
    table[torch.rand(n, n, generator=g) < 0.25] = float("-inf")
    pos = two_view_pos(B)
    for i in range(n):  # keep at least two candidates per anchor
        table[i, [(i + 1) % n, (i + 2) % n]] = torch.tensor([0.3, -0.2], dtype=torch.float64)
        table[i, [j for j in ((i + 1) % n, (i + 2) % n) if j == pos[i]]] = 0.3

    def fn(S, rows):  # depends on the anchors of the chunk (rows) and on their similarities
        return table[rows] + 0.5 * S * S

    logw = table.numpy() + 0.5 * _sims(z1, z2) ** 2
    kw = dict(beta=beta, tau_plus=tau_plus, include_positive=include_positive, t=0.5)

    def ours(a, b):
        z = torch.cat([a, b])
        return L.weighted_info_nce(
            z, z, pos_index=torch.tensor(pos), self_index=torch.arange(n), log_weight_fn=fn, chunk_size=5, **kw
        )

    _check(ours, _ref_batch(in_batch_valid(B), logw=logw, **kw), z1, z2)


def test_debias_clamp_binds_for_some_anchors_hucl():
    """τ⁺ large enough that Chuang et al.'s estimator falls under N e^{−1/t} for some anchors only."""
    B, t, tau, beta = 6, 0.5, 0.2, 1.0
    z1, z2, _ = _views(B, d=4, seed=12, noise=0.5)
    clamped: list[int] = []
    ref = _ref_batch(in_batch_valid(B), beta=beta, tau_plus=tau, t=t, N=2 * B - 2, clamped=clamped)
    _check(lambda a, b: L.hucl(a, b, beta=beta, tau_plus=tau, t=t), ref, z1, z2)
    assert 0 < len(set(clamped)) < 2 * B, f"clamp should bind for some anchors, bound for {sorted(set(clamped))}"


@pytest.mark.parametrize("clamp", [True, False])
def test_debias_clamp_binds_with_a_selecting_strategy(clamp):
    """Debiasing over top-k negatives (N = k); with clamp=False only non-positive estimates are floored."""
    B, t, k = 8, 0.5, 4
    tau = 0.5
    z1, z2, _ = _views(B, d=4, seed=13, noise=0.4 if clamp else 0.2)
    valid = ref_topk(_sims(z1, z2), in_batch_valid(B), k)
    clamped: list[int] = []
    ref = _ref_batch(valid, beta=0.5, tau_plus=tau, clamp=clamp, t=t, clamped=clamped)
    s = Strategy(weighting=TopK(k), beta=0.5, tau_plus=tau, clamp=clamp, t=t)
    _check(lambda a, b: s(a, b), ref, z1, z2)
    assert 0 < len(set(clamped)) < 2 * B, f"clamp should bind for some anchors, bound for {sorted(set(clamped))}"
    if not clamp:  # some anchors sit under N e^{−1/t} with a positive estimate: the flag keeps them
        under: list[int] = []
        _ref_batch(valid, beta=0.5, tau_plus=tau, clamp=True, t=t, clamped=under)(z1, z2)
        assert set(clamped) < set(under)
