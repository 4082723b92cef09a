r"""Registry of strategy presets (timm-style): one name means the same thing in Python, in a YAML
config and on the command line.

Stable API (used by the trainer and the configs):

- `create_strategy` ``(name, **overrides) -> Strategy``
- `list_strategies` ``() -> list[str]`` and `describe_strategies` ``() -> {name: line}``
- `from_config` ``(mapping) -> Strategy``

Overrides are (1) the preset's own knobs (``k`` for ``topk``, ``size`` for ``moco_queue``, …),
(2) the core options of `Strategy` (``temperature`` / ``t``, ``beta``,
``tau_plus``, ``n_neg``, ``family``, ``positives``, ``reduction``, ``schedule``, ``diagnostics``, …), and
(3) composition: ``source=``, ``filters=``, ``weighting=`` — objects or mappings with a ``kind``
key — which are **added** to the preset's own components. Unknown names raise ``ValueError``
naming them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hardneg._optional import require
from hardneg.arrays import load_array
from hardneg.importpath import import_object, is_import_path
from hardneg.negatives.adversarial import AdversarialBank, NegativeGenerator
from hardneg.negatives.filters import FILTERS, Filter, GuideFilter, IdFilter, LabelFilter, SimilarityFilter
from hardneg.negatives.mixing import Mixing
from hardneg.negatives.queue import MemoryQueue
from hardneg.negatives.sources import SOURCES, ExternalPool, InBatch, Source, component_options
from hardneg.negatives.strategy import Strategy
from hardneg.negatives.weighting import (
    WEIGHTINGS,
    Calibrated,
    ClusterGuided,
    DistanceWeighted,
    SemiHard,
    TopK,
    Weighting,
)

_SOURCE_ALIASES = {
    "adco": "adversarial_bank",
    "mochi": "mixing",
    "memory_queue": "queue",
    "external_pool": "pool",
}

_CORE = tuple(
    p
    for p in inspect.signature(Strategy.__init__).parameters
    if p not in ("self", "source", "filters", "weighting", "name")
)


@dataclass(frozen=True)
class Preset:
    """A named strategy and what is known about it, in one place: ``hardneg strategies`` lists it,
    the leaderboard compares it with its ``base``, the alias table shows its ``kinds``."""

    name: str
    description: str
    build: Callable[..., dict[str, Any]]
    #: the same method without what this preset adds (its tilt, filter, source or weighting); None
    #: for the reference. The leaderboard compares each entry with its base's entry.
    base: str | None
    #: the component kinds the preset builds besides the in-batch source, in build order
    kinds: tuple[str, ...]
    #: the paper the preset follows ("" for a generic technique)
    paper: str

    def knobs(self) -> dict[str, Any]:
        """The preset's own options and their defaults (``inspect.Parameter.empty`` = required)."""
        return {k: p.default for k, p in inspect.signature(self.build).parameters.items()}


PRESETS: dict[str, Preset] = {}


