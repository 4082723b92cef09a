"""Multi-process losses (2 gloo processes) equal the single-process loss on the same global batch:
values, every parameter's gradient after DDP's averaging, and the state strategies learn."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from hardneg.train.trainer import Trainer
from tests.distributed_workers import (
    CASES,
    ST_CASES,
    TRAIN_BASE,
    free_port,
    run_case,
    run_st_case,
    st_worker,
    thread_worker,
    train_config,
    train_worker,
    worker,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    names = list(CASES)
    mp.spawn(worker, args=(2, free_port(), str(out), names), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_process(two_process_results, name):
    ref = run_case(name)
    for r, res in enumerate(two_process_results):
        got = res[name]
        assert got["loss"] == pytest.approx(ref["loss"], abs=ATOL), (name, r)
        for step, (g, g_ref) in enumerate(zip(got["grads"], ref["grads"], strict=True)):
            for pname, v in g_ref.items():
                assert torch.allclose(g[pname], v, atol=ATOL, rtol=0), (name, r, step, pname)
        assert got["state"].keys() == ref["state"].keys()
        for k, v in ref["state"].items():  # queue, bank, calibrator: identical on every process
            # float32 state that accumulates (AdCo's velocity reaches ~6): equal to float32 rounding
            assert torch.allclose(got["state"][k].float(), v.float(), atol=ATOL, rtol=ATOL), (name, r, k)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from Linux's /proc")
def test_leaving_the_group_ends_every_gloo_thread(tmp_path):
    """After a DDP step, :func:`hardneg.distributed.leave` ends gloo's threads: none is left to release
    a collective's tensors during interpreter shutdown, where that aborts the process."""
    mp.spawn(thread_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        got = torch.load(tmp_path / f"threads{r}.pt")
        assert got["before"], got  # the check can fail: gloo's threads ran during the step
        assert got["after"] == [], (r, got)


def test_gradients_are_not_trivially_equal():
    """The comparison can fail: a different global batch order changes the gradients."""
    a = run_case("topk_label", steps=1)
    assert a["loss"][0] > 0
    assert any(float(v.abs().max()) > 1e-3 for v in a["grads"][0].values())


MOCO_TRAIN = {**TRAIN_BASE["train"], "key_momentum": 0.9}
TRAIN_CASES = {
    "ucl_function": {"loss": {"name": "ucl", "params": {"t": 0.5}}},
    "moco_queue": {"strategy": {"name": "moco_queue", "size": 128}, "train": MOCO_TRAIN},
    "topk_label": {"strategy": {"name": "topk", "k": 20, "filters": [{"kind": "label"}]}},
    # through a DataLoader: each process reads and augments its own rows (per-sample seeds)
    "ucl_dataloader": {"loss": {"name": "ucl", "params": {"t": 0.5}}, "data": {**TRAIN_BASE["data"], "workers": 1}},
}
#: shares of anchors for which an inequality holds: a tie within rounding may flip one anchor of 128
COUNTED = ("frac_", "anchor_frac_", "batch_frac_", "assumption1")


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_records(got, ref):
    assert [r["type"] for r in got] == [r["type"] for r in ref]
    for a, b in zip(got, ref, strict=True):
        for key, v in b.items():
            if key.startswith("neg_"):  # strategy diagnostics describe this process's anchors
                continue
            if isinstance(v, float):
                tol = 2 / 128 if key.startswith(COUNTED) else 1e-5
                assert a[key] == pytest.approx(v, rel=1e-4, abs=tol), (b["type"], b["step"], key)
            elif not isinstance(v, (list, dict)):
                assert a[key] == v, (b["type"], key)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n == "moco_queue" else pytest.mark.slow) for n in TRAIN_CASES]
)
def test_two_process_training_matches_one_process(tmp_path, name):
    """Metrics, summary and model of a 2-process run equal a 1-process run with the same global batch."""
    two, one = tmp_path / "two", tmp_path / "one"
    mp.spawn(train_worker, args=(2, free_port(), [(str(two), TRAIN_CASES[name])]), nprocs=2, join=True)
    Trainer(train_config(TRAIN_CASES[name]), one).fit()
    got, ref = _metrics(two), _metrics(one)
    assert any(r["type"] == "bounds" for r in ref) and sum(r["type"] == "step" for r in ref) == 8
    _assert_same_records(got, ref)
    # only rank 0 wrote: one metrics file, one summary, a model that loads into the plain model
    s_got = json.loads((two / "summary.json").read_text())
    s_ref = json.loads((one / "summary.json").read_text())
    assert s_got["knn_acc"] == pytest.approx(s_ref["knn_acc"], abs=0.02)
    sd_got, sd_ref = torch.load(two / "model.pt"), torch.load(one / "model.pt")
    assert sd_got.keys() == sd_ref.keys()
    for k, v in sd_ref.items():
        assert torch.allclose(sd_got[k].float(), v.float(), atol=1e-4, rtol=1e-3), k


