"""The native row pass (`hardneg.losses.native`): the C loop against a literal float64 softmax, and
every fused strategy it serves on float32 inputs — natively and through the kernel's torch blocks —
against the literal float64 weighted InfoNCE of tests/negatives_reference.py, values and gradients,
fallback rows (an empty semi-hard window, every candidate too far) and the diagnostics included."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import hardneg.losses as L
from hardneg.losses import native
from hardneg.negatives import DistanceWeighted, IdFilter, SemiHard, SimilarityFilter, Strategy, create_strategy
from tests import reference_losses as R
from tests.negatives_reference import (
    in_batch_valid,
    ref_distance_weighted,
    ref_semihard,
    ref_similarity_drop,
    ref_weighted_infonce_t,
    two_view_pos,
    unit,
)

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native row pass is not built")


# ---------------------------------------------------------------------------------------------
# the C pass itself
# ---------------------------------------------------------------------------------------------


def _literal_rows(X, lo, hi, kind, centre, half, dist, inactive, free):
    """Float64, one row at a time: the rule's kept entries, a, the softmax (or e^x and 1/Σ), and the
    weighting's fallback where the rule keeps nothing (SemiHard / DistanceWeighted.weigh_)."""
    X = X.double()
    c, m = X.shape
    out, after = X.clone(), X.clone()
    cnt, lse_b, lse_a, scale, fallback = [], [], [], [], []
    for r in range(c):
        x = X[r]
        valid = torch.isfinite(x) & (x >= lo[r]) & (x <= hi[r])
        keep = valid.clone()
        a = torch.zeros(m, dtype=torch.float64)
        if kind == "window":
            keep &= (x - centre[r]).abs() < half
        if kind == "distance":
            two_t, p_u, p_v, u_lo, u_hi = dist
            u = 2.0 - two_t * x
            keep &= u < u_hi
            uc = u.clamp(u_lo, u_hi)
            a = p_u * uc.log() + p_v * (1.0 - uc / 4.0).clamp(min=1e-8).log()
        fb = not keep.any() and kind != "none"
        if fb and kind == "window":  # the valid candidate nearest the window, alone
            near = torch.where(valid, half - (x - centre[r]).abs(), -math.inf)
            keep = torch.zeros(m, dtype=torch.bool)
            if valid.any():
                keep[int(near.argmax())] = True
        elif fb:  # every valid candidate, unweighted
            keep, a = valid, torch.zeros(m, dtype=torch.float64)
            fb = bool(valid.any())
        fallback.append(fb)
        n = int(keep.sum())
        cnt.append(n)
        v = torch.where(keep, x + a, -math.inf)
        after[r] = torch.where(keep, a, -math.inf)  # what each entry gained by the rule
        weighted = kind == "distance" and not fb and n > 0
        lse_a.append(float(torch.logsumexp(torch.where(keep, a, -math.inf), 0)) if weighted
                     else math.log(n) if n else (0.0 if kind == "distance" else -math.inf))
        if inactive[r] or n == 0:
            out[r] = 1.0 if free else 1.0 / m
            lse_b.append(math.log(m)), scale.append(1.0 if kind == "distance" else 1.0 / m)
            continue
        lse = float(torch.logsumexp(v, 0))
        lse_b.append(lse)
        if weighted:  # left unnormalised, its normalising factor in scale: their product here
            out[r] = torch.exp(v - lse)
            scale.append(1.0)
            continue
        out[r] = torch.exp(v) if free else torch.exp(v - lse)
        scale.append(math.exp(-lse) if free else 1.0)
    return out, cnt, lse_b, lse_a, scale, fallback, after


@pytest.mark.parametrize("kind,free,dim", [("none", True, 0), ("none", False, 0), ("window", True, 0),
                                           ("window", False, 0), ("distance", False, 10), ("distance", False, 128)])
