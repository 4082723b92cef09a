r"""Negative diagnostics of an evaluation batch of two-view embeddings (the trainer's per-epoch
``diag.*`` metrics): how hard and how "false" the in-batch negatives are under the tilt
π ∝ e^{βs/t} (HCL / H-SCL; β = 0 is uniform). `hardneg.eval.diagnose` is the `hardneg diagnose`
command's measurement and advice for a user's strategy; both read `hardneg.negatives.diagnostics`.

For every anchor i of the 2B views, the candidates are all other views except i's own positive (the
SimCLR in-batch set). The statistics are those of the strategies'
`hardneg.negatives.diagnostics.DiagnosticsAccumulator` (one definition for training steps and
evaluation): ``ess`` = 1 / Σ_j π_ij² (effective number of negatives), ``fn_weight_share`` = Σ_j π_ij
[y_j = y_i] (weight on false negatives), ``hardest_fn_share`` (share of anchors whose most similar
candidate has their label), ``pos_gap``, ``hardest_mean``, ``sim_mean``, ``sim_weighted_mean``,
``n_candidates`` and similarity percentiles.
"""

from __future__ import annotations

import torch

from hardneg.losses.candidates import repeat_two_views, two_view_index
from hardneg.losses.checks import check_tags
from hardneg.negatives.diagnostics import negative_diagnostics


@torch.no_grad()
def two_view_diagnostics(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, *, beta: float = 1.0, t: float = 0.5
) -> dict[str, float]:
    """The diagnostics above for views ``z1``, ``z2`` (B×d, any norm) with ``labels`` (B,)."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (B, d), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    checked = check_tags("labels", labels, z1.shape[0], z1.device)
    if checked is None:
        raise ValueError("two_view_diagnostics needs labels, a (B,) integer tensor")
    z = torch.cat([z1, z2])
    pos, self_idx = two_view_index(z1.shape[0], z.device)
    y = repeat_two_views(checked)
    return negative_diagnostics(z, z, t=t, beta=beta, pos_index=pos, self_index=self_idx, q_labels=y, k_labels=y)
