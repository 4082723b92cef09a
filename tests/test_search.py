"""`hardneg compare --search`: successive halving over strategies × knobs on a tiny digits config."""

import json
import os
import signal

import pytest
import yaml

pytest.importorskip("optuna")

from hardneg import runs  # noqa: E402
from hardneg.cli import main  # noqa: E402
from hardneg.runs import CompareConfig, validate_config  # noqa: E402
from hardneg.train.search import run_search, rung_epochs  # noqa: E402
from hardneg.train.trainer import RunInterrupted, Trainer  # noqa: E402

RAW = {
    "name": "tiny_search",
    "data": {"name": "digits", "train_limit": 192, "test_limit": 90},
    "model": {"encoder": "mlp", "hidden": 32, "depth": 1, "head_hidden": 32, "proj_dim": 16},
    "train": {"epochs": 3, "batch_size": 64, "progress": False, "checkpoint_every": 100},
    "eval": {"knn_k": 20, "linear_probe": False},
    "grid": {"losses": [{"strategy": {"name": "ucl"}, "label": "ucl"},
                        {"strategy": {"name": "hscl"}, "label": "hscl"},
                        {"strategy": {"name": "topk", "k": 4}, "label": "topk"}],
             "seeds": [0, 1]},
    "search": {"trials": 6, "strategies": [{"label": "ucl"}, {"label": "hscl"},
                                           {"label": "topk", "knobs": {"k": {"choices": [2, 4, 8]}}}]},
    "report": {"embedding_map": False, "leaderboard": True},
}


def _cfg(raw=RAW) -> CompareConfig:
    return validate_config(json.loads(json.dumps(raw)), CompareConfig)


def _curve(out, run):
    return {r["epoch"]: r["knn_acc"] for r in runs.read_metrics(out / "runs" / run) if r["type"] == "epoch"}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "out"
    return out, run_search(_cfg(), out, echo=lambda _m: None)


def test_rungs_grow_by_the_reduction_factor():
    sc = _cfg().search
    assert rung_epochs(sc, 3) == [1, 3]
    assert rung_epochs(sc.model_copy(update={"min_epochs": 2}), 20) == [2, 6, 18, 20]
    assert rung_epochs(sc.model_copy(update={"reduction_factor": 2}), 9) == [1, 2, 4, 8, 9]


def test_search_prunes_by_the_halving_rule(searched):
    """Each trial's kNN at the first rung, read from its run's metrics.jsonl, decides by the rule of
    successive halving (asynchronous, Li et al. 2020): a trial continues when its value is at least the
    k-th best of the values reached at that rung so far (its own included), k = max(1, n // 3)."""
    out, summary = searched
    trials = summary["trials"]
    assert [t["number"] for t in trials] == list(range(6))
    # the first three trials are the grid's own strategies at the grid's values
    assert [(t["strategy"], t["knobs"]) for t in trials[:3]] == [("ucl", {}), ("hscl", {"beta": 1.0}),
                                                                 ("topk", {"k": 4})]
    seen: list[float] = []
    n_pruned = 0
    for t in trials:
        if t["same_as"] is not None:  # a repeat of an earlier trial's knobs: its result, no training
            twin = trials[t["same_as"]]
            assert t["run"] is None and t["steps"] == 0 and t["state"] == twin["state"]
            continue
        curve = _curve(out, t["run"])
        seen.append(curve[1])
        k = max(1, len(seen) // 3)
        promoted = curve[1] >= sorted(seen, reverse=True)[k - 1]
        assert t["state"] == ("complete" if promoted else "pruned"), (t, seen)
        assert t["epochs"] == (3 if promoted else 1) and sorted(curve) == ([1, 2, 3] if promoted else [1])
        assert t["rung"] == (1 if promoted else 0) and t["steps"] == t["epochs"] * 3
        n_pruned += not promoted
        if promoted:
            assert t["knn_acc"] == json.loads((out / "runs" / t["run"] / "summary.json").read_text())["knn_acc"]
    assert n_pruned >= 1 and trials[0]["state"] == "complete"
    # fewer steps than the grid: 3 entries x 2 seeds x 3 epochs x 3 steps
    assert summary["grid_steps"] == 54 and summary["steps_spent"] == sum(t["steps"] for t in trials) < 54
    ranked = [r["knn_acc"] for r in summary["ranking"]]
    assert ranked == sorted(ranked, reverse=True) and len(ranked) == sum(t["state"] == "complete" and
                                                                         t["run"] is not None for t in trials)
    # the study lives in a plain-data journal: every line is a JSON object, nothing to unpickle
    lines = (out / "search.journal").read_text(encoding="utf-8").splitlines()
    assert len(lines) > 6 and all(isinstance(json.loads(line), dict) for line in lines)


def test_a_trial_trained_in_rungs_equals_an_uninterrupted_run(searched, tmp_path):
    """The first trial (UCL at the search seed) paused after every epoch ends where one run of the same
    config trained straight through ends: same kNN per epoch, same final accuracy."""
    out, summary = searched
    cfg = _cfg()
    spec = runs.RunSpec("ucl", None, {}, None, 0, strategy={"name": "ucl"})
    s = Trainer(runs.run_config(cfg, spec), tmp_path / "runs" / "plain").fit()
    assert _curve(tmp_path, "plain") == _curve(out, "t000_ucl_s0")
    assert s["knn_acc"] == summary["trials"][0]["knn_acc"]


def test_report_reads_a_search_folder(searched, capsys):
    out, summary = searched
    with pytest.raises(SystemExit) as e:
        main(["report", str(out)])
    assert e.value.code == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["run"] for r in results) == sorted(r["run"] for r in summary["ranking"])
    md = (out / "report.md").read_text()
    assert "## Leaderboard" in md and "t000_ucl" in md


