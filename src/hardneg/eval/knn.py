"""Weighted k-nearest-neighbour classifier on frozen features, as in the evaluation code of HCL
(Robinson et al. 2021) and H-SCL (Jiang et al. 2022), itself from Wu et al. 2018 (instance discrimination).

Features are L2-normalised; for a query q its k most similar bank features (cosine s) vote for their
labels with weight exp(s / t); the class with the largest summed weight wins. Defaults k = 200, t = 0.5
are those of the HCL code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int, t: float) -> None:
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"bank and queries must be (n, d) and (m, d) with the same d, "
            f"got {tuple(bank.shape)} and {tuple(queries.shape)}"
        )
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels must have shape ({bank.shape[0]},), got {tuple(bank_labels.shape)}")
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not t > 0:
        raise ValueError(f"t must be > 0, got {t!r}")


@torch.no_grad()
def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    *,
    k: int = 200,
    t: float = 0.5,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted labels (m,) for ``queries`` (m, d) given a labelled ``bank`` (n, d); k is capped at n.

    Memory is O(chunk_size · n); every operation is a batched tensor op (matrix product, top-k, scatter).
    """
    _check(bank, bank_labels, queries, k, t)
    C = int(num_classes if num_classes is not None else int(bank_labels.max()) + 1)
    k = min(k, bank.shape[0])
    b = F.normalize(bank.float(), dim=1)
    q = F.normalize(queries.float(), dim=1)
    out = torch.empty(q.shape[0], dtype=torch.long)
    for s in range(0, q.shape[0], chunk_size):
        sim = q[s : s + chunk_size] @ b.T
        w, idx = sim.topk(k, dim=1)
        lab = bank_labels[idx]
        scores = torch.zeros(sim.shape[0], C).scatter_add_(1, lab, (w / t).exp())
        out[s : s + chunk_size] = scores.argmax(dim=1)
    return out


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    *,
    k: int = 200,
    t: float = 0.5,
    num_classes: int | None = None,
) -> float:
    """Fraction of ``queries`` whose weighted-kNN prediction equals ``query_labels``."""
    if query_labels.shape != (queries.shape[0],):
        raise ValueError(
            f"query_labels must have shape ({queries.shape[0]},), got {tuple(query_labels.shape)}"
        )
    pred = knn_predict(bank, bank_labels, queries, k=k, t=t, num_classes=num_classes)
    return float((pred == query_labels).float().mean())
