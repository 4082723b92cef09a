r"""False-negative filters: masks that remove candidates which are probably not negatives.

Each filter returns a (c×m) boolean ``drop`` mask for one chunk of anchors; the strategy turns it
into −∞ log-weights. An anchor the filters leave without any candidate is skipped (no loss; see
`hardneg.losses.candidates`), counted in ``skipped_share``.

- `LabelFilter` — drop candidates with the anchor's label (SCL, H-SCL; Khosla et al. 2020).
- `IdFilter` — drop candidates of the same sample id, or of the same duplicate group
  (``groups[id]``): copies of one item under different ids.
- `SimilarityFilter` — sentence-transformers' ``mine_hard_negatives`` rules, with ``s_ip``
  the anchor–positive similarity: drop ``s_ij > max_score``, ``s_ij < min_score``,
  ``s_ij > s_ip − absolute_margin``, ``s_ij > s_ip − |s_ip| · relative_margin``.
- `GuideFilter` — GISTEmbed (Solatorio 2024): a guide model scores the anchor against the
  positive and each candidate; drop a candidate the guide scores above the positive
  (``g_ij > g_ip − margin``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.losses.candidates import label_columns, log_mask_, same_known_label
from hardneg.losses.checks import check_number
from hardneg.negatives.context import StepContext
from hardneg.negatives.sources import register_kind, simple_repr

FILTERS: dict[str, type] = {}  # kind -> Filter subclass, filled as subclasses are defined


class Filter(nn.Module):
    """Base class: ``drop(S, rows, ctx) -> (c×m) bool``."""

    kind = "base"
    schedulable: tuple[str, ...] = ()
    needs_positive = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_kind(FILTERS, cls)

    def drop(self, S: Tensor, rows: slice, ctx: StepContext) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    #: implements `drop_`, so a strategy may fuse it into the kernel's blocks
    fused = False

    def drop_(self, X: Tensor, rows: slice, ctx: StepContext, sp: Tensor) -> None:
        """The same rule as `drop`, in place on a block ``X`` of the kernel's tile (cosine
        similarities / ``ctx.t``, −∞ where already invalid; ``sp`` the positives' ``X``): writes −∞
        on the dropped candidates."""
        X.masked_fill_(self.drop(X * ctx.t, rows, ctx), float("-inf"))

    def begin_step(self, ctx: StepContext) -> None:
        """Per-step preparation (e.g. guide embeddings)."""

    def row_bounds(self, ctx: StepContext, sp: Tensor) -> tuple[Tensor | None, Tensor | None] | None:
        """`drop_` as per-row bounds of the native row pass (`hardneg.losses.native.RowRule`): a
        block's row keeps ``lo_i ≤ X_ij ≤ hi_i`` (None: unbounded; ``(None, None)``: nothing to
        drop in this step), or None when the rule has no such form (the kernel's blocks run it)."""
        return None

    def extra_repr(self) -> str:
        return simple_repr(self)


class LabelFilter(Filter):
    """Drop candidates that share the anchor's label (unknown labels, −1, are kept)."""

    kind = "label"
    fused = True

    def drop(self, S: Tensor, rows: slice, ctx: StepContext) -> Tensor:
        same = ctx.same_label(rows)
        if same is None:
            raise ValueError("filter 'label' needs labels: call forward(z1, z2, labels=...)")
        return same

    def drop_(self, X: Tensor, rows: slice, ctx: StepContext, sp: Tensor) -> None:
        """−∞ written at the columns of each anchor's label (`label_columns`): the rule reads no
        similarity, and a scatter costs a few entries per row where a boolean tile costs ten passes."""
        if ctx.q_labels is None or ctx.k_labels is None:
            raise ValueError("filter 'label' needs labels: call forward(z1, z2, labels=...)")
        cols, same = label_columns(ctx.q_labels[rows], ctx.k_labels, ctx.label_order())
        r = torch.arange(cols.shape[0], device=cols.device)[:, None].expand_as(cols)
        X[r[same], cols[same]] = float("-inf")


class IdFilter(Filter):
    """Drop candidates with the anchor's sample id or, with ``groups`` (a (num_ids,) tensor of
    duplicate-group numbers), with the anchor's group."""

    kind = "id"
    fused = True

    def __init__(self, groups: Tensor | None = None) -> None:
        super().__init__()
        self.groups = None if groups is None else torch.as_tensor(groups).long()

    def _g(self, ids: Tensor) -> Tensor:
        if self.groups is None:
            return ids
        ok = (ids >= 0) & (ids < len(self.groups))
        out = torch.full_like(ids, -1)
        out[ok] = self.groups.to(ids.device)[ids[ok]]
        return out

    def drop(self, S: Tensor, rows: slice, ctx: StepContext) -> Tensor:
        if ctx.q_ids is None or ctx.k_ids is None:
            raise ValueError("filter 'id' needs sample ids: call forward(z1, z2, ids=...)")
        return same_known_label(self._g(ctx.q_ids[rows]), self._g(ctx.k_ids))

    _only_own = False

    def begin_step(self, ctx: StepContext) -> None:
        self._only_own = self._only_self_and_positive(ctx)

    def _only_self_and_positive(self, ctx: StepContext) -> bool:
        """Whether each anchor's only same-id (same-group) candidates are itself and its positive
        — a batch of distinct ids —, found in O(n + m) from the counts of each id among the
        candidates. The kernel's blocks mask those two anyway, so `drop_` has nothing to do."""
        if ctx.q_ids is None or ctx.k_ids is None or ctx.pos_index is None:
            return False
        gq, gk = self._g(ctx.q_ids), self._g(ctx.k_ids)
        vals, counts = torch.unique(gk[gk >= 0], return_counts=True)
        if vals.numel() == 0:
            return True
        at = torch.searchsorted(vals, gq).clamp(max=vals.numel() - 1)
        known = (gq >= 0) & (vals[at] == gq)
        same = torch.where(known, counts[at], torch.zeros_like(counts[at]))
        own = torch.zeros_like(same)
        for col in (ctx.self_index, ctx.pos_index):
            own += ((col >= 0) & (gk[col.clamp(min=0)] == gq) & (gq >= 0)).long()
        return bool((same == own).all())

    def drop_(self, X: Tensor, rows: slice, ctx: StepContext, sp: Tensor) -> None:
        if not self._only_own:
            X.masked_fill_(self.drop(X, rows, ctx), float("-inf"))  # the rule reads no similarity

    def row_bounds(self, ctx: StepContext, sp: Tensor) -> tuple[Tensor | None, Tensor | None] | None:
        return (None, None) if self._only_own else None


def _opt(name: str, v: Any, lo: float, hi: float) -> float | None:
    """An optional number option of a filter (None: the rule is off)."""
    return None if v is None else check_number(f"filter option {name!r}", v, lo, hi)


class SimilarityFilter(Filter):
    """Similarity-threshold / margin-to-positive filter (sentence-transformers ``mine_hard_negatives``).

    Args:
        max_score: drop candidates with ``s_ij > max_score``. min_score: drop ``s_ij < min_score``.
        absolute_margin: drop ``s_ij > s_ip − absolute_margin`` (must be ≥ 0).
        relative_margin: drop ``s_ij > s_ip − |s_ip| · relative_margin`` (≥ 0, as in offline mining).
    """

    kind = "similarity"
    schedulable = ("max_score", "absolute_margin", "relative_margin")

    def __init__(
        self,
        max_score: float | None = None,
        min_score: float | None = None,
        absolute_margin: float | None = None,
        relative_margin: float | None = None,
    ) -> None:
        super().__init__()
        rules = check_similarity_rules(max_score=max_score, min_score=min_score, absolute_margin=absolute_margin,
                                       relative_margin=relative_margin, what="filter 'similarity' option")
        self.max_score, self.min_score = rules["max_score"], rules["min_score"]
        self.absolute_margin, self.relative_margin = rules["absolute_margin"], rules["relative_margin"]
        if all(v is None for v in rules.values()):
            raise ValueError(
                "filter 'similarity' needs at least one of max_score, min_score, absolute_margin, relative_margin"
            )
        self.needs_positive = absolute_margin is not None or relative_margin is not None

    def drop(self, S: Tensor, rows: slice, ctx: StepContext) -> Tensor:
        d = torch.zeros_like(S, dtype=torch.bool)
        sp = ctx.s_pos(S, rows) if self.needs_positive else None
        for m in self._drops(S, sp).values():
            d |= m
        return d

    fused = True

    def _rules(self) -> dict[str, float | None]:
        return {"max_score": self.max_score, "min_score": self.min_score,
                "absolute_margin": self.absolute_margin, "relative_margin": self.relative_margin}

    def _drops(self, S: Tensor, sp: Tensor | None) -> dict[str, Tensor]:
        return similarity_drops(S, sp, **self._rules())

    def drop_(self, X: Tensor, rows: slice, ctx: StepContext, sp: Tensor) -> None:
        """`drop` in place, one rule at a time: X = s / t is compared with threshold / t."""
        t = ctx.t
        y = ctx.scratch(X)  # a step scratch tile (`StepContext.scratch`): no fresh tile per block
        for above, th in similarity_thresholds(sp * t if self.needs_positive else None, **self._rules()).values():
            # kept: X ≤ th/t (above) or X ≥ th/t, as a log-mask of th/t − X ≥ 0 (float passes only);
            # a NaN threshold (no positive) drops nothing, as a comparison with it is false
            if isinstance(th, Tensor):
                th = torch.nan_to_num(th, nan=math.inf if above else -math.inf)
            torch.sub(th / t, X, out=y) if above else torch.sub(X, th / t, out=y)
            X.add_(log_mask_(y, inclusive=True))

    def row_bounds(self, ctx: StepContext, sp: Tensor) -> tuple[Tensor | None, Tensor | None] | None:
        """`drop_`'s rules as bounds: X ≤ th/t for the rules that drop above, X ≥ th/t for the others
        (the same float32 thresholds, so the same candidates are kept)."""
        t, c = ctx.t, sp.shape[0]
        lo: Tensor | None = None
        hi: Tensor | None = None
        for above, th in similarity_thresholds(sp * t if self.needs_positive else None, **self._rules()).values():
            if isinstance(th, Tensor):
                bound = torch.nan_to_num(th / t, nan=math.inf if above else -math.inf).reshape(c)
            else:
                bound = torch.full((c,), th / t, dtype=sp.dtype, device=sp.device)
            if above:
                hi = bound if hi is None else torch.minimum(hi, bound)
            else:
                lo = bound if lo is None else torch.maximum(lo, bound)
        return lo, hi


#: the range of each similarity rule (scores are cosine similarities); ``relative_margin`` is any
#: finite r ≥ 0 (r > 1 puts the threshold below zero, which sentence-transformers allows too)
SIMILARITY_RULES: dict[str, tuple[float, float]] = {
    "max_score": (-1.0, 1.0),
    "min_score": (-1.0, 1.0),
    "absolute_margin": (0.0, 2.0),
    "relative_margin": (0.0, math.inf),
}


def check_similarity_rules(
    *,
    max_score: Any = None,
    min_score: Any = None,
    absolute_margin: Any = None,
    relative_margin: Any = None,
    what: str = "option",
) -> dict[str, float | None]:
    """The one validation of the rules of `similarity_drops`, for every place that takes them
    (`SimilarityFilter`, ``MineConfig`` / ``hardneg mine``, the sentence-transformers loss
    through the filter, and `similarity_drops` itself).

    Each rule is None (off) or a finite number in its range (`SIMILARITY_RULES`: scores in
    [−1, 1], an absolute margin in [0, 2] — a larger one drops every cosine whatever the positive
    scores —, a relative margin ≥ 0), and ``min_score ≤ max_score`` (otherwise every candidate is
    dropped). ``what`` starts the error message (``"filter 'similarity' option"``). Returns the
    values as floats (None where off)."""
    given = {"max_score": max_score, "min_score": min_score, "absolute_margin": absolute_margin,
             "relative_margin": relative_margin}
    out: dict[str, float | None] = {}
    for name, v in given.items():
        lo, hi = SIMILARITY_RULES[name]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or not lo <= v <= hi):
            raise ValueError(f"{what} {name!r} must be None or a finite number in [{lo}, {hi}], got {v!r}")
        out[name] = None if v is None else float(v)
    lo_s, hi_s = out["min_score"], out["max_score"]
    if lo_s is not None and hi_s is not None and lo_s > hi_s:
        raise ValueError(
            f"{what} 'min_score' ({lo_s}) must be <= 'max_score' ({hi_s}): every candidate would be dropped"
        )
    return out