def test_the_row_pass_matches_a_literal_float64_softmax(kind, free, dim):
    g = torch.Generator().manual_seed(3)
    c, m = 13, 75  # 75 = 4 vectors of 16 lanes and a tail of 11
    X = (torch.rand(c, m, generator=g) * 2 - 1) / 0.5  # s / t with t = 0.5
    X[torch.rand(c, m, generator=g) < 0.2] = -math.inf  # the candidate rule's removed entries
    X[2, :] = -math.inf  # a row without any candidate
    lo = torch.full((c,), -1.6)
    hi = torch.full((c,), 1.5)
    hi[4] = -5.0  # the filters drop the whole row
    centre = torch.rand(c, generator=g) * 2 - 1
    centre[5] = 10.0  # an empty window: the valid candidate nearest it
    half = 0.4
    dist = (1.0, -(dim - 2) / 2, -(dim - 3) / 2, 0.25, 1.96)  # Wu et al.'s q(d) in dim dimensions
    if kind == "distance":
        X[6, torch.isfinite(X[6])] = -1.5  # every candidate far (u = 3.5 > 1.96): kept, unweighted
    inactive = torch.zeros(c, dtype=torch.bool)
    inactive[7] = True
    rule = native.RowRule(lo=lo, hi=hi, kind=kind, centre=centre if kind == "window" else None, half=half,
                          distance=dist if kind == "distance" else None)
    slot = torch.full((c,), -1, dtype=torch.int32)
    slot[torch.tensor([1, 5, 9])] = torch.tensor([0, 1, 2], dtype=torch.int32)
    rec = (torch.full((3, m), 7.0), torch.full((3, m), 7.0))
    ref, cnt, lse_b, lse_a, scale, fallback, after = _literal_rows(X, lo, hi, kind, centre, half, dist,
                                                                    inactive, free)
    Y = X.clone()
    res = native.weighted_softmax_rows_(Y, rule, inactive, free, slot, rec)
    assert res.cnt.tolist() == cnt
    assert res.fallback.tolist() == fallback
    assert [r for r in range(c) if fallback[r]] == ([] if kind == "none" else [2, 4, 5] if kind == "window" else [6])
    got_scale = res.scale
    if kind == "distance":  # the rows the weighting kept are left unnormalised, what normalises them in scale
        weighted = torch.tensor([not fallback[r] and cnt[r] > 0 and not inactive[r] for r in range(c)])
        assert bool((Y[weighted].amax(1) <= 2.0).all()) and bool((res.scale[weighted] > 0).all())
        Y[weighted] *= res.scale[weighted, None]
        got_scale = torch.where(weighted, 1.0, res.scale)
    # in 128 dimensions the exponents X + a reach 90, where float32's spacing is 7.6e-6
    rtol, atol = (2e-6, 1e-6) if dim < 100 else (3e-5, 2e-5)
    torch.testing.assert_close(Y.double(), ref, rtol=rtol, atol=1e-30)
    torch.testing.assert_close(res.lse_b.double(), torch.tensor(lse_b).double(), rtol=1e-6, atol=atol)
    torch.testing.assert_close(res.lse_a.double(), torch.tensor(lse_a).double(), rtol=1e-6, atol=atol)
    if free or kind == "distance":
        torch.testing.assert_close(got_scale.double(), torch.tensor(scale).double(), rtol=1e-6, atol=0)
    else:
        assert res.scale is None
    for s_, r in enumerate([1, 5, 9]):  # the sampled rows before the rule, and their log-weights
        assert torch.equal(rec[0][s_], X[r])
        torch.testing.assert_close(rec[1][s_].double(), after[r], rtol=1e-6, atol=atol)


