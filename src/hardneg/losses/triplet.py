r"""Triplet-structured reductions with the same π over negatives as the InfoNCE kernel.

For anchor i, positive p ∈ P(i), candidate negatives j with weights π_ij ∝ e^{β s_ij / τ_β}
(`hardneg.losses.tilt`; uniform at β = 0) and N_i the number of valid negatives (the candidate
rule of `hardneg.losses.candidates`). There is no softmax here, so no temperature: ``tilt_scale``
(τ_β, default 1) is the similarity unit β is measured in — π ∝ e^{β s / τ_β} is the π of an
InfoNCE loss with the same β at temperature t = τ_β. With ``reduction``:

- ``"none"``: per anchor, ``l_i = N_i Σ_{p∈P(i)} Σ_j π_ij h(d_ip, d_ij)`` — with uniform π the sum of
  the anchor's triplet losses; 0 for an anchor without a positive or a negative;
- ``"sum"``: ``Σ_i l_i`` (pytorch-metric-learning's ``SumReducer`` at β = 0);
- ``"mean"`` (default): ``Σ_i l_i / Σ_i |P(i)| N_i``, with uniform π the plain mean over all
  (anchor, positive, negative) triplets, i.e. PML's ``TripletMarginLoss(reducer=MeanReducer())``.

Distances are Euclidean between L2-normalised embeddings, ``d = sqrt(2 − 2s)``.

- triplet (Schroff et al. 2015): ``h = [m + d_ip − d_ij]_+``;
- margin (Wu et al. 2017, "Sampling matters"): ``h = [α + d_ip − b]_+ + [α + b − d_ij]_+``. The
  boundary b is ``boundary`` here and ``beta`` in PML's ``MarginLoss``; hardneg's ``beta`` is the
  tilt in every loss, so ``margin(beta=...)`` never sets the boundary.

Anchors are processed in chunks sized so that the (chunk × max|P| × m) work tensor stays near
4M elements; each chunk is recomputed in the backward pass (activation checkpointing), so memory
never holds a full O(n · |P| · m) tensor. Computed in float32 for float16 / bfloat16 inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from hardneg.losses.candidates import all_skipped_error, safe_normalize, same_known_label
from hardneg.losses.checks import check_beta, check_chunk_size, check_nonneg, check_positive, check_reduction
from hardneg.losses.named import _two_views
from hardneg.losses.tilt import tilt_log_weights

HFn = Callable[[Tensor, Tensor], Tensor]


def _distances(s: Tensor) -> Tensor:
    return torch.sqrt(torch.clamp(2.0 - 2.0 * s, min=1e-12))


def _triplet_chunk(
    q: Tensor, k: Tensor, rows: Tensor, pos_cols: Tensor, pos_ok: Tensor, neg_ok: Tensor, beta: float,
    tilt_scale: float, h: HFn,
) -> tuple[Tensor, Tensor]:
    s = q[rows] @ k.T  # (c, m)
    d = _distances(s)
    logw = tilt_log_weights(s, beta, tilt_scale).masked_fill(~neg_ok, float("-inf"))
    pi = torch.nan_to_num(torch.softmax(logw, dim=1), nan=0.0)  # (c, m); rows without negatives: 0
    n_i = neg_ok.sum(1).to(s.dtype)  # (c,)
    d_pos = torch.gather(d, 1, pos_cols)  # (c, P)
    hv = h(d_pos[:, :, None], d[:, None, :])  # (c, P, m)
    per_pos = (hv * pi[:, None, :]).sum(2) * pos_ok  # (c, P)
    per_anchor = per_pos.sum(1) * n_i  # (c,) l_i of the module doc
    den = (pos_ok.sum(1) * n_i).sum()
    return per_anchor, den


def _masks(y: Tensor | None, pos: Tensor | None, n: int, dev: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(positive columns (n×P), which are real (n×P), valid negatives (n×n)) by the one candidate
    rule (`hardneg.losses.candidates`): the other view and every same known label are
    positives; the anchor itself, its positives and unknown-label matches never are negatives."""
    ar = torch.arange(n, device=dev)
    is_pos = torch.zeros(n, n, dtype=torch.bool, device=dev)
    if pos is not None:
        is_pos[ar, pos] = True
    if y is not None:
        is_pos |= same_known_label(y, y)
    is_pos[ar, ar] = False
    neg_ok = ~is_pos
    neg_ok[ar, ar] = False
    npos = is_pos.sum(1)
    P = max(1, int(npos.max()))
    pos_cols = torch.argsort(is_pos.to(torch.int8), dim=1, descending=True, stable=True)[:, :P]
    pos_ok = torch.arange(P, device=dev)[None, :] < npos[:, None]
    return pos_cols, pos_ok, neg_ok


