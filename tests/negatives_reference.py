"""Literal (loop-based, float64) reference of the weighted InfoNCE of docs/design.md §1, for tests.

:func:`ref_weighted_infonce_t` is the formula written with one Python loop per anchor and per
candidate on float64 torch scalars, so autograd gives its gradient; which candidates count and
their extra log-weights are given as constants (plain arrays), built by the literal selection
rules below from *detached* similarities, exactly as a strategy treats its masks and weights.
No code is shared with hardneg.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_weighted_infonce_t(
    q,
    k,
    pos,
    valid,
    logw=None,
    beta=0.0,
    t=0.5,
    N=None,
    include_positive=True,
    tau_plus=0.0,
    clamp=True,
    detach_weights=False,
    clamped=None,
):
    r"""mean_i −log(e^{s_ip/t} / (e^{s_ip/t} + G_i)) with G_i = N_i Σ_j π_ij e^{s_ij/t} and
    π_ij ∝ exp(β s_ij/t + a_ij) over the valid j (``valid[i][j]`` and a finite ``logw[i][j]``);
    N_i = number of valid j when ``N`` is None; an anchor without a valid j is skipped (left out
    of the mean). With τ⁺ > 0 (Chuang et al.):
    G_i = (N_i Σ_j π_ij e^{s_ij/t} − τ⁺ N_i e^{s_ip/t}) / (1 − τ⁺), replaced by the constant
    N_i e^{−1/t} where it is below that (``clamp``) or not positive (always); the anchors where
    that happens are appended to ``clamped``. ``include_positive=False``: −s_ip/t + log G_i.

    ``q`` (n×d) and ``k`` (m×d) are float64 tensors (normalised here, gradients flow through
    everything but ``valid``/``logw``, and through π unless ``detach_weights``)."""
    q = q / q.norm(dim=1, keepdim=True)
    k = k / k.norm(dim=1, keepdim=True)
    n, m = q.shape[0], k.shape[0]
    total, anchors = 0.0, 0
    for i in range(n):
        s = [q[i] @ k[j] for j in range(m)]
        js = [j for j in range(m) if valid[i][j] and (logw is None or math.isfinite(logw[i][j]))]
        if not js:
            continue
        anchors += 1
        w = []
        for j in js:
            sj = s[j].detach() if detach_weights else s[j]
            w.append(torch.exp(beta * sj / t + (0.0 if logw is None else float(logw[i][j]))))
        Z = sum(w)
        neg = sum(wj / Z * torch.exp(s[j] / t) for wj, j in zip(w, js))
        Ni = len(js) if N is None else N
        sp = s[pos[i]]
        e_pos = torch.exp(sp / t)
        G = Ni * neg
        if tau_plus > 0:
            G = (G - tau_plus * Ni * e_pos) / (1 - tau_plus)
            floor = Ni * math.exp(-1 / t)
            if G <= 0 or (clamp and floor > G):
                G = torch.tensor(floor, dtype=q.dtype)
                if clamped is not None:
                    clamped.append(i)
        ell = -torch.log(e_pos / (e_pos + G)) if include_positive else -sp / t + torch.log(G)
        total = total + ell
    return total / anchors


def ref_weighted_infonce(q, k, pos, valid, logw=None, beta=0.0, t=0.5, N=None, include_positive=True):
    """:func:`ref_weighted_infonce_t` on plain arrays, as a float."""
    qt = torch.as_tensor(np.asarray(q, np.float64))
    kt = torch.as_tensor(np.asarray(k, np.float64))
    with torch.no_grad():
        return float(ref_weighted_infonce_t(qt, kt, pos, valid, logw, beta, t, N, include_positive))


def in_batch_valid(B: int) -> np.ndarray:
    """(2B × 2B) bool: j is a negative of anchor i in the 2B-view batch (not i, not its other view)."""
    n = 2 * B
    v = np.ones((n, n), bool)
    for i in range(n):
        v[i, i] = False
        v[i, (i + B) % n] = False
    return v


def two_view_pos(B: int) -> list[int]:
    return [(i + B) % (2 * B) for i in range(2 * B)]


# ---------------------------------------------------------------------------------------------
# literal selection rules on detached similarities S (n×m arrays) and a mask of what is still valid
# ---------------------------------------------------------------------------------------------


def ref_topk(S: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """The k most similar valid candidates of each anchor."""
    keep = np.zeros_like(valid)
    for i in range(S.shape[0]):
        cand = [j for j in range(S.shape[1]) if valid[i, j]]
        for j in sorted(cand, key=lambda j: -S[i, j])[:k]:
            keep[i, j] = True
    return keep


def ref_semihard(S: np.ndarray, valid: np.ndarray, pos, margin: float) -> np.ndarray:
    """FaceNet's window s_ip − margin < s_ij < s_ip; an empty window keeps the one valid candidate
    nearest to it."""
    keep = np.zeros_like(valid)
    for i in range(S.shape[0]):
        sp = S[i, pos[i]]
        for j in range(S.shape[1]):
            keep[i, j] = valid[i, j] and sp - margin < S[i, j] < sp
        if not keep[i].any():
            dist = [max(S[i, j] - sp, 0.0) + max(sp - margin - S[i, j], 0.0) if valid[i, j] else math.inf
                    for j in range(S.shape[1])]
            keep[i, int(np.argmin(dist))] = True
    return keep


def ref_distance_weighted(S: np.ndarray, dim: int, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4):
    """Wu et al. 2017: log-weight −log q(d), log q(d) = (n−2) log d + (n−3)/2 log(1 − d²/4),
    d = sqrt(2 − 2s) clipped below at ``cutoff``; −∞ where d ≥ ``nonzero_loss_cutoff``."""
    logw = np.full(S.shape, -np.inf)
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            d = math.sqrt(max(2 - 2 * S[i, j], 0.0))
            if d >= nonzero_loss_cutoff:
                continue
            d = max(d, cutoff)
            logw[i, j] = -((dim - 2) * math.log(d) + (dim - 3) / 2 * math.log(1 - d * d / 4))
    return logw


def ref_similarity_drop(S: np.ndarray, pos, max_score=None, min_score=None, absolute_margin=None,
                        relative_margin=None) -> np.ndarray:
    """sentence-transformers' mine_hard_negatives rules, with s_ip the anchor–positive similarity."""
    drop = np.zeros(S.shape, bool)
    for i in range(S.shape[0]):
        sp = S[i, pos[i]]
        for j in range(S.shape[1]):
            s = S[i, j]
            drop[i, j] = (
                (max_score is not None and s > max_score)
                or (min_score is not None and s < min_score)
                or (absolute_margin is not None and s > sp - absolute_margin)
                or (relative_margin is not None and s > sp - abs(sp) * relative_margin)
            )
    return drop
