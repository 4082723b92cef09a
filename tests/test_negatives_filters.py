"""False-negative filters against literal rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardneg.negatives import GuideFilter, IdFilter, LabelFilter, SimilarityFilter, Strategy, create_strategy
from tests.negatives_reference import (
    in_batch_valid,
    ref_similarity_drop,
    ref_weighted_infonce,
    two_view_pos,
    unit,
)

torch.set_num_threads(1)


def _views(B=8, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(B, d, generator=g, dtype=torch.float64)
    return z1, z2


@pytest.mark.parametrize(
    "opts",
    [
        {"max_score": 0.3},
        {"min_score": -0.2},
        {"absolute_margin": 0.1},
        {"relative_margin": 0.05},
        {"max_score": 0.6, "absolute_margin": 0.0, "min_score": -0.5},
    ],
)
def test_similarity_filter_matches_sentence_transformers_rules(opts):
    B = 8
    z1, z2 = _views(B)
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    pos = two_view_pos(B)
    base = in_batch_valid(B)
    valid = base & ~ref_similarity_drop(z @ z.T, pos, **opts)
    keep = valid.any(1)  # an anchor the filters empty is skipped (the reference leaves it out)
    ref = ref_weighted_infonce(z, z, pos, valid, t=0.5)
    s = Strategy(filters=[SimilarityFilter(**opts)], diagnostics_anchors=None)
    assert s(z1, z2).item() == pytest.approx(ref, rel=1e-10)
    assert s.last_diagnostics["skipped_share"] == pytest.approx((~keep).mean())


def test_id_filter_with_duplicate_groups():
    B = 6
    z1, z2 = _views(B, seed=1)
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    groups = torch.tensor([0, 1, 0, 2, 1, 3])  # ids 0 and 2 are copies; so are 1 and 4
    z = np.concatenate([z1.numpy(), z2.numpy()])
    valid = in_batch_valid(B)
    gg = np.concatenate([groups.numpy(), groups.numpy()])
    valid &= gg[:, None] != gg[None, :]
    ref = ref_weighted_infonce(z, z, two_view_pos(B), valid, t=0.5)
    got = Strategy(filters=[IdFilter(groups)])(z1, z2, ids=ids).item()
    assert got == pytest.approx(ref, rel=1e-10)
    with pytest.raises(ValueError, match="ids"):
        Strategy(filters=[IdFilter()])(z1, z2)


def _guide_valid(GS, pos, B, margin):
    valid = in_batch_valid(B)
    for i in range(2 * B):
        valid[i] &= ~(GS[i] > GS[i, pos[i]] - margin)
    return valid


def test_guide_filter_drops_candidates_the_guide_scores_above_the_positive():
    """GISTEmbed: guide embeddings of the anchor texts (T1) and positive texts (T2) by sample id."""
    B = 6
    z1, z2 = _views(B, seed=2)
    g = torch.Generator().manual_seed(3)
    T1 = F.normalize(torch.randn(10, 4, generator=g, dtype=torch.float64), dim=1)
    T2 = F.normalize(T1 + 0.9 * torch.randn(10, 4, generator=g, dtype=torch.float64), dim=1)
    ids = torch.tensor([9, 3, 4, 0, 7, 1])
    G = torch.cat([T1[ids], T2[ids]]).numpy()  # rows from z1 use T1, rows from z2 use T2
    GS = G @ G.T
    pos = two_view_pos(B)
    z = np.concatenate([z1.numpy(), z2.numpy()])
    valid = _guide_valid(GS, pos, B, 0.0)
    assert (valid.sum(1) < in_batch_valid(B).sum(1)).any() and valid.any(1).all()
    ref = ref_weighted_infonce(z, z, pos, valid, t=0.5)
    s = Strategy(filters=[GuideFilter((T1, T2))])
    assert s(z1, z2, ids=ids).item() == pytest.approx(ref, rel=1e-10)
    # a callable (ids, view) guide gives the same, through the preset too
    s2 = create_strategy("gist", guide=lambda i, v: (T1, T2)[v][i], t=0.5)
    assert s2(z1, z2, ids=ids).item() == pytest.approx(ref, rel=1e-10)
    # one table for both views: g_ip = 1, so only a margin can drop anything
    G1 = torch.cat([T1[ids], T1[ids]]).numpy()
    valid = _guide_valid(G1 @ G1.T, pos, B, 1.2)
    assert (valid.sum(1) < in_batch_valid(B).sum(1)).any()
    ref = ref_weighted_infonce(z, z, pos, valid, t=0.5)
    s3 = create_strategy("gist", guide=T1, margin=1.2, t=0.5)
    assert s3(z1, z2, ids=ids).item() == pytest.approx(ref, rel=1e-10)


def test_filter_option_errors():
    with pytest.raises(ValueError, match="'absolute_margin'"):
        SimilarityFilter(absolute_margin=-0.1)
    with pytest.raises(ValueError, match="'relative_margin'"):  # any finite r >= 0, as in offline mining
        SimilarityFilter(relative_margin=float("nan"))
    with pytest.raises(ValueError, match="at least one"):
        SimilarityFilter()
    with pytest.raises(TypeError, match="guide"):
        GuideFilter(guide=3)


def test_label_filter_alone_and_composed_skip_the_same_anchors():
    """The kernel's own label mask (LabelFilter alone) and the strategy's filter path (a second
    filter forces it) apply one policy: an anchor without an other-label candidate is skipped."""
    B = 4
    z1, z2 = _views(B, seed=4)
    y = torch.tensor([0, 0, 0, 1])
    z = np.concatenate([z1.numpy(), z2.numpy()])
    yy = np.concatenate([y.numpy(), y.numpy()])
    valid = in_batch_valid(B) & (yy[:, None] != yy[None, :])
    ref = ref_weighted_infonce(z, z, two_view_pos(B), valid, t=0.5)
    composed = Strategy(filters=[LabelFilter(), SimilarityFilter(max_score=1.0)])  # the second drops nothing
    assert composed(z1, z2, labels=y).item() == pytest.approx(ref, rel=1e-10)
    assert Strategy(filters=[LabelFilter()])(z1, z2, labels=y).item() == pytest.approx(ref, rel=1e-10)
    one_class = torch.zeros(B, dtype=torch.long)
    for s in (composed, Strategy(filters=[LabelFilter()])):
        with pytest.raises(ValueError, match="no anchor has both a positive and a valid negative"):
            s(z1, z2, labels=one_class)


@pytest.mark.parametrize("rules", [{"absolute_margin": 3.0}, {"min_score": 0.5, "max_score": 0.2},
                                   {"relative_margin": float("inf")}, {"max_score": 1.5}])
def test_similarity_rules_refused_alike_everywhere(rules):
    """One validation of the similarity rules: the strategies' filter, offline mining, the
    sentence-transformers loss and similarity_drops itself refuse the same values."""
    from hardneg.integrations.sentence_transformers import HardNegativeRankingLoss
    from hardneg.mining.mine import MineConfig
    from hardneg.negatives.filters import similarity_drops

    name = "min_score" if "min_score" in rules else next(iter(rules))
    calls = [lambda: SimilarityFilter(**rules), lambda: MineConfig(**rules).validate(),
             lambda: similarity_drops(torch.zeros(2, 3), torch.zeros(2), **rules)]
    if "min_score" not in rules:  # the sentence-transformers loss takes the margins and max_score
        calls.append(lambda: HardNegativeRankingLoss(None, **rules))
    for call in calls:
        with pytest.raises(ValueError, match=f"'{name}'"):
            call()


def test_similarity_rules_at_their_bounds_accepted_alike_and_exact():
    """The extremes of each range are accepted by the filter and by mining; the drops match the
    rules written out by hand."""
    from hardneg.mining.mine import MineConfig
    from hardneg.negatives.filters import similarity_drops

    rules = {"max_score": 1.0, "min_score": -1.0, "absolute_margin": 2.0, "relative_margin": 5.0}
    SimilarityFilter(**rules)
    MineConfig(**rules).validate()
    S = torch.tensor([[0.9, -0.5, 0.2], [0.1, 0.4, -0.95]])
    sp = torch.tensor([0.8, float("nan")])
    got = similarity_drops(S, sp, max_score=0.5, min_score=-0.9, absolute_margin=0.3, relative_margin=2.0)
    assert got["max_score"].tolist() == [[True, False, False], [False, False, False]]
    assert got["min_score"].tolist() == [[False, False, False], [False, False, True]]
    # s > 0.8 − 0.3 = 0.5; the second anchor has no positive: no margin applies
    assert got["absolute_margin"].tolist() == [[True, False, False], [False, False, False]]
    # s > 0.8 · (1 − 2) = −0.8
    assert got["relative_margin"].tolist() == [[True, True, True], [False, False, False]]
