"""sentence-transformers loss wrappers: MNRL as the oracle, literal formulas for β-tilt and the FN filter,
GradCache equivalence, and a real SentenceTransformerTrainer step."""

import math

import pytest
import torch

from hardneg.integrations.sentence_transformers import CachedHardNegativeRankingLoss, HardNegativeRankingLoss
from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES, minilm


def features(model, cols):
    return [model.preprocess(c) for c in cols]


def grads_of(model, loss_fn, cols):
    model.zero_grad()
    loss = loss_fn(features(model, cols), None)
    loss.backward()
    p = model[0].auto_model.encoder.layer[-1].output.dense.weight
    return loss.detach().clone(), p.grad.detach().clone()


def test_default_equals_multiple_negatives_ranking_loss():
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    m = minilm()
    m.eval()  # no dropout: MNRL merges the candidate columns into one forward, which draws other masks
    cols = [QUERIES[:4], POSITIVES[:4], CORPUS[:4]]
    torch.manual_seed(0)
    l_ref, g_ref = grads_of(m, MultipleNegativesRankingLoss(m, scale=20.0), cols)
    torch.manual_seed(0)
    l_our, g_our = grads_of(m, HardNegativeRankingLoss(m, logit_scale=20.0), cols)
    assert l_our.item() == pytest.approx(l_ref.item(), rel=1e-5)
    torch.testing.assert_close(g_our, g_ref, rtol=1e-4, atol=1e-6)


def literal(q, ks, t, beta=0.0, absolute_margin=None):
    """Direct formula: L_i = -log(e^{s_ip/t} / (e^{s_ip/t} + N Σ_j π_ij e^{s_ij/t})), π ∝ e^{β s/t} on kept j."""
    q = torch.nn.functional.normalize(q, dim=-1)
    k = torch.nn.functional.normalize(torch.cat(ks), dim=-1)
    B = q.shape[0]
    total = 0.0
    for i in range(B):
        s = (k @ q[i]).tolist()
        sp = s[i]
        neg = [j for j in range(len(s)) if j != i and (absolute_margin is None or s[j] <= sp - absolute_margin)]
        w = [math.exp(beta * s[j] / t) for j in neg]
        Z = sum(w)
        inner = len(neg) * sum(w[a] / Z * math.exp(s[j] / t) for a, j in enumerate(neg))
        total += -math.log(math.exp(sp / t) / (math.exp(sp / t) + inner))
    return total / B


