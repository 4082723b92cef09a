"""The fair-budget H-SCL config, `hardneg plateau` (how many epochs until kNN stops rising) and the
bound-check report of every entry."""

import json
from pathlib import Path

import pytest
import yaml

from hardneg.cli import main
from hardneg.runs import CompareConfig, expand_grid, load_config, run_config, validate_config
from hardneg.train.losses_from_config import build_objective
from hardneg.train.plateau import knn_curve, plateau_config, plateau_epoch

ROOT = Path(__file__).resolve().parents[1]


def test_plateau_epoch_by_hand():
    curve = [(1, 0.50), (2, 0.60), (3, 0.601), (4, 0.603), (5, 0.6015)]
    # 0.601 is no gain over 0.60 (> 0.2 pp needed), 0.603 is: the wait restarts at epoch 4
    assert plateau_epoch(curve, min_gain=0.002, patience=3) is None
    curve += [(6, 0.604), (7, 0.605)]  # 0.6015, 0.604, 0.605: three evaluations within 0.2 pp of 0.603
    assert plateau_epoch(curve, min_gain=0.002, patience=3) == 4
    assert plateau_epoch(curve, min_gain=0.0, patience=1) == 4  # 0.6015 < 0.603
    assert plateau_epoch([(2, 0.5), (4, 0.5)], patience=1) == 2  # evaluations every other epoch
    assert plateau_epoch([]) is None
    with pytest.raises(ValueError, match="patience"):
        plateau_epoch(curve, patience=0)


def test_fair_config_grid():
    cfg = load_config(ROOT / "configs" / "hscl_fair.yaml", None, CompareConfig)
    specs = expand_grid(cfg)
    assert len(specs) == 36 and cfg.grid.seeds == [0, 1, 2] and cfg.bounds.enabled
    by_label = {}
    for s in specs:
        by_label.setdefault(s.label, set()).add(s.beta)
    assert by_label == {"ucl": {None}, "scl_view": {None}, "scl_labels": {None},
                        "hucl": {0.5, 1.0, 2.0}, "hscl_view": {0.5, 1.0, 2.0}, "hscl_labels": {0.5, 1.0, 2.0}}
    for s in specs:
        if s.seed == 0:
            st = build_objective(run_config(cfg, s))
            st = getattr(st, "strategy", st)
            if s.label.endswith("_labels"):
                assert st.positives == "labels" and st.positive_reduce == "pairs"
            if s.label.endswith("_view"):
                assert st.positives == "view"
    assert cfg.report.bases == {"hscl_view": "scl_view", "hscl_labels": "scl_labels"}
    pc = plateau_config(cfg, "scl_labels", 0, 60)
    assert pc.train.epochs == 60 and pc.eval.every_epochs == 1 and not pc.eval.linear_probe
    assert pc.strategy == {"name": "scl", "positives": "labels", "positive_reduce": "pairs"}


RAW = {
    "name": "tiny_fair",
    "data": {"name": "digits", "train_limit": 192, "test_limit": 90},
    "model": {"encoder": "mlp", "hidden": 32, "depth": 1, "head_hidden": 32, "proj_dim": 16},
    "train": {"epochs": 1, "batch_size": 64, "progress": False, "checkpoint_every": 2},
    "eval": {"knn_k": 20, "probe_max_iter": 30},
    "bounds": {"enabled": True, "every": 1},
    "grid": {"losses": [{"strategy": {"name": "scl"}, "label": "scl_view"},
                        {"strategy": {"name": "hscl", "positives": "view"}, "label": "hscl_view"}],
             "betas": [1.0], "seeds": [0]},
    "report": {"embedding_map": False, "bases": {"hscl_view": "scl_view"}},
}


def test_plateau_command_prints_the_epoch_of_its_own_curve(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(RAW))
    out = tmp_path / "plateau"
    with pytest.raises(SystemExit) as e:
        main(["plateau", "--config", str(cfg), "--entry", "scl_view", "--max-epochs", "4", "--patience", "1",
              "--min-gain", "100", "--out", str(out)])
    assert e.value.code == 0
    text = capsys.readouterr().out
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    curve = knn_curve(recs)
    assert [ep for ep, _ in curve] == [1, 2, 3, 4]  # evaluated after every epoch
    for ep, acc in curve:
        assert f"{ep:>5}  {100 * acc:.2f}" in text
    # no gain can exceed 100 pp: the plateau is the first epoch
    assert plateau_epoch(curve, min_gain=1.0, patience=1) == 1
    assert "stops rising after epoch 1" in text and "train.epochs: 1" in text
    assert json.loads((out / "summary.json").read_text())["strategy"] == {"name": "scl"}
    with pytest.raises(SystemExit) as e:
        main(["plateau", "--config", str(cfg), "--entry", "nope", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "grid entry 'nope' is not in the config" in capsys.readouterr().err


def test_report_has_bound_curves_of_every_entry_and_the_base_table(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(RAW))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["compare", "--config", str(cfg), "--out", str(out)])
    assert e.value.code == 0
    capsys.readouterr()
    report = (out / "report.md").read_text()
    assert (out / "bounds_by_entry.png").stat().st_size > 1000 and "](bounds_by_entry.png)" in report
    s = json.loads((out / "runs" / "hscl_view_b1_s0" / "summary.json").read_text())
    recs = [json.loads(x) for x in (out / "runs" / "hscl_view_b1_s0" / "metrics.jsonl").read_text().splitlines()]
    given = [r["frac_hscl_le_hucl_given_a1"] for r in recs if r["type"] == "bounds"]
    given = [g for g in given if g == g]
    assert given, "the tiny run needs batches where Assumption 1 holds for some anchor"
    assert s["bounds"]["anchor_frac_hscl_le_hucl_given_a1"] == pytest.approx(sum(given) / len(given))
    row = next(line for line in report.splitlines() if line.startswith("| hscl_view_b1_s0 |"))
    assert row.endswith(f"| {sum(given) / len(given):.2f} |")
    # the base given in report.bases: hscl_view against scl_view, one seed (no spread)
    assert "| hscl β=1 |" not in report and "| hscl_view β=1 | scl_view |" in report
    assert "one seed: no spread to judge by" in report


def test_untilted_strategy_is_bound_checked_at_beta_one_like_the_named_loss(tmp_path):
    """A grid entry `{strategy: {name: scl}}` and `{name: scl}` are bound-checked at the same β (1); a
    tilted strategy at its own β; bounds.beta wins, 0 included. The evaluation diagnostics keep the
    strategy's own β (0: uniform π)."""
    from hardneg.train.trainer import Trainer

    base = {k: v for k, v in RAW.items() if k not in ("name", "grid", "report")}

    def trainer(name, **over):
        raw = {**base, **over}
        return Trainer(validate_config(raw), tmp_path / name)

    named = trainer("a", loss={"name": "scl", "params": {"t": 0.5}})
    strat = trainer("b", loss=None, strategy={"name": "scl"})
    tilted = trainer("c", loss=None, strategy={"name": "hscl", "beta": 2.0})
    forced = trainer("d", loss=None, strategy={"name": "scl"}, bounds={"enabled": True, "beta": 0.0})
    ev = [t.evaluator for t in (named, strat, tilted, forced)]
    assert tuple(e.check_beta for e in ev) == (1.0, 1.0, 2.0, 0.0)
    assert ev[1].beta == 0.0 and ev[1].t == ev[0].t == 0.5