def _triplet_family(
    z1: Tensor, z2: Tensor | None, labels: Tensor | None, beta: float, tilt_scale: float, h: HFn,
    reduction: str, chunk_size: int | None,
) -> Tensor:
    beta = check_beta(beta)
    tilt_scale = check_positive("tilt_scale", tilt_scale)
    reduction = check_reduction(reduction)
    check_chunk_size(chunk_size)
    if z2 is None and labels is None:
        raise ValueError("pass labels, a second view z2, or both: otherwise there are no positives")
    z, pos, y, _ = _two_views(z1, z2, labels, False)
    if not bool(torch.isfinite(z).all()):
        raise ValueError("embeddings contain NaN or inf values")
    in_dtype = z.dtype
    z = safe_normalize(z.float() if in_dtype in (torch.float16, torch.bfloat16) else z)  # float32 inside
    n = z.shape[0]
    pos_cols, pos_ok, neg_ok = _masks(y, pos, n, z.device)
    if not bool(((pos_ok.sum(1) > 0) & (neg_ok.sum(1) > 0)).any()):
        raise all_skipped_error(n, "each lacks a positive or a negative (a batch of one sample? one class only?)")
    P = pos_cols.shape[1]
    c = chunk_size or max(1, (1 << 22) // max(1, P * n))
    ar = torch.arange(n, device=z.device)
    parts: list[Tensor] = []
    den = z.new_zeros(())
    for r0 in range(0, n, c):
        rows = ar[r0 : r0 + c]
        args = (z, z, rows, pos_cols[rows], pos_ok[rows], neg_ok[rows], beta, tilt_scale, h)
        if torch.is_grad_enabled() and z.requires_grad:
            a, b = checkpoint(_triplet_chunk, *args, use_reentrant=False)
        else:
            a, b = _triplet_chunk(*args)
        parts.append(a)
        den = den + b
    per_anchor = torch.cat(parts)
    if reduction == "none":
        return per_anchor.to(in_dtype)
    total = per_anchor.sum()
    return (total if reduction == "sum" else total / den).to(in_dtype)


def triplet(
    z1: Tensor,
    z2: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    margin: float = 0.05,
    beta: float = 0.0,
    tilt_scale: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Triplet margin loss ``[m + d_ip − d_ij]_+`` averaged with π ∝ e^{β s_ij / tilt_scale} over
    negatives (``reduction`` as in the module doc).

    With labels, every same-label sample is a positive and every other-label sample a negative
    (PML's ``TripletMarginLoss``, ``triplets_per_anchor="all"``); without labels the other view is
    the positive. Default margin 0.05 as in PML."""
    margin = check_nonneg("margin", margin)
    return _triplet_family(
        z1, z2, labels, beta, tilt_scale, lambda dp, dn: F.relu(margin + dp - dn), reduction, chunk_size
    )


def margin(
    z1: Tensor,
    z2: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    alpha: float = 0.2,
    boundary: float | Tensor = 1.2,
    beta: float = 0.0,
    tilt_scale: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Margin loss of Wu et al. 2017: ``[α + d_ip − b]_+ + [α + b − d_ij]_+`` per triplet, the
    negatives weighted by π ∝ e^{β s_ij / tilt_scale}. ``boundary`` is b — the argument PML's
    ``MarginLoss`` calls ``beta`` (here ``beta`` is the hardness tilt, as in every hardneg loss) —
    and may be a learnable scalar tensor. Defaults α = 0.2, b = 1.2 as in the paper and PML."""
    alpha = check_nonneg("alpha", alpha)
    return _triplet_family(
        z1, z2, labels, beta, tilt_scale,
        lambda dp, dn: F.relu(alpha + dp - boundary) + F.relu(alpha + boundary - dn), reduction, chunk_size,
    )
