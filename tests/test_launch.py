"""``hardneg train/compare --nproc N``: the launcher checks what it can before starting the processes,
waits for every one of them, and ends with one line and one exit status — 2 for a user error (its own
or a worker's), 130 / 143 for Ctrl-C / SIGTERM, after which ``--resume`` continues exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hardneg import runs
from hardneg.train.trainer import Trainer
from tests.distributed_workers import TRAIN_BASE, train_config

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
UCL = {"loss": {"name": "ucl", "params": {"t": 0.5}}}


def _config(tmp_path: Path, **train) -> Path:
    raw = json.loads(json.dumps({**TRAIN_BASE, **UCL}))
    raw["train"].update(train)
    p = tmp_path / f"run{len(list(tmp_path.glob('run*.yaml')))}.yaml"
    p.write_text(json.dumps(raw))
    return p


def _hardneg(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardneg.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


@pytest.mark.parametrize(("command", "n"), [("train", "0"), ("compare", "-2")])
def test_nproc_below_one_is_one_line(tmp_path, command, n):
    r = _hardneg(command, "-c", str(_config(tmp_path)), "--out", str(tmp_path / "out"), "--nproc", n)
    assert (r.returncode, r.stderr) == (2, f"hardneg: error: --nproc must be a positive int, got {n}\n")
    assert not (tmp_path / "out").exists()


def test_launcher_refuses_a_used_folder_and_a_batch_larger_than_the_data_in_one_line(tmp_path):
    """Checked before any process starts, by the checks one process makes: one line, exit 2."""
    used = tmp_path / "used"
    runs.prepare_output(used, "run", runs.dump_config(train_config(UCL)))
    r = _hardneg("train", "-c", str(_config(tmp_path)), "--out", str(used), "--nproc", "2")
    assert r.returncode == 2
    assert r.stderr == (f"hardneg: error: run directory {used} already holds a run; pass --resume to continue it "
                        "or --overwrite to replace it\n")
    r = _hardneg("train", "-c", str(_config(tmp_path, batch_size=512)), "--out", str(tmp_path / "big"), "--nproc", "2")
    assert (r.returncode, r.stderr) == (2, "hardneg: error: train.batch_size=512 is larger than the training set "
                                           "(256)\n")
    assert not (tmp_path / "big").exists()


def test_resume_on_another_number_of_processes_is_refused_naming_both(tmp_path):
    """A checkpoint records how many processes wrote it; resuming it on another number is refused."""
    c = train_config({**UCL, "train": {**TRAIN_BASE["train"], "epochs": 1}})
    d = tmp_path / "run"
    Trainer(c, d).fit()
    st = torch.load(d / runs.CHECKPOINT, weights_only=False)
    assert st["world_size"] == 1
    torch.save({**st, "world_size": 2}, d / runs.CHECKPOINT)  # as a run on 2 processes writes it
    with pytest.raises(ValueError, match=r"written by a run on 2 process\(es\) \(--nproc 2\); this run has 1 "
                                         r"\(--nproc 1\): resume with --nproc 2"):
        Trainer(c, d, resume=True)


@pytest.mark.slow
def test_a_workers_user_error_is_one_line_and_exit_2(tmp_path):
    """Resuming a 1-process checkpoint on 2 processes is refused by every worker (each reads the
    checkpoint); the command prints one line naming both process counts."""
    conf = _config(tmp_path, epochs=1)
    d = tmp_path / "one"
    Trainer(train_config({**UCL, "train": {**TRAIN_BASE["train"], "epochs": 1}}), d).fit()
    r = _hardneg("train", "-c", str(conf), "--out", str(d), "--resume", "--nproc", "2")
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"hardneg: error: checkpoint {d / 'checkpoint.pt'} was written by a run on 1 process(es) "
                        "(--nproc 1); this run has 2 (--nproc 2): resume with --nproc 1\n")


def _workers(launcher: int) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes (read from Linux's /proc)."""
    out = {}
    for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
        if rank:  # a child that has not yet replaced itself by the worker holds the launcher's environment
            out[rank[0]] = int(pid)
    return out


