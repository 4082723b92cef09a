"""Cases of the conformance suite (tests/test_negatives_conformance.py), generated from the registry.

Every registered source, filter and weighting kind (``SOURCES``, ``FILTERS``, ``WEIGHTINGS``: a class
registers itself when it is defined) and every preset (``PRESETS``) becomes one case per batch layout
it supports. A kind written anywhere is covered without touching this file: it is built with its
default options unless :data:`KIND_ARGS` names small ones, and it runs in every layout unless it
declares what it needs (``needs_positive``: not one view) or is one of the layout-specific kinds of
:data:`ONLY_IN`. Importable by the spawned processes of the slow 2-process test.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import hardneg.dense  # noqa: F401  (registers every kind the package defines)
from hardneg.negatives import InBatch, MemoryQueue, Strategy, create_strategy
from hardneg.negatives.cross_modal import CrossModal
from hardneg.negatives.filters import FILTERS
from hardneg.negatives.pixels import ClassMemory, PixelGrid
from hardneg.negatives.registry import PRESETS
from hardneg.negatives.sources import SOURCES
from hardneg.negatives.weighting import WEIGHTINGS

B, D, CLASSES = 8, 8, 3
#: the dense layout's pixel grid: B = 8 pixels are 2 images of 2 × 2 pixels, ids (image·2 + y)·2 + x
GRID_H, GRID_W = 2, 2
LAYOUTS = ("one_view", "two_view", "cross_modal", "queue", "dense")
ROLES = {"source": SOURCES, "filter": FILTERS, "weighting": WEIGHTINGS}


def _table(rows: int = 16, dim: int = 4, seed: int = 5) -> torch.Tensor:
    """A per-sample-id table (guide embeddings, input features, pool rows)."""
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


#: small options (B = 8 rows) or required ones, by (role, kind); every other kind gets its defaults
KIND_ARGS: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    ("source", "pool"): lambda: {"embeddings": _table(12, D), "k_per_anchor": 2},
    ("source", "generator"): lambda: {"dim": D, "n_per_anchor": 2, "hidden": 8},
    ("source", "adversarial_bank"): lambda: {"size": 6},
    ("source", "queue"): lambda: {"size": 12},
    ("source", "cross_modal_queue"): lambda: {"size": 12},
    ("source", "mixing"): lambda: {"n_hard": 4, "s": 2, "s_prime": 2},
    ("source", "class_memory"): lambda: {"num_classes": CLASSES, "size": 4},
    ("filter", "similarity"): lambda: {"max_score": 0.9},
    ("filter", "guide"): lambda: {"guide": _table(), "margin": 0.1},
    ("filter", "input_similarity"): lambda: {"features": _table(), "max_similarity": 0.9},
    ("filter", "neighbourhood"): lambda: {"radius": 1.0},
    ("weighting", "proximity"): lambda: {"radius": 1.0},
    ("weighting", "topk"): lambda: {"k": 3},
    ("weighting", "cluster_guided"): lambda: {"n_clusters": 2, "every": 1, "niter": 2, "nredo": 1},
    ("weighting", "cross_modal_cluster"): lambda: {"n_clusters": 2, "every": 1, "memory": 12, "niter": 2,
                                                   "nredo": 1},
    ("weighting", "calibrated"): lambda: {"hidden": 4},
}

#: kinds that belong to one layout: cross-modal components, and the pixel components, which read
#: positions from ids made by a PixelGrid (the dense layout's)
ONLY_IN: dict[tuple[str, str], tuple[str, ...]] = {
    ("source", "cross_modal_queue"): ("cross_modal",),
    ("weighting", "cross_modal_cluster"): ("cross_modal",),
    ("filter", "neighbourhood"): ("dense",),
    ("weighting", "proximity"): ("dense",),
}

#: presets' own options sized for B = 8 rows (and the ones a preset requires)
PRESET_ARGS: dict[str, Callable[[], dict[str, Any]]] = {
    "topk": lambda: {"k": 3},
    "moco_queue": lambda: {"size": 12},
    "mochi": lambda: {"size": 12, "n_hard": 4, "s": 2, "s_prime": 2},
    "adco": lambda: {"size": 6},
    "generator": lambda: {"dim": D, "n_per_anchor": 2},
    "pool": lambda: {"embeddings": _table(12, D), "k_per_anchor": 2},
    "cluster_guided": lambda: {"n_clusters": 2, "every": 1},
    "calibrated": lambda: {"hidden": 4},
    "gist": lambda: {"guide": _table(), "margin": 0.1},
}


@dataclass(frozen=True)
class Case:
    """One component kind (or preset) in one layout."""

    role: str  # "source", "filter", "weighting" or "preset"
    kind: str
    layout: str

    @property
    def id(self) -> str:
        return f"{self.role}:{self.kind}@{self.layout}"


def kind_args(role: str, kind: str) -> dict[str, Any]:
    """The constructor options a case builds ``kind`` with."""
    make = KIND_ARGS.get((role, kind))
    return make() if make is not None else {}


def component(role: str, kind: str) -> Any:
    """A fresh component of ``kind`` (the registry's class, the case's options)."""
    return ROLES[role][kind](**kind_args(role, kind))


def layouts_of(role: str, kind: str) -> tuple[str, ...]:
    """The layouts a kind runs in (see the module docstring)."""
    if role == "preset":
        return ("two_view",)
    cls = ROLES[role][kind]
    if (role, kind) in ONLY_IN:
        return ONLY_IN[(role, kind)]
    if role == "source" and issubclass(cls, CrossModal):
        return ("cross_modal",)
    if role == "source" and issubclass(cls, InBatch):  # a batch source lays out plain views
        return ("one_view", "two_view", "dense")
    if getattr(component(role, kind), "needs_positive", False):
        return tuple(x for x in LAYOUTS if x != "one_view")
    return LAYOUTS


def cases() -> list[Case]:
    """Every (kind, layout) and preset case, generated from the registry as it is now."""
    out = [Case(role, kind, layout) for role, table in ROLES.items() for kind in sorted(table)
           for layout in layouts_of(role, kind)]
    out += [Case("preset", name, "two_view") for name in sorted(PRESETS)]
    return out


def _layout_sources(layout: str) -> list[Any]:
    if layout == "cross_modal":
        return [CrossModal()]
    if layout == "queue":  # MoCo: queries z1, keys z2 and a queue of past keys
        return [InBatch(symmetric=False), MemoryQueue(12)]
    if layout == "dense":  # pixels of the batch and a memory of pixels per class
        return [InBatch(), ClassMemory(CLASSES, size=4)]
    return [InBatch()]


def build(case: Case, **options: Any) -> Strategy:
    """The case's strategy: the layout's sources with the component added in its role."""
    options = {"diagnostics_anchors": None, **options}
    if case.role == "preset":
        return create_strategy(case.kind, **PRESET_ARGS.get(case.kind, dict)(), **options)
    sources, filters, weightings = _layout_sources(case.layout), [], []
    comp = component(case.role, case.kind)
    if case.role == "source":
        if isinstance(comp, InBatch):
            sources[0] = comp
        else:
            sources.append(comp)
    elif case.role == "filter":
        filters.append(comp)
    else:
        weightings.append(comp)
    if case.layout == "one_view":
        options.setdefault("family", "supcon")
    return Strategy(source=sources, filters=filters, weighting=weightings, t=0.5, **options)


def batch(case: Case, step: int, dtype: torch.dtype = torch.float64, n: int = B, labels: bool = True):
    """``(z1, z2, labels, ids)`` of step ``step`` (leaf tensors with gradient). Ids repeat across
    steps, so queued and remembered rows carry the ids of this batch's rows (the same-id rule acts);
    in the dense layout they are the pixel ids of the grid. A batch smaller than B has one sample
    of each class, so the rows it holds are not all one class (which the candidate rule skips)."""
    g = torch.Generator().manual_seed(1000 + step)
    z1 = torch.randn(n, D, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(n, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (n,), generator=g) if n >= B else torch.arange(n) % CLASSES  # 2 classes
    y = y if labels else None
    ids = torch.arange(n)
    z1 = z1.to(dtype).requires_grad_()
    z2 = None if case.layout == "one_view" else z2.to(dtype).requires_grad_()
    return z1, z2, y, ids


def layout_kwargs(case: Case) -> dict[str, Any]:
    """What a call in the case's layout passes besides the batch: the dense layout's pixel grid."""
    return {"grid": PixelGrid(GRID_H, GRID_W)} if case.layout == "dense" else {}


def run(strategy: Strategy, case: Case, step: int, **kw: Any) -> torch.Tensor:
    """One call of ``strategy`` on the case's batch of ``step``."""
    z1, z2, y, ids = batch(case, step, **{k: v for k, v in kw.items() if k in ("dtype", "n", "labels")})
    return strategy(z1, z2, labels=y, ids=ids, step=step, **layout_kwargs(case))


