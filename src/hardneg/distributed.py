r"""Multi-process training on ``torch.distributed``: the one place that gathers across processes.

A distributed step splits a **global batch** of B samples over W processes (rank r holds rows
``r·b … (r+1)·b − 1``, b = B / W). For the loss to be exactly the single-process loss of the global
batch, with DDP's gradient averaging giving exactly its gradient:

- embeddings are all-gathered **with gradient** (``torch.distributed.nn.functional.all_gather``,
  whose backward sums every process's gradient for a process's rows); labels and sample ids are
  gathered too, so the candidate rule (same id, same label) sees the global batch;
- each process computes the loss of **its own anchors** against every candidate of the global batch
  (`DistributedStrategy`, anchors in the two-view layout of
  `hardneg.losses.candidates.two_view_index`), with the mean's denominator summed over the
  processes; a plain loss function is computed whole on every process (`DistributedLoss`);
- either way the returned losses of the W processes sum to W × the single-process loss, which DDP's
  averaging (÷ W) turns into the single-process gradient.

State that learns from a step (memory queue, AdCo's bank, the generator, the calibrator, the
cluster-guided k-means) sees the gathered batch, identical on every process, so it stays identical
without a broadcast. `GatheredBatchNorm` is batch normalisation over the global batch (the
CPU counterpart of ``nn.SyncBatchNorm``, which needs a GPU).

With one process, or without an initialised process group, everything here is the identity.
"""

from __future__ import annotations

import gc
import os
import signal
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hardneg.losses.candidates import two_view_index

if TYPE_CHECKING:
    from hardneg.negatives.pixels import PixelGrid
    from hardneg.negatives.strategy import Strategy

__all__ = [
    "STOP_KEY",
    "STORE_ENV",
    "DistributedLoss",
    "DistributedStrategy",
    "GatheredBatchNorm",
    "all_processes",
    "agree_on_stop",
    "anchor_rows",
    "broadcast_flag",
    "convert_batchnorm",
    "distributed_objective",
    "gather",
    "gather_tags",
    "gather_without_grad",
    "init_from_env",
    "is_main",
    "leave",
    "loss_value",
    "mean_over_processes",
    "rank",
    "world_size",
    "wrap_model",
]


def world_size() -> int:
    """Number of processes of the default group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files (rank 0)."""
    return rank() == 0


def _with_grad(op: str, x: Tensor) -> Any:
    """``torch.distributed.nn.functional.<op>(x)``: a collective autograd differentiates."""
    import torch.distributed.nn.functional as DF

    with warnings.catch_warnings():  # its deprecation notice names a replacement without a gloo backward
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        return getattr(DF, op)(x)


def _check_same_rows(x: Tensor, what: str) -> None:
    n = torch.tensor([x.shape[0], -x.shape[0]], dtype=torch.long, device=x.device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    if int(n[0]) != -int(n[1]):
        raise ValueError(
            f"{what}: every process must hold the same number of rows for a gathered loss "
            f"(this process {x.shape[0]}, others between {-int(n[1])} and {int(n[0])}); drop the last partial batch"
        )


@overload
def gather(x: Tensor, what: str = ...) -> Tensor: ...
@overload
def gather(x: None, what: str = ...) -> None: ...
def gather(x: Tensor | None, what: str = "embeddings") -> Tensor | None:
    """Rows of ``x`` of every process in rank order, **with gradient**: the backward sums every
    process's gradient for this process's rows. None stays None; the identity on one process."""
    if x is None or world_size() == 1:
        return x
    _check_same_rows(x, what)
    return torch.cat(_with_grad("all_gather", x))


@overload
def gather_without_grad(x: Tensor, what: str = ...) -> Tensor: ...
@overload
def gather_without_grad(x: None, what: str = ...) -> None: ...
def gather_without_grad(x: Tensor | None, what: str = "embeddings") -> Tensor | None:
    """Rows of ``x`` of every process in rank order, this process's own rows keeping their gradient
    and the others' arriving without one (open_clip's gather when ``gather_with_grad=False``): each
    process's backward reaches only its own rows. None stays None; the identity on one process."""
    if x is None or world_size() == 1:
        return x
    _check_same_rows(x, what)
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.detach().contiguous())
    out[rank()] = x
    return torch.cat(out)


