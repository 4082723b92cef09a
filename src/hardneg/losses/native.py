r"""The native row pass: the kernel's elementwise runs between its products, in C (``native_rows.c``).

Each pass takes the rows of a chunk's tile X = s/t in turn, with the row in a core's L1 cache, where
the torch path runs ten to twenty operations per block (or whole-tile passes) with Python between them
(docs/design.md, "The native row pass"):

- `weighted_softmax_rows_`: a fused strategy's filters and weighting (`RowRule`: per-row similarity
  bounds, the semi-hard window, distance weighting; their fallbacks) and the softmax;
- `softmax_rows_`: the general path's softmax without log-weights (β = 0, and the β = 1 root tilt
  with its gradient tile), the candidate rule written by columns in the row (same-label columns as
  `LabelRows`, rows of the call's per-label table);
- `label_terms` and `label_scatter_`: label positives' per-pair terms with τ⁺ = 0 and their entry
  into the gradient tile;
- `row_stats`: the diagnostics' statistics of their sampled rows;
- `unit_rows_backward`: the gradient of `hardneg.losses.candidates.safe_normalize`.

The values are the torch path's to float32 rounding (exp and log are polynomials within 2 ulp); the
exactness tests run both paths against the literal float64 references.

The C source is compiled once per machine and source by the C compiler (``$CC``, else ``cc``) into
the user's cache directory (``$XDG_CACHE_HOME/hardneg/native``, else ``~/.cache/hardneg/native``),
named by a hash of the source, the flags and the CPU (``-march=native`` code runs only on the CPU it
was built for, so a home directory shared by machines of different CPUs keeps one library per CPU),
and loaded with ctypes; a file there that does not load is compiled again. Without a compiler, or
with ``HARDNEG_NATIVE=0`` (`use_native`), the torch path runs: the same values, slower on CPU.
Float64 and CUDA tensors always take the torch path (`takes`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["LabelRows", "RowRule", "RowStats", "RowsResult", "available", "label_scatter_", "label_terms", "row_stats",
           "softmax_rows_", "takes", "unit_rows_backward", "use_native", "weighted_softmax_rows_"]

_LOG = logging.getLogger("hardneg.native")
_SOURCE = Path(__file__).with_name("native_rows.c")
#: tried in order; the first that compiles is kept (the second for compilers or CPUs without the
#: x86 options). No -ffast-math: −∞ marks a removed candidate and must survive every comparison.
_FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-trapping-math", "-fno-math-errno", "-fopenmp"),
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-trapping-math", "-fno-math-errno"),
    ("-O3", "-fno-trapping-math", "-fno-math-errno"),
)
_COMMON = ("-fPIC", "-shared", "-pthread")

_lib: ctypes.CDLL | None = None
_tried = False
_enabled: bool | None = None  # None: from HARDNEG_NATIVE


def _cpu() -> str:
    """The CPU's model and feature flags (Linux), else what the platform says."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(sorted(set(keep)))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hardneg" / "native"


