r"""The one kernel: chunked, log-space, weighted InfoNCE with a hand-written backward.

For anchor `i` with positive(s) `p \in P(i)`, candidate negatives `j \in C(i)`,
similarities `s_{ij} = q_i^\top k_j` of L2-normalised embeddings and temperature `t`
(docs/design.md §1)::

    L_i = −log( e^{s_ip/t} / ( e^{s_ip/t} + N · Σ_j π_ij e^{s_ij/t} ) )

with `\pi_{ij} \propto \exp(\beta s_{ij}/t + a_{ij})` over the valid candidates: β is the
hardness tilt of Robinson et al. (HCL, ICLR 2021) and Jiang et al. (H-SCL, arXiv 2209.00078),
`a_{ij}` optional extra log-weights (−∞ masks a candidate) supplied per chunk by a strategy,
and N the nominal number of negatives. The debiased estimator of Chuang et al. (DCL, NeurIPS 2020)
replaces the negative term by ``G = (N Σ_j π_ij e^{s_ij/t} − τ⁺ N e^{s_ip/t}) / (1 − τ⁺)``, clamped
below at ``N e^{−1/t}``.

Everything is computed in log space (log-sum-exp), in float32 even for float16/bfloat16 inputs, with
masks as −∞ log-weights. Anchors are processed in chunks: peak memory is O(chunk × m), never
O(n × m) for large n and never O(n³).

Speed: when the loss is reduced to a scalar and a gradient is needed, each chunk computes its
gradient **in the forward pass** (one matrix product for the similarities, the exponentials and
their row sums, without the max shift where the logits are bounded (`_exp_room`), two products for
dQ and dK) and the backward only scales the stored (n×d, m×d)
gradients by the incoming scalar. That is 3 matrix products per chunk instead of the 4 of a
recompute-in-backward scheme. With ``reduction="none"`` the backward recomputes each chunk. A
selection that keeps few candidates per row (`Kept`, top-k) needs one product only: the loss comes
from the kept values, dQ and dK from gathers of the kept rows of k and an index_add.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.losses import candidates as C
from hardneg.losses import checks as V
from hardneg.losses import native

LogWeightFn = Callable[[Tensor, slice], Tensor]


@dataclass(frozen=True)
class Kept:
    """The entries a selection keeps in each row of a block of the tile, apart from the block:
    ``values`` (r × K) of the block (−∞ in the slots of a row with fewer than K valid entries) and
    their ``cols`` (r × K). A small K lets the kernel take the gradient from these alone
    (`sparse_selection`); otherwise it writes them back over the block (`write_`)."""

    values: Tensor
    cols: Tensor

    def write_(self, X: Tensor) -> Tensor:
        """X ← −∞ everywhere but the kept entries, which get their values; returns X."""
        return X.fill_(_NEG_INF).scatter_(1, self.cols, self.values)

    def rows(self, idx: Tensor) -> Kept:
        """The kept entries of the rows ``idx`` of the block."""
        return Kept(self.values[idx], self.cols[idx])


#: ``f(X, rows, sp) -> (count, lse_a or None, Kept or None)``: works **in place** on a block of the
#: chunk's tile (see ``log_weight_block`` of `weighted_info_nce`)
BlockWeightFn = Callable[[Tensor, slice, Tensor], "tuple[Tensor, Tensor | None, Kept | None]"]
#: ``f(S, rows, sp, inactive, free) -> (count, lse_b, lse_a, scale or None) or None``: a
#: ``log_weight_block`` and the blocks' softmax (`softmax_block_`) on a whole chunk at once: S ←
#: softmax(S + a) (``scale`` None) or a multiple of each row of it, unnormalised, with ``scale`` the
#: factor that normalises the row (e^{S + a} where ``free`` and a = 0), rows without a valid
#: candidate or ``inactive`` as a row of 0, as `softmax_block_` makes them (``log_weight_rows`` of
#: `weighted_info_nce`; `hardneg.losses.native` is its fast form); None leaves the chunk to the blocks
RowsWeightFn = Callable[[Tensor, slice, Tensor, "Tensor | None", bool],
                        "tuple[Tensor, Tensor, Tensor, Tensor | None] | None"]
#: ``f(rows) -> (slot, buffer) or None``: which of the chunk's anchors ``rows`` the native row pass
#: copies as they are (s/t, before the candidate rule) and where: the row r − rows.start with
#: slot ≥ 0 to that row of ``buffer`` (``record_rows`` of `weighted_info_nce`)
RecordFn = Callable[[slice], "tuple[Tensor, Tensor] | None"]
#: maps this call's ``"mean"`` denominator to the one the mean divides by (see ``mean_denominator``)
DenominatorFn = Callable[[float], float]

_NEGATIVES = ("all", "other_labels")
_NEG_INF = float("-inf")


@dataclass(frozen=True)
class KernelSpec:
    """Everything that defines the loss besides the embeddings and their index, checked when it is
    built (each option as `weighted_info_nce` documents it; ``chunk_size=None``: the kernel's
    default for each call). ``weighted_info_nce(q, k, spec=KernelSpec(t=0.5, beta=1.0), ...)`` is the
    same call as ``weighted_info_nce(q, k, t=0.5, beta=1.0, ...)``, which builds this object."""

    t: float
    positives: str = "view"
    negatives: str = "all"
    beta: float = 0.0
    detach_weights: bool = False
    log_weight_fn: LogWeightFn | None = None
    log_weight_block: BlockWeightFn | None = None
    log_weight_rows: RowsWeightFn | None = None
    n_neg: float | None = None
    tau_plus: float = 0.0
    clamp: bool = True
    include_positive: bool = True
    positive_reduce: str = "mean"
    reduction: str = "mean"
    chunk_size: int | None = None
    mean_denominator: DenominatorFn | None = None
    record_rows: RecordFn | None = None

    def __post_init__(self) -> None:
        _check_options(self.t, self.positives, self.negatives, self.positive_reduce, self.reduction, self.beta,
                       self.tau_plus, self.chunk_size)
        if self.n_neg is not None:
            object.__setattr__(self, "n_neg", float(V.check_positive("n_neg", self.n_neg)))
        if self.log_weight_block is not None and (
            self.log_weight_fn is not None or self.beta != 0.0 or self.positives != "view"
        ):
            raise ValueError("log_weight_block needs positives='view', beta=0 and no log_weight_fn")
        if self.log_weight_rows is not None and self.log_weight_block is None:
            raise ValueError("log_weight_rows needs the log_weight_block it stands for")
        for name in ("t", "beta", "tau_plus"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("detach_weights", "clamp", "include_positive"):
            object.__setattr__(self, name, bool(getattr(self, name)))

    @property
    def chunk(self) -> int:
        """Anchors per chunk, once the call has resolved ``chunk_size`` (`weighted_info_nce`)."""
        if self.chunk_size is None:
            raise ValueError("chunk_size is resolved by weighted_info_nce before the chunks run")
        return self.chunk_size

    @property
    def lean(self) -> bool:
        """Uniform π, plain sum (N = count), no debiasing, no extra weights: the fused fast path."""
        return (
            self.beta == 0.0
            and self.log_weight_fn is None
            and self.log_weight_block is None
            and self.n_neg is None
            and self.tau_plus == 0.0
            and self.negatives == "all"
            and (
                (self.positives == "view" and self.include_positive)
                or (self.positives == "labels" and not self.include_positive and self.positive_reduce == "mean")
            )
        )


@dataclass
class _Index:
    """Integer side information and per-call precomputations, on the embeddings' device."""

    pos_index: Tensor | None  # (n,) column of each anchor's positive (positives="view")
    self_index: Tensor | None  # (n,) column of the anchor itself in k, or -1
    q_labels: Tensor | None  # (n,) dense label ids
    k_labels: Tensor | None  # (m,)
    n_pos: Tensor | None  # (n,) number of positives per anchor (positives="labels")
    n_valid: Tensor | None  # (n,) number of valid negatives per anchor (None: depends on log_weight_fn)
    k_order: Tensor | None = None  # (m,) candidates sorted by label
    label_start: Tensor | None = None  # (L,) first position of each label in k_order
    label_count: Tensor | None = None  # (L,) candidates per label
    active: Tensor | None = None  # (n,) bool: has a positive and a valid negative (None: all)
    label_cols: Tensor | None = None  # (L, P) columns of each label, padded (`_label_table`)
    self_all: bool = False  # every anchor is a row of k (self_index ≥ 0 throughout)


@dataclass(frozen=True)
class _Counts:
    """`_Workspace.counts`: per anchor of a call."""

    act: Tensor  # (n,) bool: has a positive and a valid negative
    all_active: bool
    cntf: Tensor  # (n,) valid negatives as floats, 1 where skipped
    log_n: Tensor  # (n,) log N