@overload
def gather_tags(x: Tensor) -> Tensor: ...
@overload
def gather_tags(x: None) -> None: ...
def gather_tags(x: Tensor | None) -> Tensor | None:
    """Labels or sample ids (integers, no gradient) of every process in rank order."""
    if x is None or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def mean_over_processes(d: float) -> float:
    """The ``mean_denominator`` of a distributed loss: the sum of every process's denominator
    divided by the number of processes (so the W losses sum to W × the global mean)."""
    w = world_size()
    if w == 1:
        return d
    t = torch.tensor([d], dtype=torch.float64)
    if dist.get_backend() == dist.Backend.NCCL:
        t = t.cuda()
    dist.all_reduce(t)
    return float(t) / w


def anchor_rows(b: int, two_views: bool, device: torch.device | None = None) -> Tensor:
    """This process's anchors among the anchors of the gathered batch (W·b samples): rows
    ``r·b … (r+1)·b − 1`` of ``z1`` and, with two symmetric views ``[z1; z2]``
    (`two_view_index`), the same rows of ``z2``."""
    r, B = rank(), b * world_size()
    mine = torch.arange(r * b, (r + 1) * b, device=device)
    if not two_views:
        return mine
    pos, _ = two_view_index(B, device)
    return torch.cat([mine, pos[mine]])


def _reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    # the W returned values must sum to W × the single-process loss (DDP divides by W)
    return loss * world_size() if reduction == "sum" else loss


class DistributedStrategy(nn.Module):
    """A `Strategy` over processes: gathers the views, labels, ids and
    explicit negatives of every process and computes the loss against the global candidates. With
    one process it calls the strategy as is.

    ``local_loss`` and ``gather_with_grad`` have open_clip's meaning (``open_clip.loss.ClipLoss``):

    - ``local_loss=True`` (default): the loss of **this process's anchors** against every candidate
      (``Strategy.forward(anchor_rows=..., mean_denominator=...)``); the W returned losses sum to
      W × the global batch's loss. ``reduction="none"`` returns this process's anchors' losses.
    - ``local_loss=False``: every process computes the **whole global batch's** loss.
    - ``gather_with_grad=True`` (default): the other processes' rows are gathered with gradient
      (the backward sums every process's gradient for a process's rows), so after DDP's averaging
      both ``local_loss`` choices give exactly the single-process gradient of the global batch.
    - ``gather_with_grad=False``: the other processes' rows arrive without gradient. With
      ``local_loss=False`` a process's own rows keep theirs, so DDP's average is the
      single-process gradient ÷ W (for parameters the towers share across processes; a
      temperature computed on every process keeps its full gradient). With ``local_loss=True``
      only the anchors carry gradient, none of the candidates (``detach_candidates``), as in
      open_clip.
    """

    def __init__(self, strategy: Strategy, local_loss: bool = True, gather_with_grad: bool = True) -> None:
        super().__init__()
        self.strategy = strategy
        self.local_loss = bool(local_loss)
        self.gather_with_grad = bool(gather_with_grad)

    @property
    def last_diagnostics(self) -> dict[str, float]:
        """The strategy's diagnostics of the last step (computed on the anchors of this process's loss)."""
        return self.strategy.last_diagnostics

    def forward(
        self,
        z1: Tensor,
        z2: Tensor | None = None,
        labels: Tensor | None = None,
        ids: Tensor | None = None,
        step: int | None = None,
        negatives: Tensor | None = None,
        *,
        negatives_per_anchor: bool = False,
        logit_scale: Tensor | None = None,
        grid: PixelGrid | None = None,
    ) -> Tensor:
        """The strategy's loss on this process's anchors against the gathered batch; the arguments
        are `Strategy.forward`'s (``grid``: the pixel grid the ids of a dense batch are made by)."""
        extra: dict[str, Any] = dict(negatives_per_anchor=negatives_per_anchor, logit_scale=logit_scale, grid=grid)
        if world_size() == 1:
            return self.strategy(z1, z2, labels, ids, step, negatives, **extra)
        b = z1.shape[0]
        rows_of = gather if self.gather_with_grad else gather_without_grad
        Z1, Z2 = rows_of(z1, "z1"), rows_of(z2, "z2")
        Y, ids_g = gather_tags(labels), gather_tags(ids)
        # (r×d) shared rows or (b×r×d) per-sample rows: both stack along dim 0
        N = None if negatives is None else rows_of(negatives, "negatives")
        if not self.local_loss:
            return self.strategy(Z1, Z2, Y, ids_g, step, N, **extra)
        two_views = z2 is not None and self.strategy.in_batch.symmetric
        rows = anchor_rows(b, two_views, z1.device)
        loss = self.strategy(Z1, Z2, Y, ids_g, step, N, anchor_rows=rows, mean_denominator=mean_over_processes,
                             detach_candidates=not self.gather_with_grad, **extra)
        return _reduce_loss(loss, self.strategy.reduction)