def _compile(cc: str, flags: tuple[str, ...], path: Path) -> bool:
    """The library at ``path``, written atomically (a concurrent process loads a whole file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        done = subprocess.run([cc, *flags, *_COMMON, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            os.unlink(tmp)
            _LOG.info("%s %s failed: %s", cc, " ".join(flags), done.stderr.strip()[-500:])
            return False
        os.replace(tmp, path)
        return True
    except (OSError, subprocess.SubprocessError) as e:
        _LOG.info("building %s failed: %s", path, e)
        return False


def _load(path: Path) -> ctypes.CDLL | None:
    """The library at ``path`` with its functions' signatures, or None when the file is not one (a
    damaged or foreign file in the cache)."""
    try:
        lib = ctypes.CDLL(str(path))
        P, I64, F32, INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
        signatures = {
            "hn_weighted_softmax_rows": [P, I64, I64, I64, P, P, INT, P, F32, F32, F32, F32, F32, P, INT,
                                         P, P, P, P, P, P, P, P, I64, I64, P, INT],
            "hn_row_stats": [P, I64, P, I64, I64, I64, INT, F32, F32, F32, I64, P, P, P, P, P, P, P, P, INT],
            "hn_unit_rows_backward": [P, P, P, P, I64, I64, INT],
            "hn_distance_scratch": [I64],
            "hn_softmax_rows": [P, I64, I64, I64, P, INT, INT, P, P, P, P, P, P, P, I64, I64, INT, P, I64, P, P,
                                I64, I64, INT],
            "hn_label_terms": [P, P, P, I64, I64, I64, P, P, P, INT, P, P, P, INT],
            "hn_label_scatter": [P, I64, I64, P, P, I64, P, I64, P, P, INT],
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, I64 if name == "hn_distance_scratch" else None
        return lib
    except (OSError, AttributeError) as e:
        _LOG.info("loading %s failed: %s", path, e)
        return None


def _build() -> ctypes.CDLL | None:
    """The library for this source, flags and CPU: loaded from the cache, or compiled into it (a
    file there that does not load is compiled again)."""
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        _LOG.info("no C compiler (%s): the kernel's elementwise runs stay in torch", cc)
        return None
    source = _SOURCE.read_bytes()
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), cc.encode(), _cpu().encode()]))
        path = _cache_dir() / f"native_rows-{key.hexdigest()[:24]}.so"
        if path.exists():
            lib = _load(path)
            if lib is not None:
                return lib
        if _compile(cc, flags, path):
            lib = _load(path)
            if lib is not None:
                return lib
    return None


def _on() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get("HARDNEG_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def available() -> bool:
    """Whether the fused row pass runs (enabled, and its library built and loaded on this machine)."""
    global _lib, _tried
    if not _on():
        return False
    if not _tried:
        _tried = True
        _lib = _build()
    return _lib is not None


@contextlib.contextmanager
def use_native(enabled: bool) -> Iterator[None]:
    """Within the block, the fused row pass runs (``True``, where `available`) or not (``False``):
    the exactness tests run both paths; ``HARDNEG_NATIVE=0`` is the same switch for a process."""
    global _enabled
    before = _enabled
    _enabled = bool(enabled)
    try:
        yield
    finally:
        _enabled = before


@dataclass(frozen=True)
class LabelRows:
    """Each row's same-label columns as the passes read them: row i takes row ``row_i`` of the
    (· × P) int64 table ``cols`` (``row`` None: row i) and its first ``cnt_i`` entries (the rest is
    padding), so that the call's per-label table serves every chunk without a (c × P) copy."""

    cols: Tensor
    row: Tensor | None
    cnt: Tensor
    _end: int = field(init=False, default=0, repr=False)  # one past the largest column

    @property
    def width(self) -> int:
        """P, the table's columns per row."""
        return int(self.cols.shape[1])

    def __post_init__(self) -> None:
        """Checked once: the passes read the table through ``row`` and up to ``cnt``."""
        def vec(t: Tensor | None) -> bool:
            return t is None or (t.dim() == 1 and t.dtype == torch.int64 and t.is_contiguous())
        n_rows = int(self.cols.shape[0]) if self.cols.dim() == 2 else 0
        if self.cols.dtype != torch.int64 or self.cols.dim() != 2 or self.cols.stride(1) != 1 \
                or not (vec(self.cnt) and vec(self.row)) \
                or (self.row is not None and self.row.shape != self.cnt.shape) \
                or (self.row is None and n_rows < self.cnt.shape[0]) \
                or (self.row is not None and self.row.numel() > 0
                    and not (int(self.row.min()) >= 0 and int(self.row.max()) < n_rows)):
            raise ValueError("LabelRows needs an int64 (· × P) table with contiguous rows, contiguous int64 (rows,) "
                             "cnt and row, and rows inside the table")
        lo, hi = (int(v) for v in torch.aminmax(self.cols)) if self.cols.numel() else (0, -1)
        if lo < 0:
            raise ValueError("LabelRows' columns must be ≥ 0")
        object.__setattr__(self, "_end", hi + 1)  # the passes that write X at the columns check X's width

    def args(self, c: int, m: int | None = None) -> tuple[int, int | None, int, int]:
        """(cols, row, ldc, cnt) pointers and stride for the C passes on ``c`` rows (of a tile of
        ``m`` columns, for a pass that reads or writes it at the columns)."""
        if self.cnt.shape != (c,):
            raise ValueError(f"LabelRows holds {self.cnt.shape[0]} rows, the pass takes {c}")
        if m is not None and self._end > m:
            raise ValueError(f"LabelRows' columns reach {self._end - 1}, the tile has {m}")
        return self.cols.data_ptr(), _ptr(self.row), self.cols.stride(0), self.cnt.data_ptr()