def test_search_resumes_to_the_same_result(searched, tmp_path):
    """SIGTERM stops the search with exit code 143, once inside a trial (after its first epoch: it continues
    from its checkpoint) and once between trials (the next one was asked, not sampled yet); each
    --resume goes on, and the end is the summary of the uninterrupted search."""
    _, full = searched
    out = tmp_path / "out"

    def stop_at(prefix):
        def echo(msg):
            if msg.startswith(prefix):
                os.kill(os.getpid(), signal.SIGTERM)
        return echo

    with pytest.raises(RunInterrupted) as e:
        run_search(_cfg(), out, echo=stop_at("[trial 1/6] t000_ucl_s0: epoch 1"))
    assert e.value.exit_code == 143
    partial = json.loads((out / "search.json").read_text())
    assert not partial["finished"] and [(t["state"], t["epochs"]) for t in partial["trials"]] == [("running", 1)]
    with pytest.raises(FileExistsError, match="already holds a compare"):
        run_search(_cfg(), out, echo=lambda _m: None)
    with pytest.raises(RunInterrupted):
        run_search(_cfg(), out, resume=True, echo=stop_at("[trial 3/6]"))
    partial = json.loads((out / "search.json").read_text())
    assert len(partial["trials"]) == 4 and partial["trials"][3]["state"] == "running"
    resumed = run_search(_cfg(), out, resume=True, echo=lambda _m: None)
    assert resumed == full and json.loads((out / "search.json").read_text()) == full


