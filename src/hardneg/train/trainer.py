"""The Trainer: two-view contrastive training (SimCLR layout, Chen et al. 2020) with any loss
``loss_fn(z1, z2, labels) -> scalar`` or a `Strategy`, exact resume,
per-epoch evaluation and the bound check.

A strategy is called with the dataset indices of the batch as sample ids and the global step; its
per-step diagnostics go to ``metrics.jsonl`` (prefixed ``neg_``). When it stores keys (a queue), the
second view is encoded by a momentum copy of the model (MoCo's key encoder, ``train.key_momentum``),
updated after every optimiser step and checkpointed with the rest.

Determinism: the model is initialised right after `hardneg.seed.seed_everything`, batches come
from a permutation drawn from a data generator, augmentations from a separate augmentation generator;
both generators, the epoch permutation, the position in it, model/optimizer/scheduler state and the
length of ``metrics.jsonl`` are stored in every checkpoint, so ``resume`` produces a metrics file
identical to that of an uninterrupted run (same process settings, same thread count).

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

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardneg import distributed as D
from hardneg._optional import require
from hardneg.data.augment import Augment
from hardneg.data.base import LabeledImageDataset, dataset_to_tensors, load_named
from hardneg.data.loader import EpochBatches, Plain, TwoViews, image_of, loader
from hardneg.eval.align_uniform import alignment, uniformity
from hardneg.eval.bounds import bound_terms, summarize_bounds
from hardneg.eval.diagnostics import two_view_diagnostics
from hardneg.eval.knn import knn_predict
from hardneg.eval.linear_probe import linear_probe, per_class_and_confusion
from hardneg.io import WriterLock, atomic_torch_save, atomic_write_text
from hardneg.models.encoders import ContrastiveModel, build_model_from_config
from hardneg.negatives.queue import MomentumEncoder, needs_key_encoder
from hardneg.negatives.strategy import Strategy
from hardneg.runs.config import OptimConfig, RunConfig, dump_config
from hardneg.runs.metrics import metrics_problem, repair_metrics
from hardneg.runs.metrics import read_metrics as read_metrics
from hardneg.seed import seed_everything
from hardneg.train import checkpoint as ck
from hardneg.train.losses_from_config import build_objective, strategy_of

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
EVAL_BATCH = 512  # size of the fixed two-view test batch for alignment/uniformity/diagnostics
#: strategy diagnostics the step record already holds under its own names
_STEP_RECORD_KEYS = ("loss", "step")


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stopped before applying that step."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped training; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class _EvalInterruptedError(Exception):
    """Raised by the signal handler to cut an evaluation short (the checkpoint is then written)."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


def _loss_beta_t(cfg: RunConfig, strategy: Strategy | None = None) -> tuple[float, float]:
    """β and t of the bound check and the evaluation diagnostics: ``bounds.beta`` / ``bounds.t``, else
    the training objective's (a strategy's attributes, a named loss's params), else β = 1, t = 0.5."""
    if strategy is not None:
        beta0 = float(strategy.beta)
        t0 = float(getattr(strategy, "temperature", None) or strategy.t)
    else:
        p = cfg.loss.params if cfg.loss is not None else {}
        beta0, t0 = float(p.get("beta", 1.0)), float(p.get("t", 0.5))
    beta = cfg.bounds.beta if cfg.bounds.beta is not None else beta0
    t = cfg.bounds.t if cfg.bounds.t is not None else t0
    return beta, t


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The global random state (CPU and every GPU) that dropout draws from."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    """Restore what `_rng_state` returned; the state of a GPU this machine lacks is not needed."""
    torch.set_rng_state(state[0])
    cuda = state[1][: torch.cuda.device_count()] if torch.cuda.is_available() else []
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


def _as_dataset(data: Any, name: str) -> Any:
    """A map-style data set from ``(X, y)`` tensors or a `LabeledImageDataset` (kept as is)."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return torch.utils.data.TensorDataset(*data)
    if not isinstance(data, LabeledImageDataset):
        raise TypeError(f"{name} must be an (X, y) tuple of tensors or a dataset with __len__/__getitem__")
    if len(data) == 0:
        raise ValueError(f"{name} is empty")
    return data


