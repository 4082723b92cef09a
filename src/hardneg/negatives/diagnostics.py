r"""Cheap per-step diagnostics of the negatives a strategy actually uses.

For each anchor i with valid candidates C(i), π_ij ∝ exp(β s_ij / t + a_ij) (the kernel's
distribution, a_ij the strategy's log-weights):

- ``sim_mean``: mean s_ij over all valid (anchor, candidate) pairs; ``sim_weighted_mean``:
  mean over anchors of Σ_j π_ij s_ij; ``sim_p05/p25/p50/p75/p95``: percentiles of s_ij over valid
  pairs, from a 4000-bin histogram on [−1, 1] (to within 5·10⁻⁴);
- ``ess``: effective number of negatives 1 / Σ_j π_ij², mean over anchors; ``n_candidates``:
  mean |C(i)|;
- ``fn_weight_share``: mean over anchors of Σ_j π_ij [y_j = y_i] — the weight on false negatives
  when labels are known (NaN otherwise); ``hardest_fn_share``: share of anchors whose most similar
  valid candidate has their label (NaN without labels);
- ``skipped_share``: share of anchors with no valid candidate, skipped by the loss
  (`hardneg.losses.candidates`);
- ``pos_gap``: mean of s_ip − max_{j∈C(i)} s_ij (positive minus hardest negative; negative values
  mean the hardest negative beats the positive); ``hardest_mean``: mean max_j s_ij.

Each chunk costs a few float passes over (c×m) and no boolean tile; nothing larger is stored.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.losses import native
from hardneg.losses.candidates import Relations, infinite_indicator, label_columns, safe_normalize
from hardneg.losses.checks import UNKNOWN
from hardneg.losses.kernel import logsumexp_rows_
from hardneg.losses.tilt import tilt_log_weights

PERCENTILES = (5, 25, 50, 75, 95)
_BINS = 4000
_LO, _HI = -1.0005, 1.0005  # a little beyond [−1, 1] for rounding; bin width 5.0025e-4


class DiagnosticsAccumulator:
    """Accumulates the statistics above chunk by chunk; each anchor row is counted once.

    Args:
        n: number of anchors. t, beta: the kernel's temperature and tilt (π ∝ e^{β s/t + a}).
        max_anchors: record only this many anchors, evenly spaced (None: all). The statistics are
            then estimates from that sample, which keeps them cheap for large batches.
    """

    def __init__(self, n: int, t: float, beta: float, max_anchors: int | None = None) -> None:
        self.n, self.t, self.beta = n, float(t), float(beta)
        self.done = torch.zeros(n, dtype=torch.bool)
        if max_anchors is None or max_anchors >= n:
            self.sampled = torch.ones(n, dtype=torch.bool)
        else:
            self.sampled = torch.zeros(n, dtype=torch.bool)
            self.sampled[torch.linspace(0, n - 1, max(1, max_anchors)).round().long()] = True
        self.hist = torch.zeros(_BINS, dtype=torch.float64)
        self.sum_s = 0.0
        self.cnt = 0.0
        self.rows = 0
        self.sum_ws = 0.0
        self.sum_ess = 0.0
        self.sum_cand = 0.0
        self.sum_fn = 0.0
        self.rows_fn = 0
        self.sum_hard_fn = 0.0
        self.rows_hard_fn = 0
        self.sum_gap = 0.0
        self.sum_hard = 0.0
        self.rows_gap = 0
        self.skipped = 0

    def sample_rows(self) -> Tensor:
        """Global indices of the anchors that are recorded."""
        return torch.nonzero(self.sampled).flatten()

    def pending_rows(self) -> Tensor:
        """Global indices of the sampled anchors not recorded yet."""
        return torch.nonzero(self.sampled & ~self.done).flatten()

    def pending(self, rows: slice | Tensor) -> Tensor:
        """(c,) bool on the CPU: rows of this chunk still to record (sampled and not yet seen)."""
        if isinstance(rows, Tensor):
            rows = rows.cpu()
        return self.sampled[rows] & ~self.done[rows]

    @torch.no_grad()
    def update(
        self, S: Tensor, log_w: Tensor, rows: slice | Tensor, s_pos: Tensor | None,
        labels: tuple[Tensor, Tensor] | None, overwrite: bool = False, log_mask: bool = False,
        k_order: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """Add the chunk's rows: cosine sims S (c×m, finite), log-weights with −∞ on invalid
        candidates, the positives' sims (or None) and ``labels`` = (the rows' anchor labels (c,),
        the candidates' labels (m,)) or None, with the candidates' `label_order` where the caller
        has it (``k_order``). Rows already recorded or outside the sample are
        skipped. ``overwrite``: S is the caller's scratch and may be overwritten (saves a copy).
        ``log_mask``: log_w holds only 0 and −∞, so with β = 0 π is uniform over the valid
        candidates and its statistics are the rows' counts and sums (no softmax)."""
        sel = self.pending(rows)
        if not bool(sel.any()):
            return
        gid = rows.cpu() if isinstance(rows, Tensor) else torch.arange(rows.start, rows.stop)
        self.done[gid[sel]] = True
        if not bool(sel.all()):
            sel = sel.to(S.device)
            S, log_w = S[sel], log_w[sel]
            overwrite = True  # S[sel] is a copy
            s_pos = None if s_pos is None else s_pos[sel]
            labels = None if labels is None else (labels[0][sel], labels[1])
        self._add(S.to(torch.float32, copy=not overwrite), log_w.float(), s_pos, labels, log_mask and not self.beta,
                  k_order)

    def _add(self, S: Tensor, log_w: Tensor, s_pos: Tensor | None, labels: tuple[Tensor, Tensor] | None,
             uniform: bool = False, k_order: tuple[Tensor, Tensor] | None = None) -> None:
        """S (float32) is overwritten. The per-row statistics (`hardneg.losses.native.RowStats`) come
        from the native row pass where it runs, else from `_torch_stats`; both read π at the label
        columns from the rows' log-sum-exp."""
        c = S.shape[0]
        cols = same = s_c = None
        if labels is not None:
            cols, same = label_columns(*labels, order=k_order)
            s_c = S.gather(1, cols)  # before the torch statistics overwrite S
        if native.takes(S) and native.takes(log_w):  # the tilt's factor per unit of s, β/t
            st = native.row_stats(S, log_w, uniform, float(tilt_log_weights(np.ones(1), self.beta, self.t)[0]),
                                  _LO, _HI, _BINS)
        else:
            st = _torch_stats(S, log_w, uniform, self.beta, self.t)
        n_valid = st.n_valid
        ok_rows = n_valid > 0
        self.rows += c
        self.sum_cand += float(n_valid.sum())
        self.cnt += float(n_valid.sum())
        self.skipped += int((~ok_rows).sum())
        self.hist += st.hist
        self.sum_s += float(st.sum_s.sum())
        self.sum_ws += float(st.sum_ps[ok_rows].sum())
        self.sum_ess += float((1.0 / st.sum_pp[ok_rows]).sum())
        hard = st.hard
        if labels is not None and cols is not None and same is not None and s_c is not None:
            yq, yk = labels
            lw_c = log_w.gather(1, cols)
            if uniform:  # the share of valid candidates with the label
                n_same = ((lw_c > float("-inf")) & same).sum(1)
                self.sum_fn += float((n_same[ok_rows] / n_valid[ok_rows]).sum())
            else:
                logit = lw_c + tilt_log_weights(s_c, self.beta, self.t) if self.beta else lw_c
                p = torch.exp(logit - st.lse[:, None]) * same
                self.sum_fn += float(p[ok_rows].sum())
            self.rows_fn += c
            hard_same = (yk[st.hard_j] == yq) & (yq != UNKNOWN)
            self.sum_hard_fn += float(hard_same[ok_rows].sum())
            self.rows_hard_fn += int(ok_rows.sum())
        ok = ok_rows
        if s_pos is not None:
            ok = ok & ~torch.isnan(s_pos)
            self.sum_gap += float((s_pos.float()[ok] - hard[ok]).sum())
        self.sum_hard += float(hard[ok].sum())
        self.rows_gap += int(ok.sum())

    def percentile(self, p: float) -> float:
        tot = float(self.hist.sum())
        if tot == 0:
            return float("nan")
        cdf = torch.cumsum(self.hist, 0) / tot
        i = int(torch.searchsorted(cdf, torch.tensor(p / 100.0, dtype=cdf.dtype)))
        i = min(i, _BINS - 1)
        return _LO + (i + 0.5) * ((_HI - _LO) / _BINS)

    def result(self) -> dict[str, float]:
        nan = float("nan")
        out = {
            "sim_mean": self.sum_s / self.cnt if self.cnt else nan,
            "sim_weighted_mean": self.sum_ws / self.rows if self.rows else nan,
        }
        for p in PERCENTILES:
            out[f"sim_p{p:02d}"] = self.percentile(p)
        out["ess"] = self.sum_ess / self.rows if self.rows else nan
        out["n_candidates"] = self.sum_cand / self.rows if self.rows else nan
        out["skipped_share"] = self.skipped / self.rows if self.rows else nan
        out["fn_weight_share"] = self.sum_fn / self.rows_fn if self.rows_fn else nan
        out["hardest_fn_share"] = self.sum_hard_fn / self.rows_hard_fn if self.rows_hard_fn else nan
        out["pos_gap"] = self.sum_gap / self.rows_gap if self.rows_gap else nan
        out["hardest_mean"] = self.sum_hard / self.rows_gap if self.rows_gap else nan
        return out


