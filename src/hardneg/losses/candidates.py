r"""Which candidates are an anchor's positives and negatives: the one definition.

Every part of hardneg that decides whether candidate ``j`` may be a negative of anchor ``i`` — the
kernel, the strategies' filters and weightings, their diagnostics, the bound check, triplet/margin,
the calibrator and the sentence-transformers loss — uses this module. The rules:

**Structure.** With anchors ``q`` (n×d) and candidates ``k`` (m×d):

- ``self_index[i]``: the column of anchor i itself in ``k`` (−1 where absent) — never a candidate;
- ``pos_index[i]``: the column of anchor i's positive (``positives="view"``; −1 where it has none)
  — never a negative;
- ``ids``: sample ids; a candidate with the anchor's id (another view of the same sample) is never
  a negative;
- ``owner[j]``: −1 for a candidate shared by every anchor, else the one anchor that may use it (a
  pool neighbour or a synthetic negative built for that anchor);
- ``cross_view``: when set, a candidate from the anchor's own view (``q_view[i] == k_view[j]``) is
  never a candidate — two-tower models, where an image is scored only against texts and a text
  only against images (CLIP).

**Labels.** Labels and ids are integers ≥ −1; **−1 means unknown**: an unknown label is never
"the same label" as anything (not a positive under ``positives="labels"``, not removed by a label
filter), an unknown id matches nothing. Values below −1 are refused everywhere.

**Two views.** The named losses and `InBatch` stack the views as
``[z1; z2]``: row i's positive is row i + B and vice versa (`two_view_index`).

**An anchor with no negative or no positive is skipped** (one policy, applied everywhere): it
contributes no loss and no gradient and is left out of the mean, as pytorch-metric-learning's
reducers and the SupCon paper's code skip anchors without a positive. This covers a singleton
class under SupCon, an anchor whose every candidate a filter removed, an anchor whose every
candidate shares its label under SCL or SupCon (label positives are in SupCon's denominator, but
they are not negatives). A call in which *every* anchor is skipped raises
``ValueError`` saying why (a batch of one sample, one class only, filters that remove everything).
Strategies count the skipped anchors in their diagnostics (``skipped_share``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.losses import native
from hardneg.losses.checks import UNKNOWN

_SMALLEST_NORM = 1e-6  # well above F.normalize's eps and float32 underflow of the squares


def safe_normalize(x: Tensor) -> Tensor:
    """L2-normalise rows; rows whose squared norm overflows (entries near 1e19 in float32) are
    rescaled by their largest entry first, and so are rows so small that F.normalize's ε (1e-12)
    would distort them (all-zero rows stay zero). Normalisation is scale invariant, so values and
    gradients are those of the exact unit vectors."""
    norms = torch.linalg.vector_norm(x.detach(), dim=1, keepdim=True)
    if bool(torch.isfinite(norms).all()) and bool((norms > _SMALLEST_NORM).all()):
        return _UnitRows.apply(x, norms) if x.requires_grad else x / norms
    scale = x.detach().abs().amax(1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
    return F.normalize(x / scale, dim=1)


class _UnitRows(torch.autograd.Function):
    """y = x / ‖x‖ per row, for rows whose norm (given) is finite and above ε: F.normalize's value,
    with its gradient (g − y (y·g)) / ‖x‖ in five operations on the (n × d) rows, where autograd's
    chain through the norm and the division takes about twice as many. Under ``create_graph`` the
    gradient is built from x again, so second derivatives stay exact."""

    @staticmethod
    def forward(ctx, x: Tensor, norms: Tensor) -> Tensor:  # type: ignore[override]
        y = x / norms
        ctx.save_for_backward(x, y, norms)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, y, norms = ctx.saved_tensors
        if torch.is_grad_enabled():  # a graph of the gradient: y and ‖x‖ as functions of x
            norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
            y = x / norms
        elif native.takes(y) and g.dtype == y.dtype and g.device == y.device:  # one pass per row
            return native.unit_rows_backward(y, g, norms), None
        dot = (y * g).sum(1, keepdim=True)
        return (g - y * dot) / norms, None


# ---------------------------------------------------------------------------------------------
# the two-view layout
# ---------------------------------------------------------------------------------------------


#: the float32 just below zero: ``y > -_BELOW_ZERO`` holds exactly when ``y >= 0``
_BELOW_ZERO = 2.0**-149


def log_mask_(y: Tensor, inclusive: bool = False) -> Tensor:
    """``y`` (no NaN) overwritten with the additive (log-weight) form of the mask ``y > 0``
    (``y >= 0`` with ``inclusive``): 0 where it holds, −∞ elsewhere. Adding it to a block of the
    kernel's tile removes candidates exactly (x + 0 = x). Two float passes: on CPU a boolean mask
    and ``masked_fill_`` cost about ten times as much."""
    F.threshold(y, -_BELOW_ZERO if inclusive else 0.0, float("-inf"), inplace=True)
    return y.clamp_(max=0.0)


def finite_count(X: Tensor, log_mask: bool = False, out: Tensor | None = None) -> Tensor:
    """(rows,) number of entries above −∞ in each row of ``X`` (no NaN), by float passes:
    x + max is −∞ for x = −∞ and ≥ 0 for every finite x, so clamped to [−1, 0] it counts the −∞.
    ``log_mask``: X holds only 0 and −∞ (`log_mask_`), and one clamp to [−1, 0] counts them.
    ``out``: a scratch of X's shape for the clamped copy (X itself when nothing reads it after),
    which spares a fresh (rows × m) tile."""
    if log_mask:
        return X.shape[1] + torch.clamp(X, min=-1.0, out=out).sum(1).long()
    y = torch.add(X, torch.finfo(X.dtype).max, out=out)
    return X.shape[1] + y.clamp_(-1.0, 0.0).sum(1).long()


def infinite_indicator(X: Tensor) -> Tensor:
    """A new tensor: 1.0 where ``X`` (no NaN) is −∞, 0.0 at every finite entry, by two float
    passes (−max − x is +∞ for x = −∞ and ≤ 0 for every finite x, then clamped to [0, 1])."""
    return torch.rsub(X, -torch.finfo(X.dtype).max).clamp_(0.0, 1.0)


def two_view_index(B: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """``(pos_index, self_index)`` of the stacked views ``[z1; z2]`` (2B rows): row i's positive
    is row i + B and row i + B's is row i; each row is itself."""
    ar = torch.arange(B, device=device)
    return torch.cat([ar + B, ar]), torch.arange(2 * B, device=device)


