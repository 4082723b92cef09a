"""GradCache in the trainer (``train.grad_cache``): the parameter gradients of a cached step equal
those of the plain step, dropout included (its random state is replayed chunk by chunk)."""

import json

import pytest
import torch
from torch import nn

from hardneg.train.config import validate_config
from hardneg.train.trainer import Trainer

BASE = {
    "data": {"name": "digits", "train_limit": 256, "test_limit": 120},
    "model": {"encoder": "mlp", "hidden": 32, "depth": 1, "head_hidden": 32, "proj_dim": 16},
    "train": {"epochs": 1, "batch_size": 64, "progress": False},
    "eval": {"knn_k": 20, "linear_probe": False},
}


def _model():
    torch.manual_seed(3)  # the same weights for both trainers
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Dropout(0.3), nn.Linear(48, 16))


def _trainer(tmp_path, name, objective, chunk):
    raw = json.loads(json.dumps(BASE))
    raw.update(objective)
    if chunk is not None:
        raw["train"]["grad_cache"] = {"chunk": chunk}
    if "strategy" in objective:
        raw["train"]["key_momentum"] = 0.9
    return Trainer(validate_config(raw), tmp_path / name, model=_model())


def _step_grads(tr):
    idx = torch.arange(64)
    torch.manual_seed(11)  # dropout's draws
    lv, *_ = tr.train_step.forward_backward(*tr.data.batch(idx), step=0)
    return lv, {n: p.grad.clone() for n, p in tr.model.named_parameters()}


@pytest.mark.parametrize(
    "objective",
    [{"loss": {"name": "ucl", "params": {"t": 0.5}}}, {"strategy": {"name": "moco_queue", "size": 256}}],
    ids=["ucl", "moco_queue"],
)
def test_cached_step_gradients_equal_the_plain_step(tmp_path, objective):
    lv_ref, g_ref = _step_grads(_trainer(tmp_path, "plain", objective, None))
    lv, g = _step_grads(_trainer(tmp_path, "cached", objective, 24))  # 128 or 64 inputs: uneven chunks
    assert lv == pytest.approx(lv_ref, abs=1e-6)
    for n, v in g_ref.items():
        assert float(v.abs().max()) > 0
        assert torch.allclose(g[n], v, atol=1e-6, rtol=1e-5), n


def test_dropout_without_replay_would_differ(tmp_path, monkeypatch):
    """The check can fail: a cached step whose re-embedding drew new dropout masks gives other gradients."""
    import hardneg.train.step as S

    objective = {"loss": {"name": "ucl", "params": {"t": 0.5}}}
    _, g_ref = _step_grads(_trainer(tmp_path, "plain", objective, None))
    tr = _trainer(tmp_path, "cached", objective, 24)
    monkeypatch.setattr(S, "set_rng_state", lambda state: None)  # re-embed without replaying
    _, g = _step_grads(tr)
    assert not torch.allclose(g["1.weight"], g_ref["1.weight"], atol=1e-4)


def test_grad_cache_run_finishes_like_the_plain_run(tmp_path):
    """A whole epoch: the same losses in metrics.jsonl (batch-norm-free model, dropout replayed)."""
    objective = {"loss": {"name": "ucl", "params": {"t": 0.5}}}
    _trainer(tmp_path, "plain", objective, None).fit()
    _trainer(tmp_path, "cached", objective, 32).fit()

    def losses(name):
        recs = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if r["type"] == "step"]

    assert len(losses("plain")) == 4
    assert losses("cached") == pytest.approx(losses("plain"), rel=1e-5)


def test_a_loss_without_the_embeddings_gives_the_model_no_gradient_in_either_step(tmp_path):
    """A loss that does not use the embeddings (here a constant leaf) leaves every model gradient empty,
    in the cached step as in the plain one: there is nothing to back-propagate into the chunks."""

    def constant(z1, z2, y):
        return torch.zeros((), requires_grad=True)

    for chunk in (None, 24):
        raw = json.loads(json.dumps(BASE))
        raw["loss"] = {"name": "ucl", "params": {"t": 0.5}}
        if chunk is not None:
            raw["train"]["grad_cache"] = {"chunk": chunk}
        tr = Trainer(validate_config(raw), tmp_path / f"chunk{chunk}", model=_model(), loss_fn=constant)
        try:
            lv, z1, _ = tr.train_step.forward_backward(*tr.data.batch(torch.arange(64)), step=0)
        finally:
            tr.close()
        assert lv == 0.0 and z1.shape == (64, 16)
        assert all(p.grad is None for p in tr.model.parameters()), chunk
