r"""Two-tower (cross-modal) candidates: an image is scored only against texts and a text only
against images, as in CLIP (Radford et al. 2021).

`CrossModal` is the batch source of a two-tower model. ``z1`` holds one modality (images),
``z2`` the other (texts), row b of each being a pair. It lays the batch out as ``[z1; z2]`` like
`InBatch` and turns on the candidate rule's ``cross_view``
(`hardneg.losses.candidates`): the anchors are the 2B rows, each one's positive is its partner
and its candidates are the rows of the *other* modality. With uniform π and t = 1/logit_scale the
mean over the 2B anchors is CLIP's symmetric loss, ``(CE(image→text) + CE(text→image)) / 2``.
Every filter, weighting, schedule and extra source of a `Strategy`
applies unchanged; blocks added after the batch count as the ``z2`` modality (texts: a queue of
text keys, one-edit caption swaps) unless a source appends them with ``view=0``
(`CrossModalQueue` with ``modality="image"``).

**Several captions per image.** ``ids`` say which rows are the same sample: a candidate with the
anchor's id is never a negative (the id rule). `pair_ids` gives every pair in a batch the
id of its *group* — pairs that share an image or an identical caption — so another caption of the
same image and an identical caption of another image are never negatives. Each anchor keeps one
positive (its partner in the batch); over epochs every caption of an image serves as its positive.

`CrossModalClusters` chooses negatives with clusters computed in one modality (k-means on
that tower's recent embeddings, refreshed every ``every`` steps, or on a fixed feature table):
a sample's cluster is the cluster of its own embedding in that modality, for both of its rows.
`LogitScale` is CLIP's learnable logit scale (1 / temperature).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hardneg.losses.checks import check_choice, check_int, check_positive
from hardneg.negatives.context import StepContext
from hardneg.negatives.queue import MemoryQueue
from hardneg.negatives.sources import Anchors, Candidates, InBatch
from hardneg.negatives.weighting import ClusterGuided

IMAGE, TEXT = 0, 1
_MODALITIES = {"image": IMAGE, "text": TEXT}


def _modality(name: str, what: str) -> int:
    return _MODALITIES[check_choice(what, name, tuple(_MODALITIES))]


class CrossModal(InBatch):
    """Batch source of a two-tower model: ``z1`` (images) and ``z2`` (texts) are anchors of both
    directions; an anchor's candidates are the other modality's rows only (CLIP's symmetric loss).

    Args:
        batch_negatives: False keeps the batch rows only as positives (negatives from other sources).
    """

    kind = "cross_modal"

    def __init__(self, batch_negatives: bool = True) -> None:
        super().__init__(symmetric=True, batch_negatives=batch_negatives)

    def build(
        self, z1: Tensor, z2: Tensor | None, labels: Tensor | None, ids: Tensor | None, z12: Tensor | None = None
    ) -> tuple[Anchors, Candidates]:
        if z2 is None:
            raise ValueError("source 'cross_modal' needs both modalities: call forward(image_z, text_z)")
        anchors, cands = super().build(z1, z2, labels, ids, z12)
        cands.cross_view = True
        return anchors, cands

    def extra_repr(self) -> str:
        return f"batch_negatives={self.batch_negatives}"


class CrossModalQueue(MemoryQueue):
    """A memory queue of one modality's batch rows (MoCo-style, per modality): ``modality="text"``
    stores the texts (negatives of the image anchors), ``"image"`` the images (negatives of the
    text anchors). Use one of each for queues in both directions."""

    kind = "cross_modal_queue"
    #: a two-tower model encodes both modalities itself; the queue keeps its rows (detached)
    needs_key_encoder = False

    def __init__(self, size: int = 4096, modality: str = "text", dim: int | None = None) -> None:
        super().__init__(size, dim)
        self.modality = modality
        self._view = _modality(modality, "cross_modal_queue option 'modality'")

    def extend(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        keys, labels, ids = self.contents()
        if keys.shape[0]:
            cands.append(f"queue_{self.modality}", keys.to(cands.k.device), labels, ids, view=self._view)

    def after_step(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        if self._view == TEXT:
            self.enqueue(anchors.keys, anchors.key_labels, anchors.key_ids)
            return
        B = anchors.keys.shape[0]
        self.enqueue(anchors.q[:B].detach(), anchors.key_labels, anchors.key_ids)

    def extra_repr(self) -> str:
        return f"size={self.size}, modality={self.modality!r}"


def _two_view_layout(ctx: StepContext) -> tuple[Tensor, Tensor]:
    """Each candidate's view and partner column, which only a two-view source provides."""
    if ctx.k_view is None or ctx.k_partner is None:
        raise ValueError("cross_modal_cluster needs the cross_modal source (two views)")
    return ctx.k_view, ctx.k_partner


class CrossModalClusters(ClusterGuided):
    r"""Cluster-guided negatives across modalities: spherical k-means on one tower's embeddings
    (``modality``, default the texts) chooses the negatives of both directions. Log-weight
    ``[c_i ≠ c_j] · (bonus + γ s_ij / t)`` as in `ClusterGuided`,
    where a sample's cluster is that of its ``modality`` embedding — an image and its caption share
    the caption's cluster — so an anchor prefers candidates close in the joint space but of another
    cluster.

    Without ``features`` the centroids are refitted every ``every`` steps on the last ``memory``
    batch rows of that modality (the tower's recent embeddings); rows of the other modality
    outside the batch (no partner) get cluster −1 ("other"). With ``features`` (a num_ids × d
    table indexed by sample id, e.g. a frozen text encoder's embeddings) clusters come from the
    table as in ``ClusterGuided``.
    """

    kind = "cross_modal_cluster"

    def __init__(
        self,
        n_clusters: int = 10,
        every: int = 100,
        bonus: float = 1.0,
        gamma: float = 1.0,
        exclude_same: bool = False,
        modality: str = "text",
        memory: int = 2048,
        features: Tensor | None = None,
        niter: int = 20,
        nredo: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__(n_clusters, every, bonus, gamma, exclude_same, features, niter, nredo, seed)
        self.modality = modality
        self._view = _modality(modality, "cross_modal_cluster option 'modality'")
        self.memory = check_int("cross_modal_cluster option 'memory' (at least n_clusters)", memory, self.n_clusters)
        self._recent: Tensor | None = None

    def _candidate_columns(self, ctx: StepContext) -> Tensor:
        """For each candidate: the column holding its sample's ``modality`` embedding (itself, or
        its other view in the batch), −1 when there is none. The layout comes from the context's
        ``k_partner`` (the whole batch's), so it is the same whichever anchors a call computes."""
        k_view, k_partner = _two_view_layout(ctx)
        ar = torch.arange(ctx.m, device=ctx.q.device)
        return torch.where(k_view == self._view, ar, k_partner.to(ar.device))

    def get_extra_state(self) -> dict:
        # the recent rows the next refit clusters are state too: without them a resumed run refits
        # on fewer rows than an uninterrupted one
        return {**super().get_extra_state(), "recent": self._recent}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self._recent = state.get("recent")

    def begin_step(self, ctx: StepContext) -> None:
        if self.features is not None:
            super().begin_step(ctx)
            return
        k_view, _ = _two_view_layout(ctx)
        b_end = ctx.blocks[0][2]
        batch_rows = ctx.k[:b_end][k_view[:b_end] == self._view]
        recent = batch_rows if self._recent is None else torch.cat([self._recent.to(batch_rows), batch_rows])
        self._recent = recent[-self.memory :].detach()
        due = self.centroids is None or ctx.step % self.every == 0
        if due and self._recent.shape[0] >= self.n_clusters:
            self.fit(self._recent)
        if self.centroids is None:  # too few rows yet: no cluster, every candidate "other"
            self._qc = torch.full((ctx.n,), -1, dtype=torch.long, device=ctx.q.device)
            self._kc = torch.full((ctx.m,), -1, dtype=torch.long, device=ctx.q.device)
            return
        kc_all = self.assign(ctx.k)
        kcol = self._candidate_columns(ctx)
        self._kc = torch.where(kcol >= 0, kc_all[kcol.clamp(min=0)], torch.full_like(kcol, -1))
        # anchor i is candidate column self_index[i] (its own row of the batch)
        si = ctx.self_index
        self._qc = torch.where(si >= 0, self._kc[si.clamp(min=0)], torch.full_like(si, -1))

    def extra_repr(self) -> str:
        return (
            f"n_clusters={self.n_clusters}, every={self.every}, bonus={self.bonus}, gamma={self.gamma}, "
            f"modality={self.modality!r}, memory={self.memory}"
        )


class LogitScale(nn.Module):
    """CLIP's learnable logit scale, 1 / temperature: a parameter ``log_scale = log(1/t)`` starting
    at ``temperature`` t (0.07, as CLIP); ``forward()`` returns ``logit_scale = exp(log_scale)``
    clamped at ``max_logit_scale`` (CLIP clamps at 100, so t ≥ 0.01). Pass it to
    ``Strategy.forward(..., logit_scale=...)`` or to `ClipLoss`."""

    def __init__(self, temperature: float = 0.07, max_logit_scale: float = 100.0) -> None:
        super().__init__()
        t = check_positive("LogitScale option 'temperature' (its initial value)", temperature)
        self.max_logit_scale = check_positive("LogitScale option 'max_logit_scale'", max_logit_scale)
        if 1.0 / t > self.max_logit_scale:
            raise ValueError(
                f"LogitScale needs 1/temperature <= max_logit_scale, got temperature={temperature!r} "
                f"(logit scale {1.0 / t:g}) and max_logit_scale={max_logit_scale!r}"
            )
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / t)))

    def forward(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(self.max_logit_scale)).exp()


def pair_ids(image_ids: Sequence[int] | Tensor, captions: Sequence[str]) -> Tensor:
    """Group ids of a batch of (image, caption) pairs: pairs that share an image id or an identical
    caption (after lower-casing and collapsing spaces) get one id — connected components — so the
    id rule never lets another caption of the same image, or an identical caption of another
    image, be a negative. Ids are 0..G−1 in order of first appearance."""
    img = [int(i) for i in (image_ids.tolist() if isinstance(image_ids, Tensor) else image_ids)]
    if len(img) != len(captions):
        raise ValueError(f"pair_ids: {len(img)} image ids but {len(captions)} captions")
    parent = list(range(len(img)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    first: dict[tuple[str, object], int] = {}
    for b, (i, c) in enumerate(zip(img, captions, strict=True)):
        for key in (("image", i), ("caption", " ".join(c.lower().split()))):
            if key in first:
                parent[find(b)] = find(first[key])
            else:
                first[key] = b
    roots: dict[int, int] = {}
    return torch.tensor([roots.setdefault(find(b), len(roots)) for b in range(len(img))], dtype=torch.long)
