r"""Fine-grained negatives for pixels (or any samples with a position): components that read where a
candidate is from its sample id, or what its input was from a table indexed by id.

Pixel identity travels as the ordinary sample id: `PixelGrid` encodes ``(image, y, x)`` as
``(image · H + y) · W + x``. The grid itself travels in the step context
(`StepContext`, ``grid``): whoever encodes the ids hands it over
(``Strategy.forward(..., grid=...)``; `hardneg.dense.DenseContrast` does), so the components
decode with the grid that encoded, never with one of their own. Ids therefore keep their usual
meaning everywhere (a candidate with the anchor's id — the same pixel in the other view, or in a
memory — is never a negative) and work with every source that carries ids (the batch,
`MemoryQueue`, `ClassMemory`). Unknown ids (−1) decode to no
position and are never touched by these components.

- `NeighbourhoodFilter` (``kind: neighbourhood``) — drop candidates of the anchor's image
  within Euclidean distance ``radius`` of the anchor (neighbouring pixels of one object are not
  negatives).
- `InputSimilarityFilter` (``kind: input_similarity``) — drop candidates whose *input*
  (e.g. the spectrum of a hyperspectral pixel) is too similar to the anchor's: cosine above
  ``max_similarity`` or spectral angle below ``min_angle``.
- `Proximity` (``kind: proximity``) — a weighting: log π += ``bonus`` on candidates of the
  anchor's image within ``radius`` (prefer adjacent objects as negatives).
- `ClassMemory` (``kind: class_memory``) — a source: a FIFO of pixel embeddings per class
  (Wang et al. 2021, "Exploring Cross-Image Pixel Contrast for Semantic Segmentation").
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from hardneg.losses.checks import UNKNOWN, check_int, check_number
from hardneg.negatives.context import StepContext
from hardneg.negatives.filters import Filter, GuideFilter
from hardneg.negatives.queue import MemoryQueue
from hardneg.negatives.sources import Anchors, Candidates, Source
from hardneg.negatives.weighting import Weighting

__all__ = ["PixelGrid", "NeighbourhoodFilter", "InputSimilarityFilter", "Proximity", "ClassMemory"]


class PixelGrid:
    """Sample ids of pixels: ``id = (image · height + y) · width + x`` (image ≥ 0, 0 ≤ y < height,
    0 ≤ x < width); −1 stays unknown."""

    def __init__(self, height: int, width: int) -> None:
        self.height = check_int("pixel grid option 'height'", height)
        self.width = check_int("pixel grid option 'width'", width)

    def encode(self, image: Tensor, y: Tensor, x: Tensor) -> Tensor:
        """Ids of pixels ``(image, y, x)`` (broadcast integer tensors)."""
        image, y, x = (torch.as_tensor(v).long() for v in (image, y, x))
        if bool((y < 0).any() | (y >= self.height).any() | (x < 0).any() | (x >= self.width).any()):
            raise ValueError(f"pixel coordinates must lie in the {self.height}×{self.width} grid")
        if bool((image < 0).any()):
            raise ValueError("pixel grid: image indices must be >= 0")
        return (image * self.height + y) * self.width + x

    def decode(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(image, y, x)`` of ``ids``; all three are −1 where the id is unknown."""
        ids = ids.long()
        known = ids >= 0
        safe = ids.clamp(min=0)
        x = safe % self.width
        y = (safe // self.width) % self.height
        image = safe // (self.width * self.height)
        neg = torch.full_like(ids, UNKNOWN)
        return torch.where(known, image, neg), torch.where(known, y, neg), torch.where(known, x, neg)


def _offsets(radius: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """(dy, dx) of every grid offset within Euclidean distance ``radius``."""
    R = int(math.floor(radius))
    ar = torch.arange(-R, R + 1, device=device)
    dy, dx = torch.meshgrid(ar, ar, indexing="ij")
    keep = (dy * dy + dx * dx).double() <= radius * radius
    return dy[keep], dx[keep]


class _OnGrid:
    """Shared state of the components that read pixel positions from sample ids.

    The (c×m) "same image, within radius" mask is built without a (c×m) arithmetic pass: each
    anchor's neighbour ids (at most (2r+1)² of them) are looked up among the step's candidate ids
    (sorted once per step), and the columns found are scattered into a boolean mask."""

    _grid: PixelGrid | None
    _k_sorted: Tensor | None
    _k_order: Tensor | None

    def _prepare(self, ctx: StepContext, who: str) -> None:
        if ctx.q_ids is None or ctx.k_ids is None:
            raise ValueError(f"{who} needs pixel ids: pass ids built by PixelGrid.encode (hardneg.dense does)")
        # the grid that encoded the ids, never one of our own: a second grid would decode other pixels
        if ctx.grid is None:
            raise ValueError(
                f"{who} needs the pixel grid of the ids in the step context: use hardneg.dense.DenseContrast, "
                "or call the strategy with grid=PixelGrid(height, width), the grid that encoded the ids"
            )
        self._grid = ctx.grid
        self._k_sorted, self._k_order = torch.sort(ctx.k_ids)

    def _near(self, rows: slice | Tensor, ctx: StepContext, radius: float, device: torch.device) -> Tensor:
        """(c×m) bool: candidate in the anchor's image at distance ≤ ``radius`` (both ids known)."""
        grid, k_sorted, k_order = self._grid, self._k_sorted, self._k_order
        if ctx.q_ids is None or grid is None or k_sorted is None or k_order is None:
            raise RuntimeError("a pixel component was asked for a mask before its begin_step")
        q_ids = ctx.q_ids[rows]
        c, m = q_ids.shape[0], k_sorted.shape[0]
        out = torch.zeros(c, m, dtype=torch.bool, device=q_ids.device)
        qi, qy, qx = grid.decode(q_ids)
        # beyond H + W every pixel of the image is inside: no need for more offsets
        dy, dx = _offsets(min(radius, float(grid.height + grid.width)), q_ids.device)
        ny, nx = qy[:, None] + dy[None, :], qx[:, None] + dx[None, :]
        ok = (qi[:, None] >= 0) & (ny >= 0) & (ny < grid.height) & (nx >= 0) & (nx < grid.width)
        nid = torch.where(ok, (qi[:, None] * grid.height + ny) * grid.width + nx, torch.full_like(ny, -2))
        lo = torch.searchsorted(k_sorted, nid)
        hi = torch.searchsorted(k_sorted, nid, right=True)
        r = torch.arange(c, device=q_ids.device)[:, None].expand_as(nid)
        for j in range(int((hi - lo).max()) if nid.numel() else 0):  # candidates sharing one id (views, memory)
            hit = ok & (lo + j < hi)
            out[r[hit], k_order[(lo + j)[hit]]] = True
        return out.to(device)


class NeighbourhoodFilter(_OnGrid, Filter):
    """Drop candidates of the anchor's image within distance ``radius`` (pixels) of the anchor.

    Args:
        radius: Euclidean radius in pixels (0 drops only the anchor's own pixel, which the candidate
            rule already removes).

    Positions are decoded with the step context's `PixelGrid` (the grid that encoded the ids).
    """

    kind = "neighbourhood"
    schedulable = ("radius",)

    def __init__(self, radius: float = 1.0) -> None:
        super().__init__()
        self.radius = check_number("filter 'neighbourhood' option 'radius'", radius, 0.0, 1e6)
        self._grid = self._k_sorted = self._k_order = None

    def begin_step(self, ctx: StepContext) -> None:
        self._prepare(ctx, "filter 'neighbourhood'")

    def drop(self, S: Tensor, rows: slice, ctx: StepContext) -> Tensor:
        return self._near(rows, ctx, self.radius, S.device)


class Proximity(_OnGrid, Weighting):
    """Prefer spatially adjacent negatives: log-weight ``bonus`` on candidates of the anchor's image
    within ``radius`` pixels, 0 elsewhere (combine with a tilt to make them *hard* adjacent ones).
    Positions are decoded with the step context's `PixelGrid`."""

    kind = "proximity"
    schedulable = ("bonus", "radius")

    def __init__(self, radius: float = 8.0, bonus: float = 2.0) -> None:
        super().__init__()
        self.radius = check_number("weighting 'proximity' option 'radius'", radius, 0.0, 1e6)
        self.bonus = check_number("weighting 'proximity' option 'bonus'", bonus, 0.0, 1e3)
        self._grid = self._k_sorted = self._k_order = None

    def begin_step(self, ctx: StepContext) -> None:
        self._prepare(ctx, "weighting 'proximity'")

    def log_weights(self, S: Tensor, rows: slice, ctx: StepContext, valid: Tensor) -> Tensor:
        return self._near(rows, ctx, self.radius, S.device).to(S.dtype) * self.bonus


class InputSimilarityFilter(GuideFilter):
    """Drop candidates whose input is too similar to the anchor's input: cosine similarity of the
    inputs above ``max_similarity``, or spectral angle ``arccos(cos)`` below ``min_angle`` (radians)
    — the spectral angle mapper of hyperspectral imaging. Give one of the two.

    Args:
        features: the inputs indexed by sample id: a (num_ids × c) tensor (e.g. the scene's spectra,
            one row per pixel id) or a callable ``(ids, view) -> (len(ids) × c)``. Anchors and
            candidates without an id (−1, or outside the table) are never dropped.
    """

    kind = "input_similarity"
    schedulable = ("max_similarity",)
    needs_positive = False

    def __init__(self, features: Any, max_similarity: float | None = None, min_angle: float | None = None) -> None:
        super().__init__(features, margin=0.0)
        if (max_similarity is None) == (min_angle is None):
            raise ValueError("filter 'input_similarity' needs exactly one of max_similarity, min_angle")
        if min_angle is not None:
            what = "filter 'input_similarity' option 'min_angle'"
            max_similarity = math.cos(check_number(what, min_angle, 0.0, math.pi))
        what = "filter 'input_similarity' option 'max_similarity'"
        self.max_similarity = check_number(what, max_similarity, -1.0, 1.0)
        self._qok: Tensor | None = None

    def begin_step(self, ctx: StepContext) -> None:
        if ctx.q_ids is None or ctx.k_ids is None:
            raise ValueError("filter 'input_similarity' needs sample ids: call forward(z1, z2, ids=...)")
        self._gq, self._qok = self._embed(ctx.q_ids, ctx.q_view)
        self._gk, self._kok = self._embed(ctx.k_ids, ctx.k_view)

    def drop(self, S: Tensor, rows: slice, ctx: StepContext) -> Tensor:
        gq, gk, qok, kok = self._gq, self._gk, self._qok, self._kok
        if gq is None or gk is None or qok is None or kok is None:
            raise RuntimeError("filter 'input_similarity' was asked for a mask before its begin_step")
        G = gq[rows] @ gk.T
        d = (self.max_similarity < G) & qok[rows][:, None] & kok[None, :]
        return d.to(S.device)


class ClassMemory(Source):
    """A FIFO memory of ``size`` embeddings per class (Wang et al. 2021's pixel memory): each step
    appends the stored keys with their labels and ids as candidates, then stores up to
    ``per_step`` of the step's keys of each known class (−1 labels are not stored).

    With label positives (``family="supcon"``) the stored pixels of the anchor's class are extra
    positives; with `LabelFilter` they are never negatives.
    """

    kind = "class_memory"
    needs_key_encoder = True

    def __init__(self, num_classes: int, size: int = 256, per_step: int | None = 32) -> None:
        super().__init__()
        self.num_classes = check_int("source 'class_memory' option 'num_classes'", num_classes)
        self.size = check_int("source 'class_memory' option 'size'", size)
        self.per_step = None if per_step is None else check_int("source 'class_memory' option 'per_step'", per_step)
        self.queues = nn.ModuleList(MemoryQueue(self.size) for _ in range(self.num_classes))

    def _memories(self) -> list[MemoryQueue]:
        """The per-class queues, typed (iterating an nn.ModuleList gives plain Modules)."""
        return [q for q in self.queues if isinstance(q, MemoryQueue)]

    def extend(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        for q in self._memories():
            keys, labels, ids = q.contents()
            if keys.shape[0]:
                cands.append("class_memory", keys.to(cands.k.device), labels, ids)

    def after_step(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        if anchors.key_labels is None:
            raise ValueError("source 'class_memory' needs labels: call forward(z1, z2, labels=...)")
        y = anchors.key_labels
        if bool((y >= self.num_classes).any()):
            raise ValueError(f"source 'class_memory': labels must be < num_classes={self.num_classes}")
        for c, q in enumerate(self._memories()):
            sel = torch.nonzero(y == c).flatten()
            if sel.numel() == 0:
                continue
            if self.per_step is not None and sel.numel() > self.per_step:
                sel = sel[torch.randperm(sel.numel(), device=sel.device)[: self.per_step]]
            ids = None if anchors.key_ids is None else anchors.key_ids[sel]
            q.enqueue(anchors.keys[sel], y[sel], ids)

    def diagnostics(self) -> dict[str, float]:
        return {"class_memory_fill": sum(len(q) for q in self._memories()) / (self.size * self.num_classes)}