def repeat_two_views(x: Tensor | None) -> Tensor | None:
    """Per-sample side information (labels, ids) for the stacked views: ``[x; x]``."""
    return None if x is None else torch.cat([x, x])


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------


def dense_labels(q_labels: Tensor, k_labels: Tensor) -> tuple[Tensor, Tensor, int]:
    """Relabel anchors' and candidates' labels to ``0..L−1``; every unknown (−1) entry gets a class
    of its own, so it is never "the same label" as anything. Returns ``(q, k, L)``."""
    y = torch.cat([q_labels, k_labels])
    n = q_labels.shape[0]
    unknown = y == UNKNOWN
    n_unknown = int(unknown.sum())
    known = y[~unknown] if n_unknown else y
    if known.numel():
        lo, hi = (int(v) for v in torch.aminmax(known))
        if lo >= 0 and hi < 4 * y.numel() + 64:
            # small non-negative labels: their ranks from a presence table (no sort; the same ids
            # as the sort below: known labels in increasing order, then the unknown ones)
            rank = torch.cumsum(torch.bincount(known, minlength=hi + 1) > 0, 0) - 1
            inv = rank[y.clamp(min=0)]
            if n_unknown:
                inv[unknown] = int(rank[-1]) + 1 + torch.arange(n_unknown, device=y.device)
            return inv[:n], inv[n:], int(rank[-1]) + 1 + n_unknown
    if n_unknown:
        y = y.clone()
        top = int(y.max()) + 1
        y[unknown] = top + torch.arange(n_unknown, device=y.device)
    uniq, inv = torch.unique(y, return_inverse=True)
    return inv[:n], inv[n:], int(uniq.numel())


