"""Trainer: exact resume (metrics files byte-identical to an uninterrupted run), Ctrl-C checkpoint,
NaN stop, run-directory refusal, and the CLI's exit code 2 for user errors."""

import json
import math
import os
import signal

import pytest
import torch
from torch import nn

from hardneg.cli import main
from hardneg.train.config import validate_config
from hardneg.train.trainer import NonFiniteLossError, Trainer

BASE = {
    "data": {"name": "digits", "train_limit": 256, "test_limit": 120},
    "model": {"encoder": "mlp", "hidden": 32, "depth": 1, "head_hidden": 32, "proj_dim": 16},
    "loss": {"name": "ucl", "params": {"t": 0.5}},
    "train": {"epochs": 3, "batch_size": 64, "checkpoint_every": 5, "progress": False},
    "eval": {"knn_k": 20, "probe_max_iter": 50},
    "bounds": {"enabled": True, "every": 2},
}


def literal_nt_xent(z1, z2, labels, t=0.5):
    """SimCLR's NT-Xent written out with a dense matrix (an independent loss for these tests)."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n, B = z.shape[0], z1.shape[0]
    s = z @ z.T / t
    s = s.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    pos = torch.arange(n).roll(B)
    return (torch.logsumexp(s, 1) - s[torch.arange(n), pos]).mean()


def cfg(**over):
    raw = json.loads(json.dumps(BASE))
    for k, v in over.items():
        sec, key = k.split("__")
        raw[sec][key] = v
    return validate_config(raw)


def run_full(tmp_path, name="full", **over):
    d = tmp_path / name
    s = Trainer(cfg(**over), d, loss_fn=literal_nt_xent).fit()
    return d, s


def test_resume_after_ctrl_c_equals_uninterrupted(tmp_path):
    d_full, s_full = run_full(tmp_path)
    calls = [0]

    def interrupting(z1, z2, y):
        calls[0] += 1
        if calls[0] == 7:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered to the Trainer's handler
        return literal_nt_xent(z1, z2, y)

    d = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved"):
        Trainer(cfg(), d, loss_fn=interrupting).fit()
    st = torch.load(d / "checkpoint.pt", weights_only=False)
    assert st["step"] == 7  # the step in flight finished, then the checkpoint was written
    assert not (d / "summary.json").exists()
    s = Trainer(cfg(), d, loss_fn=literal_nt_xent, resume=True).fit()
    assert (d / "metrics.jsonl").read_bytes() == (d_full / "metrics.jsonl").read_bytes()
    a, b = torch.load(d / "model.pt"), torch.load(d_full / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert s["knn_acc"] == s_full["knn_acc"] and s["linear_acc"] == s_full["linear_acc"]
    recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["type"] == "step"] == list(range(1, 13))
    assert sum(r["type"] == "epoch" for r in recs) == 3 and sum(r["type"] == "bounds" for r in recs) == 6


def test_resume_after_crash_from_periodic_checkpoint(tmp_path):
    d_full, _ = run_full(tmp_path)
    calls = [0]

    def crashing(z1, z2, y):
        calls[0] += 1
        if calls[0] == 11:
            raise RuntimeError("simulated crash")
        return literal_nt_xent(z1, z2, y)

    d = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated"):
        Trainer(cfg(), d, loss_fn=crashing).fit()
    assert torch.load(d / "checkpoint.pt", weights_only=False)["step"] == 10
    Trainer(cfg(), d, loss_fn=literal_nt_xent, resume=True).fit()
    assert (d / "metrics.jsonl").read_bytes() == (d_full / "metrics.jsonl").read_bytes()


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    calls = [0]

    def nan_at_6(z1, z2, y):
        calls[0] += 1
        v = literal_nt_xent(z1, z2, y)
        return v * float("nan") if calls[0] == 6 else v

    d = tmp_path / "nan"
    msg = r"loss is nan at step 6 .*last good checkpoint kept at .*checkpoint\.pt"
    with pytest.raises(NonFiniteLossError, match=msg):
        Trainer(cfg(), d, loss_fn=nan_at_6).fit()
    st = torch.load(d / "checkpoint.pt", weights_only=False)
    assert st["step"] == 5 and all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["type"] == "step"] == [1, 2, 3, 4, 5]
    assert (d / "config.yaml").is_file()


class NanEncoder(nn.Module):
    out_dim = 4

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 4)

    def forward(self, x):
        return self.lin(x.flatten(1)) * float("nan")


def nan_encoder(sample_shape):
    return NanEncoder()


def _write_cfg(tmp_path, raw, name="c.yaml"):
    import yaml

    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def test_cli_nan_exit_2(tmp_path, capsys):
    raw = json.loads(json.dumps(BASE))
    raw["model"]["encoder"] = "tests.test_train_trainer:nan_encoder"
    p = _write_cfg(tmp_path, raw)
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(p), "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "contain NaN/inf at step 1" in err and "no checkpoint yet" in err


def test_run_dir_refusal(tmp_path, capsys):
    d, _ = run_full(tmp_path, "r", train__epochs=1)
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(cfg(train__epochs=1), d, loss_fn=literal_nt_xent)
    with pytest.raises(FileExistsError, match="different run"):
        Trainer(cfg(train__epochs=2), d, loss_fn=literal_nt_xent, resume=True)
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before  # nothing lost
    # CLI: same refusal as one line, exit 2
    raw = json.loads(json.dumps(BASE))
    raw["train"]["epochs"] = 1
    p = _write_cfg(tmp_path, raw)
    main_args = ["train", "--config", str(p), "--out", str(tmp_path / "cli"), "--set", "train.threads=1"]
    with pytest.raises(SystemExit) as e:
        main(main_args)
    assert e.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(main_args)
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*main_args, "--overwrite"])
    assert e.value.code == 0


def test_eval_and_report_cli_reproduce_summary(tmp_path, capsys):
    raw = json.loads(json.dumps(BASE))
    raw["train"]["epochs"] = 1
    p = _write_cfg(tmp_path, raw)
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as e:
        main(["bounds", "--config", str(p), "--out", str(out)])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "L_H-SCL <= L_H-UCL" in text and "Assumption 1 holds" in text
    assert (out / "bounds.png").stat().st_size > 1000 and (out / "report.md").is_file()
    summary = json.loads((out / "summary.json").read_text())
    with pytest.raises(SystemExit) as e:
        main(["eval", str(out), "--json", str(tmp_path / "eval.json")])
    assert e.value.code == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"json: {tmp_path / 'eval.json'}"
    r = json.loads((tmp_path / "eval.json").read_text())
    assert r["knn_acc"] == pytest.approx(summary["knn_acc"]) and r["linear_acc"] == pytest.approx(summary["linear_acc"])
    assert sum(map(sum, r["knn_confusion"])) == 120
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "nope")])
    assert e.value.code == 2


def test_default_loss_from_config_trains(tmp_path):
    c = cfg(train__epochs=1)
    s = Trainer(c.model_copy(update={"loss": c.loss.model_copy(update={"name": "hscl",
                "params": {"beta": 1.0, "t": 0.5}})}), tmp_path / "h").fit()
    assert math.isfinite(s["final_train_loss"]) and 0.0 <= s["knn_acc"] <= 1.0


def test_resume_with_stateful_strategy_equals_uninterrupted(tmp_path):
    """A MoCo queue preset from the config: its queue, step counter and key encoder travel in the checkpoint."""
    from hardneg.train.losses_from_config import build_loss

    over = {"loss__name": "moco_queue", "loss__params": {"size": 64}}
    d_full = tmp_path / "full_q"
    Trainer(cfg(**over), d_full).fit()
    calls = [0]
    real = build_loss("moco_queue", {"size": 64})  # the Strategy itself

    def crash_at_11(module, args, kwargs):
        calls[0] += 1
        if calls[0] == 11:
            raise RuntimeError("simulated crash")

    real.register_forward_pre_hook(crash_at_11, with_kwargs=True)
    d = tmp_path / "crashed_q"
    with pytest.raises(RuntimeError, match="simulated"):
        Trainer(cfg(**over), d, loss_fn=real).fit()
    st = torch.load(d / "checkpoint.pt", weights_only=False)
    assert st["step"] == 10 and st["strategy"] is not None and st["key_encoder"] is not None
    Trainer(cfg(**over), d, resume=True).fit()
    assert (d / "metrics.jsonl").read_bytes() == (d_full / "metrics.jsonl").read_bytes()


def test_train_seconds_count_the_steps_across_sessions(tmp_path):
    """summary.json's train_seconds is the time inside training steps, summed over an interruption,
    without the first step of each session: each step's loss sleeps 20 ms; 7 steps ran before Ctrl-C
    (6 timed), 5 after (4 timed)."""
    import time

    calls = [0]

    def slow(z1, z2, y):
        calls[0] += 1
        if calls[0] == 7:
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.02)
        return literal_nt_xent(z1, z2, y)

    d = tmp_path / "timed"
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg(), d, loss_fn=slow).fit()
    st = torch.load(d / "checkpoint.pt", weights_only=False)
    assert st["timed_steps"] == 6 and st["train_seconds"] >= 6 * 0.02
    s = Trainer(cfg(), d, loss_fn=slow, resume=True).fit()
    assert s["steps"] == 12 and s["timed_steps"] == 10 and s["train_seconds"] >= 10 * 0.02
    # the resumed session ran 5 steps plus evaluations; the evaluations are not step time
    assert s["train_seconds"] < st["train_seconds"] + s["seconds_last_session"]
