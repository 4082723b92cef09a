r"""Hyperspectral target detection: a per-pixel spectral encoder trained contrastively, against CEM
and ACE on the same scenes (docs/dense.md, docs/results_dense.md).

Training needs no ground truth: each step takes B pixels of the scene, builds a synthetic sub-pixel
target from each, ``(1 − a) x + a d`` with the known signature ``d`` and ``a`` log-uniform in
``abundance_range``, and embeds two noisy views of the 2B spectra. Labels: every synthetic
target has label 0 (they are each other's positives); each scene pixel has a label of its own (its
other view is its only positive); ``family="supcon"``. The scene pixel a target was made from is
its hardest negative. Detection score: cosine between a pixel's embedding and the target prototype
(the mean embedding of synthetic targets made the same way).

Negative constructions compared:

- ``uniform``: SupCon, π uniform;
- ``hard``: SupCon with the tilt π ∝ exp(β s / t);
- ``fine``: the tilt plus the fine-grained filters: no scene pixel within ``radius`` of the anchor
  pixel (`NeighbourhoodFilter`) and none whose raw spectrum is within the
  spectral angle ``min_angle`` of the anchor's (`InputSimilarityFilter`;
  ``min_angle`` is the 5th percentile of the scene's pairwise angles): likely the same material.

Hybrid detectors: CEM and ACE applied to the learned per-pixel embedding of the ``fine`` encoder
(the unit embeddings as pixels, the target prototype as the signature): ``hybrid-CEM`` and
``hybrid-ACE``.

Scene models (`MIXING`, the keyword arguments of `make_scene`): ``linear`` is the linear mixing
model with Gaussian noise, under which CEM is the optimal linear detector; ``variability`` adds
per-pixel illumination scaling, per-pixel endmember and target signature perturbations, bilinear
(Fan) mixing terms and regions with their own dominant materials (docs/dense.md lists the values).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hardneg.data.hyperspectral import Scene, make_scene
from hardneg.eval.detectors import ace, cem, far_at_pd, roc_auc
from hardneg.negatives import Strategy
from hardneg.negatives.pixels import InputSimilarityFilter, NeighbourhoodFilter, PixelGrid
from hardneg.seed import seed_everything

VARIANTS = ("uniform", "hard", "fine")
#: the encoder whose embedding the hybrid detectors use
HYBRID_VARIANT = "fine"
#: scene models: keyword arguments of `make_scene` on top of ``abundance`` and ``seed``
MIXING: dict[str, dict[str, Any]] = {
    "linear": {},
    "variability": {"scale_spread": 0.15, "endmember_variability": 0.1, "target_variability": 0.1,
                    "variability_bands": 4.0, "bilinear": 1.0, "n_regions": 4, "region_contrast": 2.0},
}


@dataclass
class HSConfig:
    """Training settings of the spectral encoder."""

    steps: int = 400
    batch: int = 256
    dim: int = 32
    hidden: int = 128
    lr: float = 2e-3
    temperature: float = 0.1
    beta: float = 1.0
    abundance_range: tuple[float, float] = (0.01, 0.3)
    radius: float = 2.0
    angle_quantile: float = 0.05
    view_noise: float = 1.0  # multiples of the scene's estimated noise level
    whiten: bool = False  # True: feed Σ^{-1/2}(x − μ) (the scene's own statistics, as CEM / ACE use them)


def spectral_encoder(bands: int, hidden: int = 128, dim: int = 32) -> nn.Module:
    """A per-pixel MLP on (standardised) spectra."""
    return nn.Sequential(nn.Linear(bands, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, dim))


def noise_level(cube: np.ndarray) -> float:
    """Noise standard deviation estimated from differences of horizontally adjacent pixels (the
    smooth signal cancels): median absolute difference / (0.6745 · √2)."""
    d = np.diff(cube, axis=1)
    return float(np.median(np.abs(d - np.median(d))) / (0.6745 * math.sqrt(2)))


def spectral_angle_quantile(X: np.ndarray, q: float, n_pairs: int = 20000, seed: int = 0) -> float:
    """The ``q`` quantile of the spectral angle between random pairs of pixels of ``X`` (N, L)."""
    r = np.random.default_rng(seed)
    a, b = r.integers(0, X.shape[0], n_pairs), r.integers(0, X.shape[0], n_pairs)
    keep = a != b
    u = X[a[keep]] / np.linalg.norm(X[a[keep]], axis=1, keepdims=True)
    v = X[b[keep]] / np.linalg.norm(X[b[keep]], axis=1, keepdims=True)
    return float(np.quantile(np.arccos(np.clip((u * v).sum(1), -1.0, 1.0)), q))


def make_strategy(variant: str, scene: Scene, cfg: HSConfig) -> Strategy:
    """The strategy of a negative construction (see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    beta = 0.0 if variant == "uniform" else cfg.beta
    filters = []
    if variant == "fine":
        H, W, _ = scene.cube.shape
        X = scene.pixels
        angle = spectral_angle_quantile(X, cfg.angle_quantile)
        filters = [NeighbourhoodFilter(cfg.radius), InputSimilarityFilter(torch.from_numpy(X), min_angle=angle)]
    return Strategy(family="supcon", temperature=cfg.temperature, beta=beta, filters=filters, diagnostics=False)


def input_transform(X: Tensor, whiten: bool) -> Callable[[Tensor], Tensor]:
    """The encoder's input map from the scene's own statistics: ``(x − μ) Σ^{-1/2}`` (symmetric
    whitening, eigenvalues floored at 1e-6 of the largest) or per-band standardisation ``(x − μ) / σ``."""
    mu = X.mean(0)
    if not whiten:
        sd = X.std(0) + 1e-6
        return lambda x: (x - mu) / sd
    Xc = (X - mu).double()
    evals, evecs = torch.linalg.eigh(Xc.T @ Xc / max(X.shape[0] - 1, 1))
    evals = evals.clamp(min=1e-6 * float(evals.max()))
    P = (evecs @ torch.diag(evals.rsqrt()) @ evecs.T).float()
    return lambda x: (x - mu) @ P


def _synthetic_targets(x: Tensor, d: Tensor, lo: float, hi: float, g: torch.Generator) -> Tensor:
    a = torch.exp(torch.empty(x.shape[0], 1).uniform_(math.log(lo), math.log(hi), generator=g))
    return (1.0 - a) * x + a * d


def train_embedding(scene: Scene, variant: str, cfg: HSConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train the encoder on ``scene`` with one negative construction; return the detection scores
    (H·W,), the unit embeddings of the pixels (H·W, dim) and the target prototype (dim,)."""
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(scene.pixels).float()
    d = torch.from_numpy(scene.target).float()
    prep = input_transform(X, cfg.whiten)
    sigma = noise_level(scene.cube)
    H, W, L = scene.cube.shape
    grid = PixelGrid(H, W)  # encodes the ids; the strategy's components decode with it (step context)
    ids_all = grid.encode(torch.zeros(H * W, dtype=torch.long), torch.arange(H * W) // W, torch.arange(H * W) % W)
    enc = spectral_encoder(L, cfg.hidden, cfg.dim)
    strategy = make_strategy(variant, scene, cfg)
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr)
    lo, hi = cfg.abundance_range
    B = cfg.batch

    def view(x: Tensor) -> Tensor:
        bright = 1.0 + 0.05 * torch.randn(x.shape[0], 1, generator=g)
        return prep(x * bright + cfg.view_noise * sigma * torch.randn(x.shape, generator=g))

    for step in range(cfg.steps):
        idx = torch.randint(0, X.shape[0], (B,), generator=g)
        xb = X[idx]
        batch = torch.cat([xb, _synthetic_targets(xb, d, lo, hi, g)])
        labels = torch.cat([idx + 1, torch.zeros(B, dtype=torch.long)])
        ids = torch.cat([ids_all[idx], torch.full((B,), -1, dtype=torch.long)])
        loss = strategy(enc(view(batch)), enc(view(batch)), labels=labels, ids=ids, step=step, grid=grid)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        proto_src = X[torch.randint(0, X.shape[0], (2048,), generator=g)]
        proto = nn.functional.normalize(enc(prep(_synthetic_targets(proto_src, d, lo, hi, g))), dim=1).mean(0)
        z = nn.functional.normalize(enc(prep(X)), dim=1)
        return (z @ nn.functional.normalize(proto, dim=0)).numpy(), z.numpy(), proto.numpy()


@dataclass
class DetectionRow:
    """One detector on one scene."""

    scene: str
    mixing: str
    abundance: float
    seed: int
    method: str
    auc: float
    far90: float


def run_scene(abundance: float, seed: int, cfg: HSConfig, variants: tuple[str, ...] = VARIANTS,
              scene: Scene | None = None, mixing: str = "linear") -> list[DetectionRow]:
    """CEM, ACE, each contrastive variant and the hybrids on one scene (synthetic with the keyword
    arguments ``MIXING[mixing]`` unless ``scene`` is given; a real scene's mixing is "real")."""
    name = "synthetic"
    if scene is None:
        scene = make_scene(abundance=abundance, seed=seed, **MIXING[mixing])
    else:
        name, mixing = scene.name, "real"
    scores = {"CEM": cem(scene.cube, scene.target), "ACE": ace(scene.cube, scene.target)}
    hybrid = {}
    for v in variants:
        scores[f"contrastive-{v}"], z, proto = train_embedding(scene, v, cfg, seed)
        if v == HYBRID_VARIANT:
            hybrid = {"hybrid-CEM": cem(z, proto), "hybrid-ACE": ace(z, proto)}
    scores.update(hybrid)
    t = scene.truth.ravel()
    return [DetectionRow(name, mixing, abundance, seed, m, roc_auc(s, t), far_at_pd(s, t, 0.9))
            for m, s in scores.items()]


def run(abundances: tuple[float, ...], seeds: tuple[int, ...], cfg: HSConfig,
        variants: tuple[str, ...] = VARIANTS, scene: Scene | None = None,
        mixing: tuple[str, ...] = ("linear",)) -> list[dict]:
    """Every (mixing model, abundance, seed) synthetic scene, or every seed on one real ``scene`` (its
    abundance is unknown: NaN in the rows); rows as dicts."""
    if scene is not None:
        return [asdict(r) for s in seeds for r in run_scene(float("nan"), s, cfg, variants, scene)]
    unknown = [m for m in mixing if m not in MIXING]
    if unknown:
        raise ValueError(f"--mixing must be among {tuple(MIXING)}, got {unknown}")
    rows = []
    for m in mixing:
        for a in abundances:
            for s in seeds:
                rows += [asdict(r) for r in run_scene(a, s, cfg, variants, mixing=m)]
    return rows