def similarity_drops(
    S: Tensor,
    s_pos: Tensor | None,
    *,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
) -> dict[str, Tensor]:
    """The similarity rules of sentence-transformers' ``mine_hard_negatives``, one definition for the
    strategies' `SimilarityFilter`, offline mining and the sentence-transformers loss.

    ``S`` (c×m) candidate similarities, ``s_pos`` (c,) each anchor's positive similarity (NaN where
    it has none: the margins do not apply there). Returns ``{rule: (c×m) drop mask}`` for the rules
    that are set: ``max_score`` drops ``s > max_score``, ``min_score`` drops ``s < min_score``,
    ``absolute_margin`` drops ``s > s_p − absolute_margin``, ``relative_margin`` drops
    ``s > s_p − |s_p| · relative_margin`` (sentence-transformers' rule). The values are checked by
    `check_similarity_rules` (a schedule that drives one out of its range is refused here).
    """
    rules = similarity_thresholds(s_pos, max_score=max_score, min_score=min_score,
                                  absolute_margin=absolute_margin, relative_margin=relative_margin)
    return {rule: (th < S) if above else (th > S) for rule, (above, th) in rules.items()}


def similarity_thresholds(
    s_pos: Tensor | None,
    *,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
) -> dict[str, tuple[bool, float | Tensor]]:
    """The thresholds of `similarity_drops`: ``{rule: (above, threshold)}`` for the rules
    that are set — the rule drops ``s > threshold`` (``above``) or ``s < threshold``. A margin's
    threshold is a (c, 1) column from ``s_pos``, NaN where the anchor has no positive (a NaN
    threshold drops nothing: every comparison with it is false)."""
    check_similarity_rules(max_score=max_score, min_score=min_score, absolute_margin=absolute_margin,
                           relative_margin=relative_margin, what="similarity rule")
    out: dict[str, tuple[bool, float | Tensor]] = {}
    if max_score is not None:
        out["max_score"] = (True, max_score)
    if min_score is not None:
        out["min_score"] = (False, min_score)
    if absolute_margin is not None or relative_margin is not None:
        if s_pos is None:
            raise ValueError("absolute_margin / relative_margin need each anchor's positive similarity")
        sp = s_pos[:, None]
        if absolute_margin is not None:
            out["absolute_margin"] = (True, sp - absolute_margin)
        if relative_margin is not None:
            # s_p − |s_p|·r rather than s_p·(1 − r): the threshold stays below s_p when s_p < 0
            out["relative_margin"] = (True, sp - sp.abs() * relative_margin)
    return out


