"""Strategy and registry: presets equal the named losses; selections match literal references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hardneg import losses as L
from hardneg.negatives import (
    DistanceWeighted,
    IdFilter,
    LabelFilter,
    SimilarityFilter,
    Strategy,
    TopK,
    create_strategy,
    from_config,
    list_strategies,
)
from tests.negatives_reference import (
    in_batch_valid,
    ref_distance_weighted,
    ref_semihard,
    ref_topk,
    ref_weighted_infonce,
    two_view_pos,
    unit,
)

torch.set_num_threads(1)


def _views(B=8, d=6, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.8 * torch.randn(B, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (B,), generator=g)
    return z1, z2, y


@pytest.mark.parametrize(
    "name,fn",
    [
        ("ucl", lambda z1, z2, y: L.ucl(z1, z2)),
        ("scl", lambda z1, z2, y: L.scl(z1, z2, y)),
        ("supcon", lambda z1, z2, y: L.supcon(z1, z2, y)),
        ("hucl", lambda z1, z2, y: L.hucl(z1, z2)),
        ("dcl", lambda z1, z2, y: L.dcl(z1, z2)),
        ("hscl", lambda z1, z2, y: L.hscl(z1, z2, y)),
        ("decoupled", lambda z1, z2, y: L.decoupled(z1, z2)),
    ],
)
def test_presets_equal_named_losses_values_and_grads(name, fn):
    z1, z2, y = _views()
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    la = create_strategy(name)(a1, a2, labels=y)
    lb = fn(b1, b2, y)
    la.backward()
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=1e-10)
    torch.testing.assert_close(a1.grad, b1.grad)
    torch.testing.assert_close(a2.grad, b2.grad)


def test_ucl_matches_literal_reference_and_hscl_view_too():
    z1, z2, y = _views(B=5)
    B = 5
    z = np.concatenate([z1.numpy(), z2.numpy()])
    ref = ref_weighted_infonce(z, z, two_view_pos(B), in_batch_valid(B), t=0.5)
    assert create_strategy("ucl")(z1, z2).item() == pytest.approx(ref, rel=1e-10)
    yy = np.concatenate([y.numpy(), y.numpy()])
    valid = in_batch_valid(B) & (yy[:, None] != yy[None, :])
    ref = ref_weighted_infonce(z, z, two_view_pos(B), valid, beta=1.0, t=0.5, N=2 * B - 2)
    got = create_strategy("hscl", positives="view")(z1, z2, labels=y).item()
    assert got == pytest.approx(ref, rel=1e-10)


def test_topk_picks_exactly_the_k_most_similar():
    B, k = 6, 3
    z1, z2, _ = _views(B=B, seed=1)
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    S = z @ z.T
    base = in_batch_valid(B)
    valid = ref_topk(S, base, k)
    ref = ref_weighted_infonce(z, z, two_view_pos(B), valid, t=0.5)
    s = create_strategy("topk", k=k)
    assert s(z1, z2).item() == pytest.approx(ref, rel=1e-10)
    assert s.last_diagnostics["n_candidates"] == k
    assert s.last_diagnostics["ess"] == pytest.approx(k, rel=1e-5)
    # and the hardest is in: mean of the k largest
    hard = np.mean([max(S[i, base[i]]) for i in range(2 * B)])
    assert s.last_diagnostics["hardest_mean"] == pytest.approx(hard, abs=1e-6)


def test_semihard_picks_only_inside_the_window():
    B, m = 10, 0.4
    z1, z2, _ = _views(B=B, seed=2)
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    S = z @ z.T
    base = in_batch_valid(B)
    pos = two_view_pos(B)
    window = np.array([base[i] & (S[i] < S[i, pos[i]]) & (S[i] > S[i, pos[i]] - m) for i in range(2 * B)])
    empty = ~window.any(1)
    assert 0 < empty.sum() < 2 * B, "test data should have both kinds of rows"
    valid = ref_semihard(S, base, pos, m)  # an empty window keeps the one candidate nearest to it
    ref = ref_weighted_infonce(z, z, pos, valid, t=0.5)
    s = create_strategy("semihard", margin=m)
    assert s(z1, z2).item() == pytest.approx(ref, rel=1e-10)
    assert s.last_diagnostics["semihard_fallback_share"] == pytest.approx(empty.mean())
    assert s.last_diagnostics["n_candidates"] == pytest.approx(valid.sum(1).mean())


def test_distance_weighted_matches_wu_formula():
    B, d = 6, 6
    z1, z2, _ = _views(B=B, d=d, seed=3)
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    logw = ref_distance_weighted(z @ z.T, d, 0.5, 1.4)
    ref = ref_weighted_infonce(z, z, two_view_pos(B), in_batch_valid(B), logw=logw, t=0.5)
    got = Strategy(t=0.5, weighting=DistanceWeighted(0.5, 1.4))(z1, z2).item()
    assert got == pytest.approx(ref, rel=1e-9)


def test_composed_queue_filter_tilt_schedule_matches_reference():
    """queue source + label and similarity filters + β tilt on a linear schedule (the issue's example)."""
    B, d = 4, 5
    s = from_config(
        {
            "name": "ucl",
            "t": 0.5,
            "source": {"kind": "queue", "size": 6},
            "filters": [{"kind": "label"}, {"kind": "similarity", "max_score": 0.9}],
            "schedule": {"beta": {"kind": "linear", "start": 0.0, "end": 2.0, "steps": 4}},
        }
    )
    g = torch.Generator().manual_seed(5)
    hist = []
    for step in range(4):
        z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
        z2 = z1 + 0.5 * torch.randn(B, d, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (B,), generator=g)
        ids = torch.arange(step * B, step * B + B)
        got = s(z1, z2, labels=y, ids=ids).item()
        beta = 2.0 * step / 4
        # reference: candidates = [z1; z2; queue (oldest first: z2 of earlier steps, last 6 keys)]
        qk = np.concatenate([h[0] for h in hist], 0)[-6:] if hist else np.zeros((0, d))
        ql = np.concatenate([h[1] for h in hist])[-6:] if hist else np.zeros(0, int)
        z = np.concatenate([z1.numpy(), z2.numpy()])
        k = np.concatenate([z, qk]) if len(qk) else z
        yy = np.concatenate([y.numpy(), y.numpy()])
        ky = np.concatenate([yy, ql])
        zz, kk = unit(z), unit(k)
        valid = np.zeros((2 * B, len(k)), bool)
        valid[:, : 2 * B] = in_batch_valid(B)
        valid[:, 2 * B :] = True
        valid &= yy[:, None] != ky[None, :]
        valid &= (zz @ kk.T) <= 0.9
        ref = ref_weighted_infonce(z, k, two_view_pos(B), valid, beta=beta, t=0.5)
        assert got == pytest.approx(ref, rel=1e-9), step
        assert s.last_diagnostics["sched_beta"] == beta
        assert s.last_diagnostics["fn_weight_share"] == 0.0
        hist.append((z2.numpy(), y.numpy()))
    assert s.sources[0].count == 6


def test_gradient_flows_and_diagnostics_present():
    z1, z2, y = _views()
    a1 = z1.clone().requires_grad_()
    s = Strategy(filters=[IdFilter(), SimilarityFilter(relative_margin=0.1)], weighting=TopK(5), beta=0.5)
    loss = s(a1, z2, labels=y, ids=torch.arange(8))
    loss.backward()
    assert torch.isfinite(a1.grad).all() and a1.grad.abs().sum() > 0
    for key in ("sim_mean", "sim_p05", "sim_p50", "sim_p95", "ess", "fn_weight_share", "pos_gap"):
        assert math.isfinite(s.last_diagnostics[key]), key


def test_registry_lists_required_presets():
    required = {
        "ucl",
        "scl",
        "supcon",
        "hucl",
        "dcl",
        "hscl",
        "topk",
        "semihard",
        "distance_weighted",
        "moco_queue",
        "mochi",
        "adco",
        "cluster_guided",
        "calibrated",
        "filtered",
    }
    assert required <= set(list_strategies())


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda: create_strategy("nope"), "unknown strategy preset 'nope'"),
        (lambda: create_strategy("topk", kk=3), "unknown option(s) ['kk']"),
        (lambda: create_strategy("semihard", margin=-0.1), "'margin'"),
        (lambda: create_strategy("hscl", beta=-1.0), "beta"),
        (lambda: create_strategy("ucl", t=0.0), "temperature must be"),
        (lambda: from_config({"name": "hscl", "bogus": 1}), "['bogus']"),
        (lambda: from_config({"name": "ucl", "source": {"kind": "queue", "sise": 5}}), "['sise']"),
        (lambda: from_config({"name": "ucl", "filters": [{"kind": "labels"}]}), "filter 'kind'"),
        (
            lambda: from_config(
                {"name": "ucl", "schedule": {"betta": {"kind": "linear", "start": 0, "end": 1, "steps": 3}}}
            ),
            "'betta'",
        ),
        (lambda: from_config({"name": "ucl", "schedule": {"beta": {"kind": "exp"}}}), "'kind'"),
        (lambda: create_strategy("moco_queue", size=0), "'size'"),
        (lambda: create_strategy("pool", embeddings=torch.zeros(0, 4)), "pool_size >= 1"),
        (
            lambda: create_strategy("pool", embeddings=torch.randn(5, 4), k_per_anchor=6),
            "larger than the pool",
        ),
    ],
)
def test_bad_configurations_raise_naming_the_option(call, needle):
    with pytest.raises(ValueError) as e:
        call()
    assert needle in str(e.value)


