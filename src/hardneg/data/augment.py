"""Batched image augmentations in plain torch (torchvision is not available here).

Every transform acts on a whole batch ``x`` of shape (B, C, H, W), float in [0, 1], draws its random
numbers from an explicit `torch.Generator` (so a checkpoint can store and restore the exact
stream) and has no Python loop over samples. The two views of SimCLR (Chen et al. 2020) are two
independent calls of the same `Augment`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _u(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def random_resized_crop_flip(
    x: torch.Tensor,
    g: torch.Generator,
    *,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    rows: slice | None = None,
) -> torch.Tensor:
    """Crop a random box of area fraction in ``scale`` and aspect ratio in ``ratio``, resize it back to
    (H, W) bilinearly, and mirror it horizontally with probability ``flip_p`` (one ``grid_sample``).
    ``rows``: draw for the whole batch, return only these rows (see `Augment`)."""
    B = x.shape[0]
    area = _u(B, scale[0], scale[1], g)
    log_r = _u(B, math.log(ratio[0]), math.log(ratio[1]), g)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(B, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(B, generator=g) * 2 - 1) * (1 - h)
    flip = torch.rand(B, generator=g) < flip_p
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(B, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = sx.to(x.dtype)
    theta[:, 0, 2] = cx.to(x.dtype)
    theta[:, 1, 1] = h.to(x.dtype)
    theta[:, 1, 2] = cy.to(x.dtype)
    if rows is not None:
        theta, x = theta[rows], x[rows]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_noise(
    x: torch.Tensor, g: torch.Generator, *, std: float = 0.05, batch: int | None = None, rows: slice | None = None
) -> torch.Tensor:
    """Add N(0, std²) noise and clamp to [0, 1]. With ``rows``, ``x`` holds those rows of a batch of
    ``batch`` samples: the noise of the whole batch is drawn and the rows' part added."""
    if std <= 0:
        return x
    noise = torch.randn((batch or x.shape[0], *x.shape[1:]), generator=g, dtype=x.dtype)
    return (x + std * (noise if rows is None else noise[rows])).clamp_(0.0, 1.0)


def random_erasing(
    x: torch.Tensor,
    g: torch.Generator,
    *,
    p: float = 0.25,
    scale: tuple[float, float] = (0.02, 0.2),
    batch: int | None = None,
    rows: slice | None = None,
) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): with probability ``p`` set a random box of area fraction in
    ``scale`` (aspect ratio in [0.3, 3.3]) to zero. ``batch``, ``rows``: as in `gaussian_noise`."""
    _, _, H, W = x.shape
    B = batch or x.shape[0]
    area = _u(B, scale[0], scale[1], g)
    r = torch.exp(_u(B, math.log(0.3), math.log(3.3), g))
    bh = (torch.sqrt(area * r) * H).clamp(1, H)
    bw = (torch.sqrt(area / r) * W).clamp(1, W)
    y0 = torch.rand(B, generator=g) * (H - bh)
    x0 = torch.rand(B, generator=g) * (W - bw)
    on = torch.rand(B, generator=g) < p
    if rows is not None:
        bh, bw, y0, x0, on = bh[rows], bw[rows], y0[rows], x0[rows], on[rows]
    ys = torch.arange(H, dtype=torch.float32)[None, :, None]
    xs = torch.arange(W, dtype=torch.float32)[None, None, :]
    box = (
        (ys >= y0[:, None, None])
        & (ys < (y0 + bh)[:, None, None])
        & (xs >= x0[:, None, None])
        & (xs < (x0 + bw)[:, None, None])
        & on[:, None, None]
    )
    return x.masked_fill(box[:, None], 0.0)


@dataclass(frozen=True)
class Augment:
    """Random resized crop + horizontal flip, Gaussian noise, random erasing, applied in that order.

    ``Augment(...)(x, g)`` returns a new batch; call it twice for the two views of a pair.
    ``Augment(...)(x, g, rows=sl)`` draws exactly what the whole batch would draw and returns only
    the rows ``sl`` of the result, computing only those (each process of a distributed step
    augments its own rows of the global batch, identical to one process's augmentation).
    """

    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip_p: float = 0.5
    noise_std: float = 0.05
    erase_p: float = 0.25

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale!r}")
        for name in ("flip_p", "erase_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")

    def __call__(self, x: torch.Tensor, g: torch.Generator, rows: slice | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        B = x.shape[0]
        x = random_resized_crop_flip(x, g, scale=self.crop_scale, flip_p=self.flip_p, rows=rows)
        x = gaussian_noise(x, g, std=self.noise_std, batch=B, rows=rows)
        if self.erase_p > 0:
            x = random_erasing(x, g, p=self.erase_p, batch=B, rows=rows)
        return x