@dataclass(frozen=True)
class RowRule:
    """What the filters and the weighting of a strategy keep and add on each row of X = s/t, in the
    form of the C pass: candidates with ``lo_i ≤ X_ij ≤ hi_i`` (similarity filters, per row, None:
    unbounded), then one of ``kind`` "none", "window" (semi-hard: |X_ij − centre_i| < half,
    `hardneg.negatives.weighting.SemiHard.weigh_`) or "distance" (Wu et al. 2017: u = 2 − two_t X
    < u_hi, a = p_u log clamp(u, u_lo, u_hi) + p_v log max(1 − u/4, 10⁻⁸) with p_u = p_v − ½ as
    q(d) has it in every dimension, `hardneg.negatives.weighting.DistanceWeighted.weigh_`). A row
    whose window or distance rule keeps no candidate takes the weighting's fallback as ``weigh_``
    does: the valid candidate nearest the window, or every valid candidate unweighted."""

    lo: Tensor | None = None
    hi: Tensor | None = None
    kind: str = "none"
    centre: Tensor | None = None
    half: float = 0.0
    distance: tuple[float, float, float, float, float] | None = None  # two_t, p_u, p_v, u_lo, u_hi

    def bounded(self, lo: Tensor | None, hi: Tensor | None) -> RowRule:
        """This rule with the bounds narrowed to ``lo`` and ``hi`` as well."""
        def tighter(a: Tensor | None, b: Tensor | None, f) -> Tensor | None:
            return b if a is None else (a if b is None else f(a, b))
        return RowRule(tighter(self.lo, lo, torch.maximum), tighter(self.hi, hi, torch.minimum), self.kind,
                       self.centre, self.half, self.distance)


@dataclass(frozen=True)
class RowsResult:
    """Per row of the chunk: valid count, lse of the weighted row, lse of the log-weights over the
    valid candidates, the factor that normalises an unnormalised row (None when rows are
    normalised), and whether the weighting's fallback took the row (bool)."""

    cnt: Tensor
    lse_b: Tensor
    lse_a: Tensor
    scale: Tensor | None
    fallback: Tensor


_KINDS = {"none": 0, "window": 1, "distance": 2}


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _rowvec(t: Tensor | None, c: int) -> Tensor | None:
    if t is None:
        return None
    return t.to(torch.float32).expand(c).contiguous()


def takes(X: Tensor) -> bool:
    """Whether the native passes run on the tile X: available, float32, CPU, contiguous rows."""
    return X.dtype == torch.float32 and X.device.type == "cpu" and X.dim() == 2 and X.stride(1) == 1 \
        and available()


def _checked_lib(X: Tensor) -> ctypes.CDLL:
    """The loaded library, once X is a tile the passes read."""
    if _lib is None:
        raise RuntimeError("the native row pass is not available (check hardneg.losses.native.available())")
    if X.dtype != torch.float32 or X.device.type != "cpu" or X.dim() != 2 or X.stride(1) != 1:
        raise ValueError("the native row pass takes a float32 CPU tile with contiguous rows")
    return _lib


_THEN = {None: 0, "square": 1, "tilt": 2}


