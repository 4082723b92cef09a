"""Generated scenes of overlapping coloured shapes with instance masks (instance separation).

Each image has a background (instance 0) and ``n`` discs and rectangles drawn in order, later ones
covering earlier ones. Colours come from a small ``palette``, so adjacent instances often share a
colour: only the one-pixel darker outline each shape is drawn with separates them. Gaussian pixel
noise is added. Returns images (N, 3, H, W) in [0, 1] and instance maps (N, H, W) with ids
0..n (a shape hidden entirely by later ones leaves no pixel).
"""

from __future__ import annotations

import numpy as np

PALETTE = np.array([[0.85, 0.25, 0.2], [0.2, 0.6, 0.85], [0.3, 0.75, 0.3]])


def make_shapes(
    n_images: int,
    size: int = 32,
    shapes: tuple[int, int] = (3, 6),
    palette: np.ndarray = PALETTE,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_images`` scenes of ``size``×``size`` pixels with between ``shapes[0]`` and ``shapes[1]``
    shapes each; returns ``(images float32 (N, 3, H, W), instances int64 (N, H, W))``."""
    if n_images < 1 or size < 8 or not 1 <= shapes[0] <= shapes[1]:
        raise ValueError(
            f"need n_images >= 1, size >= 8 and 1 <= shapes[0] <= shapes[1], got {n_images}, {size}, {shapes}"
        )
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n_images, 3, size, size), np.float32)
    inst = np.zeros((n_images, size, size), np.int64)
    for i in range(n_images):
        img = np.tile(np.array([0.92, 0.92, 0.88])[:, None, None], (1, size, size))
        for s in range(1, int(rng.integers(shapes[0], shapes[1] + 1)) + 1):
            cy, cx = rng.uniform(0.15, 0.85, 2) * size
            r = rng.uniform(0.12, 0.25) * size
            if rng.random() < 0.5:
                d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
                inside, rim = d <= r, (d <= r) & (d > r - 1.2)
            else:
                hy, hx = r * rng.uniform(0.6, 1.2, 2)
                dy, dx = np.abs(yy - cy), np.abs(xx - cx)
                inside = (dy <= hy) & (dx <= hx)
                rim = inside & ((dy > hy - 1) | (dx > hx - 1))
            col = palette[int(rng.integers(len(palette)))]
            img[:, inside] = col[:, None]
            img[:, rim] = 0.55 * col[:, None]
            inst[i][inside] = s
        images[i] = np.clip(img + rng.normal(scale=noise, size=img.shape), 0.0, 1.0)
    return images, inst