def test_topk_larger_than_the_pool_uses_the_whole_pool_and_counts_it():
    """k above an anchor's valid candidates: every valid candidate counts (the uniform loss) and the
    share of such anchors is reported — never an error in the middle of training."""
    z1, z2, _ = _views(B=4)
    B, ref = 4, ref_weighted_infonce(unit(torch.cat([z1, z2]).numpy()), unit(torch.cat([z1, z2]).numpy()),
                                     two_view_pos(4), in_batch_valid(4))
    big = create_strategy("topk", k=7)
    assert float(big(z1, z2)) == pytest.approx(ref, rel=1e-9)
    assert big.last_diagnostics["topk_short_share"] == 1.0
    exact = create_strategy("topk", k=2 * B - 2)  # exactly the pool: no anchor short
    assert float(exact(z1, z2)) == pytest.approx(ref, rel=1e-9)
    assert exact.last_diagnostics["topk_short_share"] == 0.0


def test_empty_queue_without_batch_negatives_is_a_clear_error():
    from hardneg.negatives import InBatch, MemoryQueue

    z1, z2, _ = _views(B=4)
    s = Strategy(source=[InBatch(symmetric=False, batch_negatives=False), MemoryQueue(8)])
    with pytest.raises(ValueError, match="no candidate negatives this step"):
        s(z1, z2)


