"""The Trainer: two-view contrastive training (SimCLR layout, Chen et al. 2020) with any loss
``loss_fn(z1, z2, labels) -> scalar`` or a `Strategy`, exact resume, per-epoch evaluation and the
bound check.

The Trainer runs the loop and calls its parts at fixed points:

- `hardneg.train.run_data`: the data, the epoch permutation and the augmentations (two generators
  seeded from ``train.seed``), this process's rows of each global batch;
- `hardneg.train.step`: the training step — views through the model (or the second through MoCo's
  key encoder when the strategy stores keys), loss, backward (GradCache with ``train.grad_cache``),
  optimiser, schedule; a strategy's per-step diagnostics go to ``metrics.jsonl`` prefixed ``neg_``;
- `hardneg.train.evaluation`: kNN, linear probe, alignment/uniformity and diagnostics at the end of
  evaluated epochs, the bound check every ``bounds.every`` steps;
- `hardneg.train.run_writer`: ``metrics.jsonl``, ``model.pt``, ``embeddings.pt``, ``summary.json``;
- `hardneg.train.state`: the progress and the checkpoint fields an exact resume needs;
- `hardneg.train.stopping`: Ctrl-C / SIGTERM.

Determinism: the model is initialised right after `hardneg.seed.seed_everything`; the generators,
the epoch permutation, the position in it, model/optimizer/scheduler state and the length of
``metrics.jsonl`` are stored in every checkpoint, so ``resume`` produces a metrics file identical to
that of an uninterrupted run (same process settings, same thread count).

Several processes (``hardneg train --nproc N``, torchrun; `hardneg.distributed`): every process
draws the same permutation and the same augmentation parameters for the global batch
(``train.batch_size``), augments and embeds only its own slice of it with the DDP-wrapped model
(batch normalisation over the global batch); with ``data.workers`` each process's DataLoader reads
and augments its own rows (per-sample seeds);
the loss gathers the embeddings with gradient, so the gradient after DDP's averaging is the
single-process gradient of the global batch. Only rank 0 evaluates, writes files and holds the run
directory's lock (`hardneg.io.WriterLock`); every process stops at the same step on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from hardneg import distributed as D
from hardneg._optional import require
from hardneg.io import WriterLock
from hardneg.models.encoders import ContrastiveModel, build_model_from_config
from hardneg.negatives.queue import MomentumEncoder
from hardneg.negatives.strategy import Strategy
from hardneg.runs.config import RunConfig, dump_config
from hardneg.runs.metrics import read_metrics as read_metrics
from hardneg.seed import seed_everything
from hardneg.train import checkpoint as ck
from hardneg.train.evaluation import Evaluator
from hardneg.train.losses_from_config import build_objective
from hardneg.train.run_data import Batch, RunData, check_batch, load_run_data, n_samples, run_data
from hardneg.train.run_writer import RunWriter, run_summary
from hardneg.train.state import Progress, TrainingState
from hardneg.train.step import NonFiniteLossError, TrainStep, lr_lambda
from hardneg.train.stopping import STOP_SIGNALS, RunInterrupted, StopRequests

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: how many test images `Trainer` saves the features of in ``embeddings.pt``
SAVED_EMBEDDINGS = 2000


def check_run(cfg: RunConfig, world: int = 1) -> None:
    """Refuse what a `Trainer` on ``world`` processes refuses before it creates the run folder:
    the objective, the data set, the batch size against the processes and the data. The ``--nproc``
    launcher calls it before it starts the processes."""
    build_objective(cfg)
    check_batch(cfg.train.batch_size, world)
    check_batch(cfg.train.batch_size, world, n_samples(load_run_data(cfg.data)[0]))


class Trainer:
    """Train ``model`` with ``loss_fn`` on ``train_data`` as configured, writing to ``run_dir``.

    Everything not passed is built from ``config``: data (`hardneg.data.base.load_named`), model
    (`hardneg.models.build_model`), loss or strategy
    (`hardneg.train.losses_from_config.build_objective`, before anything is written).
    ``train_data`` / ``test_data`` are ``(X, y)`` tensors or datasets following
    `hardneg.data.base.LabeledImageDataset`. ``loss_fn`` may be a plain callable or a
    `Strategy` (called with sample ids and the step).
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        loss_fn: LossFn | None = None,
        model: ContrastiveModel | nn.Module | None = None,
        train_data: Any = None,
        test_data: Any = None,
        resume: bool = False,
        overwrite: bool = False,
        repair_metrics: bool = False,
    ) -> None:
        if not isinstance(config, RunConfig):
            raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
        if resume and overwrite:
            raise ValueError("pass at most one of --resume and --overwrite")
        self.cfg = config
        self.run_dir = Path(run_dir)
        self._config_text = dump_config(config)
        self._repair_metrics = repair_metrics
        # everything that can refuse the config (objective, data, sizes) runs before the folder is touched
        self.loss_fn = loss_fn if loss_fn is not None else build_objective(config)
        self.world, self.main = D.world_size(), D.is_main()
        check_batch(config.train.batch_size, self.world)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.data: RunData = run_data(config, self.world, D.rank(), train_data, test_data)
        check_batch(config.train.batch_size, self.world, self.data.n_train)
        resumed, lock = False, None
        if self.main:
            resumed, lock = ck.prepare_run_dir(self.run_dir, self._config_text, resume=resume, overwrite=overwrite)
        #: writes the run's files on rank 0 and holds its lock on the run directory until `fit` or
        #: `close` releases it; the other processes write nothing and take none
        self.writer = RunWriter(self.run_dir, self.main, lock)
        try:
            # the other processes wait in broadcast_flag until rank 0 made the folder
            self._setup(D.broadcast_flag(resumed), model)
        except BaseException:
            self.close()
            raise

    def _setup(self, resumed: bool, model: ContrastiveModel | nn.Module | None) -> None:
        """Build the model, optimiser and the other parts; restore the checkpoint when resumed."""
        c = self.cfg
        self.resumed = resumed
        seed_everything(c.train.seed)
        if model is None:
            model = build_model_from_config(c.model, self.data.sample_shape)
        self.steps_per_epoch = self.data.n_train // c.train.batch_size
        self.total_steps = self.steps_per_epoch * c.train.epochs
        self.train_step = TrainStep(c, model, self.loss_fn, self.total_steps, self._nonfinite)
        self.evaluator = Evaluator(c, self.model, self.data, self.strategy)
        self.progress = Progress()
        self.training_state = TrainingState(self.progress, self.train_step, self.data, self._config_text, self.world)
        self.stops = StopRequests(self._where)
        self.last_ckpt: Path | None = None
        if self.resumed:  # continue from the checkpoint, if the run reached one
            self.last_ckpt = self.training_state.resume(self.run_dir, self.writer, repair=self._repair_metrics)

    # ------------------------------------------------------------------ parts callers reach
    @property
    def lock(self) -> WriterLock | None:
        """Rank 0's lock on the run directory while this Trainer writes there."""
        return self.writer.lock

    @property
    def model(self) -> nn.Module:
        """The model being trained (the DDP wrapper's inner module over several processes)."""
        return self.train_step.model

    @property
    def opt(self) -> torch.optim.Optimizer:
        """The optimiser (AdamW)."""
        return self.train_step.opt

    @property
    def strategy(self) -> Strategy | None:
        """The Strategy behind the loss (ids, step, diagnostics, key encoder), None for plain functions."""
        return self.train_step.strategy

    @property
    def key_encoder(self) -> MomentumEncoder | None:
        """The momentum copy of the model that encodes a queue's keys, if the strategy has one."""
        return self.train_step.key_encoder

    @property
    def step(self) -> int:
        """The global step reached (optimiser updates so far)."""
        return self.progress.step

    @property
    def epoch(self) -> int:
        """The epochs finished."""
        return self.progress.epoch

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """Everything an exact resume needs, as the fields of `hardneg.train.checkpoint.FIELDS`."""
        return self.training_state.fields(self.writer.metrics_bytes())

    def save_checkpoint(self) -> Path:
        """Write the checkpoint (rank 0; every process records where it is) and return its path."""
        if not self.main:  # rank 0 holds the same state and writes it
            self.last_ckpt = self.run_dir / ck.CHECKPOINT
            return self.last_ckpt
        self.writer.flush()
        self.last_ckpt = ck.save_checkpoint(self.state(), self.run_dir)
        return self.last_ckpt

    def close(self) -> None:
        """Close ``metrics.jsonl`` and release the run directory's lock (`fit` does both at its
        end; for a Trainer built but never fitted)."""
        self.writer.release()

    # ------------------------------------------------------------------ evaluation
    def embed(self, X: torch.Tensor, *, projection: bool = False, batch: int = 1024) -> torch.Tensor:
        """Frozen features f(x) (or projections g(f(x))) in eval mode."""
        return self.evaluator.embed(X, projection=projection, batch=batch)

    def evaluate(self, *, probe: bool) -> dict[str, Any]:
        """kNN (k, t of the config) on frozen features; optional linear probe; alignment/uniformity and
        negative diagnostics on a fixed two-view batch of test images (fixed generator)."""
        return self.evaluator.evaluate(probe=probe)

    def _evaluate_unless_stopped(self, *, probe: bool) -> dict[str, Any]:
        """`evaluate`, or ``{}`` when a stop signal came before or during it."""
        return self.stops.evaluate(lambda: self.evaluate(probe=probe), self.model.train)

    # ------------------------------------------------------------------ stopping
    def _where(self) -> str:
        where = f"last checkpoint: {self.last_ckpt}" if self.last_ckpt else "no checkpoint yet"
        return f"at step {self.step}; {where}"

    def _stop_point(self) -> None:
        """Where training may stop: every process arrives here together (the others wait while rank 0
        evaluates or writes), and when any of them was asked to stop — a signal to any process, or to
        the ``--nproc`` launcher — every process stops here, at the same step, and rank 0 writes the
        one checkpoint."""
        if not self.stops.agreed():
            return
        p = self.save_checkpoint()
        signum = self.stops.signum
        raise RunInterrupted(
            f"interrupted ({signal.Signals(signum).name}) at step {self.step}; checkpoint saved to {p}; "
            "continue with --resume", signum
        )

    def _nonfinite(self, what: str) -> NoReturn:
        self.writer.flush()
        where = f"last good checkpoint kept at {self.last_ckpt}" if self.last_ckpt else "no checkpoint yet"
        raise NonFiniteLossError(
            f"{what} at step {self.step + 1} (epoch {self.epoch + 1}); stopped before updating; {where}"
        )

    # ------------------------------------------------------------------ training
    def fit(self, *, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to the configured number of epochs (continuing from the checkpoint when resumed) and
        return the summary; also written to ``summary.json``. Ctrl-C and SIGTERM write a checkpoint and
        raise `RunInterrupted`. However it ends, it releases the run directory's lock.

        ``until_epoch`` pauses after that many epochs (fewer than ``train.epochs``) with the end-of-epoch
        checkpoint written and returns ``{"finished": False, "epoch", "steps"}``; a Trainer resumed from
        it continues exactly as an uninterrupted run (the learning-rate schedule spans all epochs)."""
        if until_epoch is not None and until_epoch < 1:
            raise ValueError(f"until_epoch must be >= 1, got {until_epoch}")
        with self.stops.handled():
            try:
                return self._fit(until_epoch)
            finally:
                self.close()

    def _fit(self, until_epoch: int | None) -> dict[str, Any]:
        c = self.cfg
        stop_at = c.train.epochs if until_epoch is None else min(until_epoch, c.train.epochs)
        t0 = time.time()
        bar = require("tqdm.auto", "train").tqdm(
            total=self.total_steps, initial=self.step, disable=not c.train.progress or not self.main,
            desc=self.run_dir.name, unit="step", leave=False, dynamic_ncols=True,
        )
        self.model.train()
        last_eval: dict[str, Any] = {}
        try:
            while self.epoch < stop_at:
                self._train_epoch(bar)
                ev = self._end_epoch()
                last_eval = last_eval if ev is None else ev
        finally:
            bar.close()
            self.writer.flush()
        paused = self.epoch < c.train.epochs  # at until_epoch (a search's rung): no final evaluation yet
        if self.main and not last_eval and not paused:  # resumed after the last epoch had been evaluated
            last_eval = self._evaluate_unless_stopped(probe=c.eval.linear_probe)
        self._stop_point()  # the last point at which a stop request stops the run
        if not self.main:
            return {"rank": D.rank(), "steps": self.step}
        if paused:
            self.writer.close()
            return {"finished": False, "epoch": self.epoch, "steps": self.step}
        return self._finish(last_eval, time.time() - t0)

    def _train_epoch(self, bar: Any) -> None:
        """The batches of the current epoch from where the run stands, a stop point before each."""
        p = self.progress
        perm = p.perm if p.perm is not None else p.start_epoch(self.data.permutation())
        batches = self.data.batches(perm, p.batch_idx, p.epoch)
        while p.batch_idx < self.steps_per_epoch:
            self._stop_point()
            self._train_batch(batches, bar)

    def _train_batch(self, batches: Iterator[Batch], bar: Any) -> None:
        """One step on the next batch, its records (step, bound check) and the periodic checkpoint."""
        c, p = self.cfg, self.progress
        t_step = time.perf_counter()
        v1, v2, y, idx = next(batches)
        lv, z1, z2 = self.train_step.forward_backward(v1, v2, y, idx, p.step)
        lr = self.train_step.update()
        p.count_step(lv, time.perf_counter() - t_step)
        if p.step % c.train.log_every == 0:
            srec = {"type": "step", "step": p.step, "epoch": p.epoch + 1, "loss": lv, "lr": lr}
            self.writer.log({**srec, **self.train_step.diagnostics()})
        if c.bounds.enabled and p.step % c.bounds.every == 0:
            terms = self.evaluator.bound_terms(z1, z2, y)
            if terms is not None:
                self.writer.log({"type": "bounds", "step": p.step, "epoch": p.epoch + 1, **terms})
        bar.update(1)
        bar.set_postfix(loss=f"{lv:.4f}", epoch=p.epoch + 1, refresh=False)
        if p.step % c.train.checkpoint_every == 0:
            self.save_checkpoint()

    def _end_epoch(self) -> dict[str, Any] | None:
        """The epoch record (with the evaluation on evaluated epochs) and the end-of-epoch checkpoint;
        returns the evaluation, None when this epoch is not evaluated here."""
        c, p = self.cfg, self.progress
        ep = p.epoch + 1
        last = ep == c.train.epochs
        rec: dict[str, Any] = {"type": "epoch", "epoch": ep, "step": p.step, "train_loss": p.train_loss()}
        ev = None
        if self.main and (last or ep % c.eval.every_epochs == 0):  # rank 0 evaluates
            pe = c.eval.probe_every_epochs
            probe = c.eval.linear_probe and (last or (pe is not None and ep % pe == 0))
            ev = self._evaluate_unless_stopped(probe=probe)
            rec.update({k: v for k, v in ev.items() if not k.endswith(("per_class", "confusion"))})
        self._stop_point()  # the others waited for the evaluation; a stop requested meanwhile stops here
        self.writer.log(rec)
        p.end_epoch()
        self.save_checkpoint()
        return ev

    def _finish(self, ev: dict[str, Any], seconds: float) -> dict[str, Any]:
        """Write the model, the test embeddings and the summary."""
        xh, yh = self.data.test_head(SAVED_EMBEDDINGS)
        p = self.progress
        summary = {
            **run_summary(self.cfg, p.step, self.data.n_train, self.data.n_test),
            **ev,
            "seconds_last_session": round(seconds, 2),
            "train_seconds": round(p.train_seconds, 3),
            "timed_steps": p.timed_steps,
            "finished": True,
        }
        embeddings = {"features": self.embed(xh), "labels": yh}
        return self.writer.finish(summary, self.model.state_dict(), embeddings)


__all__ = [
    "STOP_SIGNALS", "NonFiniteLossError", "RunInterrupted", "Trainer", "check_batch", "check_run", "load_run_data",
    "lr_lambda", "n_samples", "read_metrics",
]
