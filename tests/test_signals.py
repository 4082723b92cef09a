"""Ctrl-C (SIGINT) and SIGTERM: the trainer writes a checkpoint and stops with 128 + the signal number,
also when the signal arrives during the final evaluation; the resumed run equals an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hardneg import runs
from hardneg.train.trainer import RunInterrupted, Trainer
from tests.test_train_trainer import BASE, cfg, literal_nt_xent

SRC = str(Path(__file__).resolve().parents[1] / "src")


class SignalDuringFinalEval(Trainer):
    """Delivers a real signal to this process while the last epoch's evaluation runs."""

    signum = signal.SIGINT

    def evaluate(self, *, probe):
        if self.epoch + 1 == self.cfg.train.epochs and not getattr(self, "_sent", False):
            self._sent = True
            os.kill(os.getpid(), self.signum)
        return super().evaluate(probe=probe)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_final_evaluation_checkpoints_and_resume_is_exact(tmp_path, signum):
    full = tmp_path / "full"
    s_full = Trainer(cfg(), full, loss_fn=literal_nt_xent).fit()
    d = tmp_path / "stopped"
    tr = SignalDuringFinalEval(cfg(), d, loss_fn=literal_nt_xent)
    tr.signum = signum
    with pytest.raises(RunInterrupted, match=f"interrupted \\({signal.Signals(signum).name}\\) at step 12") as e:
        tr.fit()
    assert e.value.exit_code == 128 + signum
    assert torch.load(d / runs.CHECKPOINT, weights_only=False)["step"] == 12
    assert not (d / runs.SUMMARY).exists() and not (d / runs.MODEL).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the trainer's handlers are gone again
    s = Trainer(cfg(), d, loss_fn=literal_nt_xent, resume=True).fit()
    assert (d / runs.METRICS).read_bytes() == (full / runs.METRICS).read_bytes()
    assert s["knn_acc"] == s_full["knn_acc"] and s["linear_acc"] == s_full["linear_acc"]


def _wait_for(pred, timeout=120.0):
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise TimeoutError("the training subprocess did not get going")
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_to_a_training_process_saves_and_exits_nonzero(tmp_path, signum):
    raw = json.loads(json.dumps(BASE))
    raw["train"].update({"epochs": 500, "checkpoint_every": 10_000, "threads": 1})
    raw["bounds"]["enabled"] = False
    raw["eval"].update({"linear_probe": False, "diagnostics": False})
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(raw))
    d = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from hardneg.cli import main; main()", "train", "--config", str(conf), "--out", str(d)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        metrics = d / runs.METRICS
        _wait_for(lambda: proc.poll() is not None or (metrics.is_file() and metrics.stat().st_size > 0))
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"hardneg: interrupted ({signal.Signals(signum).name}) at step ")
    step = int(last.split(" at step ")[1].split(";")[0])
    assert step >= 1 and "checkpoint saved" in last and "--resume" in last
    st = torch.load(d / runs.CHECKPOINT, weights_only=False)
    assert st["step"] == step
    recs = runs.read_metrics(d)
    assert [r["step"] for r in recs if r["type"] == "step"] == list(range(1, step + 1))
    assert st["metrics_bytes"] == metrics.stat().st_size
