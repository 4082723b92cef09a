"""The presets' filters and weightings applied in the kernel's blocks (``log_weight_block``) on
batches large enough for the two-stage top-k selection, against vectorised float64 formulas."""

import math

import numpy as np
import pytest
import torch

from hardneg.negatives import create_strategy


def _batch(B: int, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    return z1, z1 + 0.7 * torch.randn(B, d, generator=g, dtype=torch.float64)


def _literal(z1, z2, keep, t=0.5):
    """mean_i −log(e^{s_ip/t} / (e^{s_ip/t} + Σ_{j kept} e^{s_ij/t})), the mask a constant."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    S = z @ z.T / t
    n = S.shape[0]
    pos = (torch.arange(n) + n // 2) % n
    sp = S[torch.arange(n), pos]
    neg = torch.logsumexp(S.masked_fill(~torch.as_tensor(keep), float("-inf")), 1)
    return (torch.logaddexp(sp, neg) - sp).mean()


@pytest.mark.slow
def test_topk_two_stage_selection_matches_the_sorted_k_hardest():
    """2B = 4180 candidates: top-k goes through its rows' best 64-column groups, with a tail of 20
    columns past the last whole group; the k kept per anchor are the k largest of numpy's partition."""
    B, k = 2090, 16
    z1, z2 = _batch(B)
    z = np.concatenate([z1.numpy(), z2.numpy()])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    S = z @ z.T
    n = 2 * B
    S[np.arange(n), np.arange(n)] = -np.inf  # the anchor itself
    S[np.arange(n), (np.arange(n) + B) % n] = -np.inf  # its positive
    order = np.argpartition(-S, k, axis=1)[:, :k]  # the k largest, in any order
    keep = np.zeros((n, n), bool)
    keep[np.arange(n)[:, None], order] = True
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ra, rb = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    s = create_strategy("topk", k=k)
    loss = s(a, b)
    ref = _literal(ra, rb, keep)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=0)
    (loss + 0).backward()
    ref.backward()
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-8, atol=1e-12)
    assert s.last_diagnostics["n_candidates"] == k and s.last_diagnostics["topk_short_share"] == 0.0


def test_topk_block_keeps_the_k_largest_valid_entries():
    """The in-place top-k on a block of 4180 columns (two-stage: 65 groups of 64 and a tail of 20)
    with −∞ on invalid entries: the k largest stay, everything else becomes −∞; a row with fewer
    than k valid entries keeps them all and counts as short."""
    from hardneg.negatives import TopK

    g = torch.Generator().manual_seed(1)
    X = torch.randn(6, 4180, generator=g)
    X[0, 4170:] += 10.0  # the hardest in the tail
    X[1, : 4100] = float("-inf")  # 80 valid
    X[2, 7:] = float("-inf")  # 7 valid: short
    X0 = X.clone()
    w = TopK(16)
    w._rows = w._short = 0
    cnt, lse_a, fallback, kept = w.weigh_(X, slice(0, 6), None, None)
    kept.write_(X)  # what the kernel writes back over the block when it keeps the dense path
    ref = np.full(X0.shape, -np.inf, np.float32)
    for i, row in enumerate(X0.numpy()):
        top = np.argpartition(-row, 16)[:16]
        ref[i, top] = row[top]
    np.testing.assert_array_equal(X.numpy(), ref)
    assert cnt.tolist() == [16, 16, 7, 16, 16, 16] and lse_a is None and fallback is None
    assert w.diagnostics()["topk_short_share"] == 1 / 6