def _register(
    name: str, description: str, *, base: str | None, kinds: tuple[str, ...] = (), paper: str = ""
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    def deco(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        PRESETS[name] = Preset(name, description, fn, base, kinds, paper)
        return fn

    return deco


# ---------------------------------------------------------------------------------------------
# presets: each returns Strategy keyword arguments
# ---------------------------------------------------------------------------------------------


@_register(
    "ucl",
    "SimCLR / NT-Xent (Chen et al. 2020): uniform in-batch negatives, t=0.5",
    base=None, paper="Chen et al. 2020 (SimCLR)",
)
def _ucl() -> dict[str, Any]:
    return {"temperature": 0.5}


@_register(
    "scl",
    "SCL (Jiang et al. 2022): uniform negatives of other labels, one positive, N=2B-2, t=0.5",
    base="ucl", kinds=("label",), paper="Jiang et al. 2022 (SCL)",  # + label filter
)
def _scl() -> dict[str, Any]:
    return {"temperature": 0.5, "filters": [LabelFilter()], "n_neg": "nominal"}


@_register(
    "supcon",
    "SupCon L_out (Khosla et al. 2020): all same-label samples are positives, t=0.1",
    # the same labels, used as positives instead of only removed from the negatives
    base="scl", paper="Khosla et al. 2020 (SupCon)",
)
def _supcon() -> dict[str, Any]:
    return {"temperature": 0.1, "family": "supcon"}


@_register(
    "hucl",
    "H-UCL / HCL (Robinson et al. 2021): beta-tilted in-batch negatives, tau_plus debiasing, t=0.5",
    base="ucl", paper="Robinson et al. 2021 (HCL)",  # + tilt
)
def _hucl() -> dict[str, Any]:
    return {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.0, "n_neg": "nominal"}


@_register(
    "dcl",
    "DCL, debiased (Chuang et al. 2020): uniform negatives, tau_plus=0.1 correction, t=0.5",
    base="ucl", paper="Chuang et al. 2020 (DCL)",  # + debiasing
)
def _dcl() -> dict[str, Any]:
    return {"temperature": 0.5, "tau_plus": 0.1, "n_neg": "nominal"}


@_register(
    "hscl",
    "H-SCL (Jiang et al. 2022): other-label negatives tilted by exp(beta s/t), beta=1, t=0.5",
    base="scl", kinds=("label",), paper="Jiang et al. 2022 (H-SCL)",  # + tilt
)
def _hscl() -> dict[str, Any]:
    # the paper's training code: every same-label pair is a term (positives="view" gives one positive)
    return {"temperature": 0.5, "beta": 1.0, "filters": [LabelFilter()], "n_neg": "nominal",
            "positives": "labels", "positive_reduce": "pairs"}


@_register(
    "decoupled",
    "Decoupled contrastive loss (Yeh et al. 2022): positive removed from the denominator",
    base="ucl", paper="Yeh et al. 2022 (decoupled contrastive loss)",  # − the positive in the denominator
)
def _decoupled() -> dict[str, Any]:
    return {"temperature": 0.1, "family": "decoupled"}


@_register(
    "topk",
    "Top-k hard negative mining: only the k most similar candidates count (k=16)",
    base="ucl", kinds=("topk",),
)
def _topk(k: int = 16) -> dict[str, Any]:
    return {"temperature": 0.5, "weighting": [TopK(k)]}


@_register(
    "semihard",
    "Semi-hard negatives (FaceNet, Schroff et al. 2015): s_p - margin < s_n < s_p (margin=0.2)",
    base="ucl", kinds=("semihard",), paper="Schroff et al. 2015 (FaceNet)",
)
def _semihard(margin: float = 0.2) -> dict[str, Any]:
    return {"temperature": 0.5, "weighting": [SemiHard(margin)]}


@_register(
    "distance_weighted",
    "Distance-weighted sampling (Wu et al. 2017): pi ~ 1/q(d), cutoff 0.5, drop d>=1.4",
    base="ucl", kinds=("distance_weighted",), paper="Wu et al. 2017",
)
def _dw(cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4) -> dict[str, Any]:
    return {"temperature": 0.5, "weighting": [DistanceWeighted(cutoff, nonzero_loss_cutoff)]}


@_register(
    "moco_queue",
    "MoCo (He et al. 2020): FIFO queue of momentum-encoder keys (size=4096) + batch keys, t=0.2",
    base="ucl", kinds=("queue",), paper="He et al. 2020 (MoCo)",  # + momentum-key queue
)
def _moco(size: int = 4096) -> dict[str, Any]:
    return {"temperature": 0.2, "source": [InBatch(symmetric=False), MemoryQueue(size)]}


@_register(
    "mochi",
    "MoCHi (Kalantidis et al. 2020): queue + synthetic mixes of the hardest negatives",
    base="moco_queue", kinds=("queue", "mixing"), paper="Kalantidis et al. 2020 (MoCHi)",  # + synthetic hard mixes
)
def _mochi(
    size: int = 4096, n_hard: int = 64, s: int = 32, s_prime: int = 16, query_mix_max: float = 0.45, seed: int = 0
) -> dict[str, Any]:
    return {
        "temperature": 0.2,
        "source": [InBatch(symmetric=False), MemoryQueue(size), Mixing(n_hard, s, s_prime, query_mix_max, seed)],
    }


@_register(
    "adco",
    "AdCo (Hu et al. 2021): learned negatives trained by gradient ascent (size=1024, lr=3, bank_temperature=0.02)",
    # a learned bank instead of the queue
    base="moco_queue", kinds=("adversarial_bank",), paper="Hu et al. 2021 (AdCo)",
)
def _adco(
    size: int = 1024, lr: float = 3.0, bank_temperature: float = 0.02, dim: int | None = None, seed: int = 0
) -> dict[str, Any]:
    return {
        "temperature": 0.12,
        "source": [
            InBatch(symmetric=False, batch_negatives=False),
            AdversarialBank(size, dim=dim, lr=lr, bank_temperature=bank_temperature, seed=seed),
        ],
    }


@_register(
    "generator",
    "Adversarial generator of near-anchor negatives vs a discriminator, anti-collapse regularisers",
    base="ucl", kinds=("generator",),
)
def _generator(
    dim: int = 0,
    n_per_anchor: int = 4,
    min_dist: float = 0.3,
    lambda_dist: float = 10.0,
    lambda_div: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    if not dim:
        raise ValueError("generator option 'dim' (the embedding dimension) is required, e.g. dim=128")
    return {
        "temperature": 0.5,
        "source": [
            NegativeGenerator(
                dim,
                n_per_anchor,
                min_dist=min_dist,
                lambda_dist=lambda_dist,
                lambda_div=lambda_div,
                seed=seed,
            )
        ],
    }


@_register(
    "pool",
    "External pool: each anchor's nearest rows of a separate corpus (FAISS), k_per_anchor=16",
    base="ucl", kinds=("pool",),
)
def _pool(embeddings: Any = None, k_per_anchor: int = 16, shared: bool = False) -> dict[str, Any]:
    if embeddings is None:
        raise ValueError("pool option 'embeddings' (a tensor, .npy path or faiss index) is required")
    return {"temperature": 0.5, "source": [ExternalPool(embeddings, k_per_anchor, shared=shared)]}


@_register(
    "cluster_guided",
    "Cluster-guided: k-means (FAISS) every E steps, prefer near candidates of other clusters",
    base="ucl", kinds=("cluster_guided",),
)
def _cluster(
    n_clusters: int = 10,
    every: int = 100,
    bonus: float = 1.0,
    gamma: float = 1.0,
    exclude_same: bool = False,
    features: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    return {
        "temperature": 0.5,
        "weighting": [
            ClusterGuided(n_clusters, every, bonus, gamma, exclude_same, _load_tensor(features, "features"), seed=seed)
        ],
    }


@_register(
    "calibrated",
    "Calibrated: an aux MLP predicts P(pair aligned); negatives weighted by 1 - p_hat",
    base="ucl", kinds=("calibrated",),
)
def _calibrated(
    hidden: int = 32, lr: float = 1e-2, train_steps: int = 1, neg_per_anchor: int = 4, seed: int = 0
) -> dict[str, Any]:
    return {"temperature": 0.5, "weighting": [Calibrated(hidden, lr, train_steps, neg_per_anchor, seed=seed)]}


@_register(
    "filtered",
    "False-negative filters: same id / duplicate group, similarity margin to the positive",
    base="ucl", kinds=("id", "similarity"),
)
def _filtered(
    relative_margin: float | None = 0.05,
    absolute_margin: float | None = None,
    max_score: float | None = None,
    label: bool = False,
    groups: Any = None,
) -> dict[str, Any]:
    fl: list[Filter] = [IdFilter(_load_tensor(groups, "groups"))]
    if any(v is not None for v in (relative_margin, absolute_margin, max_score)):
        fl.append(
            SimilarityFilter(max_score=max_score, absolute_margin=absolute_margin, relative_margin=relative_margin)
        )
    if label:
        fl.append(LabelFilter())
    return {"temperature": 0.5, "filters": fl}


@_register(
    "gist",
    "GISTEmbed (Solatorio 2024): drop negatives a guide model scores above the positive",
    base="ucl", kinds=("guide",), paper="Solatorio 2024 (GISTEmbed)",
)
def _gist(guide: Any = None, margin: float = 0.0) -> dict[str, Any]:
    if guide is None:
        raise ValueError(
            "gist option 'guide' (a (num_ids, d) tensor / .npy / .pt path, a pair of them for "
            "anchor and positive texts, or a callable) is required"
        )
    if callable(guide):
        g = guide
    elif isinstance(guide, (tuple, list)) and len(guide) == 2 and not isinstance(guide[0], (int, float)):
        g = (_load_tensor(guide[0], "guide"), _load_tensor(guide[1], "guide"))
    else:
        g = _load_tensor(guide, "guide")
    return {"temperature": 0.05, "filters": [GuideFilter(g, margin)]}


# ---------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------


def _load_tensor(x: Any, name: str) -> torch.Tensor | None:
    if x is None or isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(load_array(x, name)))


def _component_class(kind_map: dict[str, type], aliases: dict[str, str], what: str, kind: Any, base: type) -> type:
    """The class a ``kind`` names: a registered kind (or its alias), or an import path
    ``"package.module:Class"`` to a subclass of ``base`` defined anywhere."""
    if is_import_path(kind):
        cls = import_object(kind, f"{what} 'kind'")
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ValueError(f"{what} 'kind' {kind!r} must name a subclass of hardneg.negatives.{base.__name__}")
        return cls
    kind = aliases.get(kind, kind)
    if kind not in kind_map:
        raise ValueError(
            f"{what} 'kind' must be one of {sorted(kind_map)} or an import path 'package.module:Class', got {kind!r}"
        )
    return kind_map[kind]


def _build(kind_map: dict[str, type], aliases: dict[str, str], what: str, spec: Any, base: type) -> Any:
    if isinstance(spec, base):
        return spec
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(f"{what} must be a {base.__name__} or a mapping with a 'kind' key, got {type(spec).__name__}")
    spec = dict(spec)
    kind = spec.pop("kind", None)
    cls = _component_class(kind_map, aliases, what, kind, base)
    params = inspect.signature(cls).parameters
    allowed = sorted(p for p in params if p != "self")
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {what} kind {kind!r}; allowed: {allowed}")
    if (
        isinstance(spec.get("guide"), (list, tuple))
        and len(spec["guide"]) == 2
        and isinstance(spec["guide"][0], (str, os.PathLike))
    ):
        spec["guide"] = tuple(_load_tensor(x, "guide") for x in spec["guide"])
    for key in ("embeddings", "features", "groups", "guide", "labels", "ids"):
        if key in spec and isinstance(spec[key], (str, os.PathLike, list)) and key != "embeddings":
            spec[key] = _load_tensor(spec[key], key)
    return cls(**spec)


def build_source(spec: Any) -> Source:
    """A source from an object or a mapping
    ``{kind: queue|pool|mixing|adversarial_bank|generator|in_batch, ...}``."""
    return _build(SOURCES, _SOURCE_ALIASES, "source", spec, Source)


def build_filter(spec: Any) -> Filter:
    """A filter from an object or a mapping ``{kind: label|id|similarity|guide, ...}``."""
    return _build(FILTERS, {}, "filter", spec, Filter)


def build_weighting(spec: Any) -> Weighting:
    """A weighting from an object or a mapping
    ``{kind: uniform|topk|semihard|tilt|distance_weighted|cluster_guided|calibrated, ...}``."""
    return _build(WEIGHTINGS, {}, "weighting", spec, Weighting)


def _listify(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


@dataclass(frozen=True)
class AliasRow:
    """One row of the alias table: a preset with the component kinds it builds, or (``preset`` None) a
    registered kind no preset builds; the class each kind names, the other spellings a config may use
    for the kind, and the paper."""

    preset: str | None
    base: str | None
    kinds: tuple[str, ...]
    classes: tuple[str, ...]
    kind_aliases: tuple[tuple[str, str], ...]  # (another spelling, the kind it names)
    paper: str


def alias_table() -> list[AliasRow]:
    """Preset → component kind → class → paper, for every preset (a preset that adds no component
    shows the in-batch source it computes on) and then every registered kind no preset builds,
    custom kinds included. The names differ on purpose — ``moco_queue`` builds kind ``queue``, the
    class `MemoryQueue` — since users and papers use each; this table is where they meet."""
    classes = {**SOURCES, **FILTERS, **WEIGHTINGS}
    spellings: dict[str, tuple[str, ...]] = {}
    for alias, kind in sorted(_SOURCE_ALIASES.items()):
        spellings[kind] = (*spellings.get(kind, ()), alias)

    def row(preset: str | None, base: str | None, kinds: tuple[str, ...], paper: str) -> AliasRow:
        return AliasRow(preset, base, kinds, tuple(classes[k].__name__ for k in kinds),
                        tuple((a, k) for k in kinds for a in spellings.get(k, ())), paper)

    rows = [row(p.name, p.base, p.kinds or ("in_batch",), p.paper) for p in (PRESETS[n] for n in list_strategies())]
    used = {k for r in rows for k in r.kinds}
    rows += [row(None, None, (k,), "") for k in sorted(classes) if k not in used]
    return rows


def list_strategies() -> list[str]:
    """Names of every preset, sorted."""
    return sorted(PRESETS)


def describe_strategies() -> dict[str, str]:
    """``{name: one-line description}`` of every preset."""
    return {n: PRESETS[n].description for n in list_strategies()}


def create_strategy(name: str, **overrides: Any) -> Strategy:
    """Build the preset ``name`` with ``overrides`` (see the module docstring).

    Examples::

        create_strategy("hscl", beta=2.0)
        create_strategy("topk", k=8, schedule={"k": {"kind": "linear", "start": 64, "end": 8, "steps": 1000}})
        create_strategy("moco_queue", size=8192, filters=[{"kind": "label"}], beta=1.0)

    Raises:
        ValueError: unknown preset name, unknown option, or an invalid value (naming the option).
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown strategy preset {name!r}; available: {', '.join(list_strategies())}")
    preset = PRESETS[name]
    knobs = preset.knobs()
    core = {k: overrides.pop(k) for k in list(overrides) if k in _CORE}
    extra_sources = [build_source(s) for s in _listify(overrides.pop("source", None))]
    extra_filters = [build_filter(s) for s in _listify(overrides.pop("filters", None))]
    extra_weights = [build_weighting(s) for s in _listify(overrides.pop("weighting", None))]
    unknown = sorted(set(overrides) - set(knobs))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for strategy {name!r}; preset options: {sorted(knobs)}; "
            f"strategy options: {sorted(_CORE)} and source / filters / weighting"
        )
    kw = preset.build(**overrides)
    sources = _listify(kw.pop("source", None))
    if extra_sources and isinstance(extra_sources[0], InBatch):
        sources = [extra_sources.pop(0)] + [s for s in sources if not isinstance(s, InBatch)]
    kw["source"] = sources + extra_sources
    kw["filters"] = _listify(kw.pop("filters", None)) + extra_filters
    kw["weighting"] = _listify(kw.pop("weighting", None)) + extra_weights
    if "t" in core or "temperature" in core:  # the user's temperature replaces the preset's
        kw.pop("temperature", None)
    if core.get("positives") == "view" and "positive_reduce" not in core:
        kw.pop("positive_reduce", None)  # the preset's way of summing label positives has nothing to sum
    kw.update(core)
    return Strategy(name=name, **kw)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["beta=2", "filters=[{kind: label}]"]`` → ``{"beta": 2, "filters": [{"kind": "label"}]}``.

    Values are parsed as YAML (numbers, booleans, lists, mappings); used by the command line so a
    preset's options are written the same way as in a config file.
    """
    yaml = require("yaml", "cli", feature="option values")

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"strategy option must look like KEY=VALUE, got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(
                f"strategy option {key!r}: cannot parse value {value!r} ({e.__class__.__name__})"
            ) from None
    return out


def component_config(component: nn.Module) -> dict[str, Any]:
    """``{"kind": ..., option: value}``: the constructor options of a source, filter or weighting
    that hold plain values (numbers, strings, booleans, None) — the mapping ``from_config`` builds
    such a component from. Tables and callables (a guide model, a groups tensor) are left out."""
    cls = type(component)
    params = inspect.signature(cls.__init__).parameters
    # a class without a kind of its own is named by its import path, which from_config reads back
    kind = cls.__dict__.get("kind") or f"{cls.__module__}:{cls.__qualname__}"
    return {"kind": kind, **{k: v for k, v in component_options(component).items() if k in params}}


def strategy_config(strategy: Strategy) -> dict[str, Any]:
    """``strategy`` as a `from_config` mapping: its name, core options and every extra source,
    filter and weighting with its plain options (what a model card or a log records)."""
    cfg: dict[str, Any] = {
        "name": strategy.name, "temperature": strategy.t, "beta": strategy.beta, "tau_plus": strategy.tau_plus,
        "n_neg": strategy.n_neg, "family": strategy.family, "positives": strategy.positives,
        "detach_weights": strategy.detach_weights,
    }
    for key, parts in (("source", strategy.sources), ("filters", strategy.filters),
                       ("weighting", strategy.weightings)):
        if len(parts):
            cfg[key] = [component_config(c) for c in parts]
    return cfg


def from_config(config: Mapping[str, Any]) -> Strategy:
    """Build a strategy from a YAML mapping, e.g.::

        {name: hscl, beta: 1.0, source: {kind: queue, size: 4096}, filters: [{kind: label}],
         schedule: {beta: {kind: linear, start: 0, end: 2, steps: 1000}}}

    ``name`` defaults to ``ucl``; every other key is an override of `create_strategy`.
    Unknown keys raise ``ValueError`` naming them.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"a strategy config must be a mapping, got {type(config).__name__}")
    cfg = dict(config)
    name = cfg.pop("name", "ucl")
    return create_strategy(name, **cfg)
