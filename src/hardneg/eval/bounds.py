"""The bound check of Jiang et al. 2022 ("Supervised contrastive learning with hard negative samples",
arXiv 2209.00078): on the same batch, evaluate

    L_UCL   negatives ~ p                            (all other samples)
    L_SCL   negatives ~ p(· | other class)
    L_H-UCL negatives ~ η(s)·p,                 η(s) = e^{βs/t}   (Robinson et al.'s HCL, τ⁺ = 0)
    L_H-SCL negatives ~ η(s)·p(· | other class)

with one positive per anchor (the other view, ``positives="view"``) and N = 2B − 2 for all four, and
report per batch and per anchor how often

    L_H-SCL ≤ L_H-UCL   (the paper's Theorem, under Assumption 1 and N → ∞; also among the anchors
                         for which Assumption 1 holds: ``frac_hscl_le_hucl_given_a1``),
    L_H-SCL ≥ L_SCL and L_H-UCL ≥ L_UCL   (tilting towards harder negatives raises the loss).

**Assumption 1, as measured here.** For anchor i (one of the 2B views) let C(i) be all other views
except i's own positive view; split C(i) into same-class S(i) and other-class O(i). With tilted weights
w_ij = e^{β s_ij / t} (s = cosine similarity), the assumption holds for i when the tilted mean
similarity of same-class candidates is at least that of other-class candidates:

    Σ_{j∈S(i)} w_ij s_ij / Σ_{j∈S(i)} w_ij  ≥  Σ_{j∈O(i)} w_ij s_ij / Σ_{j∈O(i)} w_ij.

Anchors with empty S(i) or O(i) are left out of the fraction.
"""

from __future__ import annotations

import torch

from hardneg.losses import hscl, hucl, scl, ucl
from hardneg.losses.candidates import Relations, repeat_two_views, safe_normalize, two_view_index
from hardneg.losses.tilt import tilt_log_weights


@torch.no_grad()
def assumption1(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, *, beta: float, t: float
) -> torch.Tensor:
    """Per anchor (2B,): 1.0 where Assumption 1 holds, 0.0 where it fails, NaN where undefined."""
    z = safe_normalize(torch.cat([z1, z2]).double())
    pos, self_idx = two_view_index(z1.shape[0])
    y = repeat_two_views(labels)
    S = z @ z.T
    rel = Relations(m=z.shape[0], self_index=self_idx, pos_index=pos, q_labels=y, k_labels=y)
    cand = rel.valid(slice(0, z.shape[0]), S.device)
    same_label = rel.same_label(slice(0, z.shape[0]))
    assert same_label is not None  # the labels are given
    same = same_label & cand
    other = cand & ~same
    logw = torch.as_tensor(tilt_log_weights(S, beta, t))  # a tensor in, a tensor out

    def tilted_mean(mask: torch.Tensor) -> torch.Tensor:
        lw = logw.masked_fill(~mask, float("-inf"))
        p = torch.softmax(lw, dim=1).nan_to_num(0.0)
        return (p * S).sum(1)

    ok = (tilted_mean(same) >= tilted_mean(other)).double()
    defined = same.any(1) & other.any(1)
    return torch.where(defined, ok, torch.full_like(ok, float("nan")))


@torch.no_grad()
def bound_terms(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, *, beta: float = 1.0, t: float = 0.5
) -> dict[str, float]:
    """The four losses (means over the 2B anchors) and the fractions of anchors for which each
    inequality holds, plus the Assumption-1 fraction; all as Python floats for JSON lines."""
    z1, z2 = z1.detach().float(), z2.detach().float()
    l_ucl = ucl(z1, z2, t=t, reduction="none")
    l_scl = scl(z1, z2, labels, t=t, reduction="none")
    l_hucl = hucl(z1, z2, beta=beta, tau_plus=0.0, t=t, reduction="none")
    l_hscl = hscl(z1, z2, labels, beta=beta, t=t, positives="view", reduction="none")
    a1 = assumption1(z1, z2, labels, beta=beta, t=t)
    eps = 1e-6  # float32 round-off: equal losses (β = 0) count as satisfying the inequality
    le = (l_hscl <= l_hucl + eps).double()
    holds = a1 == 1.0  # the theorem's premise, per anchor
    return {
        "ucl": float(l_ucl.mean()),
        "scl": float(l_scl.mean()),
        "hucl": float(l_hucl.mean()),
        "hscl": float(l_hscl.mean()),
        "frac_hscl_le_hucl": float(le.mean()),
        # L_H-SCL ≤ L_H-UCL among the anchors for which Assumption 1 holds (NaN when none does)
        "frac_hscl_le_hucl_given_a1": float(le[holds].mean()) if bool(holds.any()) else float("nan"),
        "frac_hscl_ge_scl": float((l_hscl >= l_scl - eps).float().mean()),
        "frac_hucl_ge_ucl": float((l_hucl >= l_ucl - eps).float().mean()),
        "assumption1": float(a1.nanmean()) if bool((~a1.isnan()).any()) else float("nan"),
    }


def summarize_bounds(rows: list[dict[str, float]]) -> dict[str, float]:
    """Over logged batches: fraction of batches where each batch-mean inequality holds and the mean of
    the per-anchor fractions; the Assumption-1 share is the mean over the batches where it is defined
    (NaN when it is defined in none)."""
    if not rows:
        return {}
    n = len(rows)
    return {
        "batches": n,
        "batch_frac_hscl_le_hucl": sum(r["hscl"] <= r["hucl"] + 1e-6 for r in rows) / n,
        "batch_frac_hscl_ge_scl": sum(r["hscl"] >= r["scl"] - 1e-6 for r in rows) / n,
        "batch_frac_hucl_ge_ucl": sum(r["hucl"] >= r["ucl"] - 1e-6 for r in rows) / n,
        "anchor_frac_hscl_le_hucl": sum(r["frac_hscl_le_hucl"] for r in rows) / n,
        "anchor_frac_hscl_ge_scl": sum(r["frac_hscl_ge_scl"] for r in rows) / n,
        "anchor_frac_hucl_ge_ucl": sum(r["frac_hucl_ge_ucl"] for r in rows) / n,
        # a batch where no anchor has both same- and other-class candidates has no Assumption-1 share
        "assumption1": _mean_defined(rows, "assumption1", "assumption1").get("assumption1", float("nan")),
        **_mean_defined(rows, "frac_hscl_le_hucl_given_a1", "anchor_frac_hscl_le_hucl_given_a1"),
    }


def _mean_defined(rows: list[dict[str, float]], key: str, out: str) -> dict[str, float]:
    """``{out: mean of key}`` over the rows where it is defined (present, not NaN); empty when none is."""
    v = [r[key] for r in rows if key in r and r[key] == r[key]]
    return {out: sum(v) / len(v)} if v else {}
