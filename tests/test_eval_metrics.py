"""kNN, linear probe, alignment/uniformity and diagnostics against literal implementations."""

import math

import numpy as np
import pytest
import torch

from hardneg.eval.align_uniform import alignment, uniformity
from hardneg.eval.knn import knn_accuracy, knn_predict
from hardneg.eval.linear_probe import linear_probe, per_class_and_confusion
from hardneg.eval.two_view_diagnostics import two_view_diagnostics


def literal_knn(bank, bank_labels, queries, k, t, C):
    """One query at a time, one neighbour at a time, as described in Wu et al. 2018 / the HCL code."""
    preds = []
    for q in queries.tolist():
        qn = math.sqrt(sum(v * v for v in q))
        sims = []
        for b, lab in zip(bank.tolist(), bank_labels.tolist()):
            bn = math.sqrt(sum(v * v for v in b))
            sims.append((sum(x * y for x, y in zip(q, b)) / (qn * bn), lab))
        sims.sort(key=lambda p: -p[0])
        score = [0.0] * C
        for s, lab in sims[:k]:
            score[lab] += math.exp(s / t)
        preds.append(max(range(C), key=lambda c: (score[c], -c)))
    return preds


@pytest.mark.parametrize("k,t", [(1, 0.5), (7, 0.1), (200, 0.5)])
def test_knn_matches_literal_loop(k, t):
    g = torch.Generator().manual_seed(k)
    bank = torch.randn(60, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (60,), generator=g)
    q = torch.randn(25, 5, generator=g, dtype=torch.float64)
    got = knn_predict(bank, labels, q, k=k, t=t, num_classes=4, chunk_size=7)
    assert got.tolist() == literal_knn(bank, labels, q, min(k, 60), t, 4)
    ql = torch.tensor(literal_knn(bank, labels, q, min(k, 60), t, 4))
    assert knn_accuracy(bank, labels, q, ql, k=k, t=t, num_classes=4) == 1.0


def test_knn_errors():
    with pytest.raises(ValueError, match="same d"):
        knn_predict(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="bank_labels"):
        knn_predict(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="k must"):
        knn_predict(torch.ones(3, 2), torch.zeros(3, dtype=torch.long), torch.ones(2, 2), k=0)
    with pytest.raises(ValueError, match="t must"):
        knn_predict(torch.ones(3, 2), torch.zeros(3, dtype=torch.long), torch.ones(2, 2), t=0.0)


def test_linear_probe_equals_sklearn_pipeline_and_hand_confusion():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    ytr, yte = rng.integers(0, 3, 150), rng.integers(0, 3, 60)
    Xtr, Xte = centers[ytr] + rng.normal(size=(150, 6)), centers[yte] + rng.normal(size=(60, 6))
    r = linear_probe(torch.from_numpy(Xtr), torch.from_numpy(ytr), torch.from_numpy(Xte), torch.from_numpy(yte))
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200, random_state=0)).fit(Xtr, ytr)
    pred = ref.predict(Xte)
    assert r.accuracy == pytest.approx(float((pred == yte).mean()))
    assert r.accuracy > 0.9
    cm = np.zeros((3, 3), int)
    for a, b in zip(yte, pred):
        cm[a, b] += 1
    assert r.confusion == cm.tolist()
    assert r.per_class == pytest.approx([cm[c, c] / cm[c].sum() for c in range(3)])


def test_per_class_by_hand():
    pc, cm = per_class_and_confusion(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), 3)
    assert cm == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert pc[0] == 0.5 and pc[1] == pytest.approx(2 / 3) and math.isnan(pc[2])