class DistributedLoss(nn.Module):
    """A plain loss ``loss_fn(z1, z2, labels) -> scalar`` over processes: gathers the views and
    labels (with gradient) and computes the whole global batch's loss on every process — exact for
    any loss, the loss computed W times; a `DistributedStrategy` computes each anchor once."""

    def __init__(self, loss_fn: Any) -> None:
        super().__init__()
        self.loss_fn = loss_fn

    def forward(self, z1: Tensor, z2: Tensor, labels: Tensor) -> Tensor:
        if world_size() == 1:
            return self.loss_fn(z1, z2, labels)
        return self.loss_fn(gather(z1, "z1"), gather(z2, "z2"), gather_tags(labels))


def loss_value(loss: Tensor) -> float:
    """The single-process value of a distributed loss: the mean of the W processes' values."""
    w = world_size()
    if w == 1:
        return float(loss.detach())
    t = loss.detach().reshape(1).to(torch.float64)
    dist.all_reduce(t)
    return float(t) / w


class GatheredBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation whose training statistics are those of the global batch (sums
    all-reduced with gradient, two passes like ``nn.BatchNorm``), on CPU and GPU; the same module
    as ``nn.BatchNorm1d/2d`` otherwise (state-dict compatible)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n_local = x.numel() // x.shape[1]
        cnt = torch.tensor([float(n_local)], dtype=x.dtype, device=x.device)
        s = _with_grad("all_reduce", torch.cat([x.sum(dims), cnt]))
        n = s[-1].detach()
        mean = s[:-1] / n
        xc = x - mean.reshape(shape)
        var = _with_grad("all_reduce", (xc * xc).sum(dims)) / n
        rm, rv, count = self.running_mean, self.running_var, self.num_batches_tracked
        if self.track_running_stats and rm is not None and rv is not None and count is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                rm.mul_(1 - m).add_(mean.detach(), alpha=m)
                rv.mul_(1 - m).add_(var.detach() * n / max(float(n) - 1, 1.0), alpha=m)
                count.add_(1)
        y = xc * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.BatchNorm1d/2d/3d`` replaced by a `GatheredBatchNorm`
    holding the same parameters and buffers (in place for submodules; returns the root)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GatheredBatchNorm):
        new = GatheredBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module