def softmax_rows_(X: Tensor, inactive: Tensor | None, free: bool, then: str | None, *,
                  self_col: Tensor | None = None, pos_col: Tensor | None = None, cols: LabelRows | None = None,
                  fill_cols: bool = False, gather: Tensor | None = None, rec_slot: Tensor | None = None,
                  rec: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The kernel's softmax (``hardneg.losses.kernel._softmaxes_`` without log-weights: β = 0, or the
    root tilt) on every row of X in place. First the candidate rule by columns, each row's own
    column of its ``(c,)`` index tensors (−1: none) or its `LabelRows`: ``gather`` (c × P) ← X at
    ``cols`` (label positives; 0 beyond each row's count), then −∞ at ``self_col``, ``pos_col`` and,
    with ``fill_cols``, ``cols`` (other labels); then E = e^X (``free``: shift-free, unnormalised) or
    P = softmax(X) over the finite entries, and ``then`` None: X ← E or P; "square": E² or P²; "tilt":
    E ⊙ (E − Σ_j E_ij² / 2z_i) or P ⊙ (P − Σ_j P_ij² / 2), the β = 1 gradient tile. ``inactive`` rows
    are read as rows of 0 (no column rule). ``rec_slot`` (c,) int32, ≥ 0 for the rows (the
    diagnostics' sample) first copied as they are to that row of ``rec`` (a slot past its rows is
    not written). Returns
    (lse_i = log Σ_j e^{X_ij}, Σ_j P_ij²)."""
    lib = _checked_lib(X)
    c, m = X.shape
    lse, sumsq = X.new_empty(c), X.new_empty(c)
    ina = None if inactive is None else inactive.to(torch.uint8).contiguous()
    sc = None if self_col is None else self_col.to(torch.int64).contiguous()
    pc = None if pos_col is None else pos_col.to(torch.int64).contiguous()
    cc, crow, ldc, ccnt = (None, None, 0, None) if cols is None else cols.args(c, m)
    P = 0 if cols is None else cols.width
    if gather is not None and (cols is None or gather.shape != (c, P) or gather.dtype != X.dtype
                               or not gather.is_contiguous()):
        raise ValueError("gather must be a contiguous (rows × P) tensor of X's dtype, with cols")
    slot = None if rec_slot is None else rec_slot.to(torch.int32).contiguous()
    if slot is not None and (rec is None or rec.dtype != X.dtype or rec.stride(1) != 1 or rec.shape[1] != m):
        raise ValueError("rec must be a float32 buffer with contiguous rows of the tile's width")
    lib.hn_softmax_rows(X.data_ptr(), c, m, X.stride(0), _ptr(ina), int(bool(free)), _THEN[then], lse.data_ptr(),
                        sumsq.data_ptr(), _ptr(sc), _ptr(pc), cc, crow, ccnt, P, ldc, int(bool(fill_cols)),
                        _ptr(gather), P,
                        _ptr(slot), _ptr(rec if slot is not None else None), 0 if slot is None or rec is None
                        else rec.stride(0), 0 if slot is None or rec is None else rec.shape[0],
                        torch.get_num_threads())
    return lse, sumsq


def label_terms(sp: Tensor, cols: LabelRows, self_col: Tensor | None, neg: Tensor, include: bool
                ) -> tuple[Tensor, Tensor, Tensor]:
    """The label positives' terms with τ⁺ = 0 (``hardneg.losses.kernel._terms``): row i's positives
    are its ``cols`` (the first ``cnt_i``) other than ``self_col_i`` (−1: none), and with
    z = neg_i − sp_ip (``sp`` c × P, each row's similarities at its columns) each adds ℓ = softplus(z),
    ∂ℓ/∂g = σ(z) (``include``: the positive in the denominator), else ℓ = z and 1. Returns
    (Σ_p ℓ, Σ_p ∂ℓ/∂g, ∂ℓ/∂s_p = −∂ℓ/∂g on the positives and 0 on the rest of the c × P)."""
    lib = _checked_lib(sp)
    c, P = sp.shape
    if not sp.is_contiguous() or cols.width != P or neg.shape != (c,) or neg.dtype != torch.float32 \
            or not neg.is_contiguous() or (self_col is not None and (
                self_col.shape != (c,) or self_col.dtype != torch.int64 or not self_col.is_contiguous())):
        raise ValueError("label_terms takes contiguous (rows × P) sp, float32 (rows,) neg and int64 (rows,) self_col")
    cc, crow, ldc, ccnt = cols.args(c)
    loss, gsum, dsp = sp.new_empty(c), sp.new_empty(c), torch.empty_like(sp)
    lib.hn_label_terms(sp.data_ptr(), cc, crow, ldc, c, P, ccnt, _ptr(self_col), neg.data_ptr(), int(bool(include)),
                       loss.data_ptr(), gsum.data_ptr(), dsp.data_ptr(), torch.get_num_threads())
    return loss, gsum, dsp


def label_scatter_(X: Tensor, cols: LabelRows, vals: Tensor, h: Tensor) -> None:
    """X[i, cols_ip] += vals_ip h_i over each row's columns (the first ``cnt_i``; `LabelRows`), in
    place: the label positives' terms entering the gradient tile (``hardneg.losses.kernel._products_``)."""
    lib = _checked_lib(X)
    c = X.shape[0]
    if vals.shape != (c, cols.width) or vals.dtype != X.dtype or not vals.is_contiguous() or h.shape != (c,) \
            or h.dtype != X.dtype or not h.is_contiguous():
        raise ValueError("label_scatter_ takes contiguous (rows × P) vals and (rows,) h of X's dtype")
    cc, crow, ldc, ccnt = cols.args(c, X.shape[1])
    lib.hn_label_scatter(X.data_ptr(), c, X.stride(0), cc, crow, ldc, ccnt, cols.width, vals.data_ptr(), h.data_ptr(),
                         torch.get_num_threads())


def weighted_softmax_rows_(X: Tensor, rule: RowRule, inactive: Tensor | None, free: bool,
                           rec_slot: Tensor | None = None, rec: tuple[Tensor, Tensor] | None = None
                           ) -> RowsResult:
    """The rule and the softmax on every row of X (c × m, float32, CPU, rows contiguous) in place:
    X ← e^{X + a} (``free``: shift-free and unnormalised, 1/Σ in ``scale``; only without
    log-weights), softmax(X + a) (``scale`` None), or, with distance weighting, e^{X + a} times a
    factor of the row's (its largest entry at most 2) with what normalises it in ``scale``.
    ``inactive`` (c,) bool: rows made placeholders. ``rec_slot`` (c,) int32, ≥ 0 for the rows
    (the diagnostics' sample) whose X before the rule and log-weights a after it (−∞ where
    removed) are written to that row of ``rec`` = (X, log-weights) (a slot past their rows is not
    written)."""
    lib = _checked_lib(X)
    c, m = X.shape
    kind = _KINDS[rule.kind]
    free = bool(free) and kind != 2
    lo, hi = _rowvec(rule.lo, c), _rowvec(rule.hi, c)
    centre = _rowvec(rule.centre, c) if kind == 1 else None
    no_rule = (0.0, -0.5, 0.0, 0.0, 0.0)
    two_t, p_u, p_v, u_lo, u_hi = rule.distance if kind == 2 and rule.distance is not None else no_rule
    if p_u != p_v - 0.5:  # the pass takes e^a as e^{p_v log(u q)} / √u (native_rows.c, distance_row)
        raise ValueError(f"the distance rule's exponents need p_u = p_v - 1/2 (Wu et al.'s q(d)), got {p_u}, {p_v}")
    cnt = torch.empty(c, dtype=torch.int64)
    lse_b, lse_a = X.new_empty(c), X.new_empty(c)
    scale = X.new_empty(c) if free or kind == 2 else None  # distance weighting: rows left unnormalised
    fallback = torch.empty(c, dtype=torch.bool)  # the pass writes 0 or 1 in each byte
    threads = max(1, min(torch.get_num_threads(), c))
    scratch = X.new_empty(threads, int(lib.hn_distance_scratch(m))) if kind == 2 else None  # per thread
    ina = None if inactive is None else inactive.to(torch.uint8).contiguous()
    slot = None if rec_slot is None else rec_slot.to(torch.int32).contiguous()
    rec_x, rec_lw = (None, None) if rec is None else rec
    if slot is not None and rec is None:
        raise ValueError("rec_slot needs rec, the buffers its rows are written to")
    if rec_x is not None and rec_lw is not None and any(
        b.dtype != torch.float32 or b.stride(1) != 1 or b.shape[1] != m or b.stride(0) != rec_x.stride(0)
        for b in (rec_x, rec_lw)
    ):
        raise ValueError("rec must be two float32 buffers with contiguous rows of the tile's width, one stride")
    lib.hn_weighted_softmax_rows(
        X.data_ptr(), c, m, X.stride(0), _ptr(lo), _ptr(hi), kind, _ptr(centre), rule.half, two_t, p_v, u_lo,
        u_hi, _ptr(ina), int(free), cnt.data_ptr(), lse_b.data_ptr(), lse_a.data_ptr(), _ptr(scale),
        fallback.data_ptr(), _ptr(slot), _ptr(rec_x), _ptr(rec_lw), 0 if rec_x is None else rec_x.stride(0),
        0 if rec_x is None or rec_lw is None else min(rec_x.shape[0], rec_lw.shape[0]), _ptr(scratch), threads)
    return RowsResult(cnt, lse_b, lse_a, scale, fallback)


@dataclass(frozen=True)
class RowStats:
    """Per row of `row_stats`: valid count, largest s and its column, Σ s (float64), log-sum-exp of
    the logits and, under π = their softmax, Σ π s and Σ π² (float64); ``hist`` the counts of the
    valid s over the bins (float64, all rows)."""

    n_valid: Tensor
    hard: Tensor
    hard_j: Tensor
    sum_s: Tensor
    lse: Tensor
    sum_ps: Tensor
    sum_pp: Tensor
    hist: Tensor


def row_stats(S: Tensor, W: Tensor, uniform: bool, beta_over_t: float, lo: float, hi: float, bins: int) -> RowStats:
    """The diagnostics' statistics of the rows of S (cosines) whose valid entries are the finite ones
    of the log-weights W, in one pass per row (`hardneg.negatives.diagnostics.DiagnosticsAccumulator`):
    π_ij ∝ exp(W_ij + beta_over_t S_ij) over them (``uniform``: 1 / count), the histogram as
    ``torch.histc(bins, lo, hi)`` counts it."""
    lib = _checked_lib(S)
    _checked_lib(W)
    if S.shape != W.shape:
        raise ValueError(f"S and W must have the same shape, got {tuple(S.shape)} and {tuple(W.shape)}")
    c, m = S.shape
    threads = max(1, min(torch.get_num_threads(), c))
    hist = torch.zeros(threads, bins + 1, dtype=torch.int64)  # the last: entries outside the histogram
    n_valid, hard_j = torch.empty(c, dtype=torch.int64), torch.empty(c, dtype=torch.int64)
    hard, lse = S.new_empty(c), S.new_empty(c)
    f64 = [torch.empty(c, dtype=torch.float64) for _ in range(3)]
    lib.hn_row_stats(S.data_ptr(), S.stride(0), W.data_ptr(), W.stride(0), c, m, int(bool(uniform)), beta_over_t, lo,
                     hi, bins, hist.data_ptr(), n_valid.data_ptr(), hard.data_ptr(), hard_j.data_ptr(),
                     f64[0].data_ptr(), lse.data_ptr(), f64[1].data_ptr(), f64[2].data_ptr(), threads)
    return RowStats(n_valid, hard, hard_j, f64[0], lse, f64[1], f64[2], hist[:, :bins].sum(0).double())


def unit_rows_backward(y: Tensor, g: Tensor, norms: Tensor) -> Tensor:
    """The gradient of y = x / ‖x‖ per row, (g − y (y·g)) / ‖x‖, in one pass per row
    (`hardneg.losses.candidates.safe_normalize`); y, g (n × d) and norms (n × 1) float32 CPU."""
    y, g, norms = y.contiguous(), g.contiguous(), norms.contiguous()
    lib = _checked_lib(y)
    _checked_lib(g)
    out = torch.empty_like(g)
    lib.hn_unit_rows_backward(y.data_ptr(), g.data_ptr(), norms.data_ptr(), out.data_ptr(), y.shape[0], y.shape[1],
                              torch.get_num_threads())
    return out
