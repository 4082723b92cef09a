"""The statistics every report table uses: mean ± sample std over seeds, and the one rule for "a
difference beyond the seed spread" (|Δ mean| > √(σ_a² + σ_b²))."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hardneg.runs.metrics import mean_std

__all__ = ["Versus", "format_mean_std", "mean_std", "versus"]


def format_mean_std(v: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    """``mean ± sample std`` of ``v`` times ``scale``; the mean alone for a single value (one seed
    measures no spread); "–" for none."""
    if not len(v):
        return "–"
    m, s = mean_std(v)
    return f"{scale * m:{fmt}}" if len(v) == 1 else f"{scale * m:{fmt}} ± {scale * s:{fmt}}"


@dataclass(frozen=True)
class Versus:
    """Group ``a`` against group ``c``: the difference of means, the combined seed spread, and whether
    the difference is beyond it (None when either group has a single seed: no spread measured)."""

    diff: float
    spread: float
    beyond: bool | None

    @property
    def verdict(self) -> str:
        return "better" if self.diff > 0 else "worse" if self.diff < 0 else "equal"


def versus(a: list[float], c: list[float]) -> Versus:
    """Compare the values of ``a`` with those of ``c`` (one value per seed)."""
    (ma, sa), (mc, sc) = mean_std(a), mean_std(c)
    spread = math.sqrt(sa**2 + sc**2)
    beyond = abs(ma - mc) > spread if len(a) > 1 and len(c) > 1 else None
    return Versus(ma - mc, spread, beyond)
