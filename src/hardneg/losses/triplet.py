r"""Triplet-structured reductions with the same π over negatives as the InfoNCE kernel.

For anchor i, positive p ∈ P(i), candidate negatives j with weights π_ij ∝ e^{β s_ij} (uniform
at β = 0) and N_i the number of valid negatives (DESIGN.md §1)::

    L = Σ_i Σ_{p∈P(i)} N_i Σ_j π_ij h(d_ip, d_ij)  /  Σ_i |P(i)| N_i

With uniform π this is the plain mean over all (anchor, positive, negative) triplets, i.e.
pytorch-metric-learning's ``TripletMarginLoss(reducer=MeanReducer())``. Distances are Euclidean
between L2-normalised embeddings, ``d = sqrt(2 − 2s)``.

- triplet (Schroff et al. 2015): ``h = [m + d_ip − d_ij]_+``;
- margin (Wu et al. 2017, "Sampling matters"): ``h = [α + d_ip − b]_+ + [α + b − d_ij]_+``.

Anchors are processed in chunks sized so that the (chunk × max|P| × m) work tensor stays near
4M elements; each chunk is recomputed in the backward pass (activation checkpointing), so memory
never holds a full O(n · |P| · m) tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from hardneg.losses.named import _two_views

HFn = Callable[[Tensor, Tensor], Tensor]


def _distances(s: Tensor) -> Tensor:
    return torch.sqrt(torch.clamp(2.0 - 2.0 * s, min=1e-12))


def _triplet_chunk(
    q: Tensor, k: Tensor, rows: Tensor, pos_cols: Tensor, pos_ok: Tensor, neg_ok: Tensor, beta: float, h: HFn
) -> tuple[Tensor, Tensor]:
    s = q[rows] @ k.T  # (c, m)
    d = _distances(s)
    logw = (beta * s).masked_fill(~neg_ok, float("-inf"))
    pi = torch.softmax(logw, dim=1)  # (c, m)
    n_i = neg_ok.sum(1).to(s.dtype)  # (c,)
    d_pos = torch.gather(d, 1, pos_cols)  # (c, P)
    hv = h(d_pos[:, :, None], d[:, None, :])  # (c, P, m)
    per_pos = (hv * pi[:, None, :]).sum(2) * pos_ok  # (c, P)
    num = (per_pos.sum(1) * n_i).sum()
    den = (pos_ok.sum(1) * n_i).sum()
    return num, den


def _triplet_family(
    z1: Tensor, z2: Tensor | None, labels: Tensor | None, beta: float, h: HFn, chunk_size: int | None
) -> Tensor:
    if not isinstance(beta, (int, float)) or beta < 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    if z2 is None and labels is None:
        raise ValueError("pass labels, a second view z2, or both: otherwise there are no positives")
    z, pos, y, self_idx = _two_views(z1, z2, labels, False)
    if not bool(torch.isfinite(z).all()):
        raise ValueError("embeddings contain NaN or inf values")
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    dev = z.device
    ar = torch.arange(n, device=dev)
    if y is None:  # two views, no labels: the other view is the positive
        pos_cols = pos[:, None]
        pos_ok = torch.ones(n, 1, dtype=torch.bool, device=dev)
        not_neg = torch.zeros(n, n, dtype=torch.bool, device=dev)
        not_neg[ar, ar] = True
        not_neg[ar, pos] = True
    else:
        same = y[:, None] == y[None, :]
        same[ar, ar] = False
        npos = same.sum(1)
        if bool((npos == 0).any()):
            bad = torch.nonzero(npos == 0).flatten().tolist()
            raise ValueError(f"anchors {bad[:10]} have no positive (no other sample with the same label)")
        P = int(npos.max())
        pos_cols = torch.argsort(same.to(torch.int8), dim=1, descending=True, stable=True)[:, :P]
        pos_ok = torch.arange(P, device=dev)[None, :] < npos[:, None]
        not_neg = y[:, None] == y[None, :]
    neg_ok = ~not_neg
    if bool((neg_ok.sum(1) == 0).any()):
        bad = torch.nonzero(neg_ok.sum(1) == 0).flatten().tolist()
        raise ValueError(f"anchors {bad[:10]} have no negative (every other sample shares their label)")
    P = pos_cols.shape[1]
    c = chunk_size or max(1, (1 << 22) // max(1, P * n))
    num = z.new_zeros(())
    den = z.new_zeros(())
    for r0 in range(0, n, c):
        rows = ar[r0 : r0 + c]
        args = (z, z, rows, pos_cols[rows], pos_ok[rows], neg_ok[rows], float(beta), h)
        if torch.is_grad_enabled() and z.requires_grad:
            a, b = checkpoint(_triplet_chunk, *args, use_reentrant=False)
        else:
            a, b = _triplet_chunk(*args)
        num = num + a
        den = den + b
    return num / den


def triplet(
    z1: Tensor,
    z2: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    margin: float = 0.05,
    beta: float = 0.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Triplet margin loss ``[m + d_ip − d_ij]_+`` averaged with π ∝ e^{β s_ij} over negatives.

    With labels, every same-label sample is a positive and every other-label sample a negative
    (PML's ``TripletMarginLoss``, ``triplets_per_anchor="all"``); without labels the other view is
    the positive. Default margin 0.05 as in PML."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    return _triplet_family(z1, z2, labels, beta, lambda dp, dn: F.relu(margin + dp - dn), chunk_size)


def margin(
    z1: Tensor,
    z2: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    alpha: float = 0.2,
    boundary: float | Tensor = 1.2,
    beta: float = 0.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Margin loss of Wu et al. 2017: ``[α + d_ip − b]_+ + [α + b − d_ij]_+`` per triplet, the
    negatives weighted by π ∝ e^{β s_ij}. ``boundary`` (b, PML's ``beta``) may be a learnable
    scalar tensor. Defaults α = 0.2, b = 1.2 as in the paper and PML."""
    if alpha < 0:
        raise ValueError(f"alpha (margin) must be >= 0, got {alpha!r}")
    return _triplet_family(
        z1, z2, labels, beta, lambda dp, dn: F.relu(alpha + dp - boundary) + F.relu(alpha + boundary - dn), chunk_size
    )
