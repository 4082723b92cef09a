r"""A drop-in for open_clip's ``ClipLoss`` built on a :class:`~hardneg.negatives.Strategy`.

open_clip calls ``loss(image_features, text_features, logit_scale)``; :class:`ClipLoss` keeps that
convention and runs any strategy with the :class:`~hardneg.negatives.cross_modal.CrossModal`
batch source: each image against the batch's texts and each text against its images, averaged
over the 2B anchors. With the default strategy (uniform π, β = 0) the value is CLIP's
``(CE(s·I Tᵀ, labels) + CE(s·T Iᵀ, labels)) / 2``; hard-negative weightings, filters, schedules
and extra sources (per-modality queues, one-edit caption swaps as ``negatives``) plug in unchanged.

Example::

    from hardneg.integrations.open_clip import ClipLoss
    from hardneg.negatives import LogitScale
    scale = LogitScale()                       # CLIP's learnable temperature, clamped at 100
    loss_fn = ClipLoss("hucl", beta=0.5)       # a preset or a Strategy / mapping
    loss = loss_fn(img_emb, txt_emb, scale(), ids=group_ids)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hardneg.negatives.cross_modal import CrossModal
from hardneg.negatives.registry import create_strategy, from_config
from hardneg.negatives.strategy import Strategy


def cross_modal_strategy(strategy: Strategy | str | Mapping[str, Any] | None = None, **overrides: Any) -> Strategy:
    """A :class:`Strategy` whose batch source is :class:`CrossModal`: an instance is checked, a
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
        strategy: a :class:`Strategy` with the ``cross_modal`` source, a preset name (``"ucl"``,
            ``"topk"``, ``"hucl"``, ``"cluster_guided"``, …) or a config mapping; None: plain CLIP.
        **overrides: preset options (``beta=``, ``k=``, ``weighting=``, …).

    ``forward(image_features, text_features, logit_scale, output_dict=False, *, labels=None,
    ids=None, negatives=None, step=None)``: features (B×d), normalised inside; ``logit_scale`` the
    exponentiated scale (tensor or float; CLIP's ``model.logit_scale.exp()``); ``ids`` group ids
    of the pairs (:func:`~hardneg.negatives.cross_modal.pair_ids`); ``negatives`` (B×r×d)
    text embeddings owned by each image (one-edit caption swaps) or (r×d) shared ones.
    """

    def __init__(self, strategy: Strategy | str | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__()
        self.strategy = cross_modal_strategy(strategy, **overrides)

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
        if not isinstance(logit_scale, Tensor):
            logit_scale = torch.tensor(float(logit_scale), dtype=image_features.dtype, device=image_features.device)
        loss = self.strategy(
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
        return self.strategy.last_diagnostics
