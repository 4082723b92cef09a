"""Every named loss: value and gradient against a literal float64 loop implementation of its formula."""

import pytest
import torch
import torch.nn.functional as F

import hardneg.losses as L
from tests import negatives_reference as NR
from tests import reference_losses as R

CASES = [(4, 3), (7, 5), (12, 8)]


def make(B, d, seed, n_classes=3):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.arange(B) % n_classes  # every class has >= 1 member in each view
    y = y[torch.randperm(B, generator=g)]
    return z1, z2, y


def check(ours, ref, inputs, rtol=1e-6):
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=rtol, atol=1e-10)
    g_ours = torch.autograd.grad(ours, inputs)
    g_ref = torch.autograd.grad(ref, inputs)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("B,d", CASES)
@pytest.mark.parametrize("t", [0.1, 0.5])
@pytest.mark.parametrize("chunk", [None, 3])
def test_ucl(B, d, t, chunk):
    z1, z2, _ = make(B, d, 1)
    check(L.ucl(z1, z2, t=t, chunk_size=chunk), R.ref_infonce(z1, z2, t=t), [z1, z2])


@pytest.mark.parametrize("B,d", CASES)
@pytest.mark.parametrize("beta,tau", [(0.0, 0.0), (0.5, 0.0), (1.0, 0.1), (2.0, 0.05)])
@pytest.mark.parametrize("chunk", [None, 5])
def test_hucl(B, d, beta, tau, chunk):
    z1, z2, _ = make(B, d, 2)
    check(
        L.hucl(z1, z2, beta=beta, tau_plus=tau, t=0.5, chunk_size=chunk),
        R.ref_infonce(z1, z2, t=0.5, beta=beta, tau_plus=tau),
        [z1, z2],
    )


def clamped_anchors(z1, z2, *, beta, tau_plus, t):
    """Anchors whose debiased estimator the literal reference replaces by N e^{−1/t} (N = 2B − 2)."""
    B = z1.shape[0]
    z = torch.cat([z1, z2]).detach()
    out: list[int] = []
    NR.ref_weighted_infonce_t(z, z, NR.two_view_pos(B), NR.in_batch_valid(B), beta=beta, tau_plus=tau_plus, t=t,
                              N=2 * B - 2, clamped=out)
    return out


def test_hucl_clamp_active_gradients():
    # large τ⁺ pushes the estimator under N e^{-1/t}: clamped anchors contribute a constant G.
    z1, z2, _ = make(6, 4, 3)
    assert 0 < len(clamped_anchors(z1, z2, beta=1.0, tau_plus=0.8, t=0.5)) < 12, "fixture: the clamp binds"
    check(L.hucl(z1, z2, beta=1.0, tau_plus=0.8, t=0.5), R.ref_infonce(z1, z2, t=0.5, beta=1.0, tau_plus=0.8), [z1, z2])


@pytest.mark.parametrize("tau", [0.01, 0.1, 0.3])
def test_dcl(tau):
    z1, z2, _ = make(8, 6, 4)
    check(L.dcl(z1, z2, tau_plus=tau, t=0.5), R.ref_infonce(z1, z2, t=0.5, tau_plus=tau), [z1, z2])


@pytest.mark.parametrize("B,d", CASES)
@pytest.mark.parametrize("t", [0.2, 0.5])
def test_scl(B, d, t):
    z1, z2, y = make(B, d, 5)
    check(L.scl(z1, z2, y, t=t), R.ref_infonce(z1, z2, t=t, labels=y), [z1, z2])


@pytest.mark.parametrize("B,d", CASES)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("chunk", [None, 4])
def test_hscl_view(B, d, beta, chunk):
    z1, z2, y = make(B, d, 6)
    check(
        L.hscl(z1, z2, y, beta=beta, t=0.5, positives="view", chunk_size=chunk),
        R.ref_infonce(z1, z2, t=0.5, beta=beta, labels=y),
        [z1, z2],
    )


@pytest.mark.parametrize("B,d", CASES)
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("chunk", [None, 5])
def test_hscl_all_pairs_paper_code(B, d, beta, chunk):
    z1, z2, y = make(B, d, 7)
    check(
        L.hscl(z1, z2, y, beta=beta, t=0.5, positives="labels", chunk_size=chunk),
        R.ref_hscl_all(z1, z2, y, t=0.5, beta=beta),
        [z1, z2],
    )


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_label_positives_without_the_label_table(monkeypatch, beta):
    """Beyond its size limit the kernel builds each chunk's same-label columns itself, padded with
    the label's first column as the table is: the same loss and gradients."""
    from hardneg.losses import kernel

    monkeypatch.setattr(kernel, "_LABEL_TABLE", 1)
    z1, z2, y = make(12, 8, 7)
    check(
        L.hscl(z1, z2, y, beta=beta, t=0.5, positives="labels", chunk_size=5),
        R.ref_hscl_all(z1, z2, y, t=0.5, beta=beta),
        [z1, z2],
    )
    check(L.supcon(z1, z2, y, t=0.5, chunk_size=5), R.ref_supcon(z1, z2, y, t=0.5), [z1, z2])


