r"""Named contrastive losses on two views ``z1, z2`` (B×d each), all computed by the one kernel.

Conventions (docs/design.md §1): the 2B embeddings ``[z1; z2]`` are both anchors and candidates; the
positive of sample i in one view is sample i in the other view; an anchor is never its own
candidate; N = 2B − 2 (every other embedding except the positive), as in the HCL and H-SCL code.
Inputs are L2-normalised inside. Every function returns the mean over anchors (``reduction``
may be ``"sum"`` or ``"none"``). The temperature is ``temperature`` (short alias ``t``): 0.5 by
default, 0.1 for ``supcon`` and ``decoupled``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hardneg.losses.candidates import nominal_n, repeat_two_views, two_view_index
from hardneg.losses.checks import check_embeddings, check_tags, resolve_temperature
from hardneg.losses.kernel import weighted_info_nce


def _two_views(z1: Tensor, z2: Tensor | None, labels: Tensor | None, need_labels: bool):
    """Check the views and stack them as ``[z1; z2]`` with the two-view index
    (`hardneg.losses.candidates.two_view_index`); returns ``(z, pos_index, labels, self_index)``."""
    check_embeddings("z1", z1)
    if z2 is not None:
        check_embeddings("z2", z2)
        if z2.shape != z1.shape:
            raise ValueError(f"z2 must have the same shape as z1 {tuple(z1.shape)}, got {tuple(z2.shape)}")
        if z2.device != z1.device:  # checked before anything touches the data
            raise ValueError(f"z1 and z2 must be on the same device, got {z1.device} and {z2.device}")
    if need_labels and labels is None:
        raise ValueError("labels are required for this loss: an integer tensor of shape (B,)")
    labels = check_tags("labels", labels, z1.shape[0], z1.device)
    if z2 is None:
        return z1, None, labels, torch.arange(z1.shape[0], device=z1.device)
    pos, self_idx = two_view_index(z1.shape[0], z1.device)
    return torch.cat([z1, z2], 0), pos, repeat_two_views(labels), self_idx


def _nominal_n(z: Tensor) -> int:
    return nominal_n(z.shape[0], has_self=True, has_positive=True)


def _need_two_views(name: str, z2: Tensor | None) -> None:
    if z2 is None:
        raise ValueError(f"{name} needs two views: pass z2 (B, d), the second augmented view")


def ucl(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float | None = None,
    t: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """UCL: SimCLR / NT-Xent (Chen et al. 2020). ``−log e^{s_ip/t} / Σ_{j≠i} e^{s_ij/t}``."""
    t = resolve_temperature(t, temperature, 0.5)
    _need_two_views("ucl", z2)
    z, pos, _, self_idx = _two_views(z1, z2, None, False)
    return weighted_info_nce(z, z, t=t, pos_index=pos, self_index=self_idx, reduction=reduction, chunk_size=chunk_size)


def scl(
    z1: Tensor,
    z2: Tensor,
    labels: Tensor,
    *,
    temperature: float | None = None,
    t: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """SCL of Jiang et al. (arXiv 2209.00078): one positive (the other view), negatives drawn
    uniformly from the other classes, ``N·mean_{y_j≠y_i} e^{s_ij/t}`` with N = 2B − 2."""
    t = resolve_temperature(t, temperature, 0.5)
    _need_two_views("scl", z2)
    z, pos, y, self_idx = _two_views(z1, z2, labels, True)
    return weighted_info_nce(
        z,
        z,
        t=t,
        pos_index=pos,
        self_index=self_idx,
        q_labels=y,
        k_labels=y,
        negatives="other_labels",
        n_neg=_nominal_n(z),
        reduction=reduction,
        chunk_size=chunk_size,
    )


def supcon(
    z1: Tensor,
    z2: Tensor | None,
    labels: Tensor,
    *,
    temperature: float | None = None,
    t: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    r"""SupCon L_out (Khosla et al. 2020, eq. 2):
    ``L_i = −1/|P(i)| Σ_{p∈P(i)} log e^{s_ip/t} / Σ_{a≠i} e^{s_ia/t}``; P(i) = every other
    same-label embedding. ``z2`` may be None (one view)."""
    t = resolve_temperature(t, temperature, 0.1)
    z, _, y, self_idx = _two_views(z1, z2, labels, True)
    return weighted_info_nce(
        z,
        z,
        t=t,
        q_labels=y,
        k_labels=y,
        self_index=self_idx,
        positives="labels",
        negatives="all",
        include_positive=False,
        reduction=reduction,
        chunk_size=chunk_size,
    )


def hucl(
    z1: Tensor,
    z2: Tensor,
    *,
    beta: float = 1.0,
    tau_plus: float = 0.0,
    temperature: float | None = None,
    t: float | None = None,
    clamp: bool = True,
    detach_weights: bool = False,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    r"""H-UCL: hard negatives of Robinson et al. (HCL, ICLR 2021):
    ``−log e^{s_p/t} / (e^{s_p/t} + G)``, ``G = (N Σ_j π_j e^{s_j/t} − τ⁺ N e^{s_p/t}) / (1 − τ⁺)``,
    π_j ∝ e^{β s_j/t} over all 2B − 2 negatives, G clamped below at N e^{−1/t}."""
    t = resolve_temperature(t, temperature, 0.5)
    _need_two_views("hucl", z2)
    z, pos, _, self_idx = _two_views(z1, z2, None, False)
    return weighted_info_nce(
        z,
        z,
        t=t,
        pos_index=pos,
        self_index=self_idx,
        beta=beta,
        tau_plus=tau_plus,
        clamp=clamp,
        n_neg=_nominal_n(z),
        detach_weights=detach_weights,
        reduction=reduction,
        chunk_size=chunk_size,
    )


def dcl(
    z1: Tensor,
    z2: Tensor,
    *,
    tau_plus: float = 0.1,
    temperature: float | None = None,
    t: float | None = None,
    clamp: bool = True,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """DCL: *debiased* contrastive loss (Chuang et al., NeurIPS 2020) = H-UCL with β = 0."""
    t = resolve_temperature(t, temperature, 0.5)
    return hucl(z1, z2, beta=0.0, tau_plus=tau_plus, t=t, clamp=clamp, reduction=reduction, chunk_size=chunk_size)


def hscl(
    z1: Tensor,
    z2: Tensor,
    labels: Tensor,
    *,
    beta: float = 1.0,
    temperature: float | None = None,
    t: float | None = None,
    positives: str = "labels",
    detach_weights: bool = False,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    r"""H-SCL (Jiang et al., arXiv 2209.00078): negatives from the other classes, tilted by
    η(s) = e^{β s/t}: ``−log e^{s_ip/t} / (e^{s_ip/t} + N Σ_{y_j≠y_i} π_ij e^{s_ij/t})``, N = 2B − 2.

    ``positives="labels"`` is the paper's training code: every same-label pair (i, p) is a term and
    the loss is the mean over all such pairs. ``positives="view"`` is the one-positive variant
    (the augmented view only) used for the bound check. β = 0 gives SCL (with ``"view"``)."""
    t = resolve_temperature(t, temperature, 0.5)
    _need_two_views("hscl", z2)
    if positives not in ("labels", "view"):
        raise ValueError(f'positives must be "labels" or "view", got {positives!r}')
    z, pos, y, self_idx = _two_views(z1, z2, labels, True)
    common = dict(
        t=t,
        self_index=self_idx,
        q_labels=y,
        k_labels=y,
        negatives="other_labels",
        beta=beta,
        n_neg=_nominal_n(z),
        detach_weights=detach_weights,
        reduction=reduction,
        chunk_size=chunk_size,
    )
    if positives == "view":
        return weighted_info_nce(z, z, pos_index=pos, **common)
    return weighted_info_nce(z, z, positives="labels", positive_reduce="pairs", **common)


def decoupled(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float | None = None,
    t: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Decoupled contrastive loss (Yeh et al., ECCV 2022): the positive is removed from the
    denominator, ``−s_ip/t + log Σ_{j∉{i,p}} e^{s_ij/t}``."""
    t = resolve_temperature(t, temperature, 0.1)
    _need_two_views("decoupled", z2)
    z, pos, _, self_idx = _two_views(z1, z2, None, False)
    return weighted_info_nce(
        z,
        z,
        t=t,
        pos_index=pos,
        self_index=self_idx,
        include_positive=False,
        reduction=reduction,
        chunk_size=chunk_size,
    )