def test_log_mask_keeps_exactly_the_entries_the_comparison_keeps():
    """The float-only mask of the fused blocks against the boolean comparison it replaces: strict
    and inclusive, at exact zeros of both signs, ±∞ and the smallest subnormals."""
    from hardneg.losses.candidates import finite_count, log_mask_

    tiny = torch.finfo(torch.float32).tiny
    y = torch.tensor([[0.0, -0.0, 1e-45, -1e-45, tiny, -tiny, 1.0, -1.0],
                      [-2.0, float("inf"), float("-inf"), 3.0, -3.0, 0.5, 0.0, 2.0]])
    for inclusive in (False, True):
        keep = (y >= 0) if inclusive else (y > 0)
        a = log_mask_(y.clone(), inclusive=inclusive)
        assert torch.equal(a == 0, keep) and torch.equal(a == float("-inf"), ~keep)
        assert finite_count(a).tolist() == finite_count(a, log_mask=True).tolist() == keep.sum(1).tolist()
        X = torch.randn(2, 8)
        assert torch.equal(X + a, X.masked_fill(~keep, float("-inf")))  # x + 0 is x exactly
    big = torch.finfo(torch.float32).max
    X = torch.tensor([[-big, big, float("inf"), float("-inf"), 0.0, -1e-45], [float("-inf")] * 5 + [1.0]])
    assert finite_count(X).tolist() == [5, 1]


def test_finite_count_into_a_scratch_counts_every_entry_above_minus_infinity():
    """The count the filters-only blocks take in a step scratch tile (``out``), against the boolean
    comparison, in float32 and float16 (where x + max overflows to +∞ for large x), with ±max,
    +∞ and subnormals; the scratch is written, X is not."""
    from hardneg.losses.candidates import finite_count

    for dtype in (torch.float32, torch.float16):
        fi = torch.finfo(dtype)
        X = torch.tensor([[-fi.max, fi.max, float("inf"), float("-inf"), 0.0, fi.tiny / 4, 30.0, -30.0],
                          [float("-inf")] * 6 + [1.0, float("-inf")]], dtype=dtype)
        X0, out = X.clone(), torch.full_like(X, 7.0)
        assert finite_count(X, out=out).tolist() == (~torch.isneginf(X)).sum(1).tolist() == [7, 1]
        assert torch.equal(X, X0) and not torch.equal(out, torch.full_like(X, 7.0))


def test_step_scratch_is_one_buffer_reused_by_every_block():
    """`StepContext.scratch`: one tile per index for the step, a view of X's shape for a smaller
    block, a new one only for a larger block or another width."""
    from hardneg.negatives.context import StepContext

    ctx = StepContext(q=torch.zeros(1, 2), k=torch.zeros(1, 2), pos_index=None, self_index=torch.zeros(1),
                      q_labels=None, k_labels=None, q_ids=None, k_ids=None, owner=None, t=0.5, beta=0.0,
                      step=0, blocks=[])
    a, b = ctx.scratch(torch.empty(4, 8)), ctx.scratch(torch.empty(3, 8))
    assert a.shape == (4, 8) and b.shape == (3, 8) and b.data_ptr() == a.data_ptr()
    assert ctx.scratch(torch.empty(4, 8), 1).data_ptr() != a.data_ptr()  # another index, another tile
    assert ctx.scratch(torch.empty(5, 8)).shape == (5, 8) and ctx.scratch(torch.empty(2, 6)).shape == (2, 6)


# --- the sparse top-k path: few kept candidates per row, the gradient from them alone -----------


