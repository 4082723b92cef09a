"""The trainer drives a Strategy: the ``strategy:`` mapping of the README, sample ids and the global
step, the momentum (key) encoder of queue strategies, and the per-step diagnostics in metrics.jsonl."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from hardneg.cli import main
from hardneg.negatives import from_config
from hardneg.train.config import validate_config
from hardneg.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
B = 32
TINY = {
    "data": {"name": "digits", "train_limit": 4 * B, "test_limit": 60},
    "model": {"encoder": "mlp", "hidden": 16, "depth": 1, "head_hidden": 16, "proj_dim": 8},
    "train": {"epochs": 1, "batch_size": B, "progress": False, "threads": 1},
    "eval": {"knn_k": 10, "probe_max_iter": 20, "linear_probe": False},
}


def tiny(**sections):
    raw = copy.deepcopy(TINY)
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) and k in raw else v
    return raw


def records(run_dir, typ="step"):
    return [r for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()) if r["type"] == typ]


def test_key_encoder_is_the_ema_of_the_model_and_encodes_the_queued_keys(tmp_path):
    m = 0.9
    c = validate_config(tiny(strategy={"name": "moco_queue", "size": 2 * B}, train={"key_momentum": m}))
    t = Trainer(c, tmp_path / "r")
    assert t.key_encoder is not None
    theta_k = {n: p.detach().clone() for n, p in t.model.named_parameters()}  # θ_k at step 0 = θ_q
    calls = []  # per step: the parameters the key encoder used, its input, its output, what the strategy got

    def key_hook(mod, args, out):
        calls.append({"k": {n: p.detach().clone() for n, p in mod.named_parameters()}, "x": args[0], "out": out})

    def strat_hook(mod, args, kwargs):
        calls[-1].update(labels=args[2].clone(), ids=kwargs["ids"].clone(), step=kwargs["step"])

    def after_opt(opt, args, kwargs):  # θ_k ← m θ_k + (1 − m) θ_q, written out by hand
        for n, p in t.model.named_parameters():
            theta_k[n] = m * theta_k[n] + (1 - m) * p.detach()
        calls[-1]["expected_next"] = {n: v.clone() for n, v in theta_k.items()}

    t.key_encoder.ema.register_forward_hook(key_hook)
    t.strategy.register_forward_pre_hook(strat_hook, with_kwargs=True)
    t.opt.register_step_post_hook(after_opt)
    expected_first = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.fit()
    assert len(calls) == 4 and [c["step"] for c in calls] == [0, 1, 2, 3]
    for i, call in enumerate(calls):  # the keys of step i come from θ_k after i updates
        want = expected_first if i == 0 else calls[i - 1]["expected_next"]
        for n in want:
            torch.testing.assert_close(call["k"][n], want[n], rtol=1e-6, atol=1e-7)
    final = dict(t.key_encoder.ema.named_parameters())
    for n in theta_k:
        torch.testing.assert_close(final[n], theta_k[n], rtol=1e-6, atol=1e-7)
    assert max(float((final[n] - p.detach()).abs().max()) for n, p in t.model.named_parameters()) > 1e-4
    # ids are the dataset indices of the batch: one epoch visits every sample once, labels agree
    ids = torch.cat([c["ids"] for c in calls])
    assert sorted(ids.tolist()) == list(range(4 * B))
    assert all(torch.equal(t.data.y[c["ids"]], c["labels"]) for c in calls)
    # the queue holds the key encoder's outputs (unit rows) of the last two batches, with their ids
    q = t.strategy.sources[0]
    keys, _, qids = q.contents()
    want = torch.nn.functional.normalize(torch.cat([calls[2]["out"], calls[3]["out"]]), dim=1)
    torch.testing.assert_close(keys, want)
    assert torch.equal(qids, torch.cat([calls[2]["ids"], calls[3]["ids"]]))
    st = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(st["key_encoder"]["ema." + n], v) for n, v in final.items())


def test_step_diagnostics_reach_metrics(tmp_path):
    """moco_queue has β = 0, so π is uniform over the valid candidates: ESS = their number, which grows
    by one batch a step until the queue is full (ids within an epoch are distinct, so nothing in the
    queue is the anchor's own sample)."""
    c = validate_config(tiny(strategy={"name": "moco_queue", "size": 2 * B}))
    Trainer(c, tmp_path / "r").fit()
    recs = records(tmp_path / "r")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    cands = [B - 1, 2 * B - 1, 3 * B - 1, 3 * B - 1]
    assert [r["neg_n_candidates"] for r in recs] == cands
    assert [r["neg_ess"] for r in recs] == pytest.approx(cands, rel=1e-5)
    assert [r["neg_queue_fill"] for r in recs] == [0.5, 1.0, 1.0, 1.0]  # after this step's enqueue
    assert all(0.0 <= r["neg_fn_weight_share"] <= 1.0 for r in recs)
    assert not any(k in ("neg_loss", "neg_step") for r in recs for k in r)
    # the epoch's evaluation diagnostics use the same definitions (strategy's β = 0: uniform π)
    (ep,) = records(tmp_path / "r", "epoch")
    assert ep["diag"]["ess"] == pytest.approx(ep["diag"]["n_candidates"], rel=1e-5)
    assert not any(k.startswith(("pi_", "eff_", "false_mass")) for k in ep["diag"])


def test_no_key_encoder_without_a_queue_or_with_key_momentum_null(tmp_path):
    c = validate_config(tiny(strategy={"name": "hscl"}))
    assert Trainer(c, tmp_path / "a").key_encoder is None
    c = validate_config(tiny(strategy={"name": "moco_queue"}, train={"key_momentum": None}))
    assert Trainer(c, tmp_path / "b").key_encoder is None
    c = validate_config(tiny(loss={"name": "moco_queue", "params": {"size": 64}}))
    assert Trainer(c, tmp_path / "c").key_encoder is not None  # a preset named in loss: the same rule


def test_readme_strategy_yaml_trains_with_the_cli(tmp_path):
    """The README's ``strategy:`` block, verbatim, in a training config; the scheduled β follows the
    trainer's global step."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = yaml.safe_load(re.search(r"```yaml\n(strategy:.*?)```", readme, flags=re.S).group(1))
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**tiny(), **block}))
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(p), "--out", str(tmp_path / "r")])
    assert e.value.code == 0
    sched = block["strategy"]["schedule"]["beta"]
    recs = records(tmp_path / "r")
    want = [sched["start"] + (sched["end"] - sched["start"]) * (r["step"] - 1) / sched["steps"] for r in recs]
    assert [r["neg_sched_beta"] for r in recs] == pytest.approx(want, abs=1e-9)
    st = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert st["key_encoder"] is not None  # the queue source brought the key encoder
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["strategy"] == block["strategy"] and summary["loss"] is None


def test_strategy_config_errors_exit_2_before_writing(tmp_path, capsys):
    cases = [
        ({"loss": {"name": "ucl"}, "strategy": {"name": "hscl"}}, "not both"),
        ({"strategy": {"name": "topk", "kk": 3}}, "strategy: unknown option(s) ['kk'] for strategy 'topk'"),
        ({"strategy": {"name": "hscl", "filters": [3]}}, "strategy: filter must be a Filter"),
        ({"strategy": {"name": "nope"}}, "strategy: unknown strategy preset 'nope'"),
        ({"loss": {"name": "hucl", "params": {"gamma": 1}}}, "loss: loss 'hucl' does not take ['gamma']"),
    ]
    for i, (extra, msg) in enumerate(cases):
        p = tmp_path / f"c{i}.yaml"
        p.write_text(yaml.safe_dump({**tiny(), **extra}))
        out = tmp_path / f"r{i}"
        with pytest.raises(SystemExit) as e:
            main(["train", "--config", str(p), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and msg in err and "\n" not in err, err
        assert not out.exists()


def test_resume_with_queue_strategy_and_key_encoder_equals_uninterrupted(tmp_path):
    """Queue contents, the strategy's step, the key encoder and the logged diagnostics all resume exactly."""
    raw = tiny(strategy={"name": "moco_queue", "size": 48}, train={"epochs": 2, "checkpoint_every": 3})
    Trainer(validate_config(raw), tmp_path / "full").fit()
    strat = from_config(raw["strategy"])
    calls = [0]

    def crash_at_6(mod, args, kwargs):
        calls[0] += 1
        if calls[0] == 6:
            raise RuntimeError("simulated crash")

    strat.register_forward_pre_hook(crash_at_6, with_kwargs=True)
    d = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated"):
        Trainer(validate_config(raw), d, loss_fn=strat).fit()
    st = torch.load(d / "checkpoint.pt", weights_only=False)
    assert st["step"] == 4 and st["key_encoder"] is not None  # epoch end (4) after the step-3 checkpoint
    Trainer(validate_config(raw), d, resume=True).fit()
    assert (d / "metrics.jsonl").read_bytes() == (tmp_path / "full" / "metrics.jsonl").read_bytes()
    assert [r["neg_queue_fill"] for r in records(d)][-1] == 1.0