def _wait_for(pred, proc, timeout=300.0):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "the run did not get there"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 2-process run of the config the signal tests stop and resume."""
    tmp = tmp_path_factory.mktemp("full")
    conf = _config(tmp, epochs=4, checkpoint_every=4)
    r = _hardneg("train", "-c", str(conf), "--out", str(tmp / "full"), "--nproc", "2")
    assert r.returncode == 0, r.stderr
    return conf, (tmp / "full" / "metrics.jsonl").read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="worker processes are found in Linux's /proc")
@pytest.mark.parametrize("target", ["launcher", "group", "rank1"])
def test_signal_stops_every_process_with_one_line_and_resume_is_exact(tmp_path, full_run, target):
    """SIGTERM to the launcher (143), Ctrl-C to the whole process group (130), SIGTERM to rank 1 (143):
    every process stops at the same step, rank 0 writes the one checkpoint, the launcher returns only
    once no worker is left and prints one line; ``--resume`` gives a byte-identical metrics file."""
    conf, full_metrics = full_run
    d = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "hardneg.cli", "train", "-c", str(conf), "--out", str(d),
                             "--nproc", "2"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for(lambda: len(_workers(proc.pid)) == 2, proc)
        workers = _workers(proc.pid)
        _wait_for(lambda: (d / runs.CHECKPOINT).is_file(), proc)  # step 4: rank 0 evaluates epoch 1 now
        signum = signal.SIGINT if target == "group" else signal.SIGTERM
        if target == "launcher":
            proc.send_signal(signum)
        elif target == "group":
            os.killpg(proc.pid, signum)
        else:
            os.kill(workers[1], signum)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers.values())  # no worker outlived it
    line = f"hardneg: interrupted ({signal.Signals(signum).name}) at step "
    assert len(err.splitlines()) == 1 and err.startswith(line), err
    step = int(err[len(line):].split(";")[0])
    assert torch.load(d / runs.CHECKPOINT, weights_only=False)["step"] == step
    assert not (d / runs.SUMMARY).exists()
    r = _hardneg("train", "-c", str(conf), "--out", str(d), "--resume", "--nproc", "2")
    assert r.returncode == 0, r.stderr
    assert (d / runs.METRICS).read_bytes() == full_metrics


def test_outcome_prefers_a_user_error_then_the_stop_then_the_first_failure():
    """The launcher's one line and exit status from the workers' exit statuses (in the order they exited)
    and the lines they handed over."""
    from hardneg.cli.launch import _outcome

    err0, err1 = "hardneg: error: bad 0", "hardneg: error: bad 1"
    stop0 = "hardneg: interrupted (SIGTERM) at step 4; checkpoint saved to c; continue with --resume"
    # rank 1's user error broke rank 0's next collective: the user error is what the user sees
    assert _outcome([1, 2], [1, 0], ["Traceback ...\nRuntimeError: peer", err1], []) == (2, err1)
    assert _outcome([2, 2], [1, 0], [err0, err1], []) == (2, err1)  # the first to exit
    assert _outcome([143, 143], [1, 0], [stop0, "hardneg: interrupted (SIGTERM) at step 4"], []) == (143, stop0)
    assert _outcome([130, 0], [1, 0], [stop0, ""], [2]) == (130, stop0)  # the launcher's Ctrl-C decides the code
    assert _outcome([0, 0], [1, 0], ["", ""], [15]) == (0, "")  # finished before the request could stop it
    assert _outcome([-9, 1], [1, 0], ["", "boom"], []) == (1, "boom")
    assert _outcome([0, -9], [1, 0], ["", ""], []) == (1, "hardneg: error: process 1 of 2 was killed by SIGKILL")
