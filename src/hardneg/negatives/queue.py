r"""Memory queue of past keys and the momentum (EMA) encoder that produces them (MoCo, He et al. 2020).

The queue is a fixed-size FIFO of L2-normalised keys with their labels and sample ids. It starts
**empty**: slots that were never written are never returned, so no random vector ever counts as a
negative. Keys of the anchor's own sample id (its earlier views) are excluded by the strategy's
identity rule, so a queued copy of the positive is never a negative.

Momentum encoder: ``θ_k ← m · θ_k + (1 − m) · θ_q`` after every step (MoCo's m = 0.999). A queue
declares that its keys should come from one (``needs_key_encoder``); `needs_key_encoder` tells a
training loop whether a strategy holds such a component (``hardneg train`` then encodes the second
view with a `MomentumEncoder`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.losses.checks import check_int, check_number
from hardneg.negatives.sources import Anchors, Candidates, Source


class MemoryQueue(Source):
    """FIFO queue of ``size`` keys (MoCo). ``extend`` adds the filled slots, oldest first; after the
    loss is computed, ``after_step`` enqueues the batch keys (detached) with their labels and ids.

    Args:
        size: number of slots (MoCo default 65536; preset ``moco_queue`` uses 4096).
        dim: key dimension; inferred from the first batch when None.
    """

    kind = "queue"
    #: stored keys outlive the step that made them, so they should come from a slowly moving encoder
    needs_key_encoder = True
    # registered buffers, declared for the type checker (nn.Module resolves them at run time)
    keys: Tensor
    labels: Tensor
    ids: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, size: int = 4096, dim: int | None = None) -> None:
        super().__init__()
        self.size = check_int("queue option 'size'", size)
        self.register_buffer("keys", torch.zeros(0, 0))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("ids", torch.zeros(0, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        if dim is not None:
            self._allocate(check_int("queue option 'dim'", dim), torch.device("cpu"), torch.float32)

    def _allocate(self, dim: int, device: torch.device, dtype: torch.dtype) -> None:
        self.keys = torch.zeros(self.size, dim, device=device, dtype=dtype)
        self.labels = torch.full((self.size,), -1, dtype=torch.long, device=device)
        self.ids = torch.full((self.size,), -1, dtype=torch.long, device=device)

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # the queue is allocated lazily: take the saved shapes before copying the saved values
        for name in ("keys", "labels", "ids"):
            v = state_dict.get(prefix + name)
            if v is not None and v.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(v))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def is_full(self) -> bool:
        return int(self.count) >= self.size

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor | None = None, ids: Tensor | None = None) -> None:
        """Write ``keys`` (b×d) into the oldest slots (FIFO); only the last ``size`` are kept if b > size."""
        if keys.dim() != 2:
            raise ValueError(f"keys must have shape (b, dim), got {tuple(keys.shape)}")
        if self.keys.numel() == 0:
            self._allocate(keys.shape[1], keys.device, keys.dtype)
        if keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"keys must have dim {self.keys.shape[1]} (the queue's), got {keys.shape[1]}")
        b = keys.shape[0]
        keys = F.normalize(keys.detach(), dim=1).to(self.keys.dtype)
        lab = torch.full((b,), -1, dtype=torch.long) if labels is None else labels.long()
        idv = torch.full((b,), -1, dtype=torch.long) if ids is None else ids.long()
        if b > self.size:
            keys, lab, idv = keys[-self.size :], lab[-self.size :], idv[-self.size :]
            b = self.size
        slots = (int(self.ptr) + torch.arange(b)) % self.size
        slots = slots.to(self.keys.device)
        self.keys[slots] = keys
        self.labels[slots] = lab.to(self.labels.device)
        self.ids[slots] = idv.to(self.ids.device)
        self.ptr.fill_((int(self.ptr) + b) % self.size)
        self.count.fill_(min(int(self.count) + b, self.size))

    def contents(self) -> tuple[Tensor, Tensor, Tensor]:
        """(keys, labels, ids) of the filled slots, oldest first. Never-written slots are excluded."""
        c = int(self.count)
        if c == 0:
            d = self.keys.shape[1] if self.keys.dim() == 2 else 0
            e = torch.zeros(0, dtype=torch.long, device=self.labels.device)
            return self.keys.new_zeros(0, d), e, e
        if c < self.size:
            sl = slice(0, c)
            return self.keys[sl], self.labels[sl], self.ids[sl]
        order = (int(self.ptr) + torch.arange(self.size, device=self.keys.device)) % self.size
        return self.keys[order], self.labels[order], self.ids[order]

    def extend(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        keys, labels, ids = self.contents()
        if keys.dim() == 2 and keys.shape[1] and keys.shape[1] != cands.k.shape[1]:
            raise ValueError(
                f"the memory queue holds keys of dim {keys.shape[1]} but this batch's embeddings have dim "
                f"{cands.k.shape[1]}; a queue serves one embedding size (build a new strategy for another model)"
            )
        if keys.shape[0]:
            cands.append("queue", keys.to(cands.k.device), labels, ids)

    def after_step(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        if self.training:  # evaluation batches never become training negatives
            self.enqueue(anchors.keys, anchors.key_labels, anchors.key_ids)

    def diagnostics(self) -> dict[str, float]:
        return {"queue_fill": float(self.count) / self.size}


class MomentumEncoder(nn.Module):
    """Exponential moving average of an encoder (MoCo): ``θ_k ← m θ_k + (1 − m) θ_q``.

    ``forward`` runs the EMA copy without gradient; call `update` after each optimiser step.
    """

    def __init__(self, encoder: nn.Module, momentum: float = 0.999) -> None:
        super().__init__()
        self.momentum = check_number("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.ema = copy.deepcopy(encoder)
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, encoder: nn.Module) -> None:
        m = self.momentum
        for pe, po in zip(self.ema.parameters(), encoder.parameters(), strict=True):
            pe.mul_(m).add_(po.detach(), alpha=1.0 - m)
        for be, bo in zip(self.ema.buffers(), encoder.buffers(), strict=True):
            be.copy_(bo)

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.ema(*args, **kwargs)


def needs_key_encoder(module: nn.Module) -> bool:
    """True when ``module`` (a strategy) or any of its submodules declares ``needs_key_encoder``: its
    second view should be encoded by a `MomentumEncoder`, not by the encoder being trained."""
    return any(getattr(m, "needs_key_encoder", False) for m in module.modules())