def numeric_options(role: str, kind: str) -> list[tuple[str, Any]]:
    """``(option, the value the case builds with)`` of every int / float option of a kind's
    constructor (a preset's own knobs for role ``preset``)."""
    if role == "preset":
        params = inspect.signature(PRESETS[kind].build).parameters
        given = PRESET_ARGS.get(kind, dict)()
    else:
        params = inspect.signature(ROLES[role][kind].__init__).parameters
        given = kind_args(role, kind)
    out = []
    for name, p in params.items():
        v = given.get(name, p.default)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((name, v))
    return out


def case_of(case_id: str) -> Case:
    """The case named ``case_id`` (``role:kind@layout``)."""
    return next(c for c in cases() if c.id == case_id)


def run_distributed(case_id: str, steps: int = 2) -> dict[str, Any]:
    """``steps`` steps of a case through ``DistributedStrategy`` on this process's slice of each
    batch (the whole batch on one process): the single-process loss value of each step and the
    gradient of the whole batch's views (each process's slice, divided by W as DDP averages, gathered)."""
    import torch.distributed as dist

    from hardneg.distributed import DistributedStrategy, loss_value, rank, world_size

    case = case_of(case_id)
    W, r = world_size(), rank()
    mine = slice(r * B // W, (r + 1) * B // W)
    s = DistributedStrategy(build(case))
    losses, grads = [], []
    for step in range(steps):
        z1, z2, y, ids = batch(case, step)
        a1 = z1.detach()[mine].clone().requires_grad_()
        a2 = None if z2 is None else z2.detach()[mine].clone().requires_grad_()
        loss = s(a1, a2, y[mine], ids[mine], step, **layout_kwargs(case))
        loss.backward()
        losses.append(loss_value(loss))
        g = torch.cat([a.grad for a in (a1, a2) if a is not None], 1) / W
        if W > 1:
            parts = [torch.empty_like(g) for _ in range(W)]
            dist.all_gather(parts, g.contiguous())
            g = torch.cat(parts)
        grads.append(g)
    return {"loss": torch.tensor(losses, dtype=torch.float64), "grad": torch.stack(grads)}
