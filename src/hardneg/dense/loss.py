r"""Per-pixel contrastive loss: pixels of ``(B, C, H, W)`` feature maps as anchors, through a
`Strategy` and so through the one kernel.

Each sampled pixel is one sample of the strategy: its embedding is a row of ``z1`` (and of ``z2``,
the same scene point in the second view), its label the label map's value there, its sample id
``(image, y, x)`` encoded by the feature map's `PixelGrid` ``(H, W)``,
which the strategy's components receive in the step context (one grid, never a second one).
Negatives are the other sampled pixels of the same and of the other images (and whatever the
strategy's sources add, e.g. a `ClassMemory`); the candidate rule, the
filters (`NeighbourhoodFilter`,
`InputSimilarityFilter`, `LabelFilter`, …) and
the weightings apply unchanged.

Positives:

- two views (``f2`` given): the pixel of ``f2`` that shows the same point (``correspondence``; the
  same grid when omitted);
- a label map (``labels``, one view): every sampled pixel of the same class or instance
  (``family="supcon"`` or ``positives="labels"``). Pixels of unknown label (−1) are never sampled
  as anchors; with ``anchors_per_image=None`` they are in the batch as negatives only.

Anchor sampling: ``anchors_per_image`` pixels per image (None: every pixel), ``"uniform"`` or
``"hard"`` (Wang et al. 2021, "Exploring Cross-Image Pixel Contrast for Semantic Segmentation":
half of the anchors are the hardest pixels, the rest uniform). Hardness is given per pixel, or
computed: one minus the cosine between a pixel and its positive view (two views), or between a
pixel and the mean embedding of its label in the batch (label map).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.dense.geometry import identity_correspondence
from hardneg.losses.checks import UNKNOWN, check_choice, check_int, check_number
from hardneg.negatives import Strategy, create_strategy, from_config
from hardneg.negatives.pixels import PixelGrid

SAMPLING = ("uniform", "hard")


def check_sampling(k: int | None, sampling: str, hard_fraction: float) -> tuple[int | None, str, float]:
    """The anchor-sampling options, checked and returned: ``k`` a positive int or None,
    ``sampling`` uniform|hard, ``hard_fraction`` in [0, 1]."""
    check_choice("sampling", sampling, SAMPLING)
    k = None if k is None else check_int("anchors_per_image", k)
    return k, sampling, check_number("hard_fraction", hard_fraction, 0.0, 1.0)


def sample_anchors(
    eligible: Tensor,
    k: int | None,
    sampling: str = "uniform",
    hardness: Tensor | None = None,
    hard_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Up to ``k`` anchor pixels per image among the ``eligible`` ones (B, H, W) bool.

    ``"uniform"``: a uniform random subset. ``"hard"``: the ``round(hard_fraction · k)`` pixels of
    largest ``hardness`` (B, H, W), then uniform among the rest. ``k=None``: every eligible pixel.
    Returns ``(image, y, x)`` long tensors, image-major.
    """
    k, sampling, hard_fraction = check_sampling(k, sampling, hard_fraction)
    B, H, W = eligible.shape
    if sampling == "hard" and k is not None and (hardness is None or hardness.shape != eligible.shape):
        raise ValueError(f"hard anchor sampling needs hardness of shape {(B, H, W)}")
    out = []
    for b in range(B):
        cand = torch.nonzero(eligible[b].flatten()).flatten()
        if k is not None and cand.numel() > k:
            n_hard = round(hard_fraction * k) if sampling == "hard" else 0
            pick = cand.new_empty(0)
            if n_hard and hardness is not None:  # None was refused above
                h = hardness[b].flatten()[cand]
                top = torch.topk(h, n_hard).indices
                pick = cand[top]
                rest = torch.ones(cand.numel(), dtype=torch.bool, device=cand.device)
                rest[top] = False
                cand = cand[rest]
            perm = torch.randperm(cand.numel(), generator=generator)[: k - n_hard].to(cand.device)
            cand = torch.cat([pick, cand[perm]]).sort().values
        out.append(torch.stack([torch.full_like(cand, b), cand // W, cand % W], 1))
    idx = torch.cat(out)
    if idx.shape[0] == 0:
        raise ValueError("no eligible anchor pixel (no correspondence between the views, or only unknown labels)")
    return idx[:, 0], idx[:, 1], idx[:, 2]


def _as_strategy(strategy: Strategy | str | Mapping[str, Any]) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str):
        return create_strategy(strategy)
    if isinstance(strategy, Mapping):
        return from_config(strategy)
    raise TypeError(f"strategy must be a Strategy, a preset name or a config mapping, got {type(strategy).__name__}")


def _check_map(name: str, f: Tensor) -> None:
    if not isinstance(f, Tensor) or f.dim() != 4 or not f.is_floating_point():
        raise ValueError(f"{name} must be a floating-point (B, C, H, W) feature map, got "
                         f"{tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__}")
    if 0 in f.shape:
        raise ValueError(f"{name} is empty: a (B, C, H, W) feature map needs at least one image, channel and "
                         f"pixel, got {tuple(f.shape)}")


class DenseContrast(nn.Module):
    """The per-pixel contrastive loss (see the module docstring).

    Args:
        strategy: a `Strategy`, a preset name or a ``from_config`` mapping.
        anchors_per_image: K sampled anchor pixels per image (None: every pixel).
        sampling: ``"uniform"`` or ``"hard"`` (Wang et al. 2021).
        hard_fraction: share of the hard anchors with ``sampling="hard"``.

    ``forward(f1, f2=None, labels=None, correspondence=None, image_ids=None, hardness=None,
    step=None, generator=None)``: ``f1`` (B, C, H, W) and ``f2`` (B, C, H2, W2) feature maps;
    ``labels`` (B, H, W) class or instance ids of ``f1``'s pixels (−1 unknown); ``correspondence``
    (B, H, W, 2) position in ``f2`` of each pixel of ``f1`` (−1: not visible; None: same grid);
    ``image_ids`` (B,) image indices for the pixel ids (default 0..B−1: unique in the batch; pass
    data-set indices when a memory keeps pixels across steps). The sampled pixels of the last call
    are in `last_anchors` and their ids in `last_ids`.
    """

    def __init__(
        self,
        strategy: Strategy | str | Mapping[str, Any] = "ucl",
        anchors_per_image: int | None = 256,
        sampling: str = "uniform",
        hard_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        self.strategy = _as_strategy(strategy)
        self.anchors_per_image, self.sampling, self.hard_fraction = check_sampling(
            anchors_per_image, sampling, hard_fraction
        )
        self.last_anchors: tuple[Tensor, Tensor, Tensor] | None = None
        self.last_ids: Tensor | None = None

    @property
    def last_diagnostics(self) -> dict[str, float]:
        return self.strategy.last_diagnostics

    def forward(
        self,
        f1: Tensor,
        f2: Tensor | None = None,
        labels: Tensor | None = None,
        correspondence: Tensor | None = None,
        image_ids: Tensor | None = None,
        hardness: Tensor | None = None,
        step: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        _check_map("f1", f1)
        B, C, H, W = f1.shape
        dev = f1.device
        eligible = torch.ones(B, H, W, dtype=torch.bool, device=dev)
        corr = None
        if f2 is not None:
            _check_map("f2", f2)
            if f2.shape[:2] != (B, C):
                raise ValueError(f"f2 must have f1's batch size and channels {(B, C)}, got {tuple(f2.shape[:2])}")
            if correspondence is None:
                if f2.shape != f1.shape:
                    raise ValueError("views of different sizes need a correspondence (B, H, W, 2)")
                corr = identity_correspondence(B, H, W, dev)
            else:
                if tuple(correspondence.shape) != (B, H, W, 2):
                    got = tuple(correspondence.shape)
                    raise ValueError(f"correspondence must have shape {(B, H, W, 2)}, got {got}")
                corr = correspondence.to(dev).long()
                if bool((corr[..., 0] >= f2.shape[2]).any() | (corr[..., 1] >= f2.shape[3]).any()):
                    raise ValueError(f"correspondence points outside f2's {f2.shape[2]}×{f2.shape[3]} grid")
            eligible &= (corr >= 0).all(-1)
        if labels is not None:
            if tuple(labels.shape) != (B, H, W) or labels.is_floating_point():
                raise ValueError(f"labels must be an integer map of shape {(B, H, W)}, got {tuple(labels.shape)}")
            labels = labels.to(dev).long()
            if f2 is None and self.anchors_per_image is not None:
                # a pixel of unknown label has no positive (the candidate rule skips it as an anchor):
                # sampled anchors are drawn among the known ones; with every pixel, it stays a negative
                eligible &= labels != UNKNOWN
        if image_ids is None:
            image_ids = torch.arange(B, device=dev)
        elif tuple(image_ids.shape) != (B,):
            raise ValueError(f"image_ids must have shape ({B},), got {tuple(image_ids.shape)}")
        if self.sampling == "hard" and self.anchors_per_image is not None and hardness is None:
            hardness = self._hardness(f1, f2, corr, labels, eligible)
        b, y, x = sample_anchors(eligible, self.anchors_per_image, self.sampling, hardness, self.hard_fraction,
                                 generator)
        z1 = f1[b, :, y, x]
        z2 = None if f2 is None or corr is None else f2[b, :, corr[b, y, x, 0], corr[b, y, x, 1]]
        lab = None if labels is None else labels[b, y, x]
        grid = PixelGrid(H, W)  # the one grid of this call: it encodes the ids, the components decode with it
        ids = grid.encode(image_ids.to(dev).long()[b], y, x)
        self.last_anchors, self.last_ids = (b, y, x), ids
        return self.strategy(z1, z2, labels=lab, ids=ids, step=step, grid=grid)

    @staticmethod
    @torch.no_grad()
    def _hardness(
        f1: Tensor, f2: Tensor | None, corr: Tensor | None, labels: Tensor | None, eligible: Tensor
    ) -> Tensor:
        """1 − cosine to the positive view, or to the mean embedding of the pixel's label in the batch."""
        z = F.normalize(f1.detach().permute(0, 2, 3, 1), dim=-1)  # (B, H, W, C)
        if f2 is not None and corr is not None:  # a second view always comes with its correspondence
            B = z.shape[0]
            b = torch.arange(B, device=z.device)[:, None, None]
            c = corr.clamp(min=0)
            z2 = F.normalize(f2.detach().permute(0, 2, 3, 1), dim=-1)[b, c[..., 0], c[..., 1]]
            return torch.where(eligible, 1.0 - (z * z2).sum(-1), torch.full_like(z[..., 0], -2.0))
        if labels is None:
            raise ValueError("hard anchor sampling needs a second view or a label map (or pass hardness)")
        known = eligible & (labels != UNKNOWN)
        y = labels[known]
        _, inv = torch.unique(y, return_inverse=True)
        means = torch.zeros(int(inv.max()) + 1, z.shape[-1], dtype=z.dtype, device=z.device)
        means.index_add_(0, inv, z[known])
        out = torch.full_like(z[..., 0], -2.0)
        out[known] = 1.0 - (z[known] * F.normalize(means, dim=1)[inv]).sum(-1)
        return out