@pytest.mark.parametrize("B,d", CASES)
@pytest.mark.parametrize("t", [0.07, 0.5])
@pytest.mark.parametrize("chunk", [None, 4])
def test_supcon(B, d, t, chunk):
    z1, z2, y = make(B, d, 8)
    check(L.supcon(z1, z2, y, t=t, chunk_size=chunk), R.ref_supcon(z1, z2, y, t=t), [z1, z2])


def test_supcon_single_view():
    z1, _, y = make(10, 4, 9)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    check(L.supcon(z1, None, y, t=0.2), R.ref_supcon(z1, None, y, t=0.2), [z1])


@pytest.mark.parametrize("B,d", CASES)
def test_decoupled(B, d):
    z1, z2, _ = make(B, d, 10)
    check(L.decoupled(z1, z2, t=0.1), R.ref_decoupled(z1, z2, t=0.1), [z1, z2])


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [None, 7, 33])
def test_kernel_losses_at_batch_scale(chunk):
    """n = 80 anchors, 5 classes, chunks that do not divide n: the debiased tilt with its clamp
    binding for part of the anchors, H-SCL's all-pairs positives and SupCon."""
    z1, z2, y = make(40, 16, 21, n_classes=5)
    assert 0 < len(clamped_anchors(z1, z2, beta=1.0, tau_plus=0.7, t=0.5)) < 80, "fixture: the clamp binds for some"
    check(
        L.hucl(z1, z2, beta=1.0, tau_plus=0.7, t=0.5, chunk_size=chunk),
        R.ref_infonce(z1, z2, t=0.5, beta=1.0, tau_plus=0.7),
        [z1, z2],
    )
    check(
        L.hscl(z1, z2, y, beta=1.5, t=0.5, positives="labels", chunk_size=chunk),
        R.ref_hscl_all(z1, z2, y, t=0.5, beta=1.5),
        [z1, z2],
    )
    check(L.supcon(z1, z2, y, t=0.1, chunk_size=chunk), R.ref_supcon(z1, z2, y, t=0.1), [z1, z2])


@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_triplet(labelled, beta):
    z1, z2, y = make(7, 4, 11)
    y = y if labelled else None
    check(
        L.triplet(z1, z2, y, margin=0.3, beta=beta, chunk_size=3),
        R.ref_triplet_family(z1, z2, y, lambda dp, dn: F.relu(0.3 + dp - dn), beta=beta),
        [z1, z2],
    )


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_margin(beta):
    z1, z2, y = make(7, 4, 12)
    h = lambda dp, dn: F.relu(0.2 + dp - 1.2) + F.relu(0.2 + 1.2 - dn)  # noqa: E731
    check(L.margin(z1, z2, y, beta=beta), R.ref_triplet_family(z1, z2, y, h, beta=beta), [z1, z2])


