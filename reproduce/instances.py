r"""Instance separation: per-pixel embeddings of generated shape scenes, clustered per image and
scored by the adjusted Rand index against the instance masks (docs/dense.md, docs/results_dense.md).

A small fully convolutional net (with two coordinate channels) embeds every pixel; the loss is
`DenseContrast` with label positives (pixels of the same instance, instance
ids unique per image) on K sampled anchors per image. Negative constructions:

- ``uniform``: SupCon, π uniform over the other instances' pixels of every image;
- ``hard``: the tilt π ∝ exp(β s / t): the most similar other-instance pixels — mostly those of
  instances of the same colour;
- ``fine``: the tilt plus `Proximity`: extra weight on candidates of the
  anchor's own image within ``radius`` pixels, i.e. adjacent instances of the same colour.

Evaluation: k-means (scikit-learn) on the unit embeddings of each test image with k = its number
of instances (background included), adjusted Rand index against the instance map, mean over images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.data.shapes import make_shapes
from hardneg.dense import DenseContrast
from hardneg.negatives import Strategy
from hardneg.negatives.pixels import Proximity
from hardneg.seed import seed_everything

VARIANTS = ("uniform", "hard", "fine")


@dataclass
class InstanceConfig:
    """Training settings of the pixel encoder."""

    steps: int = 300
    batch: int = 16
    anchors_per_image: int = 96
    size: int = 32
    n_train: int = 512
    n_test: int = 64
    dim: int = 16
    width: int = 32
    lr: float = 3e-3
    temperature: float = 0.1
    beta: float = 1.0
    radius: float = 8.0
    bonus: float = 2.0


class PixelEncoder(nn.Module):
    """Dilated 3×3 convolutions on RGB + (y, x) coordinates → a ``dim``-vector per pixel."""

    def __init__(self, width: int = 32, dim: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 5
        for dil in (1, 2, 4, 8):
            layers += [nn.Conv2d(c, width, 3, padding=dil, dilation=dil), nn.ReLU()]
            c = width
        layers.append(nn.Conv2d(width, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
        coords = torch.stack([yy, xx]).to(x)[None].expand(B, 2, H, W)
        return self.net(torch.cat([x, coords], 1))


def make_strategy(variant: str, cfg: InstanceConfig) -> Strategy:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    beta = 0.0 if variant == "uniform" else cfg.beta
    weighting = [Proximity(cfg.radius, cfg.bonus)] if variant == "fine" else None
    return Strategy(family="supcon", temperature=cfg.temperature, beta=beta, weighting=weighting, diagnostics=False)


def mean_ari(emb: Tensor, inst: np.ndarray, seed: int = 0) -> float:
    """Mean over images of the ARI of k-means on the unit pixel embeddings (N, D, H, W)."""
    from sklearn.cluster import KMeans  # type: ignore[import-untyped]  # scikit-learn ships no type stubs
    from sklearn.metrics import adjusted_rand_score  # type: ignore[import-untyped]  # scikit-learn ships no type stubs

    out = []
    for i in range(emb.shape[0]):
        z = F.normalize(emb[i].flatten(1).T, dim=1).numpy()
        y = inst[i].ravel()
        k = len(np.unique(y))
        pred = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(z)
        out.append(adjusted_rand_score(y, pred))
    return float(np.mean(out))


def train_and_score(variant: str, cfg: InstanceConfig, seed: int) -> float:
    """Train one construction on generated scenes; mean ARI on held-out scenes."""
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    Xn, Yn = make_shapes(cfg.n_train, cfg.size, seed=1000 + seed)
    Xt, Yt = make_shapes(cfg.n_test, cfg.size, seed=2000 + seed)
    X, Y = torch.from_numpy(Xn), torch.from_numpy(Yn)
    enc = PixelEncoder(cfg.width, cfg.dim)
    loss_fn = DenseContrast(make_strategy(variant, cfg), anchors_per_image=cfg.anchors_per_image)
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr)
    for step in range(cfg.steps):
        idx = torch.randint(0, cfg.n_train, (cfg.batch,), generator=g)
        labels = Y[idx] + 64 * torch.arange(cfg.batch)[:, None, None]  # instance ids unique in the batch
        loss = loss_fn(enc(X[idx]), labels=labels, image_ids=idx, step=step, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        emb = enc(torch.from_numpy(Xt))
    return mean_ari(emb, Yt, seed)


def run(seeds: tuple[int, ...], cfg: InstanceConfig, variants: tuple[str, ...] = VARIANTS) -> list[dict]:
    """Mean ARI of every construction and seed; rows as dicts."""
    return [{"seed": s, "method": v, "ari": train_and_score(v, cfg, s)} for s in seeds for v in variants]