def _torch_stats(S: Tensor, log_w: Tensor, uniform: bool, beta: float, t: float) -> native.RowStats:
    """`hardneg.losses.native.row_stats` in torch, S overwritten: float passes over the (c × m) rows
    only (on CPU a boolean tile costs about ten of them), log_w −∞ exactly on invalid candidates."""
    m = S.shape[1]
    inv = infinite_indicator(log_w)  # 1 on invalid candidates
    n_valid = (m - inv.sum(1)).round().long()
    ok = n_valid > 0
    if uniform:
        lse = torch.log(n_valid.to(S.dtype))
        sum_pp = torch.where(ok, 1.0 / n_valid.clamp(min=1).double(), 0.0)
    else:
        logits = log_w + tilt_log_weights(S, beta, t) if beta else log_w.clone()
        pi = torch.where(ok[:, None], logits, 0.0)  # a row without a valid candidate: finite, then 0
        lse = logsumexp_rows_(pi)  # pi now holds the softmax
        pi.masked_fill_(~ok[:, None], 0.0)
        sum_ps = torch.einsum("ij,ij->i", pi, S).double()
        sum_pp = torch.linalg.vector_norm(pi, dim=1).double().square()
    # invalid entries at S − 4 ≤ −3: below the histogram's range (histc ignores them) and below every cosine
    Sm = S.add_(inv, alpha=-4.0)
    hard, hard_j = Sm.max(1)
    hist = torch.histc(Sm, bins=_BINS, min=_LO, max=_HI).double()
    # the valid entries kept and the invalid ones 0: each row's sum over its valid candidates (a
    # per-row product with the 0/1 tile is a batched matrix product: slow on CPU)
    sum_s = F.threshold(Sm, -2.0, 0.0, inplace=True).sum(1).double()
    if uniform:
        sum_ps = torch.where(ok, sum_s / n_valid.clamp(min=1), 0.0)
    hard = torch.where(ok, hard, torch.full_like(hard, float("-inf")))
    return native.RowStats(n_valid, hard, hard_j, sum_s, lse, sum_ps, sum_pp, hist)