def same_known_label(q_labels: Tensor, k_labels: Tensor) -> Tensor:
    """(n×m) bool: both tags (labels, sample ids or duplicate groups) known and equal."""
    return (q_labels[:, None] == k_labels[None, :]) & (q_labels[:, None] != UNKNOWN)


def label_order(k_labels: Tensor) -> tuple[Tensor, Tensor]:
    """(the stable argsort of the candidates' labels, those labels sorted): what `label_columns`
    searches, for a caller that asks for several chunks' columns of one k."""
    order = torch.argsort(k_labels, stable=True)
    return order, k_labels[order].contiguous()


def label_columns(q_labels: Tensor, k_labels: Tensor, order: tuple[Tensor, Tensor] | None = None
                  ) -> tuple[Tensor, Tensor]:
    """The sparse form of `same_known_label`: for each anchor, the columns of the candidates with
    its known label, as (c × P) columns and (c × P) bool ``valid`` (P the largest such count; the
    padding repeats a column and is not valid). O(m log m + c P) instead of a (c × m) tile;
    O(c (log m + P)) with k's `label_order` given."""
    by, sk = label_order(k_labels) if order is None else order
    lo = torch.searchsorted(sk, q_labels)
    cnt = torch.searchsorted(sk, q_labels, right=True) - lo
    cnt = torch.where(q_labels != UNKNOWN, cnt, torch.zeros_like(cnt))
    P = max(1, int(cnt.max())) if cnt.numel() else 1
    ar = torch.arange(P, device=q_labels.device)
    valid = ar[None, :] < cnt[:, None]
    cols = by[torch.clamp(lo[:, None] + ar[None, :], max=max(0, k_labels.shape[0] - 1))]
    return cols, valid


def nominal_n(m: int, has_self: bool, has_positive: bool) -> int:
    """N = every candidate but the anchor itself and its positive (2B − 2 in the HCL / H-SCL code);
    at least 1, so a batch too small to have negatives reaches the skipped-anchor check."""
    return max(1, m - int(has_self) - int(has_positive))


# ---------------------------------------------------------------------------------------------
# relations of one step's anchors and candidates
# ---------------------------------------------------------------------------------------------


