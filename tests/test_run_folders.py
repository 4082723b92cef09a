"""Run and compare folders: `--overwrite` deletes only what hardneg wrote, nothing is written before the
config is validated, resume checks metrics.jsonl and the checkpoint's identity, output permissions,
stale temporary files, and one-line errors (exit 2) for damaged or foreign inputs."""

import json
import os
import stat
import tempfile

import pytest
import torch
import yaml

from hardneg import runs
from hardneg.train.trainer import Trainer
from tests.cli_helpers import run_cli as _cli
from tests.test_train_trainer import BASE, cfg, literal_nt_xent

COMPARE = {
    "name": "tiny",
    "data": {"name": "digits", "train_limit": 128, "test_limit": 60},
    "model": {"encoder": "mlp", "hidden": 16, "depth": 1, "head_hidden": 16, "proj_dim": 8},
    "train": {"epochs": 1, "batch_size": 64, "progress": False, "checkpoint_every": 1},
    "eval": {"knn_k": 10, "probe_max_iter": 20},
    "bounds": {"enabled": True, "every": 1},
    "grid": {"losses": [{"name": "scl"}, {"name": "hscl", "params": {"positives": "view"}}], "seeds": [0]},
    "report": {"embedding_map": True, "map_points": 40},
}




def _yaml(tmp_path, raw, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def _snapshot(d):
    """Every file under ``d`` (relative path -> bytes) and every folder."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def _user_files(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "notes.txt").write_text("my notes\n")
    (d / "sub").mkdir()
    (d / "sub" / "data.csv").write_text("a,b\n1,2\n")


def _train_cfg(tmp_path, **train):
    raw = json.loads(json.dumps(BASE))
    raw["train"].update({"epochs": 1, "threads": 1, **train})
    raw["bounds"]["enabled"] = False
    return _yaml(tmp_path, raw, "train.yaml")


# ------------------------------------------------------------------------------- --overwrite
@pytest.mark.parametrize("command", ["train", "bounds", "compare"])
def test_unrelated_files_survive_every_command(tmp_path, capsys, command):
    conf = _yaml(tmp_path, COMPARE) if command == "compare" else _train_cfg(tmp_path)
    d = tmp_path / "mine"
    _user_files(d)
    before = _snapshot(d)
    for extra in ([], ["--overwrite"], ["--resume"]):
        code, _, err = _cli([command, "--config", conf, "--out", d, *extra], capsys)
        assert code == 2 and err.count("\n") == 0, err
        assert "notes.txt" in err and "sub/" in err
        assert _snapshot(d) == before


def test_a_users_config_yaml_is_never_taken_for_a_run(tmp_path):
    """A folder holding the user's own config.yaml (hardneg's file name) but no marker is not a run."""
    d = tmp_path / "project"
    d.mkdir()
    (d / "config.yaml").write_text("my: settings\n")
    (d / "notes.txt").write_text("mine\n")
    before = _snapshot(d)
    for kw in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(FileExistsError, match=r"no hardneg marker .*it holds config\.yaml, notes\.txt"):
            Trainer(cfg(train__epochs=1), d, loss_fn=literal_nt_xent, **kw)
        assert _snapshot(d) == before


def test_overwrite_of_the_current_directory_refused(tmp_path, capsys, monkeypatch):
    conf = _train_cfg(tmp_path)
    work = tmp_path / "work"
    _user_files(work)
    monkeypatch.chdir(work)
    before = _snapshot(work)
    code, _, err = _cli(["train", "--config", conf, "--out", ".", "--overwrite"], capsys)
    assert code == 2 and "notes.txt" in err and _snapshot(work) == before
    # a current directory holding nothing but a run: --overwrite replaces the run, the folder stays
    run_here = tmp_path / "run_here"
    run_here.mkdir()
    monkeypatch.chdir(run_here)
    assert _cli(["train", "--config", conf, "--out", "."], capsys)[0] == 0
    (run_here / runs.METRICS).write_text("")
    assert _cli(["train", "--config", conf, "--out", ".", "--overwrite"], capsys)[0] == 0
    assert run_here.is_dir() and len(runs.read_metrics(run_here)) > 4  # trained again from scratch


def test_overwrite_deletes_only_run_files(tmp_path, capsys):
    conf = _train_cfg(tmp_path)
    d = tmp_path / "r"
    assert _cli(["bounds", "--config", conf, "--out", d], capsys)[0] == 0  # run files + report + plots
    names = {p.name for p in d.iterdir()}
    assert names <= set(runs.RUN_FILES) and {runs.REPORT, "bounds.png", runs.MODEL} <= names
    (d / "notes.txt").write_text("mine")
    before = _snapshot(d)
    code, _, err = _cli(["bounds", "--config", conf, "--out", d, "--overwrite"], capsys)
    assert code == 2 and "refusing to --overwrite" in err and "notes.txt" in err
    assert _snapshot(d) == before
    (d / "notes.txt").unlink()
    (d / "metrics.jsonl").write_text("")  # proves the run is redone from scratch
    assert _cli(["bounds", "--config", conf, "--out", d, "--overwrite"], capsys)[0] == 0
    assert len((d / "metrics.jsonl").read_text().splitlines()) > 4
    assert json.loads((d / runs.MARKER).read_text()) == {"written_by": "hardneg", "kind": "run"}


def test_compare_overwrite_deletes_only_what_compare_wrote(tmp_path, capsys):
    conf = _yaml(tmp_path, COMPARE)
    out = tmp_path / "out"
    assert _cli(["compare", "--config", conf, "--out", out], capsys)[0] == 0
    # every file the grid and its report wrote is one hardneg knows as its own
    assert all(runs.owned_name(p.name, "compare") for p in out.iterdir() if p.name != runs.RUNS)
    for r in (out / runs.RUNS).iterdir():
        assert {p.name for p in r.iterdir()} <= set(runs.RUN_FILES) and runs.read_marker(r) == "run"
    (out / runs.RUNS / "scl_s0" / "notes.txt").write_text("mine")
    (out / "notes.png").write_text("mine too")  # a plot name the report does not write
    before = _snapshot(out)
    code, _, err = _cli(["compare", "--config", conf, "--out", out, "--overwrite"], capsys)
    assert code == 2 and "notes.png, runs/scl_s0/notes.txt" in err and _snapshot(out) == before
    code, _, err = _cli(["train", "--config", _train_cfg(tmp_path), "--out", out, "--overwrite"], capsys)
    assert code == 2 and "compare output, not a run" in err and _snapshot(out) == before
    (out / runs.RUNS / "scl_s0" / "notes.txt").unlink()
    (out / "notes.png").unlink()
    assert _cli(["compare", "--config", conf, "--out", out, "--overwrite"], capsys)[0] == 0
    assert (out / runs.REPORT).is_file() and (out / runs.RUNS / "hscl_b1_s0" / runs.SUMMARY).is_file()


def test_clear_output_keeps_foreign_temporaries(tmp_path):
    """Only temporaries standing for hardneg's own file names count as hardneg's."""
    d = tmp_path / "r"
    Trainer(cfg(train__epochs=1), d, loss_fn=literal_nt_xent).fit()
    fd, own = tempfile.mkstemp(prefix=f".{runs.CHECKPOINT}.", suffix=".tmp", dir=d)
    os.close(fd)
    fd, other = tempfile.mkstemp(prefix=".notes.txt.", suffix=".tmp", dir=d)
    os.close(fd)
    assert runs.foreign_entries(d, "run") == [os.path.basename(other)]
    os.unlink(other)
    runs.clear_output(d, "run")
    assert list(d.iterdir()) == [] and not os.path.exists(own)


# ------------------------------------------------------------------------------- validate first
@pytest.mark.parametrize(
    "override,words",
    [
        ("loss.name=bogus", "unknown loss 'bogus'"),
        ("loss.params.gamma=3", "does not take ['gamma']"),
        ("data.name=fashion_mnist", "fashion"),
        ("train.batch_size=4096", "larger than the training set"),
    ],
)
def test_failed_validation_leaves_nothing_then_rerun_and_resume_work(tmp_path, capsys, override, words):
    conf = _train_cfg(tmp_path)
    d = tmp_path / "r"
    extra = ["--data-dir", tmp_path / "no-data"] if "fashion" in override else []
    code, _, err = _cli(["train", "--config", conf, "--out", d, "--set", override, *extra], capsys)
    assert code == 2 and words in err and err.count("\n") == 0
    assert not d.exists()
    assert _cli(["train", "--config", conf, "--out", d, "--resume"], capsys)[0] == 0
    assert (d / runs.MODEL).is_file()


def test_compare_with_a_bad_grid_loss_leaves_nothing(tmp_path, capsys):
    raw = json.loads(json.dumps(COMPARE))
    raw["grid"]["losses"].append({"name": "hucl", "params": {"gamma": 1}})
    out = tmp_path / "out"
    code, _, err = _cli(["compare", "--config", _yaml(tmp_path, raw), "--out", out], capsys)
    assert code == 2 and "does not take ['gamma']" in err and not out.exists()


def test_set_with_broken_yaml_is_one_line(tmp_path, capsys):
    code, _, err = _cli(["train", "--config", _train_cfg(tmp_path), "--out", tmp_path / "r",
                         "--set", "loss.params={t: ["], capsys)
    assert code == 2 and err.count("\n") == 0 and "'loss.params={t: ['" in err and "not valid YAML" in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------- resume
def _crashed_run(tmp_path, name="crashed"):
    """A run that crashed at step 11 (checkpoint at step 10), and an uninterrupted one to compare with."""
    calls = [0]

    def crashing(z1, z2, y):
        calls[0] += 1
        if calls[0] == 11:
            raise RuntimeError("simulated crash")
        return literal_nt_xent(z1, z2, y)

    d = tmp_path / name
    with pytest.raises(RuntimeError, match="simulated"):
        Trainer(cfg(), d, loss_fn=crashing).fit()
    return d


def test_resume_refuses_corrupt_metrics_line_then_repairs(tmp_path):
    d = _crashed_run(tmp_path)
    lines = (d / runs.METRICS).read_bytes().split(b"\n")
    lines[2] = b'{"type": "st' + b"\x00" * (len(lines[2]) - 12)  # line 3 damaged, the length kept
    (d / runs.METRICS).write_bytes(b"\n".join(lines))
    before = _snapshot(d)
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 3 is not a metrics record .*step 10.*--repair-metrics"):
        Trainer(cfg(), d, loss_fn=literal_nt_xent, resume=True)
    assert _snapshot(d) == before
    Trainer(cfg(), d, loss_fn=literal_nt_xent, resume=True, repair_metrics=True).fit()
    full = tmp_path / "full"
    Trainer(cfg(), full, loss_fn=literal_nt_xent).fit()
    expected = (full / runs.METRICS).read_bytes().split(b"\n")
    assert (d / runs.METRICS).read_bytes().split(b"\n") == expected[:2] + expected[3:]  # only line 3 is lost
    assert (d / runs.MODEL).is_file()


def test_resume_refuses_short_metrics_file_cli(tmp_path, capsys):
    conf = _train_cfg(tmp_path, epochs=2, checkpoint_every=3)
    d = tmp_path / "r"
    assert _cli(["train", "--config", conf, "--out", d], capsys)[0] == 0
    (d / runs.MODEL).unlink()
    (d / runs.SUMMARY).unlink()
    size = (d / runs.METRICS).stat().st_size
    intact = (d / runs.METRICS).read_bytes()[: size // 2].count(b"\n")
    expected = runs.read_metrics(d)[:intact]
    with open(d / runs.METRICS, "r+b") as f:
        f.truncate(size // 2)
    code, _, err = _cli(["train", "--config", conf, "--out", d, "--resume"], capsys)
    assert code == 2 and err.count("\n") == 0
    assert f"{d / runs.METRICS} holds {size // 2:,} bytes" in err and f"held {size:,}" in err
    assert b"\x00" not in (d / runs.METRICS).read_bytes() and not (d / runs.MODEL).exists()
    assert _cli(["train", "--config", conf, "--out", d, "--resume", "--repair-metrics"], capsys)[0] == 0
    # the checkpoint was the final one: the intact records are kept, the lost ones stay lost
    assert (d / runs.MODEL).is_file() and runs.read_metrics(d) == expected


def test_resume_refuses_checkpoint_of_another_run(tmp_path, capsys):
    a = _crashed_run(tmp_path, "a")
    b = tmp_path / "b"
    Trainer(cfg(train__epochs=2), b, loss_fn=literal_nt_xent).fit()
    (a / runs.CHECKPOINT).write_bytes((b / runs.CHECKPOINT).read_bytes())
    with pytest.raises(ValueError, match=r"checkpoint .*a/checkpoint\.pt belongs to another run"):
        Trainer(cfg(), a, loss_fn=literal_nt_xent, resume=True)


def test_stale_temporaries_cleaned_on_resume(tmp_path):
    d = _crashed_run(tmp_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{runs.CHECKPOINT}.", suffix=".tmp", dir=d)  # what SIGKILL leaves
    os.write(fd, b"half a checkpoint")
    os.close(fd)
    Trainer(cfg(), d, loss_fn=literal_nt_xent, resume=True).fit()
    assert not os.path.exists(tmp) and not [p for p in d.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------- permissions
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_output_files_follow_the_umask(tmp_path, capsys, mask):
    old = os.umask(mask)
    try:
        d = tmp_path / "r"
        assert _cli(["bounds", "--config", _train_cfg(tmp_path), "--out", d], capsys)[0] == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}
    assert set(modes.values()) == {0o666 & ~mask}, modes


# ------------------------------------------------------------------------------- eval
def test_eval_errors_name_the_thing(tmp_path, capsys):
    code, _, err = _cli(["eval", tmp_path], capsys)
    assert code == 2 and f"{tmp_path} is not a hardneg run directory" in err
    conf = _train_cfg(tmp_path)
    d = tmp_path / "r"
    assert _cli(["train", "--config", conf, "--out", d], capsys)[0] == 0
    (d / runs.MODEL).write_bytes(b"not a model")
    code, _, err = _cli(["eval", d], capsys)
    assert code == 2 and err.count("\n") == 0 and f"{d / runs.MODEL} cannot be loaded" in err
    torch.save({"wrong": torch.zeros(2)}, d / runs.MODEL)
    code, _, err = _cli(["eval", d], capsys)
    assert code == 2 and err.count("\n") == 0 and f"{d / runs.MODEL} cannot be loaded" in err
