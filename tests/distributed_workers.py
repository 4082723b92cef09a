"""Workers of the multi-process tests: the same steps on one process (the reference, on the global
batch) and on W gloo processes (each on its slice), results saved for the test to compare."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardneg.distributed import (
    DistributedLoss,
    DistributedStrategy,
    convert_batchnorm,
    init_from_env,
    leave,
    loss_value,
    rank,
    world_size,
    wrap_model,
)
from hardneg.negatives import from_config
from hardneg.negatives.queue import MomentumEncoder, needs_key_encoder

B, D_IN, D = 16, 12, 8

#: name -> strategy config (a mapping for from_config) or ("loss", name, params) for a functional loss
CASES: dict[str, Any] = {
    "ucl": {"name": "ucl"},
    "supcon": {"name": "supcon"},
    "hscl": {"name": "hscl"},
    "moco_queue": {"name": "moco_queue", "size": 40},
    "topk_label": {"name": "topk", "k": 5, "filters": [{"kind": "label"}]},
    "adco": {"name": "adco", "size": 24, "dim": D},
    "calibrated": {"name": "calibrated"},
    "hscl_function": ("loss", "hscl", {"beta": 1.0}),
    "generator": {"name": "generator", "dim": D, "n_per_anchor": 2},
    "cluster_guided": {"name": "cluster_guided", "n_clusters": 3, "every": 1},
    "ucl_batchnorm": {"name": "ucl"},
    # one view, labels unique on rank 1's rows: every anchor of rank 1 is skipped, rank 0's are not
    "supcon_one_view_skipped_rank": {"name": "supcon"},
    # two explicit negatives per sample, gathered with their anchors, and a temperature given per call
    "ucl_per_anchor_negatives_scaled": {"name": "ucl"},
}
#: cases with (b × 2 × d) explicit negatives per sample and logit_scale = 1 / t given to the call
PER_ANCHOR = {"ucl_per_anchor_negatives_scaled"}
#: cases with one view and labels that leave the second half of the batch without a positive
ONE_VIEW = {"supcon_one_view_skipped_rank"}
#: cases whose encoder has batch normalisation (over the global batch on several processes)
BATCHNORM = {"ucl_batchnorm"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def join(r: int, world: int, port: int) -> None:
    """Join a gloo group of ``world`` processes as rank ``r``, as every worker does
    (:func:`hardneg.distributed.init_from_env`); leave it with :func:`hardneg.distributed.leave`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    init_from_env("gloo")


def gloo_threads() -> list[str]:
    """Names of this process's threads that belong to gloo (Linux names them in /proc)."""
    names = [(t / "comm").read_text().strip() for t in Path("/proc/self/task").iterdir()]
    return [n for n in names if "gloo" in n]


def thread_worker(r: int, world: int, port: int, outdir: str) -> None:
    """One DDP step, then leave the group: the gloo threads before and after."""
    join(r, world, port)
    net = wrap_model(_encoder())
    x1, x2, _, _ = _data(0)
    net(x1[r::world]).sum().backward()
    before = gloo_threads()
    del net
    leave()
    torch.save({"before": before, "after": gloo_threads()}, Path(outdir) / f"threads{r}.pt")


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x1, x2 = torch.randn(B, D_IN, generator=g), torch.randn(B, D_IN, generator=g)
    y = torch.randint(0, 3, (B,), generator=g)
    ids = torch.arange(B) + step * B
    return x1, x2, y, ids


