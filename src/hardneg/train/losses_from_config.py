"""Map a loss name and keyword arguments from a config to a callable ``loss_fn(z1, z2, labels) -> scalar``.

Names ucl, scl, supcon, hucl, dcl, hscl, triplet, margin, decoupled are the functional losses of
`hardneg.losses` (UCL/SCL/H-UCL/H-SCL as in Jiang et al. 2022, arXiv 2209.00078; H-UCL is
Robinson et al. 2021's HCL; DCL is Chuang et al. 2020; SupCon is Khosla et al. 2020). Any other name is
looked up in the strategy registry (`hardneg.negatives.registry.create_strategy`) when it exists.
A training config's ``strategy:`` mapping goes to `hardneg.negatives.registry.from_config` as is
(`build_objective`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

import hardneg.losses as L
from hardneg.negatives import registry
from hardneg.negatives.strategy import Strategy
from hardneg.runs.config import RunConfig
from hardneg.runs.grid import has_beta as has_beta

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: the named losses of hardneg.losses a config can name
NAMED = ("ucl", "scl", "supcon", "hucl", "dcl", "hscl", "triplet", "margin", "decoupled")


def _functional(name: str) -> Callable[..., torch.Tensor]:
    fn = getattr(L, name, None)
    if fn is None:
        raise ValueError(f"hardneg.losses has no function {name!r}")
    return fn


def build_loss(name: str, params: dict[str, Any] | None = None) -> LossFn:
    """Return ``loss_fn(z1, z2, labels)`` for a named loss; unknown names or keyword args raise ValueError."""
    params = dict(params or {})
    if name in NAMED:
        fn = _functional(name)
        sig = inspect.signature(fn)
        kw_ok = {p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        bad = sorted(set(params) - kw_ok)
        if bad:
            # triplet / margin have no softmax: their tilt's similarity unit is tilt_scale
            hint = "; it has no softmax temperature (the tilt's similarity unit is 'tilt_scale')" if (
                {"t", "temperature"} & set(bad) and "tilt_scale" in kw_ok
            ) else ""
            raise ValueError(f"loss {name!r} does not take {bad}{hint}; it takes {sorted(kw_ok)}")
        positional = [p.name for p in sig.parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        takes_labels = "labels" in positional

        def loss_fn(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            if takes_labels:
                return fn(z1, z2, labels, **params)
            return fn(z1, z2, **params)

        loss_fn.__name__ = f"{name}({', '.join(f'{k}={v}' for k, v in params.items())})"
        return loss_fn
    if name not in registry.list_strategies():
        raise ValueError(
            f"unknown loss {name!r}; expected one of {', '.join(NAMED)} or a strategy preset "
            f"({', '.join(registry.list_strategies())})"
        )
    return registry.create_strategy(name, **params)  # ValueError names a bad option


def build_objective(cfg: RunConfig) -> LossFn:
    """The training objective of a run config: its ``strategy:`` mapping built by
    `hardneg.negatives.registry.from_config` (a `Strategy`),
    else ``loss.name`` / ``loss.params`` through `build_loss`.

    Every problem (unknown preset, option or kind, bad value, missing file) raises ``ValueError`` or
    ``FileNotFoundError`` naming the config section, so a run can be refused before anything is written.
    """
    if cfg.strategy is not None:
        try:
            return registry.from_config(cfg.strategy)
        except (TypeError, ValueError) as e:
            raise ValueError(f"strategy: {e}") from None
        except FileNotFoundError as e:
            raise FileNotFoundError(f"strategy: {e}") from None
    if cfg.loss is None:  # pragma: no cover - RunConfig refuses a config with neither
        raise ValueError("the config has neither 'loss' nor 'strategy'")
    try:
        return build_loss(cfg.loss.name, cfg.loss.params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"loss: {e}") from None


def strategy_of(loss_fn: Any) -> Strategy | None:
    """The `Strategy` behind a loss: the loss itself or its
    ``strategy`` attribute (a wrapper that exposes the strategy it calls); None for plain functions."""
    s = getattr(loss_fn, "strategy", loss_fn)
    return s if isinstance(s, Strategy) else None
