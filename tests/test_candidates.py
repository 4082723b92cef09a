"""The one candidate policy: unknown labels, skipped anchors, safe normalisation, one label rule."""

import pytest
import torch
from pytorch_metric_learning import losses as pml

import hardneg.losses as L
from hardneg.losses.candidates import (
    Relations,
    dense_labels,
    label_columns,
    label_order,
    safe_normalize,
    same_known_label,
    two_view_index,
)
from hardneg.negatives import create_strategy
from tests.reference_losses import ref_infonce, ref_supcon


def _z(B, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=dtype, requires_grad=True)
    z2 = torch.randn(B, d, generator=g, dtype=dtype, requires_grad=True)
    return z1, z2


def test_supcon_skips_singleton_classes_like_pml():
    z1, _ = _z(12, 6, 0)
    y = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7])  # classes 1, 3, 4, 6, 7 are singletons
    ours = L.supcon(z1, None, y, t=0.1)
    ref = pml.SupConLoss(temperature=0.1)(z1, y)  # AvgNonZeroReducer: singletons left out
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours, ref_supcon(z1, None, y, t=0.1), rtol=1e-9, atol=1e-12)
    ga = torch.autograd.grad(ours, z1)[0]
    gb = torch.autograd.grad(ref, z1)[0]
    torch.testing.assert_close(ga, gb, rtol=1e-7, atol=1e-10)


def test_supcon_singletons_two_views_and_per_anchor_losses():
    z1, z2 = _z(8, 5, 1)
    y = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4])
    # two views: every sample has its other view as a positive, so nothing is skipped
    torch.testing.assert_close(L.supcon(z1, z2, y, t=0.2), ref_supcon(z1, z2, y, t=0.2), rtol=1e-9, atol=1e-12)
    per = L.supcon(z1, None, y, t=0.2, reduction="none")
    skipped = torch.tensor([True, False, False, True, False, False, False, True])
    assert bool((per[skipped] == 0).all()) and bool((per[~skipped] > 0).all())
    torch.testing.assert_close(per[~skipped].mean(), L.supcon(z1, None, y, t=0.2), rtol=1e-12, atol=0)


def test_unknown_labels_are_never_the_same_label():
    z1, z2 = _z(6, 4, 2)
    y = torch.tensor([0, -1, 0, 1, -1, 1])
    # SCL: an unknown-label sample is a negative of everyone; reference with fresh distinct labels
    fresh = torch.tensor([0, 100, 0, 1, 101, 1])
    ours = L.scl(z1, z2, y, t=0.5)
    # its second view has the same sample: fresh labels per *sample* stay equal across views,
    # which is what the two-view layout does ([y; y]) — the other view is the positive anyway
    torch.testing.assert_close(ours, ref_infonce(z1, z2, t=0.5, labels=fresh), rtol=1e-9, atol=1e-12)
    q, k, n_cls = dense_labels(torch.tensor([-1, 0, -1]), torch.tensor([0, -1, 3]))
    assert n_cls == 5 and len(set(q.tolist()) | set(k.tolist())) == 5 and q[1] == k[0]


@pytest.mark.parametrize("hi", [3, 40, 10**6])
def test_dense_labels_are_the_ranks_of_the_known_labels_then_one_class_per_unknown(hi):
    """Small labels (a presence table) and large ones (a sort) alike: known labels numbered in
    increasing order, then each unknown (−1) entry a class of its own, in order of appearance."""
    g = torch.Generator().manual_seed(hi)
    for trial in range(40):
        n, m = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
        q, k = torch.randint(-1, hi, (n,), generator=g), torch.randint(-1, hi, (m,), generator=g)
        if trial % 10 == 0:
            q[:], k[:] = -1, -1
        y = q.tolist() + k.tolist()
        ranks = {v: i for i, v in enumerate(sorted({v for v in y if v != -1}))}
        nxt = iter(range(len(ranks), len(ranks) + y.count(-1)))
        ref = [ranks[v] if v != -1 else next(nxt) for v in y]
        dq, dk, n_cls = dense_labels(q, k)
        assert dq.tolist() + dk.tolist() == ref and n_cls == len(ranks) + y.count(-1)


