"""A run's training state: how far it got (`Progress`) and everything else an exact resume needs —
model, optimiser, schedule, the strategy's own state, the key encoder, the data and augmentation
generators, the global random state (dropout), the length of ``metrics.jsonl`` — gathered into and
restored from the fields of a checkpoint (`hardneg.train.checkpoint.FIELDS`).

A resumed run equals an uninterrupted one (same process settings, same thread count), which is why
a checkpoint also records the number of processes that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hardneg.train import checkpoint as ck
from hardneg.train.run_data import RunData
from hardneg.train.run_writer import RunWriter
from hardneg.train.step import TrainStep, rng_state, set_rng_state


@dataclass
class Progress:
    """Where a run stands: the global step, the epoch (counted from 0), the batch within it, the epoch's
    permutation (None between epochs) and its summed loss, and the time spent in training steps."""

    step: int = 0
    epoch: int = 0
    batch_idx: int = 0
    perm: torch.Tensor | None = None
    #: [sum of the step losses, number of steps] of the current epoch
    epoch_loss: list[float] = field(default_factory=lambda: [0.0, 0])
    #: seconds spent in training steps (views, loss, backward, optimiser) and how many steps they
    #: cover, summed over sessions; evaluation, bound checks, logging and checkpoints are left out, and
    #: so is the first step of each session (one-time start-up: kernel set-up, first allocations), so
    #: train_seconds / timed_steps is the strategy's cost per step
    train_seconds: float = 0.0
    timed_steps: int = 0
    #: steps taken in this session (not saved: a resumed session starts at 0)
    session_steps: int = 0

    def start_epoch(self, perm: torch.Tensor) -> torch.Tensor:
        """Begin an epoch in the order ``perm``; returns it."""
        self.perm = perm
        self.batch_idx, self.epoch_loss = 0, [0.0, 0]
        return perm

    def count_step(self, loss: float, seconds: float) -> None:
        """A step with loss ``loss`` took ``seconds``."""
        if self.session_steps:
            self.train_seconds += seconds
            self.timed_steps += 1
        self.session_steps += 1
        self.step += 1
        self.batch_idx += 1
        self.epoch_loss[0] += loss
        self.epoch_loss[1] += 1

    def train_loss(self) -> float:
        """The mean step loss of the current epoch."""
        return self.epoch_loss[0] / max(1, self.epoch_loss[1])

    def end_epoch(self) -> None:
        """The epoch is done; the next one draws a new permutation."""
        self.epoch += 1
        self.perm = None
        self.batch_idx = 0


class TrainingState:
    """The state of a run's ``progress``, ``step`` (model, optimiser, schedule, strategy, key encoder)
    and ``data`` (generators), as checkpoint fields and back."""

    def __init__(self, progress: Progress, step: TrainStep, data: RunData, config_text: str, world: int) -> None:
        self.progress, self.step, self.data = progress, step, data
        self.config_text = config_text
        self.config_sha256 = ck.config_digest(config_text)
        self.world = world

    def fields(self, metrics_bytes: int) -> dict[str, Any]:
        """Everything an exact resume needs, as the fields of `hardneg.train.checkpoint.FIELDS`;
        ``metrics_bytes`` is the length of ``metrics.jsonl`` that goes with it."""
        p, s = self.progress, self.step
        torch_rng, cuda_rng = rng_state()
        return {
            "model": s.model.state_dict(),
            "opt": s.opt.state_dict(),
            "sched": s.sched.state_dict(),
            "g_data": self.data.g_data.get_state(),
            "g_aug": self.data.g_aug.get_state(),
            "torch_rng": torch_rng,
            "cuda_rng": cuda_rng,
            "step": p.step,
            "epoch": p.epoch,
            "batch_idx": p.batch_idx,
            "perm": p.perm,
            "epoch_loss": list(p.epoch_loss),
            "train_seconds": p.train_seconds,
            "timed_steps": p.timed_steps,
            "metrics_bytes": metrics_bytes,
            "config_sha256": self.config_sha256,
            "world_size": self.world,
            # a strategy's own state (queue contents, adversarial bank, step counter of its schedules)
            "strategy": s.stateful.state_dict() if s.stateful is not None else None,
            "key_encoder": s.key_encoder.state_dict() if s.key_encoder is not None else None,
        }

    def resume(self, run_dir: Path, writer: RunWriter, *, repair: bool) -> Path | None:
        """Restore the checkpoint of ``run_dir`` and cut ``metrics.jsonl`` back to its records; returns
        the checkpoint's path, None when the run never reached one (it starts over: its records go).

        A damaged ``metrics.jsonl`` is refused unless ``repair`` (keep its intact records up to the
        checkpoint), and so is a checkpoint of another config or another number of processes."""
        st = ck.load_checkpoint(run_dir, self.config_text)
        if st is None:
            writer.start_over()
            return None
        path = run_dir / ck.CHECKPOINT
        self.check_world(st, path)
        problem = writer.resume_problem(st["metrics_bytes"])
        if problem is not None and not repair:
            raise ValueError(
                f"cannot resume: {problem}; the checkpoint is at step {st['step']}. Rerun with --resume "
                "--repair-metrics to keep the intact records up to that step and continue (the lost ones stay lost)"
            )
        self.restore(st, path)
        writer.cut_back(st["metrics_bytes"], repair=problem is not None)
        return path

    def check_world(self, st: dict[str, Any], path: Path) -> None:
        """Refuse to resume on another number of processes than the checkpoint ``st`` (read from
        ``path``) was written on: each process's random state and the order in which gradients are
        summed depend on it, so the resumed run would no longer equal an uninterrupted one."""
        written = st.get("world_size")
        if written is not None and written != self.world:
            raise ValueError(
                f"checkpoint {path} was written by a run on {written} process(es) "
                f"(--nproc {written}); this run has {self.world} (--nproc {self.world}): resume with --nproc {written}"
            )

    def restore(self, st: dict[str, Any], path: Path) -> None:
        """Put the checkpoint ``st`` (read from ``path``) back; one that does not fit the model or
        optimiser is a ValueError naming ``path``."""
        s, p = self.step, self.progress
        try:
            s.model.load_state_dict(st["model"])
            s.opt.load_state_dict(st["opt"])
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"checkpoint {path} does not fit this run's model ({first})") from None
        s.sched.load_state_dict(st["sched"])
        self.data.g_data.set_state(st["g_data"])
        self.data.g_aug.set_state(st["g_aug"])
        set_rng_state((st["torch_rng"], st["cuda_rng"]))
        p.step, p.epoch, p.batch_idx = st["step"], st["epoch"], st["batch_idx"]
        p.perm = st["perm"]
        p.epoch_loss = list(st["epoch_loss"])
        p.train_seconds = st["train_seconds"]
        p.timed_steps = st["timed_steps"]
        if s.stateful is not None and st["strategy"] is not None:
            s.stateful.load_state_dict(st["strategy"])
        if s.key_encoder is not None and st["key_encoder"] is not None:
            s.key_encoder.load_state_dict(st["key_encoder"])