@torch.no_grad()
def negative_diagnostics(
    q: Tensor,
    k: Tensor,
    *,
    t: float,
    pos_index: Tensor | None = None,
    self_index: Tensor | None = None,
    q_labels: Tensor | None = None,
    k_labels: Tensor | None = None,
    beta: float = 0.0,
    negatives: str = "all",
    log_weight_fn: Callable[[Tensor, slice], Tensor] | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Functional diagnostics of π over candidates ``k`` for anchors ``q`` (same arguments as the
    kernel `hardneg.losses.weighted_info_nce`; inputs are L2-normalised here).

    ``negatives="other_labels"`` drops same-label candidates (then ``fn_weight_share`` is 0).
    """
    q = safe_normalize(q.float())
    k = safe_normalize(k.float())
    n = q.shape[0]
    rel = Relations(m=k.shape[0], self_index=self_index, pos_index=pos_index, q_labels=q_labels, k_labels=k_labels)
    acc = DiagnosticsAccumulator(n, t, beta)
    for r0 in range(0, n, chunk_size):
        rows = slice(r0, min(n, r0 + chunk_size))
        S = q[rows] @ k.T
        valid = rel.valid(rows, S.device)
        same = rel.same_label(rows)
        if negatives == "other_labels" and same is not None:
            valid &= ~same
        lw = torch.zeros_like(S).masked_fill(~valid, float("-inf"))
        if log_weight_fn is not None:
            lw = lw + log_weight_fn(S, rows)
        sp = None if pos_index is None else rel.s_pos(S, rows)
        labels = None if q_labels is None or k_labels is None else (q_labels[rows], k_labels)
        acc.update(S, lw, rows, sp, labels)
    return acc.result()
