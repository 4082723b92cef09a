"""Validation of the options and side information every loss and strategy takes: one definition each.

Each check raises ``TypeError`` / ``ValueError`` with one line naming the option and the value.
Labels and sample ids are integers ≥ −1, where −1 means unknown (see
`hardneg.losses.candidates` for what unknown implies).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

UNKNOWN = -1

#: the allowed values of the options every loss and strategy shares (docs/design.md, Vocabulary)
POSITIVES = ("view", "labels")
POSITIVE_REDUCES = ("mean", "pairs")
REDUCTIONS = ("mean", "sum", "none")
#: the named values of ``n_neg``, N of the loss: ``"count"`` the number of valid candidates of each
#: anchor (plain sums), ``"nominal"`` every candidate but the anchor and its positive (2B − 2)
N_NEG = ("count", "nominal")


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def check_choice(name: str, v: Any, allowed: tuple[str, ...]) -> str:
    """One of a fixed set of names (``positives``, ``reduction``, a component's mode)."""
    if not isinstance(v, str) or v not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {v!r}")
    return v


def check_int(name: str, v: Any, lo: int = 1, hi: int | None = None) -> int:
    """An integer option ≥ ``lo`` (≤ ``hi``): an int, or a float with an integral value (``16.0``, as
    YAML, a schedule or arithmetic may give it), returned as ``int``; ``16.5``, strings and bools are
    refused."""
    ok = _number(v) and math.isfinite(v) and float(v).is_integer() and v >= lo and (hi is None or v <= hi)
    if not ok:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {rng}, got {v!r}")
    return int(v)


def check_number(
    name: str, v: Any, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    """A finite number in the interval from ``lo`` to ``hi`` (either end open when asked)."""
    ok = _number(v) and math.isfinite(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must be a finite number in {left}{lo}, {hi}{right}, got {v!r}")
    return float(v)


def check_temperature(t: Any, name: str = "temperature") -> float:
    """A temperature: a finite number > 0."""
    if not _number(t) or not math.isfinite(t) or not t > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {t!r}")
    return float(t)


def resolve_temperature(t: Any, temperature: Any, default: float | None = None) -> float:
    """``temperature`` is the public name (as in PML and sentence-transformers), ``t`` its short
    alias; giving both with different values is an error. Returns the checked value."""
    if t is not None and temperature is not None and float(t) != float(temperature):
        raise ValueError(f"give temperature or its alias t, not both (got temperature={temperature!r}, t={t!r})")
    v = temperature if temperature is not None else t if t is not None else default
    if v is None:
        raise ValueError("temperature is required")
    return check_temperature(v)


def check_beta(beta: Any, name: str = "beta") -> float:
    """The hardness tilt β of π ∝ exp(β s / t): a finite number ≥ 0."""
    if not _number(beta) or not math.isfinite(beta) or not beta >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {beta!r}")
    return float(beta)


def check_tau_plus(tau_plus: Any) -> float:
    """The class prior τ⁺ of the debiased estimator: a number in [0, 1)."""
    if not _number(tau_plus) or not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must lie in [0, 1), got {tau_plus!r}")
    return float(tau_plus)


def check_nonneg(name: str, v: Any) -> float:
    """A finite number ≥ 0 (margins)."""
    if not _number(v) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


def check_positive(name: str, v: Any) -> float:
    """A finite number > 0 (learning rates, temperatures of auxiliary models)."""
    if not _number(v) or not math.isfinite(v) or not v > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def check_n_neg(n_neg: Any) -> str | float:
    """N, the number of negatives the weighted mean is scaled to: one of `N_NEG` or a number > 0."""
    if isinstance(n_neg, str):
        return check_choice("n_neg", n_neg, N_NEG)
    if not _number(n_neg) or not math.isfinite(n_neg) or not n_neg > 0:
        raise ValueError(f"n_neg must be one of {N_NEG} or a finite number > 0, got {n_neg!r}")
    return float(n_neg)


def check_reduction(reduction: Any) -> str:
    """How per-anchor losses are reduced: one of `REDUCTIONS`."""
    return check_choice("reduction", reduction, REDUCTIONS)


def check_chunk_size(chunk_size: Any) -> int | None:
    """Anchors per chunk: a positive int, or None for the default."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def _integer_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x


def check_embeddings(name: str, x: object, *, finite: bool = False) -> Tensor:
    """A (num ≥ 1, dim) floating-point tensor; with ``finite``, free of NaN and inf."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (num, dim), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one row, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def check_tags(name: str, x: object, length: int, device: torch.device | None = None) -> Tensor | None:
    """Labels or sample ids: an integer tensor of shape (length,), values ≥ −1 (−1 = unknown).

    Returns it as ``long`` on ``device`` (None passes through)."""
    if x is None:
        return None
    x = _integer_tensor(name, x)
    if x.dim() != 1 or x.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},) (one per sample), got {tuple(x.shape)}")
    if length and int(x.min()) < UNKNOWN:
        raise ValueError(f"{name} must be integers >= -1 (-1 = unknown), got min {int(x.min())}")
    return x.to(device=device if device is not None else x.device, dtype=torch.long)


def check_columns(name: str, x: object, n: int, m: int, device: torch.device, allow_missing: bool) -> Tensor | None:
    """A per-anchor column index into the candidates (``pos_index``, ``self_index``); −1 allowed
    (no such column) when ``allow_missing``."""
    if x is None:
        return None
    x = _integer_tensor(name, x)
    if x.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(x.shape)}")
    x = x.to(device=device, dtype=torch.long)
    lo = -1 if allow_missing else 0
    if n and (int(x.min()) < lo or int(x.max()) >= m):
        raise ValueError(f"{name} values must lie in [{lo}, {m - 1}], got [{int(x.min())}, {int(x.max())}]")
    return x