class _Workspace:
    """Two (chunk × m) work buffers reused by every chunk: fresh 16 MB allocations page-fault on
    every chunk and cost as much as the matrix product itself on CPU."""

    def __init__(self, c: int, m: int, dtype: torch.dtype, device: torch.device, n_labels: int, d: int,
                 exp_room: float = math.inf) -> None:
        self.S = torch.empty(c, m, dtype=dtype, device=device)
        self.exp_room = exp_room  # `_exp_room` of the call's embeddings
        self.W: Tensor | None = None
        self.B: Tensor | None = None
        self._shape = (c, m, dtype, device)
        self.label_acc = torch.zeros(n_labels, d, dtype=dtype, device=device) if n_labels else None
        self.k_label_sums: Tensor | None = None
        self.skipped: list[Tensor] = []  # global rows a log_weight_fn left without a valid negative
        self._k_ones: Tensor | None = None
        self._rows: Tensor | None = None
        self._counts: _Counts | None = None

    def rows(self, c: int) -> Tensor:
        """arange(c): each anchor's row of the chunk's tile (one tensor for every chunk)."""
        if self._rows is None:
            self._rows = torch.arange(self._shape[0], device=self._shape[3])
        return self._rows[:c]

    def k_ones(self, k: Tensor) -> Tensor:
        """[k | 1 | 0 …] (m × d′, d′ the next multiple of 16 above d): E [k | 1] gives E k and the row
        sums of E in one product. A product of d + 1 columns costs less than a separate sum pass
        over the tile (on CPU, 1,024 × 8,192 at d = 128: +1.1 ms against 3.1 ms for the sum), and the
        padding keeps the operand's rows aligned."""
        if self._k_ones is None:
            m, d = k.shape
            self._k_ones = k.new_zeros(m, (d // 16 + 1) * 16)
            self._k_ones[:, :d] = k
            self._k_ones[:, d] = 1.0
        return self._k_ones

    def second(self, c: int) -> Tensor:
        if self.W is None:
            cmax, m, dtype, device = self._shape
            self.W = torch.empty(cmax, m, dtype=dtype, device=device)
        return self.W[:c]

    def counts(self, ix: _Index, n_neg: float | None) -> _Counts:
        """The candidate rule's counts for every anchor of the call (``ix.n_valid``), once: which
        anchors are active, their counts as floats (1 for a skipped anchor, a finite placeholder)
        and log N (of the count, or of ``n_neg``)."""
        if self._counts is None:
            if ix.n_valid is None:
                raise ValueError("the call's counts need n_valid")
            act = ix.n_valid > 0 if ix.active is None else (ix.n_valid > 0) & ix.active
            every = bool(act.all())
            cntf = (ix.n_valid if every else torch.where(act, ix.n_valid, 1)).to(self._shape[2])
            log_n = torch.log(cntf) if n_neg is None else torch.full_like(cntf, math.log(n_neg))
            self._counts = _Counts(act, every, cntf, log_n)
        return self._counts

    def shift_free(self, factor: float = 1.0) -> bool:
        """Whether e^{factor · S} of any tile entry S = s/t is safe without the max shift (`_exp_room`)."""
        return factor <= self.exp_room

    def rows_per_block(self) -> int:
        """Rows of the tile that one cache-sized block holds (the whole chunk on CUDA)."""
        cmax, m, _, device = self._shape
        return cmax if device.type == "cuda" else max(1, min(cmax, _BLOCK // max(m, 1)))

    def block(self) -> Tensor:
        """A (rows_per_block × m) scratch buffer for one block."""
        if self.B is None:
            _, m, dtype, device = self._shape
            self.B = torch.empty(self.rows_per_block(), m, dtype=dtype, device=device)
        return self.B


#: the largest exponent a shift-free softmax may meet (`_exp_room`)
_EXP_LIMIT = 40.0
_LOG2_E = 1.0 / math.log(2.0)


def _exp_room(q: Tensor, k: Tensor, t: float) -> float:
    """The largest factor f for which e^{f S} of every tile entry S = q_i·k_j / t is computed without
    the max shift: 0 when none is safe, inf for empty inputs.

    |S_ij| ≤ B = max_i ‖q_i‖ · max_j ‖k_j‖ / t (Cauchy–Schwarz; B = 1/t for L2-normalised rows), so
    every exponent f S lies in [−f B, f B]. Float32 exp is finite and normal on ±87 (max finite
    3.4e38, min normal 1.2e-38): with f B ≤ `_EXP_LIMIT` = 40 every term e^{f S} lies in
    [4e-18, 2.4e17], no term is lost to underflow or rounded as a subnormal, and the square of a
    root-tilted term is the f = 2 case of the same bound. The row sums of m terms and the product
    Σ_j e^{f S_ij} k_j must stay finite too: m e^{f B} max(1, max_j ‖k_j‖) ≤ 1e30, far below 3.4e38.
    exp's relative rounding does not depend on the size of its result, so e^{S} / Σ_j e^{S_ij} equals
    the max-shifted softmax to float32 rounding: the shift only buys range, which this bound
    guarantees. CLIP's logit scale 100 (B = 100) or t = 0.01 are outside it and take the shifted path."""
    if q.numel() == 0 or k.numel() == 0:
        return math.inf
    qn = float(torch.linalg.vector_norm(q, dim=1).amax())
    kn = qn if k is q else float(torch.linalg.vector_norm(k, dim=1).amax())
    B = qn * kn / t
    if B == 0.0:
        return math.inf
    # m e^{f B} max(1, ‖k‖) ≤ 1e30  ⇔  f B ≤ 30 log 10 − log m − log max(1, ‖k‖)
    room = min(_EXP_LIMIT, 30.0 * math.log(10.0) - math.log(k.shape[0]) - math.log(max(1.0, kn)))
    return max(0.0, room / B)


#: elements of one block of tile rows that a run of elementwise passes works on in turn: 1 MB of
#: float32, so a block and its scratch stay in a core's L2 cache and the run costs one trip through
#: memory instead of one per pass
_BLOCK = 1 << 18


def _log_softmax_nll_(S: Tensor, pcol: Tensor, ws: _Workspace, exp: bool) -> Tensor:
    """Block by block: −log softmax(S)_{i, pcol_i} (S_ij − lse_i over j ≠ self, positive included);
    with ``exp`` S is left holding the softmax (for the gradient), otherwise the log-softmax."""
    R = ws.rows_per_block()
    loss = S.new_empty(S.shape[0])
    for r0 in range(0, S.shape[0], R):
        Sb = S[r0 : r0 + R]
        torch.ops.aten._log_softmax.out(Sb, 1, False, out=Sb)
        loss[r0 : r0 + R] = -Sb[torch.arange(Sb.shape[0], device=S.device), pcol[r0 : r0 + R]]
        if exp:
            Sb.exp_()
    return loss


#: elements of one (chunk × m) float32 tile on CPU: 16 MB, where a tile that stays in the caches
#: between the product that writes it and the passes and products that read it beats one that
#: streams through memory (at 2B = 8192 and 2 threads the named losses ran 5 % faster than with 32 MB
#: tiles, the bare products alike), but never fewer than 128 rows while the tile stays within 32 MB:
#: at 2B = 65,536 chunks of 64 rows made ucl 10 % slower than 128 (the bare products 5 %). On CUDA a
#: larger tile keeps the device busy, bounded by an eighth of the free memory (two tiles plus the
#: products' workspace).
_CPU_TILE = 1 << 22
_CPU_TILE_MAX = 1 << 23
_CPU_MIN_ROWS = 128
_CUDA_TILE = 1 << 28


def default_chunk(n: int, m: int, device: torch.device | None = None) -> int:
    """Anchors per chunk of n anchors against m candidates when ``chunk_size`` is not given: a
    (chunk × m) float32 tile within the device's budget (at least 64 rows)."""
    m = max(m, 1)
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        rows = max(_CPU_TILE_MAX, min(_CUDA_TILE, free // (8 * 4))) // m
    else:
        rows = _CPU_TILE // m
        if rows < _CPU_MIN_ROWS:
            rows = min(_CPU_MIN_ROWS, _CPU_TILE_MAX // m)
    return int(max(64, min(n, rows)))


# --------------------------------------------------------------------------------------------
# one chunk
# --------------------------------------------------------------------------------------------


def _self_entries(ix: _Index, ws: _Workspace, r0: int, r1: int) -> tuple[Tensor, Tensor] | None:
    """(row offsets within the chunk, columns) of the anchors of r0:r1 that appear in k."""
    if ix.self_index is None:
        return None
    cols, rows = ix.self_index[r0:r1], ws.rows(r1 - r0)
    if ix.self_all:
        return rows, cols
    keep = cols >= 0
    return rows[keep], cols[keep]


def _label_index(ix: _Index) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(q_labels, label_count, label_start, k_order): what `_index` builds when labels are given."""
    if ix.q_labels is None or ix.label_count is None or ix.label_start is None or ix.k_order is None:
        raise ValueError("label positives and label negatives need q_labels and k_labels")
    return ix.q_labels, ix.label_count, ix.label_start, ix.k_order


#: the largest (labels × the largest label's size) table of columns per label kept for a call
#: (`_label_table`); beyond it each chunk builds its anchors' columns itself
_LABEL_TABLE = 1 << 22


def _label_table(ix: _Index) -> Tensor | None:
    """(L, P) the candidates' columns of each label (P the largest label), each row padded beyond
    its label's count with the label's first column (`_same_label_cols`' padding for label
    positives); built once per call (the chunks index it by their anchors' labels), None when
    larger than `_LABEL_TABLE` entries."""
    if ix.label_cols is None:
        _, label_count, label_start, k_order = _label_index(ix)
        L, P = label_count.shape[0], max(1, int(label_count.max())) if label_count.numel() else 1
        if L * P > _LABEL_TABLE:
            return None
        ar = torch.arange(P, device=k_order.device)
        at = torch.where(ar[None, :] < label_count[:, None], ar[None, :], 0)
        ix.label_cols = k_order[torch.clamp(label_start[:, None] + at, max=max(k_order.shape[0] - 1, 0))]
    return ix.label_cols


def _label_valid(ix: _Index, r0: int, r1: int, P: int) -> Tensor:
    """(c, P) bool: which of `_same_label_cols`' columns are candidates of the anchor's label (the
    first ``label_count`` of each row; the rest is padding)."""
    q_labels, label_count, _, _ = _label_index(ix)
    return torch.arange(P, device=q_labels.device)[None, :] < label_count[q_labels[r0:r1]][:, None]


def _label_rows(ix: _Index, r0: int, r1: int) -> native.LabelRows:
    """The chunk's same-label columns as the native passes read them: rows of the call's label table
    (each anchor's label its row; no (c × P) copy), or without a table the chunk's own
    `_same_label_cols`; each anchor's first ``label_count`` entries."""
    q_labels, label_count, _, _ = _label_index(ix)
    y = q_labels[r0:r1]
    table = _label_table(ix)
    if table is not None:
        return native.LabelRows(table, y, label_count[y])
    return native.LabelRows(_same_label_cols(ix, r0, r1, None), None, label_count[y])


def _same_label_cols(ix: _Index, r0: int, r1: int, pad: Tensor | None) -> Tensor:
    """(c, P) columns of every candidate sharing each anchor's label, padded (`_label_valid`) with
    ``pad`` (None: the label's first column)."""
    q_labels, label_count, label_start, k_order = _label_index(ix)
    y = q_labels[r0:r1]
    table = _label_table(ix)
    if table is not None:  # P is the largest label's size, for every chunk
        cols = table[y]
        return cols if pad is None else torch.where(_label_valid(ix, r0, r1, cols.shape[1]), cols, pad[:, None])
    P = max(1, int(label_count[y].max()))
    valid = _label_valid(ix, r0, r1, P)
    start = label_start[y][:, None]
    at = torch.clamp(start + torch.arange(P, device=y.device)[None, :], max=k_order.shape[0] - 1)
    pad_col = k_order[torch.clamp(start, max=k_order.shape[0] - 1)] if pad is None else pad[:, None]
    return torch.where(valid, k_order[at], pad_col)


def _softmax_lse_(X: Tensor, ws: _Workspace | None = None, sumsq: Tensor | None = None,
                  then: str | None = None, masks: Callable[[Tensor], None] | None = None) -> Tensor:
    """Row softmax P of X **in place**; returns the row log-sum-exp (and writes Σ_j P_ij² into
    ``sumsq`` if given). With ``ws``, block by block (one trip through memory for the whole run),
    and then, in the same block, ``then="square"``: X ← P ⊙ P, or ``then="tilt"``: X ← P ⊙ (P − Σ_j P_ij²/2)
    (the β = 1 gradient tile of `_gradient_tile`).

    lse_i = max_j X_ij − log max_j softmax_ij (the largest probability is ≥ 1/m: no underflow).
    Two cheap max reductions instead of a separate exp-sum pass (argmax is slow on CPU).

    ``masks`` (a caller that checked `_Workspace.shift_free`): `_exp_sums_` instead (no max shift,
    X left unnormalised), ``masks`` writing the masked entries of e^X."""
    if masks is not None:
        return _exp_sums_(X, ws, sumsq, then, masks)
    R = X.shape[0] if ws is None else ws.rows_per_block()
    lse = X.new_empty(X.shape[0])
    for r0 in range(0, X.shape[0], R):
        Xb = X[r0 : r0 + R]
        mx = Xb.amax(1)
        torch.ops.aten._softmax.out(Xb, 1, False, out=Xb)
        torch.sub(mx, torch.log(Xb.amax(1)), out=lse[r0 : r0 + R])
        if sumsq is not None:
            torch.linalg.vector_norm(Xb, dim=1, out=sumsq[r0 : r0 + R]).square_()
        if then == "square":
            Xb.mul_(Xb)
        elif then == "tilt":
            assert sumsq is not None and ws is not None  # then="tilt" is asked with both (_softmaxes_)
            Xb.mul_(torch.sub(Xb, 0.5 * sumsq[r0 : r0 + R, None], out=ws.block()[: Xb.shape[0]]))
    return lse


def _exp_sums_(X: Tensor, ws: _Workspace | None, sumsq: Tensor | None, then: str | None,
               masks: Callable[[Tensor], None]) -> Tensor:
    """`_softmax_lse_` without the max shift and without the normalisation, for a caller that
    checked `_Workspace.shift_free` for every exponent met (e^{2X} with ``sumsq``): E = e^X in
    place over the whole tile, ``masks(E)`` writing its masked entries by scatter over the whole
    tile, so the exp and the sums are not one blocked run (0 for a candidate that is none: X holds
    no −∞, whose exp takes a scalar slow path on CPU, three times the pass at 1 % of −∞), its row sums
    z_i = e^{lse_i} and Σ_j E_ij² in one call each. X is left holding z_i times the softmax, or
    z_i² times the ``then`` tile (E ⊙ E, E ⊙ (E − Σ_j E_ij² / 2 z_i)); the caller folds 1/z_i (1/z_i²)
    into the (c × d) operands of its products. Σ_j P_ij² = Σ_j E_ij² / z_i² goes to ``sumsq``."""
    masks(X.exp_())
    z = X.sum(1)
    half = None
    if sumsq is not None:
        ssq = torch.linalg.vector_norm(X, dim=1).square_()
        torch.div(ssq, z.square(), out=sumsq)
        half = ssq.div_(2.0 * z)  # z_i Σ_j P_ij² / 2, the tilt's shift on the E scale
    if then == "square":
        X.square_()
    elif then == "tilt":  # in cache-sized blocks: the shifted copy lives in the block scratch
        assert half is not None and ws is not None  # then="tilt" is asked with both (_softmaxes_)
        R = ws.rows_per_block()
        for r0 in range(0, X.shape[0], R):
            Xb = X[r0 : r0 + R]
            Xb.mul_(torch.sub(Xb, half[r0 : r0 + R, None], out=ws.block()[: Xb.shape[0]]))
    return torch.log(z)


def logsumexp_rows_(X: Tensor) -> Tensor:
    """Row log-sum-exp of X, which is overwritten with its row softmax (−∞ entries allowed, a row
    needs one finite entry). On CPU ``torch.logsumexp`` runs ``exp`` on −∞ and on underflowing
    entries through a scalar slow path (ten to a hundred times a plain pass); the softmax kernel does not."""
    return _softmax_lse_(X)


#: a selection of K columns per row takes the sparse products when (K + 1) · 96 ≤ m: a gathered or
#: index-added element costs as much as tens of multiply-adds of a product on CPU, so the gathers
#: and the index_add of (K + 1) nonzeros per row beat the two dense products over all m columns only
#: when K is a small share of m (docs/design.md §5, "Fused strategies", where it is measured: even
#: at 1 thread, where products gain least, the two paths cost the same near m / (K + 1) = 32)
SPARSE_RATIO = 96


def sparse_selection(K: int, m: int) -> bool:
    """Whether a selection keeping K of m columns per row (the positive besides) takes the sparse
    products (`Kept`): K + 1 nonzeros per row of the gradient tile, at most m / `SPARSE_RATIO`."""
    return m >= (K + 1) * SPARSE_RATIO


def softmax_block_(Xb: Tensor, n_b: Tensor, la: Tensor | None, inactive: Tensor | None,
                   free: bool) -> tuple[Tensor, Tensor | None]:
    """The softmax of one block of weighted rows in place (`_weighted_blocks_`): rows without a
    valid candidate (``n_b`` 0) or ``inactive`` become a row of 0 (a finite placeholder the caller
    skips); then, without log-weights (``la`` None) and within the shift-free bound (``free``),
    Xb ← e^{Xb} unnormalised, returning (lse, 1/Σ), else Xb ← softmax(Xb), returning (lse, None).
    e^{Xb} is 2^{Xb log₂e}: the block holds the −∞ its filters wrote, and ``exp`` of −∞ takes a
    scalar slow path on CPU (ten to twenty times the pass at half the entries −∞), ``exp2`` does not."""
    drop = n_b == 0
    if inactive is not None:
        drop = drop | inactive
    if bool(drop.any()):
        Xb.masked_fill_(drop[:, None], 0.0)
    if free and la is None:
        lse = torch.log(Xb.mul_(_LOG2_E).exp2_().sum(1))
        return lse, torch.exp(-lse)
    return _softmax_lse_(Xb), None


def _weighted_blocks_(S: Tensor, sp: Tensor, spec: KernelSpec, ws: _Workspace, r0: int,
                      active: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Kept | None, Tensor | None]:
    """``log_weight_block`` and the softmax in the same cache-sized blocks of rows (one trip
    through memory): each block gets its masks and log-weights a, then S ← π̃ = softmax(S + a) in
    place. Returns (valid count, lse(S + a), lse(a) over the valid candidates) per row, and None; a
    row left without a valid candidate (or inactive) becomes a finite placeholder, skipped by the
    caller. A selection whose blocks return few kept entries (`sparse_selection`) leaves S as it is:
    π̃ is the softmax of the chunk's kept values, returned as the fourth item.

    A block whose log-weights are all 0 (``lse_a`` None: filters and selections) stays within the
    bound of `_exp_room` and takes the shift-free softmax: S ← e^S unnormalised, each row's factor
    1/z_i in the fifth item (1 for a normalised row; None when every row is normalised)
    (`softmax_block_`). With ``log_weight_rows`` the whole chunk may take one call instead (the
    native row pass, `hardneg.losses.native`)."""
    c, m = S.shape
    free = ws.shift_free()
    inactive = None if active is None else ~active[r0 : r0 + c]
    if spec.log_weight_rows is not None:
        whole = spec.log_weight_rows(S, slice(r0, r0 + c), sp, inactive, free)
        if whole is not None:
            return whole[0], whole[1], whole[2], None, whole[3]
    R = ws.rows_per_block()
    weigh = spec.log_weight_block
    if weigh is None:
        raise ValueError("_weighted_blocks_ runs a log_weight_block")
    cnt = torch.empty(c, dtype=torch.long, device=S.device)
    lse_a, lse_b = S.new_empty(c), S.new_empty(c)
    chunk_kept: Kept | None = None
    scale: Tensor | None = None
    b0 = 0
    while b0 < c:
        b1 = min(c, b0 + R)
        Xb = S[b0:b1]
        n_b, la, kept = weigh(Xb, slice(r0 + b0, r0 + b1), sp[b0:b1])
        cnt[b0:b1] = n_b
        lse_a[b0:b1] = torch.log(n_b.to(S.dtype)) if la is None else la
        if b0 == 0 and kept is not None and sparse_selection(kept.cols.shape[1], m):
            K = kept.cols.shape[1]
            chunk_kept = Kept(S.new_empty(c, K), torch.empty(c, K, dtype=torch.long, device=S.device))
        if chunk_kept is not None:  # the softmax runs once over the chunk's kept values, below
            if kept is None or kept.cols.shape != (b1 - b0, chunk_kept.cols.shape[1]):
                raise ValueError("log_weight_block must keep the same number of entries per row in every block")
            chunk_kept.values[b0:b1] = kept.values
            chunk_kept.cols[b0:b1] = kept.cols
            # a selection kept apart from the tile writes nothing back, so no block need stay in
            # the cache: the rest of the chunk is one block (top-k at 2B = 8192 took 1.44× the
            # floor with a call per 1 MB block, 1.00–1.06× so)
            b0, R = b1, c
            continue
        if kept is not None:
            kept.write_(Xb)
        lse_b[b0:b1], sc = softmax_block_(Xb, n_b, la, None if inactive is None else inactive[b0:b1], free)
        if sc is not None:
            if scale is None:
                scale = torch.ones(c, dtype=S.dtype, device=S.device)
            scale[b0:b1] = sc
        b0 = b1
    if chunk_kept is not None:
        drop = cnt == 0
        if inactive is not None:
            drop = drop | inactive
        if bool(drop.any()):
            chunk_kept.values.masked_fill_(drop[:, None], 0.0)
        lse_b = _softmax_lse_(chunk_kept.values)  # the values now hold π̃ over the kept columns
    return cnt, lse_b, lse_a, chunk_kept, scale


@dataclass
class _Chunk:
    """One chunk of anchors r0:r1, the state its named steps share: the inputs (k, the chunk's
    qs = q[r0:r1] / t, the tile S = qs kᵀ in the workspace ``ws``, ``go`` its upstream gradient or
    None, the call's dq and dk that the gradient steps fill, ``self_rc`` the anchors' own entries)
    and what each step leaves for the next (docs/design.md §5, "The chunk and its steps").

    The general path (`_chunk_general`): `_mask_rule` (which entries are no candidates: the anchor
    itself, its positive(s), the other_labels filter; `mask_` writes them), `_normaliser`
    (log-weights, the softmaxes or row sums, shift-free or shifted, skipped rows; the log negative
    term), `_terms` (the per-positive loss terms, label positives included) and `_gradient_tile`
    (γ, δ, the tile D and its products, `_products_` / `_sparse_products_`). The lean path
    (`_chunk_lean`): `_lean_normaliser`, `_lean_terms`, `_lean_products`."""

    k: Tensor
    qs: Tensor
    S: Tensor
    spec: KernelSpec
    ix: _Index
    ws: _Workspace
    r0: int
    r1: int
    go: Tensor | None
    dq: Tensor | None
    dk: Tensor | None
    self_rc: tuple[Tensor, Tensor] | None
    # the mask (`_mask_rule`; the lean path's positives in `_lean_normaliser`)
    rows: Tensor | None = None  # (c,) arange: each anchor's row of the tile
    pcol: Tensor | None = None  # (c,) column of each anchor's positive (one positive per anchor)
    same_cols: Tensor | None = None  # (c, P) same-label columns (label positives or other_labels), torch path
    label_rows: native.LabelRows | None = None  # the same, as the native row pass reads them (`_label_rows`)
    # the normaliser (`_normaliser`, `_lean_normaliser`)
    act: Tensor | None = None  # (c,) bool: anchors not skipped (None: every anchor)
    all_active: bool = True
    A: Tensor | None = None  # log π numerators β S + a (β ∉ {0, 1} or extra log-weights), then π
    kept: Kept | None = None  # a sparse selection's kept entries, holding π̃ over them
    tile_scale: Tensor | None = None  # per row, the factor of the unnormalised tile S (None: 1)
    z: Tensor | None = None  # row sums of E = e^S (the lean path within the bound)
    z2: Tensor | None = None  # Σ_j π_ij² under the root tilt
    native: bool = False  # the softmax runs in the native row pass (`_native_rows`)
    EK: Tensor | None = None  # E [k | 1], made with the row sums (`_Workspace.k_ones`)
    # the lean path's label positives (`_lean_terms`)
    npos: Tensor | None = None  # (c,) |P_i|, at least 1
    pos_k: Tensor | None = None  # (c, d) Σ_{p∈P(i)} k_p

    @property
    def c(self) -> int:
        return self.r1 - self.r0

    def go_rows(self) -> Tensor:
        """The upstream gradient, one value per row of the chunk."""
        if self.go is None:
            raise ValueError("the gradient steps run with an upstream gradient")
        return self.go.expand(self.c) if self.go.dim() == 0 else self.go

    def grads(self) -> tuple[Tensor, Tensor]:
        """(dq, dk), which the gradient steps fill."""
        if self.dq is None or self.dk is None:
            raise ValueError("the gradient steps run with dq and dk")
        return self.dq, self.dk

    def mask_(self, X: Tensor, fill: float = _NEG_INF) -> None:
        """Writes ``fill`` on the entries that are no candidate: −∞ on S, 0 on e^S; by scatter (no
        boolean pass over the tile)."""
        if self.self_rc is not None:
            X[self.self_rc[0], self.self_rc[1]] = fill
        if self.pcol is not None:
            X[self.rows, self.pcol] = fill
        if self.spec.negatives == "other_labels" and self.same_cols is not None:
            X.scatter_(1, self.same_cols, fill)

    def masks_(self, E: Tensor) -> None:
        """e^S's masks: 0 on the entries that are no candidate, then a skipped row of ones (finite, z = m)."""
        self.mask_(E, 0.0)
        if self.act is not None and not self.all_active:
            E.masked_fill_(~self.act[:, None], 1.0)


def _chunk(q: Tensor, k: Tensor, spec: KernelSpec, ix: _Index, ws: _Workspace, r0: int, r1: int,
           go: Tensor | None, dq: Tensor | None, dk: Tensor | None) -> Tensor:
    """Loss of anchors r0:r1; if ``go`` (their upstream gradient) is given, writes dQ[r0:r1] and adds to dK."""
    c = r1 - r0
    qs = q[r0:r1] * (1.0 / spec.t)  # temperature folded into the (c × d) operand
    S = torch.mm(qs, k.T, out=ws.S[:c])  # (c, m) = s / t
    ch = _Chunk(k, qs, S, spec, ix, ws, r0, r1, go, dq, dk, _self_entries(ix, ws, r0, r1))
    if spec.lean and (spec.positives == "labels" or ix.active is None):
        return _chunk_lean(ch)
    return _chunk_general(ch)


def _root_tilt(spec: KernelSpec) -> bool:
    """β = 1 without extra log-weights: π = softmax(S) and the tilted π̃ ∝ e^{2S} = π² / Σπ², so one
    softmax serves both (no second softmax over its own (c × m) tile, no exp or sqrt of π̃)."""
    return spec.beta == 1.0 and spec.log_weight_fn is None


def _chunk_lean(ch: _Chunk) -> Tensor:
    """Uniform, plain-sum InfoNCE (NT-Xent) and SupCon L_out. Within `_exp_room` (t ≥ 0.025 for
    L2-normalised inputs): E = e^S in place, one pass over the tile, left unnormalised; its row sums
    z come from the native row pass (`_lean_native`), or with the dQ product (`_Workspace.k_ones`) or
    from a sum without a gradient on the torch path. Otherwise
    the fused in-place (log-)softmax, E = softmax and z = 1. Either way the gradient tile
    (softmax − the positives) is never written: go_i / z_i scales the (c × d) operands of the two
    products and the positives' terms go straight to their rows."""
    lse, sp = _lean_normaliser(ch)
    loss = _lean_terms(ch, lse, sp)
    if ch.go is not None:
        _lean_products(ch)
    return loss


def _lean_normaliser(ch: _Chunk) -> tuple[Tensor | None, Tensor | None]:
    """The lean path's mask and normaliser; returns (lse, s_ip/t) per row, each None where
    `_lean_terms` takes it from the fused log-softmax. Within the bound: s_ip/t read first, E = e^S
    with 0 on the anchor itself (not −∞ on S: exp of −∞ is slow on CPU) and a placeholder row of ones
    for an anchor without any candidate, z from the native row pass (`_lean_native`), or from E [k | 1]
    with a gradient (``ch.EK``) or a sum.
    Otherwise −∞ on the anchor itself and, with label positives, a finite placeholder row and the
    in-place softmax."""
    S, ix, r0, r1 = ch.S, ch.ix, ch.r0, ch.r1
    ch.act = act = None if ix.active is None else ix.active[r0:r1]
    view = ch.spec.positives == "view"
    if view:
        if ix.pos_index is None:
            raise ValueError('positives="view" needs pos_index')
        ch.pcol = ix.pos_index[r0:r1]
    if not ch.ws.shift_free():
        if ch.self_rc is not None:
            S[ch.self_rc[0], ch.self_rc[1]] = _NEG_INF
        if view:
            return None, None
        if act is not None:  # an anchor without any candidate: a finite placeholder row
            S.masked_fill_(~act[:, None], 0.0)
        return _softmax_lse_(S, ch.ws), None
    sp = S[ch.ws.rows(ch.c), ch.pcol] if view else None  # a copy, read before the exp
    if native.takes(S):
        return _lean_native(ch), sp
    S.exp_()
    if ch.self_rc is not None:
        S[ch.self_rc[0], ch.self_rc[1]] = 0.0
    if act is not None:  # an anchor without any candidate: a placeholder row of ones
        S.masked_fill_(~act[:, None], 1.0)
    if ch.go is None:
        ch.z = S.sum(1)
    else:
        ch.EK = torch.mm(S, ch.ws.k_ones(ch.k))
        ch.z = ch.EK[:, ch.k.shape[1]]
    return torch.log(ch.z), sp


def _lean_native(ch: _Chunk) -> Tensor:
    """`_lean_normaliser` within the bound in the native row pass (`native.softmax_rows_`, shift-free):
    E = e^S with 0 on the anchor itself and a placeholder row of ones for an anchor without any
    candidate, its row sums z in the same trip, and the diagnostics' sampled rows copied before it
    (``record_rows``). The dQ product E k then has d columns, where the torch path's E [k | 1] takes
    its row sums from k padded to d + 16 columns (`_Workspace.k_ones`: a product ~12 % longer at
    d = 128). Returns lse = log z."""
    spec, r0, r1 = ch.spec, ch.r0, ch.r1
    self_col = None if ch.ix.self_index is None else ch.ix.self_index[r0:r1]  # −1: none
    rec = None if spec.record_rows is None else spec.record_rows(slice(r0, r1))
    lse, _ = native.softmax_rows_(ch.S, None if ch.act is None else ~ch.act, True, None, self_col=self_col,
                                  rec_slot=None if rec is None else rec[0], rec=None if rec is None else rec[1])
    ch.z = torch.exp(lse)
    if ch.go is not None:
        ch.EK = torch.mm(ch.S, ch.k)
    return lse


def _lean_terms(ch: _Chunk, lse: Tensor | None, sp: Tensor | None) -> Tensor:
    """The lean path's per-anchor losses: −log softmax(S)_{i, p} (lse − s_ip/t, or the fused
    log-softmax, which leaves the softmax in S for the gradient), or SupCon L_out
    ℓ_i = lse_{a≠i}(S) − mean_{p∈P(i)} S_ip with the mean from per-label sums of k (O(n d)); an
    anchor without a positive gets loss 0 and upstream gradient 0 (candidates module)."""
    if ch.spec.positives == "view":
        if lse is None or sp is None:
            assert ch.pcol is not None  # set by _lean_normaliser for positives="view"
            return _log_softmax_nll_(ch.S, ch.pcol, ch.ws, exp=ch.go is not None)
        return lse - sp
    ix, r0, r1 = ch.ix, ch.r0, ch.r1
    if lse is None or ix.q_labels is None or ix.n_pos is None or ch.ws.k_label_sums is None:
        raise ValueError("label positives need q_labels, k_labels and the label sums of k")
    y = ix.q_labels[r0:r1]
    ch.npos = npos = ix.n_pos[r0:r1].clamp(min=1).to(ch.S.dtype)
    pos_k = ch.ws.k_label_sums[y]  # Σ_{j: y_j = y_i} k_j; indexing by a tensor copies, so it may be written
    if ch.self_rc is not None:
        pos_k[ch.self_rc[0]] -= ch.k[ch.self_rc[1]]
    ch.pos_k = pos_k
    loss = lse - (ch.qs * pos_k).sum(1) / npos
    if ch.act is not None:
        loss = torch.where(ch.act, loss, torch.zeros_like(loss))
        if ch.go is not None:
            ch.go = ch.go_rows() * ch.act.to(ch.S.dtype)
    return loss


def _lean_products(ch: _Chunk) -> None:
    """The lean path's gradient. dS = go (E / z − positives): dQ = (go / z) E K / t − go (positives'
    k) / t, dK += Eᵀ ((go / z) qs) − (the positives' rows get go qs); E is S, the tile is not
    written."""
    S, k, qs, spec, r0, r1 = ch.S, ch.k, ch.qs, ch.spec, ch.r0, ch.r1
    dq, dk = ch.grads()
    d = k.shape[1]
    go_c = ch.go_rows()
    w = go_c if ch.z is None else go_c / ch.z
    if ch.EK is None:
        torch.mm(S, k, out=dq[r0:r1]).mul_((w * (1.0 / spec.t))[:, None])
    else:
        torch.mul(ch.EK[:, :d], (w * (1.0 / spec.t))[:, None], out=dq[r0:r1])
    dk.addmm_(S.T, qs * w[:, None])
    if ch.pcol is not None:
        dq[r0:r1].sub_(k[ch.pcol] * (go_c * (1.0 / spec.t))[:, None])
        dk.index_add_(0, ch.pcol, qs * (-go_c)[:, None])
        return
    # labels mode: the positive part −go/|P_i| on every same-label candidate, via label sums
    if ch.npos is None or ch.pos_k is None or ch.ix.q_labels is None or ch.ws.label_acc is None:
        raise ValueError("label positives need the label sums of k (_lean_terms)")
    wp = go_c / ch.npos
    dq[r0:r1].sub_(ch.pos_k * (wp * (1.0 / spec.t))[:, None])
    wq = wp[:, None] * qs
    ch.ws.label_acc.index_add_(0, ch.ix.q_labels[r0:r1], -wq)  # applied to every k row of that label at the end
    if ch.self_rc is not None:
        dk.index_add_(0, ch.self_rc[1], wq[ch.self_rc[0]])  # the anchor is not its own positive


def _extra_log_weights(S: Tensor, spec: KernelSpec, r0: int, r1: int) -> Tensor | None:
    """The chunk's ``log_weight_fn`` log-weights (c × m), checked, in S's dtype; None without one."""
    if spec.log_weight_fn is None:
        return None
    c, m = S.shape
    extra = spec.log_weight_fn(S * spec.t, slice(r0, r1))
    if tuple(extra.shape) != (c, m):
        raise ValueError(f"log_weight_fn must return shape {(c, m)}, got {tuple(extra.shape)}")
    return extra.to(S.dtype)


def _chunk_general(ch: _Chunk) -> Tensor:
    """Every other case: label masks, β tilt, extra log-weights, nominal N, τ⁺ debiasing, label
    positives; the steps of `_Chunk` in turn."""
    ch.native = _native_rows(ch)
    _mask_rule(ch)
    S = ch.S
    # the positive similarities, read before masking: (c,), or (c, P) with label positives (by the
    # native row pass, in `_normaliser`, when it runs)
    if ch.pcol is not None:
        sp = S[ch.rows, ch.pcol]  # advanced indexing: a copy
    elif ch.label_rows is not None:
        sp = S.new_empty(ch.c, ch.label_rows.width)
    else:
        assert ch.same_cols is not None  # built by _mask_rule for label positives
        sp = S.gather(1, ch.same_cols)
    neg, logN = _normaliser(ch, sp, _extra_log_weights(S, ch.spec, ch.r0, ch.r1))
    loss, npos, G, D = _terms(ch, neg, sp, logN)
    if ch.act is not None and not ch.all_active:
        loss = torch.where(ch.act, loss, torch.zeros_like(loss))
    if ch.go is not None:
        assert G is not None and D is not None  # made with an upstream gradient (`_terms`)
        _gradient_tile(ch, npos, G, D)
    return loss


def _mask_rule(ch: _Chunk) -> None:
    """The general path's candidate rule: each anchor's positive column (one positive per anchor),
    or its same-label columns (label positives: those of them that are candidates, `_label_valid`,
    but the anchor itself; `_terms`), the same-label columns being what ``negatives="other_labels"``
    removes (`_label_rows` for the native row pass, which writes the rule in its own pass).
    `_Chunk.mask_` writes the rule on the tile."""
    ix, r0, r1 = ch.ix, ch.r0, ch.r1
    ch.rows = ch.ws.rows(ch.c)
    labels_mode = ch.spec.positives == "labels"
    if not labels_mode:
        if ix.pos_index is None:
            raise ValueError('positives="view" needs pos_index')
        ch.pcol = ix.pos_index[r0:r1]
    if (labels_mode or ch.spec.negatives == "other_labels") and ch.native:
        ch.label_rows = _label_rows(ix, r0, r1)
    elif labels_mode or ch.spec.negatives == "other_labels":
        # padded with the positive's column, or with the label's first
        ch.same_cols = _same_label_cols(ix, r0, r1, ch.pcol)


def _normaliser(ch: _Chunk, sp: Tensor, extra: Tensor | None) -> tuple[Tensor, Tensor]:
    """The general path's normaliser: the masks, the log-weights (β S, ``extra``, or the fused
    ``log_weight_block``), the valid counts and skipped rows (``ch.act``), and the softmaxes or row
    sums, shift-free (`_exp_room`; masks as 0 on e^S, `_Chunk.masks_`) or shifted (masks as −∞ on S).
    Returns (neg, log N) per row: neg = log N Σ_j π_ij e^{S_ij} = log N + lse(a + S) − lse(a). Leaves
    π̃ (or its unnormalised, or root-tilt gradient, form) in S and sets ``A``, ``kept``,
    ``tile_scale``, ``z2``, ``EK`` for `_gradient_tile`."""
    S, spec, ws, ix, r0, r1, c = ch.S, ch.spec, ch.ws, ch.ix, ch.r0, ch.r1, ch.c
    root_tilt = _root_tilt(spec)
    tilted = spec.beta != 0.0 or extra is not None
    blocked = spec.log_weight_block is not None  # β = 0 (checked): S ← π̃ in the blocks, no A
    # shift-free softmax (`_exp_room`, e^{2S} under the root tilt): masks as 0 on e^S (`_exp_sums_`)
    free = not blocked and (ws.shift_free(2.0) if root_tilt else not tilted and ws.shift_free())
    if not free and not ch.native:  # the native row pass writes the rule in its own pass
        ch.mask_(S)
    A = lse_a = lse_b = None
    cnt: Tensor | None
    if blocked:
        cnt, lse_b, lse_a, ch.kept, ch.tile_scale = _weighted_blocks_(S, sp, spec, ws, r0, ix.active)
    else:
        if tilted and not root_tilt:  # A = β S + extra (log π numerators);  S ← S + A (log π̃ numerators)
            A = ws.second(c)
            if spec.beta != 0.0:
                torch.mul(S, spec.beta, out=A)
                if extra is not None:
                    A.add_(extra)
            elif extra is not None:  # tilted: β ≠ 0 or extra log-weights
                A.copy_(extra)
                ch.mask_(A)
            S.add_(A)
        # valid candidates are the finite entries; S is finite or −∞ (a NaN log-weight is not valid either)
        cnt = (S > _NEG_INF).sum(1) if extra is not None or ix.n_valid is None else None
    if cnt is None:  # the counts of the candidate rule alone: the call's (`_Workspace.counts`)
        counts = ws.counts(ix, spec.n_neg)
        act, cntf, logN = counts.act[r0:r1], counts.cntf[r0:r1], counts.log_n[r0:r1]
        all_active = counts.all_active or bool(act.all())
    else:
        act = cnt > 0
        all_active = bool(act.all())
        if (extra is not None or blocked) and not all_active:
            ws.skipped.append(torch.nonzero(~act).flatten() + r0)
        if ix.active is not None:
            act = act & ix.active[r0:r1]
            all_active = bool(act.all())
        cntf = (cnt if all_active else torch.where(act, cnt, torch.ones_like(cnt))).to(S.dtype)
        logN = torch.log(cntf) if spec.n_neg is None else torch.full((c,), math.log(spec.n_neg), dtype=S.dtype,
                                                                       device=S.device)
    ch.act, ch.all_active, ch.A = act, all_active, A
    if not ch.all_active:  # skipped anchors: finite placeholders, zero loss and gradient later
        if lse_a is not None:  # blocked
            lse_a = torch.where(act, lse_a, torch.zeros_like(lse_a))
        elif not free and not ch.native:  # (free: after the exp, in ``masks_``; native: in its pass)
            S.masked_fill_(~act[:, None], 0.0)
        if A is not None:
            A.masked_fill_(~act[:, None], 0.0)
    if ch.native:
        lse_a, lse_b, ch.z2, ch.tile_scale, ch.EK = _native_softmaxes_(ch, sp, free, cntf)
    elif lse_a is None or lse_b is None:  # one positive per anchor, a gradient: row sums of e^S from E [k | 1]
        lse_a, lse_b, ch.z2, ch.tile_scale, ch.EK = _softmaxes_(
            S, A, ws, spec, ch.go is not None, cntf, ch.masks_ if free else None,
            ch.k if ch.go is not None and ch.pcol is not None else None)
    return logN + lse_b - lse_a, logN


def _gradient_tile(ch: _Chunk, npos: Tensor | None, G: Tensor | float, D: Tensor | float) -> None:
    """The gradient wrt S, γ_i [(1 + β) π̃ − β π] (only π̃ when π is detached) + δ on the positives,
    and its products into dq and dk. D = γ [(1 + β) π̃ − β π] = γ' [π̃ − β/(1+β) π] with
    γ' = (1 + β) γ: one pass over the tile, none at β = 1 (made in the softmax's blocks) nor for a
    sparse selection (β = 0, π detached: D = γ π̃ on the kept columns, δ on the positive)."""
    spec = ch.spec
    gamma, delta = _grad_weights(ch, npos, G, D)
    if ch.kept is not None:
        _sparse_products_(ch, ch.kept, gamma, delta)
        return
    if ch.z2 is not None:  # π̃ = π²/Σπ²:  γ[2π̃ − π] = (2γ/Σπ²) π ⊙ (π − Σπ²/2), S holds π ⊙ (π − Σπ²/2)
        gamma = gamma / ch.z2 if spec.detach_weights else gamma * (2.0 / ch.z2)  # detached: γπ̃, S holds π²
    elif ch.A is not None and spec.beta != 0.0 and not spec.detach_weights:
        ch.S.sub_(ch.A, alpha=spec.beta / (1.0 + spec.beta))
        gamma = gamma * (1.0 + spec.beta)
    if ch.tile_scale is not None:
        gamma = gamma * ch.tile_scale
    _products_(ch, gamma, delta)


def _native_rows(ch: _Chunk) -> bool:
    """Whether `_normaliser`'s softmax runs in the native row pass (`hardneg.losses.native`): a float32
    CPU tile, no log-weights, and β = 1 (the root tilt) or β = 0 within the shift-free bound."""
    spec = ch.spec
    if spec.log_weight_block is not None or spec.log_weight_fn is not None or not native.takes(ch.S):
        return False
    return _root_tilt(spec) or (spec.beta == 0.0 and ch.ws.shift_free())


def _native_softmaxes_(ch: _Chunk, sp: Tensor, free: bool, cntf: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """`_softmaxes_` in the native row pass: one call for the candidate rule by columns (the anchor
    itself, its positive, the other-labels rule; label positives' ``sp`` gathered first), the exp,
    the row sums, Σ e^{2S} and, under the root tilt, the gradient tile — each row in a core's L1
    cache, where the torch path makes a scatter and three whole-tile passes. Inactive rows become
    the torch path's placeholders. The dQ product of E comes without the column of ones (the pass
    has the row sums)."""
    S, spec = ch.S, ch.spec
    self_col = None if ch.ix.self_index is None else ch.ix.self_index[ch.r0 : ch.r1]  # −1: none
    labels = ch.pcol is None
    fill = spec.negatives == "other_labels"
    then = None
    if ch.go is not None and _root_tilt(spec):
        then = "square" if spec.detach_weights else "tilt"
    inactive = None if ch.all_active or ch.act is None else ~ch.act
    rec = None if spec.record_rows is None else spec.record_rows(slice(ch.r0, ch.r1))
    lse, z2 = native.softmax_rows_(S, inactive, free, then, self_col=self_col,
                                   pos_col=ch.pcol, cols=ch.label_rows if labels or fill else None, fill_cols=fill,
                                   gather=sp if labels else None, rec_slot=None if rec is None else rec[0],
                                   rec=None if rec is None else rec[1])
    if _root_tilt(spec):
        scale = torch.exp(-2.0 * lse) if free and then is not None else None
        return lse, 2.0 * lse + torch.log(z2), z2, scale, None
    EK = torch.mm(S, ch.k) if ch.go is not None and not labels else None
    return torch.log(cntf), lse, None, torch.exp(-lse) if free else None, EK


def _softmaxes_(S: Tensor, A: Tensor | None, ws: _Workspace, spec: KernelSpec, grad: bool, cntf: Tensor,
                masks: Callable[[Tensor], None] | None, k: Tensor | None = None,
                ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The softmaxes of `_normaliser` outside the fused blocks, in place: returns (lse(a),
    lse(a + S), Σ_j π_ij² under the root tilt or None, each row's factor for the tile S or None,
    E [k | 1] or None). log of N Σ_j π_ij e^{S_ij} is log N + lse(a + S) − lse(a). ``masks``:
    shift-free (`_exp_sums_`), S left unnormalised and the factor 1/z_i (1/z_i² for the root tilt's
    gradient tile); with ``k`` too (no tilt), the row sums come from the product E [k | 1]
    (`_Workspace.k_ones`), whose first d columns are the dQ product of the tile."""
    if _root_tilt(spec):  # S ← π = softmax(S);  Σ e^{2S} = e^{2 lse(S)} Σπ²
        z2 = S.new_empty(S.shape[0])
        # with a gradient to compute, the tile is turned into it in the same blocks (see below)
        then = None if not grad else ("square" if spec.detach_weights else "tilt")
        lse_a = _softmax_lse_(S, ws, sumsq=z2, then=then, masks=masks)
        scale = torch.exp(-2.0 * lse_a) if masks is not None and then is not None else None
        return lse_a, 2.0 * lse_a + torch.log(z2), z2, scale, None
    EK = None
    if masks is not None and k is not None:
        masks(S.exp_())
        EK = torch.mm(S, ws.k_ones(k))
        lse_b = torch.log(EK[:, k.shape[1]])
    else:
        lse_b = _softmax_lse_(S, ws, masks=masks)  # S now holds π̃ = softmax(a + S) (z π̃ with masks)
    lse_a = _softmax_lse_(A) if A is not None else torch.log(cntf)  # A now holds π
    return lse_a, lse_b, None, None if masks is None else torch.exp(-lse_b), EK


def _terms(ch: _Chunk, neg: Tensor, sp: Tensor, logN: Tensor
           ) -> tuple[Tensor, Tensor | None, Tensor | float | None, Tensor | float | None]:
    """Per-anchor losses from the log negative term ``neg``; returns (loss, |P_i| or None, G, Δ):
    the gradient wrt S is w_i G_i on the softmax tile and w_i Δ_i on the positives (`_grad_weights`;
    G = ∂ℓ/∂g ∂g/∂neg summed over the positives, Δ = ∂ℓ/∂s_p + ∂ℓ/∂g ∂g/∂s_p), (c,) for one
    positive per anchor, Δ (c × P) at ``ch.same_cols`` for label positives (0 on those that are not
    the anchor's: `_label_valid`, the anchor itself); G and Δ None without an upstream gradient.
    Label positives with τ⁺ = 0 on the native row pass take `native.label_terms`."""
    spec, grad = ch.spec, ch.go is not None
    if spec.positives != "labels":
        g, dg_dneg, dg_dsp = _debias(neg, sp, logN, spec)
        loss, dl_dg, dl_dsp = _per_positive(g, sp, spec)
        if not grad:
            return loss, None, None, None
        if isinstance(dg_dneg, float) and isinstance(dg_dsp, float) and dg_dneg == 1.0 and dg_dsp == 0.0:
            return loss, None, dl_dg, dl_dsp  # no debiasing (τ⁺ = 0): g is neg itself
        return loss, None, dl_dg * dg_dneg, dl_dsp + dl_dg * dg_dsp
    ix, r0, r1 = ch.ix, ch.r0, ch.r1
    if ix.n_pos is None:
        raise ValueError("label positives need q_labels and k_labels")
    npos = ix.n_pos[r0:r1].clamp(min=1).to(neg.dtype)
    self_col = None if ix.self_index is None else ix.self_index[r0:r1]
    G: Tensor | float | None
    D: Tensor | float | None
    if ch.label_rows is not None and spec.tau_plus == 0.0:  # the native row pass, no (c × P) copy of the columns
        loss, G, D = native.label_terms(sp, ch.label_rows, self_col, neg, spec.include_positive)
    else:
        cols = ch.same_cols if ch.same_cols is not None else _same_label_cols(ix, r0, r1, None)
        valid = _label_valid(ix, r0, r1, cols.shape[1])
        pv = (valid if self_col is None else valid & (cols != self_col[:, None])).to(neg.dtype)
        if spec.tau_plus == 0.0 and not spec.include_positive:
            loss, G, D = npos * neg - (sp * pv).sum(1), npos, -pv
        else:
            g, dg_dneg, dg_dsp = _debias(neg[:, None], sp, logN[:, None], spec)
            ell, dl_dg, dl_dsp = _per_positive(g, sp, spec)
            loss = (ell * pv).sum(1)
            G = D = None
            if grad and isinstance(dg_dneg, float):  # τ⁺ = 0: g is neg itself
                G, D = (dl_dg * pv).sum(1), dl_dsp * pv
            elif grad:
                G, D = (dl_dg * dg_dneg * pv).sum(1), (dl_dsp + dl_dg * dg_dsp) * pv
    if spec.positive_reduce == "mean":
        loss = loss / npos
    return loss, npos, G, D


def _grad_weights(ch: _Chunk, npos: Tensor | None, G: Tensor | float, D: Tensor | float) -> tuple[Tensor, Tensor]:
    """Per-row γ (the weight of the softmax tile) and δ (the positives' terms, per positive under
    label positives) of the gradient wrt S: γ = w G and δ = w Δ from `_terms`, with w the upstream
    gradient (over |P_i| for the mean over label positives); skipped rows get 0."""
    go_c = ch.go_rows()
    if ch.act is not None and not ch.all_active:
        go_c = go_c * ch.act.to(go_c.dtype)
    w = go_c if (npos is None or ch.spec.positive_reduce == "pairs") else go_c / npos
    gamma = w * G
    delta = w[:, None] * D if ch.spec.positives == "labels" else w * D
    return gamma, delta


def _products_(ch: _Chunk, gamma: Tensor, delta: Tensor) -> None:
    """dQ[r0:r1] and the chunk's share of dK from the tile D (``ch.S``) and the per-row γ and δ
    (label positives: δ per positive, at ``ch.same_cols`` or ``ch.label_rows``; otherwise one
    positive per anchor, at ``ch.pcol``). ``ch.EK``: the product D [k | 1] made already
    (`_softmaxes_`), one positive per anchor.

    γ scales the (c × d) operands rather than the tile, and the positives' δ enters the tile as δ/γ
    at their columns (0 there: the candidate rule removed them), so that the two products carry the
    positives' terms too. A row with γ = 0 and δ ≠ 0 (a clamped debiased estimator) needs the tile
    scaled instead."""
    D, k, qs, spec, r0, r1 = ch.S, ch.k, ch.qs, ch.spec, ch.r0, ch.r1
    dq, dk = ch.grads()
    if ch.EK is not None:  # the dQ product made already: the positive's term goes straight to its two rows
        assert ch.pcol is not None  # EK is made for one positive per anchor (`_softmaxes_`)
        torch.mul(ch.EK[:, : k.shape[1]], (gamma / spec.t)[:, None], out=dq[r0:r1])
        dq[r0:r1].add_(k[ch.pcol] * (delta / spec.t)[:, None])
        dk.addmm_(D.T, qs * gamma[:, None])
        dk.index_add_(0, ch.pcol, qs * delta[:, None])
        return
    labels = spec.positives == "labels"
    if labels:  # δ per label column (0 on those that are no positive)
        per_col = delta
        cols = None if ch.label_rows is not None else ch.same_cols
    else:
        assert ch.pcol is not None  # built by _mask_rule for positives="view"
        cols, per_col = ch.pcol[:, None], delta[:, None]
    zero = gamma == 0
    if bool(zero.any()):
        if bool((zero[:, None] & (per_col != 0)).any()):
            D.mul_(gamma[:, None])
            D.scatter_add_(1, _same_label_cols(ch.ix, r0, r1, None) if cols is None else cols, per_col)
            torch.mm(D, k, out=dq[r0:r1]).mul_(1.0 / spec.t)
            dk.addmm_(D.T, qs)
            return
        gamma_div = torch.where(zero, torch.ones_like(gamma), gamma)
    else:
        gamma_div = gamma
    if cols is None:  # the native row pass's label rows: δ/γ by their table (`native.label_scatter_`)
        assert ch.label_rows is not None
        native.label_scatter_(D, ch.label_rows, per_col.contiguous(), 1.0 / gamma_div)
    else:
        D.scatter_add_(1, cols, per_col / gamma_div[:, None])
    torch.mm(D, k, out=dq[r0:r1]).mul_((gamma / spec.t)[:, None])
    dk.addmm_(D.T, qs * gamma[:, None])


def _sparse_products_(ch: _Chunk, kept: Kept, gamma: Tensor, delta: Tensor) -> None:
    """dQ[r0:r1] and the chunk's share of dK when the gradient tile has K + 1 nonzeros per row:
    γ π̃ on the kept columns (``kept.values`` hold π̃) and δ on the positive. dQ_i = Σ_j D_ij k_j / t
    by a batched product with the gathered kept rows of k, dK_j += D_ij q_i / t by index_add, in
    blocks of rows whose (rows × K × d) gathers stay cache-sized (twice as fast as the whole chunk's
    on CPU)."""
    k, qs, r0, r1, pcol = ch.k, ch.qs, ch.r0, ch.r1, ch.pcol
    dq, dk = ch.grads()
    assert pcol is not None  # a fused selection has one positive per anchor (KernelSpec)
    W = kept.values.mul_(gamma[:, None])  # (c, K): D without the positive
    c, K = kept.cols.shape
    R = max(1, _BLOCK // max(1, K * k.shape[1]))
    for b0 in range(0, c, R):
        b1 = min(c, b0 + R)
        cb = kept.cols[b0:b1].flatten()
        kg = k.index_select(0, cb).unflatten(0, (b1 - b0, K))  # index_select: far cheaper than k[cols] on CPU
        dq[r0 + b0 : r0 + b1] = torch.bmm(W[b0:b1, None, :], kg).squeeze(1)
        dk.index_add_(0, cb, (W[b0:b1, :, None] * qs[b0:b1, None, :]).flatten(0, 1))
    dq[r0:r1].add_(k[pcol] * delta[:, None]).mul_(1.0 / ch.spec.t)
    dk.index_add_(0, pcol, qs * delta[:, None])


def _debias(neg: Tensor, sp: Tensor, logN: Tensor, spec: KernelSpec):
    """g = log G with Chuang et al.'s estimator; returns (g, ∂g/∂neg, ∂g/∂s_p)."""
    if spec.tau_plus == 0.0:
        g = neg.expand_as(sp) if neg.dim() < sp.dim() or neg.shape != sp.shape else neg
        return g, 1.0, 0.0
    tp = spec.tau_plus
    x = sp + (math.log(tp) + logN) - neg  # τ⁺ N e^{s_p} / (N Σ π e^{s})
    floor = logN - 1.0 / spec.t  # log(N e^{−1/t})
    ex = torch.exp(torch.clamp(x, max=0.0))
    raw = neg + torch.log1p(-torch.clamp(ex, max=1.0 - 1e-7)) - math.log1p(-tp)
    ok = (x < 0) & (raw > floor) if spec.clamp else (x < 0)
    g = torch.where(ok, raw, floor.expand_as(raw))
    one_m = torch.clamp(1.0 - ex, min=1e-7)
    dg_dneg = torch.where(ok, 1.0 / one_m, torch.zeros_like(raw))
    dg_dsp = torch.where(ok, -ex / one_m, torch.zeros_like(raw))
    return g, dg_dneg, dg_dsp


def _per_positive(g: Tensor, sp: Tensor, spec: KernelSpec):
    """ℓ = softplus(g − s_p) (positive in the denominator) or g − s_p; returns (ℓ, ∂ℓ/∂g, ∂ℓ/∂s_p)."""
    if spec.include_positive:
        z = g - sp
        sig = torch.sigmoid(z)
        return F.softplus(z), sig, -sig
    return g - sp, 1.0, -1.0


# --------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------


def _run_chunks(q: Tensor, k: Tensor, spec: KernelSpec, ix: _Index, go: Tensor | None):
    """All chunks; returns (per-anchor losses, dQ, dK) — the gradients only when ``go`` is given."""
    n, m = q.shape[0], k.shape[0]
    n_labels = int(ix.label_count.shape[0]) if ix.label_count is not None else 0
    lean_labels = spec.lean and spec.positives == "labels"
    ws = _Workspace(min(spec.chunk, n), m, q.dtype, q.device, n_labels if lean_labels else 0, q.shape[1],
                    _exp_room(q, k, spec.t))
    k_labels = ix.k_labels
    if lean_labels:
        if k_labels is None:
            raise ValueError("label positives need k_labels")
        ws.k_label_sums = torch.zeros(n_labels, k.shape[1], dtype=k.dtype, device=k.device).index_add_(
            0, k_labels, k
        )
    losses = torch.empty(n, dtype=q.dtype, device=q.device)
    dq = torch.empty_like(q) if go is not None else None
    dk = torch.zeros_like(k) if go is not None else None
    for r0 in range(0, n, spec.chunk):
        r1 = min(n, r0 + spec.chunk)
        go_c = None if go is None else (go if go.dim() == 0 else go[r0:r1])
        losses[r0:r1] = _chunk(q, k, spec, ix, ws, r0, r1, go_c, dq, dk)
    if dk is not None and lean_labels and ws.label_acc is not None and k_labels is not None:
        dk += ws.label_acc[k_labels]
    skipped = torch.cat(ws.skipped) if ws.skipped else None
    return losses, dq, dk, skipped


def _skip(active: Tensor | None, rows: Tensor, n: int) -> Tensor:
    out = torch.ones(n, dtype=torch.bool, device=rows.device) if active is None else active.clone()
    out[rows] = False
    return out


def _mean_weights(spec: KernelSpec, ix: _Index, n: int, device: torch.device) -> Tensor:
    """Each anchor's share of the ``"mean"`` denominator: 1 per anchor, or its number of positives
    with ``positive_reduce="pairs"``; 0 for a skipped anchor."""
    if spec.positives == "labels" and spec.positive_reduce == "pairs" and ix.n_pos is not None:
        w = ix.n_pos.to(torch.float64)  # n_pos is built for label positives (_index)
    else:
        w = torch.ones(n, dtype=torch.float64, device=device)
    return w if ix.active is None else w * ix.active


class _WeightedInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, spec: KernelSpec, ix: _Index):  # type: ignore[override]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        eager = need_grad and spec.reduction != "none"
        n = q.shape[0]
        weights = _mean_weights(spec, ix, n, q.device)
        denom = float(weights.sum())
        # denom is 0 only when every anchor of a spread call is skipped: gradients are 0 then anyway
        scale = 1.0 / denom if spec.reduction == "mean" and denom > 0 else 1.0
        go = torch.tensor(scale, dtype=q.dtype, device=q.device) if eager else None
        with torch.no_grad():
            losses, dq, dk, skipped = _run_chunks(q, k, spec, ix, go)
        left = denom
        if skipped is not None:  # anchors a strategy's log-weights left without a valid negative
            left = denom - float(weights[skipped].sum())
            ix.active = _skip(ix.active, skipped, n)  # the backward recompute sees the same anchors
        spread_fn = spec.mean_denominator if spec.reduction == "mean" else None
        spread = spread_fn is not None
        if spread_fn is not None:  # every process of a distributed step calls this once, skipped anchors or not
            left = float(spread_fn(left))
        if left <= 0:
            why = "the log-weights (filters / weightings) removed every candidate"
            raise C.all_skipped_error(n, f"on no process ({why}, or none has a positive)" if spread else why)
        if spec.reduction == "mean" and left != denom:
            if eager:
                dq.mul_(denom / left)
                dk.mul_(denom / left)
            scale = 1.0 / left
        ctx.spec, ctx.ix, ctx.eager = spec, ix, eager
        ctx.scale = scale
        if eager:
            ctx.save_for_backward(dq, dk)
        else:
            ctx.save_for_backward(q, k)
        return losses if spec.reduction == "none" else losses.sum() * scale

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        # Autograd runs backward with grad mode on only under create_graph=True. The gradients
        # returned here are constants (computed under no_grad), so a second derivative taken
        # through them would be silently wrong: refuse instead.
        if torch.is_grad_enabled():
            raise RuntimeError(
                "hardneg's kernel does not support double backward (create_graph=True, gradgradcheck, "
                "gradient penalties): it computes its gradients without a graph; use a loss written "
                "with plain torch ops for second-order gradients"
            )
        if ctx.eager:
            dq, dk = ctx.saved_tensors
            if bool(grad_out == 1.0):  # loss.backward(): the stored gradients as they are (read, never
                return dq, dk, None, None  # written, downstream: a second backward gets them again)
            return dq * grad_out, dk * grad_out, None, None
        q, k = ctx.saved_tensors
        go = grad_out.to(q.dtype).contiguous()
        if ctx.spec.reduction != "none":
            go = go * ctx.scale
        with torch.no_grad():
            _, dq, dk, _ = _run_chunks(q, k, ctx.spec, ctx.ix, go)
        return dq, dk, None, None


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def _check_embeddings(q: Tensor, k: Tensor) -> None:
    for name, x in (("q", q), ("k", k)):
        V.check_embeddings(name, x)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must have the same embedding dim, got {q.shape[1]} and {k.shape[1]}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on the same device, got {q.device} and {k.device}")
    for name, x in (("q", q), ("k", k)) if k is not q else (("q", q),):
        # one reduction: a NaN or an inf entry makes the sum NaN or inf; only a sum that is not
        # finite (or one that overflowed) needs the entries' own check
        if not bool(torch.isfinite(x.detach().sum())) and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf values")


def weighted_info_nce(
    q: Tensor,
    k: Tensor,
    *,
    t: float | None = None,
    temperature: float | None = None,
    pos_index: Tensor | None = None,
    q_labels: Tensor | None = None,
    k_labels: Tensor | None = None,
    self_index: Tensor | None = None,
    positives: str = "view",
    negatives: str = "all",
    beta: float = 0.0,
    detach_weights: bool = False,
    log_weight_fn: LogWeightFn | None = None,
    n_neg: float | None = None,
    tau_plus: float = 0.0,
    clamp: bool = True,
    include_positive: bool = True,
    positive_reduce: str = "mean",
    reduction: str = "mean",
    chunk_size: int | None = None,
    normalize: bool = True,
    mean_denominator: DenominatorFn | None = None,
    log_weight_block: BlockWeightFn | None = None,
    log_weight_rows: RowsWeightFn | None = None,
    record_rows: RecordFn | None = None,
    spec: KernelSpec | None = None,
) -> Tensor:
    r"""Weighted InfoNCE of anchors ``q`` (n×d) against candidates ``k`` (m×d) (docs/design.md §1).

    Args:
        t: the temperature t > 0; ``temperature`` is the same option by its public name (give one).
        pos_index: (n,) column in ``k`` of each anchor's positive (``positives="view"``).
        q_labels, k_labels: integer labels of anchors and candidates (label positives / filters).
        self_index: (n,) column of the anchor itself in ``k`` (never a candidate), −1 where absent.
        positives: ``"view"`` (one positive per anchor, given by ``pos_index``: the other view, or
            the paired document) or ``"labels"`` (every same-label candidate but the anchor itself).
        negatives: ``"all"`` (every candidate but the anchor itself and, in index mode, its
            positive; in label mode same-label candidates stay, as in SupCon's denominator) or
            ``"other_labels"`` (only candidates of another label: SCL / H-SCL).
        beta: hardness tilt β ≥ 0 (π ∝ e^{β s/t}); 0 is uniform.
        detach_weights: treat π as a constant (no gradient through the tilt). The HCL and H-SCL
            paper code keep the weights in the graph (default False).
        log_weight_fn: ``f(S, rows) -> (c, m)`` extra log-weights for the chunk of anchors
            ``rows``, given their cosine similarities ``S`` (c×m); −∞ removes a candidate.
            Treated as a constant. This is how strategies (top-k, semi-hard, filters, …) plug in.
        n_neg: nominal N; ``None`` uses the number of valid negatives of each anchor (with
            uniform π this is the plain sum Σ_j e^{s_ij/t}).
        tau_plus: class prior τ⁺ ∈ [0, 1) of the debiased estimator (Chuang et al.).
        clamp: clamp the debiased estimator below at N e^{−1/t} (HCL code); a non-positive one always is.
        include_positive: ``e^{s_ip/t}`` appears in the denominator (InfoNCE); False gives the
            decoupled form (and SupCon L_out, whose positives are already among the candidates).
        positive_reduce: with label positives, ``"mean"`` averages each anchor's terms over its
            positives (SupCon); ``"pairs"`` sums them and the ``"mean"`` reduction divides by the
            total number of (anchor, positive) pairs (the H-SCL paper code).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-anchor losses).
        chunk_size: anchors per chunk; default `default_chunk` (a 16 MB tile on CPU).
        normalize: L2-normalise q and k first (gradients flow through the normalisation).
        mean_denominator: with ``reduction="mean"``, ``f(d) -> D``: the mean divides by ``D``
            instead of this call's denominator ``d`` (the anchors not skipped, or their positive
            pairs). A distributed loss, whose anchors are spread over processes, passes the sum of
            every process's ``d`` divided by the number of processes (`hardneg.distributed`).
        log_weight_block: what ``log_weight_fn`` gives, fused into the kernel's cache-sized blocks
            of rows (one positive per anchor, β = 0; not with ``log_weight_fn``):
            ``f(X, rows, sp) -> (count, lse_a, kept)`` gets a block ``X`` of the tile, s/t with the
            anchor itself and its positive at −∞, the block's anchors ``rows`` and their positives'
            ``sp`` = s_ip/t; it writes −∞ on the candidates it removes and adds its log-weights a
            **in place**, and returns each row's number of valid candidates, log Σ_j e^{a_ij}
            over them (None: a = 0, uniform π) and None. A selection may instead leave ``X`` as the
            filters left it and return, as the third item, the `Kept` entries of each row (their
            values s/t + a, −∞ in unused slots, and columns; the same number in every block): when
            they are few (`sparse_selection`) the gradient is taken from them alone, otherwise the
            kernel writes them back over ``X``. Treated as a constant.
        log_weight_rows: ``log_weight_block`` and `softmax_block_` on a whole chunk in one call
            (`RowsWeightFn`, the native row pass); None leaves the chunk to the blocks.
        record_rows: rows of each chunk the native softmax pass copies before its rule (`RecordFn`:
            a strategy's diagnostics sample, without a product of its own); rows it does not copy
            (another path) are left to the caller.
        spec: every option above but the index (``pos_index``, labels, ``self_index``) and
            ``normalize``, as one checked `KernelSpec`; give it or the options, not both.
    """
    _check_embeddings(q, k)
    spec = _spec_of(spec, locals())
    n, m = q.shape[0], k.shape[0]
    # spread over processes, this call's anchors may all be skipped while another process's are not
    spread = spec.mean_denominator is not None and spec.reduction == "mean"
    ix = _checked_index(pos_index, self_index, q_labels, k_labels, spec.positives, spec.negatives, n, m, q.device,
                        spread)
    spec = dataclasses.replace(spec, chunk_size=spec.chunk_size or default_chunk(n, m, q.device))
    low = q.dtype in (torch.float16, torch.bfloat16)
    out = _WeightedInfoNCE.apply(*_prepared(q, k, normalize), spec, ix)
    return out.to(q.dtype) if low else out


def _prepared(q: Tensor, k: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """q and k L2-normalised (``normalize``) and in float32 for float16 / bfloat16 inputs (the kernel
    accumulates in float32); k stays the same tensor as q when it is."""
    same = k is q
    if normalize:
        q = C.safe_normalize(q)
        k = q if same else C.safe_normalize(k)
    if q.dtype in (torch.float16, torch.bfloat16):
        q = q.float()
        k = q if same else k.float()
    return q, k


#: the option keywords of `weighted_info_nce` that a `KernelSpec` holds, with their defaults
_SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(KernelSpec) if f.name != "t"}


def _spec_of(spec: KernelSpec | None, given: dict) -> KernelSpec:
    """`weighted_info_nce`'s options as one checked `KernelSpec`: built from its keywords ``given``,
    or the ``spec`` given, whose every option keyword must then keep its default."""
    if spec is None:
        return KernelSpec(t=V.resolve_temperature(given["t"], given["temperature"]),
                          **{name: given[name] for name in _SPEC_DEFAULTS})
    if not isinstance(spec, KernelSpec):
        raise TypeError(f"spec must be a KernelSpec, got {type(spec).__name__}")
    _no_options_besides(spec, given)
    return spec


def _no_options_besides(spec: KernelSpec, given: dict) -> None:
    """With ``spec=``, every option keyword must keep its default (the spec holds the options)."""
    clash = [name for name, default in _SPEC_DEFAULTS.items() if given[name] is not default and given[name] != default]
    clash += [name for name in ("t", "temperature") if given[name] is not None]
    if clash:
        raise ValueError(f"give the options in spec or as keywords, not both: {', '.join(sorted(clash))} "
                         "given with spec")


def _check_options(t, positives, negatives, positive_reduce, reduction, beta, tau_plus, chunk_size) -> None:
    V.check_temperature(t, "t (temperature)")
    V.check_choice("positives", positives, V.POSITIVES)
    V.check_choice("negatives", negatives, _NEGATIVES)
    V.check_choice("positive_reduce", positive_reduce, V.POSITIVE_REDUCES)
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    V.check_beta(beta)
    V.check_tau_plus(tau_plus)
    V.check_chunk_size(chunk_size)


def _checked_index(pos_index, self_index, q_labels, k_labels, positives, negatives, n, m, dev, spread) -> _Index:
    """The call's columns and labels checked, then `_index` of them."""
    pos_index = V.check_columns("pos_index", pos_index, n, m, dev, allow_missing=False)
    self_index = V.check_columns("self_index", self_index, n, m, dev, allow_missing=True)
    q_labels = V.check_tags("q_labels", q_labels, n, dev)
    k_labels = V.check_tags("k_labels", k_labels, m, dev)
    if positives == "view" and pos_index is None:
        raise ValueError('positives="view" needs pos_index, the (n,) column of each anchor\'s positive in k')
    needs_labels = positives == "labels" or negatives == "other_labels"
    if needs_labels and (q_labels is None or k_labels is None):
        raise ValueError(f"positives={positives!r}, negatives={negatives!r} need both q_labels and k_labels")
    if pos_index is not None and self_index is not None and bool((pos_index == self_index).any()):
        bad = torch.nonzero(pos_index == self_index).flatten().tolist()
        raise ValueError(f"anchors {bad[:10]} have pos_index equal to self_index (an anchor is not its own positive)")
    return _index(pos_index, self_index, q_labels if needs_labels else None, k_labels if needs_labels else None,
                  positives, negatives, n, m, dev, every_skipped_ok=spread)


def _index(pos_index, self_index, q_labels, k_labels, positives, negatives, n, m, dev,
           every_skipped_ok: bool = False) -> _Index:
    """Per-anchor counts of positives and valid negatives (all O(n + m)) and who is skipped
    (`hardneg.losses.candidates`: an anchor without a positive or a valid negative)."""
    has_self = (self_index >= 0).long() if self_index is not None else torch.zeros(n, dtype=torch.long, device=dev)
    has_pos = 1 if positives == "view" else 0
    n_pos = order = start = k_count = None
    if q_labels is not None:
        q_labels, k_labels, n_cls = C.dense_labels(q_labels, k_labels)  # unknown (−1) never matches
        k_count = torch.bincount(k_labels, minlength=n_cls)
        order = torch.argsort(k_labels, stable=True)
        start = torch.cumsum(k_count, 0) - k_count
        same = k_count[q_labels]
        self_same = torch.zeros_like(same)
        if self_index is not None:
            hs = self_index >= 0
            self_same[hs] = (k_labels[self_index[hs]] == q_labels[hs]).long()
        if positives == "labels":
            n_pos = same - self_same
        if negatives == "other_labels":
            pos_other = (k_labels[pos_index] != q_labels).long() if positives == "view" else 0
            n_valid = m - same - (has_self - self_same) - pos_other
        else:
            n_valid = m - has_self - has_pos
    else:
        n_valid = m - has_self - has_pos
    active = n_valid > 0
    if n_pos is not None:
        active &= n_pos > 0
        if negatives == "all":
            # label positives sit in the denominator too; an anchor whose every candidate is a
            # positive has no negative, and is skipped like any other (as PML's SupCon does)
            active &= n_valid - n_pos > 0
    if not bool(active.any()) and not every_skipped_ok:
        why = (
            f"k has {m} rows; after removing each anchor itself, its positive"
            + (" and its same-label candidates" if negatives == "other_labels" else "")
            + " none is left"
            + (", or no anchor has both a same-label positive and a candidate of another label"
               if n_pos is not None else "")
            + " (a batch of one sample? one class only?)"
        )
        raise C.all_skipped_error(n, why)
    return _Index(pos_index, self_index, q_labels, k_labels, n_pos, n_valid, order, start, k_count,
                  None if bool(active.all()) else active, self_all=bool(has_self.all()))
