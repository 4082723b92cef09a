r"""Where candidate negatives come from (docs/design.md §3).

A strategy step starts from the batch (`InBatch` builds the anchors and the first block of
candidates), then each further source *extends* the candidate set with a block of rows:

- `InBatch` — the other samples and the other views of the batch (SimCLR, Chen et al. 2020);
- `MemoryQueue` — FIFO of past keys (MoCo, He et al. 2020);
- `ExternalPool` — embeddings of a separate data set / corpus searched with FAISS;
- `Mixing` — synthetic hard negatives (MoCHi, Kalantidis et al. 2020);
- `AdversarialBank` (AdCo, Hu et al. 2021) and
  `NegativeGenerator` (generator vs discriminator);
- explicit negatives passed to ``Strategy.forward(..., negatives=...)`` (e.g. embeddings of the
  meaning-changing text rewrites of `hardneg.negatives.text_negatives`).

Every candidate row carries a label and a sample id (−1 when unknown), so filters and diagnostics
still work, and an *owner*: −1 for a candidate shared by every anchor, or the index of the one
anchor that may use it (a pool neighbour or a synthetic negative built for that anchor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hardneg._optional import require
from hardneg.arrays import load_array
from hardneg.losses.candidates import repeat_two_views, two_view_index
from hardneg.losses.checks import check_int
from hardneg.vector_search import build_index, search

SOURCES: dict[str, type] = {}  # kind -> Source subclass, filled as subclasses are defined


@dataclass
class Anchors:
    """The anchors of one step: ``q`` (n×d, unit rows), the column of each one's positive in the
    candidates (``pos_index``, −1 when there is none), its own column (``self_index``, −1 when
    absent), labels and ids (or None), ``keys``: the (B×d) batch rows a queue stores, and ``view``:
    which input view (0 for ``z1``, 1 for ``z2``) each anchor comes from."""

    q: Tensor
    pos_index: Tensor | None
    self_index: Tensor
    labels: Tensor | None
    ids: Tensor | None
    keys: Tensor
    key_labels: Tensor | None
    key_ids: Tensor | None
    view: Tensor | None = None

    @property
    def n(self) -> int:
        return self.q.shape[0]

    def select(self, rows: Tensor) -> Anchors:
        """The anchors ``rows`` (a long index); ``keys`` stay those of the whole batch."""
        rows = rows.to(self.q.device)

        def pick(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[rows]

        return Anchors(
            self.q[rows], pick(self.pos_index), self.self_index[rows], pick(self.labels), pick(self.ids),
            self.keys, self.key_labels, self.key_ids, pick(self.view),
        )


#: the owner of a candidate no anchor of the call may use
NOBODY = -2


@dataclass
class Candidates:
    """Candidate rows ``k`` (m×d) with labels, ids and owners (−1 = unknown / shared), the input view
    each row comes from (0 = ``z1``, 1 = ``z2`` and keys; later blocks count as keys unless appended
    with ``view=0``) and named blocks. ``cross_view``: an anchor only sees candidates of the other
    view (two-tower models, `CrossModal`). ``partner``: for
    each row, the row holding the same sample's other view (−1 where none is a candidate; None
    without two symmetric views) — the batch layout as the whole batch has it, whichever anchors
    a call computes."""

    k: Tensor
    labels: Tensor | None = None
    ids: Tensor | None = None
    owner: Tensor | None = None
    blocks: list[tuple[str, int, int]] = field(default_factory=list)
    view: Tensor | None = None
    cross_view: bool = False
    partner: Tensor | None = None

    @property
    def m(self) -> int:
        return self.k.shape[0]

    def for_anchors(self, rows: Tensor, n: int) -> Candidates:
        """The same rows for the anchors ``rows`` of ``n``: a candidate owned by anchor ``rows[i]``
        is owned by i, one owned by an anchor not among ``rows`` by nobody."""
        if self.owner is None:
            return self
        where = torch.full((n,), NOBODY, dtype=torch.long, device=self.owner.device)
        where[rows.to(self.owner.device)] = torch.arange(rows.numel(), device=self.owner.device)
        owner = torch.where(self.owner >= 0, where[self.owner.clamp(min=0)], self.owner)
        return Candidates(self.k, self.labels, self.ids, owner, list(self.blocks), self.view, self.cross_view,
                          self.partner)

    def append(
        self,
        name: str,
        k: Tensor,
        labels: Tensor | None = None,
        ids: Tensor | None = None,
        owner: Tensor | None = None,
        view: int = 1,
    ) -> None:
        """Append a block of rows (labels / ids / owner default to −1) coming from input ``view``."""
        r = k.shape[0]
        if r == 0:
            return
        dev = self.k.device
        m0 = self.m

        def cat(old: Tensor | None, new: Tensor | None) -> Tensor | None:
            if old is None and new is None:
                return None
            if old is None:
                old = torch.full((m0,), -1, dtype=torch.long, device=dev)
            if new is None:
                new = torch.full((r,), -1, dtype=torch.long, device=dev)
            return torch.cat([old, new.to(device=dev, dtype=torch.long)])

        self.labels = cat(self.labels, labels)
        self.ids = cat(self.ids, ids)
        self.owner = cat(self.owner, owner)
        if self.view is not None:
            self.view = torch.cat([self.view, torch.full((r,), int(view), dtype=torch.long, device=dev)])
        if self.partner is not None:
            self.partner = torch.cat([self.partner, torch.full((r,), -1, dtype=torch.long, device=dev)])
        self.k = torch.cat([self.k, k.to(self.k.dtype)])
        self.blocks.append((name, m0, m0 + r))


def register_kind(table: dict[str, type], cls: type, base_kinds: tuple[str, ...] = ("base", "source")) -> None:
    """Register a component class under its own ``kind`` when it is defined (the base classes call
    this from ``__init_subclass__``), so a subclass written anywhere works by name in
    ``from_config``, YAML configs, mining and the sentence-transformers loss. A kind already taken
    by another class is an error."""
    kind = cls.__dict__.get("kind")
    if kind is None or kind in base_kinds:
        return
    old = table.get(kind)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"kind {kind!r} is already registered by {old.__module__}.{old.__qualname__}")
    table[kind] = cls


def component_options(obj: nn.Module) -> dict[str, Any]:
    """The plain-valued public options of a component (its knobs), by name."""
    return {
        k: v
        for k, v in vars(obj).items()
        if not k.startswith("_") and k != "training" and (v is None or isinstance(v, (bool, int, float, str)))
    }


def simple_repr(obj: nn.Module) -> str:
    """``k=v`` for the plain-valued public options of a component (its knobs)."""
    return ", ".join(f"{k}={v!r}" for k, v in component_options(obj).items())


class Source(nn.Module):
    """A candidate source: ``extend(anchors, cands, step)`` adds rows; ``after_step`` updates state.

    ``schedulable`` names the attributes a curriculum schedule may drive. A source that sets
    ``reads_candidate_rule`` is called ``extend(anchors, cands, step, valid=fn)``, where
    ``fn(S, rows)`` gives the (c×m) mask of the candidates the rule and the strategy's filters keep
    for anchors ``rows`` — handed over per call, so the source holds no reference to the strategy.
    """

    kind = "source"
    schedulable: tuple[str, ...] = ()
    reads_candidate_rule = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_kind(SOURCES, cls)

    def extend(self, anchors: Anchors, cands: Candidates, step: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def after_step(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        """Called after the loss of the step is computed (enqueue, adversarial updates, …)."""

    def diagnostics(self) -> dict[str, float]:
        return {}

    def extra_repr(self) -> str:
        return simple_repr(self)


class InBatch(Source):
    r"""In-batch candidates (SimCLR / NT-Xent, Chen et al. 2020): the 2B views ``[z1; z2]`` are both
    anchors and candidates; the positive of sample i is its other view; an anchor is never its own
    candidate.

    Args:
        symmetric: True (default): both views are anchors. False (MoCo style): only ``z1`` rows are
            anchors (queries) and ``z2`` rows are the keys / candidates.
        batch_negatives: False keeps the batch rows only as positives (MoCo v1/v2: negatives come from
            the queue only).
    """

    kind = "in_batch"

    def __init__(self, symmetric: bool = True, batch_negatives: bool = True) -> None:
        super().__init__()
        self.symmetric = bool(symmetric)
        self.batch_negatives = bool(batch_negatives)

    def build(
        self, z1: Tensor, z2: Tensor | None, labels: Tensor | None, ids: Tensor | None, z12: Tensor | None = None
    ) -> tuple[Anchors, Candidates]:
        """Anchors and the batch block of candidates from unit-norm views ``z1``, ``z2`` (B×d);
        ``z12`` may pass ``[z1; z2]`` already concatenated (saves a copy)."""
        B = z1.shape[0]
        dev = z1.device
        ar = torch.arange(B, device=dev)
        if z2 is None:
            q, k = z1, z1
            pos = None
            self_index = ar
            y, i = labels, ids
        elif self.symmetric:
            q = k = torch.cat([z1, z2]) if z12 is None else z12
            pos, self_index = two_view_index(B, dev)
            y, i = repeat_two_views(labels), repeat_two_views(ids)
        else:
            q, k = z1, z2
            pos = ar
            self_index = torch.full((B,), -1, dtype=torch.long, device=dev)
            y, i = labels, ids
        keys = z1 if z2 is None else z2
        zeros, ones = (
            torch.zeros(B, dtype=torch.long, device=dev),
            torch.ones(B, dtype=torch.long, device=dev),
        )
        if z2 is None:
            qv = kv = zeros
        elif self.symmetric:
            qv = kv = torch.cat([zeros, ones])
        else:
            qv, kv = zeros, ones
        anchors = Anchors(q, pos, self_index, y, i, keys.detach(), labels, ids, qv)
        yk = None if labels is None else (labels if (z2 is None or not self.symmetric) else y)
        ik = None if ids is None else (ids if (z2 is None or not self.symmetric) else i)
        owner = None if self.batch_negatives else torch.arange(k.shape[0], device=dev)
        if owner is not None and not self.symmetric and z2 is not None:
            owner = ar  # key i is visible only to query i (as its positive)
        # in [z1; z2] the row of a sample's other view is the anchors' positive column
        partner = pos if z2 is not None and self.symmetric else None
        cands = Candidates(k, yk, ik, owner, [("batch", 0, k.shape[0])], kv, partner=partner)
        return anchors, cands

    def extend(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        raise RuntimeError("InBatch builds the batch block; it is always the first source")


# ---------------------------------------------------------------------------------------------
# external pool
# ---------------------------------------------------------------------------------------------


def _as_matrix(x: Any, name: str) -> tuple[np.ndarray, Any]:
    """(float32 C-contiguous matrix, faiss index or None) from a tensor, array, .npy/.pt path or index."""
    faiss = require("faiss", "mining")
    if isinstance(x, faiss.Index):
        if x.ntotal == 0:
            raise ValueError(f"{name}: the FAISS index is empty (ntotal = 0)")
        try:
            mat = x.reconstruct_n(0, x.ntotal)
        except RuntimeError as e:
            raise ValueError(f"{name}: cannot reconstruct vectors from this FAISS index ({e})") from None
        return np.ascontiguousarray(mat, dtype=np.float32), x
    x = load_array(x, name)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (pool_size >= 1, dim), got {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return np.ascontiguousarray(x, dtype=np.float32), None


class ExternalPool(Source):
    r"""Candidates from a separate data set or corpus (the "negatives from other data sets" of the
    seeds): for every anchor, its ``k_per_anchor`` nearest pool rows by inner product of unit
    vectors, found with FAISS (``IndexFlatIP``, exact), become that anchor's candidates.

    Args:
        embeddings: (P×d) tensor / array, a ``.npy`` path, or a ``faiss.Index`` whose vectors can
            be reconstructed. Rows are L2-normalised.
        k_per_anchor: neighbours per anchor (≤ pool size).
        labels, ids: optional (P,) integer labels / ids of the pool rows (for filters, diagnostics).
        shared: False (default): each anchor sees only its own neighbours (owner = anchor).
            True: the union of all neighbours is shared by every anchor.
        encode_fn, refresh_every: dynamic re-mining — every ``refresh_every`` steps the pool is
            re-embedded with ``encode_fn()`` (the current model) and the index rebuilt.
    """

    kind = "pool"
    schedulable = ("k_per_anchor",)

    def __init__(
        self,
        embeddings: Any,
        k_per_anchor: int = 16,
        labels: Tensor | None = None,
        ids: Tensor | None = None,
        shared: bool = False,
        encode_fn: Callable[[], Any] | None = None,
        refresh_every: int | None = None,
    ) -> None:
        super().__init__()
        if refresh_every is not None:
            refresh_every = check_int("pool option 'refresh_every'", refresh_every)
        if (refresh_every is None) != (encode_fn is None):
            raise ValueError("pool options 'encode_fn' and 'refresh_every' must be given together (dynamic re-mining)")
        self.labels_ = None if labels is None else torch.as_tensor(labels).long()
        self.ids_ = None if ids is None else torch.as_tensor(ids).long()
        self.shared = bool(shared)
        self.encode_fn = encode_fn
        self.refresh_every = refresh_every
        self.refreshes = 0
        self.refresh(embeddings)
        self.k_per_anchor = k_per_anchor
        self._check_k()

    def _check_k(self) -> None:
        k = self.k_per_anchor = check_int("pool option 'k_per_anchor'", self.k_per_anchor)
        if k > self.size:
            raise ValueError(f"pool option 'k_per_anchor' = {k} is larger than the pool ({self.size} rows)")

    @property
    def size(self) -> int:
        return self._mat.shape[0]

    def refresh(self, embeddings: Any) -> None:
        """Replace the pool's embeddings (e.g. re-encoded by the current model) and rebuild the index."""
        mat, _ = _as_matrix(embeddings, "pool embeddings")
        for name, v in (("labels", self.labels_), ("ids", self.ids_)):
            if v is not None and v.shape != (mat.shape[0],):
                raise ValueError(f"pool {name} must have shape ({mat.shape[0]},), got {tuple(v.shape)}")
        mat = mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), np.finfo(np.float32).tiny)  # a copy
        self._mat = mat
        self._index = build_index(mat, "flat")  # the one FAISS index builder (exact inner product)

    def search(self, q: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(similarities, indices), each (n×k), of the ``k`` nearest pool rows of unit queries ``q``."""
        qn = np.ascontiguousarray(q.detach().float().cpu().numpy(), dtype=np.float32)
        if qn.shape[1] != self._mat.shape[1]:
            raise ValueError(f"pool has dim {self._mat.shape[1]} but anchors have dim {qn.shape[1]}")
        D, I = search(self._index, qn, k)
        return torch.from_numpy(D), torch.from_numpy(I).long()

    def extend(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        # __init__ takes refresh_every and encode_fn together or neither
        refresh = self.refresh_every is not None and step > 0 and step % self.refresh_every == 0
        if refresh and self.encode_fn is not None:
            self.refresh(self.encode_fn())
            self.refreshes += 1
        self.k_per_anchor = int(round(self.k_per_anchor))
        self._check_k()
        _, I = self.search(anchors.q, self.k_per_anchor)
        dev = cands.k.device
        if self.shared:
            idx = torch.unique(I.flatten())
            owner = None
        else:
            idx = I.flatten()
            owner = torch.arange(anchors.n).repeat_interleave(self.k_per_anchor).to(dev)
        rows = torch.from_numpy(self._mat[idx.numpy()]).to(device=dev, dtype=cands.k.dtype)
        lab = None if self.labels_ is None else self.labels_[idx].to(dev)
        ids = None if self.ids_ is None else self.ids_[idx].to(dev)
        if owner is None:
            owner = torch.full((len(idx),), -1, dtype=torch.long, device=dev)
        cands.append("pool", rows, lab, ids, owner)

    def diagnostics(self) -> dict[str, float]:
        return {"pool_size": float(self.size), "pool_refreshes": float(self.refreshes)}