def _encoder(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    if batchnorm:
        return nn.Sequential(nn.Linear(D_IN, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, D))
    return nn.Sequential(nn.Linear(D_IN, 16), nn.Tanh(), nn.Linear(16, D))


def run_case(name: str, steps: int = 3) -> dict[str, Any]:
    """``steps`` SGD steps of case ``name`` on this process's slice of the global batch (the whole
    batch on one process): losses, every parameter's gradient at each step, the strategy's state."""
    spec = CASES[name]
    W, r = world_size(), rank()
    b = B // W
    mine = slice(r * b, (r + 1) * b)
    model = _encoder(name in BATCHNORM)
    if W > 1:
        model = convert_batchnorm(model)
    if isinstance(spec, tuple):
        from hardneg.train.losses_from_config import build_loss

        strategy, loss_fn = None, DistributedLoss(build_loss(spec[1], spec[2]))
    else:
        strategy = from_config(dict(spec))
        loss_fn = DistributedStrategy(strategy)
    key = MomentumEncoder(model, 0.9) if strategy is not None and needs_key_encoder(strategy) else None
    net = nn.parallel.DistributedDataParallel(model) if W > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out: dict[str, Any] = {"loss": [], "grads": []}
    for step in range(steps):
        x1, x2, y, ids = (t[mine] for t in _data(step))
        if name in ONE_VIEW:
            y = torch.cat([torch.arange(B // 2) % 3, 100 + torch.arange(B // 2)])[mine]
            loss = loss_fn(net(x1), None, y, ids, step)
        elif name in PER_ANCHOR:  # one forward for views and negatives (DDP: one forward per step)
            x3 = torch.randn(B, 2, D_IN, generator=torch.Generator().manual_seed(200 + step))[mine]
            z = net(torch.cat([x1, x2, x3.reshape(-1, D_IN)]))
            z1, z2, zn = z[:b], z[b : 2 * b], z[2 * b :].reshape(b, 2, D)
            loss = loss_fn(z1, z2, y, ids, step, zn, negatives_per_anchor=True, logit_scale=torch.tensor(3.0))
        elif key is None:
            z1, z2 = net(torch.cat([x1, x2])).chunk(2)
        else:
            z1, z2 = net(x1), key(x2)
        if name not in ONE_VIEW | PER_ANCHOR:
            loss = loss_fn(z1, z2, y) if strategy is None else loss_fn(z1, z2, y, ids, step)
        opt.zero_grad()
        loss.backward()
        out["loss"].append(loss_value(loss))
        out["grads"].append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        opt.step()
        if key is not None:
            key.update(model)
    out["state"] = {} if strategy is None else {k: v.clone() for k, v in strategy.state_dict().items()
                                                 if isinstance(v, torch.Tensor)}
    for w in [] if strategy is None else strategy.weightings:  # k-means centroids live in extra state
        if getattr(w, "centroids", None) is not None:
            out["state"]["centroids"] = w.centroids.clone()
    out["state"].update({f"model.{k}": v.clone() for k, v in model.named_buffers()})  # batch-norm statistics
    return out


def worker(r: int, world: int, port: int, outdir: str, names: list[str]) -> None:
    join(r, world, port)
    try:
        res = {name: run_case(name) for name in names}
        torch.save(res, Path(outdir) / f"rank{r}.pt")
    finally:
        leave()


#: a small digits run (4 steps an epoch) whose 1- and 2-process metrics are compared
TRAIN_BASE = {
    "data": {"name": "digits", "train_limit": 256, "test_limit": 120},
    "model": {"encoder": "mlp", "hidden": 32, "depth": 1, "head_hidden": 32, "proj_dim": 16},
    "train": {"epochs": 2, "batch_size": 64, "checkpoint_every": 3, "progress": False, "log_every": 1},
    "eval": {"knn_k": 20, "probe_max_iter": 50, "linear_probe": False},
    "bounds": {"enabled": True, "every": 2},
}


def train_config(objective: dict[str, Any]) -> Any:
    import json

    from hardneg.train.config import validate_config

    raw = json.loads(json.dumps(TRAIN_BASE))
    raw.update(objective)
    return validate_config(raw)


class SignalAtCall:
    """The config's named loss, sending this process SIGINT (a real Ctrl-C) at call ``at`` on rank ``on``."""

    def __init__(self, loss_fn: Any, on: int, at: int) -> None:
        self.loss_fn, self.on, self.at, self.calls = loss_fn, on, at, 0

    def __call__(self, z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import signal

        self.calls += 1
        if rank() == self.on and self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.loss_fn(z1, z2, y)


def _signal_during_eval(signum: int, epoch: int, peer: int) -> Any:
    """A Trainer whose rank 0 sends ``signum`` to process ``peer`` when it starts evaluating epoch
    ``epoch``: the other processes are then waiting for that evaluation to end, so the signal reaches
    them while they wait."""
    from hardneg.train.trainer import Trainer

    class SignalDuringEval(Trainer):
        def evaluate(self, *, probe: bool) -> dict[str, Any]:
            if self.epoch + 1 == epoch and not getattr(self, "_sent", False):
                self._sent = True
                os.kill(peer, signum)
            return super().evaluate(probe=probe)

    return SignalDuringEval


def train_worker(
    r: int, world: int, port: int, runs: list[tuple[Any, ...]], interrupt: tuple[int, int] | None = None
) -> None:
    """Train each ``(run_dir, objective)`` on ``world`` gloo processes; ``interrupt=(rank, call)``
    sends SIGINT to that rank at that loss call; a third item ``(signum, epoch)`` in a run's entry makes
    rank 0 send that signal to rank 1 when it starts evaluating that epoch. A stopped run's result is
    recorded in ``stopped<rank>`` and the step of its checkpoint in ``checkpoint_step``; a later entry
    for the same folder resumes it."""
    from hardneg.distributed import gather_tags
    from hardneg.train.losses_from_config import build_objective
    from hardneg.train.trainer import RunInterrupted, Trainer

    join(r, world, port)
    try:
        pids = gather_tags(torch.tensor([os.getpid()])).tolist()
        for run_dir, objective, *eval_signal in runs:
            cfg = train_config(objective)
            loss_fn = None if interrupt is None else SignalAtCall(build_objective(cfg), *interrupt)
            cls = _signal_during_eval(*eval_signal[0], pids[1]) if eval_signal else Trainer
            try:
                cls(cfg, run_dir, resume=True, loss_fn=loss_fn).fit()
            except RunInterrupted as e:
                Path(run_dir, f"stopped{r}").write_text(f"{e.exit_code} {e}")
                if r == 0:  # the step of the one checkpoint, before a later entry resumes the run
                    st = torch.load(Path(run_dir, "checkpoint.pt"), weights_only=False)
                    Path(run_dir, "checkpoint_step").write_text(str(st["step"]))
    finally:
        leave()


#: the sentence-transformers loss: name -> (HardNegativeRankingLoss options, with MNRL as reference)
ST_CASES: dict[str, dict[str, Any]] = {
    "mnrl": {},
    "hucl": {"strategy": "hucl", "scale": 2.0},
    "topk": {"strategy": {"name": "topk", "k": 6}},
}


def run_st_case(name: str) -> dict[str, Any]:
    """One step of ``HardNegativeRankingLoss(gather_across_devices=True)`` on this process's slice of
    (anchor, positive, negative) columns; with no options also sentence-transformers' own MNRL."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from hardneg.integrations.sentence_transformers import HardNegativeRankingLoss

    W, r = world_size(), rank()
    b = B // W
    mine = slice(r * b, (r + 1) * b)
    model = _encoder()
    net = nn.parallel.DistributedDataParallel(model) if W > 1 else model
    g = torch.Generator().manual_seed(7)
    cols = [torch.randn(B, D_IN, generator=g)[mine] for _ in range(3)]
    z = net(torch.cat(cols)).chunk(3)
    loss = HardNegativeRankingLoss(None, gather_across_devices=True, **ST_CASES[name]).compute_loss_from_embeddings(
        list(z)
    )
    out: dict[str, Any] = {"local_loss": float(loss.detach())}
    if name == "mnrl":
        mnrl = MultipleNegativesRankingLoss(None, gather_across_devices=True)
        out["mnrl_local_loss"] = float(mnrl.compute_loss_from_embeddings([t.detach() for t in z], None))
    loss.backward()
    out["loss"] = loss_value(loss)
    out["grads"] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out


def st_worker(r: int, world: int, port: int, outdir: str) -> None:
    join(r, world, port)
    try:
        torch.save({name: run_st_case(name) for name in ST_CASES}, Path(outdir) / f"st{r}.pt")
    finally:
        leave()


#: open_clip's ClipLoss options (local_loss, gather_with_grad): every combination it accepts
CLIP_MODES = [(False, False), (False, True), (True, False), (True, True)]
#: the two-tower losses compared: open_clip's own ClipLoss, hardneg's ClipLoss plain and tilted
CLIP_LOSSES = ("open_clip", "plain", "tilted")


class Towers(nn.Module):
    """An image tower, a text tower and CLIP's learnable log-scale; unit-norm features out (open_clip
    normalises in the model, not in the loss)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Sequential(nn.Linear(D_IN, 16), nn.Tanh(), nn.Linear(16, D))
        self.text = nn.Sequential(nn.Linear(D_IN, 16), nn.Tanh(), nn.Linear(16, D))
        self.log_scale = nn.Parameter(torch.tensor(1.2))

    def forward(self, x_img: torch.Tensor, x_txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        norm = torch.nn.functional.normalize
        return norm(self.image(x_img), dim=1), norm(self.text(x_txt), dim=1), self.log_scale.exp()


def clip_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of (image, text) tower inputs (B × D_IN each)."""
    g = torch.Generator().manual_seed(11)
    x_img = torch.randn(B, D_IN, generator=g)
    return x_img, x_img + 0.7 * torch.randn(B, D_IN, generator=g)


def clip_loss(name: str, local_loss: bool, gather_with_grad: bool) -> nn.Module:
    """Loss ``name`` of :data:`CLIP_LOSSES` with open_clip's keywords for this process group."""
    from hardneg.integrations.open_clip import ClipLoss
    from tests.open_clip_reference import open_clip_loss_module

    kw = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank(), world_size=world_size())
    if name == "open_clip":
        return open_clip_loss_module().ClipLoss(**kw)
    return ClipLoss("ucl", beta=0.7, **kw) if name == "tilted" else ClipLoss(**kw)


def run_clip_case(name: str, local_loss: bool, gather_with_grad: bool) -> dict[str, Any]:
    """One step of two DDP towers with loss ``name`` on this process's slice of the global batch (the
    whole batch on one process): this process's loss value and every parameter's gradient."""
    W, r = world_size(), rank()
    b = B // W
    x_img, x_txt = clip_batch()
    model = Towers()
    net = nn.parallel.DistributedDataParallel(model) if W > 1 else model
    img, txt, scale = net(x_img[r * b:(r + 1) * b], x_txt[r * b:(r + 1) * b])
    loss = clip_loss(name, local_loss, gather_with_grad)(img, txt, scale)
    loss.backward()
    return {"loss": float(loss.detach()), "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()}}


def clip_worker(r: int, world: int, port: int, outdir: str) -> None:
    join(r, world, port)
    try:
        res = {(name, *mode): run_clip_case(name, *mode) for name in CLIP_LOSSES for mode in CLIP_MODES}
        torch.save(res, Path(outdir) / f"clip{r}.pt")
    finally:
        leave()
