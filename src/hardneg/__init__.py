"""hardneg: negative sampling for contrastive learning.

One chunked, log-space kernel (`hardneg.losses.weighted_info_nce`) computes every
InfoNCE-family loss; each strategy is a distribution π over candidate negatives (docs/design.md §1).

The main entry points are importable from here (``hardneg.hscl``, ``hardneg.create_strategy``,
``hardneg.mine_hard_negatives``, …). They are loaded on first use, so ``import hardneg`` itself
imports neither torch nor any optional dependency.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LOSSES = ("weighted_info_nce", "KernelSpec", "ucl", "scl", "supcon", "hucl", "dcl", "hscl", "decoupled",
           "triplet", "margin", "UCL", "SCL", "SupCon", "HUCL", "DCL", "HSCL", "Decoupled", "Triplet", "Margin")
_NEGATIVES = ("Strategy", "create_strategy", "from_config", "list_strategies", "describe_strategies")

#: exported name -> module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(_LOSSES, "hardneg.losses"),
    **dict.fromkeys(_NEGATIVES, "hardneg.negatives"),
    "mine_hard_negatives": "hardneg.mining.hard_negatives",
    "MissingExtraError": "hardneg._optional",
}
_SUBMODULES = ("losses", "negatives", "mining", "integrations", "data", "models", "train", "eval", "report")

__all__ = [
    "__version__",
    "weighted_info_nce", "KernelSpec",
    "ucl", "scl", "supcon", "hucl", "dcl", "hscl", "decoupled", "triplet", "margin",
    "UCL", "SCL", "SupCon", "HUCL", "DCL", "HSCL", "Decoupled", "Triplet", "Margin",
    "Strategy", "create_strategy", "from_config", "list_strategies", "describe_strategies",
    "mine_hard_negatives",
    "MissingExtraError",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from hardneg._optional import MissingExtraError
    from hardneg.losses import (
        DCL,
        HSCL,
        HUCL,
        SCL,
        UCL,
        Decoupled,
        KernelSpec,
        Margin,
        SupCon,
        Triplet,
        dcl,
        decoupled,
        hscl,
        hucl,
        margin,
        scl,
        supcon,
        triplet,
        ucl,
        weighted_info_nce,
    )
    from hardneg.mining.hard_negatives import mine_hard_negatives
    from hardneg.negatives import Strategy, create_strategy, describe_strategies, from_config, list_strategies


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