def check_batch(batch_size: int, world: int, n_train: int | None = None) -> None:
    """Refuse a global batch that does not split evenly over ``world`` processes or, given the size of
    the training set, is larger than it."""
    if batch_size % world:
        raise ValueError(
            f"train.batch_size={batch_size} must be divisible by the number of processes (--nproc {world})"
        )
    if n_train is not None and n_train < batch_size:
        raise ValueError(f"train.batch_size={batch_size} is larger than the training set ({n_train})")


def load_run_data(d: Any) -> tuple[Any, Any]:
    """The training and test data of a run's ``data`` section (`hardneg.data.base.load_named`)."""
    train = load_named(d.name, "train", data_dir=d.data_dir, limit=d.train_limit, seed=d.split_seed)
    return train, load_named(d.name, "test", data_dir=d.data_dir, limit=d.test_limit, seed=d.split_seed)


def n_samples(data: Any) -> int:
    """The number of samples of ``(X, y)`` tensors or a data set."""
    return len(data[0]) if isinstance(data, tuple) else len(data)


def check_run(cfg: RunConfig, world: int = 1) -> None:
    """Refuse what a `Trainer` on ``world`` processes refuses before it creates the run folder:
    the objective, the data set, the batch size against the processes and the data. The ``--nproc``
    launcher calls it before it starts the processes."""
    build_objective(cfg)
    check_batch(cfg.train.batch_size, world)
    check_batch(cfg.train.batch_size, world, n_samples(load_run_data(cfg.data)[0]))