@pytest.mark.parametrize("beta,absolute_margin", [(0.0, None), (1.0, None), (0.5, 0.05), (0.0, 0.3)])
def test_strategies_match_literal_formula(beta, absolute_margin):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(6, 8, generator=g, dtype=torch.float64)
    ks = [torch.randn(6, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    ks[0] = ks[0] + 0.8 * q  # positives correlated with their anchors
    loss = HardNegativeRankingLoss(None, logit_scale=10.0, beta=beta, absolute_margin=absolute_margin)
    got = loss.compute_loss_from_embeddings([q, *ks])
    assert got.item() == pytest.approx(literal(q, ks, 0.1, beta, absolute_margin), rel=1e-9)


def test_debiased_matches_dcl_formula():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(5, 8, generator=g, dtype=torch.float64)
    k = torch.randn(5, 8, generator=g, dtype=torch.float64) + q
    tau, t = 0.1, 0.5
    got = HardNegativeRankingLoss(None, logit_scale=1 / t, tau_plus=tau).compute_loss_from_embeddings([q, k])
    qn, kn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    S = qn @ kn.T
    ref = 0.0
    for i in range(5):
        pos = math.exp(S[i, i].item() / t)
        neg = [math.exp(S[i, j].item() / t) for j in range(5) if j != i]
        N = len(neg)
        G = max((sum(neg) - tau * N * pos) / (1 - tau), N * math.exp(-1 / t))
        ref += -math.log(pos / (pos + G))
    assert got.item() == pytest.approx(ref / 5, rel=1e-9)


def test_cached_equals_uncached():
    m = minilm()
    m.eval()  # dropout off: compare the two computations exactly
    cols = [QUERIES[:4], POSITIVES[:4], CORPUS[:4]]
    l1, g1 = grads_of(m, HardNegativeRankingLoss(m, beta=0.5, absolute_margin=0.1), cols)
    l2, g2 = grads_of(m, CachedHardNegativeRankingLoss(m, beta=0.5, absolute_margin=0.1, mini_batch_size=2), cols)
    assert l2.item() == pytest.approx(l1.item(), rel=1e-5)
    torch.testing.assert_close(g2, g1, rtol=1e-3, atol=1e-6)


def test_n_neg_takes_the_strategy_values_and_scales_the_mean():
    """``n_neg`` takes Strategy's values ("count", "nominal", a number > 0) with its checker's
    line; a number N gives −log(e^{s_p/t} / (e^{s_p/t} + N · mean_{j≠p} e^{s_j/t}))."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(5, 8, generator=g, dtype=torch.float64)
    k = torch.randn(5, 8, generator=g, dtype=torch.float64) + q
    t = 0.5
    got = HardNegativeRankingLoss(None, logit_scale=1 / t, n_neg=7).compute_loss_from_embeddings([q, k])
    S = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).T
    ref = 0.0
    for i in range(5):
        pos = math.exp(S[i, i].item() / t)
        neg = [math.exp(S[i, j].item() / t) for j in range(5) if j != i]
        ref += -math.log(pos / (pos + 7 * sum(neg) / len(neg)))
    assert got.item() == pytest.approx(ref / 5, rel=1e-9)
    HardNegativeRankingLoss(None, n_neg="nominal")
    from hardneg.negatives import Strategy

    for bad in ("counted", 0, float("nan")):
        with pytest.raises(ValueError) as ours:
            HardNegativeRankingLoss(None, n_neg=bad)
        with pytest.raises(ValueError) as strategy:
            Strategy(n_neg=bad)
        assert str(ours.value) == str(strategy.value) and str(ours.value).startswith("n_neg must be one of")
    with pytest.raises(TypeError, match="'scale'"):
        HardNegativeRankingLoss(None, scale=20.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="logit_scale"):
        HardNegativeRankingLoss(None, logit_scale=0)
    with pytest.raises(ValueError, match="beta"):
        HardNegativeRankingLoss(None, beta=-1)
    with pytest.raises(ValueError, match="tau_plus"):
        HardNegativeRankingLoss(None, tau_plus=1.0)
    with pytest.raises(ValueError, match="max_score"):
        HardNegativeRankingLoss(None, max_score=2.0)
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedHardNegativeRankingLoss(None, mini_batch_size=0)
    with pytest.raises(ValueError, match="column"):
        HardNegativeRankingLoss(None).compute_loss_from_embeddings([torch.randn(3, 4)])


def test_trains_in_sentence_transformer_trainer(tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    m = minilm()
    before = m[0].auto_model.encoder.layer[-1].output.dense.weight.detach().clone()
    ds = datasets.Dataset.from_dict({"anchor": QUERIES, "positive": POSITIVES, "negative": CORPUS[:6]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=6, learning_rate=1e-4,
        report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, seed=0, disable_tqdm=True)
    loss = HardNegativeRankingLoss(m, beta=1.0, absolute_margin=0.1)
    SentenceTransformerTrainer(model=m, args=args, train_dataset=ds, loss=loss).train()
    after = m[0].auto_model.encoder.layer[-1].output.dense.weight.detach()
    assert not torch.equal(before, after)
    with torch.no_grad():
        m[0].auto_model.encoder.layer[-1].output.dense.weight.copy_(before)  # leave the shared model as loaded


def test_one_pair_batch_gives_zero_like_mnrl_and_the_users_strategy_is_left_alone():
    from hardneg.negatives import create_strategy

    q, p = torch.randn(1, 8, requires_grad=True), torch.randn(1, 8)
    loss = HardNegativeRankingLoss(None).compute_loss_from_embeddings([q, p])
    assert float(loss) == 0.0
    loss.backward()
    assert bool((q.grad == 0).all())
    s = create_strategy("hucl", temperature=0.05)
    wrapped = HardNegativeRankingLoss(None, strategy=s)
    assert s.in_batch.symmetric and not wrapped.strategy.in_batch.symmetric
    assert wrapped.logit_scale == pytest.approx(20.0)
    with pytest.raises(ValueError, match="not both"):
        HardNegativeRankingLoss(None, logit_scale=10.0, strategy={"name": "hucl", "temperature": 0.5})


def test_filters_that_remove_every_negative_raise_instead_of_a_zero_loss():
    """max_score=-1 removes every candidate: an error naming the cause, not a loss of 0 that trains nothing.
    Only the one-pair batch without negatives is a zero loss (MNRL's value there)."""
    g = torch.Generator().manual_seed(3)
    q, p, n = (torch.randn(4, 8, generator=g) for _ in range(3))
    loss = HardNegativeRankingLoss(None, max_score=-1.0)
    for cols in ([q, p], [q, p, n], [q[:1], p[:1], n[:1]]):
        with pytest.raises(ValueError, match="no anchor has both a positive and a valid negative"):
            loss.compute_loss_from_embeddings(cols)
    assert float(loss.compute_loss_from_embeddings([q[:1], p[:1]])) == 0.0


@pytest.mark.parametrize(("name", "why"), [
    ("scl", "filter 'label'"), ("hscl", "positives='labels'"), ("supcon", "positives='labels'"),
    ("filtered", "filter 'id'"),
])
def test_strategies_needing_labels_or_ids_are_refused_at_construction(name, why):
    with pytest.raises(ValueError, match=f"strategy '{name}' needs class labels or sample ids") as e:
        HardNegativeRankingLoss(None, strategy=name)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_topk_on_a_batch_smaller_than_k_is_mnrl():
    """The last, smaller batch of an epoch: top-k with k above the pool uses the whole pool, which is
    sentence-transformers' MNRL on that batch (value and gradient)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    g = torch.Generator().manual_seed(4)
    cols = [torch.randn(3, 8, generator=g, requires_grad=True) for _ in range(3)]
    got = HardNegativeRankingLoss(None, strategy="topk").compute_loss_from_embeddings(cols)  # k = 16 > 5
    g_got = torch.autograd.grad(got, cols)
    want = MultipleNegativesRankingLoss(None, scale=20.0).compute_loss_from_embeddings(cols, None)
    g_want = torch.autograd.grad(want, cols)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    for a, b in zip(g_got, g_want, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_strategy_options_reach_the_config_and_rebuild_the_same_loss():
    from hardneg.negatives import from_config

    loss = HardNegativeRankingLoss(None, strategy={"name": "topk", "k": 6}, max_score=0.9)
    card = loss.get_config_dict()["strategy"]
    assert {"kind": "topk", "k": 6} in card["weighting"]
    assert card["filters"][0]["kind"] == "similarity" and card["filters"][0]["max_score"] == 0.9
    g = torch.Generator().manual_seed(5)
    cols = [torch.randn(5, 8, generator=g) for _ in range(3)]
    rebuilt = HardNegativeRankingLoss(None, strategy=from_config(card))
    assert float(rebuilt.compute_loss_from_embeddings(cols)) == pytest.approx(
        float(loss.compute_loss_from_embeddings(cols)), rel=1e-6)


def test_topk_trains_through_the_last_smaller_batch_and_the_model_card_keeps_k(tmp_path):
    """SentenceTransformerTrainer, 6 rows in batches of 4: the last batch of 2 has 3 candidates per
    anchor, fewer than k = 6; it trains, and the model card's loss config records k."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    m = minilm()
    layer = m[0].auto_model.encoder.layer[-1].output.dense.weight
    before = layer.detach().clone()
    ds = datasets.Dataset.from_dict({"anchor": QUERIES[:6], "positive": POSITIVES[:6], "negative": CORPUS[:6]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=4, learning_rate=1e-4,
        report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, seed=0, disable_tqdm=True)
    loss = HardNegativeRankingLoss(m, strategy={"name": "topk", "k": 6})
    trainer = SentenceTransformerTrainer(model=m, args=args, train_dataset=ds, loss=loss)
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss) and out.training_loss > 0
    assert not torch.equal(before, layer.detach())
    config_code = m.model_card_data.train_datasets[0]["loss"]["config_code"]
    assert '"kind": "topk"' in config_code and '"k": 6' in config_code
    with torch.no_grad():
        layer.copy_(before)  # leave the shared model as loaded
