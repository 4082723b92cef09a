"""CEM / ACE and detection metrics on hand cases; the scene generator's model; the real-scene
loaders (ENVI, .mat) and their errors; generated shape scenes; the dense-compare command's errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardneg.data.hyperspectral import load_envi, load_scene, make_scene
from hardneg.data.shapes import PALETTE, make_shapes
from hardneg.eval.detectors import ace, cem, far_at_pd, roc_auc
from reproduce.cli import main


def test_cem_hand_case():
    # R = XᵀX / 4 = 0.75 I, so w = R⁻¹d / (dᵀR⁻¹d) = d and the scores are X @ d
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 1.0]])
    assert np.allclose(cem(X, np.array([1.0, 0.0])), [1.0, 0.0, 1.0, -1.0])
    # a general case against the formula written out with an explicit inverse; CEM(d) = 1
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4))
    d = rng.normal(size=4)
    Ri = np.linalg.inv(X.T @ X / 50)
    assert np.allclose(cem(X, d), X @ Ri @ d / (d @ Ri @ d))
    assert cem(np.vstack([X, d]), d)[-1] == pytest.approx(1.0)  # the constraint wᵀd = 1


def test_ace_hand_case():
    # μ = 0, Σ = diag(2, 8) / 3, d = (1, 1): dᵀΣ⁻¹d = 15/8; x = (1, 0): (3/2)² / (15/8 · 3/2) = 0.8;
    # x = (0, 2): (3/4)² / (15/8 · 3/2) = 0.2
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    assert np.allclose(ace(X, np.array([1.0, 1.0])), [0.8, 0.8, 0.2, 0.2])
    # scale invariance of ACE in x − μ, and the (H, W, L) layout
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6, 5, 3))
    d = rng.normal(size=3)
    a = ace(X, d)
    assert a.shape == (30,) and np.all((a >= 0) & (a <= 1 + 1e-12))


def test_detection_metrics_hand_case():
    s = np.array([0.9, 0.8, 0.3, 0.1, 0.7])
    t = np.array([1, 0, 1, 0, 0])
    assert far_at_pd(s, t, 0.5) == 0.0  # τ = 0.9 detects 1 of 2 targets
    assert far_at_pd(s, t, 1.0) == pytest.approx(2 / 3)  # τ = 0.3: 0.8 and 0.7 are false alarms
    assert far_at_pd(s, t, 0.9) == pytest.approx(2 / 3)  # 90 % of 2 targets needs both
    # AUC: of the 6 (target, background) pairs, 0.9 beats all 3, 0.3 beats one (0.1)
    assert roc_auc(s, t) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="both"):
        roc_auc(s, np.zeros(5))


def test_scene_is_the_linear_mixing_model():
    sc = make_scene(height=24, width=20, bands=12, n_endmembers=3, abundance=0.3, n_targets=10, snr_db=300.0,
                    illumination=0.0, seed=2)
    assert sc.cube.shape == (24, 20, 12) and sc.truth.sum() == 10
    assert np.allclose(sc.abundances.sum(-1), 1.0, atol=1e-5) and (sc.abundances >= 0).all()
    bg = sc.abundances @ sc.endmembers
    a = sc.target_abundance[..., None]
    assert np.allclose(sc.cube, (1 - a) * bg + a * sc.target, atol=1e-5)  # noise-free at 300 dB
    ys, xs = np.nonzero(sc.truth)
    for i in range(len(ys)):
        for j in range(i):
            assert max(abs(ys[i] - ys[j]), abs(xs[i] - xs[j])) >= 3
    noisy = make_scene(height=24, width=20, bands=12, n_endmembers=3, snr_db=20.0, illumination=0.0, seed=2)
    clean = make_scene(height=24, width=20, bands=12, n_endmembers=3, snr_db=300.0, illumination=0.0, seed=2)
    snr = 10 * np.log10((clean.cube.astype(np.float64) ** 2).mean() / ((noisy.cube - clean.cube) ** 2).mean())
    assert snr == pytest.approx(20.0, abs=0.3)


def test_mat_scene_loader(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    cube = rng.uniform(size=(5, 4, 6)).astype(np.float32)
    gt = np.zeros((5, 4), np.uint8)
    gt[1, 2] = gt[3, 0] = 1
    savemat(tmp_path / "sd.mat", {"data": cube, "map": gt})
    sc = load_scene(tmp_path, "sd")
    assert np.array_equal(sc.cube, cube) and sc.truth.sum() == 2
    assert np.allclose(sc.target, (cube[1, 2] + cube[3, 0]) / 2)
    savemat(tmp_path / "bad.mat", {"a": cube, "b": cube, "map": gt})
    with pytest.raises(ValueError, match="cube"):
        load_scene(tmp_path, "bad")


def test_envi_scene_loader(tmp_path):
    envi = pytest.importorskip("spectral.io.envi")
    rng = np.random.default_rng(0)
    cube = rng.uniform(size=(4, 3, 5)).astype(np.float32)
    envi.save_image(str(tmp_path / "sc.hdr"), cube, dtype=np.float32, ext=".raw")
    assert np.array_equal(load_envi(tmp_path / "sc.hdr"), cube)
    with pytest.raises(FileNotFoundError, match="sc_gt.npy"):
        load_scene(tmp_path, "sc")
    gt = np.zeros((4, 3), bool)
    gt[2, 1] = True
    np.save(tmp_path / "sc_gt.npy", gt)
    sc = load_scene(tmp_path, "sc")
    assert np.allclose(sc.target, cube[2, 1])


def test_missing_scene_names_the_files_and_cli_exits_2(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"sd\.mat.*sd\.hdr.*downloads nothing"):
        load_scene(tmp_path, "sd")
    with pytest.raises(SystemExit) as e:
        main(["dense-compare", "hyperspectral", "--data-dir", str(tmp_path), "--scene", "sd"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sd.mat" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["dense-compare", "hyperspectral", "--scene", "sd"])
    assert e.value.code == 2 and "--data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["dense-compare", "instances", "--seeds", "a"])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_shapes_scene_instances_match_colours():
    X, Y = make_shapes(6, size=20, noise=0.0, seed=3)
    assert X.shape == (6, 3, 20, 20) and Y.shape == (6, 20, 20)
    for i in range(6):
        for s in np.unique(Y[i]):
            if s == 0:
                continue
            px = X[i][:, Y[i] == s].T  # an instance's pixels: its colour or its darker outline
            cols = np.unique(px.round(5), axis=0)
            base = [c for c in PALETTE if any(np.allclose(p, c, atol=1e-5) or np.allclose(p, 0.55 * c, atol=1e-5)
                                              for p in cols)]
            assert len(base) >= 1 and all(
                any(np.allclose(p, c, atol=1e-5) or np.allclose(p, 0.55 * c, atol=1e-5) for c in base) for p in cols
            )


def test_experiment_smoke_scores_every_pixel():
    from reproduce.hyperspectral import HSConfig, train_embedding

    sc = make_scene(height=16, width=16, bands=10, n_targets=5, seed=0)
    torch.manual_seed(0)
    for variant in ("uniform", "fine"):
        s, z, proto = train_embedding(sc, variant, HSConfig(steps=2, batch=16), 0)
        assert s.shape == (256,) and np.isfinite(s).all()
        # the score is the cosine of each pixel's unit embedding with the unit prototype
        np.testing.assert_allclose(s, z @ (proto / np.linalg.norm(proto)), rtol=1e-5, atol=1e-6)


def test_input_transform_whitens_or_standardises():
    from reproduce.hyperspectral import input_transform

    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[2.0, 0.5, 0, 0], [0, 1, 0.3, 0], [0, 0, 3, 1], [0, 0, 0, 0.5]])
    X = torch.randn(500, 4, generator=g) @ mix
    Z = input_transform(X, True)(X).double()
    assert torch.allclose(torch.cov(Z.T), torch.eye(4, dtype=torch.float64), atol=1e-4)
    S = input_transform(X, False)(X)
    assert torch.allclose(S.mean(0), torch.zeros(4), atol=1e-5) and torch.allclose(S.std(0), torch.ones(4), atol=1e-4)


def _linear_reference(height, width, bands, n_endmembers, abundance, n_targets, snr_db, smoothness, sharpness,
                      illumination, seed):
    """The linear mixing model with Gaussian noise written out draw by draw (the reference the
    generator must reproduce with every variability parameter off)."""
    from hardneg.data.hyperspectral import _smooth_field, smooth_spectra

    rng = np.random.default_rng(seed)
    spectra = smooth_spectra(n_endmembers + 1, bands, rng)
    E, d = spectra[:n_endmembers], spectra[n_endmembers]
    logits = sharpness * _smooth_field((height, width, n_endmembers), (smoothness, smoothness, 0), rng)
    ab = np.exp(logits - logits.max(-1, keepdims=True))
    ab /= ab.sum(-1, keepdims=True)
    cube = ab @ E
    if illumination > 0:
        cube *= (1.0 + illumination * _smooth_field((height, width), smoothness, rng))[..., None].clip(0.5, 1.5)
    taken = np.zeros((height, width), bool)
    ta = np.zeros((height, width))
    for p in rng.permutation(height * width):
        y, x = divmod(int(p), width)
        if taken[max(0, y - 2): y + 3, max(0, x - 2): x + 3].any():
            continue
        taken[y, x] = True
        ta[y, x] = abundance
        if taken.sum() == n_targets:
            break
    cube = (1.0 - ta[..., None]) * cube + ta[..., None] * d
    sigma = np.sqrt((cube**2).mean() / 10 ** (snr_db / 10))
    return (cube + rng.normal(scale=sigma, size=cube.shape)).astype(np.float32), ab


@pytest.mark.parametrize("kw", [dict(abundance=0.05, seed=1),
                                dict(height=24, width=20, bands=12, n_endmembers=3, illumination=0.0, seed=2)])
def test_variability_off_is_the_linear_scene_bit_for_bit(kw):
    args = dict(height=64, width=64, bands=50, n_endmembers=5, abundance=0.1, n_targets=40, snr_db=30.0,
                smoothness=4.0, sharpness=2.0, illumination=0.1, seed=0) | kw
    cube, ab = _linear_reference(**args)
    off = dict(scale_spread=0.0, endmember_variability=0.0, target_variability=0.0, bilinear=0.0, n_regions=1,
               region_contrast=0.0)
    for sc in (make_scene(**kw), make_scene(**kw, **off)):
        assert np.array_equal(sc.cube, cube) and np.array_equal(sc.abundances, ab.astype(np.float32))
        assert (sc.pixel_scale == 1).all() and (sc.regions == 0).all()


_CLEAN = dict(height=32, width=32, bands=40, snr_db=300.0, illumination=0.0, n_targets=20, seed=4)


def test_per_pixel_scale_spread_is_the_parameter():
    base, sc = make_scene(**_CLEAN), make_scene(**_CLEAN, scale_spread=0.2)
    ratio = sc.cube.astype(np.float64) / base.cube
    assert np.allclose(ratio, sc.pixel_scale[..., None], rtol=1e-4)  # one factor per pixel, every band
    assert np.log(sc.pixel_scale).std() == pytest.approx(0.2, rel=0.05)  # 1024 draws of N(0, 0.2²)


def test_bilinear_term_is_the_fan_formula_on_two_endmembers():
    g = 0.7
    sc = make_scene(**_CLEAN, n_endmembers=2, abundance=0.4, bilinear=g)
    e1, e2, d = (v.astype(np.float64) for v in (*sc.endmembers, sc.target))
    y, x = np.argwhere(~sc.truth)[5]
    a1, a2 = sc.abundances[y, x].astype(np.float64)
    assert np.allclose(sc.cube[y, x], a1 * e1 + a2 * e2 + g * a1 * a2 * e1 * e2, atol=1e-5)
    # a target pixel: materials e1, e2, d with abundances (1 − a) a1, (1 − a) a2, a; three pairs
    y, x = np.argwhere(sc.truth)[0]
    a1, a2 = (1 - 0.4) * sc.abundances[y, x].astype(np.float64)
    want = a1 * e1 + a2 * e2 + 0.4 * d + g * (a1 * a2 * e1 * e2 + a1 * 0.4 * e1 * d + a2 * 0.4 * e2 * d)
    assert np.allclose(sc.cube[y, x], want, atol=1e-5)


def test_signature_variability_spread_and_band_smoothness():
    v = 0.1
    sc = make_scene(**_CLEAN, n_endmembers=1, endmember_variability=v)  # one endmember: every pixel is e(p)
    rel = sc.cube[~sc.truth].astype(np.float64) / sc.endmembers[0] - 1.0
    assert rel.std() == pytest.approx(v, rel=0.02)
    # Gaussian smoothing of white noise with σ = 4 bands: lag-1 correlation exp(−1 / (4σ²)) = 0.984
    # away from the spectrum's ends (bands 20 … 100 of 120)
    long = make_scene(**(_CLEAN | dict(bands=120)), n_endmembers=1, endmember_variability=v)
    f = (long.cube[~long.truth].astype(np.float64) / long.endmembers[0] - 1.0)[:, 20:-20]
    assert (f[:, 1:] * f[:, :-1]).mean() / (f**2).mean() == pytest.approx(np.exp(-1 / 64), abs=0.005)
    tg = make_scene(**_CLEAN, abundance=1.0, target_variability=v)  # pure target pixels hold d(p)
    rel_t = tg.cube[tg.truth].astype(np.float64) / tg.target - 1.0
    assert rel_t.std() == pytest.approx(v, rel=1e-3) and not np.allclose(rel_t[0], rel_t[1])
    assert np.array_equal(tg.cube[~tg.truth], make_scene(**_CLEAN, abundance=1.0).cube[~tg.truth])


def test_regions_shift_the_abundance_logits_per_region():
    base, sc = make_scene(**_CLEAN), make_scene(**_CLEAN, n_regions=4, region_contrast=2.0)
    assert set(np.unique(sc.regions)) == {0, 1, 2, 3}
    # softmax: log a_i − log a_0 = logit_i − logit_0, so the change of it is b_r[i] − b_r[0] within region r
    shift = np.log(sc.abundances.astype(np.float64)) - np.log(base.abundances)
    rel = shift[..., 1:] - shift[..., :1]
    per_region = np.stack([rel[sc.regions == r].mean(0) for r in range(4)])
    for r in range(4):
        assert np.allclose(rel[sc.regions == r], per_region[r], atol=1e-3)
    assert per_region.std(0).min() > 0.5  # the regions differ (b ~ N(0, 2²))


def test_mixing_option_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["dense-compare", "hyperspectral", "--mixing", "linear,curved"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--mixing" in err[0] and "curved" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["dense-compare", "hyperspectral", "--hs-batch", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--hs-batch" in err[0]


def test_run_scene_reports_every_detector_and_the_hybrids():
    from reproduce.hyperspectral import HSConfig, run_scene

    sc = make_scene(height=16, width=16, bands=10, n_targets=5, seed=0, scale_spread=0.1, bilinear=1.0)
    rows = run_scene(0.1, 0, HSConfig(steps=2, batch=16), scene=sc)
    assert [r.method for r in rows] == ["CEM", "ACE", "contrastive-uniform", "contrastive-hard", "contrastive-fine",
                                        "hybrid-CEM", "hybrid-ACE"]
    assert all(0.0 <= r.auc <= 1.0 and 0.0 <= r.far90 <= 1.0 for r in rows)
    assert rows[0].auc == roc_auc(cem(sc.cube, sc.target), sc.truth)


def test_results_page_uses_the_sample_std():
    from reproduce.dense_report import hyperspectral_table, instances_table

    rows = [dict(scene="synthetic", mixing="variability", abundance=0.1, seed=s, method=m, auc=a, far90=f)
            for s, (a, f, a2, f2) in enumerate([(0.5, 0.2, 0.9, 0.5), (0.6, 0.3, 0.9, 0.5), (0.7, 0.7, 0.9, 0.5)])
            for m, a, f in (("CEM", a, f), ("ACE", a2, f2))]
    table = hyperspectral_table(rows)
    # AUC 0.5, 0.6, 0.7: mean 0.6, Σ(x − 0.6)² = 0.02, sample std √(0.02 / 2) = 0.1 (population: 0.0816)
    # FAR 0.2, 0.3, 0.7: mean 0.4, Σ = 0.04 + 0.01 + 0.09 = 0.14, sample std √0.07 = 0.265
    assert "| 0.1 | ROC-AUC | 3 | 0.600 ± 0.100 | **0.900 ± 0.000** |" in table
    assert "| 0.1 | FAR@90 | 3 | **0.400 ± 0.265** | 0.500 ± 0.000 |" in table  # the lower FAR in bold
    inst = instances_table([dict(method="fine", seed=s, ari=v) for s, v in enumerate([0.4, 0.5, 0.9])])
    # mean 0.6, Σ = 0.04 + 0.01 + 0.09 = 0.14, sample std √0.07 = 0.265
    assert "| fine | 0.600 ± 0.265 | 0.400 | 0.500 | 0.900 |" in inst
