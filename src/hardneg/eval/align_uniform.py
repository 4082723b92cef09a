"""Alignment and uniformity (Wang & Isola 2020, "Understanding contrastive representation learning
through alignment and uniformity on the hypersphere").

    L_align(α)   = E_{(x,y) positive} ‖f(x) − f(y)‖₂^α          (α = 2)
    L_uniform(t) = log E_{x,y i.i.d.} exp(−t ‖f(x) − f(y)‖₂²)    (t = 2)

on L2-normalised embeddings; lower is better for both. The paper's t of L_uniform is the
Gaussian-potential scale, not a softmax temperature, so its argument is ``uniformity_t``
(``temperature`` / ``t`` name the softmax temperature everywhere in hardneg). The expectation over
i.i.d. pairs is the mean over all unordered pairs i < j, as in the paper's reference code
(``torch.pdist``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hardneg.losses.checks import check_positive


def alignment(x: torch.Tensor, y: torch.Tensor, *, alpha: float = 2.0, normalize: bool = True) -> float:
    """Mean of ‖x_i − y_i‖^α over positive pairs (rows of ``x`` and ``y``)."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must both be (n, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    alpha = check_positive("alpha", alpha)
    if normalize:
        x, y = F.normalize(x.float(), dim=1), F.normalize(y.float(), dim=1)
    return float((x - y).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, *, uniformity_t: float = 2.0, normalize: bool = True) -> float:
    """log of the mean of exp(−t ‖x_i − x_j‖²) over pairs i < j (log-sum-exp for stability), with
    t = ``uniformity_t`` (Wang & Isola's t, default 2)."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be (n, d) with n >= 2, got {tuple(x.shape)}")
    t = check_positive("uniformity_t", uniformity_t)
    if normalize:
        x = F.normalize(x.float(), dim=1)
    d2 = torch.pdist(x.double(), p=2).pow(2)
    return float(
        torch.logsumexp(-t * d2, dim=0) - torch.log(torch.tensor(float(d2.numel()), dtype=torch.float64))
    )