@pytest.mark.parametrize("far", [0.1, 0.5, 0.9])
def test_distance_rows_mostly_kept_or_mostly_far_match_the_literal(far):
    """The pass packs a row's kept entries where the row before kept few, and works in place
    otherwise: rows of each kind, and both in turn, against the float64 literal."""
    g = torch.Generator().manual_seed(11)
    c, m = 9, 203  # 12 runs of 16 lanes and a tail of 11
    near = (torch.rand(c, m, generator=g) * 1.5 + 0.1) / 0.5  # u = 2 - x < 1.96: kept
    X = torch.where(torch.rand(c, m, generator=g) < far, torch.full((c, m), -1.0), near)
    X[3, : m // 2] = -1.0  # a row half far between the others
    dist = (1.0, -63.0, -62.5, 0.25, 1.96)
    lo, hi = torch.full((c,), -math.inf), torch.full((c,), math.inf)
    inactive = torch.zeros(c, dtype=torch.bool)
    ref, cnt, lse_b, lse_a, scale, fallback, after = _literal_rows(X, lo, hi, "distance", torch.zeros(c), 0.0,
                                                                    dist, inactive, False)
    slot = torch.full((c,), -1, dtype=torch.int32)
    slot[torch.tensor([0, 3, 8])] = torch.tensor([0, 1, 2], dtype=torch.int32)
    rec = (torch.zeros(3, m), torch.zeros(3, m))
    Y = X.clone()
    res = native.weighted_softmax_rows_(Y, native.RowRule(kind="distance", distance=dist), inactive, False, slot,
                                        rec)
    assert res.cnt.tolist() == cnt and not any(fallback)
    torch.testing.assert_close((Y * res.scale[:, None]).double(), ref, rtol=3e-5, atol=1e-30)
    torch.testing.assert_close(res.lse_b.double(), torch.tensor(lse_b).double(), rtol=1e-6, atol=2e-5)
    torch.testing.assert_close(res.lse_a.double(), torch.tensor(lse_a).double(), rtol=1e-6, atol=2e-5)
    for s_, r in enumerate([0, 3, 8]):
        assert torch.equal(rec[0][s_], X[r])
        torch.testing.assert_close(rec[1][s_].double(), after[r], rtol=1e-6, atol=2e-5)


def test_the_distance_rule_takes_only_the_exponents_of_q_d():
    rule = native.RowRule(kind="distance", distance=(1.0, -4.0, -4.0, 0.25, 1.96))  # p_u = p_v: not q(d)
    with pytest.raises(ValueError, match="p_u = p_v - 1/2"):
        native.weighted_softmax_rows_(torch.zeros(2, 16), rule, None, False)


def test_the_switch_turns_the_pass_off_here_and_for_a_process():
    with native.use_native(False):
        assert not native.available()
    assert native.available()
    env = {**os.environ, "HARDNEG_NATIVE": "0"}
    code = "from hardneg.losses import native; print(native.available())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_PROBE = """
import torch
from hardneg.losses import native
from hardneg.negatives import create_strategy
g = torch.Generator().manual_seed(0)
z1 = torch.nn.functional.normalize(torch.randn(64, 8, generator=g), dim=1)
z2 = torch.nn.functional.normalize(z1 + 0.5 * torch.randn(64, 8, generator=g), dim=1)
print(native.available(), float(create_strategy("semihard")(z1, z2)))
"""


def _probe(tmp_path, **env):
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path), **env})
    built, loss = out.stdout.split()
    return built == "True", float(loss)


def test_without_a_compiler_the_torch_path_gives_the_same_loss(tmp_path):
    """No compiler: nothing is built, the blocks run, the loss is the native pass's."""
    assert _probe(tmp_path / "a", CC="no-such-compiler") == (False, pytest.approx(_probe(tmp_path / "b")[1], rel=1e-5))
    assert not (tmp_path / "a" / "hardneg").exists()


def test_a_damaged_library_in_the_cache_is_built_again(tmp_path):
    assert _probe(tmp_path)[0]
    (lib,) = (tmp_path / "hardneg" / "native").glob("native_rows-*.so")
    lib.write_bytes(b"not a shared library")
    assert _probe(tmp_path)[0]
    assert lib.stat().st_size > 1000


def test_the_passes_write_no_record_past_their_buffers():
    """A slot at or past the buffers' rows is not written (the passes write the buffers through the
    slots); the rows with a slot inside them are, as they were before the rule."""
    native.available()
    g = torch.Generator().manual_seed(3)
    X0 = torch.randn(4, 40, generator=g)
    slot = torch.tensor([0, 5, -3, 1], dtype=torch.int32)
    under = torch.full((4, 40), 7.0)  # the buffers are its first two rows
    native.softmax_rows_(X0.clone(), None, False, None, rec_slot=slot, rec=under[:2])
    torch.testing.assert_close(under[:2], X0[[0, 3]])
    assert bool((under[2:] == 7.0).all())
    bx, bw = torch.full((4, 40), 7.0), torch.full((4, 40), 7.0)
    native.weighted_softmax_rows_(X0.clone(), native.RowRule(), None, False, slot, (bx[:2], bw[:2]))
    torch.testing.assert_close(bx[:2], X0[[0, 3]])
    assert bool((bx[2:] == 7.0).all()) and bool((bw[2:] == 7.0).all()) and bool((bw[:2] == 0.0).all())


def test_the_pass_rejects_what_it_cannot_read():
    rule = native.RowRule()
    with pytest.raises(ValueError, match="float32 CPU tile"):
        native.weighted_softmax_rows_(torch.zeros(2, 4, dtype=torch.float64), rule, None, True)
    with pytest.raises(ValueError, match="float32 CPU tile"):
        native.weighted_softmax_rows_(torch.zeros(4, 2).T, rule, None, True)
    slot = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="rec_slot needs rec"):  # no buffer to write the sampled rows to
        native.weighted_softmax_rows_(torch.zeros(2, 16), rule, None, True, slot)
    with pytest.raises(ValueError, match="one stride"):
        native.weighted_softmax_rows_(torch.zeros(2, 16), rule, None, True, slot,
                                      (torch.zeros(2, 16), torch.zeros(2, 8)))
    with pytest.raises(ValueError, match="rec must be"):
        native.softmax_rows_(torch.zeros(2, 16), None, True, None, rec_slot=slot)


# ---------------------------------------------------------------------------------------------
# the fused strategies, both paths, against the literal reference
# ---------------------------------------------------------------------------------------------


def _views(B, d, seed, noise=0.8):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    return z1, z1 + noise * torch.randn(B, d, generator=g, dtype=torch.float64)


def _sims(z1, z2):
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    return z @ z.T


def _semihard_case(t):
    B, m = 10, 0.4
    z1, z2 = _views(B, 6, seed=2)
    S, pos, base = _sims(z1, z2), two_view_pos(B), in_batch_valid(B)
    window = np.array([[base[i, j] and S[i, pos[i]] - m < S[i, j] < S[i, pos[i]] for j in range(2 * B)]
                       for i in range(2 * B)])
    assert 0 < (~window.any(1)).sum() < 2 * B, "fixture: rows with and without a semi-hard window"
    return Strategy(weighting=SemiHard(m), t=t), z1, z2, ref_semihard(S, base, pos, m), None


