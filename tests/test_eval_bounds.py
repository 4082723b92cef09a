"""The bound check: the four losses against literal formulas (Jiang et al. 2022, arXiv 2209.00078) and
Assumption 1 against a per-anchor loop."""

import math

import pytest
import torch

from hardneg.eval.bounds import assumption1, bound_terms, summarize_bounds


def literal_losses(z1, z2, y, beta, t):
    """Per anchor: UCL, SCL, H-UCL (τ⁺ = 0), H-SCL with one positive (the other view), N = 2B − 2,
    the negative term N·E_q[e^{s/t}] with q uniform / tilted ∝ e^{βs/t} over all others / other classes."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    yy = torch.cat([y, y]).tolist()
    n, B = z.shape[0], z1.shape[0]
    N = n - 2
    out = {k: [] for k in ("ucl", "scl", "hucl", "hscl")}
    for i in range(n):
        p = (i + B) % n
        sp = float(z[i] @ z[p])
        cand = [j for j in range(n) if j not in (i, p)]
        s = {j: float(z[i] @ z[j]) for j in cand}

        def term(js, tilt, s=s):
            w = [math.exp(tilt * s[j] / t) for j in js]
            return N * sum(wj * math.exp(s[j] / t) for wj, j in zip(w, js)) / sum(w)

        other = [j for j in cand if yy[j] != yy[i]]
        for key, js, tilt in (("ucl", cand, 0.0), ("scl", other, 0.0), ("hucl", cand, beta), ("hscl", other, beta)):
            out[key].append(-math.log(math.exp(sp / t) / (math.exp(sp / t) + term(js, tilt))))
    return out


def literal_assumption1(z1, z2, y, beta, t):
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    yy = torch.cat([y, y]).tolist()
    n, B = z.shape[0], z1.shape[0]
    res = []
    for i in range(n):
        cand = [j for j in range(n) if j not in (i, (i + B) % n)]
        same = [j for j in cand if yy[j] == yy[i]]
        other = [j for j in cand if yy[j] != yy[i]]
        if not same or not other:
            res.append(None)
            continue

        def tm(js, i=i):
            w = [math.exp(beta * float(z[i] @ z[j]) / t) for j in js]
            return sum(wj * float(z[i] @ z[j]) for wj, j in zip(w, js)) / sum(w)

        res.append(tm(same) >= tm(other))
    return res


@pytest.mark.parametrize("beta,t", [(1.0, 0.5), (2.0, 0.2), (0.0, 0.5)])
def test_bound_terms_match_literal(beta, t):
    g = torch.Generator().manual_seed(int(10 * beta))
    B = 8
    z1, z2 = torch.randn(B, 4, generator=g), torch.randn(B, 4, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    got = bound_terms(z1, z2, y, beta=beta, t=t)
    ref = literal_losses(z1, z2, y, beta, t)
    for k in ref:
        assert got[k] == pytest.approx(sum(ref[k]) / len(ref[k]), rel=1e-5), k
    n = 2 * B
    assert got["frac_hscl_le_hucl"] == pytest.approx(sum(a <= b + 1e-6 for a, b in zip(ref["hscl"], ref["hucl"])) / n)
    # tilting towards harder negatives can only raise the loss (Chebyshev's sum inequality), per anchor
    assert got["frac_hscl_ge_scl"] == 1.0 and got["frac_hucl_ge_ucl"] == 1.0
    per_anchor = literal_assumption1(z1, z2, y, beta, t)
    a1 = [v for v in per_anchor if v is not None]
    assert got["assumption1"] == pytest.approx(sum(a1) / len(a1))
    # the theorem's inequality among the anchors that satisfy its premise
    le_given = [a <= b + 1e-6 for a, b, ok in zip(ref["hscl"], ref["hucl"], per_anchor) if ok]
    assert le_given, "the fixture needs anchors satisfying Assumption 1"
    assert got["frac_hscl_le_hucl_given_a1"] == pytest.approx(sum(le_given) / len(le_given))


def test_assumption1_per_anchor_and_undefined():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 1, 1, 2, 2])  # class 0 has no same-class candidate
    got = assumption1(z1, z2, y, beta=1.0, t=0.5)
    ref = literal_assumption1(z1, z2, y, 1.0, 0.5)
    for a, b in zip(got.tolist(), ref):
        if b is None:
            assert math.isnan(a)
        else:
            assert a == float(b)


def test_summarize_bounds_by_hand():
    rows = [
        {"ucl": 1, "scl": 0.9, "hucl": 1.2, "hscl": 1.1, "frac_hscl_le_hucl": 0.5, "frac_hscl_ge_scl": 1.0,
         "frac_hucl_ge_ucl": 1.0, "assumption1": 0.8},
        {"ucl": 1, "scl": 0.9, "hucl": 1.0, "hscl": 1.1, "frac_hscl_le_hucl": 0.25, "frac_hscl_ge_scl": 1.0,
         "frac_hucl_ge_ucl": 1.0, "assumption1": 0.6},
    ]
    s = summarize_bounds(rows)
    assert s["batches"] == 2 and s["batch_frac_hscl_le_hucl"] == 0.5
    assert s["anchor_frac_hscl_le_hucl"] == pytest.approx(0.375) and s["assumption1"] == pytest.approx(0.7)
    assert "anchor_frac_hscl_le_hucl_given_a1" not in s  # not logged: not reported
    rows[0]["frac_hscl_le_hucl_given_a1"], rows[1]["frac_hscl_le_hucl_given_a1"] = 0.5, float("nan")
    rows.append({**rows[0], "frac_hscl_le_hucl_given_a1": 0.75})
    s = summarize_bounds(rows)  # the batch without a defined value is left out: (0.5 + 0.75) / 2
    assert s["anchor_frac_hscl_le_hucl_given_a1"] == pytest.approx(0.625)


def test_summarize_bounds_assumption1_over_the_batches_where_it_is_defined():
    """A batch whose anchors have no same-class candidate has no Assumption-1 share (NaN): the mean is
    over the other batches, by hand (0.8 + 0.5) / 2, not (0.8 + 0.5) / 3."""
    base = {"ucl": 1, "scl": 0.9, "hucl": 1.2, "hscl": 1.1, "frac_hscl_le_hucl": 0.5, "frac_hscl_ge_scl": 1.0,
            "frac_hucl_ge_ucl": 1.0}
    rows = [{**base, "assumption1": 0.8}, {**base, "assumption1": float("nan")}, {**base, "assumption1": 0.5}]
    assert summarize_bounds(rows)["assumption1"] == pytest.approx(0.65)
    assert math.isnan(summarize_bounds([rows[1]])["assumption1"])
    # on real batches: labels unique per sample leave S(i) empty for every anchor
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    defined = bound_terms(z1, z2, torch.tensor([0, 0, 0, 1, 1, 1]))
    undefined = bound_terms(z1, z2, torch.arange(6))
    assert math.isnan(undefined["assumption1"])
    ref = [a for a in literal_assumption1(z1, z2, torch.tensor([0, 0, 0, 1, 1, 1]), 1.0, 0.5) if a is not None]
    assert defined["assumption1"] == pytest.approx(sum(ref) / len(ref))
    assert summarize_bounds([defined, undefined])["assumption1"] == pytest.approx(defined["assumption1"])
