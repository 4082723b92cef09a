"""One training step: embed the two views, compute the loss, back-propagate, update the model.

The objective is a plain loss ``loss_fn(z1, z2, labels) -> scalar`` or a `Strategy`, which also gets
the dataset indices of the batch as sample ids and the global step. When the strategy stores keys (a
queue), the second view is encoded by a momentum copy of the model (MoCo's key encoder, He et al.
2020; ``train.key_momentum``), moved towards the model after every optimiser step.

``train.grad_cache`` embeds the batch a chunk at a time without a graph and re-embeds each chunk with
one after the loss's backward pass (GradCache, Gao et al. 2021), replaying the global random state so
that dropout draws the same masks. Over several processes the model is DDP-wrapped and the loss
gathers the embeddings with gradient (`hardneg.distributed`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, NoReturn

import torch
from torch import nn

from hardneg import distributed as D
from hardneg.negatives.queue import MomentumEncoder, needs_key_encoder
from hardneg.negatives.strategy import Strategy
from hardneg.runs.config import OptimConfig, RunConfig
from hardneg.train.losses_from_config import strategy_of

#: strategy diagnostics the step record already holds under its own names
_STEP_RECORD_KEYS = ("loss", "step")


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stopped before applying that step."""


def rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The global random state (CPU and every GPU) that dropout draws from."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    """Restore what `rng_state` returned; the state of a GPU this machine lacks is not needed."""
    torch.set_rng_state(state[0])
    cuda = state[1][: torch.cuda.device_count()] if torch.cuda.is_available() else []
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


def lr_lambda(cfg: RunConfig | OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base LR at a step: linear warmup, then cosine to 0 / constant / step decay
    (``cfg``: a run's config or its ``optim`` section alone)."""
    o = cfg if isinstance(cfg, OptimConfig) else cfg.optim

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        if o.schedule == "step":
            return o.step_gamma ** (step // o.step_every)
        span = max(1, total_steps - o.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - o.warmup_steps) / span)))

    return f


def json_float(v: float) -> float | None:
    """Six significant digits (the diagnostics are estimates; keeps metrics.jsonl small); null when
    not finite (valid JSON)."""
    v = float(v)
    return float(f"{v:.6g}") if math.isfinite(v) else None


