"""Where a pixel of one view is in the other: correspondences from coordinates or a known transform.

A correspondence is a ``(B, H1, W1, 2)`` long tensor: for each pixel ``(y, x)`` of view 1, the
pixel ``(y', x')`` of view 2 that shows the same scene point, or ``(−1, −1)`` where view 2 does
not show it. Coordinates are the positions of a view's pixels in the original image, ``(B, H, W, 2)``
integers (what `random_flip_crop` returns with each view).
"""

from __future__ import annotations

import torch
from torch import Tensor


def identity_correspondence(B: int, H: int, W: int, device: torch.device | None = None) -> Tensor:
    """Both views share one pixel grid: pixel (y, x) of view 1 is pixel (y, x) of view 2."""
    yy, xx = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    return torch.stack([yy, xx], -1).expand(B, H, W, 2).clone()


def _check_coords(name: str, c: Tensor) -> None:
    if not isinstance(c, Tensor) or c.dim() != 4 or c.shape[-1] != 2 or c.is_floating_point():
        raise ValueError(f"{name} must be an integer tensor of shape (B, H, W, 2), got "
                         f"{tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__}")


def correspondence_from_coords(coords1: Tensor, coords2: Tensor) -> Tensor:
    """Match each pixel of view 1 to the pixel of view 2 with the same original coordinates.

    Args:
        coords1, coords2: ``(B, H1, W1, 2)`` and ``(B, H2, W2, 2)`` original ``(y, x)`` of each pixel
            of the two views (integers ≥ 0; −1 marks padding).
    Returns:
        ``(B, H1, W1, 2)`` positions in view 2, ``−1`` where view 2 does not show that point.
    """
    _check_coords("coords1", coords1)
    _check_coords("coords2", coords2)
    if coords1.shape[0] != coords2.shape[0]:
        raise ValueError(f"coords1 and coords2 must have one batch size, got {coords1.shape[0]} and {coords2.shape[0]}")
    B, H2, W2, _ = coords2.shape
    oh = int(max(coords1[..., 0].max(), coords2[..., 0].max())) + 1
    ow = int(max(coords1[..., 1].max(), coords2[..., 1].max())) + 1
    dev = coords2.device
    table = torch.full((B, oh * ow), -1, dtype=torch.long, device=dev)  # original point -> view-2 pixel
    ok2 = (coords2 >= 0).all(-1)
    flat2 = coords2[..., 0] * ow + coords2[..., 1]
    pix2 = torch.arange(H2 * W2, device=dev).view(1, H2, W2).expand(B, H2, W2)
    b2 = torch.arange(B, device=dev).view(B, 1, 1).expand(B, H2, W2)
    table[b2[ok2], flat2[ok2]] = pix2[ok2]
    ok1 = (coords1 >= 0).all(-1)
    flat1 = (coords1[..., 0] * ow + coords1[..., 1]).clamp(min=0)
    b1 = torch.arange(B, device=dev).view(B, 1, 1).expand_as(flat1)
    hit = torch.where(ok1, table[b1, flat1], torch.full_like(flat1, -1))
    out = torch.stack([hit // W2, hit % W2], -1)
    return torch.where((hit >= 0)[..., None], out, torch.full_like(out, -1))


def random_flip_crop(
    x: Tensor, size: tuple[int, int], generator: torch.Generator | None = None, flip: bool = True
) -> tuple[Tensor, Tensor]:
    """A random crop of ``size = (h, w)`` of each image of ``x`` (B, C, H, W), mirrored left–right
    with probability ½; returns the view (B, C, h, w) and its pixels' original coordinates (B, h, w, 2)."""
    B, _, H, W = x.shape
    h, w = size
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"crop size {size} must fit in the {H}×{W} images")
    dev = x.device
    y0 = torch.randint(0, H - h + 1, (B,), generator=generator).to(dev)
    x0 = torch.randint(0, W - w + 1, (B,), generator=generator).to(dev)
    fl = (torch.rand(B, generator=generator) < 0.5).to(dev) if flip else torch.zeros(B, dtype=torch.bool, device=dev)
    ys = y0[:, None] + torch.arange(h, device=dev)[None, :]  # (B, h)
    xs = torch.arange(w, device=dev)[None, :].expand(B, w)
    xs = x0[:, None] + torch.where(fl[:, None], w - 1 - xs, xs)  # (B, w)
    b = torch.arange(B, device=dev)[:, None, None]
    view = x.permute(0, 2, 3, 1)[b, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2).contiguous()
    coords = torch.stack([ys[:, :, None].expand(B, h, w), xs[:, None, :].expand(B, h, w)], -1)
    return view, coords
