"""One writer per output: a folder (run, compare) or mined file that another process writes is refused
with one line naming it and the holder's PID, before anything changes; of two real processes writing one
folder exactly one proceeds; the lock of a SIGKILLed process blocks nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hardneg import runs
from hardneg.io import WriterLock
from tests.cli_helpers import run_cli
from tests.test_train_trainer import BASE

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
#: a process that takes the lock of argv[1] and holds it until its stdin closes
HOLD = ("import sys; from hardneg.io import WriterLock; lock = WriterLock(sys.argv[1], 'x'); "
        "print('held', flush=True); sys.stdin.read()")
CLI = [sys.executable, "-c", "from hardneg.cli import main; main()"]


def _holder(lock_file):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_file)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=ENV, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _release(p):
    p.stdin.close()
    assert p.wait(timeout=60) == 0


def _cli(args, capsys):
    code, _, err = run_cli(args, capsys)
    return code, err


def _snapshot(d):
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def _conf(tmp_path, epochs=1):
    raw = json.loads(json.dumps(BASE))
    raw["train"].update({"epochs": epochs, "threads": 1})
    raw["bounds"]["enabled"] = False
    raw["eval"].update({"linear_probe": False})
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_a_held_lock_refuses_every_writer_and_leaves_the_folder_untouched(tmp_path, capsys):
    conf = _conf(tmp_path)
    d = tmp_path / "r"
    assert _cli(["train", "--config", conf, "--out", d], capsys)[0] == 0
    assert not (d / runs.LOCK).exists()  # the holder deletes its lock file when it finishes
    holder = _holder(d / runs.LOCK)
    try:
        before = _snapshot(d)
        for command, extra in (("train", []), ("train", ["--resume"]), ("train", ["--overwrite"]),
                               ("bounds", ["--overwrite"])):
            code, err = _cli([command, "--config", conf, "--out", d, *extra], capsys)
            assert code == 2 and err.count("\n") == 0, err
            assert err.startswith(f"hardneg: error: run directory {d} is being written by another hardneg process, "
                                  f"PID {holder.pid} ("), err
            assert _snapshot(d) == before  # --overwrite deleted nothing, the holder's lock file included
    finally:
        _release(holder)
    # the lock released, the same command goes ahead
    assert _cli(["train", "--config", conf, "--out", d, "--overwrite"], capsys)[0] == 0
    assert not (d / runs.LOCK).exists()


def test_of_two_concurrent_runs_exactly_one_proceeds(tmp_path):
    conf = _conf(tmp_path, epochs=2)
    d = tmp_path / "r"
    a = subprocess.Popen([*CLI, "train", "--config", str(conf), "--out", str(d)], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (d / runs.LOCK).is_file() or not (d / runs.LOCK).read_text():
            assert a.poll() is None and time.time() - t0 < 120, "the first run did not take its lock"
            time.sleep(0.01)
        a.send_signal(signal.SIGSTOP)  # keep it holding the lock, mid-run, while the second one starts
        b = subprocess.run([*CLI, "train", "--config", str(conf), "--out", str(d), "--overwrite"], env=ENV,
                           capture_output=True, text=True, timeout=300)
        a.send_signal(signal.SIGCONT)
        _, err_a = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGCONT)
            a.kill()
    assert a.returncode == 0, err_a
    assert b.returncode == 2 and b.stderr.strip().count("\n") == 0, b.stderr
    assert f"run directory {d} is being written by another hardneg process, PID {a.pid} (" in b.stderr
    recs = runs.read_metrics(d)  # the first run's records, whole and in order: the second wrote nothing
    steps_per_epoch = 256 // 64
    assert [r["step"] for r in recs if r["type"] == "step"] == list(range(1, 2 * steps_per_epoch + 1))
    assert [r["epoch"] for r in recs if r["type"] == "epoch"] == [1, 2]
    assert json.loads((d / runs.SUMMARY).read_text())["steps"] == 2 * steps_per_epoch
    assert not (d / runs.LOCK).exists()


def test_the_lock_of_a_killed_process_blocks_nothing(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    holder = _holder(d / runs.LOCK)
    holder.kill()  # SIGKILL: nothing of the holder runs; the kernel releases its lock
    holder.wait(timeout=60)
    assert (d / runs.LOCK).read_text().startswith(f"{holder.pid} ")  # the dead holder's file stays behind
    # a folder holding only that lock file counts as empty: a fresh run starts in it and finishes
    conf = _conf(tmp_path)
    assert _cli(["train", "--config", conf, "--out", d], capsys)[0] == 0
    assert runs.read_marker(d) == "run" and not (d / runs.LOCK).exists()
    # after a run killed outright, --resume and --overwrite go ahead too
    for extra in (["--resume"], ["--overwrite"]):
        holder = _holder(d / runs.LOCK)
        holder.kill()
        holder.wait(timeout=60)
        assert _cli(["train", "--config", conf, "--out", d, *extra], capsys)[0] == 0
        assert not (d / runs.LOCK).exists()
    with WriterLock(d / runs.LOCK, "x") as lock:
        assert lock.locked and (d / runs.LOCK).read_text().startswith(f"{os.getpid()} ")


def test_lock_semantics_in_one_process(tmp_path):
    """A second lock on the same file is refused even in the same process; holds nest; a released lock
    deletes its file and can be taken again."""
    p = tmp_path / "x.lock"
    lock = WriterLock(p, "thing T")
    mine = rf"^thing T is being written by another hardneg process, PID {os.getpid()} "
    with pytest.raises(FileExistsError, match=mine):
        WriterLock(p, "thing T")
    with lock.held():
        lock.release()  # the inner code's own release: the outer hold keeps the lock
        assert lock.locked and p.exists()
        with pytest.raises(FileExistsError):
            WriterLock(p, "thing T")
    assert not lock.locked and not p.exists()
    lock.release()  # releasing again does nothing
    with WriterLock(p, "thing T"):
        assert p.exists()
    assert not p.exists()


def test_overwrite_of_a_compare_refused_while_one_of_its_runs_is_written(tmp_path):
    d = tmp_path / "cmp"
    d.mkdir()
    runs.write_marker(d, "compare")
    (d / runs.CONFIG).write_text("name: x\n")
    grid = [d / runs.RUNS / n for n in ("a", "b")]
    for r in grid:
        r.mkdir(parents=True)
        runs.write_marker(r, "run")
        (r / runs.METRICS).write_text("{}\n")
    holder = _holder(grid[1] / runs.LOCK)
    try:
        before = _snapshot(d)
        with pytest.raises(FileExistsError, match=rf"run directory {grid[1]} is being written .* PID {holder.pid} "):
            runs.clear_output(d, "compare")
        assert _snapshot(d) == before  # not even the run nobody writes was deleted
    finally:
        _release(holder)
    runs.clear_output(d, "compare")
    assert [p.name for p in d.iterdir()] == []


def test_mine_output_in_use_is_refused_before_anything_is_read(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
    out = tmp_path / "neg.jsonl"
    holder = _holder(tmp_path / ".neg.jsonl.lock")
    try:
        before = _snapshot(tmp_path)
        code, err = _cli(["mine", "--pairs", pairs, "--out", out, "--no-cache", "--quiet"], capsys)
        assert code == 2 and err.count("\n") == 0, err
        assert err.startswith(f"hardneg: error: output {out} is being written by another hardneg process, "
                              f"PID {holder.pid} (")
        assert _snapshot(tmp_path) == before
    finally:
        _release(holder)
