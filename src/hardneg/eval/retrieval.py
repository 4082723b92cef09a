"""Retrieval metrics: Recall@k, MRR@k, nDCG@k (binary relevance), as in sentence-transformers'
``InformationRetrievalEvaluator`` (checked against it in tests/test_retrieval_eval.py).

For query ``i`` with relevant set ``R_i`` and ranked list ``d_1, d_2, …`` (cosine similarity):

- Recall@k = |R_i ∩ {d_1..d_k}| / |R_i|;
- MRR@k = 1 / (rank of the first relevant document) if it is within the top k, else 0;
- nDCG@k = Σ_{r≤k, d_r∈R_i} 1/log2(r+1) / Σ_{r≤min(k,|R_i|)} 1/log2(r+1);

each averaged over queries. Search is an exact FAISS inner-product search of normalised embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hardneg.vector_search import build_index, search


def retrieval_metrics(
    q_emb: np.ndarray,
    c_emb: np.ndarray,
    relevant: Sequence[Sequence[int]],
    *,
    recall_at: Sequence[int] = (1, 10),
    mrr_at: int = 10,
    ndcg_at: int = 10,
) -> dict[str, float]:
    """Mean Recall@k, MRR@k and nDCG@k for queries ``q_emb`` (n, d) over corpus ``c_emb`` (m, d)."""
    q_emb = np.asarray(q_emb, dtype=np.float32)
    if len(relevant) != q_emb.shape[0]:
        raise ValueError(f"relevant must have one entry per query ({q_emb.shape[0]}), got {len(relevant)}")
    if any(len(r) == 0 for r in relevant):
        raise ValueError("every query needs at least one relevant document")
    k = max([*recall_at, mrr_at, ndcg_at])
    _, ids = search(build_index(c_emb, "flat"), q_emb, k)
    P = max(len(r) for r in relevant)
    rel = np.full((len(relevant), P), -2, dtype=np.int64)
    for i, r in enumerate(relevant):
        rel[i, : len(r)] = list(r)
    hit = ((ids[:, :, None] == rel[:, None, :]) & (ids[:, :, None] >= 0)).any(-1)  # (n, k)
    n_rel = np.array([len(set(r)) for r in relevant], dtype=np.float64)
    out: dict[str, float] = {}
    for kk in recall_at:
        out[f"recall@{kk}"] = float(np.mean(hit[:, :kk].sum(1) / n_rel))
    first = np.where(hit[:, :mrr_at].any(1), hit[:, :mrr_at].argmax(1) + 1, np.inf)
    out[f"mrr@{mrr_at}"] = float(np.mean(1.0 / first))
    disc = 1.0 / np.log2(np.arange(2, ndcg_at + 2))
    dcg = (hit[:, :ndcg_at] * disc).sum(1)
    idcg = np.array([disc[: int(min(ndcg_at, r))].sum() for r in n_rel])
    out[f"ndcg@{ndcg_at}"] = float(np.mean(dcg / idcg))
    return out


def evaluate_model(
    model,
    queries: Sequence[str],
    corpus: Sequence[str],
    relevant: Sequence[Sequence[int]],
    *,
    precision: str = "fp32",
    batch_size: int = 64,
    cache_dir=None,
    show_progress: bool = False,
) -> dict[str, float]:
    """Encode with ``model`` (see `hardneg.mining.encode.encode_texts`) and compute the metrics."""
    from hardneg.mining.encode import encode_texts

    q = encode_texts(model, queries, batch_size=batch_size, precision=precision, show_progress=show_progress)
    c = encode_texts(model, corpus, batch_size=batch_size, precision=precision, cache_dir=cache_dir,
                     show_progress=show_progress)
    return retrieval_metrics(q, c, relevant)
