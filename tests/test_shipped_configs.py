"""The example configs shipped inside the package: each validates and builds its objectives;
`hardneg init KIND` writes one (never over a file without --force) and `hardneg train --config` runs it."""

import tomllib
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli as _cli

ROOT = Path(__file__).resolve().parents[1]
# the shipped train config made tiny: the same keys a user edits first
TINY = ["data.train_limit=128", "data.test_limit=60", "train.epochs=1", "train.batch_size=64", "train.threads=1",
        "train.progress=false", "model={encoder: mlp, hidden: 16, depth: 1, head_hidden: 16, proj_dim: 8}",
        "eval={every_epochs: 1, knn_k: 10, probe_max_iter: 20}"]




def _sets():
    return [x for s in TINY for x in ("--set", s)]


@pytest.mark.parametrize("name", ["train", "compare", "leaderboard"])
def test_each_shipped_config_validates_and_builds_its_objectives(name):
    from hardneg.runs import SHIPPED_CONFIGS, expand_grid, load_config, run_config
    from hardneg.train.losses_from_config import build_objective

    cls = SHIPPED_CONFIGS[name]
    cfg = load_config(name, None, cls)  # a shipped name where no such file exists
    assert type(cfg) is cls
    runs = [run_config(cfg, spec) for spec in expand_grid(cfg)] if hasattr(cfg, "grid") else [cfg]
    for run in runs:
        assert callable(build_objective(run))
    packaged = ROOT / "src/hardneg/configs" / f"{name}.yaml"
    assert packaged.is_file()


def test_shipped_configs_are_package_data():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "configs/*.yaml" in meta["tool"]["setuptools"]["package-data"]["hardneg"]
    from hardneg.runs import SHIPPED_CONFIGS

    assert sorted(p.stem for p in (ROOT / "src/hardneg/configs").glob("*.yaml")) == sorted(SHIPPED_CONFIGS)


def test_init_then_train_runs_a_tiny_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(["init", "train"], capsys)
    assert code == 0, err
    assert out.strip() == "wrote train.yaml; run it with: hardneg train --config train.yaml"
    from hardneg.runs import shipped_config

    assert (tmp_path / "train.yaml").read_text() == shipped_config("train")
    code, out, err = _cli(["train", "--config", "train.yaml", "--out", "run", *_sets()], capsys)
    assert code == 0, err
    assert out.startswith("kNN ") and "run directory: run" in out
    assert (tmp_path / "run" / "model.pt").is_file()


def test_train_runs_a_shipped_config_by_name(tmp_path, capsys):
    code, out, err = _cli(["train", "--config", "train", "--out", tmp_path / "run", *_sets()], capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "model.pt").is_file()
    code, _, err = _cli(["train", "--config", "nosuch", *_sets()], capsys)
    assert code == 2 and err.startswith("hardneg: error: config file nosuch not found") and "\n" not in err


def test_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    dest = tmp_path / "mine.yaml"
    dest.write_text("my: settings\n")
    code, _, err = _cli(["init", "compare", dest], capsys)
    assert code == 2 and err == f"hardneg: error: {dest} already exists; pass --force to replace it"
    assert dest.read_text() == "my: settings\n"
    code, out, _ = _cli(["init", "compare", dest, "--force"], capsys)
    assert code == 0 and dest.read_text().startswith("# A comparison (hardneg compare)")
    code, out, _ = _cli(["init", "leaderboard", tmp_path], capsys)  # a folder: KIND.yaml in it
    assert code == 0 and (tmp_path / "leaderboard.yaml").is_file()
    assert "hardneg compare --config" in out
    code, _, err = _cli(["init", "nosuch"], capsys)
    assert code == 2 and "no shipped config 'nosuch'; the shipped configs are train, compare, leaderboard" in err
