r"""Shapes of π over candidate negatives, as extra log-weights for one chunk of anchors.

The kernel (`hardneg.losses.weighted_info_nce`) uses ``π_ij ∝ exp(β s_ij / t + a_ij)`` over
valid candidates; a weighting supplies ``a_ij`` (−∞ removes a candidate). Every weighting here is a
small object with ``log_weights(S, rows, ctx, valid) -> (c×m)`` given the chunk's cosine similarities
``S``, the row slice, the step context and the mask of candidates still valid after masks and
filters; the pure maths lives in module-level functions (torchmetrics style) usable on their own.

- uniform: ``a = 0`` (SimCLR / SCL);
- top-k hardest: ``a = 0`` on the k most similar valid candidates, −∞ elsewhere;
- semi-hard (Schroff et al., FaceNet 2015): keep ``s_ip − m < s_ij < s_ip`` (harder than nothing,
  easier than the positive, within the margin m);
- β-tilt (Robinson et al. HCL 2021; Jiang et al. H-SCL 2022): ``a = β s / t`` — done by the kernel's
  ``beta`` (its weights may stay in the graph); `Tilt` is the constant-weight version;
- distance-weighted (Wu et al., "Sampling Matters in Deep Embedding Learning", 2017):
  ``a = −log q(d)``, ``q(d) ∝ d^{n−2} (1 − d²/4)^{(n−3)/2}`` (density of distances between points
  uniform on the unit sphere in ℝⁿ), ``d = ‖q_i − k_j‖ = sqrt(2 − 2s)`` clipped below at ``cutoff``
  (0.5), and candidates with ``d ≥ nonzero_loss_cutoff`` (1.4) removed; the weights are normalised
  per anchor (π is Wu et al.'s sampling distribution itself);
- cluster-guided: k-means (FAISS) on the embeddings or on a second modality, refreshed every E
  steps; ``a = [c_i ≠ c_j] · (bonus + γ s_ij / t)``, same cluster optionally removed;
- calibrated: an auxiliary MLP predicts p̂_ij = P(pair (i, j) is really aligned); ``a = log(1 − p̂)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg._optional import require
from hardneg.losses.candidates import finite_count, log_mask_
from hardneg.losses.checks import check_beta, check_int, check_nonneg, check_number, check_positive
from hardneg.losses.kernel import Kept, logsumexp_rows_
from hardneg.losses.native import RowRule
from hardneg.losses.tilt import tilt_log_weights
from hardneg.negatives.context import StepContext
from hardneg.negatives.sources import register_kind, simple_repr

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------
# functional maths
# ---------------------------------------------------------------------------------------------


def topk_mask(S: Tensor, valid: Tensor, k: int) -> Tensor:
    """(c×m) bool: the ``k`` most similar valid candidates of each row (all valid ones if fewer)."""
    m = S.shape[1]
    kk = min(k, m)
    idx = torch.where(valid, S, NEG_INF).topk(kk, dim=1).indices
    keep = torch.zeros_like(valid)
    keep.scatter_(1, idx, True)
    return keep & valid


def semihard_mask(S: Tensor, valid: Tensor | None, s_pos: Tensor, margin: float) -> Tensor:
    """(c×m) bool: FaceNet's semi-hard window ``s_ip − margin < s_ij < s_ip`` among valid candidates
    (``valid=None``: S is −∞ on the invalid ones, which no window holds)."""
    sp = s_pos[:, None]
    keep = (sp > S) & (sp - margin < S)
    return keep if valid is None else keep & valid


def distance_weighted_log_weights(S: Tensor, dim: int, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4) -> Tensor:
    """Wu et al. 2017: ``log w = −log q(d)`` with ``log q(d) = (n−2) log d + ((n−3)/2) log(1 − d²/4)``,
    d clipped below at ``cutoff``, −∞ where ``d ≥ nonzero_loss_cutoff``. Shifted per row by its max
    for stability (π is normalised anyway)."""
    lw = _neg_log_q_(torch.mul(S, -2.0).add_(2.0), dim, cutoff, nonzero_loss_cutoff)
    mx = lw.max(dim=1, keepdim=True).values
    return lw - torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))


def _neg_log_q_coefficients(dim: int) -> tuple[float, float]:
    """(p_u, p_v) of −log q(d) = p_u log u + p_v log(1 − u/4) with u = d² (Wu et al. 2017, n = dim):
    −(n − 2)/2 and −(n − 3)/2."""
    return -(dim - 2.0) / 2.0, -(dim - 3.0) / 2.0


def _neg_log_q_(u: Tensor, dim: int, cutoff: float, nonzero_loss_cutoff: float) -> Tensor:
    """−log q(d) from u = d² = 2 − 2s (overwritten): ``(n−2) log d = ((n−2)/2) log u`` with u
    clipped below at cutoff², and −∞ where d ≥ nonzero_loss_cutoff, i.e. u ≥ nonzero_loss_cutoff²
    (an s of −∞, an invalid candidate, is removed too). Few in-place passes, no sqrt."""
    far = u >= nonzero_loss_cutoff * nonzero_loss_cutoff
    u.clamp_(min=cutoff * cutoff)
    lw = torch.log(u)
    u.mul_(-0.25).add_(1.0).clamp_(min=1e-8).log_()
    p_u, p_v = _neg_log_q_coefficients(dim)
    lw.mul_(p_u).add_(u, alpha=p_v)
    return lw.masked_fill_(far, NEG_INF)


#: columns per group of the two-stage top-k selection (`_topk_columns`)
_TOPK_GROUP = 64


def _topk_columns(X: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest values of each row of ``X`` and their columns (ties in any order).

    Each of them lies in one of the row's k groups of ``_TOPK_GROUP`` columns with the largest
    maxima (a group outside them has k groups of larger maxima above it, each holding a larger
    value), so one max reduction over the row and two small selections replace a selection over
    the whole row. A group is every ng-th column of the body (ng groups): the max runs across
    contiguous runs of ng columns, vectorised, rather than within runs of 64. Columns past the
    body (the last m mod 64) always take part."""
    r, m = X.shape
    ng = m // _TOPK_GROUP
    if 4 * k * _TOPK_GROUP > m:  # few groups: one selection over the row
        return X.topk(min(k, m), dim=1, sorted=False)
    body = X[:, : ng * _TOPK_GROUP].unflatten(1, (_TOPK_GROUP, ng))
    best = body.amax(1).topk(k, dim=1, sorted=False).indices  # (r, k) groups
    cols = (best[:, :, None] + ng * torch.arange(_TOPK_GROUP, device=X.device)).flatten(1)
    if m > ng * _TOPK_GROUP:
        cols = torch.cat([cols, torch.arange(ng * _TOPK_GROUP, m, device=X.device).expand(r, -1)], 1)
    vals, at = X.gather(1, cols).topk(k, dim=1, sorted=False)
    return vals, cols.gather(1, at)