def _distance_case(cutoff):
    B, d = 12, 6
    z1, z2 = _views(B, d, seed=3)
    S, base = _sims(z1, z2), in_batch_valid(B)
    logw = ref_distance_weighted(S, d, 0.5, cutoff)
    far_rows = [i for i in range(2 * B) if not np.isfinite(logw[i][base[i]]).any()]
    for i in far_rows:  # every valid candidate too far: kept, unweighted (DistanceWeighted's fallback)
        logw[i] = np.where(base[i], 0.0, -np.inf)
    assert (len(far_rows) > 0) == (cutoff < 1.0), "fixture: fallback rows only under the small cutoff"
    return Strategy(weighting=DistanceWeighted(0.5, cutoff), t=0.5), z1, z2, base, logw


def _filtered_case(weighted):
    B = 12
    z1, z2 = _views(B, 6, seed=4)
    S, pos, base = _sims(z1, z2), two_view_pos(B), in_batch_valid(B)
    rules = {"max_score": 0.7, "min_score": -0.6, "relative_margin": 0.05}
    valid = base & ~ref_similarity_drop(S, pos, **rules)
    filters = [IdFilter(), SimilarityFilter(**rules)]
    if not weighted:
        return Strategy(filters=filters, t=0.5), z1, z2, valid, None
    return (Strategy(filters=filters, weighting=SemiHard(0.3), t=0.5), z1, z2,
            ref_semihard(S, valid, pos, 0.3), None)


CASES = {
    "semihard, shift-free": lambda: _semihard_case(0.5),
    "semihard, shifted": lambda: _semihard_case(0.01),
    "distance_weighted": lambda: _distance_case(1.4),
    "distance_weighted, far rows": lambda: _distance_case(0.9),
    "similarity and id filters": lambda: _filtered_case(False),
    "filters and semihard": lambda: _filtered_case(True),
}


