"""(anchor, positive) pairs grouped by anchor: the one rule for an anchor with several positives,
shared by ``hardneg mine`` (`hardneg.mining.pipeline.mine_texts`) and
`hardneg.mine_hard_negatives`.

It is sentence-transformers' rule (``sentence_transformers.util.mine_hard_negatives``), the one its
users expect:

- a repeated (anchor, positive) pair counts once;
- the pairs are grouped by anchor text, anchors in order of first appearance, an anchor's
  positives in their order;
- each distinct anchor is mined **once**: every one of its positives is excluded from its
  candidates, and the margins (``absolute_margin``, ``relative_margin``) are measured against its
  **lowest-scoring positive** (the hardest one, so a negative is never closer than any positive
  allows);
- every pair of the anchor gets the anchor's negatives (its own positive, with its own score, in
  the output row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardneg.vector_search import as_rows


@dataclass
class PairGroups:
    """Distinct (anchor, positive) pairs grouped by anchor.

    ``anchors``: the distinct anchors (first-appearance order); ``queries`` / ``positives``: the
    anchor and positive of each distinct pair, grouped by anchor; ``pair_anchor``: each pair's
    index into ``anchors``; ``rows``: each pair's first row in the input."""

    anchors: list[str]
    queries: list[str]
    positives: list[str]
    pair_anchor: np.ndarray
    rows: list[int]

    @property
    def max_positives(self) -> int:
        """The most positives any anchor has."""
        return int(np.bincount(self.pair_anchor).max())


def group_pairs(queries: Sequence[str], positives: Sequence[str]) -> PairGroups:
    """Group (anchor, positive) pairs by anchor, each distinct pair once (see the module docstring)."""
    first: dict[tuple[str, str], int] = {}
    for i, qp in enumerate(zip(queries, positives)):
        first.setdefault(qp, i)
    anchors = list(dict.fromkeys(queries))
    of = {q: k for k, q in enumerate(anchors)}
    pairs = sorted(first, key=lambda qp: of[qp[0]])  # stable: an anchor's positives keep their order
    pair_anchor = np.fromiter((of[q] for q, _ in pairs), np.int64, len(pairs))
    return PairGroups(anchors, [q for q, _ in pairs], [p for _, p in pairs], pair_anchor, [first[qp] for qp in pairs])


def anchor_labels(groups: PairGroups, pair_labels: Sequence[Any]) -> list[list]:
    """Each anchor's label set: the union of its pairs' label(s) (a label or a list of labels)."""
    merged: list[list] = [[] for _ in groups.anchors]
    for k, lab in zip(groups.pair_anchor, pair_labels):
        for x in [lab] if isinstance(lab, (str, int)) else (lab or []):
            if x not in merged[k]:
                merged[k].append(x)
    return merged


def anchor_positives(groups: PairGroups, pos_rows: np.ndarray, q_emb: np.ndarray, c_emb: Any,
                     texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the anchors ``q_emb`` (one row per ``groups.anchors``), the corpus ``texts`` and the corpus
    rows ``pos_rows`` of the pairs' positives: each anchor's lowest-scoring positive (the margins'
    reference), the rows never to mine for it ((anchors × P), −1 padded: its other positives, then
    the row holding its own text, as in sentence-transformers, whose search depth this extra slot also
    matches: range_max + max positives + 1) and each pair's own positive score."""
    c_rows = as_rows(c_emb)
    n = len(groups.anchors)
    pair_scores = np.einsum("nd,nd->n", q_emb[groups.pair_anchor], c_rows.take(pos_rows)).astype(np.float32)
    P = groups.max_positives
    sets = np.full((n, P), -1, dtype=np.int64)
    set_scores = np.full((n, P), np.inf, dtype=np.float64)
    fill = np.zeros(n, dtype=np.int64)
    for k, r, s in zip(groups.pair_anchor, pos_rows, pair_scores):
        sets[k, fill[k]], set_scores[k, fill[k]] = r, s
        fill[k] += 1
    hardest = set_scores.argmin(1)  # the first of equal scores, as torch.min in sentence-transformers
    main = sets[np.arange(n), hardest]
    rest = np.ones(sets.shape, dtype=bool)
    rest[np.arange(n), hardest] = False
    row_of = {c: k for k, c in enumerate(texts)}
    own = np.array([[row_of.get(q, -1)] for q in groups.anchors], dtype=np.int64).reshape(n, 1)
    return main, np.concatenate([sets[rest].reshape(n, P - 1), own], axis=1), pair_scores


__all__ = ["PairGroups", "anchor_labels", "anchor_positives", "group_pairs"]