# ---------------------------------------------------------------------------------------------
# weighting objects
# ---------------------------------------------------------------------------------------------


WEIGHTINGS: dict[str, type] = {}  # kind -> Weighting subclass, filled as subclasses are defined


class Weighting(nn.Module):
    """Base class. ``log_weights(S, rows, ctx, valid)`` returns (c×m) extra log-weights.

    A *selecting* weighting (``selects = True``: top-k, semi-hard) implements
    ``select(S, rows, ctx, valid) -> (c×m) bool`` instead — π uniform over the selected candidates,
    i.e. log-weight 0 on them and −∞ elsewhere — which saves float passes over the chunk.
    """

    kind = "base"
    schedulable: tuple[str, ...] = ()
    needs_positive = False
    selects = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_kind(WEIGHTINGS, cls)

    def select(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def log_weights(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    #: implements `weigh_`, so a strategy may fuse it into the kernel's blocks
    fused = False

    def weigh_(
        self, X: Tensor, rows: slice, ctx: StepContext, sp: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Kept | None]:
        """`select` / `log_weights` in place on a block ``X`` of the kernel's tile (cosine
        similarities / ``ctx.t``, −∞ on invalid candidates; ``sp`` the positives' ``X``): writes −∞
        on what it removes and adds its log-weights a — ignored on a row it would empty, as the
        strategy does. Returns (valid candidates per row, log Σ_j e^{a_ij} over them or None when
        a = 0, the rows where it was ignored or None, None). A selection that keeps at most a fixed
        number of entries per row may leave ``X`` as it is and return them as the fourth item
        (`hardneg.losses.kernel.Kept`, the kernel's ``log_weight_block`` protocol)."""
        raise NotImplementedError  # pragma: no cover

    def row_rule(self, ctx: StepContext, sp: Tensor) -> RowRule | None:
        """`weigh_` as the rule of the native row pass (`hardneg.losses.native.RowRule`) for a chunk
        whose positives' X are ``sp`` — its fallback included —, or None when it has no such form
        (the kernel's blocks run it)."""
        return None

    def rows_done(self, n: int, fallback: int) -> None:
        """``n`` rows, ``fallback`` of them by the fallback, were weighed by the native row pass
        (`row_rule`) rather than `weigh_`: the per-row counts of the diagnostics take them as
        `weigh_` would have."""

    def begin_step(self, ctx: StepContext) -> None:
        """Called once per step before the loss (refresh clusters, …)."""

    def after_step(self, ctx: StepContext) -> None:
        """Called once per step after the loss (train auxiliary models, …)."""

    def diagnostics(self) -> dict[str, float]:
        return {}

    def extra_repr(self) -> str:
        return simple_repr(self)


class Uniform(Weighting):
    """π uniform over valid candidates (SimCLR, SCL)."""

    kind = "uniform"

    def log_weights(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:
        return torch.zeros_like(S)


def _opt(name: str) -> str:
    return f"weighting option {name!r}"


class TopK(Weighting):
    """Top-k hard negative mining: only the ``k`` most similar valid candidates count (uniformly).
    With ``n_neg="count"`` the loss sums over exactly those k. ``k`` is schedulable (rounded).
    An anchor with fewer than ``k`` valid candidates (counted by the candidate rule and the filters:
    cross-view, ownership, same id) uses all of them, and the share of such anchors is reported as
    ``topk_short_share`` in the diagnostics — never an error in the middle of training."""

    kind = "topk"
    schedulable = ("k",)

    def __init__(self, k: int = 16) -> None:
        super().__init__()
        self.k = check_int(_opt("k"), k)
        self._rows = 0
        self._short = 0

    def begin_step(self, ctx: StepContext) -> None:
        check_int(_opt("k"), round(self.k))  # a schedule may drive it
        self._rows = self._short = 0

    selects = True

    def select(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:
        k = int(round(self.k))
        self._rows += S.shape[0]
        self._short += int((valid.sum(1) < k).sum())
        return topk_mask(S, valid, k)

    def diagnostics(self) -> dict[str, float]:
        return {"topk_short_share": self._short / max(self._rows, 1)}

    fused = True

    def weigh_(self, X: Tensor, rows: slice, ctx: StepContext, sp: Tensor) -> tuple[Tensor, None, None, Kept]:
        """One selection pass: the k largest values and where they are, returned as `Kept` (X is
        left as it is; the kernel keeps them apart or writes them back over −∞). Invalid
        candidates are −∞ already, so fewer than k valid ones keeps them all."""
        k = int(round(self.k))
        vals, idx = _topk_columns(X, k)
        cnt = (vals > NEG_INF).sum(1)
        self._rows += X.shape[0]
        self._short += int((cnt < k).sum())  # fewer than k valid candidates
        return cnt, None, None, Kept(vals, idx)

    def log_weights(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:
        return torch.where(self.select(S, rows, ctx, valid), 0.0, NEG_INF).to(S.dtype)


class SemiHard(Weighting):
    """Semi-hard negatives (Schroff et al., FaceNet, CVPR 2015): ``s_ip − margin < s_ij < s_ip``
    in cosine similarity (FaceNet states it in squared distance: ``d_ap < d_an < d_ap + α``).
    Rows whose window is empty fall back to their single valid candidate nearest the window
    (counted as ``semihard_fallback_share`` in the diagnostics). ``margin`` is schedulable."""

    kind = "semihard"
    schedulable = ("margin",)
    needs_positive = True

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = check_nonneg(_opt("margin"), margin)
        self._rows = 0
        self._fallback = 0

    selects = True

    def select(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:
        check_nonneg(_opt("margin"), self.margin)
        sp = ctx.s_pos(S, rows)
        keep = semihard_mask(S, valid, sp, self.margin)
        self._fallback_(keep, S, sp, ~keep.any(1), lambda e: valid[e])
        return keep

    def _nearest(self, S: Tensor, sp: Tensor, valid: Tensor) -> Tensor:
        """(rows,) the valid candidate of each row nearest the window (rows with one valid candidate)."""
        dist = F.relu(S - sp[:, None]) + F.relu(sp[:, None] - self.margin - S)
        return dist.masked_fill(~valid, float("inf")).argmin(1)

    def _window(self, X: Tensor, spx: Tensor, t: float) -> Tensor:
        """min(s_p − s, s − (s_p − margin)) / t from X = s/t: > 0 inside the window, and minus the
        distance to it (/ t) outside (one of the two terms is negative there, as margin ≥ 0)."""
        above = torch.sub(spx[:, None], X)  # > 0: less similar than the positive
        inside = torch.sub(X, (spx - self.margin / t)[:, None])  # > 0: more similar than s_p − margin
        return torch.minimum(above, inside, out=above)

    def _fallback_(self, keep: Tensor, S: Tensor, sp: Tensor, empty: Tensor,
                   valid_of: Callable[[Tensor], Tensor]) -> Tensor:
        """Rows with an empty window keep their one valid candidate nearest it (in ``keep``);
        counts the rows. Returns their indices."""
        e = torch.nonzero(empty).flatten()
        if e.numel():  # computed on the empty rows only
            ve = valid_of(e)
            j = self._nearest(S[e], sp[e], ve)
            keep[e, j] = ve[torch.arange(e.numel(), device=e.device), j]
        self._rows += S.shape[0]
        self._fallback += int(e.numel())
        return e

    fused = True

    def weigh_(self, X: Tensor, rows: slice, ctx: StepContext, sp: Tensor) -> tuple[Tensor, None, None, None]:
        """The window on the block's cosines as a log-mask (float passes only: on CPU a boolean
        tile costs ten times as much); candidates outside it become −∞."""
        check_nonneg(_opt("margin"), self.margin)
        # the window as w = h − |X − c| > 0 (c its centre, h its half width: min(s_p − s, s − s_p +
        # margin) / t), in one step scratch tile (`StepContext.scratch`), which with X stays in a
        # core's L2 cache; then 0 inside / −1 outside (the row sums count the window), then 0 / −∞
        h = self._half_width(ctx)
        a = torch.sub(X, (sp - h)[:, None], out=ctx.scratch(X)).abs_()
        torch.sub(h, a, out=a)
        F.threshold(a, 0.0, -1.0, inplace=True)
        cnt = X.shape[1] + a.clamp_(max=0.0).sum(1).long()
        e = torch.nonzero(cnt == 0).flatten() if int(cnt.min()) == 0 else cnt[:0]
        if e.numel():  # an empty window: the valid candidate nearest it, i.e. with the largest min(·, 0)
            j = self._window(X[e], sp[e], ctx.t).clamp_(max=0.0).argmax(1)
            ok = X[e, j] > NEG_INF
            a[e] = -1.0
            a[e[ok], j[ok]] = 0.0
            cnt[e] = ok.long()
        self._rows += X.shape[0]
        self._fallback += int(e.numel())
        X.add_(F.threshold(a, -0.5, NEG_INF, inplace=True))
        return cnt, None, None, None

    def row_rule(self, ctx: StepContext, sp: Tensor) -> RowRule:
        """`weigh_`'s window |X − c| < h with the same float32 centre and half width, and its
        fallback: the valid candidate nearest the window, h − |X − c| the largest."""
        check_nonneg(_opt("margin"), self.margin)
        h = self._half_width(ctx)
        return RowRule(kind="window", centre=sp - h, half=h)

    def _half_width(self, ctx: StepContext) -> float:
        """h = margin / 2t: the window s_p − margin < s < s_p on X = s/t is |X − (X_p − h)| < h."""
        return self.margin / (2.0 * ctx.t)

    def rows_done(self, n: int, fallback: int) -> None:
        self._rows += n
        self._fallback += fallback

    def log_weights(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:
        return torch.where(self.select(S, rows, ctx, valid), 0.0, NEG_INF).to(S.dtype)

    def begin_step(self, ctx: StepContext) -> None:
        self._rows = self._fallback = 0

    def diagnostics(self) -> dict[str, float]:
        return {"semihard_fallback_share": self._fallback / max(self._rows, 1)}


class Tilt(Weighting):
    """Constant (detached) hardness tilt ``a = β s / t`` — HCL / H-SCL's η(s) = e^{βs/t} as a
    log-weight. Prefer the Strategy's own ``beta`` (same π, and the weights may stay in the graph)."""

    kind = "tilt"
    schedulable = ("beta",)

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        check_beta(beta, "weighting option 'beta'")
        self.beta = float(beta)

    def log_weights(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:
        return cast(Tensor, tilt_log_weights(S, self.beta, ctx.t))


class DistanceWeighted(Weighting):
    """Distance-weighted sampling (Wu et al. 2017), see `distance_weighted_log_weights`.

    Args:
        cutoff: lower clip of d (paper 0.5). nonzero_loss_cutoff: candidates farther than this
            are dropped (paper 1.4). dim: n of q(d); the embedding dimension when None.
    """

    kind = "distance_weighted"
    schedulable = ("cutoff", "nonzero_loss_cutoff")

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, dim: int | None = None) -> None:
        super().__init__()
        cutoff = check_number(_opt("cutoff"), cutoff, 0.0, 2.0, lo_open=True, hi_open=True)
        nonzero_loss_cutoff = check_number(_opt("nonzero_loss_cutoff"), nonzero_loss_cutoff, cutoff, 2.0, lo_open=True)
        if dim is not None:
            dim = check_int(_opt("dim"), dim, 4)
        self.cutoff, self.nonzero_loss_cutoff, self.dim = cutoff, nonzero_loss_cutoff, dim

    def log_weights(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:
        n = self.dim or ctx.q.shape[1]
        return distance_weighted_log_weights(S, n, self.cutoff, self.nonzero_loss_cutoff)

    fused = True

    def weigh_(self, X: Tensor, rows: slice, ctx: StepContext, sp: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        """X ← X − log q(d); a row whose every valid candidate is too far keeps them, unweighted.
        Float passes only (the far rule as a log-mask, `hardneg.losses.candidates.log_mask_`:
        on CPU a boolean tile costs ten times as much), and log Σ_j q(d_ij)⁻¹ by the softmax
        kernel (`hardneg.losses.kernel.logsumexp_rows_`). Far candidates stay finite until the
        mask is added: log and exp of ±∞ take a slow path on CPU."""
        n = self.dim or ctx.q.shape[1]
        # three step scratch tiles (`StepContext.scratch`): no fresh tile per block
        ub, fb, lb = ctx.scratch(X, 0), ctx.scratch(X, 1), ctx.scratch(X, 2)
        hi = self.nonzero_loss_cutoff**2
        # u = d² = 2 − 2s with s = X t, one pass; u = ∞ where X is −∞ (an invalid candidate is far, too)
        u = torch.sub(2.0, X, alpha=2.0 * ctx.t, out=ub)
        far = log_mask_(torch.sub(hi, u, out=fb))  # −∞ where d ≥ nonzero_loss_cutoff
        cnt = finite_count(far, log_mask=True, out=lb)
        # the clip at cutoff, and far (masked) candidates at nonzero_loss_cutoff in the same pass:
        # every u finite, and 1 − u/4 ≥ 1 − nonzero_loss_cutoff²/4, above the 1e-8 floor of its log
        # unless nonzero_loss_cutoff reaches 2 (antipodal candidates kept)
        u.clamp_(min=self.cutoff**2, max=hi)
        p_u, p_v = _neg_log_q_coefficients(n)
        lw = torch.log(u, out=lb).mul_(p_u)
        v = torch.sub(1.0, u, alpha=0.25, out=u)  # 1 − d²/4 in one pass, over u
        if hi > 4.0 * (1.0 - 1e-8):
            v.clamp_(min=1e-8)
        lw.add_(v.log_(), alpha=p_v).add_(far)
        fallback = torch.zeros_like(cnt, dtype=torch.bool)
        if int(cnt.min()) == 0:  # one host read per block, rows to fix only where it finds one
            e = torch.nonzero(cnt == 0).flatten()
            ve = X[e] > NEG_INF
            e, ve = e[ve.any(1)], ve[ve.any(1)]
            lw[e] = torch.zeros_like(ve, dtype=lw.dtype).masked_fill_(~ve, NEG_INF)
            cnt[e] = ve.sum(1)
            fallback[e] = True
        X.add_(lw)
        ok = cnt > 0
        if bool(ok.all()):
            return cnt, logsumexp_rows_(lw), fallback, None
        lse = torch.zeros_like(lw[:, 0])  # a row without a valid candidate: dropped by the kernel
        lse[ok] = logsumexp_rows_(lw[ok])
        return cnt, lse, fallback, None

    def row_rule(self, ctx: StepContext, sp: Tensor) -> RowRule:
        """`weigh_`'s u = 2 − 2tX, far rule u < nonzero_loss_cutoff², clip and −log q(d), and its
        fallback: a row whose every valid candidate is far keeps them, unweighted."""
        n = self.dim or ctx.q.shape[1]
        return RowRule(kind="distance", distance=(2.0 * ctx.t, *_neg_log_q_coefficients(n),
                                                  self.cutoff**2, self.nonzero_loss_cutoff**2))


class ClusterGuided(Weighting):
    r"""Cluster-guided negatives: k-means (``faiss.Kmeans``, spherical) on the candidates'
    embeddings — or on a second modality, a (num_ids × d₂) ``features`` table indexed by sample
    id — refreshed every ``every`` steps. Log-weight ``[c_i ≠ c_j] · (bonus + γ s_ij / t)``: near
    candidates of *other* clusters are preferred; ``exclude_same=True`` removes the anchor's own
    cluster (rows with no other-cluster candidate keep their candidates).

    Candidates without a known cluster (no id in the ``features`` table) get cluster −1, i.e.
    "other". Schedulable: ``bonus``, ``gamma``.
    """

    kind = "cluster_guided"
    schedulable = ("bonus", "gamma")

    def __init__(
        self,
        n_clusters: int = 10,
        every: int = 100,
        bonus: float = 1.0,
        gamma: float = 1.0,
        exclude_same: bool = False,
        features: Tensor | None = None,
        niter: int = 20,
        nredo: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_clusters = check_int(_opt("n_clusters"), n_clusters, 2)
        self.every = check_int(_opt("every"), every)
        self.bonus, self.gamma = check_nonneg(_opt("bonus"), bonus), check_nonneg(_opt("gamma"), gamma)
        self.exclude_same = bool(exclude_same)
        self.niter, self.nredo = check_int(_opt("niter"), niter), check_int(_opt("nredo"), nredo)
        self.seed = check_int(_opt("seed"), seed, 0)
        self.features = None if features is None else F.normalize(torch.as_tensor(features).float(), dim=1)
        self.centroids: Tensor | None = None
        self.refreshes = 0
        self._qc: Tensor | None = None
        self._kc: Tensor | None = None

    def get_extra_state(self) -> dict:
        return {"centroids": self.centroids, "refreshes": self.refreshes}

    def set_extra_state(self, state: dict) -> None:
        self.centroids, self.refreshes = state["centroids"], int(state["refreshes"])

    def fit(self, x: Tensor) -> Tensor:
        """Run spherical k-means on rows of ``x``; store and return the (C×d) centroids."""
        faiss = require("faiss", "mining")

        xs = np.ascontiguousarray(F.normalize(x.detach().float(), dim=1).cpu().numpy())
        if xs.shape[0] < self.n_clusters:
            raise ValueError(
                f"weighting option 'n_clusters' = {self.n_clusters} is larger than the {xs.shape[0]} points to cluster"
            )
        km = faiss.Kmeans(
            xs.shape[1],
            self.n_clusters,
            niter=self.niter,
            nredo=self.nredo,
            seed=self.seed,
            spherical=True,
            verbose=False,
            min_points_per_centroid=1,
        )
        km.train(xs)
        self.centroids = torch.from_numpy(km.centroids.copy())
        self.refreshes += 1
        return self.centroids

    def assign(self, x: Tensor) -> Tensor:
        """Nearest centroid (by inner product) of each row of ``x``."""
        assert self.centroids is not None
        return (x.float() @ self.centroids.to(x.device).T).argmax(1)

    def _clusters_of_ids(self, ids: Tensor | None, size: int, device: torch.device) -> Tensor:
        out = torch.full((size,), -1, dtype=torch.long, device=device)
        if ids is None:
            return out
        if self.features is None:  # clusters of the embeddings: ids name no table row
            return out
        ok = (ids >= 0) & (ids < self.features.shape[0])
        out[ok] = self.assign(self.features[ids[ok].cpu()]).to(device)
        return out

    def begin_step(self, ctx: StepContext) -> None:
        if self.features is not None:
            if self.centroids is None:
                self.fit(self.features)
            if ctx.q_ids is None:
                raise ValueError("cluster_guided with a features table needs sample ids (forward(..., ids=...))")
            self._qc = self._clusters_of_ids(ctx.q_ids, ctx.n, ctx.q.device)
            self._kc = self._clusters_of_ids(ctx.k_ids, ctx.m, ctx.q.device)
            return
        if self.centroids is None or ctx.step % self.every == 0:
            self.fit(ctx.k)
        self._qc = self.assign(ctx.q)
        self._kc = self.assign(ctx.k)

    def log_weights(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:
        if self._qc is None or self._kc is None:
            raise RuntimeError("cluster_guided: log_weights before begin_step (the strategy calls begin_step first)")
        qc = self._qc[rows]
        kc = self._kc
        same = (qc[:, None] == kc[None, :]) & (qc[:, None] >= 0)
        # γ s / t is the tilt of `hardneg.losses.tilt` with β = γ, on the other clusters only
        lw = (~same).to(S.dtype) * (self.bonus + cast(Tensor, tilt_log_weights(S, self.gamma, ctx.t)))
        if self.exclude_same:
            drop = same & valid
            has_other = (valid & ~same).any(1, keepdim=True)
            lw = lw.masked_fill(drop & has_other, NEG_INF)
        return lw

    def diagnostics(self) -> dict[str, float]:
        return {"cluster_refreshes": float(self.refreshes)}


class PairCalibrator(nn.Module):
    r"""Auxiliary MLP ``p̂(i, j) = σ(f(q_i, k_j, s_ij))``: the probability that the pair is really
    aligned, from the two embeddings, their (projected) element-wise product and their similarity.
    The first layer is ``A q + B k + C (P q ⊙ P k) + w s + b`` with a shared rank-``r`` projection
    P, applied in factorised form — ``C (Pq ⊙ Pk)_h = (Pq ⊙ C_h) · Pk`` — so a (c×m) block of pairs
    costs (c × H × m × r) flops and (c × H × m) memory, never a (c×m×3d) feature tensor.
    """

    def __init__(self, dim: int, hidden: int = 32, rank: int = 16) -> None:
        super().__init__()
        self.dim, self.hidden, self.rank = dim, hidden, rank
        self.A = nn.Linear(dim, hidden)
        self.B = nn.Linear(dim, hidden, bias=False)
        self.P = nn.Linear(dim, rank, bias=False)
        self.C = nn.Parameter(torch.randn(hidden, rank) * rank**-0.5)
        self.w = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Linear(hidden, 1)

    def pair_logits(self, q: Tensor, k: Tensor) -> Tensor:
        """Logits for aligned rows ``q[i], k[i]`` (both n×d)."""
        s = (q * k).sum(1, keepdim=True)
        h = F.relu(self.A(q) + self.B(k) + (self.P(q) * self.P(k)) @ self.C.T + s * self.w)
        return self.out(h)[:, 0]

    def block_logits(self, q: Tensor, k: Tensor, max_elems: int = 1 << 22) -> Tensor:
        """(c×m) logits for every pair of rows of q (c×d) and k (m×d), in row blocks."""
        c, m = q.shape[0], k.shape[0]
        step = max(1, max_elems // max(1, m * self.hidden))
        Bk = self.B(k)  # (m, H)
        Pk_t = self.P(k).T  # (r, m)
        Aq, Pq = self.A(q), self.P(q)
        outs = []
        for r0 in range(0, c, step):
            sl = slice(r0, r0 + step)
            s = q[sl] @ k.T  # (c', m)
            bil = ((Pq[sl, None, :] * self.C[None]) @ Pk_t).transpose(1, 2)  # (c', m, H)
            h = F.relu(Aq[sl, None, :] + Bk[None] + bil + s[..., None] * self.w)
            outs.append(self.out(h)[..., 0])
        return torch.cat(outs)


class Calibrated(Weighting):
    r"""Calibrated false-negative weighting: π_ij ∝ (1 − p̂_ij) × (the rest), with p̂ from a
    `PairCalibrator` trained jointly — after every training step, ``train_steps`` Adam
    steps of binary cross-entropy on the step's known positive pairs (label 1) against
    ``neg_per_anchor`` valid candidates (label 0) sampled without replacement, on detached
    embeddings; an anchor with fewer valid candidates gets fewer (never an invalid one), counted
    in the diagnostics as ``calibrator_short_anchors``. A suspected false negative (a
    near-duplicate the model scores like a positive) counts less.

    Args:
        hidden: MLP width. lr: Adam learning rate. train_steps: updates per training step.
        neg_per_anchor: sampled negatives per positive. floor: minimum 1 − p̂ (keeps log finite).
        seed: sampling seed. dim: embedding dimension (lazy when None).
    """

    kind = "calibrated"

    def __init__(
        self,
        hidden: int = 32,
        lr: float = 1e-2,
        train_steps: int = 1,
        neg_per_anchor: int = 4,
        floor: float = 1e-4,
        seed: int = 0,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        self.hidden = check_int(_opt("hidden"), hidden)
        self.lr = check_positive(_opt("lr"), lr)
        self.train_steps = check_int(_opt("train_steps"), train_steps)
        self.neg_per_anchor = check_int(_opt("neg_per_anchor"), neg_per_anchor)
        self.floor = check_number(_opt("floor"), floor, 0.0, 1.0, lo_open=True, hi_open=True)
        self.gen = torch.Generator().manual_seed(check_int(_opt("seed"), seed, 0))
        self.model: PairCalibrator | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.last_bce = float("nan")
        #: anchors of the last training step with fewer than neg_per_anchor negatives to draw
        self.short_anchors = 0
        if dim is not None:
            self._init(check_int(_opt("dim"), dim))

    def _init(self, dim: int) -> None:
        g_state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self.gen)))
        self.model = PairCalibrator(dim, self.hidden)
        torch.random.set_rng_state(g_state)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)

    def get_extra_state(self) -> dict:
        # deep copies: an optimiser's state_dict holds references to its live state tensors
        return {"rng": self.gen.get_state(), "opt": None if self.opt is None else copy.deepcopy(self.opt.state_dict())}

    def set_extra_state(self, state: dict) -> None:
        self.gen.set_state(state["rng"])
        if state.get("opt") is not None and self.opt is not None:
            self.opt.load_state_dict(state["opt"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        w = state_dict.get(prefix + "model.A.weight")
        if w is not None and self.model is None:  # the MLP is built lazily: build it to load it
            self._init(w.shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def begin_step(self, ctx: StepContext) -> None:
        if self.model is None:
            self._init(ctx.q.shape[1])
        self._mlp()[0].to(ctx.q.device)

    def _mlp(self) -> tuple[PairCalibrator, torch.optim.Optimizer]:
        """The MLP and its optimiser, built by `begin_step` (or ``dim``) before any use."""
        if self.model is None or self.opt is None:
            raise RuntimeError("calibrated: the MLP is built at the first step (begin_step) or by dim=")
        return self.model, self.opt

    @torch.no_grad()
    def p_hat(self, q: Tensor, k: Tensor) -> Tensor:
        """(c×m) predicted probabilities that pairs (q_i, k_j) are aligned."""
        return torch.sigmoid(self._mlp()[0].block_logits(q.float(), k.float()))

    def log_weights(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:
        with torch.no_grad():
            logits = self._mlp()[0].block_logits(ctx.q[rows].float(), ctx.k.float())
            return torch.clamp(F.logsigmoid(-logits), min=math.log(self.floor)).to(S.dtype)

    def fit_step(self, q: Tensor, k_pos: Tensor, k_neg: Tensor, neg_mask: Tensor | None = None) -> float:
        """One BCE step: (q_i, k_pos_i) aligned, (q_i, k_neg_ir) not (k_neg: n×r×d); ``neg_mask``
        (n×r bool) keeps only the real draws (an anchor with fewer valid candidates has fewer)."""
        n, r, d = k_neg.shape
        keep = torch.ones(n * r, dtype=torch.bool, device=q.device) if neg_mask is None else neg_mask.reshape(-1)
        model, opt = self._mlp()
        with torch.enable_grad():
            lp = model.pair_logits(q, k_pos)
            loss = F.binary_cross_entropy_with_logits(lp, torch.ones_like(lp))
            if bool(keep.any()):
                qn = q[:, None, :].expand(n, r, d).reshape(-1, d)[keep]
                ln = model.pair_logits(qn, k_neg.reshape(-1, d)[keep])
                loss = loss + F.binary_cross_entropy_with_logits(ln, torch.zeros_like(ln))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.last_bce = float(loss.detach())
        return self.last_bce

    def draw_negatives(self, ctx: StepContext, rows: Tensor, max_elems: int = 1 << 22) -> tuple[Tensor, Tensor]:
        """Up to ``neg_per_anchor`` distinct negatives of each anchor of ``rows``, uniform without
        replacement among the candidates the step's rule makes negatives (not itself, its positive,
        a same-id or someone else's candidate; under label positives not a same-label one). Returns
        ``(cols, ok)``, both (len(rows) × r): ``ok`` is False for the draws an anchor with fewer
        negatives does not have. Random keys, top-r per row, in blocks of rows of ``max_elems``."""
        r = min(self.neg_per_anchor, ctx.m)
        block = max(1, max_elems // max(1, ctx.m))
        cols, oks = [], []
        for r0 in range(0, rows.numel(), block):
            sel = rows[r0 : r0 + block]
            valid = ctx.relations.valid(sel, ctx.q.device)
            if ctx.label_positives:
                same = ctx.same_label(sel)
                if same is not None:
                    valid &= ~same.to(valid.device)
            keys = torch.rand(valid.shape, generator=self.gen).to(ctx.q.device).masked_fill(~valid, -1.0)
            top, c = torch.topk(keys, r, dim=1)
            cols.append(c)
            oks.append(top >= 0)
        if not cols:
            empty = torch.empty(0, r, dtype=torch.long, device=ctx.q.device)
            return empty, empty.bool()
        return torch.cat(cols), torch.cat(oks)

    def after_step(self, ctx: StepContext) -> None:
        if not self.training or ctx.pos_index is None:
            return
        has = ctx.pos_index >= 0
        q = ctx.q[has].float()
        kp = ctx.k[ctx.pos_index[has]].float()
        rows_all = torch.nonzero(has).flatten()
        for _ in range(self.train_steps):
            # never a positive, the anchor itself or another invalid candidate as a "negative": an
            # anchor with fewer negatives than neg_per_anchor gets fewer draws, counted below
            cols, ok = self.draw_negatives(ctx, rows_all)
            self.short_anchors = int((ok.sum(1) < self.neg_per_anchor).sum())
            self.fit_step(q, kp, ctx.k[cols].float(), ok)

    def diagnostics(self) -> dict[str, float]:
        return {"calibrator_bce": self.last_bce, "calibrator_short_anchors": float(self.short_anchors)}



LogWeightFn = Callable[[Tensor, slice], Tensor]