def test_alignment_uniformity_match_formula():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randn(12, 4, generator=g, dtype=torch.float64)
    xn = [v / np.linalg.norm(v) for v in x.numpy()]
    yn = [v / np.linalg.norm(v) for v in y.numpy()]
    ref_align = np.mean([np.linalg.norm(a - b) ** 2 for a, b in zip(xn, yn)])
    pairs = [np.exp(-2 * np.linalg.norm(xn[i] - xn[j]) ** 2) for i in range(12) for j in range(i + 1, 12)]
    assert alignment(x, y) == pytest.approx(ref_align, rel=1e-6)
    ref_align1 = np.mean([np.linalg.norm(a - b) for a, b in zip(xn, yn)])
    assert alignment(x, y, alpha=1.0) == pytest.approx(ref_align1, rel=1e-6)
    assert uniformity(x) == pytest.approx(np.log(np.mean(pairs)), rel=1e-6)
    # identical points: alignment 0; antipodal pair: uniformity = -t·4
    assert alignment(x, x) == pytest.approx(0.0, abs=1e-12)
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
    with pytest.raises(ValueError, match="n >= 2"):
        uniformity(torch.zeros(1, 3))


def test_uniformity_t_is_wang_isola_t_and_not_a_temperature():
    """L_uniform(t) = log mean exp(−t‖x_i − x_j‖²) with t = ``uniformity_t``; ``t`` (the softmax
    temperature's alias elsewhere) is not one of its options."""
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # squared distances 4, 2, 2: log((e^{−4t} + 2 e^{−2t}) / 3)
    for t in (0.5, 3.0):
        ref = np.log((np.exp(-4 * t) + 2 * np.exp(-2 * t)) / 3)
        assert uniformity(x, uniformity_t=t) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(TypeError, match="'t'"):
        uniformity(x, t=2.0)
    with pytest.raises(ValueError, match="uniformity_t must be a finite number > 0, got 0"):
        uniformity(x, uniformity_t=0)


def test_two_view_diagnostics_literal():
    """The evaluation diagnostics: the strategies' definitions (ESS 1/Σπ², weight on false
    negatives, ...) on the SimCLR in-batch set, against a loop over anchors."""
    g = torch.Generator().manual_seed(1)
    B, beta, t = 6, 1.5, 0.5
    z1, z2 = torch.randn(B, 3, generator=g, dtype=torch.float64), torch.randn(B, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    d = two_view_diagnostics(z1, z2, y, beta=beta, t=t)
    z = torch.cat([z1, z2]).numpy()
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    yy = np.concatenate([y.numpy(), y.numpy()])
    n = 2 * B
    hard_fn, fn, ess, neg, gap, wmean = [], [], [], [], [], []
    for i in range(n):
        p = (i + B) % n
        cand = [j for j in range(n) if j not in (i, p)]
        s = {j: float(z[i] @ z[j]) for j in cand}
        neg.extend(s.values())
        jmax = max(cand, key=lambda j: s[j])
        hard_fn.append(yy[jmax] == yy[i])
        gap.append(float(z[i] @ z[p]) - s[jmax])
        w = {j: math.exp(beta * s[j] / t) for j in cand}
        Z = sum(w.values())
        fn.append(sum(w[j] for j in cand if yy[j] == yy[i]) / Z)
        ess.append(1.0 / sum((w[j] / Z) ** 2 for j in cand))
        wmean.append(sum(w[j] * s[j] for j in cand) / Z)
    assert d["ess"] == pytest.approx(np.mean(ess), rel=1e-5)
    assert d["fn_weight_share"] == pytest.approx(np.mean(fn), rel=1e-5)
    assert d["hardest_fn_share"] == pytest.approx(np.mean(hard_fn))
    assert d["pos_gap"] == pytest.approx(np.mean(gap), rel=1e-5)
    assert d["sim_mean"] == pytest.approx(np.mean(neg), rel=1e-5)
    assert d["sim_weighted_mean"] == pytest.approx(np.mean(wmean), rel=1e-5)
    assert d["n_candidates"] == n - 2
    # β = 0: π is uniform, so the ESS is the number of candidates
    assert two_view_diagnostics(z1, z2, y, beta=0.0, t=t)["ess"] == pytest.approx(n - 2, rel=1e-6)
    with pytest.raises(ValueError, match="labels must have shape"):
        two_view_diagnostics(z1, z2, y[:3])
    with pytest.raises(ValueError, match="needs labels"):  # the statistics are about same-label candidates
        two_view_diagnostics(z1, z2, None)
