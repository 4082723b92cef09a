"""`hardneg compare`: the grid, resuming (finished runs are not repeated) and the report."""

import json

import pytest
import yaml

from hardneg.cli import main
from hardneg.train.compare import expand_grid
from hardneg.train.config import CompareConfig, validate_config

RAW = {
    "name": "tiny",
    "data": {"name": "digits", "train_limit": 192, "test_limit": 90},
    "model": {"encoder": "mlp", "hidden": 32, "depth": 1, "head_hidden": 32, "proj_dim": 16},
    "train": {"epochs": 1, "batch_size": 64, "progress": False, "checkpoint_every": 2},
    "eval": {"knn_k": 20, "probe_max_iter": 30},
    "bounds": {"enabled": True, "every": 1},
    "grid": {"losses": [{"name": "scl", "params": {"t": 0.5}}, {"name": "hscl", "params": {"positives": "view"}}],
             "betas": [0.5, 2.0], "seeds": [0, 1]},
    "report": {"embedding_map": True, "map_points": 60},
}


def test_grid_expansion():
    specs = expand_grid(validate_config(RAW, CompareConfig))
    assert [s.name for s in specs] == ["scl_s0", "scl_s1", "hscl_b0.5_s0", "hscl_b0.5_s1", "hscl_b2_s0", "hscl_b2_s1"]
    assert specs[2].params == {"positives": "view", "beta": 0.5}


def test_compare_resumes_and_reports(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(RAW))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["compare", "--config", str(cfg), "--out", str(out)])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "| hscl | 0.5 | 2 |" in text and f"report: {out / 'report.md'}" in text
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 6
    # the table's mean equals the mean of the runs' summaries
    import numpy as np

    knn = [json.loads((out / "runs" / f"hscl_b2_s{s}" / "summary.json").read_text())["knn_acc"] for s in (0, 1)]
    m, sd = 100 * np.mean(knn), 100 * np.std(knn, ddof=1)
    assert f"| hscl | 2 | 2 | {m:.2f} ± {sd:.2f} |" in (out / "report.md").read_text()
    pngs = ("accuracy_vs_beta.png", "loss_curves.png", "bounds.png", "embedding_map.png", "diag_hardest_fn_share.png")
    for png in pngs:
        assert (out / png).stat().st_size > 1000
    # interrupted run: its summary/model are gone but its checkpoint remains; --resume redoes only it
    done = out / "runs" / "scl_s1"
    old = json.loads((done / "summary.json").read_text())
    (done / "summary.json").unlink()
    (done / "model.pt").unlink()
    mtime = (out / "runs" / "scl_s0" / "summary.json").stat().st_mtime_ns
    with pytest.raises(SystemExit) as e:
        main(["compare", "--config", str(cfg), "--out", str(out), "--resume"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.count("done before, skipped") == 5 and "scl_s1: kNN" in text
    assert (out / "runs" / "scl_s0" / "summary.json").stat().st_mtime_ns == mtime
    new = json.loads((done / "summary.json").read_text())
    assert new["knn_acc"] == old["knn_acc"] and new["linear_acc"] == old["linear_acc"]
    # a different config into the same folder is refused; --docs writes the tables
    with pytest.raises(SystemExit) as e:
        main(["compare", "--config", str(cfg), "--out", str(out), "--resume", "--set", "train.epochs=2"])
    assert e.value.code == 2 and "different run" in capsys.readouterr().err
    docs = tmp_path / "results_tiny.md"
    with pytest.raises(SystemExit) as e:
        main(["report", str(out), "--docs", str(docs)])
    assert e.value.code == 0 and "| scl | – | 2 |" in docs.read_text()


def test_grid_takes_strategy_mappings(tmp_path):
    """A grid entry may be a full strategy mapping; it is tilted (run once per β) when it sets beta."""
    from hardneg.train.compare import run_compare, run_config

    raw = json.loads(json.dumps(RAW))
    raw["grid"]["losses"] = [
        {"strategy": {"name": "hscl", "beta": 1.0, "source": {"kind": "queue", "size": 128}}, "label": "hscl_q"},
        {"strategy": {"name": "topk", "k": 4}},
    ]
    cfg = validate_config(raw, CompareConfig)
    specs = expand_grid(cfg)
    assert [s.name for s in specs] == ["hscl_q_b0.5_s0", "hscl_q_b0.5_s1", "hscl_q_b2_s0", "hscl_q_b2_s1",
                                       "topk_s0", "topk_s1"]
    rc = run_config(cfg, specs[2])
    assert rc.loss is None and rc.train.seed == 0
    assert rc.strategy == {"name": "hscl", "beta": 2.0, "source": {"kind": "queue", "size": 128}}
    assert cfg.grid.losses[0].strategy["beta"] == 1.0  # the grid's own mapping is not changed
    with pytest.raises(ValueError, match="exactly one of 'name'"):
        validate_config({**raw, "grid": {"losses": [{"name": "ucl", "strategy": {"name": "ucl"}}]}}, CompareConfig)
    # an unknown option in any entry is refused before the output folder is created
    raw["grid"]["losses"][1]["strategy"]["kk"] = 3
    with pytest.raises(ValueError, match=r"strategy: unknown option\(s\) \['kk'\]"):
        run_compare(validate_config(raw, CompareConfig), tmp_path / "out")
    assert not (tmp_path / "out").exists()