def test_supcon_unknown_label_anchor_is_skipped():
    z1, _ = _z(6, 4, 3)
    y = torch.tensor([0, 0, -1, 1, 1, -1])
    torch.testing.assert_close(L.supcon(z1, None, y, t=0.3), ref_supcon(z1, None, y, t=0.3), rtol=1e-9, atol=1e-12)


def test_filter_that_empties_an_anchor_skips_it_with_exact_mean_and_gradient():
    """A log_weight_fn leaving anchor 0 without candidates: the mean is over the other anchors."""
    z1, z2 = _z(5, 4, 4)
    z = torch.cat([z1, z2])
    pos, self_idx = two_view_index(5)

    def lw(S, rows):
        out = torch.zeros_like(S)
        r = torch.arange(rows.start, rows.stop)
        out[r == 0] = float("-inf")
        return out

    ours = L.weighted_info_nce(z, z, t=0.5, pos_index=pos, self_index=self_idx, log_weight_fn=lw, chunk_size=3)
    per = L.weighted_info_nce(z, z, t=0.5, pos_index=pos, self_index=self_idx, reduction="none")
    ref = per[1:].mean()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, [z1, z2]), torch.autograd.grad(ref, [z1, z2])):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


def test_every_anchor_skipped_raises_one_line():
    z1, z2 = _z(4, 3, 5)
    with pytest.raises(ValueError, match="removed every candidate"):
        z = torch.cat([z1, z2])
        pos, self_idx = two_view_index(4)
        L.weighted_info_nce(z, z, t=0.5, pos_index=pos, self_index=self_idx,
                            log_weight_fn=lambda S, rows: torch.full_like(S, float("-inf")))


@pytest.mark.parametrize("scale", [1e19, 1e30, 1e-30])
@pytest.mark.parametrize("name", ["ucl", "supcon", "hscl", "triplet"])
def test_huge_and_tiny_inputs_give_the_unscaled_loss(name, scale):
    z1, z2 = _z(8, 5, 6, dtype=torch.float32)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    fn = getattr(L, name)
    args = (z1, z2) if name == "ucl" else (z1, z2, y)
    base = fn(*args)
    big = fn(*(a * scale if a.is_floating_point() else a for a in args))
    torch.testing.assert_close(big, base, rtol=1e-5, atol=1e-6)


def test_negative_labels_one_rule_for_losses_and_strategies():
    z1, z2 = _z(4, 3, 7)
    bad = torch.tensor([0, 1, -3, 1])
    with pytest.raises(ValueError, match="labels must be integers >= -1"):
        L.supcon(z1, z2, bad)
    with pytest.raises(ValueError, match="labels must be integers >= -1"):
        create_strategy("supcon")(z1, z2, labels=bad)
    ok = torch.tensor([0, 1, -1, 1])  # unknown is accepted by both, with the same meaning
    torch.testing.assert_close(create_strategy("supcon")(z1, z2, labels=ok), L.supcon(z1, z2, ok, t=0.1),
                               rtol=1e-9, atol=1e-12)


def test_relations_valid_and_valid_at_agree():
    g = torch.Generator().manual_seed(0)
    n, m = 6, 9
    rel = Relations(
        m=m, self_index=torch.tensor([0, 1, 2, -1, -1, 5]), pos_index=torch.tensor([3, 4, 5, 0, 1, 2]),
        q_ids=torch.tensor([0, 1, 2, 0, -1, 2]), k_ids=torch.randint(-1, 3, (m,), generator=g),
        owner=torch.tensor([-1, -1, -1, -1, -1, -1, 0, 4, 3]),
    )
    full = rel.valid(slice(0, n), torch.device("cpu"))
    cols = torch.arange(m).expand(n, m)
    torch.testing.assert_close(rel.valid_at(torch.arange(n), cols), full)
    # hand check of one row: anchor 4 (no self, positive 1, unknown id) may use 0, 2..5, 7 (owned), not 6, 8
    assert full[4].tolist() == [True, False, True, True, True, True, False, True, False]