#: environment of a worker the ``--nproc`` launcher started: ``host:port`` of the launcher's store
STORE_ENV = "HARDNEG_STORE"
#: the store key through which the launcher asks every process to stop (its value: the signal number)
STOP_KEY = "hardneg/stop"
_store: Any = None  # the launcher's store, while this process is in its group


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group the environment describes (``WORLD_SIZE`` > 1): the ``--nproc``
    launcher's (``RANK``, ``WORLD_SIZE`` and its store in ``HARDNEG_STORE``) or torchrun's; gloo on CPU,
    NCCL when CUDA is available, unless ``backend`` says. Returns True when this process is one of
    several. Leave with `leave`."""
    global _store
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        # DistributedDataParallel imports torch._dynamo, which keeps every process group that exists
        # at that moment alive for good: destroy_process_group would leave gloo's threads running into
        # interpreter shutdown, where one that releases a finished collective's tensors needs the GIL
        # and aborts the process ("terminate called without an active exception"). Imported before
        # the group exists, it holds none.
        import torch._dynamo  # noqa: F401

        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if os.environ.get(STORE_ENV):
            host, port = os.environ[STORE_ENV].rsplit(":", 1)
            world, r = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
            _store = dist.TCPStore(host, int(port), world, is_master=False)
            dist.init_process_group(backend, store=_store, rank=r, world_size=world)
        else:
            dist.init_process_group(backend)
    return True


def leave() -> None:
    """Leave the process group: destroy it, which ends its threads once nothing else holds it. Call it
    before the interpreter exits, after whatever holds the group (a DDP-wrapped model) is gone."""
    global _store
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # a Trainer in a reference cycle (an exception's traceback) still holds the group
        dist.destroy_process_group()
    _store = None


def _launcher_request() -> int:
    """The signal the ``--nproc`` launcher received and asks every process to stop for (0: none); a
    launcher that is gone counts as SIGTERM."""
    if _store is None:
        return 0
    try:
        return int(_store.get(STOP_KEY)) if _store.check([STOP_KEY]) else 0
    except Exception:  # the launcher's store is unreachable: the launcher died
        return int(signal.SIGTERM)


def _wait_for_all() -> None:
    """Return when every process has called this; meanwhile sleep in Python, not inside a blocking
    collective, so that a signal arriving while the others are busy (rank 0 evaluating or writing a
    checkpoint) is handled before the caller reads its stop flag."""
    work = dist.barrier(async_op=True)
    pause = 1e-4
    while not work.is_completed():
        time.sleep(pause)
        pause = min(2 * pause, 0.01)
    work.wait()


def agree_on_stop(local: Callable[[], int]) -> int:
    """The signal number any process was asked to stop with, the same on every process (0: none).
    ``local()`` is this process's own request (the signal its handler recorded), read after every
    process has arrived, so a request made while waiting is counted; the launcher's is added."""
    if world_size() == 1:
        return local()
    _wait_for_all()
    return _all_reduce_int(local() or _launcher_request(), dist.ReduceOp.MAX)


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every process (a barrier too: the others wait for rank 0)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.long)
    t = _on_backend(t)
    dist.broadcast(t, 0)
    return bool(int(t.cpu()[0]))


def _on_backend(t: Tensor) -> Tensor:
    return t.cuda() if dist.get_backend() == dist.Backend.NCCL else t


def _all_reduce_int(v: int, op: Any) -> int:
    t = _on_backend(torch.tensor([int(v)], dtype=torch.long))
    dist.all_reduce(t, op=op)
    return int(t.cpu()[0])


def all_processes(flag: bool) -> bool:
    """True when ``flag`` is true on every process."""
    return flag if world_size() == 1 else bool(_all_reduce_int(int(flag), dist.ReduceOp.MIN))


def wrap_model(model: nn.Module) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` over several processes (gradients averaged); the
    model itself on one. Buffers are not broadcast: `GatheredBatchNorm` keeps them equal."""
    if world_size() == 1:
        return model
    dev = next(model.parameters()).device
    ids = [dev.index] if dev.type == "cuda" else None
    import inspect

    ddp = nn.parallel.DistributedDataParallel
    newer = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters  # the older name is deprecated
    no_sync: dict[str, Any] = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return ddp(model, device_ids=ids, **no_sync)


def distributed_objective(loss_fn: Any) -> nn.Module:
    """The loss a distributed step calls: a `DistributedStrategy` around a strategy, a
    `DistributedLoss` around a plain loss function ``loss_fn(z1, z2, labels)``."""
    from hardneg.negatives.strategy import Strategy

    if isinstance(loss_fn, Strategy):
        return DistributedStrategy(loss_fn)
    return DistributedLoss(loss_fn)