def test_confirmation_trains_the_finalists_at_every_grid_seed(searched, tmp_path):
    """``search.confirm = 2``: after the trials, the two best distinct strategies at the deepest rung below
    the full budget that two strategies reached (ranked by kNN at that rung's epoch, read here from the
    runs' metrics) train to the end at every grid seed and are ranked by their mean and sample std over
    seeds; the runs at the search seed continue the trials' own runs, so the steps added are the epochs
    those runs lacked."""

    out0, plain = searched
    raw = json.loads(json.dumps(RAW))
    raw["search"]["confirm"] = 2
    out = tmp_path / "out"
    summary = run_search(_cfg(raw), out, echo=lambda _m: None)
    assert summary["trials"] == plain["trials"]  # the same trials: confirmation comes after them
    # the finalists by hand: at the rung below the full budget (epoch 1 of rungs [1, 3]), which every trial
    # reached
    by_rung = {}
    for t in plain["trials"]:
        if t["run"] is None:
            continue
        for ep, acc in _curve(out0, t["run"]).items():
            by_rung.setdefault(ep, {}).setdefault(t["strategy"], []).append((acc, t["number"]))
    rung = 1
    best = sorted(((max(v)[0], k, max(v)[1]) for k, v in by_rung[rung].items()), reverse=True)[:2]
    rows = summary["confirmed"]
    assert sorted(r["strategy"] for r in rows) == sorted(k for _, k, _ in best)
    steps = 0
    for r in rows:
        trial = plain["trials"][r["trial"]]
        accs = []
        for seed in (0, 1):
            run = trial["run"].rsplit("_s", 1)[0] + f"_s{seed}"
            summ = json.loads((out / "runs" / run / "summary.json").read_text())
            assert summ["finished"] and sorted(_curve(out, run)) == [1, 2, 3]
            accs.append(summ["knn_acc"])
            steps += (3 - (trial["epochs"] if seed == 0 else 0)) * 3
        assert r["knn_by_seed"] == {"0": accs[0], "1": accs[1]} and r["complete"]
        assert r["knn_mean"] == pytest.approx(sum(accs) / 2)
        assert r["knn_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert [r["knn_mean"] for r in rows] == sorted((r["knn_mean"] for r in rows), reverse=True)
    assert summary["steps_spent"] == plain["steps_spent"] + steps and summary["finished"]


@pytest.mark.parametrize("search, says", [
    ({"strategies": [{"label": "nope"}]}, "search.strategies names ['nope'], which are not grid labels"),
    ({"trails": 3}, "search.trails: unknown key"),
    ({"strategies": [{"label": "hscl", "knobs": {"beta": {"low": 2, "high": 1}}}]}, "needs low <= high"),
    ({"strategies": [{"label": "topk", "knobs": {"kk": {"choices": [2]}}}]},
     r"search.strategies: 'topk' with knobs {'kk': 2}: strategy: unknown option(s) ['kk']"),
])
def test_a_bad_search_section_is_refused_in_one_line(tmp_path, capsys, search, says):
    raw = {**json.loads(json.dumps(RAW)), "search": search}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as e:
        main(["compare", "--config", str(cfg), "--out", str(tmp_path / "out"), "--search"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("hardneg: error: ") and err.count("\n") == 1, err
    assert says in err
    assert not (tmp_path / "out").exists()


def test_cli_search_is_deterministic_given_its_seed(tmp_path, capsys):
    """`compare --search --search-seed 1` records the seed in the folder's config, prints the ranking and
    the steps against the grid's, and gives the summary the library gives for the same seed; a grid run
    into the search folder, and --search-seed without --search, are refused in one line."""
    raw = json.loads(json.dumps(RAW))
    raw["search"]["trials"] = 4
    raw["report"]["leaderboard"] = False  # the report of a search folder is checked above; here its speed
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as e:
        main(["compare", "--config", str(cfg), "--out", str(out), "--search", "--search-seed", "1"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "search.json").read_text())
    assert yaml.safe_load((out / "config.yaml").read_text())["search"]["seed"] == 1
    assert {t["seed"] for t in summary["trials"]} == {1}
    assert f"training steps: {summary['steps_spent']} of the full grid's 54" in text
    assert f"| 1 | {summary['ranking'][0]['trial'] + 1} | {summary['ranking'][0]['strategy']} |" in text
    raw["search"]["seed"] = 1
    assert run_search(_cfg(raw), tmp_path / "lib", echo=lambda _m: None) == summary
    for argv, says in ((["--resume"], "holds a search"), (["--search-seed", "2"], "--search-seed works with --search")):
        with pytest.raises(SystemExit) as e:
            main(["compare", "--config", str(cfg), "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err and err.count("\n") == 1, err


def test_hyperband_search_stops_trials_at_its_rungs(tmp_path):
    """With the Hyperband pruner every trial ends at a rung (epoch 1 pruned, or all 3 epochs), and the
    steps spent are the epochs trained."""
    raw = json.loads(json.dumps(RAW))
    raw["search"].update(pruner="hyperband", trials=5)
    summary = run_search(_cfg(raw), tmp_path / "out", echo=lambda _m: None)
    trained = [t for t in summary["trials"] if t["run"]]
    assert {(t["state"], t["epochs"]) for t in trained} <= {("pruned", 1), ("complete", 3)}
    for t in trained:
        assert sorted(_curve(tmp_path / "out", t["run"])) == list(range(1, t["epochs"] + 1))
    assert summary["steps_spent"] == 3 * sum(t["epochs"] for t in trained) < summary["grid_steps"]


def test_a_diverging_trial_fails_and_the_search_goes_on(tmp_path):
    """A trial whose training blows up (NaN embeddings at a learning rate of 1e30) is recorded as failed
    with the trainer's message, and the next trial still runs."""
    raw = json.loads(json.dumps(RAW))
    raw["optim"] = {"lr": 1e30}
    raw["search"]["trials"] = 2
    msgs: list[str] = []
    summary = run_search(_cfg(raw), tmp_path / "out", echo=msgs.append)
    assert [t["state"] for t in summary["trials"]] == ["fail", "fail"] and summary["finished"]
    assert all("NaN/inf" in t["error"] for t in summary["trials"]) and len(msgs) == 2
    assert summary["ranking"] == [] and msgs[1].startswith("[trial 2/2] t001_hscl_b1_s0: failed")