def test_relations_mask_is_minus_inf_exactly_where_valid_is_false():
    """The scatter form (self and positive only) and the tile form (ids, owner) of the one rule."""
    g = torch.Generator().manual_seed(0)
    n, m = 6, 9
    common = {"m": m, "self_index": torch.tensor([0, 1, 2, -1, -1, 5]), "pos_index": torch.tensor([3, 4, 5, 0, 1, 2])}
    for rel in (
        Relations(**common),
        Relations(**common, q_ids=torch.tensor([0, 1, 2, 0, -1, 2]), k_ids=torch.randint(-1, 3, (m,), generator=g),
                  owner=torch.tensor([-1, -1, -1, -1, -1, -1, 0, 4, 3])),
    ):
        for rows in (slice(0, n), torch.tensor([4, 1, 5])):
            X = torch.randn(len(range(n)[rows]) if isinstance(rows, slice) else len(rows), m, generator=g)
            out = rel.mask_(X.clone(), rows)
            valid = rel.valid(rows, torch.device("cpu"))
            assert torch.equal(out == float("-inf"), ~valid)
            assert torch.equal(out[valid], X[valid])
    # hand check: anchor 4 has no self entry and its positive is column 1
    assert (Relations(**common).mask_(torch.zeros(1, m), torch.tensor([4])) == 0).sum() == m - 1


def test_label_columns_are_the_same_label_tile():
    """The sparse form lists exactly the candidates `same_known_label` marks (unknown labels, −1,
    share with nothing), each once."""
    g = torch.Generator().manual_seed(3)
    for yq, yk in (
        (torch.randint(-1, 4, (7,), generator=g), torch.randint(-1, 4, (20,), generator=g)),
        (torch.tensor([-1, -1]), torch.tensor([-1, 0, 0])),  # nothing shared
        (torch.tensor([2, 5]), torch.tensor([2, 2, 2])),  # a label no candidate has
    ):
        for order in (None, label_order(yk)):  # k's order computed here, or given by the caller
            cols, ok = label_columns(yq, yk, order)
            tile = torch.zeros(len(yq), len(yk), dtype=torch.long)
            r = torch.arange(len(yq))[:, None].expand_as(cols)
            tile.index_put_((r[ok], cols[ok]), torch.ones(int(ok.sum()), dtype=torch.long), accumulate=True)
            assert torch.equal(tile, same_known_label(yq, yk).long())