@dataclass
class Relations:
    """Who the anchors and candidates are; answers "may j be a negative of i?" for a chunk of anchors.

    All tensors are on one device; ``q_*`` have n entries, ``k_*`` and ``owner`` m entries.
    ``id_start`` is the first candidate column where the same-id rule can matter (None: nowhere), a
    shortcut the caller may give when it knows the batch block holds unique ids.
    """

    m: int
    self_index: Tensor | None = None
    pos_index: Tensor | None = None
    q_labels: Tensor | None = None
    k_labels: Tensor | None = None
    q_ids: Tensor | None = None
    k_ids: Tensor | None = None
    owner: Tensor | None = None
    id_start: int | None = 0
    q_view: Tensor | None = None
    k_view: Tensor | None = None
    cross_view: bool = False

    @staticmethod
    def rows_of(rows: slice | Tensor, device: torch.device) -> Tensor:
        """Global anchor indices of ``rows`` (a slice or an index tensor)."""
        if isinstance(rows, slice):
            return torch.arange(rows.start, rows.stop, device=device)
        return rows.to(device)

    def valid(self, rows: slice | Tensor, device: torch.device) -> Tensor:
        """(c×m) bool: candidates that may be negatives of anchors ``rows`` before any filter: not
        the anchor itself, not its positive, not a candidate with the anchor's (known) id, and
        owned by the anchor or shared, and (``cross_view``) from the other view."""
        gid = self.rows_of(rows, device)
        c = gid.shape[0]
        r = torch.arange(c, device=device)
        valid = torch.ones(c, self.m, dtype=torch.bool, device=device)
        for col in (self.self_index, self.pos_index):
            if col is not None:
                cc = col[gid]
                has = cc >= 0
                valid[r[has], cc[has]] = False
        if self.q_ids is not None and self.k_ids is not None and self.id_start is not None:
            s = self.id_start
            valid[:, s:] &= ~same_known_label(self.q_ids[gid], self.k_ids[s:])
        if self.owner is not None:
            valid &= (self.owner[None, :] == UNKNOWN) | (self.owner[None, :] == gid[:, None])
        if self.cross_view:
            kv, qv = self._views()
            valid &= kv[None, :] != qv[gid][:, None]
        return valid

    def mask_(self, X: Tensor, rows: slice | Tensor) -> Tensor:
        """``X`` (c×m) with −∞ written where `valid` is False: the anchor itself and its positive
        by scatter; the boolean tile of `valid` only where an id, owner or cross-view rule applies."""
        if (self.q_ids is not None and self.k_ids is not None and self.id_start is not None) or (
            self.owner is not None or self.cross_view
        ):
            return X.masked_fill_(~self.valid(rows, X.device), float("-inf"))
        gid = self.rows_of(rows, X.device)
        r = torch.arange(gid.shape[0], device=X.device)
        for col in (self.self_index, self.pos_index):
            if col is not None:
                cc = col[gid]
                has = cc >= 0
                X[r[has], cc[has]] = float("-inf")
        return X

    def _views(self) -> tuple[Tensor, Tensor]:
        """(k_view, q_view), which the cross-view rule needs."""
        if self.k_view is None or self.q_view is None:
            raise ValueError("cross_view needs q_view and k_view (the view of every anchor and candidate)")
        return self.k_view, self.q_view

    def valid_at(self, rows: Tensor, cols: Tensor) -> Tensor:
        """The rule of `valid` at given pairs: ``rows`` (r,) anchors, ``cols`` (r, c) columns."""
        ok = torch.ones_like(cols, dtype=torch.bool)
        for col in (self.self_index, self.pos_index):
            if col is not None:
                ok &= cols != col[rows][:, None]
        if self.q_ids is not None and self.k_ids is not None:
            qi = self.q_ids[rows][:, None]
            ok &= ~((self.k_ids[cols] == qi) & (qi != UNKNOWN))
        if self.owner is not None:
            ow = self.owner[cols]
            ok &= (ow == UNKNOWN) | (ow == rows[:, None])
        if self.cross_view:
            kv, qv = self._views()
            ok &= kv[cols] != qv[rows][:, None]
        return ok

    def same_label(self, rows: slice | Tensor) -> Tensor | None:
        """(c×m) bool: the candidate has the anchor's known label; None without labels."""
        if self.q_labels is None or self.k_labels is None:
            return None
        return same_known_label(self.q_labels[rows], self.k_labels)

    def s_pos(self, S: Tensor, rows: slice | Tensor) -> Tensor:
        """(c,) similarity of each anchor of the chunk to its positive (NaN where it has none)."""
        if self.pos_index is None:
            return torch.full((S.shape[0],), float("nan"), dtype=S.dtype, device=S.device)
        pi = self.pos_index[rows]
        sp = S[torch.arange(S.shape[0], device=S.device), pi.clamp(min=0)]
        return torch.where(pi >= 0, sp, torch.full_like(sp, float("nan")))


class NoValidAnchorError(ValueError):
    """Every anchor of a call was skipped (no positive or no valid negative)."""


def all_skipped_error(n: int, why: str) -> NoValidAnchorError:
    """The error when every anchor of a call is skipped (see the module docstring)."""
    return NoValidAnchorError(f"no anchor has both a positive and a valid negative ({n} anchors): {why}")
