"""Per-pixel contrast: DenseContrast against literal float64 per-pixel loops; pixel components
(neighbourhood, input similarity, proximity, class memory), anchor sampling and correspondences
against literal rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hardneg.dense import (
    DenseContrast,
    correspondence_from_coords,
    identity_correspondence,
    random_flip_crop,
    sample_anchors,
)
from hardneg.negatives import StepContext, Strategy, TopK, from_config
from hardneg.negatives.pixels import ClassMemory, InputSimilarityFilter, NeighbourhoodFilter, PixelGrid, Proximity

T = 0.5


def _maps(B=2, C=3, H=3, W=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    f2 = f1 + 0.5 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    return f1, f2


def _pixels(f):
    """[(image, y, x, vector)] image-major, row-major."""
    B, _, H, W = f.shape
    return [(b, y, x, f[b, :, y, x]) for b in range(B) for y in range(H) for x in range(W)]


def _ref_two_view(f1, f2, radius=None):
    """Literal loop: every pixel of both views is an anchor; positive the same pixel of the other
    view; negatives every other pixel of both views except those of the anchor's image within
    ``radius``; InfoNCE with the positive in the denominator, mean over anchors."""
    rows = [(v, b, y, x, z / z.norm()) for v, f in enumerate((f1, f2)) for (b, y, x, z) in _pixels(f)]
    total = 0.0
    for va, ba, ya, xa, za in rows:
        pos = None
        negs = []
        for vc, bc, yc, xc, zc in rows:
            same_pixel = (bc, yc, xc) == (ba, ya, xa)
            if same_pixel and vc == va:
                continue
            if same_pixel:
                pos = za @ zc
                continue
            if radius is not None and bc == ba and (yc - ya) ** 2 + (xc - xa) ** 2 <= radius**2:
                continue
            negs.append(za @ zc)
        den = torch.exp(pos / T) + sum(torch.exp(s / T) for s in negs)
        total = total - torch.log(torch.exp(pos / T) / den)
    return total / len(rows)


@pytest.mark.parametrize("radius", [None, 1.0, 1.5])
def test_two_view_dense_loss_equals_per_pixel_loop(radius):
    f1, f2 = _maps()
    a1, a2 = f1.clone().requires_grad_(), f2.clone().requires_grad_()
    filters = None if radius is None else [NeighbourhoodFilter(radius)]
    dc = DenseContrast(Strategy(temperature=T, filters=filters), anchors_per_image=None)
    loss = dc(a1, a2)
    b1, b2 = f1.clone().requires_grad_(), f2.clone().requires_grad_()
    ref = _ref_two_view(b1, b2, radius)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    loss.backward()
    ref.backward()
    assert torch.allclose(a1.grad, b1.grad, atol=1e-10) and torch.allclose(a2.grad, b2.grad, atol=1e-10)


def test_neighbourhood_then_topk_equals_per_pixel_loop():
    """Filters first, then any π shape: the 3 most similar candidates left by the neighbourhood rule."""
    f1, f2 = _maps(seed=4)
    a1 = f1.clone().requires_grad_()
    s = Strategy(temperature=T, filters=[NeighbourhoodFilter(1.0)], weighting=[TopK(k=3)])
    loss = DenseContrast(s, anchors_per_image=None)(a1, f2)
    rows = [(v, b, y, x, z / z.norm()) for v, f in enumerate((f1, f2)) for (b, y, x, z) in _pixels(f)]
    total = 0.0
    for va, ba, ya, xa, za in rows:
        negs, pos = [], None
        for vc, bc, yc, xc, zc in rows:
            if (bc, yc, xc) == (ba, ya, xa):
                if vc != va:
                    pos = float(za @ zc)
                continue
            if bc == ba and (yc - ya) ** 2 + (xc - xa) ** 2 <= 1:
                continue
            negs.append(float(za @ zc))
        top = sorted(negs)[-3:]
        total += -pos / T + math.log(math.exp(pos / T) + sum(math.exp(v / T) for v in top))
    assert loss.item() == pytest.approx(total / len(rows), rel=1e-10)


def test_label_map_supcon_equals_per_pixel_loop():
    f1, _ = _maps(seed=1)
    labels = torch.tensor([[[0, 0, 1, 1], [0, 2, 1, -1], [2, 2, 1, 1]], [[1, 1, 0, 0], [3, 3, 0, 0], [3, 1, 1, 0]]])
    a = f1.clone().requires_grad_()
    loss = DenseContrast(Strategy(family="supcon", temperature=T), anchors_per_image=None)(a, labels=labels)
    # literal SupCon L_out over every pixel of known label; the denominator: every other pixel
    b = f1.clone().requires_grad_()
    px = [(bb, y, x, z / z.norm(), int(labels[bb, y, x])) for (bb, y, x, z) in _pixels(b)]
    anchors = [p for p in px if p[4] != -1]
    total, n = 0.0, 0
    for bi, yi, xi, zi, li in anchors:
        others = [p for p in px if (p[0], p[1], p[2]) != (bi, yi, xi)]
        poss = [p for p in others if p[4] == li]
        if not poss:
            continue
        log_den = torch.logsumexp(torch.stack([zi @ p[3] / T for p in others]), 0)
        total = total - sum(zi @ p[3] / T - log_den for p in poss) / len(poss)
        n += 1
    ref = total / n
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    loss.backward()
    ref.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_correspondence_picks_the_positive_pixel():
    """Views of different sizes: the positive of f1's pixel p is f2's pixel corr[p]."""
    g = torch.Generator().manual_seed(3)
    f1 = torch.randn(1, 2, 2, 2, generator=g, dtype=torch.float64)
    f2 = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    corr = torch.tensor([[[[0, 2], [1, 1]], [[-1, -1], [2, 0]]]])
    dc = DenseContrast(Strategy(temperature=T, reduction="none"), anchors_per_image=None)
    out = dc(f1, f2, correspondence=corr)
    b, y, x = dc.last_anchors
    assert [(int(yy), int(xx)) for yy, xx in zip(y, x)] == [(0, 0), (0, 1), (1, 1)]  # (1, 0) has no match
    z1 = [f1[0, :, 0, 0], f1[0, :, 0, 1], f1[0, :, 1, 1]]
    z2 = [f2[0, :, 0, 2], f2[0, :, 1, 1], f2[0, :, 2, 0]]
    rows = [z / z.norm() for z in z1 + z2]
    for i in range(6):
        pos = (i + 3) % 6
        s = [float(rows[i] @ rows[j]) / T for j in range(6)]
        ref = -s[pos] + math.log(sum(math.exp(s[j]) for j in range(6) if j != i))
        assert out[i].item() == pytest.approx(ref, rel=1e-10)


# ------------------------------------------------------------------------------------------------
# components
# ------------------------------------------------------------------------------------------------


def _ctx(q_ids, k_ids, q=None, k=None, grid=None):
    n, m = len(q_ids), len(k_ids)
    q = torch.zeros(n, 2) if q is None else q
    k = torch.zeros(m, 2) if k is None else k
    return StepContext(q, k, None, torch.full((n,), -1), None, None, torch.tensor(q_ids), torch.tensor(k_ids),
                       None, 0.5, 0.0, 0, [("batch", 0, m)], grid=grid)


def test_pixel_grid_round_trip_and_unknown():
    g = PixelGrid(5, 7)
    img, y, x = torch.tensor([0, 3, 2]), torch.tensor([4, 0, 2]), torch.tensor([6, 1, 3])
    ids = g.encode(img, y, x)
    assert ids.tolist() == [(0 * 5 + 4) * 7 + 6, (3 * 5 + 0) * 7 + 1, (2 * 5 + 2) * 7 + 3]
    i2, y2, x2 = g.decode(torch.cat([ids, torch.tensor([-1])]))
    assert i2.tolist() == [0, 3, 2, -1] and y2.tolist() == [4, 0, 2, -1] and x2.tolist() == [6, 1, 3, -1]
    with pytest.raises(ValueError, match="grid"):
        g.encode(torch.tensor([0]), torch.tensor([5]), torch.tensor([0]))


@pytest.mark.parametrize("radius", [0.0, 1.0, 1.5, 2.3, 1e6])
def test_neighbourhood_filter_matches_literal_rule(radius):
    H, W = 4, 5
    rng = np.random.default_rng(0)
    k = [(int(rng.integers(3)), int(rng.integers(H)), int(rng.integers(W))) for _ in range(40)]
    where = {(a * H + b) * W + c: (a, b, c) for a, b, c in k}  # literal id -> (image, y, x)
    k_ids = [(a * H + b) * W + c for a, b, c in k] + [-1, -1]
    q_ids = k_ids[:10] + [-1]  # repeated ids among the candidates (two views, a memory) and unknown ones
    f = NeighbourhoodFilter(radius)
    ctx = _ctx(q_ids, k_ids, grid=PixelGrid(H, W))
    f.begin_step(ctx)
    got = f.drop(torch.zeros(len(q_ids), len(k_ids)), slice(0, len(q_ids)), ctx)
    for i, qi in enumerate(q_ids):
        for j, kj in enumerate(k_ids):
            if qi < 0 or kj < 0:
                want = False
            else:
                (ia, iy, ix), (ja, jy, jx) = where[qi], where[kj]
                want = ia == ja and (iy - jy) ** 2 + (ix - jx) ** 2 <= radius**2
            assert bool(got[i, j]) == want, (i, j)


def test_proximity_weights_and_config():
    H, W = 3, 3
    g = PixelGrid(H, W)
    ids = g.encode(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 0])).tolist()
    w = from_config({"name": "ucl", "weighting": [{"kind": "proximity", "radius": 1.5, "bonus": 3.0}]}).weightings[0]
    assert isinstance(w, Proximity)
    ctx = _ctx(ids, ids, grid=g)
    w.begin_step(ctx)
    lw = w.log_weights(torch.zeros(4, 4), slice(0, 4), ctx, torch.ones(4, 4, dtype=torch.bool))
    want = torch.tensor([[3, 3, 0, 0], [3, 3, 3, 0], [0, 3, 3, 0], [0, 0, 0, 3]], dtype=torch.float32)
    assert torch.equal(lw, want)


def test_input_similarity_filter_is_the_spectral_angle_rule():
    rng = np.random.default_rng(1)
    table = torch.from_numpy(rng.uniform(0.1, 1.0, size=(12, 6)))
    angle = 0.3
    f = InputSimilarityFilter(table, min_angle=angle)
    q_ids, k_ids = [0, 1, 2, -1], [0, 3, 4, 5, 6, 7, 8, 9, 10, 11, -1, 2]
    ctx = _ctx(q_ids, k_ids)
    f.begin_step(ctx)
    got = f.drop(torch.zeros(4, 12), slice(0, 4), ctx)
    for i, qi in enumerate(q_ids):
        for j, kj in enumerate(k_ids):
            if qi < 0 or kj < 0:
                assert not got[i, j]
                continue
            a, b = table[qi].numpy(), table[kj].numpy()
            sam = math.acos(min(1.0, float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))))
            assert bool(got[i, j]) == (sam < angle), (i, j, sam)
    with pytest.raises(ValueError, match="exactly one"):
        InputSimilarityFilter(table)


def test_input_similarity_filter_from_config_reads_a_npy_table(tmp_path):
    table = np.random.default_rng(2).uniform(size=(5, 3))
    np.save(tmp_path / "spectra.npy", table)
    s = from_config({"name": "ucl", "filters": [{"kind": "input_similarity", "features": str(tmp_path / "spectra.npy"),
                                                  "max_similarity": 0.9}]})
    f = s.filters[0]
    assert isinstance(f, InputSimilarityFilter) and f.max_similarity == 0.9
    ctx = _ctx([0, 1], [2, 3, 4])
    f.begin_step(ctx)
    u = table / np.linalg.norm(table, axis=1, keepdims=True)
    want = (u[[0, 1]] @ u[[2, 3, 4]].T) > 0.9
    assert np.array_equal(f.drop(torch.zeros(2, 3), slice(0, 2), ctx).numpy(), want)


def test_class_memory_is_a_fifo_per_class():
    mem = ClassMemory(num_classes=2, size=3, per_step=None)
    s = Strategy(family="supcon", source=[mem], temperature=T)
    g = torch.Generator().manual_seed(0)
    stored = {0: [], 1: []}
    for step in range(3):
        z = torch.randn(4, 5, generator=g)
        y = torch.tensor([0, 1, 0, -1]) if step != 1 else torch.tensor([1, 1, 0, 1])
        ids = torch.arange(4) + 10 * step
        s(z, labels=y, ids=ids)
        assert s.last_diagnostics["n_candidates_total"] == 4 + sum(len(v) for v in stored.values())
        for i in range(4):
            if int(y[i]) >= 0:
                stored[int(y[i])] = (stored[int(y[i])] + [(z[i] / z[i].norm(), int(ids[i]))])[-3:]
    for c in (0, 1):
        keys, labels, ids = mem.queues[c].contents()
        assert ids.tolist() == [i for _, i in stored[c]] and set(labels.tolist()) == {c}
        assert torch.allclose(keys, torch.stack([k for k, _ in stored[c]]), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# sampling and geometry
# ------------------------------------------------------------------------------------------------


def test_sample_anchors_uniform_and_hard():
    g = torch.Generator().manual_seed(0)
    eligible = torch.rand(2, 6, 6, generator=g) > 0.3
    b, y, x = sample_anchors(eligible, 8, generator=g)
    assert [int((b == i).sum()) for i in range(2)] == [8, 8]
    assert bool(eligible[b, y, x].all()) and len(set(zip(b.tolist(), y.tolist(), x.tolist()))) == 16
    hardness = torch.rand(2, 6, 6, generator=g)
    b, y, x = sample_anchors(eligible, 8, "hard", hardness, 0.5, g)
    for i in range(2):
        h = torch.where(eligible[i], hardness[i], torch.tensor(-1.0)).flatten()
        top4 = set(torch.topk(h, 4).indices.tolist())
        picked = {int(yy) * 6 + int(xx) for bb, yy, xx in zip(b, y, x) if bb == i}
        assert top4 <= picked and len(picked) == 8
    b, y, x = sample_anchors(eligible, None)
    assert len(b) == int(eligible.sum())


def test_hard_sampling_default_hardness_is_the_view_disagreement():
    f1, f2 = _maps(B=1, H=4, W=4, seed=5)
    dc = DenseContrast(Strategy(temperature=T), anchors_per_image=4, sampling="hard", hard_fraction=1.0)
    dc(f1, f2)
    cos = torch.nn.functional.cosine_similarity(f1[0], f2[0], dim=0).flatten()
    want = set(torch.topk(1 - cos, 4).indices.tolist())
    _, y, x = dc.last_anchors
    assert {int(a) * 4 + int(c) for a, c in zip(y, x)} == want


def test_flip_crop_coordinates_and_correspondence():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 9, 10, generator=g)
    v1, c1 = random_flip_crop(x, (6, 7), g)
    v2, c2 = random_flip_crop(x, (5, 8), g)
    for v, c in ((v1, c1), (v2, c2)):
        for b in range(3):
            for i in range(v.shape[2]):
                for j in range(v.shape[3]):
                    assert torch.equal(v[b, :, i, j], x[b, :, c[b, i, j, 0], c[b, i, j, 1]])
    corr = correspondence_from_coords(c1, c2)
    for b in range(3):
        for i in range(6):
            for j in range(7):
                hits = [(p, q) for p in range(5) for q in range(8) if c2[b, p, q].tolist() == c1[b, i, j].tolist()]
                want = list(hits[0]) if hits else [-1, -1]
                assert corr[b, i, j].tolist() == want
    assert torch.equal(identity_correspondence(1, 2, 3)[0, 1, 2], torch.tensor([1, 2]))


def test_dense_errors_name_the_argument():
    dc = DenseContrast("ucl", anchors_per_image=2)
    f = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="f1"):
        dc(torch.randn(2, 3))
    with pytest.raises(ValueError, match="correspondence"):
        dc(f, torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="labels"):
        dc(f, labels=torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="anchors_per_image"):
        DenseContrast("ucl", anchors_per_image=0)
    with pytest.raises(ValueError, match="sampling"):
        DenseContrast("ucl", sampling="random")
    with pytest.raises(ValueError, match="hard_fraction"):
        DenseContrast("ucl", hard_fraction=1.5)
    with pytest.raises(ValueError, match="pixel ids"):
        Strategy(filters=[NeighbourhoodFilter(1.0)])(torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="pixel grid of the ids"):  # ids, but no grid to decode them
        Strategy(filters=[NeighbourhoodFilter(1.0)])(torch.randn(4, 2), torch.randn(4, 2), ids=torch.arange(4))
    with pytest.raises(ValueError, match="at least one image"):
        DenseContrast("ucl")(torch.randn(0, 3, 4, 4))
    with pytest.raises(ValueError, match="at least one image"):
        DenseContrast("ucl")(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 0, 4), correspondence=None)


@pytest.mark.slow
def test_full_maps_of_32_images_train_in_bounded_memory():
    """32 images × 64×64 pixels, every pixel an anchor and a candidate (131,072 each): one training
    step; the loss is finite and the process stays far below the (n × m) float32 matrix (64 GiB) a
    dense implementation would need."""
    import resource

    from hardneg.negatives import InBatch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 64, 64, generator=g)
    enc = torch.nn.Conv2d(3, 16, 1)
    dc = DenseContrast(Strategy(source=[InBatch(symmetric=False)], diagnostics=False), anchors_per_image=None)
    loss = dc(enc(x), enc(x + 0.05 * torch.randn(x.shape, generator=g)))
    loss.backward()
    assert torch.isfinite(loss) and enc.weight.grad.abs().sum() > 0
    assert len(dc.last_ids) == 131072
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak_gib < 4.0


@pytest.mark.slow
def test_dense_compare_command_writes_the_page(tmp_path):
    from reproduce.cli import main

    with pytest.raises(SystemExit) as e:
        main(["dense-compare", "all", "--seeds", "0", "--abundances", "0.2", "--hs-steps", "3", "--inst-steps", "3",
              "--out", str(tmp_path), "--docs", str(tmp_path / "page.md")])
    assert e.value.code == 0
    page = (tmp_path / "page.md").read_text()
    assert "| synthetic | 0.2 | 1 |" in page and "| uniform |" in page
    assert "python -m reproduce dense-compare all" in page


def test_neighbourhood_on_a_16x16_map_decodes_with_the_maps_grid():
    """The grid that encodes the pixel ids is the one the filter decodes with (the step context's):
    on 16×16 maps, radius 1 removes exactly the 4-neighbours of each anchor in its image — the
    literal rule on the sampled pixels' coordinates, then the weighted InfoNCE written out."""
    from tests.negatives_reference import ref_weighted_infonce

    f1, f2 = _maps(B=2, C=3, H=16, W=16, seed=5)
    corr = identity_correspondence(2, 16, 16)
    block = torch.zeros(16, 16, dtype=torch.bool)
    block[5:9, 3:9] = True  # only a 4×6 block of each image is visible in view 2: 24 anchors per image
    corr[:, ~block] = -1
    dc = DenseContrast(Strategy(temperature=T, filters=[NeighbourhoodFilter(1.0)]), anchors_per_image=None)
    loss = dc(f1, f2, correspondence=corr)
    b, y, x = dc.last_anchors
    n = b.numel()
    assert n == 48
    z1 = f1[b, :, y, x]
    z2 = f2[b, :, y, x]
    z = torch.cat([z1, z2]).numpy()
    bb, yy, xx = (torch.cat([v, v]).tolist() for v in (b, y, x))
    pos = [(i + n) % (2 * n) for i in range(2 * n)]
    valid = [[j not in (i, pos[i]) and not (bb[i] == bb[j] and (yy[i] - yy[j]) ** 2 + (xx[i] - xx[j]) ** 2 <= 1)
              for j in range(2 * n)] for i in range(2 * n)]
    assert sum(map(sum, valid)) < sum(len(r) - 2 for r in valid)  # the rule removes neighbours here
    assert loss.item() == pytest.approx(ref_weighted_infonce(z, z, pos, valid, t=T), rel=1e-10)