def guide_drops(g: Tensor | np.ndarray, g_pos: Tensor | np.ndarray, margin: float):
    """GISTEmbed's rule, one definition for the strategies' `GuideFilter` and offline mining:
    drop a candidate the guide scores above the positive, ``g > g_pos − margin``."""
    return g > g_pos - margin


class GuideFilter(Filter):
    """GISTEmbed's guided in-batch negative filter (Solatorio, "GISTEmbed: Guided In-sample
    Selection of Training Negatives", 2024): with guide similarities ``g_ij`` (cosine between the
    guide model's embeddings of the samples), drop candidate j of anchor i if ``g_ij > g_ip − margin``.

    Args:
        guide: the guide model's embeddings, indexed by sample id: a (num_ids × d_g) tensor used
            for both views (then ``g_ip`` = 1: use a margin), or a pair ``(anchors_table,
            positives_table)`` — e.g. the guide's embeddings of the query texts and of the
            positive texts — used for rows from ``z1`` and from ``z2`` / queued keys
            respectively, or a callable ``(ids, view) -> (len(ids) × d_g)``. Candidates without
            an id (−1) are kept.
        margin: absolute margin (GISTEmbed: 0).
    """

    kind = "guide"
    schedulable = ("margin",)
    needs_positive = True

    def __init__(self, guide: Any, margin: float = 0.0) -> None:
        super().__init__()
        if isinstance(guide, Tensor):
            guide = (guide, guide)
        if isinstance(guide, (tuple, list)):
            if len(guide) != 2 or not all(isinstance(g, Tensor) and g.dim() == 2 for g in guide):
                raise ValueError("filter 'guide': guide must be a (num_ids, d_g) tensor or a pair of them")
            if guide[0].shape != guide[1].shape:
                raise ValueError(
                    f"filter 'guide': the two guide tables must have one shape, got "
                    f"{tuple(guide[0].shape)} and {tuple(guide[1].shape)}"
                )
            # plain tensors, not a closure over them: the filter pickles and deep-copies
            self.tables: tuple[Tensor, Tensor] | None = (guide[0].float(), guide[1].float())
            self.guide: Callable[[Tensor, int], Tensor] | None = None
            self.num_ids: int | None = self.tables[0].shape[0]
        elif callable(guide):
            self.tables = None
            self.guide = guide
            self.num_ids = None
        else:
            raise TypeError(
                "filter 'guide': guide must be a (num_ids, d_g) tensor, a pair of them, "
                "or a callable (ids, view) -> embeddings"
            )
        self.margin = _opt("margin", margin, -2.0, 2.0)
        self._gq: Tensor | None = None
        self._gk: Tensor | None = None
        self._kok: Tensor | None = None

    def lookup(self, ids: Tensor, view: int) -> Tensor:
        """The guide's embeddings of samples ``ids`` seen from ``view`` (0: anchors' table, 1: positives')."""
        if self.tables is not None:
            return self.tables[view][ids.cpu()]
        assert self.guide is not None  # __init__ sets tables or guide
        return self.guide(ids, view)

    def _embed(self, ids: Tensor, view: Tensor | None) -> tuple[Tensor, Tensor]:
        ok = ids >= 0
        if self.num_ids is not None:
            ok &= ids < self.num_ids
        view = torch.ones_like(ids) if view is None else view
        out = None
        for v in (0, 1):
            sel = ok & (view == v)
            if not bool(sel.any()):
                continue
            emb = torch.as_tensor(self.lookup(ids[sel], v)).float().cpu()
            if out is None:
                out = torch.zeros(len(ids), emb.shape[1])
            out[sel.cpu()] = emb
        if out is None:
            out = torch.zeros(len(ids), 1)
        return F.normalize(out, dim=1).to(ids.device), ok

    def begin_step(self, ctx: StepContext) -> None:
        if ctx.q_ids is None or ctx.k_ids is None:
            raise ValueError("filter 'guide' needs sample ids: call forward(z1, z2, ids=...)")
        self._gq, _ = self._embed(ctx.q_ids, ctx.q_view)
        self._gk, self._kok = self._embed(ctx.k_ids, ctx.k_view)

    def drop(self, S: Tensor, rows: slice, ctx: StepContext) -> Tensor:
        if ctx.pos_index is None:
            raise ValueError("filter 'guide' needs a positive per anchor (two views z1, z2)")
        if self._gq is None or self._gk is None or self._kok is None:
            raise RuntimeError("filter 'guide': drop before begin_step (the strategy calls begin_step first)")
        G = self._gq[rows] @ self._gk.T
        pi = ctx.pos_index[rows]
        r = torch.arange(G.shape[0], device=G.device)
        gp = G[r, pi.clamp(min=0)]
        d = guide_drops(G, gp[:, None], 0.0 if self.margin is None else self.margin)
        d &= (pi >= 0)[:, None] & self._kok[None, :]
        return d.to(S.device)