@pytest.mark.parametrize("use", [True, False], ids=["native", "blocks"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_strategies_in_float32_match_the_float64_reference(case, use, monkeypatch):
    strategy, z1, z2, valid, logw = CASES[case]()
    calls = []
    real = native.weighted_softmax_rows_
    monkeypatch.setattr(native, "weighted_softmax_rows_", lambda *a, **k: calls.append(1) or real(*a, **k))
    B = z1.shape[0]
    ids = torch.arange(B)
    a1, a2 = z1.float().requires_grad_(), z2.float().requires_grad_()
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    with native.use_native(use):
        ours = strategy(a1, a2, ids=ids)
    assert bool(calls) == use  # the path under test ran
    z = torch.cat([r1, r2])
    ref = ref_weighted_infonce_t(z, z, two_view_pos(B), valid, logw=logw, t=strategy.t)
    torch.testing.assert_close(ours.double(), ref, rtol=2e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(ours, [a1, a2]), torch.autograd.grad(ref, [r1, r2])):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def _two_views(seed: int, B: int = 300):
    """Two L2-normalised views of B anchors in 32 dimensions, 20 labels, ids."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.nn.functional.normalize(torch.randn(B, 32, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(z1 + 0.5 * torch.randn(B, 32, generator=g), dim=1)
    return z1, z2, torch.randint(0, 20, (B,), generator=g), torch.arange(B)


@pytest.mark.parametrize("preset", ["semihard", "distance_weighted", "filtered", "hscl", "hucl", "scl", "dcl",
                                    "ucl", "supcon", "decoupled"])
def test_the_diagnostics_are_the_same_on_both_paths(preset):
    """2B = 600 anchors, the default 128 sampled rows: the pass copies them (and their log-weights,
    fused) where the torch path has them from its blocks or a product of its own."""
    z1, z2, y, ids = _two_views(5)
    out = {}
    for use in (True, False):
        s = create_strategy(preset)
        with native.use_native(use):
            loss = s(z1, z2, labels=y, ids=ids)
        out[use] = (float(loss), s.last_diagnostics)
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-5)
    d1, d0 = out[True][1], out[False][1]
    assert d1.keys() == d0.keys()
    for key in d1:
        if isinstance(d1[key], float) and math.isnan(d1[key]):
            assert math.isnan(d0[key]), key
        else:
            assert d1[key] == pytest.approx(d0[key], rel=1e-3, abs=1e-5), key


@pytest.mark.parametrize("preset", ["semihard", "distance_weighted", "filtered", "hscl", "supcon"])
def test_the_diagnostics_agree_when_their_buffers_fill_within_a_step(preset, monkeypatch):
    """Buffers of 32 rows and chunks of 64 anchors: the 128 sampled rows are recorded in several
    flushes, each chunk's rows at the buffer rows `_BlockRecords.slots` gives them, on both paths."""
    from hardneg.negatives.strategy import _BlockRecords

    monkeypatch.setattr(_BlockRecords, "_BUFFER", 1)  # the least: 32 rows
    z1, z2, y, ids = _two_views(9)
    out = {}
    for use in (True, False):
        s = create_strategy(preset, chunk_size=64)
        with native.use_native(use):
            s(z1, z2, labels=y, ids=ids)
        out[use] = s.last_diagnostics
    whole = create_strategy(preset)  # one chunk, one buffer
    whole(z1, z2, labels=y, ids=ids)
    for key, v in out[True].items():
        for other in (out[False][key], whole.last_diagnostics[key]):
            assert (math.isnan(v) and math.isnan(other)) or v == pytest.approx(other, rel=1e-3, abs=1e-5), key


@pytest.mark.parametrize("preset", ["hscl", "hucl", "dcl", "ucl", "supcon"])
def test_the_plain_path_takes_its_diagnostics_sample_from_the_pass(preset, monkeypatch):
    """The softmax pass copies the sampled rows: no anchor is left to the product of its own."""
    from hardneg.negatives.strategy import Strategy

    left = []
    original = Strategy._diagnostics_pass

    def spy(self, ctx, acc):
        left.append(len(acc.pending_rows()))
        return original(self, ctx, acc)

    monkeypatch.setattr(Strategy, "_diagnostics_pass", spy)
    g = torch.Generator().manual_seed(6)
    z1 = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(z1 + 0.5 * torch.randn(300, 16, generator=g), dim=1)
    y = torch.randint(0, 20, (300,), generator=g)
    s = create_strategy(preset, chunk_size=64)  # several chunks, each with its share of the sample
    s(z1, z2, labels=y, ids=torch.arange(300))
    assert left == [0] and s.last_diagnostics["n_candidates"] > 0
    with native.use_native(False):
        s(z1, z2, labels=y, ids=torch.arange(300))
    assert left[-1] == 128


# ---------------------------------------------------------------------------------------------
# the root tilt (β = 1): the C pass, and the named losses and presets that take it
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("free", [True, False])
@pytest.mark.parametrize("then", [None, "square", "tilt"])
def test_the_root_tilt_pass_matches_a_literal_float64_softmax(free, then):
    g = torch.Generator().manual_seed(4)
    c, m = 9, 83
    X = (torch.rand(c, m, generator=g) * 2 - 1) / 0.5
    X[torch.rand(c, m, generator=g) < 0.1] = -math.inf
    inactive = torch.zeros(c, dtype=torch.bool)
    inactive[3] = True
    Y = X.clone()
    lse, sumsq = native.softmax_rows_(Y, inactive, free, then)
    x = torch.where(inactive[:, None], 0.0, X.double())
    ref_lse = torch.logsumexp(x, 1)
    P = torch.softmax(x, 1)
    ref_ssq = (P * P).sum(1)
    base = torch.exp(x) if free else P  # E or P
    shift = (base * base).sum(1, keepdim=True) / (2 * base.sum(1, keepdim=True)) if free else ref_ssq[:, None] / 2
    ref = {None: base, "square": base * base, "tilt": base * (base - shift)}[then]
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sumsq.double(), ref_ssq, rtol=1e-5, atol=0)
    torch.testing.assert_close(Y.double(), ref, rtol=1e-5, atol=1e-7 * float(ref.abs().max()))


def _labelled(B, d, seed):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.8 * torch.randn(B, d, generator=g, dtype=torch.float64)
    return z1, z2, torch.arange(B) % 4


TILTED = {
    "hucl, shift-free": (lambda z1, z2, y: L.hucl(z1, z2, beta=1.0, t=0.5),
                         lambda z1, z2, y: R.ref_infonce(z1, z2, t=0.5, beta=1.0)),
    "hucl, shifted": (lambda z1, z2, y: L.hucl(z1, z2, beta=1.0, t=0.01),
                      lambda z1, z2, y: R.ref_infonce(z1, z2, t=0.01, beta=1.0)),
    "hucl, detached weights": (
        lambda z1, z2, y: L.hucl(z1, z2, beta=1.0, t=0.5, detach_weights=True),
        lambda z1, z2, y: _detached_ref(z1, z2)),
    "hscl, view positives": (
        lambda z1, z2, y: L.hscl(z1, z2, y, beta=1.0, t=0.5, positives="view"),
        lambda z1, z2, y: R.ref_infonce(z1, z2, t=0.5, beta=1.0, labels=y)),
    "hscl, label positives": (
        lambda z1, z2, y: L.hscl(z1, z2, y, beta=1.0, t=0.5, positives="labels"),
        lambda z1, z2, y: R.ref_hscl_all(z1, z2, y, t=0.5, beta=1.0)),
    "preset hucl": (lambda z1, z2, y: create_strategy("hucl")(z1, z2, labels=y),
                    lambda z1, z2, y: R.ref_infonce(z1, z2, t=0.5, beta=1.0)),
    # β = 0 without log-weights, within the shift-free bound: the same pass with then = None
    "scl (other labels)": (lambda z1, z2, y: L.scl(z1, z2, y, t=0.5),
                           lambda z1, z2, y: R.ref_infonce(z1, z2, t=0.5, labels=y)),
    "dcl": (lambda z1, z2, y: L.dcl(z1, z2, tau_plus=0.1, t=0.5),
            lambda z1, z2, y: R.ref_infonce(z1, z2, t=0.5, tau_plus=0.1)),
    "decoupled": (lambda z1, z2, y: L.decoupled(z1, z2, t=0.5), lambda z1, z2, y: R.ref_decoupled(z1, z2, t=0.5)),
    # the lean path (uniform π, plain sum) within the bound: then = None, its row sums from the pass
    "ucl (NT-Xent)": (lambda z1, z2, y: L.ucl(z1, z2, t=0.5), lambda z1, z2, y: R.ref_infonce(z1, z2, t=0.5)),
    "supcon": (lambda z1, z2, y: L.supcon(z1, z2, y, t=0.1), lambda z1, z2, y: R.ref_supcon(z1, z2, y, t=0.1)),
    "hscl at beta 0, label positives": (
        lambda z1, z2, y: L.hscl(z1, z2, y, beta=0.0, t=0.5, positives="labels"),
        lambda z1, z2, y: R.ref_hscl_all(z1, z2, y, t=0.5, beta=0.0)),
}


def _literal_l_out(q, k, q_labels, k_labels, self_index, t):
    """SupCon L_out (Khosla et al. eq. 2) of anchors q against candidates k, literally: each anchor's
    positives are the candidates of its label but itself, its denominator every candidate but
    itself; an anchor without a positive is left out of the mean."""
    total, anchors = 0.0, 0
    for i in range(q.shape[0]):
        others = [j for j in range(k.shape[0]) if j != int(self_index[i])]
        P = [j for j in others if int(k_labels[j]) == int(q_labels[i])]
        if not P:
            continue
        anchors += 1
        log_denom = torch.log(sum(torch.exp(q[i] @ k[j] / t) for j in others))
        total = total - sum(q[i] @ k[p] / t - log_denom for p in P) / len(P)
    return total / anchors


@pytest.mark.parametrize("use", [True, False], ids=["native", "torch"])
def test_the_lean_pass_skips_an_anchor_without_a_positive(use, monkeypatch):
    """The lean path's placeholder row (an anchor whose candidates hold no positive) in float32 against
    the literal L_out, loss and gradients; the anchor itself is no candidate."""
    calls = []
    real = native.softmax_rows_
    monkeypatch.setattr(native, "softmax_rows_", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(12)
    q64 = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    k64 = torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    k64[:3] = q64[:3]  # anchors 0-2 are candidates 0-2
    qy, ky = torch.tensor([0, 0, 2, 1, 3, 1]), torch.tensor([0, 0, 2, 1, 1])
    self_index = torch.tensor([0, 1, 2, -1, -1, -1])
    # anchor 2's only same-label candidate is itself and anchor 4's label has none: both skipped
    q, k = q64.float().requires_grad_(), k64.float().requires_grad_()
    rq, rk = q64.clone().requires_grad_(), k64.clone().requires_grad_()
    with native.use_native(use):
        ours = L.weighted_info_nce(q, k, t=0.2, q_labels=qy, k_labels=ky, self_index=self_index,
                                   positives="labels", include_positive=False, normalize=False)
    assert bool(calls) == use
    ref = _literal_l_out(rq, rk, qy, ky, self_index, 0.2)
    torch.testing.assert_close(ours.double(), ref, rtol=2e-5, atol=1e-5)
    ref_grads = torch.autograd.grad(ref, [rq, rk])
    for a, b in zip(torch.autograd.grad(ours, [q, k]), ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)
    assert float(ref_grads[0][[2, 4]].abs().max()) == 0.0 and float(ref_grads[0].abs().max()) > 1e-2


def _detached_ref(z1, z2):
    B = z1.shape[0]
    z = torch.cat([z1, z2])
    return ref_weighted_infonce_t(z, z, two_view_pos(B), in_batch_valid(B), beta=1.0, t=0.5, detach_weights=True)


@pytest.mark.parametrize("use", [True, False], ids=["native", "blocks"])
@pytest.mark.parametrize("case", list(TILTED))
def test_losses_of_the_softmax_pass_in_float32_match_the_float64_reference(case, use, monkeypatch):
    ours_fn, ref_fn = TILTED[case]
    calls = []
    real = native.softmax_rows_
    monkeypatch.setattr(native, "softmax_rows_", lambda *a, **k: calls.append(1) or real(*a, **k))
    z1, z2, y = _labelled(12, 6, seed=8)
    a1, a2 = z1.float().requires_grad_(), z2.float().requires_grad_()
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    with native.use_native(use):
        ours = ours_fn(a1, a2, y)
    assert bool(calls) == use
    ref = ref_fn(r1, r2, y)
    torch.testing.assert_close(ours.double(), ref, rtol=2e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(ours, [a1, a2]), torch.autograd.grad(ref, [r1, r2])):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


@pytest.mark.parametrize("use", [True, False], ids=["native", "blocks"])
@pytest.mark.parametrize("beta,include,tau_plus", [(1.0, False, 0.0), (0.0, False, 0.0), (1.0, True, 0.1),
                                                   (0.0, True, 0.1), (1.0, True, 0.0), (1.0, True, 0.9)])
def test_label_positives_in_float32_match_the_literal_pairs(use, beta, include, tau_plus, monkeypatch):
    """Label positives, every same-label pair (i, p) a term: with and without the positive in the
    denominator, debiased or not, on the native label terms (τ⁺ = 0) and the torch path, against
    the one-positive float64 reference row by row of pairs."""
    calls = []
    real = native.label_terms
    monkeypatch.setattr(native, "label_terms", lambda *a, **k: calls.append(1) or real(*a, **k))
    z1, z2, y = _labelled(12, 6, seed=8)
    z, yy = torch.cat([z1, z2]), torch.cat([y, y])
    n = z.shape[0]
    pairs = [(i, p) for i in range(n) for p in range(n) if p != i and yy[p] == yy[i]]
    zr = z.clone().requires_grad_()
    ref = ref_weighted_infonce_t(zr[[i for i, _ in pairs]], zr, [p for _, p in pairs],
                                 [[bool(yy[j] != yy[i]) for j in range(n)] for i, _ in pairs], beta=beta, t=0.5,
                                 N=n - 2, include_positive=include, tau_plus=tau_plus)
    a = z.float().requires_grad_()
    with native.use_native(use):
        ours = L.weighted_info_nce(a, a, t=0.5, q_labels=yy, k_labels=yy, self_index=torch.arange(n),
                                   positives="labels", negatives="other_labels", positive_reduce="pairs", beta=beta,
                                   include_positive=include, n_neg=n - 2, tau_plus=tau_plus)
    assert bool(calls) == (use and tau_plus == 0.0)
    torch.testing.assert_close(ours.double(), ref, rtol=2e-5, atol=1e-5)
    ga, = torch.autograd.grad(ours, a)
    gr, = torch.autograd.grad(ref, zr)
    assert gr.abs().max() > 1e-3
    torch.testing.assert_close(ga.double(), gr, rtol=1e-4, atol=1e-4 * float(gr.abs().max()))


def _label_rows_case(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    c, P, m = 9, 37, 200  # P: two vectors of 16 lanes and a tail of 5
    table = torch.stack([torch.randperm(m, generator=g)[:P] for _ in range(4)])
    row = torch.randint(0, 4, (c,), generator=g)
    cnt = torch.tensor([37, 0, 1, 16, 17, 36, 5, 33, 20])
    cols = table[row]
    self_col = torch.where(torch.arange(c) % 2 == 0, cols[:, 0], torch.full((c,), -1))
    return native.LabelRows(table, row, cnt), cols, cnt, self_col, g


@pytest.mark.parametrize("include", [True, False])
def test_the_label_terms_match_a_literal_float64_loop(include):
    """Σ_p softplus(neg − s_p) and σ(neg − s_p) (or the linear terms) over each row's first cnt
    columns but the anchor itself, with z from −120 to 120 (softplus and σ at both ends)."""
    rows, cols, cnt, self_col, g = _label_rows_case()
    c, P = cols.shape
    sp = torch.randn(c, P, generator=g) * 3
    neg = torch.linspace(-120.0, 120.0, c)
    loss, gsum, dsp = native.label_terms(sp, rows, self_col, neg, include)
    for r in range(c):
        ref_l = ref_g = 0.0
        ref_d = torch.zeros(P, dtype=torch.float64)
        for p in range(int(cnt[r])):
            if int(cols[r, p]) == int(self_col[r]):
                continue
            z = float(neg[r]) - float(sp[r, p])
            ell, d = (max(z, 0.0) + math.log1p(math.exp(-abs(z))), 1.0 / (1.0 + math.exp(-z))) if include else (z, 1.0)
            ref_l, ref_g, ref_d[p] = ref_l + ell, ref_g + d, -d
        # z = neg − s_p rounded to float32 moves e^z by |z| 2^-24 relative (5e-6 at |z| = 90)
        assert loss[r].item() == pytest.approx(ref_l, rel=1e-6, abs=1e-6)
        assert gsum[r].item() == pytest.approx(ref_g, rel=1e-5, abs=1e-30)
        torch.testing.assert_close(dsp[r].double(), ref_d, rtol=1e-5, atol=1e-30)


def test_the_label_scatter_adds_each_rows_values_at_its_columns():
    rows, cols, cnt, _, g = _label_rows_case()
    c, P = cols.shape
    X = torch.randn(c, 200, generator=g)
    vals, h = torch.randn(c, P, generator=g), torch.rand(c, generator=g)
    ref = X.double().clone()
    for r in range(c):
        for p in range(int(cnt[r])):
            ref[r, cols[r, p]] += float(vals[r, p]) * float(h[r])
    native.label_scatter_(X, rows, vals, h)
    torch.testing.assert_close(X.double(), ref, rtol=1e-6, atol=1e-6)


def test_label_rows_refuse_what_the_passes_cannot_read():
    table = torch.arange(12).reshape(3, 4)
    with pytest.raises(ValueError, match="rows inside the table"):
        native.LabelRows(table, torch.tensor([0, 3]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="rows inside the table"):
        native.LabelRows(table.int(), torch.tensor([0, 1]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="rows inside the table"):
        native.LabelRows(table, None, torch.tensor([1, 1, 1, 1]))  # four rows of a three-row table
    with pytest.raises(ValueError, match="must be ≥ 0"):
        native.LabelRows(table - 1, torch.tensor([0, 1]), torch.tensor([1, 1]))
    rows = native.LabelRows(table, torch.tensor([0, 2]), torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="holds 2 rows"):
        native.label_scatter_(torch.zeros(3, 12), rows, torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="reach 11, the tile has 8"):  # a write past the row's end
        native.label_scatter_(torch.zeros(2, 8), rows, torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="reach 11, the tile has 8"):
        native.softmax_rows_(torch.zeros(2, 8), None, True, None, cols=rows, fill_cols=True)


# ---------------------------------------------------------------------------------------------
# the diagnostics' row statistics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uniform,bt", [(True, 0.0), (False, 0.0), (False, 2.0)])
def test_row_statistics_match_torch_histc_and_a_float64_softmax(uniform, bt):
    g = torch.Generator().manual_seed(6)
    c, m = 7, 301
    S = torch.rand(c, m, generator=g) * 2 - 1
    W = torch.where(torch.rand(c, m, generator=g) < 0.3, -math.inf, 0.0 if uniform else torch.randn(c, m, generator=g))
    W[4] = -math.inf  # a row without a valid entry
    st = native.row_stats(S, W, uniform, bt, -1.0005, 1.0005, 4000)
    valid = torch.isfinite(W)
    assert st.n_valid.tolist() == valid.sum(1).tolist()
    torch.testing.assert_close(st.hist, torch.histc(S[valid], bins=4000, min=-1.0005, max=1.0005).double())
    for r in range(c):
        v = valid[r]
        if not v.any():
            assert st.hard[r] == -math.inf and st.sum_pp[r] == 0.0
            continue
        s, w = S[r, v].double(), W[r, v].double()
        assert st.hard[r] == s.max() and S[r, st.hard_j[r]] == s.max()
        torch.testing.assert_close(st.sum_s[r], s.sum())
        p = torch.softmax(w + bt * s, 0)
        torch.testing.assert_close(st.lse[r].double(), torch.logsumexp(w + bt * s, 0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(st.sum_ps[r], (p * s).sum(), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(st.sum_pp[r], (p * p).sum(), rtol=1e-6, atol=1e-9)


def test_the_unit_rows_gradient_matches_f_normalize_in_float32():
    """safe_normalize's backward on float32 rows takes the native pass: F.normalize's gradient."""
    from hardneg.losses.candidates import safe_normalize

    g = torch.Generator().manual_seed(7)
    x = torch.randn(37, 21, generator=g) * 3  # 21 = one vector of 16 lanes and a tail of 5
    up = torch.randn(37, 21, generator=g)
    a = x.clone().requires_grad_()
    ours, = torch.autograd.grad(safe_normalize(a), a, up)
    b = x.double().requires_grad_()
    ref, = torch.autograd.grad(torch.nn.functional.normalize(b, dim=1), b, up.double())
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("by_table", [False, True])
def test_the_softmax_pass_writes_the_column_rule_and_gathers_first(by_table):
    """The columns of each row: its own row of a (c × P) tensor, or a row of a table read through an
    index (the kernel's per-label table); only the first cnt of them, the rest padding."""
    g = torch.Generator().manual_seed(9)
    c, m, P = 6, 40, 5
    X = torch.randn(c, m, generator=g)
    self_col = torch.tensor([0, 1, -1, 3, 4, 5])
    pos_col = torch.tensor([7, -1, 9, 10, 11, 12])
    cnt = torch.tensor([5, 0, 3, 5, 2, 1])
    if by_table:
        table, row = torch.randperm(m, generator=g)[: 3 * P].reshape(3, P), torch.tensor([2, 0, 1, 2, 0, 1])
        cols = table[row]
        rows = native.LabelRows(table, row, cnt)
    else:
        cols = torch.randint(0, m, (c, P), generator=g)
        rows = native.LabelRows(cols, None, cnt)
    inactive = torch.tensor([False, False, False, False, True, False])
    Y, got = X.clone(), torch.empty(c, P)
    lse, _ = native.softmax_rows_(Y, inactive, True, None, self_col=self_col, pos_col=pos_col, cols=rows,
                                  fill_cols=True, gather=got)
    first = torch.arange(P)[None, :] < cnt[:, None]
    torch.testing.assert_close(got, torch.where(first, X.gather(1, cols), 0.0), rtol=0, atol=0)  # before the rule
    ref = X.double().clone()
    for r in range(c):
        if inactive[r]:
            ref[r] = 0.0
            continue
        ref[r, cols[r, : cnt[r]]] = -math.inf
        for col in (self_col[r], pos_col[r]):
            if col >= 0:
                ref[r, col] = -math.inf
    torch.testing.assert_close(Y.double(), torch.exp(ref), rtol=2e-6, atol=0)
    torch.testing.assert_close(lse.double(), torch.logsumexp(ref, 1), rtol=1e-6, atol=1e-6)
