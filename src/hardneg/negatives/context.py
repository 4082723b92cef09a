"""Per-step context handed to filters and weightings: who the anchors and candidates are.

Filters and weightings see one chunk of anchors at a time: the chunk's cosine similarities ``S``
(c×m), the row slice, and this context (labels, ids, owners, positives, detached embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hardneg.losses.candidates import Relations, label_order
from hardneg.negatives.sources import Anchors, Candidates

if TYPE_CHECKING:  # pixels imports this module
    from hardneg.negatives.pixels import PixelGrid


@dataclass
class StepContext:
    """Everything about one step that a filter or weighting may need (all on the same device)."""

    q: Tensor  # (n, d) unit anchors, detached
    k: Tensor  # (m, d) unit candidates, detached
    pos_index: Tensor | None  # (n,) or None
    self_index: Tensor  # (n,), -1 where absent
    q_labels: Tensor | None
    k_labels: Tensor | None
    q_ids: Tensor | None
    k_ids: Tensor | None
    owner: Tensor | None  # (m,), -1 shared
    t: float
    beta: float
    step: int
    blocks: list[tuple[str, int, int]]
    q_view: Tensor | None = None  # (n,) 0 = from z1, 1 = from z2
    k_view: Tensor | None = None  # (m,)
    cross_view: bool = False  # anchors see only candidates of the other view (two towers)
    #: (m,) the candidate column of the same sample's other view (−1 none), for every candidate:
    #: anchor i is candidate ``self_index[i]``, never candidate i (a call may compute a subset of anchors)
    k_partner: Tensor | None = None
    #: how the sample ids encode pixel positions (image, y, x), from whoever made the ids
    #: (``hardneg.dense.DenseContrast`` puts its feature map's grid here); None: ids are no pixels
    grid: PixelGrid | None = None
    _id_start: int | None = None
    #: every same-label candidate is a positive (SupCon, H-SCL paper code): then only the anchor itself
    #: (and ownership) limits the candidates; its other view stays, as a positive in the denominator
    label_positives: bool = False
    _rel: Relations | None = None
    _label_order: tuple[Tensor, Tensor] | None = None
    _scratch: dict[int, Tensor] = field(default_factory=dict)

    @classmethod
    def build(
        cls, anchors: Anchors, cands: Candidates, t: float, beta: float, step: int, label_positives: bool = False,
        grid: PixelGrid | None = None,
    ) -> StepContext:
        """The context of the anchors and candidates of one step (``grid``: the pixel grid of the ids)."""
        return cls(
            anchors.q.detach(),
            cands.k.detach(),
            anchors.pos_index,
            anchors.self_index,
            anchors.labels,
            cands.labels,
            anchors.ids,
            cands.ids,
            cands.owner,
            t,
            beta,
            step,
            list(cands.blocks),
            anchors.view,
            cands.view,
            label_positives=label_positives,
            cross_view=cands.cross_view,
            k_partner=cands.partner,
            grid=grid,
        )

    @property
    def n(self) -> int:
        return self.q.shape[0]

    @property
    def m(self) -> int:
        return self.k.shape[0]

    def row_ids(self, rows: slice | Tensor, device: torch.device) -> Tensor:
        """Global anchor indices of ``rows`` (a slice or an index tensor)."""
        return Relations.rows_of(rows, device)

    def id_rule_start(self) -> int | None:
        """First candidate column where the same-sample-id rule can matter, or None if nowhere.

        Within the batch block the only same-id candidates of an anchor are itself and its other
        view (already excluded) unless the batch repeats an id; so the rule starts after the batch
        block when the batch ids are unique."""
        if self.q_ids is None or self.k_ids is None:
            return None
        if self._id_start is not None:
            return self._id_start if self._id_start >= 0 else None
        start = 0
        if self.blocks and self.blocks[0][0] == "batch":
            b_end = self.blocks[0][2]
            kv = self.k_view[:b_end] if self.k_view is not None else None
            two_views = kv is not None and bool((kv == 0).any()) and bool((kv == 1).any())
            # a symmetric batch holds [ids; ids] (one copy per view); a MoCo-style one holds ids once
            first = self.k_ids[: b_end // 2] if two_views else self.k_ids[:b_end]
            if int(torch.unique(first).numel()) == first.numel():
                start = b_end
        if start >= self.m or not bool((self.k_ids[start:] >= 0).any()):
            self._id_start = -1
            return None
        self._id_start = start
        return start

    @property
    def relations(self) -> Relations:
        """The step's candidate relations (the one validity rule, `hardneg.losses.candidates`)."""
        if self._rel is None:
            lp = self.label_positives
            self._rel = Relations(
                m=self.m, self_index=self.self_index, pos_index=None if lp else self.pos_index,
                q_labels=self.q_labels, k_labels=self.k_labels, q_ids=None if lp else self.q_ids,
                k_ids=None if lp else self.k_ids, owner=self.owner, id_start=None if lp else self.id_rule_start(),
                q_view=self.q_view, k_view=self.k_view, cross_view=self.cross_view,
            )
        return self._rel

    def base_valid(self, S: Tensor, rows: slice | Tensor) -> Tensor:
        """(c×m) bool: candidates that may be negatives of each anchor before any filter
        (`hardneg.losses.candidates.Relations.valid`)."""
        return self.relations.valid(rows, S.device)

    def s_pos(self, S: Tensor, rows: slice | Tensor) -> Tensor:
        """(c,) cosine similarity of each anchor to its positive (NaN where it has none)."""
        return Relations(m=self.m, pos_index=self.pos_index).s_pos(S, rows)

    def scratch(self, X: Tensor, i: int = 0) -> Tensor:
        """Scratch number ``i`` of X's shape, dtype and device, for a block function of the kernel's
        tile (`hardneg.losses.kernel.BlockWeightFn`): allocated once per step for the largest
        block and reused by every block, as a fresh (rows × m) tile costs page faults on CPU (about
        as much as the pass that fills it). Its contents are read by nothing after the caller returns."""
        b = self._scratch.get(i)
        if b is None or b.shape[0] < X.shape[0] or b.shape[1:] != X.shape[1:] or b.dtype != X.dtype \
                or b.device != X.device:
            b = self._scratch[i] = X.new_empty(X.shape)
        return b[: X.shape[0]]

    def label_order(self) -> tuple[Tensor, Tensor] | None:
        """`hardneg.losses.candidates.label_order` of the step's candidates, once per step; None
        without labels."""
        if self.k_labels is None:
            return None
        if self._label_order is None:
            self._label_order = label_order(self.k_labels)
        return self._label_order

    def same_label(self, rows: slice | Tensor) -> Tensor | None:
        """(c×m) bool: candidate has the anchor's known label; None without labels."""
        return self.relations.same_label(rows)