class TrainStep:
    """The model, its optimiser and learning-rate schedule, the objective and the key encoder, and
    the step that updates them.

    ``fail(what)`` is called when an embedding or the loss is not finite, before any gradient is
    applied; it must raise."""

    def __init__(
        self, cfg: RunConfig, model: nn.Module, loss_fn: Any, total_steps: int, fail: Callable[[str], NoReturn]
    ) -> None:
        world = D.world_size()
        self.cfg, self.loss_fn, self.fail = cfg, loss_fn, fail
        strategy = getattr(loss_fn, "strategy", loss_fn)
        #: the module whose state a checkpoint holds (queue contents, banks, schedule counters), if any
        self.stateful: nn.Module | None = strategy if isinstance(strategy, nn.Module) else None
        #: the Strategy behind the loss (ids, step, diagnostics, key encoder), None for plain functions
        self.strategy: Strategy | None = strategy_of(loss_fn)
        self.model = D.convert_batchnorm(model) if world > 1 else model
        self.key_encoder = self._build_key_encoder()
        #: the model as the step calls it: DDP-wrapped over several processes
        self.net = D.wrap_model(self.model)
        self.loss_call: Callable[..., torch.Tensor] = D.distributed_objective(loss_fn) if world > 1 else loss_fn
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg, total_steps))

    def _build_key_encoder(self) -> MomentumEncoder | None:
        """A momentum copy of the model when the strategy stores keys and ``train.key_momentum`` is
        set; None otherwise."""
        m = self.cfg.train.key_momentum
        if m is None or self.strategy is None or not needs_key_encoder(self.strategy):
            return None
        return MomentumEncoder(self.model, momentum=m)

    def forward_backward(
        self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, step: int
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One step's embeddings, loss and parameter gradients (zeroed first) from this process's
        views, labels and sample ids at global step ``step``: returns ``(loss value, z1, z2)``. A
        non-finite embedding or loss stops before any gradient is applied."""
        gc = self.cfg.train.grad_cache
        backward: Callable[[], None] | None = None
        if gc is not None:
            z1, z2, backward = self._embed_cached(v1, v2, gc.chunk)
        else:
            z1, z2 = self._embed_views(v1, v2)
        finite = bool(torch.isfinite(z1.detach()).all() and torch.isfinite(z2.detach()).all())
        if not D.all_processes(finite):
            self.fail("the embeddings contain NaN/inf")
        loss = self._loss(z1, z2, y, idx, step)
        lv = D.loss_value(loss)
        if not math.isfinite(lv):
            self.fail(f"loss is {lv}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if backward is not None:
            backward()
        return lv, z1, z2

    def update(self) -> float:
        """Clip the gradients (``optim.grad_clip``), apply them, move the key encoder towards the
        model and advance the schedule; returns the learning rate the update used."""
        if self.cfg.optim.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        lr = float(self.opt.param_groups[0]["lr"])
        self.opt.step()
        if self.key_encoder is not None:
            self.key_encoder.update(self.model)
        self.sched.step()
        return lr

    def diagnostics(self) -> dict[str, float | None]:
        """The strategy's diagnostics of the last step (``Strategy.last_diagnostics``) prefixed ``neg_``."""
        if self.strategy is None:
            return {}
        d = self.strategy.last_diagnostics
        return {f"neg_{k}": json_float(v) for k, v in d.items() if k not in _STEP_RECORD_KEYS}

    def _loss(self, z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, step: int) -> torch.Tensor:
        """The loss of one batch: a strategy gets the batch's dataset indices as ``ids`` and the global step."""
        if isinstance(self.loss_fn, Strategy):
            return self.loss_call(z1, z2, y, ids=ids, step=step)
        return self.loss_call(z1, z2, y)

    def _embed_views(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views through the model, or the second through the key encoder (no gradient)
        when there is one."""
        if self.key_encoder is None:
            z1, z2 = self.net(torch.cat([v1, v2])).chunk(2)
            return z1, z2
        self.key_encoder.train(self.model.training)
        return self.net(v1), self.key_encoder(v2)

    def _embed_cached(
        self, v1: torch.Tensor, v2: torch.Tensor, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor, Callable[[], None]]:
        """GradCache: the views of `_embed_views` embedded ``chunk`` inputs at a time without a graph;
        returns z1, z2 cut from one leaf that requires grad (z2 from the key encoder when there is
        one) and ``backward()``, to call after the loss's backward: it re-embeds each chunk with a
        graph — replaying the global random state, so dropout draws the same masks — and
        back-propagates the chunk's part of the leaf's gradient."""
        inputs = v1 if self.key_encoder is not None else torch.cat([v1, v2])
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}  # batch-norm statistics: one update
        states, outs = [], []
        with torch.no_grad():
            for i in range(0, inputs.shape[0], chunk):
                states.append(rng_state())
                outs.append(self.net(inputs[i : i + chunk]))
        after = rng_state()
        with torch.no_grad():
            for k, v in self.model.named_buffers():
                v.copy_(buffers[k])
        z = torch.cat(outs).requires_grad_(True)
        if self.key_encoder is not None:
            self.key_encoder.train(self.model.training)
            z1, z2 = z, self.key_encoder(v2)
        else:
            z1, z2 = z.chunk(2)

        def backward() -> None:
            grad = z.grad
            if grad is None:  # the loss does not depend on the embeddings: no gradient reaches the model
                return
            no_sync = getattr(self.net, "no_sync", None)  # DDP: one all-reduce, after the last chunk
            for j, i in enumerate(range(0, inputs.shape[0], chunk)):
                set_rng_state(states[j])
                last = j == len(states) - 1
                with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
                    self.net(inputs[i : i + chunk]).backward(grad[i : i + chunk])
            set_rng_state(after)

        return z1, z2, backward