def _topk_reference(z1, z2, k, t=0.5, rule=None, nominal=False, scale=None):
    """Per-anchor float64 top-k InfoNCE −log(e^{s_ip/t} / (e^{s_ip/t} + N/|K_i| Σ_{j∈K_i} e^{s_ij/t})),
    K_i the k most similar candidates that are neither the anchor, its positive nor removed by
    ``rule(cos, s_pos) -> keep`` (all of them if fewer), N = |K_i| or 2B − 2 (``nominal``); 1/t is
    ``scale`` when given. Returns (losses of the anchors with a candidate, their rows)."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    C = z @ z.T
    n = C.shape[0]
    S = C * scale if scale is not None else C / t
    pos = (np.arange(n) + n // 2) % n
    c = C.detach().numpy()
    valid = np.ones((n, n), bool)
    valid[np.arange(n), np.arange(n)] = False
    valid[np.arange(n), pos] = False
    if rule is not None:
        valid &= rule(c, c[np.arange(n), pos])
    keep = np.zeros((n, n), bool)
    for i in range(n):
        cand = np.flatnonzero(valid[i])
        keep[i, cand[np.argsort(-c[i, cand], kind="stable")[:k]]] = True
    rows = np.flatnonzero(keep.any(1))
    cnt = torch.as_tensor(keep[rows].sum(1), dtype=torch.float64)
    Sr = S[rows]
    neg = torch.logsumexp(Sr.masked_fill(~torch.as_tensor(keep[rows]), float("-inf")), 1)
    if nominal:
        neg = neg + math.log(n - 2) - torch.log(cnt)
    sp = Sr[torch.arange(len(rows)), torch.as_tensor(pos[rows])]
    return torch.logaddexp(sp, neg) - sp, rows


def _labels_mostly_one_class(B):
    """Every sample label 0 but the last two: label-0 anchors keep only 4 candidates (short of k = 5)."""
    return torch.tensor([0] * (B - 2) + [1, 2])


def _sparse_batch(k):
    """The smallest batch B whose 2B candidates put a top-k on the sparse path."""
    from hardneg.losses.kernel import SPARSE_RATIO

    return (k + 1) * SPARSE_RATIO // 2


_SPARSE_CASES = {
    "count": dict(k=3),
    "nominal": dict(k=3, nominal=True),
    "label filter, short rows": dict(k=5, labels=True),
    "similarity filter, empty rows": dict(k=3, margin=0.5),
    "reduction none": dict(k=3, reduction="none"),
    "logit_scale": dict(k=3, scale=3.0),
    "anchor_rows": dict(k=3, anchor_rows=True),
}


@pytest.mark.parametrize("case", list(_SPARSE_CASES))
def test_sparse_topk_matches_the_float64_topk_infonce(case, monkeypatch):
    """The top-k path that takes the gradient from the kept entries alone (k + 1 ≤ 2B / 16) against
    the vectorised float64 top-k InfoNCE, values and gradients: n_neg count and nominal, filters
    before the selection (rows with fewer than k valid candidates, rows with none: skipped),
    reduction="none", logit_scale (its gradient too), anchor_rows."""
    import hardneg.losses.kernel as K
    from hardneg.negatives import LabelFilter, SimilarityFilter, Strategy, TopK

    o = _SPARSE_CASES[case]
    k = o["k"]
    B = _sparse_batch(k)
    assert K.sparse_selection(k, 2 * B) and not K.sparse_selection(k, 2 * B - 1)
    calls = []
    sparse = K._sparse_products_
    monkeypatch.setattr(K, "_sparse_products_", lambda *a: calls.append(1) or sparse(*a))
    z1, z2 = _batch(B, seed=3)
    y = ids = None
    filters, rule = [], None
    if o.get("labels"):
        y = _labels_mostly_one_class(B)
        yy = torch.cat([y, y]).numpy()
        filters, rule = [LabelFilter()], lambda c, sp: yy[:, None] != yy[None, :]
        ids = torch.arange(B)
    if o.get("margin"):
        z2[:3] = -z1[:3] + 0.1 * z2[:3]  # s_ip ≈ −1: the margin leaves these anchors nothing
        m = o["margin"]
        filters, rule = [SimilarityFilter(absolute_margin=m)], lambda c, sp: c <= sp[:, None] - m
    s = Strategy(filters=filters, weighting=TopK(k), t=0.5, n_neg="nominal" if o.get("nominal") else "count",
                 reduction=o.get("reduction", "mean"))
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ra, rb = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    kw = {}
    scale = rscale = None
    if o.get("scale"):
        scale = torch.tensor(o["scale"], dtype=torch.float64, requires_grad=True)
        rscale = scale.detach().clone().requires_grad_()
        kw["logit_scale"] = scale
    sub = np.arange(0, 2 * B, 3)
    if o.get("anchor_rows"):
        kw["anchor_rows"] = torch.as_tensor(sub)
    out = s(a, b, labels=y, ids=ids, **kw)
    per, rows = _topk_reference(ra, rb, k, rule=rule, nominal=o.get("nominal", False), scale=rscale)
    if o.get("reduction") == "none":
        ref = torch.zeros(2 * B, dtype=torch.float64).index_put((torch.as_tensor(rows),), per)
        w = torch.linspace(0.5, 2.0, 2 * B, dtype=torch.float64)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        (out * w).sum().backward()
        (ref * w).sum().backward()
    else:
        ref = per[np.isin(rows, sub)].mean() if o.get("anchor_rows") else per.mean()
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=0)
        (out + 0).backward()
        ref.backward()
    assert calls, "the sparse products did not run"
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-8, atol=1e-12)
    if scale is not None:
        torch.testing.assert_close(scale.grad, rscale.grad, rtol=1e-8, atol=1e-12)
    if o.get("labels"):  # the 2 (B − 2) label-0 anchors see 4 candidates, fewer than k = 5
        assert s.last_diagnostics["topk_short_share"] == pytest.approx((B - 2) / B)
    if o.get("margin"):  # the 6 anchors with nothing left are skipped, left out of the mean
        assert len(rows) == 2 * B - 6


def test_sparse_and_dense_topk_paths_agree(monkeypatch):
    """The same call through the sparse products and, with the threshold out of reach, through the
    dense tile: values, gradients and diagnostics agree (float32, labels and a filter)."""
    import hardneg.losses.kernel as K

    k = 4
    B = _sparse_batch(k)
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(B, 32, generator=g)
    z2 = z1 + 0.5 * torch.randn(B, 32, generator=g)
    y = torch.randint(0, 6, (B,), generator=g)
    got = {}
    for mode, ratio in (("sparse", K.SPARSE_RATIO), ("dense", 10**9)):
        monkeypatch.setattr(K, "SPARSE_RATIO", ratio)
        assert K.sparse_selection(k, 2 * B) == (mode == "sparse")
        s = create_strategy("topk", k=k, filters=[{"kind": "label"}], diagnostics_anchors=None)
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        loss = s(a, b, labels=y, ids=torch.arange(B))
        loss.backward()
        got[mode] = (loss.detach(), a.grad, b.grad, s.last_diagnostics)
    (ls, ga, gb, ds), (ld, ha, hb, dd) = got["sparse"], got["dense"]
    torch.testing.assert_close(ls, ld, rtol=1e-6, atol=0)
    torch.testing.assert_close(ga, ha, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gb, hb, rtol=1e-5, atol=1e-7)
    assert ds.keys() == dd.keys()
    for key in ds:
        assert ds[key] == pytest.approx(dd[key], rel=1e-5, abs=1e-7, nan_ok=True), key


def test_a_selection_keeps_the_same_number_of_entries_in_every_block():
    """A ``log_weight_block`` that hands the kernel its kept entries in one block of a chunk and not
    in the next is refused (the chunk's sparse products need them for every row)."""
    from hardneg.losses.kernel import Kept, weighted_info_nce

    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(64, 8, generator=g), torch.randn(8192, 8, generator=g)
    seen = []

    def block(X, rows, sp):  # 32 rows per block at 8192 candidates: two blocks of 64 anchors
        seen.append(rows.start)
        vals, cols = X.topk(4, dim=1)
        cnt = torch.full((X.shape[0],), 4)
        return (cnt, None, Kept(vals, cols)) if rows.start == 0 else (cnt, None, None)

    with pytest.raises(ValueError, match="same number of entries per row in every block"):
        weighted_info_nce(q, k, t=0.5, pos_index=torch.arange(64), log_weight_block=block)
    assert seen == [0, 32]