@pytest.mark.slow
def test_interrupted_two_process_run_resumes_exactly_from_the_command_line(tmp_path):
    """SIGINT to one process stops both at the same step with one checkpoint; ``hardneg train --nproc 2
    --resume`` then finishes with a metrics file byte-identical to an uninterrupted 2-process run."""
    obj = TRAIN_CASES["ucl_function"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    mp.spawn(train_worker, args=(2, free_port(), [(str(full), obj)]), nprocs=2, join=True)
    mp.spawn(train_worker, args=(2, free_port(), [(str(cut), obj)], (1, 5)), nprocs=2, join=True)
    stops = [(cut / f"stopped{r}").read_text() for r in range(2)]
    assert all(s.startswith("130 interrupted (SIGINT) at step 5") for s in stops), stops
    assert not (cut / "summary.json").exists() and (cut / "checkpoint.pt").is_file()
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["step"] == 5
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(json.dumps({**TRAIN_BASE, **obj}))
    cmd = [sys.executable, "-m", "hardneg.cli", "train", "-c", str(cfg_file), "--out", str(cut), "--resume"]
    cmd += ["--nproc", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "kNN" in r.stdout and r.stdout.count("run directory") == 1  # rank 0 alone reports
    assert (cut / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_to_rank_one_while_rank_zero_evaluates_stops_both_there(tmp_path, signum):
    """A signal reaching rank 1 while it waits for rank 0's evaluation stops both processes after that
    evaluation, at the same step, with one checkpoint; resumed, the metrics file is byte-identical to an
    uninterrupted 2-process run's."""
    obj = TRAIN_CASES["ucl_function"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    # rank 0 signals rank 1 in epoch 1's evaluation; the third entry resumes the stopped run
    runs = [(str(full), obj), (str(cut), obj, (int(signum), 1)), (str(cut), obj)]
    mp.spawn(train_worker, args=(2, free_port(), runs), nprocs=2, join=True)
    name = signal.Signals(signum).name
    stops = [(cut / f"stopped{r}").read_text() for r in range(2)]
    assert all(s.startswith(f"{128 + signum} interrupted ({name}) at step 4; checkpoint saved") for s in stops), stops
    assert (cut / "checkpoint_step").read_text() == "4"  # epoch 1 has 4 steps
    assert (cut / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
    assert json.loads((cut / "summary.json").read_text())["steps"] == 8


def test_nproc_must_divide_the_batch(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(json.dumps({**TRAIN_BASE, **TRAIN_CASES["ucl_function"]}))
    cmd = [sys.executable, "-m", "hardneg.cli", "train", "-c", str(cfg_file), "--out", str(tmp_path / "r"),
           "--nproc", "3"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr == "hardneg: error: train.batch_size=64 must be divisible by the number of processes (--nproc 3)\n"
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def st_two_process_results(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    out = tmp_path_factory.mktemp("ddp_st")
    mp.spawn(st_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"st{r}.pt") for r in range(2)]


@pytest.mark.slow  # two processes importing sentence-transformers
@pytest.mark.parametrize("name", list(ST_CASES))
def test_sentence_transformers_loss_gathers_across_devices(st_two_process_results, name):
    """2 processes with ``gather_across_devices=True`` equal 1 process on the global batch (loss and
    gradients); without options each process's loss is sentence-transformers' gathered MNRL's."""
    ref = run_st_case(name)
    for res in st_two_process_results:
        got = res[name]
        assert got["loss"] == pytest.approx(ref["loss"], abs=ATOL)
        for pname, v in ref["grads"].items():
            assert torch.allclose(got["grads"][pname], v, atol=ATOL, rtol=0), pname
        if name == "mnrl":
            assert got["local_loss"] == pytest.approx(got["mnrl_local_loss"], abs=ATOL)
    assert st_two_process_results[0][name]["local_loss"] != pytest.approx(
        st_two_process_results[1][name]["local_loss"], abs=1e-3
    )  # each process computed its own anchors


@pytest.mark.slow
def test_compare_on_two_processes_matches_one_process(tmp_path):
    """``hardneg compare --nproc 2``: rank 0 alone prints and writes the report; every run's metrics
    equal the 1-process grid's."""
    cfg = {**{k: v for k, v in TRAIN_BASE.items() if k != "bounds"}, "name": "cmp",
           "train": {**TRAIN_BASE["train"], "epochs": 1},
           "grid": {"losses": [{"name": "ucl", "params": {"t": 0.5}},
                               {"strategy": {"name": "topk", "k": 20}, "label": "topk"}],
                    "betas": [1.0], "seeds": [0]},
           "report": {"embedding_map": False}}
    cfg_file = tmp_path / "cmp.yaml"
    cfg_file.write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    outs = {}
    for n in (1, 2):
        cmd = [sys.executable, "-m", "hardneg.cli", "compare", "-c", str(cfg_file), "--out", str(tmp_path / f"c{n}"),
               "--nproc", str(n)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[n] = r.stdout
    assert outs[2].count("[1/2] ucl_s0: kNN") == 1 and outs[2].count("report: ") == 1
    assert (tmp_path / "c2" / "report.md").is_file()
    for run in ("ucl_s0", "topk_s0"):
        _assert_same_records(_metrics(tmp_path / "c2" / "runs" / run), _metrics(tmp_path / "c1" / "runs" / run))


def test_spread_loss_with_every_anchor_skipped_everywhere_is_one_error():
    """With ``mean_denominator`` one call may hold only skipped anchors (another process has the
    rest); when the summed denominator is 0 too, the error says no process had an anchor."""
    from hardneg.losses import weighted_info_nce

    q = torch.randn(4, 3)
    labels = torch.arange(4)  # every label unique: no anchor has a positive
    with pytest.raises(ValueError, match="no anchor has both a positive and a valid negative .*on no process"):
        weighted_info_nce(q, q, t=0.5, q_labels=labels, k_labels=labels, self_index=torch.arange(4),
                          positives="labels", include_positive=False, mean_denominator=lambda d: d)
    with pytest.raises(ValueError, match="no anchor has both a positive"):  # without it: refused at once
        weighted_info_nce(q, q, t=0.5, q_labels=labels, k_labels=labels, self_index=torch.arange(4),
                          positives="labels", include_positive=False)