@pytest.mark.parametrize("beta", [1.0, 1.5])  # β = 1 takes π̃ from π (its own kernel path)
def test_detached_weights_change_gradient_not_value(beta):
    z1, z2, y = make(8, 5, 13)
    a = L.hscl(z1, z2, y, beta=beta, positives="view")
    b = L.hscl(z1, z2, y, beta=beta, positives="view", detach_weights=True)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a, [z1])[0]
    gb = torch.autograd.grad(b, [z1])[0]
    assert (ga - gb).abs().max() > 1e-6
    # detached reference: the same literal formula with π computed from detached similarities
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    s = z @ z.T
    yy = torch.cat([y, y])
    n = len(z)
    tot = 0.0
    for i in range(n):
        p = (i + n // 2) % n
        negs = [j for j in range(n) if yy[j] != yy[i]]
        w = torch.stack([torch.exp(beta * s[i, j].detach() / 0.5) for j in negs])
        e = torch.stack([torch.exp(s[i, j] / 0.5) for j in negs])
        G = (n - 2) * (w * e).sum() / w.sum()
        pos = torch.exp(s[i, p] / 0.5)
        tot = tot - torch.log(pos / (pos + G))
    torch.testing.assert_close(gb, torch.autograd.grad(tot / n, [z1])[0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_and_recompute_backward(reduction):
    """reduction='none' uses the recompute-in-backward path; weight the per-anchor losses."""
    z1, z2, y = make(9, 4, 14)
    w = torch.linspace(0.5, 2.0, 18, dtype=torch.float64)
    ours = L.hscl(z1, z2, y, beta=1.0, positives="view", reduction=reduction, chunk_size=4)
    ours = (ours * w).sum() if reduction == "none" else ours
    mean = L.hscl(z1, z2, y, beta=1.0, positives="view")
    if reduction == "sum":
        torch.testing.assert_close(ours, mean * 18)
        return
    ref_terms = []
    for i in range(18):  # per-anchor literal reference through the mean of one-hot weights
        ref_terms.append(L.hscl(z1, z2, y, beta=1.0, positives="view", reduction="none")[i])
    ref = sum(wi * ti for wi, ti in zip(w, ref_terms))
    torch.testing.assert_close(ours, ref)
    g1 = torch.autograd.grad(ours, [z1, z2])
    # independent: literal loop reference, weighted per anchor
    zz = F.normalize(torch.cat([z1, z2]), dim=1)
    s = zz @ zz.T
    yy = torch.cat([y, y])
    tot = 0.0
    for i in range(18):
        p = (i + 9) % 18
        negs = [j for j in range(18) if yy[j] != yy[i]]
        imp = torch.stack([torch.exp(1.0 * s[i, j] / 0.5) for j in negs])
        e = torch.stack([torch.exp(s[i, j] / 0.5) for j in negs])
        G = 16 * (imp * e).sum() / imp.sum()
        pos = torch.exp(s[i, p] / 0.5)
        tot = tot - w[i] * torch.log(pos / (pos + G))
    g2 = torch.autograd.grad(tot, [z1, z2])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("loss", ["supcon", "hscl_all", "hucl"])
def test_none_reduction_recompute_backward_matches_reference(loss):
    """Per-anchor losses (recompute-in-backward path) weighted by w match the literal reference."""
    z1, z2, y = make(7, 4, 15)
    n = 14
    w = torch.linspace(0.2, 1.5, n, dtype=torch.float64)
    if loss == "supcon":
        per = L.supcon(z1, z2, y, t=0.3, reduction="none", chunk_size=4)
        ref = R.ref_supcon(z1, z2, y, t=0.3)  # mean of per-anchor terms
    elif loss == "hscl_all":
        per = L.hscl(z1, z2, y, beta=1.0, reduction="none", chunk_size=4)
        yy = torch.cat([y, y])
        npairs = sum(int((yy == yy[i]).sum()) - 1 for i in range(n))
        per = per * n / npairs  # per-anchor sums over positives; the mean divides by #pairs
        ref = R.ref_hscl_all(z1, z2, y, t=0.5, beta=1.0)
    else:
        per = L.hucl(z1, z2, beta=1.0, tau_plus=0.1, reduction="none", chunk_size=4)
        ref = R.ref_infonce(z1, z2, t=0.5, beta=1.0, tau_plus=0.1)
    torch.testing.assert_close(per.mean(), ref, rtol=1e-9, atol=1e-12)
    g_per = torch.autograd.grad((per * w).sum(), [z1, z2])
    # reference gradient of Σ w_i ℓ_i: finite differences would be loose; use autograd on the
    # literal per-anchor reference by re-weighting its anchors one at a time.
    g_ref = [torch.zeros_like(z1), torch.zeros_like(z2)]
    for i in range(n):
        zi1, zi2 = z1, z2
        if loss == "supcon":
            li = _literal_supcon_anchor(zi1, zi2, y, 0.3, i)
        elif loss == "hscl_all":
            li = _literal_hscl_anchor(zi1, zi2, y, 1.0, 0.5, i) * n / npairs
        else:
            li = _literal_hucl_anchor(zi1, zi2, 1.0, 0.1, 0.5, i)
        for acc, g in zip(g_ref, torch.autograd.grad(w[i] * li, [z1, z2])):
            acc += g
    for a, b in zip(g_per, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def _literal_supcon_anchor(z1, z2, y, t, i):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    yy = torch.cat([y, y])
    n = len(z)
    P = [p for p in range(n) if p != i and yy[p] == yy[i]]
    denom = sum(torch.exp(z[i] @ z[a] / t) for a in range(n) if a != i)
    return -sum(torch.log(torch.exp(z[i] @ z[p] / t) / denom) for p in P) / len(P)


def _literal_hscl_anchor(z1, z2, y, beta, t, i):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    yy = torch.cat([y, y])
    n = len(z)
    negs = [j for j in range(n) if yy[j] != yy[i]]
    imp = [torch.exp(beta * (z[i] @ z[j]) / t) for j in negs]
    wm = sum(a * torch.exp(z[i] @ z[j] / t) for a, j in zip(imp, negs)) / sum(imp)
    tot = 0.0
    for p in range(n):
        if p != i and yy[p] == yy[i]:
            pos = torch.exp(z[i] @ z[p] / t)
            tot = tot - torch.log(pos / (pos + (n - 2) * wm))
    return tot


def _literal_hucl_anchor(z1, z2, beta, tau, t, i):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z)
    p = (i + n // 2) % n
    negs = [j for j in range(n) if j not in (i, p)]
    imp = torch.stack([torch.exp(beta * (z[i] @ z[j]) / t) for j in negs])
    e = torch.stack([torch.exp(z[i] @ z[j] / t) for j in negs])
    N = n - 2
    G = N * (imp * e).sum() / imp.sum()
    pos = torch.exp(z[i] @ z[p] / t)
    G = torch.clamp((G - tau * N * pos) / (1 - tau), min=N * torch.exp(torch.tensor(-1 / t, dtype=G.dtype)))
    return -torch.log(pos / (pos + G))


def _ref_label_pairs_debiased(z, y, *, beta, tau_plus, t, clamped=None):
    """Mean over every (anchor, same-label positive) pair of the debiased, tilted InfoNCE term with
    other-label negatives (the H-SCL paper code's pairs form, Chuang et al.'s estimator), looping the
    one-positive literal reference over the pairs."""
    n = z.shape[0]
    N = n - 2
    terms = []
    for i in range(n):
        valid = [[y[j] != y[i] and j != i for j in range(n)]]
        for p in range(n):
            if p != i and y[p] == y[i]:
                terms.append(NR.ref_weighted_infonce_t(z[i : i + 1], z, [p], valid, beta=beta, t=t, N=N,
                                                        tau_plus=tau_plus, clamped=clamped))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("beta", [0.5, 1.0])
@pytest.mark.parametrize("tau", [0.05, 0.8])
def test_label_pairs_debiased(beta, tau):
    # one positive per anchor (its other view: six classes of one sample each); τ⁺ = 0.8 clamps some
    # anchors' estimator (γ = 0 with δ ≠ 0 in the kernel's gradient tile), τ⁺ = 0.05 none
    z1, z2, y = make(6, 4, 7, n_classes=6)
    z = torch.cat([z1, z2])
    yy = torch.cat([y, y])
    n = z.shape[0]
    ours = L.weighted_info_nce(z, z, t=0.5, positives="labels", positive_reduce="pairs", negatives="other_labels",
                               q_labels=yy, k_labels=yy, self_index=torch.arange(n), beta=beta, tau_plus=tau,
                               n_neg=n - 2, chunk_size=5)
    clamped: list[int] = []
    ref = _ref_label_pairs_debiased(z, yy.tolist(), beta=beta, tau_plus=tau, t=0.5, clamped=clamped)
    assert (len(clamped) > 0) == (tau > 0.5), "fixture: the clamp binds for τ⁺ = 0.8 only"
    check(ours, ref, [z1, z2])


@pytest.mark.parametrize("block", [1, 80])  # 24 candidates: blocks of 1 row, of 3 rows
def test_tilt_passes_block_by_block(monkeypatch, block):
    # runs of elementwise passes work on blocks of rows sized for the cache; blocks of one row and of
    # a few rows (not dividing the chunk) give the literal reference's values and gradients
    from hardneg.losses import kernel

    monkeypatch.setattr(kernel, "_BLOCK", block)
    z1, z2, y = make(12, 8, 11)
    check(L.hucl(z1, z2, beta=1.0, t=0.5, chunk_size=7), R.ref_infonce(z1, z2, t=0.5, beta=1.0), [z1, z2])
    check(L.hscl(z1, z2, y, beta=1.0, t=0.5, chunk_size=7), R.ref_hscl_all(z1, z2, y, t=0.5, beta=1.0), [z1, z2])
    check(L.ucl(z1, z2, t=0.5, chunk_size=7), R.ref_infonce(z1, z2, t=0.5), [z1, z2])
    check(L.supcon(z1, z2, y, t=0.5, chunk_size=7), R.ref_supcon(z1, z2, y, t=0.5), [z1, z2])
    check(L.scl(z1, z2, y, t=0.5, chunk_size=7), R.ref_infonce(z1, z2, t=0.5, labels=y), [z1, z2])


def test_the_stored_gradients_survive_a_second_backward_and_scale_with_the_upstream_gradient():
    """loss.backward() hands the kernel's stored dQ, dK on unscaled: a retained graph's second
    backward gives the same gradient again, and a scaled loss scales it (against the float64
    reference's gradient)."""
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = L.hucl(a1, a2, beta=1.0, t=0.5)
    loss.backward(retain_graph=True)
    first = a1.grad.clone()
    a1.grad = a2.grad = None
    loss.backward(retain_graph=True)
    torch.testing.assert_close(a1.grad, first, rtol=0, atol=0)
    a1.grad = a2.grad = None
    (2.5 * loss).backward()
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ref, = torch.autograd.grad(R.ref_infonce(r1, r2, t=0.5, beta=1.0), r1)
    torch.testing.assert_close(first, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a1.grad, 2.5 * ref, rtol=1e-9, atol=1e-12)
