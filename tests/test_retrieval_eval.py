"""Retrieval metrics against a hand computation and against sentence-transformers'
InformationRetrievalEvaluator on the same model and data."""

import numpy as np
import pytest

from hardneg.eval.retrieval import evaluate_model, retrieval_metrics
from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES, minilm


def test_hand_computed_metrics():
    # corpus on the unit circle; query 0 ranks docs 0,1,2,3; query 1 ranks 3,2,1,0
    ang = np.array([0.0, 0.3, 0.6, 0.9])
    c = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    q = np.stack([[1.0, 0.0], [np.cos(1.2), np.sin(1.2)]]).astype(np.float32)
    relevant = [[1], [1, 0]]  # q0: relevant at rank 2; q1: relevant at ranks 3 and 4
    m = retrieval_metrics(q, c, relevant, recall_at=(1, 3), mrr_at=10, ndcg_at=10)
    assert m["recall@1"] == 0.0
    assert m["recall@3"] == pytest.approx((1 + 0.5) / 2)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    nd0 = (1 / np.log2(3)) / 1.0
    nd1 = (1 / np.log2(4) + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    assert m["ndcg@10"] == pytest.approx((nd0 + nd1) / 2)
    with pytest.raises(ValueError, match="relevant"):
        retrieval_metrics(q, c, [[1]])


def test_matches_information_retrieval_evaluator():
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    model = minilm()
    corpus = POSITIVES + CORPUS
    relevant = [[i] for i in range(len(QUERIES))]
    relevant[0] = [0, 6]  # a second relevant document for one query
    ir = InformationRetrievalEvaluator(
        queries={f"q{i}": q for i, q in enumerate(QUERIES)},
        corpus={f"d{j}": d for j, d in enumerate(corpus)},
        relevant_docs={f"q{i}": {f"d{j}" for j in r} for i, r in enumerate(relevant)},
        mrr_at_k=[10], ndcg_at_k=[10], precision_recall_at_k=[1, 10], accuracy_at_k=[1], map_at_k=[10],
        show_progress_bar=False, name="t", batch_size=8,
    )
    ref = ir(model)
    ours = evaluate_model(model, QUERIES, corpus, relevant, precision="fp32")
    assert ours["recall@1"] == pytest.approx(ref["t_cosine_recall@1"], abs=1e-9)
    assert ours["recall@10"] == pytest.approx(ref["t_cosine_recall@10"], abs=1e-9)
    assert ours["mrr@10"] == pytest.approx(ref["t_cosine_mrr@10"], abs=1e-9)
    assert ours["ndcg@10"] == pytest.approx(ref["t_cosine_ndcg@10"], abs=1e-6)
