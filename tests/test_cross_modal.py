"""Cross-modal (two-tower) strategies against literal float64 references."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardneg.integrations.open_clip import ClipLoss, cross_modal_strategy
from hardneg.losses.candidates import Relations
from hardneg.negatives import Strategy, TopK
from hardneg.negatives.cross_modal import CrossModal, CrossModalClusters, CrossModalQueue, LogitScale, pair_ids
from tests.negatives_reference import ref_weighted_infonce


def literal_clip(img, txt, scale):
    """open_clip's ClipLoss, written out: logits = scale · I Tᵀ of unit rows, mean of the two
    cross-entropies with the diagonal as targets (float64, loops over anchors)."""
    I, T = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    B = I.shape[0]
    total_i = total_t = 0.0
    for i in range(B):
        li = torch.stack([scale * (I[i] @ T[j]) for j in range(B)])
        lt = torch.stack([scale * (T[i] @ I[j]) for j in range(B)])
        total_i = total_i - (li[i] - torch.logsumexp(li, 0))
        total_t = total_t - (lt[i] - torch.logsumexp(lt, 0))
    return (total_i / B + total_t / B) / 2


def literal_cross_modal(img, txt, t, beta=0.0, allowed=None, extra=None, extra_owner=None):
    """Tilted cross-modal InfoNCE, literal: anchor = each image then each text; candidates = the
    other modality's rows (plus ``extra`` text rows for image anchors, owned per ``extra_owner``);
    ``allowed[a][b]`` False removes text b from image a's negatives and image a from text b's."""
    I, T = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    E = None if extra is None else F.normalize(extra, dim=1)
    B = I.shape[0]
    losses = []
    for a in range(2 * B):
        q = I[a] if a < B else T[a - B]
        i = a % B
        others = T if a < B else I
        sp = q @ others[i] / t
        negs = [q @ others[j] for j in range(B) if j != i and (allowed is None or allowed[i][j])]
        if a < B and E is not None:
            negs += [q @ E[r] for r in range(E.shape[0]) if extra_owner is None or extra_owner[r] in (-1, i)]
        s = torch.stack(negs)
        w = torch.softmax(beta * s / t, 0)
        neg = len(negs) * (w * torch.exp(s / t)).sum()
        losses.append(-(sp - torch.log(torch.exp(sp) + neg)))
    return torch.stack(losses).mean()


def _feats(B=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(B, d, generator=g, dtype=torch.float64)
    txt = (img + 0.8 * torch.randn(B, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    return img.requires_grad_(True), txt


def test_clip_loss_equals_literal_clip_values_and_gradients_float64():
    img, txt = _feats()
    scale = LogitScale(temperature=0.2).double()
    loss = ClipLoss()(img, txt, scale())
    g = torch.autograd.grad(loss, [img, txt, scale.log_scale])
    img2, txt2 = img.detach().clone().requires_grad_(True), txt.detach().clone().requires_grad_(True)
    p2 = scale.log_scale.detach().clone().requires_grad_(True)
    ref = literal_clip(img2, txt2, p2.exp())
    gr = torch.autograd.grad(ref, [img2, txt2, p2])
    assert torch.allclose(loss, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(g, gr):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_clip_loss_against_torch_cross_entropy_float32():
    img, txt = _feats(B=16, d=8, seed=3)
    I, T = F.normalize(img.detach().float(), dim=1), F.normalize(txt.detach().float(), dim=1)
    logits = 14.0 * I @ T.T
    lab = torch.arange(16)
    ref = (F.cross_entropy(logits, lab) + F.cross_entropy(logits.T, lab)) / 2
    out = ClipLoss()(I, T, 14.0, output_dict=True)
    assert torch.allclose(out["contrastive_loss"], ref, rtol=1e-5)


def test_logit_scale_clamped_at_100_as_clip():
    s = LogitScale()
    assert math.isclose(float(s().detach()), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        s.log_scale.fill_(10.0)
    assert math.isclose(float(s().detach()), 100.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="max_logit_scale"):
        LogitScale(temperature=0.001)
    with pytest.raises(ValueError, match="'temperature' .* got -0.07"):
        LogitScale(temperature=-0.07)
    for old in ("init_temperature", "max_scale"):
        with pytest.raises(TypeError, match=old):
            LogitScale(**{old: 0.1})


def test_tilted_cross_modal_matches_literal_reference_with_gradients():
    img, txt = _feats(B=5, d=4, seed=1)
    st = Strategy(source=CrossModal(), beta=0.7, temperature=0.3)
    loss = st(img, txt)
    g = torch.autograd.grad(loss, [img, txt])
    i2, t2 = img.detach().clone().requires_grad_(True), txt.detach().clone().requires_grad_(True)
    ref = literal_cross_modal(i2, t2, 0.3, beta=0.7)
    gr = torch.autograd.grad(ref, [i2, t2])
    assert torch.allclose(loss, ref, rtol=1e-9)
    for a, b in zip(g, gr):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-10)


def test_logit_scale_equals_fixed_temperature_with_a_selecting_weighting():
    # top-k sees cosines and t = 1/logit_scale: the same loss as a fixed temperature
    img, txt = _feats(B=8, d=6, seed=2)
    a = Strategy(source=CrossModal(), weighting=TopK(3), beta=0.5, temperature=0.25)(img, txt)
    b = Strategy(source=CrossModal(), weighting=TopK(3), beta=0.5)(img, txt, logit_scale=torch.tensor(4.0))
    assert torch.allclose(a, b, rtol=1e-10)


def test_images_never_see_images_numpy_reference():
    img, txt = _feats(B=6, d=5, seed=4)
    loss = Strategy(source=CrossModal(), temperature=0.5)(img, txt)
    B = 6
    q = np.concatenate([img.detach().numpy(), txt.detach().numpy()])
    valid = [[(i < B) != (j < B) and j != (i + B) % (2 * B) for j in range(2 * B)] for i in range(2 * B)]
    pos = [(i + B) % (2 * B) for i in range(2 * B)]
    assert math.isclose(float(loss.detach()), ref_weighted_infonce(q, q, pos, valid, t=0.5), rel_tol=1e-9)


def test_pair_ids_merge_same_image_and_identical_captions():
    ids = pair_ids([7, 7, 3, 5, 9], ["a red circle", "two shapes", "A  red circle", "a blue square", "x"])
    # pairs 0, 1 share image 7; pair 2's caption equals pair 0's: one group; 3 and 4 alone
    assert ids.tolist() == [0, 0, 0, 1, 2]


def test_identical_captions_are_not_negatives():
    img, txt = _feats(B=5, d=4, seed=5)
    captions = ["a", "b", "a", "c", "d"]
    ids = pair_ids(list(range(5)), captions)
    loss = Strategy(source=CrossModal(), temperature=0.4)(img, txt, ids=ids)
    allowed = [[ids[i] != ids[j] for j in range(5)] for i in range(5)]
    ref = literal_cross_modal(img, txt, 0.4, allowed=allowed)
    assert torch.allclose(loss, ref, rtol=1e-9)


def test_per_anchor_explicit_negatives_belong_to_their_image_only():
    img, txt = _feats(B=4, d=5, seed=6)
    g = torch.Generator().manual_seed(9)
    neg = torch.randn(4, 2, 5, generator=g, dtype=torch.float64)
    loss = ClipLoss(temperature=0.5)(img, txt, 3.0, negatives=neg)
    owner = [b for b in range(4) for _ in range(2)]
    ref = literal_cross_modal(img, txt, 1 / 3.0, extra=neg.reshape(8, 5), extra_owner=owner)
    assert torch.allclose(loss, ref, rtol=1e-9)
    shared = ClipLoss()(img, txt, 3.0, negatives=neg.reshape(8, 5))
    ref_shared = literal_cross_modal(img, txt, 1 / 3.0, extra=neg.reshape(8, 5))
    assert torch.allclose(shared, ref_shared, rtol=1e-9)
    assert not torch.allclose(loss, shared)


def test_cross_view_rule_in_relations():
    rel = Relations(
        m=4, self_index=torch.tensor([0, 1]), q_view=torch.tensor([0, 1]), k_view=torch.tensor([0, 1, 1, 0]),
        cross_view=True,
    )
    expected = [[False, True, True, False], [True, False, False, True]]
    assert rel.valid(slice(0, 2), torch.device("cpu")).tolist() == expected
    cols = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    assert rel.valid_at(torch.tensor([0, 1]), cols).tolist() == expected


def test_image_queue_gives_text_anchors_past_images():
    img, txt = _feats(B=4, d=5, seed=7)
    img2, txt2 = _feats(B=4, d=5, seed=8)
    st = Strategy(source=[CrossModal(), CrossModalQueue(8, modality="image")], temperature=0.5)
    st(img, txt)
    loss = st(img2, txt2)
    # step 2: text anchors see the batch images and the 4 queued images; image anchors see texts only
    I, T, Q = (F.normalize(x.detach(), dim=1) for x in (img2, txt2, img))
    q = torch.cat([I, T]).numpy()
    k = torch.cat([I, T, Q]).numpy()
    B = 4
    valid = [[((i < B) != (j < B) if j < 2 * B else i >= B) and j not in (i, (i + B) % (2 * B)) for j in range(3 * B)]
             for i in range(2 * B)]
    pos = [(i + B) % (2 * B) for i in range(2 * B)]
    assert math.isclose(float(loss.detach()), ref_weighted_infonce(q, k, pos, valid, t=0.5), rel_tol=1e-9)
    assert st.last_diagnostics["queue_fill"] == 1.0


def test_cross_modal_clusters_assign_each_sample_its_text_cluster():
    img, txt = _feats(B=12, d=4, seed=10)
    w = CrossModalClusters(n_clusters=3, every=1, memory=12, bonus=0.5, gamma=1.0)
    st = Strategy(source=CrossModal(), weighting=w, temperature=0.5)
    loss = st(img, txt)
    T = F.normalize(txt.detach(), dim=1)
    tc = (T @ w.centroids.double().T).argmax(1)
    assert w._kc.tolist() == torch.cat([tc, tc]).tolist()  # an image takes its caption's cluster
    # the loss equals the literal reference with log-weights [c_i != c_j](bonus + γ s/t)
    I = F.normalize(img.detach(), dim=1)
    q = torch.cat([I, T])
    S = q @ q.T
    c = torch.cat([tc, tc])
    logw = ((c[:, None] != c[None, :]).double() * (0.5 + S / 0.5)).numpy()
    B = 12
    valid = [[(i < B) != (j < B) and j != (i + B) % (2 * B) for j in range(2 * B)] for i in range(2 * B)]
    pos = [(i + B) % (2 * B) for i in range(2 * B)]
    ref = ref_weighted_infonce(q.numpy(), q.numpy(), pos, valid, logw=logw, t=0.5)
    assert math.isclose(float(loss.detach()), ref, rel_tol=1e-9)
    assert st.last_diagnostics["cluster_refreshes"] == 1.0


def test_cross_modal_strategy_from_names_and_errors():
    s = cross_modal_strategy("topk", k=4)
    assert isinstance(s.in_batch, CrossModal) and s.weightings[0].k == 4
    s2 = cross_modal_strategy({"name": "ucl", "weighting": [{"kind": "cross_modal_cluster", "n_clusters": 2}]})
    assert isinstance(s2.weightings[0], CrossModalClusters)
    with pytest.raises(ValueError, match="cross_modal"):
        cross_modal_strategy(Strategy())
    with pytest.raises(ValueError, match="both modalities"):
        Strategy(source=CrossModal(), family="supcon")(torch.randn(4, 3), labels=torch.arange(4))
    with pytest.raises(ValueError, match="logit_scale"):
        Strategy(source=CrossModal())(torch.randn(4, 3), torch.randn(4, 3), logit_scale=torch.tensor(-1.0))


@pytest.mark.parametrize("beta", [0.0, 0.8])
def test_logit_scale_gradient_in_the_single_modality_strategy(beta):
    from tests.reference_losses import ref_infonce

    img, txt = _feats(B=5, d=4, seed=11)
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    loss = Strategy(beta=beta)(img, txt, logit_scale=s)
    g = torch.autograd.grad(loss, [img, txt, s])
    i2, t2 = img.detach().clone().requires_grad_(True), txt.detach().clone().requires_grad_(True)
    s2 = s.detach().clone().requires_grad_(True)
    ref = ref_infonce(i2, t2, t=1 / s2, beta=beta, nominal_n=False)
    gr = torch.autograd.grad(ref, [i2, t2, s2])
    assert torch.allclose(loss, ref, rtol=1e-10)
    for a, b in zip(g, gr):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-10)


def test_cross_modal_clusters_on_an_anchor_subset_equal_those_rows_of_the_whole_batch():
    """A distributed step computes this process's anchors against the global candidates (rank 1 of 2:
    samples 8..15, both modalities). Each anchor gets the cluster it has in the whole-batch call, so
    its loss and gradients are those rows of the one-process result."""
    B, b = 16, 8
    img, txt = _feats(B=B, d=4, seed=21)
    rows = torch.cat([torch.arange(b, B), torch.arange(b, B) + B])  # hardneg.distributed.anchor_rows, rank 1

    def run(anchor_rows):
        w = CrossModalClusters(n_clusters=4, every=1, memory=B, bonus=0.5, gamma=1.0)
        st = Strategy(source=CrossModal(), weighting=w, temperature=0.5, reduction="none")
        i, t = img.detach().clone().requires_grad_(True), txt.detach().clone().requires_grad_(True)
        losses = st(i, t, anchor_rows=anchor_rows)
        return w, losses, i, t

    w_all, whole, i1, t1 = run(None)
    w_sub, part, i2, t2 = run(rows)
    torch.testing.assert_close(part, whole[rows], rtol=1e-12, atol=1e-12)
    # an image takes its caption's cluster (the literal assignment of the texts to the centroids)
    # in both calls
    tc = (F.normalize(txt.detach(), dim=1) @ w_all.centroids.double().T).argmax(1)
    assert w_all._kc.tolist() == torch.cat([tc, tc]).tolist() == w_sub._kc.tolist()
    assert w_sub._qc.tolist() == torch.cat([tc, tc])[rows].tolist()
    g_whole = torch.autograd.grad(whole[rows].sum(), [i1, t1])
    g_part = torch.autograd.grad(part.sum(), [i2, t2])
    for a, c in zip(g_part, g_whole):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_calibrator_never_trains_on_invalid_draws():
    """Cross-modal, B = 3: an anchor has 2 negatives (the other modality but its partner), fewer than
    neg_per_anchor = 4. The calibrator draws exactly those 2 — never itself, its partner or a row of
    its own modality — counts every anchor as drawn short, and its BCE is the literal one over the
    6 positive pairs and the 12 negative pairs."""
    from hardneg.negatives import Calibrated

    img, txt = _feats(B=3, d=5, seed=31)
    cal = Calibrated(hidden=8, neg_per_anchor=4, seed=0, dim=5)
    model0 = copy.deepcopy(cal.model)
    st = Strategy(source=CrossModal(), weighting=cal, temperature=0.5)
    st.train()
    st(img, txt)
    B = 3
    z = F.normalize(torch.cat([img, txt]).detach(), dim=1).float()
    pos = [(a + B) % (2 * B) for a in range(2 * B)]
    negs = [[j for j in range(2 * B) if (j < B) != (a < B) and j != pos[a]] for a in range(2 * B)]
    with torch.no_grad():
        lp = model0.pair_logits(z, z[pos])
        qa = torch.stack([z[a] for a in range(2 * B) for _ in negs[a]])
        kn = torch.stack([z[j] for a in range(2 * B) for j in negs[a]])
        ln = model0.pair_logits(qa, kn)
        ref = F.binary_cross_entropy_with_logits(lp, torch.ones_like(lp)) + F.binary_cross_entropy_with_logits(
            ln, torch.zeros_like(ln))
    assert st.last_diagnostics["calibrator_bce"] == pytest.approx(float(ref), rel=1e-5)
    assert st.last_diagnostics["calibrator_short_anchors"] == 6.0
    # the draws themselves, on a larger batch: distinct, valid, and as many as asked for
    from hardneg.negatives.context import StepContext

    i8, t8 = _feats(B=8, d=5, seed=32)
    anchors, cands = CrossModal().build(F.normalize(i8.detach(), dim=1), F.normalize(t8.detach(), dim=1), None, None)
    ctx = StepContext.build(anchors, cands, 0.5, 0.0, 0)
    cols, ok = cal.draw_negatives(ctx, torch.arange(16))
    assert bool(ok.all()) and cols.shape == (16, 4)
    for a in range(16):
        assert len(set(cols[a].tolist())) == 4
        assert all((j < 8) != (a < 8) and j != (a + 8) % 16 for j in cols[a].tolist())
