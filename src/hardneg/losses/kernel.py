r"""The one kernel: chunked, log-space, weighted InfoNCE with a hand-written backward.

For anchor :math:`i` with positive(s) :math:`p \in P(i)`, candidate negatives :math:`j \in C(i)`,
similarities :math:`s_{ij} = q_i^\top k_j` of L2-normalised embeddings and temperature :math:`t`
(DESIGN.md §1)::

    L_i = −log( e^{s_ip/t} / ( e^{s_ip/t} + N · Σ_j π_ij e^{s_ij/t} ) )

with :math:`\pi_{ij} \propto \exp(\beta s_{ij}/t + a_{ij})` over the valid candidates: β is the
hardness tilt of Robinson et al. (HCL, ICLR 2021) and Jiang et al. (H-SCL, arXiv 2209.00078),
:math:`a_{ij}` optional extra log-weights (−∞ masks a candidate) supplied per chunk by a strategy,
and N the nominal number of negatives. The debiased estimator of Chuang et al. (DCL, NeurIPS 2020)
replaces the negative term by ``G = (N Σ_j π_ij e^{s_ij/t} − τ⁺ N e^{s_ip/t}) / (1 − τ⁺)``, clamped
below at ``N e^{−1/t}``.

Everything is computed in log space (log-sum-exp), in float32 even for float16/bfloat16 inputs, with
masks as −∞ log-weights. Anchors are processed in chunks: peak memory is O(chunk × m), never
O(n × m) for large n and never O(n³).

Speed: when the loss is reduced to a scalar and a gradient is needed, each chunk computes its
gradient **in the forward pass** (one matrix product for the similarities, the log-sum-exp, one
in-place exp, two products for dQ and dK) and the backward only scales the stored (n×d, m×d)
gradients by the incoming scalar. That is 3 matrix products per chunk instead of the 4 of a
recompute-in-backward scheme. With ``reduction="none"`` the backward recomputes each chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LogWeightFn = Callable[[Tensor, slice], Tensor]

_POSITIVES = ("index", "labels")
_NEGATIVES = ("all", "other_labels")
_POS_REDUCE = ("mean", "pairs")
_REDUCTIONS = ("mean", "sum", "none")
_NEG_INF = float("-inf")


@dataclass(frozen=True)
class KernelSpec:
    """Everything that defines the loss besides the embeddings (validated by :func:`weighted_info_nce`)."""

    t: float
    positives: str = "index"
    negatives: str = "all"
    beta: float = 0.0
    detach_weights: bool = False
    log_weight_fn: LogWeightFn | None = None
    n_neg: float | None = None
    tau_plus: float = 0.0
    clamp: bool = True
    include_positive: bool = True
    positive_reduce: str = "mean"
    reduction: str = "mean"
    chunk_size: int = 1024

    @property
    def lean(self) -> bool:
        """Uniform π, plain sum (N = count), no debiasing, no extra weights: the fused fast path."""
        return (
            self.beta == 0.0
            and self.log_weight_fn is None
            and self.n_neg is None
            and self.tau_plus == 0.0
            and self.negatives == "all"
            and (
                (self.positives == "index" and self.include_positive)
                or (self.positives == "labels" and not self.include_positive)
            )
        )


@dataclass
class _Index:
    """Integer side information, all on the embeddings' device."""

    pos_index: Tensor | None  # (n,) column of each anchor's positive (positives="index")
    self_index: Tensor | None  # (n,) column of the anchor itself in k, or -1
    q_labels: Tensor | None  # (n,)
    k_labels: Tensor | None  # (m,)
    n_pos: Tensor | None  # (n,) number of positives per anchor (positives="labels")
    ref_col: Tensor | None  # (n,) one positive column per anchor (labels mode, lean path)


