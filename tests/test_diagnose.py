"""`hardneg diagnose`: its numbers equal literal counts, and its advice names what was built into the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hardneg.cli import main
from hardneg.eval.diagnose import diagnose


def _literal(z1, z2, y):
    """Share of same-label negatives and of negatives above the positive, by explicit loops over [z1; z2]."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    yy = torch.cat([y, y])
    n, B = z.shape[0], z1.shape[0]
    same = above = total = harder = 0
    for i in range(n):
        p = (i + B) % n
        sp = float(z[i] @ z[p])
        any_above = False
        for j in range(n):
            if j in (i, p):
                continue
            total += 1
            same += int(yy[j] == yy[i])
            if float(z[i] @ z[j]) > sp:
                above += 1
                any_above = True
        harder += int(any_above)
    return same / total, above / total, harder / n


def _clusters(n, classes, seed, spread=1.0, view_noise=0.3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    cent = 3 * torch.randn(classes, 16, generator=g)
    z1 = cent[y] + spread * torch.randn(n, 16, generator=g)
    return z1, z1 + view_noise * torch.randn(n, 16, generator=g), y


def test_numbers_equal_literal_counts_on_one_batch():
    z1, z2, y = _clusters(24, 3, 0, spread=1.5, view_noise=2.0)
    d = diagnose(z1, z2, y, batch_size=24, max_batches=1)
    fn, above, harder = _literal(z1, z2, y)
    assert d.batches == 1 and d.anchors == 48 and d.candidates == pytest.approx(46)
    assert d.fn_share == pytest.approx(fn, rel=1e-9)
    assert d.above_positive_share == pytest.approx(above, rel=1e-9)
    assert d.anchors_with_harder_negative == pytest.approx(harder, rel=1e-9)
    assert 0 < above < 1  # the data really has negatives above the positive
    # the strategy's own diagnostics: uniform π puts exactly the same-label share on false negatives
    assert d.strategy_diagnostics["fn_weight_share"] == pytest.approx(fn, rel=1e-6)


def test_advice_names_false_negatives_when_classes_are_few():
    z1, z2, y = _clusters(512, 4, 1)
    d = diagnose(z1, z2, y, batch_size=128)
    assert 0.2 < d.fn_share < 0.3  # 4 balanced classes: about a quarter of the negatives
    assert any("share the anchor's class" in a and "label filter" in a for a in d.advice())


def test_advice_does_not_suggest_what_the_strategy_already_does():
    # H-SCL and SCL give same-class negatives no weight: the data has them (a quarter), the strategy
    # already keeps them out, so no label filter or H-SCL is advised; UCL on the same data is advised
    z1, z2, y = _clusters(512, 4, 1)
    for name in ("hscl", "scl"):
        d = diagnose(z1, z2, y, strategy=name, batch_size=128)
        assert d.strategy_diagnostics["fn_weight_share"] == 0.0
        text = " ".join(d.advice())
        assert f"{name} already keeps them out" in text and "label filter" not in text and "H-SCL" not in text
    assert "label filter" in " ".join(diagnose(z1, z2, y, strategy="ucl", batch_size=128).advice())


def test_report_says_n_a_for_what_was_not_measured():
    # one view (supcon): no positive pair, so no positive-hardest gap; the report says so, never "nan"
    z1, _, y = _clusters(256, 4, 1)
    d = diagnose(z1, None, y, strategy="supcon", batch_size=128)
    assert "pos_gap" not in d.strategy_diagnostics
    report = d.report()
    assert "positive − hardest negative: n/a;" in report and "nan" not in report


def test_advice_names_near_duplicates_above_the_positive():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(256, 16, generator=g)
    z2 = z1 + 1.0 * torch.randn(256, 16, generator=g)  # noisy positives
    z1[128:] = z1[:128] + 0.01 * torch.randn(128, 16, generator=g)  # near-duplicates under other ids
    y = torch.arange(256)
    d = diagnose(z1, z2, y, batch_size=256, max_batches=1)
    assert d.fn_share == 0.0
    assert d.anchors_with_harder_negative > 0.4
    assert any("above the anchor's positive" in a and "similarity filter" in a for a in d.advice())


def test_advice_for_clean_negatives_suggests_harder_ones():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(256, 64, generator=g)
    d = diagnose(z1, z1 + 0.05 * torch.randn(256, 64, generator=g), torch.arange(256), batch_size=128)
    assert d.fn_share == 0.0 and d.above_positive_share == 0.0
    assert d.advice() == [a for a in d.advice() if "look clean" in a] and len(d.advice()) == 1


def test_one_view_uses_the_nearest_same_label_sample_as_positive():
    z1, _, y = _clusters(64, 4, 4)
    d = diagnose(z1, None, y, batch_size=64, max_batches=1)
    assert d.strategy == "supcon" and d.anchors == 64 and d.candidates == pytest.approx(62)


def _cli(argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_cli_embeddings_plot_json_and_errors(tmp_path, capsys):
    z1, z2, y = _clusters(256, 4, 5)
    for name, arr in (("z1", z1), ("z2", z2), ("y", y)):
        np.save(tmp_path / f"{name}.npy", arr.numpy())
    assert _cli(["diagnose", "--embeddings", str(tmp_path / "z1.npy"), "--second-view", str(tmp_path / "z2.npy"),
                 "--labels", str(tmp_path / "y.npy"), "--plot", str(tmp_path / "d.png"),
                 "--json", str(tmp_path / "d.json"), "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "negatives sharing the anchor's class" in out and "label filter" in out
    rec = json.loads((tmp_path / "d.json").read_text())
    assert 0.2 < rec["fn_share"] < 0.3 and rec["advice"]
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert _cli(["diagnose", "--embeddings", str(tmp_path / "z1.npy"), "--run", str(tmp_path)]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_cli_with_a_training_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: digits}\nmodel: {encoder: mlp, hidden: 16, depth: 1, head_hidden: 16, proj_dim: 8}\n"
                   "train: {batch_size: 64}\nstrategy: {name: hscl, beta: 1.0}\n")
    assert _cli(["diagnose", "--config", str(cfg), "--samples", "256", "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("strategy hscl: 2 batches, 256 anchors")
    # hscl's label filter leaves no same-class weight, whatever share of the batch is same-class
    assert "π weight on same-class negatives: 0.000" in out
