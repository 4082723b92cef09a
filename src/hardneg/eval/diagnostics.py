"""Negative diagnostics of a batch of two-view embeddings: how hard and how "false" the in-batch
negatives are, and what a tilt η(s) = e^{βs/t} (HCL / H-SCL) does to them.

For every anchor i of the 2B views, candidates are all other views except i's own positive.
- ``pos_sim`` / ``neg_sim``: mean cosine similarity to the positive / to the candidates;
- ``hardest_is_false``: fraction of anchors whose most similar candidate has the anchor's class (a false
  negative for an unsupervised loss);
- ``false_mass_uniform`` / ``false_mass_tilted``: probability mass that uniform π / tilted π ∝ e^{βs/t}
  puts on same-class candidates (what UCL / H-UCL spend on false negatives);
- ``eff_negatives_tilted``: exp(entropy of tilted π) / number of candidates, in (0, 1]: 1 means
  uniform, small means the tilt concentrates on a few negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def negative_diagnostics(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, *, beta: float = 1.0, t: float = 0.5
) -> dict[str, float]:
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (B, d), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if labels.shape != (z1.shape[0],):
        raise ValueError(f"labels must have shape ({z1.shape[0]},), got {tuple(labels.shape)}")
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    y = torch.cat([labels, labels])
    n, B = z.shape[0], z1.shape[0]
    S = z @ z.T
    idx = torch.arange(n)
    pos = (idx + B) % n
    cand = torch.ones(n, n, dtype=torch.bool)
    cand[idx, idx] = False
    cand[idx, pos] = False
    same = (y[:, None] == y[None, :]) & cand
    m = cand.sum(1).double()
    Sm = S.masked_fill(~cand, float("-inf"))
    hardest = Sm.argmax(1)
    p_t = torch.softmax(beta * Sm / t, dim=1)
    ent = -(p_t * torch.log(p_t.clamp_min(1e-300))).sum(1)
    return {
        "pos_sim": float(S[idx, pos].mean()),
        "neg_sim": float((S * cand).sum(1).div(m).mean()),
        "hardest_is_false": float((y[hardest] == y).double().mean()),
        "false_mass_uniform": float((same.sum(1) / m).mean()),
        "false_mass_tilted": float((p_t * same).sum(1).mean()),
        "eff_negatives_tilted": float((ent.exp() / m).mean()),
    }