def _default_chunk(n: int, m: int) -> int:
    # keep a chunk of S (and one work buffer) around 32 MB of float32
    return int(max(64, min(n, (1 << 23) // max(m, 1))))


# --------------------------------------------------------------------------------------------
# one chunk
# --------------------------------------------------------------------------------------------


def _rows_with(idx: Tensor | None, r0: int, r1: int) -> tuple[Tensor, Tensor] | None:
    """(row offsets within the chunk, columns) of the entries idx[r0:r1] that are >= 0."""
    if idx is None:
        return None
    cols = idx[r0:r1]
    keep = cols >= 0
    rows = torch.arange(r1 - r0, device=cols.device)
    if bool(keep.all()):
        return rows, cols
    return rows[keep], cols[keep]


def _chunk(
    q: Tensor, k: Tensor, spec: KernelSpec, ix: _Index, r0: int, r1: int, go: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss of anchors r0:r1 and, if ``go`` (their upstream gradients) is given, dQ[r0:r1] and dK."""
    inv_t = 1.0 / spec.t
    qs = q[r0:r1] * inv_t  # scale folded into the (c × d) operand
    S = qs @ k.T  # (c, m) = s / t
    c, m = S.shape
    self_rc = _rows_with(ix.self_index, r0, r1)
    if spec.lean:
        return _chunk_lean(q, k, qs, S, spec, ix, r0, r1, go, self_rc)
    return _chunk_general(q, k, qs, S, spec, ix, r0, r1, go, self_rc)


def _chunk_lean(q, k, qs, S, spec, ix, r0, r1, go, self_rc):
    """Uniform, plain-sum InfoNCE (NT-Xent) and SupCon L_out: one fused log-softmax per chunk."""
    c = S.shape[0]
    rows = torch.arange(c, device=S.device)
    if self_rc is not None:
        S[self_rc[0], self_rc[1]] = _NEG_INF
    if spec.positives == "index":
        pcol = ix.pos_index[r0:r1]
        LS = torch.log_softmax(S, dim=1)  # S_ij − lse_i over every j ≠ self (positive included)
        loss = -LS[rows, pcol]
    else:
        # SupCon L_out: ℓ_i = lse_{a≠i}(S) − mean_{p∈P(i)} S_ip, the mean via per-class sums (O(n d)).
        ref = ix.ref_col[r0:r1]
        s_ref = S[rows, ref].clone()
        LS = torch.log_softmax(S, dim=1)
        lse = s_ref - LS[rows, ref]
        npos = ix.n_pos[r0:r1].to(S.dtype)
        sum_pos_k = _label_sums(k, ix.k_labels)[ix.q_labels[r0:r1]]  # Σ_{j: y_j = y_i} k_j
        if self_rc is not None:
            sum_pos_k = sum_pos_k.clone()
            sum_pos_k[self_rc[0]] -= k[self_rc[1]]
        mean_sp = (qs * sum_pos_k).sum(1) / npos
        loss = lse - mean_sp
    if go is None:
        return loss, None, None
    P = LS.exp_()  # softmax, in place
    P.mul_(go[:, None]) if go.numel() > 1 else P.mul_(go)
    if spec.positives == "index":
        P[rows, pcol] -= go.expand(c) if go.numel() == 1 else go
        dq = (P @ k) * (1.0 / spec.t)
        dk = P.T @ qs
        return loss, dq, dk
    # labels mode: dS = go·P − go/|P_i| on positives; the positive part is applied through class sums
    w = (go.expand(c) if go.numel() == 1 else go) / npos
    dq = (P @ k - w[:, None] * sum_pos_k) * (1.0 / spec.t)
    dk = P.T @ qs
    wq = w[:, None] * qs
    dk -= _label_sums(wq, ix.q_labels[r0:r1], like=k, k_labels=ix.k_labels)
    if self_rc is not None:
        dk.index_add_(0, self_rc[1], wq[self_rc[0]])  # the anchor is not its own positive
    return loss, dq, dk


def _label_sums(x: Tensor, labels: Tensor, like: Tensor | None = None, k_labels: Tensor | None = None):
    """Per-label sums of the rows of x. With ``like``/``k_labels``: scatter them back onto k's rows."""
    nl = int(labels.max().item()) + 1 if k_labels is None else int(max(labels.max(), k_labels.max())) + 1
    sums = torch.zeros(nl, x.shape[1], dtype=x.dtype, device=x.device)
    sums.index_add_(0, labels, x)
    if like is None:
        return sums
    return sums[k_labels]


def _chunk_general(q, k, qs, S, spec, ix, r0, r1, go, self_rc):
    """Every other case: masks, β tilt, extra log-weights, nominal N, τ⁺ debiasing, label positives."""
    c, m = S.shape
    dev = S.device
    rows = torch.arange(c, device=dev)
    # -- which candidates are valid negatives ------------------------------------------------
    if spec.negatives == "other_labels":
        invalid = ix.q_labels[r0:r1, None] == ix.k_labels[None, :]
    else:
        invalid = torch.zeros(c, m, dtype=torch.bool, device=dev)
    if self_rc is not None:
        invalid[self_rc[0], self_rc[1]] = True
    if spec.positives == "index":
        pcol = ix.pos_index[r0:r1]
        invalid[rows, pcol] = True
        posmask = None
    else:
        posmask = ix.q_labels[r0:r1, None] == ix.k_labels[None, :]
        if self_rc is not None:
            posmask[self_rc[0], self_rc[1]] = False
    extra = None
    if spec.log_weight_fn is not None:
        extra = spec.log_weight_fn(S * spec.t, slice(r0, r1))
        if extra.shape != S.shape:
            raise ValueError(f"log_weight_fn must return shape {tuple(S.shape)}, got {tuple(extra.shape)}")
        extra = extra.to(S.dtype)
        invalid = invalid | torch.isneginf(extra)
        extra = extra.masked_fill(invalid, 0.0)
    cnt = (~invalid).sum(1)
    if bool((cnt == 0).any()):
        bad = (torch.nonzero(cnt == 0).flatten() + r0).tolist()
        raise ValueError(f"anchors {bad[:10]}{'…' if len(bad) > 10 else ''} have no valid negative candidate")
    if spec.n_neg is None:
        logN = torch.log(cnt.to(S.dtype))
    else:
        logN = torch.full((c,), math.log(spec.n_neg), dtype=S.dtype, device=dev)
    tilted = spec.beta != 0.0 or extra is not None
    # -- log of N Σ_j π_ij e^{S_ij} ------------------------------------------------------------
    B = S.masked_fill(invalid, _NEG_INF)  # log π̃ numerators: a + S with a = β S + extra
    if tilted:
        A = S * spec.beta if spec.beta != 0.0 else torch.zeros_like(S)
        if extra is not None:
            A += extra
        A.masked_fill_(invalid, _NEG_INF)
        B += A
        lse_a = torch.logsumexp(A, dim=1)
    else:
        lse_a = torch.log(cnt.to(S.dtype))
    lse_b = torch.logsumexp(B, dim=1)
    neg = logN + lse_b - lse_a  # (c,)
    # -- per-positive terms --------------------------------------------------------------------
    if posmask is None:
        sp = S[rows, pcol]  # (c,)
        g, dg_dneg, dg_dsp = _debias(neg, sp, logN, spec)
        ell, dl_dg, dl_dsp = _per_positive(g, sp, spec)
        loss = ell
        npos = None
    else:
        npos = posmask.sum(1).to(S.dtype)
        if spec.tau_plus == 0.0 and not spec.include_positive:
            loss = npos * neg - (S * posmask).sum(1)
            g = dg_dneg = dg_dsp = dl_dg = dl_dsp = None
        else:
            SP = S.masked_fill(~posmask, 0.0)
            g, dg_dneg, dg_dsp = _debias(neg[:, None], SP, logN[:, None], spec)
            ell, dl_dg, dl_dsp = _per_positive(g, SP, spec)
            loss = (ell * posmask).sum(1)
        if spec.positive_reduce == "mean":
            loss = loss / npos
    if go is None:
        return loss, None, None
    # -- gradient wrt S ------------------------------------------------------------------------
    go = go.expand(c) if go.numel() == 1 else go
    w = go if (npos is None or spec.positive_reduce == "pairs") else go / npos
    if posmask is None:
        gamma = w * dl_dg * dg_dneg
        delta = w * (dl_dsp + dl_dg * dg_dsp)
    elif dl_dg is None:
        gamma = w * npos
        delta = None
    else:
        gpos = (dl_dg * dg_dneg) * posmask
        gamma = w * gpos.sum(1)
        delta = (dl_dsp + dl_dg * dg_dsp) * posmask * w[:, None]
    # d neg / d S = (1 + β) π̃ − β π   (π̃ ∝ e^{a+S}, π ∝ e^{a}); with detached weights only π̃
    dS = torch.softmax(B, dim=1)
    if tilted and spec.beta != 0.0 and not spec.detach_weights:
        dS.mul_(1.0 + spec.beta).sub_(torch.softmax(A, dim=1), alpha=spec.beta)
    dS.mul_(gamma[:, None])
    if posmask is None:
        dS[rows, pcol] += delta
    elif delta is not None:
        dS += delta
    else:
        dS -= posmask * w[:, None]
    dq = (dS @ k) * (1.0 / spec.t)
    dk = dS.T @ qs
    return loss, dq, dk


def _debias(neg: Tensor, sp: Tensor, logN: Tensor, spec: KernelSpec):
    """g = log G with Chuang et al.'s estimator; returns (g, ∂g/∂neg, ∂g/∂s_p)."""
    if spec.tau_plus == 0.0:
        one = torch.ones_like(neg + sp)
        return neg.expand_as(one) if neg.dim() < one.dim() else neg, one, torch.zeros_like(one)
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
    return g - sp, torch.ones_like(g), -torch.ones_like(g)


# --------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------


class _WeightedInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, spec: KernelSpec, ix: _Index, scale: float):  # type: ignore[override]
        n = q.shape[0]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        eager = need_grad and spec.reduction != "none"
        losses = torch.empty(n, dtype=q.dtype, device=q.device)
        dq = torch.empty_like(q) if eager else None
        dk = torch.zeros_like(k) if eager else None
        go = torch.tensor(scale, dtype=q.dtype, device=q.device) if eager else None
        with torch.no_grad():
            for r0 in range(0, n, spec.chunk_size):
                r1 = min(n, r0 + spec.chunk_size)
                loss_c, dq_c, dk_c = _chunk(q, k, spec, ix, r0, r1, go)
                losses[r0:r1] = loss_c
                if eager:
                    dq[r0:r1] = dq_c
                    dk += dk_c
        ctx.spec, ctx.ix, ctx.eager = spec, ix, eager
        if eager:
            ctx.save_for_backward(dq, dk)
            out = losses.sum() * scale
        else:
            ctx.save_for_backward(q, k)
            out = losses if spec.reduction == "none" else losses.sum() * scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        if ctx.eager:
            dq, dk = ctx.saved_tensors
            return dq * grad_out, dk * grad_out, None, None, None
        q, k = ctx.saved_tensors
        spec, ix = ctx.spec, ctx.ix
        n = q.shape[0]
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        go_all = grad_out.to(q.dtype)
        with torch.no_grad():
            for r0 in range(0, n, spec.chunk_size):
                r1 = min(n, r0 + spec.chunk_size)
                go = go_all[r0:r1] if go_all.dim() else go_all
                _, dq_c, dk_c = _chunk(q, k, spec, ix, r0, r1, go)
                dq[r0:r1] = dq_c
                dk += dk_c
        return dq, dk, None, None, None


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def _check_embeddings(q: Tensor, k: Tensor) -> None:
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (num, dim), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty: need at least one row, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf values")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must have the same embedding dim, got {q.shape[1]} and {k.shape[1]}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on the same device, got {q.device} and {k.device}")


def _check_index(name: str, x: Tensor | None, n: int, m: int, device, allow_neg: bool) -> Tensor | None:
    if x is None:
        return None
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    if x.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(x.shape)}")
    x = x.to(device=device, dtype=torch.long)
    lo = -1 if allow_neg else 0
    if n and (int(x.min()) < lo or int(x.max()) >= m):
        raise ValueError(f"{name} values must lie in [{lo}, {m - 1}], got [{int(x.min())}, {int(x.max())}]")
    return x


def _check_labels(name: str, y: Tensor | None, length: int, device) -> Tensor | None:
    if y is None:
        return None
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {y.dtype}")
    if y.dim() != 1 or y.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(y.shape)}")
    return y.to(device=device, dtype=torch.long)


