"""The strategy leaderboard: the shipped config covers every preset, each preset has a base, and the
whole pipeline (compare → report --docs) on digits puts the runs' own numbers in the tables."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from hardneg import runs
from hardneg.cli import main
from hardneg.negatives.registry import PRESETS, list_strategies
from hardneg.report.leaderboard import NOT_ON_LEADERBOARD, BaseComparison, base_label, preset_of
from hardneg.report.stats import versus
from hardneg.runs import CompareConfig, expand_grid, load_config, run_config
from hardneg.train.losses_from_config import build_objective

ROOT = Path(__file__).resolve().parents[1]


def test_every_preset_has_a_base_that_is_a_preset():
    bases = {name: p.base for name, p in PRESETS.items()}
    assert set(bases) == set(list_strategies())
    assert all(b is None or b in bases for b in bases.values())
    assert [p for p, b in bases.items() if b is None] == ["ucl"]
    assert (bases["hscl"], bases["mochi"], bases["adco"], bases["supcon"]) == ("scl", "moco_queue", "moco_queue", "scl")


def test_the_leaderboard_reads_bases_from_the_preset_registry():
    labels = {"ucl", "scl", "hscl", "mochi", "my_topk"}
    assert base_label("hscl", "hscl", labels, {}) == "scl"
    assert base_label("mochi", "mochi", labels, {}) is None  # its base moco_queue is not in the grid
    assert base_label("my_topk", "topk", labels, {}) == "ucl"
    assert base_label("my_topk", "topk", labels, {"my_topk": "scl"}) == "scl"  # report.bases first
    assert base_label("ucl", "ucl", labels, {}) is None and base_label("x", "not_a_preset", labels, {}) is None


def test_leaderboard_config_runs_every_preset_or_says_why_not():
    cfg = load_config(ROOT / "configs" / "strategies_leaderboard.yaml", None, CompareConfig)
    specs = expand_grid(cfg)
    in_grid = {s.strategy["name"] for s in specs}
    assert in_grid | set(NOT_ON_LEADERBOARD) == set(list_strategies())
    assert not in_grid & set(NOT_ON_LEADERBOARD)
    assert cfg.grid.seeds == [0, 1, 2] and cfg.data.train_limit == 10000 and cfg.data.test_limit is None
    assert cfg.report.confusable_classes == [0, 2, 4, 6]
    for s in specs:  # every grid point builds (options valid) without touching the disk
        if s.seed == 0:
            build_objective(run_config(cfg, s))


def test_base_comparison_reading_by_hand():
    # kNN: 0.80, 0.82 vs 0.70, 0.72 -> Δ = 0.10, spread √(2·0.0002) = 0.02: beyond
    better = BaseComparison("topk", "ucl", {"kNN": versus([0.80, 0.82], [0.70, 0.72])}, 1.5)
    assert better.metrics["kNN"].diff == pytest.approx(0.10)
    assert better.metrics["kNN"].spread == pytest.approx(0.02)
    assert better.gains and better.reading() == "beats ucl beyond the seed spread, at 1.50× its base's time per step"
    # Δ = 0.005 within a spread of ~0.0707: costs 2× for nothing measurable
    flat = BaseComparison("mochi", "moco_queue", {"kNN": versus([0.70, 0.80], [0.70, 0.79])}, 2.0)
    assert not flat.gains and not flat.loses
    assert flat.reading().endswith("costs more than it gives (2.00× its base's time per step)")
    one = BaseComparison("a", "b", {"kNN": versus([0.7], [0.6])}, 1.0)
    assert one.metrics["kNN"].beyond is None and one.reading() == "one seed: no spread to judge by"


RAW = {
    "name": "tiny_leaderboard",
    "data": {"name": "digits", "train_limit": 192, "test_limit": 90},
    "model": {"encoder": "mlp", "hidden": 32, "depth": 1, "head_hidden": 32, "proj_dim": 16},
    "train": {"epochs": 1, "batch_size": 64, "progress": False, "checkpoint_every": 2},
    "eval": {"knn_k": 20, "probe_max_iter": 30},
    "grid": {
        "losses": [
            {"strategy": {"name": "ucl"}, "label": "ucl"},
            {"strategy": {"name": "scl"}, "label": "scl"},
            {"strategy": {"name": "hscl"}, "label": "hscl"},
            {"strategy": {"name": "topk", "k": 8}, "label": "topk"},
        ],
        "betas": [1.0],
        "seeds": [0, 1],
    },
    "report": {"embedding_map": False, "leaderboard": True, "confusable_classes": [0, 2, 4, 6],
               "docs_plots": True},
}


def _pm(v, scale=100.0, fmt=".2f"):
    return f"{scale * np.mean(v):{fmt}} ± {scale * np.std(v, ddof=1):{fmt}}"


def test_leaderboard_pipeline_on_digits(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(RAW))
    out, docs = tmp_path / "out", tmp_path / "docs" / "results_tiny.md"
    with pytest.raises(SystemExit) as e:
        main(["compare", "--config", str(cfg), "--out", str(out)])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        main(["report", str(out), "--docs", str(docs)])
    assert e.value.code == 0
    capsys.readouterr()
    page = docs.read_text()
    rows = {}
    for label in ("ucl", "scl", "hscl_b1", "topk"):
        for s in (0, 1):
            d = out / "runs" / f"{label}_s{s}"
            summ = json.loads((d / "summary.json").read_text())
            recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
            rows[label, s] = (summ, recs)
    assert preset_of(rows["hscl_b1", 0][0]) == "hscl"

    def col(label, f):
        return [f(*rows[label, s]) for s in (0, 1)]

    def conf(key):
        return lambda summ, recs: np.mean([summ[key][c] for c in (0, 2, 4, 6)])

    def per_step(summ, recs):
        return summ["train_seconds"] / summ["timed_steps"]

    def diag(key, summ, recs):
        return np.mean([r[f"neg_{key}"] for r in recs if r["type"] == "step"])  # one epoch: first = last

    for label, name in (("topk", "topk"), ("hscl_b1", "hscl β=1")):
        knn, lin = col(label, lambda s, r: s["knn_acc"]), col(label, lambda s, r: s["linear_acc"])
        rel = [per_step(*rows[label, s]) / per_step(*rows["ucl", s]) for s in (0, 1)]
        ess = np.mean(col(label, lambda s, r: diag("ess", s, r)))
        fnw = np.mean(col(label, lambda s, r: diag("fn_weight_share", s, r)))
        row = (
            f"| {name} | 2 | {_pm(knn)} | {_pm(lin)} | {_pm(col(label, conf('knn_per_class')))} "
            f"| {_pm(col(label, conf('linear_per_class')))} | {_pm(rel, 1.0)} | {ess:.1f} → {ess:.1f} "
        )
        assert row in page, (row, page)
        assert f"| {fnw:.3f} → {fnw:.3f} |" in page.split(row)[1].splitlines()[0]
    # hscl against its base scl, from the summaries
    a, c = col("hscl_b1", lambda s, r: s["knn_acc"]), col("scl", lambda s, r: s["knn_acc"])
    v = versus(a, c)
    t = np.mean(col("hscl_b1", per_step)) / np.mean(col("scl", per_step))
    assert f"| hscl β=1 | scl | {100 * v.diff:+.2f} ({100 * v.spread:.2f}) |" in page
    assert f"| {t:.2f}× |" in page.split("| hscl β=1 | scl |")[1].splitlines()[0]
    # the time summary adds up the runs' own times
    total = sum(rows[k][0]["train_seconds"] for k in rows)
    assert f"of which {total / 60:.1f} min in training steps" in page
    # every preset not in the grid is listed, pool and gist with their reasons
    for p in set(list_strategies()) - {"ucl", "scl", "hscl", "topk"}:
        assert f"- `{p}`: " in page
    assert "- `pool`: needs a separate corpus" in page
    # the plots are copied beside the page and shown
    for png in ("leaderboard.png", "accuracy_vs_time.png", "train_neg_ess.png", "train_neg_fn_weight_share.png"):
        assert (docs.parent / "results_tiny_files" / png).stat().st_size > 1000
        assert f"](results_tiny_files/{png})" in page
    assert math.isfinite(total) and total > 0
    # every file the report wrote is one that --overwrite may delete
    assert all(runs.owned_name(p.name, "compare") for p in out.iterdir() if p.name != runs.RUNS)


def test_report_bases_must_name_grid_labels(tmp_path, capsys):
    raw = json.loads(json.dumps(RAW))
    raw["report"]["bases"] = {"topk": "uniform"}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as e:
        main(["compare", "--config", str(cfg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "report.bases names ['uniform']" in err and not (tmp_path / "out").exists()
