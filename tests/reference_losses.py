"""Literal, loop-based float64 implementations of the paper formulas: the independent oracle.

Written to be read against the papers, not to be fast: one Python loop per anchor / positive /
negative, no shared code with hardneg's kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def views(z1, z2):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    return z, z @ z.T


def other_view(i, n):
    return (i + n // 2) % n


def ref_infonce(z1, z2, *, t, beta=0.0, tau_plus=0.0, clamp=True, labels=None, nominal_n=True):
    """HCL (Robinson et al., criterion 'hard') / DCL / NT-Xent / SCL / H-SCL(view), one positive.

    Negatives of anchor i: every j ∉ {i, p}, restricted to other labels when ``labels`` is given.
    π_j ∝ exp(β s_ij / t); N = 2B − 2 (or the count of negatives when ``nominal_n`` is False)."""
    z, s = views(z1, z2)
    n = z.shape[0]
    y = None if labels is None else torch.cat([labels, labels])
    total = 0.0
    for i in range(n):
        p = other_view(i, n)
        negs = [j for j in range(n) if j not in (i, p) and (y is None or y[j] != y[i])]
        N = n - 2 if nominal_n else len(negs)
        imp = [torch.exp(beta * s[i, j] / t) for j in negs]
        neg = [torch.exp(s[i, j] / t) for j in negs]
        reweight = sum(w * e for w, e in zip(imp, neg)) / (sum(imp) / len(imp))  # HCL code
        reweight = reweight * N / len(negs)
        pos = torch.exp(s[i, p] / t)
        G = (-tau_plus * N * pos + reweight) / (1 - tau_plus)
        if clamp and tau_plus > 0:
            G = torch.clamp(G, min=N * math.exp(-1 / t))
        total = total - torch.log(pos / (pos + G))
    return total / n


def ref_supcon(z1, z2, labels, *, t):
    """Khosla et al. eq. 2 (L_out); anchors without a positive are skipped (left out of the mean)."""
    z = F.normalize(z1 if z2 is None else torch.cat([z1, z2]), dim=1)
    y = labels if z2 is None else torch.cat([labels, labels])
    n = z.shape[0]
    total, anchors = 0.0, 0
    for i in range(n):
        P = [p for p in range(n) if p != i and y[p] == y[i] and y[i] != -1]
        if not P:
            continue
        anchors += 1
        denom = sum(torch.exp(z[i] @ z[a] / t) for a in range(n) if a != i)
        total = total - sum(torch.log(torch.exp(z[i] @ z[p] / t) / denom) for p in P) / len(P)
    return total / anchors


def ref_hscl_all(z1, z2, labels, *, t, beta):
    """H-SCL paper training code (nce_supervised_hard): mean over all same-label pairs (i, p)."""
    z, s = views(z1, z2)
    y = torch.cat([labels, labels])
    n = z.shape[0]
    terms = []
    for i in range(n):
        negs = [j for j in range(n) if y[j] != y[i]]
        imp = [torch.exp(beta * s[i, j] / t) for j in negs]
        weighted = sum(w * torch.exp(s[i, j] / t) for w, j in zip(imp, negs)) / sum(imp)
        for p in range(n):
            if p != i and y[p] == y[i]:
                pos = torch.exp(s[i, p] / t)
                terms.append(-torch.log(pos / (pos + (n - 2) * weighted)))
    return sum(terms) / len(terms)


def ref_decoupled(z1, z2, *, t):
    z, s = views(z1, z2)
    n = z.shape[0]
    total = 0.0
    for i in range(n):
        p = other_view(i, n)
        total = total - s[i, p] / t + torch.log(sum(torch.exp(s[i, j] / t) for j in range(n) if j not in (i, p)))
    return total / n


def _triplets(z1, z2, labels):
    z = F.normalize(z1 if z2 is None else torch.cat([z1, z2]), dim=1)
    n = z.shape[0]
    if labels is None:
        trip = [(i, other_view(i, n), j) for i in range(n) for j in range(n) if j not in (i, other_view(i, n))]
    else:
        y = labels if z2 is None else torch.cat([labels, labels])
        trip = [
            (i, p, j)
            for i in range(n)
            for p in range(n)
            if p != i and y[p] == y[i]
            for j in range(n)
            if y[j] != y[i]
        ]
    return z, trip


def ref_triplet_family(z1, z2, labels, h, beta=0.0, reduction="mean"):
    """Σ_i Σ_p N_i Σ_j π_ij h / Σ_i |P_i| N_i with π_ij ∝ e^{β s_ij}; ``"sum"`` without the
    division, ``"none"`` the per-anchor numerators l_i (0 for an anchor without a triplet)."""
    z, trip = _triplets(z1, z2, labels)
    d = lambda a, b: torch.sqrt(torch.clamp(2 - 2 * (z[a] @ z[b]), min=1e-12))  # noqa: E731
    num, den = 0.0, 0.0
    per_anchor = [z.new_zeros(()) for _ in range(z.shape[0])]
    anchors = sorted({i for i, _, _ in trip})
    for i in anchors:
        P = sorted({p for a, p, _ in trip if a == i})
        J = sorted({j for a, _, j in trip if a == i})
        w = [torch.exp(beta * (z[i] @ z[j])) for j in J]
        W = sum(w)
        for p in P:
            term = len(J) * sum(wj / W * h(d(i, p), d(i, j)) for wj, j in zip(w, J))
            per_anchor[i] = per_anchor[i] + term
            num = num + term
            den += len(J)
    if reduction == "none":
        return torch.stack(per_anchor)
    return num if reduction == "sum" else num / den