def weighted_info_nce(
    q: Tensor,
    k: Tensor,
    *,
    t: float,
    pos_index: Tensor | None = None,
    q_labels: Tensor | None = None,
    k_labels: Tensor | None = None,
    self_index: Tensor | None = None,
    positives: str = "index",
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
) -> Tensor:
    r"""Weighted InfoNCE of anchors ``q`` (n×d) against candidates ``k`` (m×d) (DESIGN.md §1).

    Args:
        t: temperature, > 0.
        pos_index: (n,) column in ``k`` of each anchor's positive (``positives="index"``).
        q_labels, k_labels: integer labels of anchors and candidates (label positives / filters).
        self_index: (n,) column of the anchor itself in ``k`` (never a candidate), −1 where absent.
        positives: ``"index"`` (one positive per anchor) or ``"labels"`` (every same-label
            candidate except the anchor itself; SupCon / the H-SCL paper code).
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
        clamp: clamp the debiased estimator below at N e^{−1/t} (HCL code). Where the estimator
            is not positive it is clamped whatever this flag says.
        include_positive: ``e^{s_ip/t}`` appears in the denominator (InfoNCE); False gives the
            decoupled form (and SupCon L_out, whose positives are already among the candidates).
        positive_reduce: with label positives, ``"mean"`` averages each anchor's terms over its
            positives (SupCon); ``"pairs"`` sums them and the ``"mean"`` reduction divides by the
            total number of (anchor, positive) pairs (the H-SCL paper code).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-anchor losses).
        chunk_size: anchors per chunk; default keeps a chunk near 32 MB.
        normalize: L2-normalise q and k first (gradients flow through the normalisation).
    """
    _check_embeddings(q, k)
    if not isinstance(t, (int, float)) or not t > 0 or not math.isfinite(t):
        raise ValueError(f"t (temperature) must be a finite number > 0, got {t!r}")
    if positives not in _POSITIVES:
        raise ValueError(f"positives must be one of {_POSITIVES}, got {positives!r}")
    if negatives not in _NEGATIVES:
        raise ValueError(f"negatives must be one of {_NEGATIVES}, got {negatives!r}")
    if positive_reduce not in _POS_REDUCE:
        raise ValueError(f"positive_reduce must be one of {_POS_REDUCE}, got {positive_reduce!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(beta, (int, float)) or not beta >= 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if not isinstance(tau_plus, (int, float)) or not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must lie in [0, 1), got {tau_plus!r}")
    if n_neg is not None and not (isinstance(n_neg, (int, float)) and n_neg > 0):
        raise ValueError(f"n_neg must be None or a number > 0, got {n_neg!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    n, m = q.shape[0], k.shape[0]
    dev = q.device
    pos_index = _check_index("pos_index", pos_index, n, m, dev, allow_neg=False)
    self_index = _check_index("self_index", self_index, n, m, dev, allow_neg=True)
    q_labels = _check_labels("q_labels", q_labels, n, dev)
    k_labels = _check_labels("k_labels", k_labels, m, dev)
    if positives == "index" and pos_index is None:
        raise ValueError('positives="index" needs pos_index, the (n,) column of each anchor\'s positive in k')
    needs_labels = positives == "labels" or negatives == "other_labels"
    if needs_labels and (q_labels is None or k_labels is None):
        raise ValueError(f"positives={positives!r}, negatives={negatives!r} need both q_labels and k_labels")
    if pos_index is not None and self_index is not None and bool((pos_index == self_index).any()):
        bad = torch.nonzero(pos_index == self_index).flatten().tolist()
        raise ValueError(f"anchors {bad[:10]} have pos_index equal to self_index (an anchor is not its own positive)")

    n_pos = ref_col = None
    if needs_labels:
        # Dense label ids (so per-label sums are small) and per-anchor positive / negative counts.
        uniq, inv = torch.unique(torch.cat([q_labels, k_labels]), return_inverse=True)
        q_labels, k_labels = inv[:n], inv[n:]
        k_count = torch.bincount(k_labels, minlength=len(uniq))
        same = k_count[q_labels]
        if self_index is not None:
            has_self = self_index >= 0
            self_same = torch.zeros_like(same)
            self_same[has_self] = (k_labels[self_index[has_self]] == q_labels[has_self]).long()
        else:
            self_same = torch.zeros_like(same)
        if positives == "labels":
            n_pos = same - self_same
            if bool((n_pos == 0).any()):
                bad = torch.nonzero(n_pos == 0).flatten().tolist()
                raise ValueError(
                    f"anchors {bad[:10]}{'…' if len(bad) > 10 else ''} have no positive "
                    "(no other candidate with the same label)"
                )
            # one positive column per anchor: the first or second candidate of its label
            order = torch.argsort(k_labels, stable=True)
            start = torch.cumsum(k_count, 0) - k_count
            first = order[start[q_labels]]
            second = order[torch.clamp(start[q_labels] + 1, max=m - 1)]
            ref_col = torch.where(first == (self_index if self_index is not None else -1), second, first)
        if negatives == "other_labels":
            n_other = m - same
            if bool((n_other == 0).any()):
                bad = torch.nonzero(n_other == 0).flatten().tolist()
                raise ValueError(
                    f"anchors {bad[:10]}{'…' if len(bad) > 10 else ''} have no valid negative "
                    "(every candidate shares their label)"
                )
    elif m - (self_index is not None) - (pos_index is not None) < 1:
        raise ValueError(f"need at least one candidate negative per anchor; k has only {m} rows")

    spec = KernelSpec(
        t=float(t),
        positives=positives,
        negatives=negatives,
        beta=float(beta),
        detach_weights=bool(detach_weights),
        log_weight_fn=log_weight_fn,
        n_neg=None if n_neg is None else float(n_neg),
        tau_plus=float(tau_plus),
        clamp=bool(clamp),
        include_positive=bool(include_positive),
        positive_reduce=positive_reduce,
        reduction=reduction,
        chunk_size=chunk_size or _default_chunk(n, m),
    )
    ix = _Index(pos_index, self_index, q_labels, k_labels, n_pos, ref_col)
    in_dtype = q.dtype
    if normalize:
        q = F.normalize(q, dim=1)
        k = F.normalize(k, dim=1)
    if in_dtype in (torch.float16, torch.bfloat16):  # accumulate in float32
        q, k = q.float(), k.float()
    if reduction == "mean":
        denom = float(n_pos.sum()) if (positives == "labels" and positive_reduce == "pairs") else float(n)
        scale = 1.0 / denom
    else:
        scale = 1.0
    out = _WeightedInfoNCE.apply(q, k, spec, ix, scale)
    return out.to(in_dtype) if in_dtype in (torch.float16, torch.bfloat16) else out