@pytest.mark.parametrize("name", ["triplet", "margin"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triplet_margin_low_precision_gradients_match_float32(name, dtype):
    g = torch.Generator().manual_seed(8)
    z1 = torch.randn(32, 64, generator=g)
    z2 = z1 + 0.3 * torch.randn(32, 64, generator=g)
    y = torch.randint(0, 4, (32,), generator=g)
    fn = getattr(L, name)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ref = fn(a1, a2, y)
    ref.backward()
    b1, b2 = z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()
    low = fn(b1, b2, y)
    low.backward()
    assert low.dtype == dtype
    for got, want in ((b1.grad, a1.grad), (b2.grad, a2.grad)):
        assert bool(torch.isfinite(got).all())
        tol = 2e-3 if dtype == torch.float16 else 2e-2  # bf16 rounding moves a few triplets across the hinge
        torch.testing.assert_close(got.float(), want, rtol=0.05, atol=tol * float(want.abs().max()))
    torch.testing.assert_close(low.float(), ref, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize(
    "kw,words",
    [({"beta": float("inf")}, "beta must be a finite number"), ({"beta": float("nan")}, "beta must be a finite"),
     ({"chunk_size": -1}, "chunk_size must be a positive int"), ({"tilt_scale": 0.0}, "tilt_scale")],
)
@pytest.mark.parametrize("name", ["triplet", "margin"])
def test_triplet_margin_validate_like_the_other_losses(name, kw, words):
    z1, z2 = _z(4, 3, 9)
    with pytest.raises(ValueError, match=words):
        getattr(L, name)(z1, z2, **kw)


def test_triplet_tilt_uses_the_same_beta_over_t_as_every_loss():
    """π ∝ exp(β s / tilt_scale): (β, τ) and (2β, 2τ) are the same distribution, β = 0 the uniform
    one; triplet has no softmax temperature, so ``t`` / ``temperature`` are not its options."""
    z1, z2 = _z(6, 4, 10)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    a = L.triplet(z1, z2, y, margin=0.3, beta=1.0, tilt_scale=0.5)
    b = L.triplet(z1, z2, y, margin=0.3, beta=2.0, tilt_scale=1.0)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert float((a - L.triplet(z1, z2, y, margin=0.3)).abs()) > 1e-4
    for old in ("t", "temperature"):
        with pytest.raises(TypeError, match=f"'{old}'"):
            L.triplet(z1, z2, y, **{old: 0.5})


def test_temperature_is_the_public_name_and_t_its_alias():
    z1, z2 = _z(6, 4, 11)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    for name, args in (("ucl", (z1, z2)), ("supcon", (z1, z2, y)), ("hscl", (z1, z2, y))):
        fn = getattr(L, name)
        torch.testing.assert_close(fn(*args, temperature=0.3), fn(*args, t=0.3), rtol=0, atol=0)
        with pytest.raises(ValueError, match="not both"):
            fn(*args, temperature=0.3, t=0.2)
    s1, s2 = create_strategy("ucl", temperature=0.3), create_strategy("ucl", t=0.3)
    assert s1.temperature == s2.t == 0.3
    torch.testing.assert_close(s1(z1, z2), L.ucl(z1, z2, temperature=0.3), rtol=1e-12, atol=0)


def test_strategy_reduction_none_and_sum_per_anchor_losses():
    z1, z2 = _z(6, 4, 12)
    y = torch.tensor([0, 0, 1, 1, 2, 3])
    per = create_strategy("supcon", reduction="none")(z1, None, labels=y)
    zn = torch.nn.functional.normalize(z1, dim=1)
    ref = []
    for i in range(6):  # Khosla L_out per anchor, by a loop; anchors without a positive: 0
        P = [p for p in range(6) if p != i and y[p] == y[i]]
        denom = torch.logsumexp(torch.stack([zn[i] @ zn[a] / 0.1 for a in range(6) if a != i]), 0)
        ref.append(sum(denom - zn[i] @ zn[p] / 0.1 for p in P) / len(P) if P else torch.zeros((), dtype=z1.dtype))
    ref = torch.stack(ref)
    torch.testing.assert_close(per, ref, rtol=1e-10, atol=1e-12)
    assert per.shape == (6,) and bool((per[[4, 5]] == 0).all())  # singleton classes: skipped anchors
    total = create_strategy("supcon", reduction="sum")(z1, None, labels=y)
    torch.testing.assert_close(total, ref.sum(), rtol=1e-10, atol=1e-12)


def test_memory_queue_fed_another_size_is_one_clear_error():
    s = create_strategy("moco_queue", size=16)
    z1, z2 = _z(4, 8, 13)
    s(z1, z2)
    a1, a2 = _z(4, 6, 14)
    with pytest.raises(ValueError, match="queue holds keys of dim 8 but this batch's embeddings have dim 6"):
        s(a1, a2)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_label_positives_pairs_reduce_without_tilt_matches_the_pairs_reference(reduction):
    """positive_reduce="pairs" with label positives and the positive outside the denominator (the
    fused SupCon path must not take it): a literal loop over (anchor, positive) pairs."""
    z1, z2 = _z(6, 4, 15)
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    z = torch.cat([z1, z2])
    yy = torch.cat([y, y])
    n = len(z)
    got = L.weighted_info_nce(z, z, t=0.3, q_labels=yy, k_labels=yy, self_index=torch.arange(n), positives="labels",
                              include_positive=False, positive_reduce="pairs", reduction=reduction)
    zn = torch.nn.functional.normalize(z, dim=1)
    per, pairs = [], 0
    for i in range(n):
        denom = torch.logsumexp(torch.stack([zn[i] @ zn[a] / 0.3 for a in range(n) if a != i]), 0)
        terms = [denom - zn[i] @ zn[p] / 0.3 for p in range(n) if p != i and yy[p] == yy[i]]
        pairs += len(terms)
        per.append(sum(terms))
    per = torch.stack(per)
    want = {"mean": per.sum() / pairs, "sum": per.sum(), "none": per}[reduction]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    ga = torch.autograd.grad(got.sum(), [z1, z2])
    gb = torch.autograd.grad(want.sum(), [z1, z2])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


def test_label_positives_a_weighting_that_changes_nothing_changes_nothing():
    """The other view is a positive under label positives: it stays in the denominator whether the
    kernel runs plainly or through the strategy's log-weights."""
    z1, z2 = _z(12, 5, 16)
    y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(1))
    plain = create_strategy("supcon")(z1, z2, labels=y)
    uniform = create_strategy("supcon", weighting=[{"kind": "uniform"}])(z1, z2, labels=y, ids=torch.arange(12))
    noop_filter = create_strategy("supcon", filters=[{"kind": "similarity", "max_score": 1.0}])(z1, z2, labels=y)
    torch.testing.assert_close(uniform, plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(noop_filter, plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(plain, ref_supcon(z1, z2, y, t=0.1), rtol=1e-9, atol=1e-12)


def test_lean_supcon_skipped_anchor_has_zero_gradient():
    q = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    loss = L.weighted_info_nce(q, k, t=0.5, q_labels=torch.tensor([0, 0, 1]), k_labels=torch.tensor([0, 1]),
                               self_index=torch.tensor([0, -1, -1]), positives="labels", include_positive=False)
    loss.backward()  # anchor 0's only candidate but itself is of another label: no positive, skipped
    assert bool(torch.isfinite(q.grad).all()) and bool(torch.isfinite(k.grad).all())
    assert bool((q.grad[0] == 0).all()) and bool((q.grad[1:] != 0).any())


def test_decoupled_with_label_positives_is_refused():
    from hardneg.negatives import Strategy

    with pytest.raises(ValueError, match="family='supcon'"):
        Strategy(family="decoupled", positives="labels")


def test_queue_does_not_enqueue_in_eval_mode():
    s = create_strategy("moco_queue", size=32)
    z1, z2 = _z(4, 6, 17)
    s(z1, z2)
    n = len(s.sources[0])
    s.eval()
    with torch.no_grad():
        s(z1, z2)
    assert len(s.sources[0]) == n == 4


def test_mining_refuses_non_finite_beta_and_t():
    from hardneg.mining.mine import MineConfig

    for kw, words in (({"t": float("nan")}, "temperature"), ({"beta": float("nan")}, "beta"),
                      ({"t": float("inf")}, "temperature"), ({"relative_margin": float("nan")}, "relative_margin")):
        with pytest.raises(ValueError, match=words):
            MineConfig(**kw).validate()


def test_safe_normalize_matches_f_normalize_with_first_and_second_derivatives():
    """Regular rows take the fused unit-rows function: F.normalize's values, its gradient, and a
    second derivative (create_graph) through the gradient."""
    from torch.autograd import gradcheck, gradgradcheck

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(6, 5, generator=g, dtype=torch.float64)
    ours, ref = safe_normalize(x), torch.nn.functional.normalize(x, dim=1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    a, = torch.autograd.grad(ours, x, up)
    b, = torch.autograd.grad(ref, x, up)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert gradcheck(safe_normalize, (x,)) and gradgradcheck(safe_normalize, (x,))
