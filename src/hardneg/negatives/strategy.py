r"""``Strategy``: a negative-sampling strategy as one ``nn.Module`` (docs/design.md §1).

A strategy is *where candidates come from* (sources), *which are masked out* (filters) and *how
π is shaped* (weightings, β tilt), followed by the one chunked kernel
`hardneg.losses.weighted_info_nce`::

    L_i = −log( e^{s_ip/t} / ( e^{s_ip/t} + N · Σ_j π_ij e^{s_ij/t} ) ),
    π_ij ∝ exp(β s_ij / t + a_ij)  over valid candidates j,

where ``a_ij`` is the sum of the weightings' log-weights and −∞ on masked candidates. Filters and
weightings run inside the kernel's ``log_weight_fn`` one chunk of anchors at a time, so nothing of
size (anchors × candidates) beyond a chunk is ever built.

Example::

    from hardneg.negatives import Strategy, MemoryQueue, LabelFilter, Linear
    s = Strategy(source=MemoryQueue(4096), filters=[LabelFilter()], beta=1.0,
                 schedule={"beta": Linear(0.0, 2.0, steps=1000)})
    loss = s(z1, z2, labels=y, ids=idx)   # then s.last_diagnostics
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from hardneg.losses import native
from hardneg.losses.candidates import finite_count, nominal_n, safe_normalize
from hardneg.losses.checks import (
    POSITIVE_REDUCES,
    POSITIVES,
    REDUCTIONS,
    check_beta,
    check_choice,
    check_chunk_size,
    check_embeddings,
    check_int,
    check_n_neg,
    check_tags,
    check_tau_plus,
    resolve_temperature,
)
from hardneg.losses.kernel import Kept, weighted_info_nce
from hardneg.negatives.context import StepContext
from hardneg.negatives.diagnostics import DiagnosticsAccumulator
from hardneg.negatives.filters import Filter, LabelFilter
from hardneg.negatives.pixels import PixelGrid
from hardneg.negatives.schedules import Schedule, make_schedule
from hardneg.negatives.sources import Anchors, Candidates, InBatch, Source
from hardneg.negatives.weighting import NEG_INF, Weighting

FAMILIES = ("infonce", "supcon", "decoupled")
_CORE_SCHEDULABLE = ("beta", "t", "temperature", "tau_plus")


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _typed(items: Any, cls: type, what: str) -> list:
    out = _as_list(items)
    for x in out:
        if not isinstance(x, cls):
            raise TypeError(f"{what} must be {cls.__name__} objects, got {type(x).__name__}")
    return out


def _inverse_scale(logit_scale: Tensor) -> float:
    """t = 1 / logit_scale, checked: a positive finite scalar tensor."""
    if not isinstance(logit_scale, Tensor) or logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar tensor, got {logit_scale!r}")
    v = float(logit_scale.detach())
    if not (v > 0.0 and v < float("inf")):
        raise ValueError(f"logit_scale must be positive and finite, got {v}")
    return 1.0 / v


class _BlockRecords:
    """The diagnostics' sampled rows, as the kernel's blocks see them (``Strategy._block_weights``,
    ``Strategy._rows_weights``): their values before the filters and the weighting and what each
    entry gained by them (−∞ where they removed it), in two preallocated (rows × m) buffers — the
    native row pass writes both itself, the blocks copy each once — recorded at once when the
    buffers are full; closed after the forward pass (a recompute in the backward records nothing)."""

    #: elements of one buffer: 128 rows at m = 8,192 (4 MB of float32), and never fewer than 32 rows
    _BUFFER = 1 << 20

    def __init__(self, acc: DiagnosticsAccumulator | None) -> None:
        self.acc = acc
        self._rows_t = torch.empty(0, dtype=torch.long) if acc is None else acc.sample_rows()
        self.rows = self._rows_t.tolist()  # sorted
        self._pos: Tensor | None = None  # (n,) int32: each sampled row's place in the sample, −1 elsewhere
        self.closed = acc is None
        self.n = 0  # rows kept in the buffers
        self.log_mask = False  # the blocks' log-weights are 0 or −∞ (`DiagnosticsAccumulator.update`)
        self.X0 = self.X1 = self.fb = torch.empty(0)
        self.gid: list[int] = []  # global rows kept, in buffer order

    def _span(self, rows: slice) -> tuple[int, int]:
        """The places in the sample of the first sampled row of ``rows`` and of the first after them."""
        return bisect.bisect_left(self.rows, rows.start), bisect.bisect_left(self.rows, rows.stop)

    def sampled(self, rows: slice, device: torch.device) -> Tensor | None:
        """Local indices of the block's sampled rows (None: none, or closed)."""
        if self.closed:
            return None
        lo, hi = self._span(rows)
        if lo == hi:
            return None
        return (self._rows_t[lo:hi] - rows.start).to(device)

    def room(self, X: Tensor, k: int) -> bool:
        """Whether ``k`` more rows fit; empty buffers are (re)allocated for X's width and at least
        ``k`` rows, so after a flush they always fit."""
        if self.n + k <= self.X0.shape[0]:
            return True
        if self.n:
            return False
        cap = max(k, 32, min(128, self._BUFFER // max(X.shape[1], 1)))
        self.X0 = X.new_empty(cap, X.shape[1])
        self.X1 = torch.empty_like(self.X0)
        self.fb = torch.zeros(cap, dtype=torch.bool, device=X.device)
        return True

    def slots(self, rows: slice) -> Tensor:
        """(c,) int32 for a native pass over the block of ``rows``: the buffer row of each of its
        sampled rows (their order, `note`'s), negative elsewhere; one subtraction per block, from the
        sample's places made once per step."""
        if self._pos is None:
            n = 0 if self.acc is None else self.acc.n
            self._pos = torch.full((n,), -1, dtype=torch.int32)
            self._pos[self._rows_t] = torch.arange(len(self.rows), dtype=torch.int32)
        return self._pos[rows.start : rows.stop] - self._span(rows)[0]

    def note(self, rows: slice) -> tuple[Tensor, Tensor]:
        """The sampled rows of the block of ``rows`` take the next rows of the buffers (call after
        `room`), returned (values before, log-weights) for a pass that writes them itself."""
        lo, hi = self._span(rows)
        self.gid.extend(self.rows[lo:hi])
        return self.X0[self.n :], self.X1[self.n :]

    def before(self, X: Tensor, loc: Tensor, rows: slice) -> None:
        """The sampled rows ``loc`` of block X before the filters and the weighting."""
        x0, _ = self.note(rows)
        torch.index_select(X, 0, loc, out=x0[: loc.numel()])

    def after(self, X: Tensor, loc: Tensor, fallback: Tensor | None, kept: Kept | None = None) -> None:
        """What the same rows gained (a selection that returned its ``kept`` entries apart from the
        block: those over −∞); the rows where the weighting was ignored."""
        n1 = self.n + loc.numel()
        X1 = self.X1[self.n : n1]
        if kept is None:
            torch.index_select(X, 0, loc, out=X1)
        else:
            kept.rows(loc).write_(X1)
        X1.sub_(self.X0[self.n : n1])
        X1.masked_fill_(X1.isnan(), NEG_INF)  # −∞ − (−∞): removed before the filters already
        self.done(loc.numel(), None if fallback is None else torch.index_select(fallback, 0, loc))

    def done(self, k: int, fallback: Tensor | None) -> None:
        """The ``k`` rows of the last `note` are written; the rows of them the weighting's fallback took."""
        if fallback is not None:
            self.fb[self.n : self.n + k] = fallback
        self.n += k

    def take(self, ctx: StepContext) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(cosines, log-weights, global rows, fallback rows) of the kept rows; empties the buffers.
        The cosines get the positive's and the anchor's own entries back (−∞ in the block: the
        log-weights stay −∞ there)."""
        n = self.n
        X0, lw = self.X0[:n], self.X1[:n]
        gid = torch.tensor(self.gid, device=X0.device)
        if ctx.pos_index is None:  # fused strategies have one positive per anchor (Strategy._fusable)
            raise ValueError("fused diagnostics need each anchor's positive")
        # the positive's cosine from the embeddings (n dot products), as the plain path reads it
        ar = torch.arange(n, device=X0.device)
        pcol = ctx.pos_index[gid]
        S = X0.mul_(ctx.t)
        S[ar, pcol] = (ctx.q[gid].to(S.dtype) * ctx.k[pcol].to(S.dtype)).sum(1)
        si = ctx.self_index[gid]
        S[ar[si >= 0], si[si >= 0]] = 1.0  # unit vectors; an invalid entry, read by no statistic
        fb = self.fb[:n].clone()
        self.fb.zero_()
        self.n = 0
        self.gid = []
        return S, lw, gid, fb


class Strategy(nn.Module):
    r"""Composable negative-sampling strategy; ``forward`` returns the loss (a scalar by default).

    Args:
        source: a source or list of sources applied in order after the batch block
            (`InBatch` options may be given as the first item;
            `MemoryQueue`, `ExternalPool`,
            `Mixing`,
            `AdversarialBank`,
            `NegativeGenerator`).
        filters: false-negative filters (`hardneg.negatives.filters`). An anchor whose every
            candidate the filters remove is skipped (`hardneg.losses.candidates`).
        weighting: a weighting or list of weightings (`hardneg.negatives.weighting`); their
            log-weights add, and selecting ones (top-k, semi-hard) act on what is still valid. A
            weighting that would leave an anchor no candidate is ignored for that anchor
            (``weighting_fallback_share``).
        family: the loss family — ``"infonce"`` (positive in the denominator), ``"supcon"`` (Khosla
            L_out: every same-label sample is a positive, positive not added to the denominator)
            or ``"decoupled"`` (Yeh et al.: positive removed from the denominator).
        positives: ``"view"`` (the other view) or ``"labels"`` (every same-label candidate, H-SCL
            paper code); ``family="supcon"`` implies ``"labels"``.
        positive_reduce: with label positives, ``"mean"`` (SupCon) or ``"pairs"`` (H-SCL code).
        reduction: ``"mean"`` (over the anchors that are not skipped), ``"sum"`` or ``"none"``
            (per-anchor losses, 0 for skipped anchors).
        temperature: the temperature t (alias ``t``). beta: hardness tilt β ≥ 0 (HCL / H-SCL),
            π ∝ e^{β s / t}, applied by the kernel.
        tau_plus: τ⁺ of the debiased estimator (Chuang et al. DCL). clamp: clamp it at N e^{−1/t}
            (default True).
        detach_weights: no gradient through the β tilt (paper code keeps it: False). An option that
            cannot act (``clamp`` given with τ⁺ = 0, ``detach_weights`` at β = 0,
            ``positive_reduce="pairs"`` with view positives; a schedule of τ⁺ or β counts as acting)
            is warned about when the strategy is built.
        n_neg: ``"count"`` (N = number of valid candidates: plain sums), ``"nominal"`` (N = all
            candidates but the anchor and its positive: HCL / H-SCL's 2B − 2) or a number.
        schedule: ``{param: Schedule or mapping}`` — param is ``beta``, ``temperature`` (``t``),
            ``tau_plus`` or an attribute listed in a component's ``schedulable`` (``k``,
            ``max_score``, …). The whole range of each schedule is checked when it is built.
        diagnostics: compute `last_diagnostics` every step (default True).
        diagnostics_anchors: the diagnostics are computed on this many anchors, evenly spaced
            (default 128; None: all), which keeps them cheap for large batches.
        chunk_size: anchors per kernel chunk (None: the kernel's default).

    ``forward(z1, z2=None, labels=None, ids=None, step=None, negatives=None)``: ``z1``/``z2`` are
    (B×d) views; ``labels`` and ``ids`` (B,) ints ≥ −1 (−1 = unknown); ``step`` the global step (an
    internal counter when None); ``negatives`` extra explicit negatives, (r×d) or (B×r×d), shared
    by every anchor (e.g. embeddings of meaning-changing text rewrites, or mined negatives).

    ``anchor_rows`` (keyword only) computes the loss of those anchors only (indices into the
    anchors the batch makes: ``[z1; z2]`` for two symmetric views) against every candidate, and
    ``mean_denominator`` replaces the mean's denominator (see
    `weighted_info_nce`): how a distributed step splits the global batch's
    anchors over processes (`hardneg.distributed.DistributedStrategy`). Sources, weightings
    and their state still see every anchor. ``detach_candidates=True`` lets the gradient reach the
    anchors only, not the candidate rows (positives included): open_clip's ``local_loss`` without
    ``gather_with_grad``, where the other processes' rows arrive without gradient.

    Explicit negatives are shared by every anchor unless
    ``negatives_per_anchor=True``: then ``negatives[b]`` (B×r×d) belong to the ``z1`` anchor of
    sample b only (its owner, `hardneg.losses.candidates`) — the edits of one caption are
    negatives of its own image, not of the others. They count as ``z2``-view candidates.
    ``logit_scale``: a scalar tensor 1/t (CLIP's exponentiated, learnable ``logit_scale``) used
    for this call instead of ``temperature``; the loss is differentiable in it, and filters,
    weightings and diagnostics see cosine similarities and t = 1/logit_scale.
    ``grid``: the `PixelGrid` that encoded ``ids`` as pixel positions,
    handed to the components in the step context (`NeighbourhoodFilter`
    and `Proximity` read positions only through it);
    `hardneg.dense.DenseContrast` passes its feature map's grid.
    """

    def __init__(
        self,
        source: Source | Sequence[Source] | None = None,
        filters: Filter | Sequence[Filter] | None = None,
        weighting: Weighting | Sequence[Weighting] | None = None,
        family: str = "infonce",
        temperature: float | None = None,
        beta: float = 0.0,
        tau_plus: float = 0.0,
        clamp: bool | None = None,
        detach_weights: bool = False,
        positives: str = "view",
        positive_reduce: str = "mean",
        reduction: str = "mean",
        n_neg: str | float = "count",
        schedule: Mapping[str, Any] | None = None,
        diagnostics: bool = True,
        diagnostics_anchors: int | None = 128,
        chunk_size: int | None = None,
        name: str = "custom",
        t: float | None = None,
    ) -> None:
        super().__init__()
        sources = _typed(source, Source, "source")
        self.in_batch = sources.pop(0) if sources and isinstance(sources[0], InBatch) else InBatch()
        if any(isinstance(s, InBatch) for s in sources):
            raise ValueError("source: in_batch may only be the first source")
        self.sources = nn.ModuleList(sources)
        self.filters = nn.ModuleList(_typed(filters, Filter, "filters"))
        self.weightings = nn.ModuleList(_typed(weighting, Weighting, "weighting"))
        for opt, val, allowed in (
            ("family", family, FAMILIES), ("positives", positives, POSITIVES),
            ("positive_reduce", positive_reduce, POSITIVE_REDUCES), ("reduction", reduction, REDUCTIONS),
        ):
            check_choice(opt, val, allowed)
        n_neg = check_n_neg(n_neg)
        if family == "decoupled" and positives == "labels":
            raise ValueError(
                "family='decoupled' removes the one positive from the denominator (positives='view'); "
                "with label positives that is family='supcon'"
            )
        self.family, self.positive_reduce, self.reduction = family, positive_reduce, reduction
        self.positives = "labels" if family == "supcon" else positives
        self.t = resolve_temperature(t, temperature, default=0.5)
        self.beta, self.tau_plus = float(beta), float(tau_plus)
        self._check_core()
        self.clamp = True if clamp is None else bool(clamp)
        self.detach_weights, self.n_neg = bool(detach_weights), n_neg
        if diagnostics_anchors is not None:
            diagnostics_anchors = check_int("diagnostics_anchors", diagnostics_anchors)
        self.diagnostics, self.diagnostics_anchors = bool(diagnostics), diagnostics_anchors
        self.chunk_size, self.name = check_chunk_size(chunk_size), name
        self.schedules: dict[str, Schedule] = {}
        for key, spec in (schedule or {}).items():
            self._targets(key)  # raises on unknown names
            self.schedules[key] = make_schedule(spec, key)
        self._warn_inert(clamp, detach_weights)
        self._step = 0
        self.last_diagnostics: dict[str, float] = {}

    @property
    def temperature(self) -> float:
        """The temperature t (the attribute ``t`` is its short alias)."""
        return self.t

    @temperature.setter
    def temperature(self, v: float) -> None:
        self.t = float(v)

    # ----------------------------------------------------------------------------------------
    def _check_core(self) -> None:
        resolve_temperature(self.t, None)
        check_beta(self.beta)
        check_tau_plus(self.tau_plus)

    def _warn_inert(self, clamp: bool | None, detach_weights: bool) -> None:
        """Warn, when the strategy is built, about an option that cannot change anything here."""
        inert = []
        if self.positive_reduce == "pairs" and self.positives == "view":
            inert.append("positive_reduce='pairs' acts on label positives only; with positives='view' each "
                         "anchor has one positive")
        if clamp is not None and self.tau_plus == 0.0 and "tau_plus" not in self.schedules:
            inert.append("clamp acts on the debiased estimator only; tau_plus is 0")
        if self.detach_weights and self.beta == 0.0 and "beta" not in self.schedules:
            inert.append("detach_weights acts on the beta tilt only; beta is 0 (uniform weights have no gradient)")
        for line in inert:
            warnings.warn(f"strategy option {line}", UserWarning, stacklevel=3)

    # the ModuleLists hold these types (checked in __init__); typed views of them
    def _sources(self) -> list[Source]:
        return cast("list[Source]", list(self.sources))

    def _filters(self) -> list[Filter]:
        return cast("list[Filter]", list(self.filters))

    def _weightings(self) -> list[Weighting]:
        return cast("list[Weighting]", list(self.weightings))

    def components(self) -> list[nn.Module]:
        return [self.in_batch, *self.sources, *self.filters, *self.weightings]

    def _targets(self, key: str) -> list[Any]:
        if key in _CORE_SCHEDULABLE:
            return [self]
        hits = [c for c in self.components() if key in getattr(c, "schedulable", ())]
        if not hits:
            avail = sorted(set(_CORE_SCHEDULABLE).union(*(getattr(c, "schedulable", ()) for c in self.components())))
            raise ValueError(f"schedule: unknown parameter {key!r} for this strategy; schedulable: {avail}")
        return hits

    def set_step(self, step: int) -> dict[str, float]:
        """Set every scheduled parameter to its value at ``step``; returns them."""
        vals = {}
        for key, sch in self.schedules.items():
            v = sch(step)
            for obj in self._targets(key):
                setattr(obj, "t" if key == "temperature" else key, v)
            vals[key] = v
        self._check_core()
        return vals

    # ----------------------------------------------------------------------------------------
    def forward(
        self,
        z1: Tensor,
        z2: Tensor | None = None,
        labels: Tensor | None = None,
        ids: Tensor | None = None,
        step: int | None = None,
        negatives: Tensor | None = None,
        *,
        negatives_per_anchor: bool = False,
        logit_scale: Tensor | None = None,
        anchor_rows: Tensor | None = None,
        mean_denominator: Callable[[float], float] | None = None,
        detach_candidates: bool = False,
        grid: PixelGrid | None = None,
    ) -> Tensor:
        z1, z2, labels, ids, step = self._check_inputs(z1, z2, labels, ids, step)
        if grid is not None and not isinstance(grid, PixelGrid):
            raise TypeError(f"grid must be a hardneg.negatives.pixels.PixelGrid or None, got {type(grid).__name__}")
        sched = self.set_step(step)
        t = self.t if logit_scale is None else _inverse_scale(logit_scale)
        if logit_scale is not None and self.tau_plus > 0.0:
            raise ValueError("logit_scale with tau_plus > 0 is not supported (the debiasing clamp needs a fixed t)")
        all_anchors, all_cands = self._candidates(z1, z2, labels, ids, step, negatives, negatives_per_anchor, t,
                                                  grid)
        anchors, cands = all_anchors, all_cands
        if anchor_rows is not None:  # this process's anchors against every candidate
            anchors, cands = all_anchors.select(anchor_rows), all_cands.for_anchors(anchor_rows, all_anchors.n)
        if detach_candidates:
            cands = dataclasses.replace(cands, k=cands.k.detach())
        ctx = StepContext.build(anchors, cands, t, self.beta, step, label_positives=self.positives == "labels",
                                grid=grid)
        for c in [*self.filters, *self.weightings]:
            c.begin_step(ctx)
        acc = DiagnosticsAccumulator(anchors.n, t, self.beta, self.diagnostics_anchors) if self.diagnostics else None
        self._fallback_rows = 0
        label_filter = any(isinstance(f, LabelFilter) for f in self.filters)
        if label_filter and labels is None:
            raise ValueError("filter 'label' needs labels: call forward(z1, z2, labels=...)")
        # fast path: nothing but masks the kernel applies itself (self, positive, other labels)
        plain = (
            not self.weightings
            and all(isinstance(f, LabelFilter) for f in self.filters)
            and cands.owner is None
            and not cands.cross_view
            and ctx.id_rule_start() is None
        )
        fused = not plain and self._fusable(cands, ctx)
        loss = self._kernel(anchors, cands, ctx, acc, plain, label_filter, mean_denominator, logit_scale, fused)
        if acc is not None and plain:
            self._diagnostics_pass(ctx, acc)
        # state that learns from the step (queue, bank, generator, calibrator) sees every anchor, so
        # it is the same whichever anchors this call computed the loss of
        for s in self._sources():
            s.after_step(all_anchors, all_cands, step)
        if anchor_rows is not None and self.weightings:
            ctx = StepContext.build(all_anchors, all_cands, self.t, self.beta, step,
                                    label_positives=self.positives == "labels", grid=grid)
        for w in self._weightings():
            w.after_step(ctx)
        if self.training:
            self._step = step + 1
        self.last_diagnostics = self._diagnostics(loss, step, anchors, cands, sched, acc, t)
        return loss

    def _check_inputs(self, z1, z2, labels, ids, step):
        check_embeddings("z1", z1)
        if z2 is not None and (not isinstance(z2, Tensor) or z2.shape != z1.shape):
            raise ValueError(
                f"z2 must be None or a tensor of z1's shape {tuple(z1.shape)}, got "
                f"{tuple(z2.shape) if isinstance(z2, Tensor) else type(z2).__name__}"
            )
        B, dev = z1.shape[0], z1.device
        labels = check_tags("labels", labels, B, dev)
        ids = check_tags("ids", ids, B, dev)
        if step is None:
            step = self._step
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int or None, got {step!r}")
        if self.positives == "labels" and labels is None:
            raise ValueError(f"positives='labels' (family={self.family!r}) needs labels (B,)")
        if z2 is None and self.positives != "labels":
            raise ValueError("one view (z2=None) needs label positives: use family='supcon' or positives='labels'")
        needs_pos = any(getattr(c, "needs_positive", False) for c in [*self.filters, *self.weightings])
        if needs_pos and z2 is None:
            raise ValueError("semi-hard / margin / guide filters need a positive per anchor: pass z2")
        return z1, z2, labels, ids, step

    def _candidates(
        self, z1, z2, labels, ids, step, negatives, per_anchor=False, t=None, grid=None
    ) -> tuple[Anchors, Candidates]:
        """Anchors and every candidate block of the step: the batch, each source, explicit negatives."""
        B = z1.shape[0]
        if z2 is None:
            z12, z1n, z2n = None, safe_normalize(z1), None
        else:  # one normalisation of [z1; z2] (cheaper backward than two)
            z12 = safe_normalize(torch.cat([z1, z2]))
            z1n, z2n = z12[:B], z12[B:]
        anchors, cands = self.in_batch.build(z1n, z2n, labels, ids, z12)
        for s in self._sources():
            if s.reads_candidate_rule:  # e.g. MoCHi mixes only what the rule and the filters keep
                ctx0 = StepContext.build(anchors, cands, self.t if t is None else t, self.beta, step,
                                         label_positives=self.positives == "labels", grid=grid)
                for f in self._filters():
                    f.begin_step(ctx0)
                # a source that reads the candidate rule takes it as valid= (Source.reads_candidate_rule)
                s.extend(anchors, cands, step, valid=functools.partial(self._filtered_valid, ctx=ctx0))  # type: ignore[call-arg]
            else:
                s.extend(anchors, cands, step)
        if negatives is not None:
            if not isinstance(negatives, Tensor) or negatives.dim() not in (2, 3) or negatives.shape[-1] != z1.shape[1]:
                raise ValueError(
                    f"negatives must have shape (r, {z1.shape[1]}) or (B, r, {z1.shape[1]}), got "
                    f"{tuple(negatives.shape) if isinstance(negatives, Tensor) else type(negatives).__name__}"
                )
            owner = None
            if per_anchor:
                if negatives.dim() != 3 or negatives.shape[0] != B:
                    raise ValueError(
                        f"negatives_per_anchor=True needs negatives of shape ({B}, r, {z1.shape[1]}), "
                        f"got {tuple(negatives.shape)}"
                    )
                owner = torch.arange(B, device=z1.device).repeat_interleave(negatives.shape[1])
            cands.append("explicit", safe_normalize(negatives.reshape(-1, z1.shape[1])), owner=owner)
        if not self.in_batch.batch_negatives and cands.m == cands.blocks[0][2]:
            raise ValueError(
                "no candidate negatives this step: in_batch has batch_negatives=False and the sources "
                "added no rows (an empty queue at the first step?); keep batch_negatives=True or add a source"
            )
        return anchors, cands

    def _kernel(self, anchors, cands, ctx, acc, plain: bool, label_filter: bool, mean_denominator=None,
                logit_scale=None, fused: bool = False) -> Tensor:
        q, t = anchors.q, self.t
        if logit_scale is not None:
            # s · logit_scale with t = 1: the kernel's S is logit_scale · s and the gradient reaches
            # logit_scale through q; filters and weightings get the cosines back (S · t).
            q, t = q * logit_scale.to(q.dtype), 1.0
            lw_fn = None if plain or fused else (lambda S, rows: self._log_weights(S * ctx.t, rows, ctx, acc))
        else:
            lw_fn = None if plain or fused else (lambda S, rows: self._log_weights(S, rows, ctx, acc))
        # the kernel's blocks hold s / t for either temperature: ctx.t turns them back into cosines
        lw_block = lw_rows = record = None
        rec = _BlockRecords(acc if fused or plain else None)
        if fused:
            lw_block = lambda X, rows, sp: self._block_weights(X, rows, sp, ctx, rec)  # noqa: E731
            lw_rows = lambda S, rows, sp, inactive, free: self._rows_weights(  # noqa: E731
                S, rows, sp, inactive, free, ctx, rec)
        elif plain and acc is not None:  # the sample as the native pass sees it, before its rule
            record = lambda rows: self._record_rows(rows, ctx, rec)  # noqa: E731
        n_neg: float | None = None  # "count": the number of valid candidates
        if not isinstance(self.n_neg, str):
            n_neg = float(self.n_neg)
        elif self.n_neg == "nominal":  # every candidate but the anchor itself and its positive view (2B − 2)
            has_self = bool((anchors.self_index >= 0).any())
            n_neg = float(nominal_n(cands.m, has_self, anchors.pos_index is not None))
        by_labels = self.positives == "labels" or (plain and label_filter)
        loss = weighted_info_nce(
            q,
            cands.k,
            t=t,
            pos_index=anchors.pos_index if self.positives == "view" else None,
            q_labels=anchors.labels if by_labels else None,
            k_labels=cands.labels if by_labels else None,
            self_index=anchors.self_index,
            positives=self.positives,
            negatives="other_labels" if (plain and label_filter) else "all",
            beta=self.beta,
            detach_weights=self.detach_weights,
            log_weight_fn=lw_fn,
            n_neg=n_neg,
            tau_plus=self.tau_plus,
            clamp=self.clamp,
            include_positive=self.family == "infonce",
            positive_reduce=self.positive_reduce,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
            normalize=False,
            mean_denominator=mean_denominator,
            log_weight_block=lw_block,
            log_weight_rows=lw_rows,
            record_rows=record,
        )
        if fused:
            self._flush(rec, ctx, close=True)
        elif record is not None:
            self._flush_rows(rec, ctx, close=True)
        return loss

    def _fusable(self, cands: Candidates, ctx: StepContext) -> bool:
        """The kernel applies the filters and the weighting in its own blocks (one trip through
        memory, no (chunk × candidates) masks): every component implements its in-place rule, at
        most one weighting (log-weights of several add before π is normalised), β = 0, one positive
        per anchor, and the candidate rule is the kernel's (self and positive) alone."""
        return (
            self.beta == 0.0
            and self.positives == "view"
            and len(self.weightings) <= 1
            and all(f.fused for f in self.filters)
            and all(w.fused for w in self.weightings)
            and cands.owner is None
            and not cands.cross_view
            and ctx.id_rule_start() is None
        )

    def _block_weights(
        self, X: Tensor, rows: slice, sp: Tensor, ctx: StepContext, rec: _BlockRecords
    ) -> tuple[Tensor, Tensor | None, Kept | None]:
        """The kernel's ``log_weight_block``: filters and the weighting, in place on one block of
        rows (a selection may return its kept entries instead, `Kept`); the diagnostics keep the
        sampled rows before and after (`_BlockRecords`)."""
        loc = rec.sampled(rows, X.device)
        if loc is not None:
            if not rec.room(X, loc.numel()):
                self._flush(rec, ctx)
                rec.room(X, loc.numel())
            rec.before(X, loc, rows)
        for f in self._filters():
            f.drop_(X, rows, ctx, sp)
        weightings = self._weightings()
        if weightings:
            cnt, lse_a, fallback, kept = weightings[0].weigh_(X, rows, ctx, sp)
        else:  # the count's clamped copy in a step scratch tile (`StepContext.scratch`)
            cnt, lse_a, fallback, kept = finite_count(X, out=ctx.scratch(X)), None, None, None
        if loc is not None:
            rec.after(X, loc, fallback, kept)
            rec.log_mask = lse_a is None  # selections and filters only: the kept entries gained 0
        return cnt, lse_a, kept

    def _row_rule(self, ctx: StepContext, sp: Tensor) -> native.RowRule | None:
        """The filters and the weighting as one rule of the native row pass, or None when one of
        them has no such form (`Filter.row_bounds`, `Weighting.row_rule`)."""
        weightings = self._weightings()
        rule = weightings[0].row_rule(ctx, sp) if weightings else native.RowRule()
        for f in self._filters():
            if rule is None:
                return None
            bounds = f.row_bounds(ctx, sp)
            rule = None if bounds is None else rule.bounded(*bounds)
        return rule

    def _rows_weights(
        self, S: Tensor, rows: slice, sp: Tensor, inactive: Tensor | None, free: bool, ctx: StepContext,
        rec: _BlockRecords,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None] | None:
        """The kernel's ``log_weight_rows``: `_block_weights` and the softmax of a whole chunk in
        the native row pass (`hardneg.losses.native`), where it is available and the components
        have a row rule; None otherwise (the kernel takes the blocks). The diagnostics' sampled rows
        are copied before the pass and by it, with the rows the weighting's fallback took."""
        if S.device.type != "cpu" or S.dtype != torch.float32 or not native.available():
            return None
        rule = self._row_rule(ctx, sp)
        if rule is None:
            return None
        c = S.shape[0]
        loc = rec.sampled(rows, S.device)
        slot, bufs = None, None
        if loc is not None:
            if not rec.room(S, loc.numel()):
                self._flush(rec, ctx)
                rec.room(S, loc.numel())
            bufs, slot = rec.note(rows), rec.slots(rows)
        res = native.weighted_softmax_rows_(S, rule, inactive, free, slot, bufs)
        weightings = self._weightings()
        if weightings:
            weightings[0].rows_done(c, int(res.fallback.sum()))
        if loc is not None:
            # the distance rule's fallback rows are reported (`weighting_fallback_share`)
            rec.done(loc.numel(), res.fallback[loc] if rule.kind == "distance" else None)
            rec.log_mask = rule.kind != "distance"  # selections and filters only: the kept entries gained 0
        return res.cnt, res.lse_b, res.lse_a, res.scale

    def _record_rows(self, rows: slice, ctx: StepContext, rec: _BlockRecords) -> tuple[Tensor, Tensor] | None:
        """The kernel's ``record_rows`` on the plain path: (slot, buffer) for the chunk's sampled
        rows, which the native pass copies as they are (s / t); `_flush_rows` records them."""
        loc = rec.sampled(rows, torch.device("cpu"))
        if loc is None:
            return None
        ref = torch.empty(0, ctx.m, dtype=torch.float32)  # the native pass takes float32 CPU tiles
        if not rec.room(ref, loc.numel()):
            self._flush_rows(rec, ctx)
            rec.room(ref, loc.numel())
        buf, _ = rec.note(rows)
        rec.done(loc.numel(), None)
        return rec.slots(rows), buf

    def _flush_rows(self, rec: _BlockRecords, ctx: StepContext, close: bool = False) -> None:
        """The plain path's diagnostics of the rows the native pass copied: `_log_weights` on their
        cosines, as `_diagnostics_pass` computes them for the rest."""
        if rec.n:
            S = rec.X0[: rec.n].mul_(ctx.t)
            rows = torch.tensor(rec.gid, device=S.device)
            rec.n, rec.gid = 0, []
            self._log_weights(S, rows, ctx, rec.acc)
        rec.closed = rec.closed or close

    def _flush(self, rec: _BlockRecords, ctx: StepContext, close: bool = False) -> None:
        """Hand the kept rows to the diagnostics (once per buffer of rows, not per block);
        ``close`` after the forward pass."""
        if rec.n:
            S, lw, gid, fb = rec.take(ctx)
            self._record(S, gid, ctx, rec.acc, lw, fb, log_mask=rec.log_mask)
        rec.closed = rec.closed or close

    def _diagnostics(self, loss, step, anchors, cands, sched, acc, t) -> dict[str, float]:
        lv = loss.detach()
        d: dict[str, float] = {
            "loss": float(lv.mean() if lv.dim() else lv),
            "step": float(step),
            "t": t,
            "beta": self.beta,
            "n_anchors": float(anchors.n),
            "n_candidates_total": float(cands.m),
            "weighting_fallback_share": self._fallback_rows / max(acc.rows, 1) if acc is not None else float("nan"),
        }
        for key, v in sched.items():
            d[f"sched_{key}"] = float(v)
        if acc is not None:
            d.update(acc.result())
        for c in self.components():
            if hasattr(c, "diagnostics") and callable(c.diagnostics):
                d.update(c.diagnostics())
        return d

    # ----------------------------------------------------------------------------------------
    def _filtered_valid(self, S: Tensor, rows: slice | Tensor, ctx: StepContext) -> Tensor:
        """Candidates valid after the structural rule and every filter (no fallback: an emptied
        anchor is skipped)."""
        valid = ctx.base_valid(S, rows)
        # an index tensor of rows (the diagnostics' sample) serves wherever the components index by a slice
        rows_ = cast(slice, rows)
        for f in self._filters():
            valid &= ~f.drop(S, rows_, ctx)
        return valid

    def _log_weights(
        self, S: Tensor, rows: slice | Tensor, ctx: StepContext, acc: DiagnosticsAccumulator | None
    ) -> Tensor:
        """The kernel's ``log_weight_fn``: masks, filters and weightings for one chunk of anchors."""
        fallback = torch.zeros(S.shape[0], dtype=torch.bool, device=S.device)
        if not self.weightings and all(isinstance(f, LabelFilter) for f in self.filters):
            # the candidate rule and label filters (the plain path's diagnostics): −∞ written by
            # scatter into a zero tile where the rules allow it, as the kernel writes its masks
            masks = ctx.relations.mask_(torch.zeros_like(S), rows)
            for f in self._filters():
                f.drop_(masks, cast(slice, rows), ctx, masks.new_empty(0))  # the label rule reads no similarity
            return self._record(S, rows, ctx, acc, masks, fallback, log_mask=True)
        valid = self._filtered_valid(S, rows, ctx)
        lw = None
        rows_ = cast(slice, rows)  # as in _filtered_valid
        for w in self._weightings():
            if w.selects:  # a boolean selection: no float passes
                nv = w.select(S, rows_, ctx, valid)
                a = None
            else:
                a = w.log_weights(S, rows_, ctx, valid)
                nv = valid & (a != NEG_INF)
            empty = ~nv.any(1) & valid.any(1)
            if bool(empty.any()):  # this weighting would remove every candidate: ignore it there
                fallback |= empty
                if a is not None:
                    a = a.masked_fill(empty[:, None], 0.0)
                nv = torch.where(empty[:, None], valid, nv)
            valid = nv
            if a is not None:
                lw = a if lw is None else lw + a
        selections_only = lw is None
        lw = torch.where(valid, 0.0 if lw is None else lw, NEG_INF).to(S.dtype)
        return self._record(S, rows, ctx, acc, lw, fallback, log_mask=selections_only)

    def _record(
        self,
        S: Tensor,
        rows: slice | Tensor,
        ctx: StepContext,
        acc: DiagnosticsAccumulator | None,
        lw: Tensor,
        fallback: Tensor,
        log_mask: bool = False,
    ) -> Tensor:
        """Feed the chunk's sampled anchors to the diagnostics; return the log-weights. ``S`` is the
        chunk's scratch (the kernel's S · t, the diagnostics' product or the kept block rows, read
        by nothing after this): the diagnostics overwrite it. ``log_mask``: lw holds only 0 and −∞."""
        if acc is not None:
            sel = acc.pending(rows)
            if bool(sel.any()):
                gid = ctx.row_ids(rows, torch.device("cpu"))
                Ss, lws, fb = S, lw, fallback
                if not bool(sel.all()):
                    loc = torch.nonzero(sel).flatten()
                    gid, loc = gid[loc], loc.to(S.device)
                    Ss, lws, fb = S[loc], lw[loc], fallback[loc]
                self._fallback_rows += int(fb.sum())
                labels = None if ctx.q_labels is None or ctx.k_labels is None else (ctx.q_labels[gid], ctx.k_labels)
                acc.update(Ss, lws, gid, ctx.s_pos(Ss, gid), labels, overwrite=True, log_mask=log_mask,
                           k_order=ctx.label_order())
        return lw

    @torch.no_grad()
    def _diagnostics_pass(self, ctx: StepContext, acc: DiagnosticsAccumulator) -> None:
        """Diagnostics of the sampled anchors when the kernel ran without a ``log_weight_fn``."""
        sample = acc.pending_rows()  # those the kernel's pass did not copy (`_record_rows`)
        chunk = self.chunk_size or max(64, min(len(sample), (1 << 22) // max(ctx.m, 1)))
        k = ctx.k.float()
        for r0 in range(0, len(sample), chunk):
            rows = sample[r0 : r0 + chunk].to(ctx.q.device)
            S = ctx.q[rows].float() @ k.T
            self._log_weights(S, rows, ctx, acc)

    def get_extra_state(self) -> dict[str, Any]:
        """The step counter travels with ``state_dict`` (exact resume)."""
        return {"step": self._step}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._step = int(state.get("step", 0))

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, reduction={self.reduction!r}, positives={self.positives!r}, t={self.t}, "
            f"beta={self.beta}, tau_plus={self.tau_plus}, n_neg={self.n_neg!r}, "
            f"schedule={ {k: repr(v) for k, v in self.schedules.items()} }"
        )
