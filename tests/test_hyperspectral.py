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
    from reproduce.hyperspectral import HSConfig, train_detector

    sc = make_scene(height=16, width=16, bands=10, n_targets=5, seed=0)
    torch.manual_seed(0)
    for variant in ("uniform", "fine"):
        s = train_detector(sc, variant, HSConfig(steps=2, batch=16), 0)
        assert s.shape == (256,) and np.isfinite(s).all()


def test_input_transform_whitens_or_standardises():
    from reproduce.hyperspectral import input_transform

    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[2.0, 0.5, 0, 0], [0, 1, 0.3, 0], [0, 0, 3, 1], [0, 0, 0, 0.5]])
    X = torch.randn(500, 4, generator=g) @ mix
    Z = input_transform(X, True)(X).double()
    assert torch.allclose(torch.cov(Z.T), torch.eye(4, dtype=torch.float64), atol=1e-4)
    S = input_transform(X, False)(X)
    assert torch.allclose(S.mean(0), torch.zeros(4), atol=1e-5) and torch.allclose(S.std(0), torch.ones(4), atol=1e-4)
