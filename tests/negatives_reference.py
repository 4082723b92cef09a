"""Literal (loop-based, float64) reference of the weighted InfoNCE of DESIGN.md §1, for tests."""

from __future__ import annotations

import math

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_weighted_infonce(q, k, pos, valid, logw=None, beta=0.0, t=0.5, N=None, include_positive=True):
    """mean_i −log(e^{s_ip/t} / (e^{s_ip/t} + N_i Σ_j π_ij e^{s_ij/t})), π_ij ∝ exp(β s_ij/t + a_ij)
    over valid j; N_i = number of valid j when N is None. An anchor without a valid j is skipped
    (left out of the mean). Plain Python loops."""
    q, k = unit(np.asarray(q, np.float64)), unit(np.asarray(k, np.float64))
    n, m = q.shape[0], k.shape[0]
    total, anchors = 0.0, 0
    for i in range(n):
        s = [float(q[i] @ k[j]) for j in range(m)]
        js = [j for j in range(m) if valid[i][j] and (logw is None or math.isfinite(logw[i][j]))]
        if not js:
            continue
        anchors += 1
        w = [math.exp(beta * s[j] / t + (0.0 if logw is None else logw[i][j])) for j in js]
        Z = sum(w)
        neg = sum(wj / Z * math.exp(s[j] / t) for wj, j in zip(w, js))
        Ni = len(js) if N is None else N
        sp = s[pos[i]]
        if include_positive:
            total += -math.log(math.exp(sp / t) / (math.exp(sp / t) + Ni * neg))
        else:
            total += -sp / t + math.log(Ni * neg)
    return total / anchors


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
