"""hardneg: negative sampling for contrastive learning.

One chunked, log-space kernel (`hardneg.losses.weighted_info_nce`) computes every
InfoNCE-family loss; each strategy is a distribution π over candidate negatives (docs/design.md §1).

The main entry points are importable from here (``hardneg.hscl``, ``hardneg.create_strategy``,
``hardneg.mine_hard_negatives``, …), and every public subpackage and module is an attribute
(``hardneg.negatives``, ``hardneg.dense``, ``hardneg.runs``, …). Both are loaded on first use, so
``import hardneg`` itself imports neither torch nor any optional dependency; ``dir(hardneg)`` lists
exactly these names.
"""

import importlib as _importlib
import typing as _typing

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
#: every public subpackage and module, loaded on first attribute access (listed here rather than found
#: on disk so that ``import hardneg`` reads no directory; a test checks the list against the package)
_SUBMODULES = ("arrays", "bench", "cli", "cores", "data", "dense", "distributed", "eval",
               "importpath", "integrations", "io", "losses", "mining", "models", "negatives",
               "report", "runs", "seed", "train", "vector_search")

__all__ = [
    "__version__",
    "weighted_info_nce", "KernelSpec",
    "ucl", "scl", "supcon", "hucl", "dcl", "hscl", "decoupled", "triplet", "margin",
    "UCL", "SCL", "SupCon", "HUCL", "DCL", "HSCL", "Decoupled", "Triplet", "Margin",
    "Strategy", "create_strategy", "from_config", "list_strategies", "describe_strategies",
    "mine_hard_negatives",
    "MissingExtraError",
]

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    # the subpackages and modules, each as itself (the redundant alias marks a re-export)
    from hardneg import arrays as arrays
    from hardneg import bench as bench
    from hardneg import cli as cli
    from hardneg import cores as cores
    from hardneg import data as data
    from hardneg import dense as dense
    from hardneg import distributed as distributed
    from hardneg import eval as eval
    from hardneg import importpath as importpath
    from hardneg import integrations as integrations
    from hardneg import io as io
    from hardneg import losses as losses
    from hardneg import mining as mining
    from hardneg import models as models
    from hardneg import negatives as negatives
    from hardneg import report as report
    from hardneg import runs as runs
    from hardneg import seed as seed
    from hardneg import train as train
    from hardneg import vector_search as vector_search
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


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API: ``__all__`` and the subpackages and modules, nothing the module uses itself."""
    return sorted({*__all__, *_SUBMODULES})