def _json_float(v: float) -> float | None:
    """Six significant digits (the diagnostics are estimates; keeps metrics.jsonl small); null when
    not finite (valid JSON)."""
    v = float(v)
    return float(f"{v:.6g}") if math.isfinite(v) else None


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
        c = config
        # everything that can refuse the config (objective, data, sizes) runs before the folder is touched
        self.loss_fn = loss_fn if loss_fn is not None else build_objective(config)
        self.world, self.main = D.world_size(), D.is_main()
        check_batch(c.train.batch_size, self.world)
        b = c.train.batch_size // self.world
        self._local = slice(D.rank() * b, (D.rank() + 1) * b)  # this process's rows of the global batch
        if c.train.threads:
            torch.set_num_threads(c.train.threads)
        if train_data is None:
            train_data = load_named(
                c.data.name,
                "train",
                data_dir=c.data.data_dir,
                limit=c.data.train_limit,
                seed=c.data.split_seed,
            )
        if test_data is None:
            test_data = load_named(
                c.data.name, "test", data_dir=c.data.data_dir, limit=c.data.test_limit, seed=c.data.split_seed
            )
        #: None: data in memory (X, y, Xt, yt); a number: read through a DataLoader with that many workers
        self.workers = c.data.workers
        self.X = self.y = self.Xt = self.yt = None
        self.num_classes: int | None = None
        if self.workers is None:
            self.X, self.y = dataset_to_tensors(train_data, name="train_data")
            self.Xt, self.yt = dataset_to_tensors(test_data, name="test_data")
            self.num_classes = int(max(int(self.y.max()), int(self.yt.max())) + 1)
            self.n_train, self.n_test, sample_shape = self.X.shape[0], self.Xt.shape[0], tuple(self.X.shape[1:])
        else:
            self.train_ds, self.test_ds = _as_dataset(train_data, "train_data"), _as_dataset(test_data, "test_data")
            self.n_train, self.n_test = len(self.train_ds), len(self.test_ds)
            sample_shape = tuple(image_of(self.train_ds[0], "train_data")[0].shape)
        check_batch(c.train.batch_size, self.world, self.n_train)
        #: rank 0's lock on the run directory, held while this Trainer writes there (released by
        #: `fit` or `close`); the other processes write nothing and take none
        self.lock: WriterLock | None = None
        resumed = False
        if self.main:
            resumed, self.lock = ck.prepare_run_dir(self.run_dir, self._config_text, resume=resume, overwrite=overwrite)
        try:
            # the other processes wait in broadcast_flag until rank 0 made the folder
            self._setup(D.broadcast_flag(resumed), model, sample_shape)
        except BaseException:
            self.close()
            raise

    def _setup(
        self, resumed: bool, model: ContrastiveModel | nn.Module | None, sample_shape: tuple[int, ...]
    ) -> None:
        """Build the model, optimiser and generators; restore the checkpoint when resumed."""
        c = self.cfg
        self.resumed = resumed
        strategy = getattr(self.loss_fn, "strategy", self.loss_fn)
        self._strategy: torch.nn.Module | None = strategy if isinstance(strategy, torch.nn.Module) else None
        #: the Strategy behind the loss (ids, step, diagnostics, key encoder), None for plain functions
        self.strategy: Strategy | None = strategy_of(self.loss_fn)
        seed_everything(c.train.seed)
        if model is None:
            model = build_model_from_config(c.model, sample_shape)
        self.model = D.convert_batchnorm(model) if self.world > 1 else model
        self.key_encoder = self._build_key_encoder()
        #: the model as the training step calls it: DDP-wrapped over several processes
        self.net = D.wrap_model(self.model)
        self._loss_call = D.distributed_objective(self.loss_fn) if self.world > 1 else self.loss_fn
        self.augment = Augment(tuple(c.augment.crop_scale), c.augment.flip_p, c.augment.noise_std, c.augment.erase_p)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=c.optim.lr, weight_decay=c.optim.weight_decay)
        self.steps_per_epoch = self.n_train // c.train.batch_size
        self.total_steps = self.steps_per_epoch * c.train.epochs
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(c, self.total_steps))
        self.g_data = torch.Generator().manual_seed(c.train.seed)
        self.g_aug = torch.Generator().manual_seed(c.train.seed + 1_000_003)
        self.step = 0
        self.epoch = 0
        self.batch_idx = 0
        self.perm: torch.Tensor | None = None
        self.epoch_loss = [0.0, 0]
        #: seconds spent in training steps (views, loss, backward, optimiser) and how many steps they
        #: cover, summed over sessions; evaluation, bound checks, logging and checkpoints are left out, and
        #: so is the first step of each session (one-time start-up: kernel set-up, first allocations), so
        #: train_seconds / timed_steps is the strategy's cost per step
        self.train_seconds = 0.0
        self.timed_steps = 0
        self._session_steps = 0
        self.last_ckpt: Path | None = None
        self._stop = 0  # the signal number that asked training to stop
        self._evaluating = False
        self.bounds_beta, self.bounds_t = _loss_beta_t(c, self.strategy)
        # the bound check compares tilted with untilted losses, which coincide at β = 0: an untilted
        # strategy is checked at β = 1, as a named loss without a β is (unless bounds.beta says otherwise)
        self.check_beta = self.bounds_beta if c.bounds.beta is not None or self.bounds_beta > 0 else 1.0
        if self.resumed:
            self._restore()

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """Everything an exact resume needs, as the fields of `hardneg.train.checkpoint.FIELDS`."""
        mp = self.run_dir / ck.METRICS
        torch_rng, cuda_rng = _rng_state()
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "g_data": self.g_data.get_state(),
            "g_aug": self.g_aug.get_state(),
            "torch_rng": torch_rng,
            "cuda_rng": cuda_rng,
            "step": self.step,
            "epoch": self.epoch,
            "batch_idx": self.batch_idx,
            "perm": self.perm,
            "epoch_loss": list(self.epoch_loss),
            "train_seconds": self.train_seconds,
            "timed_steps": self.timed_steps,
            "metrics_bytes": mp.stat().st_size if mp.exists() else 0,
            "config_sha256": ck.config_digest(self._config_text),
            "world_size": self.world,
            # a strategy's own state (queue contents, adversarial bank, step counter of its schedules)
            "strategy": self._strategy.state_dict() if self._strategy is not None else None,
            "key_encoder": self.key_encoder.state_dict() if self.key_encoder is not None else None,
        }

    def save_checkpoint(self) -> Path:
        if not self.main:  # rank 0 holds the same state and writes it
            self.last_ckpt = self.run_dir / ck.CHECKPOINT
            return self.last_ckpt
        self._metrics_fh_flush()
        self.last_ckpt = ck.save_checkpoint(self.state(), self.run_dir)
        return self.last_ckpt

    def _restore(self) -> None:
        st = ck.load_checkpoint(self.run_dir, self._config_text)
        mp = self.run_dir / ck.METRICS
        if st is None:  # the run never reached its first checkpoint: start over in the same folder
            if mp.exists() and self.main:
                mp.unlink()
            return
        self._check_world(st.get("world_size"))
        problem = metrics_problem(self.run_dir, st["metrics_bytes"]) if self.main else None
        if problem is not None and not self._repair_metrics:
            raise ValueError(
                f"cannot resume: {problem}; the checkpoint is at step {st['step']}. Rerun with --resume "
                "--repair-metrics to keep the intact records up to that step and continue (the lost ones stay lost)"
            )
        try:
            self.model.load_state_dict(st["model"])
            self.opt.load_state_dict(st["opt"])
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"checkpoint {self.run_dir / ck.CHECKPOINT} does not fit this run's model ({first})"
            ) from None
        self.sched.load_state_dict(st["sched"])
        self.g_data.set_state(st["g_data"])
        self.g_aug.set_state(st["g_aug"])
        _set_rng_state((st["torch_rng"], st["cuda_rng"]))
        self.step, self.epoch, self.batch_idx = st["step"], st["epoch"], st["batch_idx"]
        self.perm = st["perm"]
        self.epoch_loss = list(st["epoch_loss"])
        self.train_seconds = st["train_seconds"]
        self.timed_steps = st["timed_steps"]
        if self._strategy is not None and st["strategy"] is not None:
            self._strategy.load_state_dict(st["strategy"])
        if self.key_encoder is not None and st["key_encoder"] is not None:
            self.key_encoder.load_state_dict(st["key_encoder"])
        if not self.main:
            pass
        elif problem is not None:
            repair_metrics(self.run_dir, st["metrics_bytes"])
        elif mp.exists():
            with open(mp, "r+b") as f:
                f.truncate(st["metrics_bytes"])
        self.last_ckpt = self.run_dir / ck.CHECKPOINT

    def _check_world(self, written: int | None) -> None:
        """Refuse to resume on another number of processes than the checkpoint was written on: each
        process's random state and the order in which gradients are summed depend on it, so the resumed
        run would no longer equal an uninterrupted one."""
        if written is not None and written != self.world:
            raise ValueError(
                f"checkpoint {self.run_dir / ck.CHECKPOINT} was written by a run on {written} process(es) "
                f"(--nproc {written}); this run has {self.world} (--nproc {self.world}): resume with --nproc {written}"
            )

    # ------------------------------------------------------------------ metrics
    _fh = None

    def _log(self, rec: dict[str, Any]) -> None:
        if not self.main:
            return
        if self._fh is None:
            self._fh = open(self.run_dir / ck.METRICS, "a", encoding="utf-8")  # noqa: SIM115
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")

    def _metrics_fh_flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        """Close ``metrics.jsonl`` and release the run directory's lock (`fit` does both at its
        end; for a Trainer built but never fitted)."""
        self._close()
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def embed(self, X: torch.Tensor, *, projection: bool = False, batch: int = 1024) -> torch.Tensor:
        """Frozen features f(x) (or projections g(f(x))) in eval mode."""
        was = self.model.training
        self.model.eval()
        f = self.model if projection else getattr(self.model, "features", self.model)
        out = torch.cat([f(X[i : i + batch]) for i in range(0, X.shape[0], batch)])
        self.model.train(was)
        return out

    @torch.no_grad()
    def evaluate(self, *, probe: bool) -> dict[str, Any]:
        """kNN (k, t of the config) on frozen features; optional linear probe; alignment/uniformity and
        negative diagnostics on a fixed two-view batch of test images (fixed generator)."""
        e = self.cfg.eval
        (ftr, ytr), (fte, yte) = self._features("train"), self._features("test")
        nc = self.num_classes or int(max(int(ytr.max()), int(yte.max())) + 1)
        pred = knn_predict(ftr, ytr, fte, k=e.knn_k, t=e.knn_t, num_classes=nc)
        out: dict[str, Any] = {"knn_acc": float((pred == yte).float().mean())}
        if probe:
            pr = linear_probe(ftr, ytr, fte, yte, max_iter=e.probe_max_iter, num_classes=nc)
            out["linear_acc"] = pr.accuracy
            out["linear_per_class"] = pr.per_class
            out["linear_confusion"] = pr.confusion
            pc, cm = per_class_and_confusion(yte.numpy(), pred.numpy(), nc)
            out["knn_per_class"], out["knn_confusion"] = pc, cm
        g = torch.Generator().manual_seed(12345)
        xb, yb = self._test_head(EVAL_BATCH)
        was = self.model.training
        self.model.eval()
        z1, z2 = self.model(self.augment(xb, g)), self.model(self.augment(xb, g))
        self.model.train(was)
        out["align"] = alignment(z1, z2)
        out["uniform"] = uniformity(z1)
        if e.diagnostics:
            out["diag"] = two_view_diagnostics(z1, z2, yb, beta=self.bounds_beta, t=self.bounds_t)
        return out

    def _features(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen features and labels of the training or test set (read through a DataLoader when
        the data is not in memory)."""
        if self.workers is None:
            X, y = (self.X, self.y) if which == "train" else (self.Xt, self.yt)
            return self.embed(X), y
        ds = Plain(self.train_ds if which == "train" else self.test_ds, f"{which}_data")
        feats, labels = [], []
        for xb, yb in loader(ds, self.workers, batch_size=1024, shuffle=False):
            feats.append(self.embed(xb))
            labels.append(yb)
        return torch.cat(feats), torch.cat(labels).long()

    def _test_head(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images and labels (the fixed evaluation batch, the saved embeddings)."""
        if self.workers is None:
            return self.Xt[:n], self.yt[:n]
        items = [image_of(self.test_ds[i], "test_data") for i in range(min(n, self.n_test))]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Data in memory: two augmented views of the global batch ``idx`` (the same draws on every
        process), and this process's rows of them: ``(v1, v2, labels, ids)``."""
        x, y = self.X[idx], self.y[idx]
        if self.world == 1:
            return self.augment(x, self.g_aug), self.augment(x, self.g_aug), y, idx
        rows = self._local  # the draws of the whole batch, the work of this process's rows
        v1, v2 = self.augment(x, self.g_aug, rows), self.augment(x, self.g_aug, rows)
        return v1, v2, y[rows], idx[rows]

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This epoch's batches from ``batch_idx`` on, as `_batch` gives them; through a
        DataLoader (`hardneg.data.loader`) when ``data.workers`` is set."""
        bs = self.cfg.train.batch_size
        if self.workers is None:
            for i in range(self.batch_idx, self.steps_per_epoch):
                yield self._batch(self.perm[i * bs : (i + 1) * bs])
            return
        views = TwoViews(self.train_ds, self.augment, self.cfg.train.seed + 1_000_003)
        views.epoch = self.epoch
        sampler = EpochBatches(self.perm, bs, self.batch_idx, D.rank(), self.world)
        for v1, v2, y, idx in loader(views, self.workers, batch_sampler=sampler):
            yield v1, v2, y.long(), idx.long()

    # ------------------------------------------------------------------ objective
    def _build_key_encoder(self) -> MomentumEncoder | None:
        """A momentum copy of the model when the strategy stores keys (MoCo, He et al. 2020) and
        ``train.key_momentum`` is set; None otherwise."""
        m = self.cfg.train.key_momentum
        if m is None or self.strategy is None or not needs_key_encoder(self.strategy):
            return None
        return MomentumEncoder(self.model, momentum=m)

    def _embed_views(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views through the model, or the second through the key encoder (no gradient)
        when there is one."""
        if self.key_encoder is None:
            z1, z2 = self.net(torch.cat([v1, v2])).chunk(2)
            return z1, z2
        self.key_encoder.train(self.model.training)
        return self.net(v1), self.key_encoder(v2)

    def _embed_cached(
        self, v1: torch.Tensor, v2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, Callable[[], None]]:
        """GradCache: the views of `_embed_views` embedded ``train.grad_cache.chunk`` inputs at a
        time without a graph; returns z1, z2 cut from one leaf that requires grad (z2 from the key
        encoder when there is one) and ``backward()``, to call after the loss's backward: it
        re-embeds each chunk with a graph — replaying the global random state, so dropout draws the
        same masks — and back-propagates the chunk's part of the leaf's gradient."""
        chunk = self.cfg.train.grad_cache.chunk
        inputs = v1 if self.key_encoder is not None else torch.cat([v1, v2])
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}  # batch-norm statistics: one update
        states, outs = [], []
        with torch.no_grad():
            for i in range(0, inputs.shape[0], chunk):
                states.append(_rng_state())
                outs.append(self.net(inputs[i : i + chunk]))
        after = _rng_state()
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
            n_chunks = len(states)
            for j, i in enumerate(range(0, inputs.shape[0], chunk)):
                _set_rng_state(states[j])
                sync = j == n_chunks - 1 or not hasattr(self.net, "no_sync")
                ctx = contextlib.nullcontext() if sync else self.net.no_sync()  # DDP: one all-reduce
                with ctx:
                    self.net(inputs[i : i + chunk]).backward(grad[i : i + chunk])
            _set_rng_state(after)

        return z1, z2, backward

    def _forward_backward(
        self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One step's embeddings, loss and parameter gradients (zeroed first) from this process's
        views, labels and sample ids: returns ``(loss value, z1, z2)``. A non-finite embedding or
        loss stops before any gradient is applied."""
        cached = self.cfg.train.grad_cache is not None
        if cached:
            z1, z2, backward = self._embed_cached(v1, v2)
        else:
            z1, z2 = self._embed_views(v1, v2)
        finite = bool(torch.isfinite(z1.detach()).all() and torch.isfinite(z2.detach()).all())
        if not D.all_processes(finite):
            self._nonfinite("the embeddings contain NaN/inf")
        loss = self._compute_loss(z1, z2, y, idx)
        lv = D.loss_value(loss)
        if not math.isfinite(lv):
            self._nonfinite(f"loss is {lv}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cached:
            backward()
        return lv, z1, z2

    def _compute_loss(self, z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The loss of one batch: a strategy gets the batch's dataset indices as ``ids`` and the global step."""
        if isinstance(self.loss_fn, Strategy):
            return self._loss_call(z1, z2, y, ids=ids, step=self.step)
        return self._loss_call(z1, z2, y)

    def _after_update(self) -> None:
        """After the optimiser step: move the key encoder towards the model."""
        if self.key_encoder is not None:
            self.key_encoder.update(self.model)

    def _step_diagnostics(self) -> dict[str, float | None]:
        """The strategy's diagnostics of the last step (``Strategy.last_diagnostics``) prefixed ``neg_``."""
        if self.strategy is None:
            return {}
        d = self.strategy.last_diagnostics
        return {f"neg_{k}": _json_float(v) for k, v in d.items() if k not in _STEP_RECORD_KEYS}

    # ------------------------------------------------------------------ training
    def _on_signal(self, signum: int, frame: Any) -> None:
        """Ctrl-C / SIGTERM: finish the step in flight (or cut an evaluation short), write a checkpoint,
        stop. A second signal stops at once, keeping the last checkpoint."""
        if self._stop:
            where = f"last checkpoint: {self.last_ckpt}" if self.last_ckpt else "no checkpoint yet"
            raise RunInterrupted(
                f"{signal.Signals(signum).name} again: stopped at once at step {self.step}; {where}", signum
            )
        self._stop = signum
        if self._evaluating:
            raise _EvalInterruptedError

    def _interrupt(self) -> None:
        p = self.save_checkpoint()
        name = signal.Signals(self._stop).name
        raise RunInterrupted(
            f"interrupted ({name}) at step {self.step}; checkpoint saved to {p}; continue with --resume", self._stop
        )

    def _evaluate_unless_stopped(self, *, probe: bool) -> dict[str, Any]:
        """`evaluate`, or ``{}`` when a stop signal came before or during it (the stop point after
        it then writes the checkpoint from before the evaluation, which a resumed run repeats)."""
        if self._stop:
            return {}
        try:
            self._evaluating = True
            return self.evaluate(probe=probe)
        except _EvalInterruptedError:
            self.model.train()
            return {}
        finally:
            self._evaluating = False

    def _stop_point(self) -> None:
        """Where training may stop: every process arrives here together (the others wait while rank 0
        evaluates or writes), and when any of them was asked to stop — a signal to any process, or to
        the ``--nproc`` launcher — every process stops here, at the same step, and rank 0 writes the
        one checkpoint."""
        agreed = D.agree_on_stop(lambda: self._stop)
        if agreed:
            if not self._stop:  # asked on another process: this one stops for the same signal
                self._stop = agreed
            self._interrupt()

    def fit(self, *, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to the configured number of epochs (continuing from the checkpoint when resumed) and
        return the summary; also written to ``summary.json``. Ctrl-C and SIGTERM write a checkpoint and
        raise `RunInterrupted`. However it ends, it releases the run directory's lock.

        ``until_epoch`` pauses after that many epochs (fewer than ``train.epochs``) with the end-of-epoch
        checkpoint written and returns ``{"finished": False, "epoch", "steps"}``; a Trainer resumed from
        it continues exactly as an uninterrupted run (the learning-rate schedule spans all epochs)."""
        if until_epoch is not None and until_epoch < 1:
            raise ValueError(f"until_epoch must be >= 1, got {until_epoch}")
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            return self._fit(until_epoch)
        finally:
            self.close()
            for s, h in old.items():
                signal.signal(s, h)

    def _nonfinite(self, what: str) -> None:
        self._metrics_fh_flush()
        where = f"last good checkpoint kept at {self.last_ckpt}" if self.last_ckpt else "no checkpoint yet"
        raise NonFiniteLossError(
            f"{what} at step {self.step + 1} (epoch {self.epoch + 1}); stopped before updating; {where}"
        )

    def _fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        tqdm = require("tqdm.auto", "train").tqdm

        c = self.cfg
        stop_at = c.train.epochs if until_epoch is None else min(until_epoch, c.train.epochs)
        spe = self.steps_per_epoch
        t0 = time.time()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not c.train.progress or not self.main,
            desc=self.run_dir.name,
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )
        self.model.train()
        last_eval: dict[str, Any] = {}
        try:
            while self.epoch < stop_at:
                if self.perm is None:
                    self.perm = torch.randperm(self.n_train, generator=self.g_data)
                    self.batch_idx, self.epoch_loss = 0, [0.0, 0]
                batches = self._batches()
                while self.batch_idx < spe:
                    self._stop_point()
                    t_step = time.perf_counter()
                    v1, v2, y, idx = next(batches)
                    lv, z1, z2 = self._forward_backward(v1, v2, y, idx)
                    if c.optim.grad_clip:
                        nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip)
                    lr = self.opt.param_groups[0]["lr"]
                    self.opt.step()
                    self._after_update()
                    self.sched.step()
                    if self._session_steps:
                        self.train_seconds += time.perf_counter() - t_step
                        self.timed_steps += 1
                    self._session_steps += 1
                    self.step += 1
                    self.batch_idx += 1
                    self.epoch_loss[0] += lv
                    self.epoch_loss[1] += 1
                    if self.step % c.train.log_every == 0:
                        srec = {"type": "step", "step": self.step, "epoch": self.epoch + 1, "loss": lv, "lr": lr}
                        self._log({**srec, **self._step_diagnostics()})
                    if c.bounds.enabled and self.step % c.bounds.every == 0:
                        zb1, zb2 = D.gather(z1.detach()), D.gather(z2.detach())
                        yb = D.gather_tags(y)
                        if self.main:
                            bt = bound_terms(zb1, zb2, yb, beta=self.check_beta, t=self.bounds_t)
                            self._log({"type": "bounds", "step": self.step, "epoch": self.epoch + 1, **bt})
                    bar.update(1)
                    bar.set_postfix(loss=f"{lv:.4f}", epoch=self.epoch + 1, refresh=False)
                    if self.step % c.train.checkpoint_every == 0:
                        self.save_checkpoint()
                # end of epoch
                ep = self.epoch + 1
                last = ep == c.train.epochs
                rec: dict[str, Any] = {
                    "type": "epoch",
                    "epoch": ep,
                    "step": self.step,
                    "train_loss": self.epoch_loss[0] / max(1, self.epoch_loss[1]),
                }
                if self.main and (last or ep % c.eval.every_epochs == 0):  # rank 0 evaluates
                    pe = c.eval.probe_every_epochs
                    probe = c.eval.linear_probe and (last or (pe is not None and ep % pe == 0))
                    last_eval = self._evaluate_unless_stopped(probe=probe)
                    rec.update({k: v for k, v in last_eval.items() if not k.endswith(("per_class", "confusion"))})
                self._stop_point()  # the others waited for the evaluation; a stop requested meanwhile stops here
                self._log(rec)
                self.epoch += 1
                self.perm = None
                self.batch_idx = 0
                self.save_checkpoint()
        finally:
            bar.close()
            self._metrics_fh_flush()
        paused = self.epoch < c.train.epochs  # at until_epoch (a search's rung): no final evaluation yet
        if self.main and not last_eval and not paused:  # resumed after the last epoch had been evaluated
            last_eval = self._evaluate_unless_stopped(probe=c.eval.linear_probe)
        self._stop_point()  # the last point at which a stop request stops the run
        if not self.main:
            return {"rank": D.rank(), "steps": self.step}
        if paused:
            self._close()
            return {"finished": False, "epoch": self.epoch, "steps": self.step}
        return self._finish(last_eval, time.time() - t0)

    def _finish(self, ev: dict[str, Any], seconds: float) -> dict[str, Any]:
        self._close()
        recs = read_metrics(self.run_dir)
        bounds = summarize_bounds([r for r in recs if r["type"] == "bounds"])
        atomic_torch_save(self.model.state_dict(), self.run_dir / ck.MODEL)
        xh, yh = self._test_head(2000)
        atomic_torch_save({"features": self.embed(xh), "labels": yh}, self.run_dir / ck.EMBEDDINGS)
        summary = {
            "loss": self.cfg.loss.name if self.cfg.loss is not None else None,
            "params": self.cfg.loss.params if self.cfg.loss is not None else None,
            "strategy": self.cfg.strategy,
            "seed": self.cfg.train.seed,
            "epochs": self.cfg.train.epochs,
            "steps": self.step,
            "n_train": int(self.n_train),
            "n_test": int(self.n_test),
            "final_train_loss": next((r["train_loss"] for r in reversed(recs) if r["type"] == "epoch"), None),
            **ev,
            "bounds": bounds,
            "seconds_last_session": round(seconds, 2),
            "train_seconds": round(self.train_seconds, 3),
            "timed_steps": self.timed_steps,
            "finished": True,
        }
        atomic_write_text(self.run_dir / ck.SUMMARY, json.dumps(summary, indent=1, sort_keys=True))
        return summary


__all__ = [
    "NonFiniteLossError", "RunInterrupted", "Trainer", "check_batch", "check_run", "load_run_data", "lr_lambda",
    "n_samples", "read_metrics",
]