def test_forward_input_errors():
    z1, z2, y = _views()
    s = create_strategy("scl")
    with pytest.raises(ValueError, match="labels"):
        s(z1, z2)
    with pytest.raises(ValueError, match=r"labels must have shape \(8,\)"):
        s(z1, z2, labels=y[:3])
    with pytest.raises(ValueError, match="z2"):
        s(z1, z2[:3], labels=y)
    with pytest.raises(ValueError, match="z2=None"):
        create_strategy("semihard")(z1, None, labels=y)


def test_label_filter_equals_kernel_other_labels():
    z1, z2, y = _views(B=6, seed=4)
    got = Strategy(t=0.3, beta=0.7, filters=[LabelFilter()], n_neg="nominal")(z1, z2, labels=y).item()
    z = torch.cat([z1, z2])
    yy = torch.cat([y, y])
    ar = torch.arange(6)
    ref = L.weighted_info_nce(
        z,
        z,
        t=0.3,
        pos_index=torch.cat([ar + 6, ar]),
        self_index=torch.arange(12),
        q_labels=yy,
        k_labels=yy,
        negatives="other_labels",
        beta=0.7,
        n_neg=10,
    ).item()
    assert got == pytest.approx(ref, rel=1e-10)


def test_state_dict_resume_is_exact():
    """Queue, mixing RNG, calibrator MLP + optimiser, k-means centroids and the step counter all
    travel with state_dict: a resumed strategy continues with identical losses."""

    def make():
        return create_strategy(
            "mochi",
            size=16,
            n_hard=4,
            s=3,
            s_prime=2,
            weighting=[{"kind": "calibrated"}, {"kind": "cluster_guided", "n_clusters": 3, "every": 2}],
        )

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)) for _ in range(5)]
    a = make().train()
    for i in range(3):
        a(*batches[i], ids=torch.arange(6 * i, 6 * i + 6))
    state = a.state_dict()
    b = make().train()
    b.load_state_dict(state)
    for i in range(3, 5):
        la = a(*batches[i], ids=torch.arange(6 * i, 6 * i + 6))
        lb = b(*batches[i], ids=torch.arange(6 * i, 6 * i + 6))
        assert la.item() == lb.item()
        assert a.last_diagnostics["step"] == b.last_diagnostics["step"] == i


def test_explicit_negatives_match_sentence_transformers_mnrl():
    """Queries vs [positives; mined negatives] (MoCo-style batch + explicit negatives) is exactly
    sentence-transformers' MultipleNegativesRankingLoss (scale = 1/t)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from hardneg.negatives import InBatch

    g = torch.Generator().manual_seed(0)
    a, p, n1, n2 = (torch.randn(6, 8, generator=g, dtype=torch.float64) for _ in range(4))
    mnrl = MultipleNegativesRankingLoss(model=torch.nn.Identity(), scale=20.0)
    ref = mnrl.compute_loss_from_embeddings([a, p, n1, n2], None)
    s = Strategy(source=InBatch(symmetric=False), t=0.05)
    got = s(a, p, negatives=torch.cat([n1, n2]))
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    assert s.last_diagnostics["n_candidates"] == 6 - 1 + 12
