r"""A drop-in for open_clip's ``ClipLoss`` built on a `Strategy`.

open_clip calls ``loss(image_features, text_features, logit_scale)``; `ClipLoss` keeps that
convention and runs any strategy with the `CrossModal`
batch source: each image against the batch's texts and each text against its images, averaged
over the 2B anchors. With the default strategy (uniform π, β = 0) the value is CLIP's
``(CE(s·I Tᵀ, labels) + CE(s·T Iᵀ, labels)) / 2``; hard-negative weightings, filters, schedules
and extra sources (per-modality queues, one-edit caption swaps as ``negatives``) plug in unchanged.

Example::

    from hardneg.integrations.open_clip import ClipLoss
    from hardneg.negatives.cross_modal import LogitScale
    logit_scale = LogitScale()                 # CLIP's learnable 1/temperature, clamped at 100
    loss_fn = ClipLoss("hucl", beta=0.5)       # a preset or a Strategy / mapping
    loss = loss_fn(img_emb, txt_emb, logit_scale(), ids=group_ids)

On several processes it takes open_clip's constructor keywords with open_clip's meaning
(``ClipLoss("hucl", beta=0.5, local_loss=True, gather_with_grad=True, rank=r, world_size=w)``),
gathering through `DistributedStrategy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hardneg import distributed
from hardneg.negatives.cross_modal import CrossModal
from hardneg.negatives.registry import create_strategy, from_config
from hardneg.negatives.strategy import Strategy


def cross_modal_strategy(strategy: Strategy | str | Mapping[str, Any] | None = None, **overrides: Any) -> Strategy:
    """A `Strategy` whose batch source is `CrossModal`: an instance is checked, a
    preset name or a config mapping gets the ``cross_modal`` source added. ``None`` is plain CLIP
    (uniform π)."""
    if isinstance(strategy, Strategy):
        if overrides:
            raise ValueError("ClipLoss: overrides are only accepted with a preset name or a mapping")
        if not isinstance(strategy.in_batch, CrossModal):
            raise ValueError(
                "ClipLoss: the strategy's first source must be cross_modal (it is "
                f"{strategy.in_batch.kind!r}); build it with source=[CrossModal(), ...]"
            )
        return strategy
    if strategy is None:
        strategy = "ucl"
    if isinstance(strategy, str):
        extra = list(overrides.pop("source", []) or [])
        return create_strategy(strategy, source=[CrossModal(), *extra], **overrides)
    if isinstance(strategy, Mapping):
        cfg = dict(strategy)
        cfg.update(overrides)
        src = cfg.get("source") or []
        src = [src] if isinstance(src, (Mapping, str)) or not isinstance(src, (list, tuple)) else list(src)
        cfg["source"] = [{"kind": "cross_modal"}, *src]
        cfg.setdefault("name", "ucl")
        return from_config(cfg)
    raise TypeError(f"ClipLoss: strategy must be a Strategy, a preset name or a mapping, got {type(strategy).__name__}")


class ClipLoss(nn.Module):
    """open_clip-compatible contrastive loss running a hardneg strategy.

    Args:
        strategy: a `Strategy` with the ``cross_modal`` source, a preset name (``"ucl"``,
            ``"topk"``, ``"hucl"``, ``"cluster_guided"``, …) or a config mapping; None: plain CLIP.
        local_loss, gather_with_grad, cache_labels, rank, world_size, use_horovod: open_clip's
            ``ClipLoss`` keywords, with its meaning. ``world_size`` > 1 gathers the features of the
            ``torch.distributed`` process group (which must have that size, this process being
            ``rank``); 1 (the default) computes each process's batch alone, as open_clip does.
            ``local_loss``: this process's anchors against the global batch (else every process
            computes the global loss); ``gather_with_grad``: the other processes' rows carry
            gradient. ``local_loss=False, gather_with_grad=False`` gives the towers 1/W of the
            global batch's gradient and ``local_loss=True, gather_with_grad=False`` no gradient
            through the candidates, as in open_clip; with ``gather_with_grad=True`` both give the
            single-process gradient of the global batch (`DistributedStrategy`).
            ``cache_labels`` is accepted and changes nothing (the targets are implicit);
            ``use_horovod=True`` is refused (torch.distributed only).
        **overrides: preset options (``beta=``, ``k=``, ``weighting=``, …).

    ``forward(image_features, text_features, logit_scale, output_dict=False, *, labels=None,
    ids=None, negatives=None, step=None)``: features (B×d), normalised inside; ``logit_scale`` the
    exponentiated scale (tensor or float; CLIP's ``model.logit_scale.exp()``); ``ids`` group ids
    of the pairs (`pair_ids`); ``negatives`` (B×r×d)
    text embeddings owned by each image (one-edit caption swaps) or (r×d) shared ones.
    """

    def __init__(
        self,
        strategy: Strategy | str | Mapping[str, Any] | None = None,
        *,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if use_horovod:
            raise ValueError("ClipLoss: use_horovod=True is not supported; run torch.distributed (torchrun)")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"ClipLoss: world_size must be an integer >= 1, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"ClipLoss: rank must be an integer in [0, world_size = {world_size}), got {rank!r}")
        self.strategy = cross_modal_strategy(strategy, **overrides)
        self.local_loss, self.gather_with_grad = bool(local_loss), bool(gather_with_grad)
        self.cache_labels, self.rank, self.world_size = bool(cache_labels), rank, world_size

    def _objective(self) -> nn.Module:
        """The strategy, or the strategy over the processes when ``world_size`` > 1."""
        if self.world_size == 1:
            return self.strategy
        if (distributed.world_size(), distributed.rank()) != (self.world_size, self.rank):
            raise ValueError(
                f"ClipLoss: world_size={self.world_size}, rank={self.rank} but the torch.distributed process "
                f"group has {distributed.world_size()} process(es) and this is rank {distributed.rank()}; "
                "initialise the process group first and pass its size and rank"
            )
        return distributed.DistributedStrategy(self.strategy, self.local_loss, self.gather_with_grad)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float,
        output_dict: bool = False,
        *,
        labels: Tensor | None = None,
        ids: Tensor | None = None,
        negatives: Tensor | None = None,
        step: int | None = None,
    ) -> Tensor | dict[str, Tensor]:
        """CLIP's symmetric loss under the strategy (see the class)."""
        if not isinstance(logit_scale, Tensor):
            logit_scale = torch.tensor(float(logit_scale), dtype=image_features.dtype, device=image_features.device)
        loss = self._objective()(
            image_features,
            text_features,
            labels=labels,
            ids=ids,
            step=step,
            negatives=negatives,
            negatives_per_anchor=negatives is not None and negatives.dim() == 3,
            logit_scale=logit_scale,
        )
        return {"contrastive_loss": loss} if output_dict else loss

    @property
    def last_diagnostics(self) -> dict[str, float]:
        """The strategy's diagnostics of the last step."""
        return self.strategy.last_diagnostics
