"""Mining on embeddings: against a literal per-query reference, FAISS options, sampling laws, summary."""

import numpy as np
import pytest

from hardneg.mining.mine import MineConfig, mine_embeddings
from hardneg.mining.summary import build_summary, format_summary
from hardneg.vector_search import build_index, measure_recall, parse_index_spec, recall_at_k, search


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_top(q, c, pos, cfg):
    """Literal per-query implementation: sort all documents, keep the range_max + 1 nearest (the search
    depth), drop the positive, filters, window, top-N. sentence-transformers' order: range_min and
    range_max count the survivors of the filters; ``window="retrieval"`` cuts the window first."""
    out = []
    lo, hi = cfg.range_min, cfg.effective_range_max()
    for i in range(len(q)):
        s = c @ q[i]
        sp = float(s[pos[i]])
        order = [j for j in np.argsort(-s, kind="stable")[: hi + 1] if j != pos[i]]
        if cfg.window == "retrieval":
            order = order[lo:hi]
        keep = []
        for j in order:
            if cfg.min_score is not None and s[j] < cfg.min_score:
                continue
            if cfg.max_score is not None and s[j] > cfg.max_score:
                continue
            if cfg.absolute_margin is not None and s[j] > sp - cfg.absolute_margin:
                continue
            if cfg.relative_margin is not None and s[j] > sp - abs(sp) * cfg.relative_margin:
                continue
            keep.append(j)
        if cfg.window == "filtered":
            keep = keep[lo:hi]
        out.append(keep[: cfg.num_negatives])
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"range_min": 3, "range_max": 20},
        {"absolute_margin": 0.02, "range_max": 40},
        {"relative_margin": 0.05, "min_score": -0.1, "max_score": 0.5},
        {"range_min": 10, "range_max": 50, "max_score": 0.3, "relative_margin": 0.05},
        {"range_min": 10, "range_max": 50, "max_score": 0.3, "relative_margin": 0.05, "window": "retrieval"},
    ],
)
def test_top_matches_literal_reference(kw):
    rng = np.random.default_rng(0)
    q, c = unit(rng, 40, 16), unit(rng, 300, 16)
    pos = rng.integers(0, 300, 40)
    cfg = MineConfig(num_negatives=4, **kw)
    res = mine_embeddings(q, c, pos, cfg, show_progress=False)
    ref = reference_top(q, c, pos, cfg)
    for i in range(40):
        got = [int(j) for j in res.neg_ids[i] if j >= 0]
        assert got == ref[i]
        np.testing.assert_allclose(res.neg_scores[i, : len(got)], c[got] @ q[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.pos_scores, np.einsum("nd,nd->n", q, c[pos]), rtol=1e-5, atol=1e-6)
    # the candidates the filters see: the retrieval window, or (filtered) all range_max + 1 retrieved but the positive
    hi = cfg.effective_range_max()
    pool = sum(int(pos[i] not in np.argsort(-(c @ q[i]), kind="stable")[: hi + 1]) + hi for i in range(40))
    assert res.candidates_in_window == (40 * (hi - cfg.range_min) if cfg.window == "retrieval" else pool)


def test_tilted_sampling_follows_exp_beta_s_over_t():
    # one query repeated: with N=1 Gumbel-top-1 draws j with probability ∝ exp(β s_j / t) over the window
    rng = np.random.default_rng(1)
    c = unit(rng, 30, 8)
    q1 = unit(rng, 1, 8)
    q = np.repeat(q1, 4000, 0)
    cfg = MineConfig(num_negatives=1, range_max=6, sampling="tilted", beta=1.0, t=0.2, seed=3)
    pos = np.zeros(4000, dtype=np.int64)
    res = mine_embeddings(q, c, pos, cfg, show_progress=False)
    s = c @ q1[0]
    window = [j for j in np.argsort(-s) if j != 0][:6]
    p = np.exp(s[window] / 0.2)
    p /= p.sum()
    freq = np.array([(res.neg_ids[:, 0] == j).mean() for j in window])
    assert freq.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(freq, p, atol=0.03)
    # uniform and beta=0 tilted are uniform over the window
    for cfg2 in (MineConfig(num_negatives=1, range_max=6, sampling="uniform", seed=4),
                 MineConfig(num_negatives=1, range_max=6, sampling="tilted", beta=0.0, seed=4)):
        r2 = mine_embeddings(q, c, pos, cfg2, show_progress=False)
        f2 = np.array([(r2.neg_ids[:, 0] == j).mean() for j in window])
        np.testing.assert_allclose(f2, 1 / 6, atol=0.03)


def test_sampling_is_seeded_and_without_replacement():
    rng = np.random.default_rng(2)
    q, c = unit(rng, 50, 8), unit(rng, 200, 8)
    pos = np.arange(50)
    a = mine_embeddings(q, c, pos, MineConfig(num_negatives=5, sampling="tilted", seed=7), show_progress=False)
    b = mine_embeddings(q, c, pos, MineConfig(num_negatives=5, sampling="tilted", seed=7), show_progress=False)
    d = mine_embeddings(q, c, pos, MineConfig(num_negatives=5, sampling="tilted", seed=8), show_progress=False)
    np.testing.assert_array_equal(a.neg_ids, b.neg_ids)
    assert (a.neg_ids != d.neg_ids).any()
    for row in a.neg_ids:
        assert len(set(row.tolist())) == 5
    # sorted by decreasing score
    assert (np.diff(a.neg_scores, axis=1) <= 1e-7).all()


def test_dedupe_and_label_filters_and_fn_rate():
    rng = np.random.default_rng(3)
    q, c = unit(rng, 10, 8), unit(rng, 60, 8)
    pos = np.arange(10)
    # label sets: doc j has label j % 3; query i has label i % 3 -> a third of candidates are "false"
    q_labels = [[f"l{i % 3}"] for i in range(10)]
    c_labels = [[f"l{j % 3}"] for j in range(60)]
    cfg = MineConfig(num_negatives=3, range_max=30)
    r0 = mine_embeddings(q, c, pos, cfg, q_labels=q_labels, c_labels=c_labels, show_progress=False)
    fn_ref = sum((j % 3 == i % 3) for i in range(10) for j in r0.neg_ids[i] if j >= 0)
    assert r0.fn_selected == fn_ref
    cfg.filter_labels = True
    r1 = mine_embeddings(q, c, pos, cfg, q_labels=q_labels, c_labels=c_labels, show_progress=False)
    assert r1.fn_selected == 0
    assert all(j % 3 != i % 3 for i in range(10) for j in r1.neg_ids[i])
    # dedupe: doc 20 has the same text as query 0 and doc 21 as query 0's positive
    q_tid = np.arange(10) + 100
    c_tid = np.arange(60) + 1000
    c_tid[20] = q_tid[0]
    c_tid[21] = c_tid[0]
    c2 = c.copy()
    c2[20] = q[0]
    c2[21] = q[0] * 0.99 + c[0] * 0.01
    c2[21] /= np.linalg.norm(c2[21])
    r2 = mine_embeddings(q, c2, pos, MineConfig(num_negatives=3), q_text_ids=q_tid, c_text_ids=c_tid,
                         show_progress=False)
    assert 20 not in r2.neg_ids[0] and 21 not in r2.neg_ids[0]
    assert r2.removed["duplicate"] >= 2


def test_guide_filter_uses_guide_scores():
    rng = np.random.default_rng(4)
    q, c = unit(rng, 8, 8), unit(rng, 50, 8)
    pos = np.arange(8)
    g = unit(rng, 50, 8)  # a different "guide" embedding of the corpus
    gq = unit(rng, 8, 8)

    def guide(rows, ids):
        return np.einsum("nd,nd->n", gq[rows], g[ids])

    cfg = MineConfig(num_negatives=2, range_max=20, guide_margin=0.0)
    res = mine_embeddings(q, c, pos, cfg, guide_score=guide, show_progress=False)
    for i in range(8):
        for j in res.neg_ids[i][res.neg_ids[i] >= 0]:
            assert gq[i] @ g[j] <= gq[i] @ g[pos[i]] + 1e-6


def test_index_options_and_recall():
    rng = np.random.default_rng(5)
    c, q = unit(rng, 3000, 32), unit(rng, 100, 32)
    assert parse_index_spec("ivf64") == ("ivf", 64) and parse_index_spec("HNSW16") == ("hnsw", 16)
    for bad in ("ivf", "lsh", "hnsw1", "ivf0"):
        with pytest.raises(ValueError, match="index|nlist|M must"):
            parse_index_spec(bad)
    flat = build_index(c, "flat")
    s, ids = search(flat, q, 10)
    ref = np.argsort(-(q @ c.T), axis=1)[:, :10]
    assert recall_at_k(ids, ref) == 1.0
    hnsw = build_index(c, "hnsw32", ef_search=256)
    assert measure_recall(c, q, hnsw, 10, sample=100) > 0.9
    bf = build_index(c, "bf16")
    assert measure_recall(c, q, bf, 10, sample=100) > 0.99
    sb, ib = search(bf, q, 10)
    np.testing.assert_allclose(sb, np.take_along_axis(q @ c.T, ib, 1), rtol=1e-5, atol=1e-6)  # exact scores
    ivf = build_index(c, "ivf16", nprobe=16)  # nprobe = nlist: exhaustive, so exact
    assert measure_recall(c, q, ivf, 10, sample=100) == pytest.approx(1.0)
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 4, 5]])) == pytest.approx(1 / 3)
    res = mine_embeddings(q, c, np.arange(100), MineConfig(index="ivf32", nprobe=2), show_progress=False)
    assert 0.0 < res.recall <= 1.0


def test_summary_reports_queries_without_negatives_and_the_knob():
    # the ANCHORS pitfall: positive below the top candidates + relative margin -> most queries lose negatives
    rng = np.random.default_rng(6)
    q, c = unit(rng, 20, 8), unit(rng, 100, 8)
    pos = np.array([int(np.argsort(c @ q[i])[50]) for i in range(20)])  # a middling positive
    cfg = MineConfig(num_negatives=1, relative_margin=0.05)
    res = mine_embeddings(q, c, pos, cfg, show_progress=False)
    s = build_summary(res, cfg, n_corpus=100)
    assert s["queries_with_too_few"] == int((res.n_found < 1).sum()) > 0
    assert s["too_few_by_cause"]["relative_margin"] > 0
    text = format_summary(s)
    # with no negative left at all, the first line says so and names the filter; the per-query line follows
    first, second = text.splitlines()[:2]
    if s["negatives_selected"] == 0:
        assert first.startswith("ERROR: no negatives selected") and "relative_margin removed" in first
        first = second
    # Python names the argument; the command line (hardneg mine) names its flag
    assert first.startswith("WARNING:") and "-> lower relative_margin (or raise range_max)" in first
    assert "-> lower --relative-margin (or raise --range-max)" in format_summary(s, names="cli")
    # the filter sees every retrieved candidate (range_max + 1 documents, the positive excluded) before
    # the window is cut from its survivors, as in sentence-transformers
    sp = np.array([c[pos[i]] @ q[i] for i in range(20)])
    assert s["removed_by_filter"]["relative_margin"] == sum(
        int((c[ids] @ q[i] > sp[i] - abs(sp[i]) * 0.05).sum()) for i, ids in
        enumerate([[j for j in np.argsort(-(c @ q[i]))[:11] if j != pos[i]] for i in range(20)]))


def test_bad_config_and_small_corpus():
    rng = np.random.default_rng(7)
    q, c = unit(rng, 3, 8), unit(rng, 4, 8)
    with pytest.raises(ValueError, match="corpus has 4 documents"):
        mine_embeddings(q, c, [0, 1, 2], MineConfig(num_negatives=5), show_progress=False)
    for kw, msg in [({"num_negatives": 0}, "num_negatives"), ({"sampling": "hard"}, "sampling"),
                    ({"range_min": 5, "range_max": 3}, "range_max"), ({"beta": -1.0}, "beta"),
                    ({"index": "ivfx"}, "index"), ({"range_max": 4, "num_negatives": 5}, "window")]:
        with pytest.raises(ValueError, match=msg):
            MineConfig(**kw).validate()
    with pytest.raises(ValueError, match="pos_ids"):
        mine_embeddings(q, c, [0, 1, 9], MineConfig(num_negatives=1), show_progress=False)


@pytest.mark.parametrize(
    "m,c_block,group,q_chunk",
    [
        (3000, 65536, 32, 256),
        (1001, 128, 16, 7),
        (50, 32, 32, 3),
        # the default block and group sizes over several blocks (the last one ragged) and query chunks
        pytest.param(150_001, 65536, 32, 16, marks=pytest.mark.slow),
    ],
)
def test_bf16_index_coarse_stage_equals_bf16_brute_force_topk(m, c_block, group, q_chunk):
    # the group-max selection and the block merge must return exactly the bf16 top-kc of a plain brute force
    import torch

    from hardneg.vector_search import BF16Index

    rng = np.random.default_rng(11)
    c, q = unit(rng, m, 24), unit(rng, 40, 24)
    idx = BF16Index(c, q_chunk=q_chunk, c_block=c_block, group=group)
    k = 5
    kc = min(max(4 * k, k + 16), m)
    qb = torch.from_numpy(q).bfloat16()
    full = (qb @ torch.from_numpy(c).bfloat16().T).float()
    ref_vals = full.topk(kc, dim=1).values
    with torch.inference_mode():
        best_v, best_i = idx.coarse(torch.from_numpy(q), kc, idx.new_buffer(len(q)))
    assert int(best_i.max()) < m
    torch.testing.assert_close(best_v.float(), ref_vals, rtol=0, atol=0)
    torch.testing.assert_close(torch.gather(full, 1, best_i), ref_vals, rtol=0, atol=0)
    # end to end: exact float32 scores of the returned ids, in decreasing order, recall vs flat
    s, ids = idx.search(q, k)
    np.testing.assert_allclose(s, np.take_along_axis(q @ c.T, ids, 1), rtol=1e-5, atol=1e-6)
    assert (np.diff(s, axis=1) <= 1e-7).all() and len(np.unique(ids[0])) == k
    exact = np.argsort(-(q @ c.T), axis=1)[:, :k]
    assert recall_at_k(ids, exact) > 0.97


def test_auto_index_picks_bf16_only_with_native_bf16(monkeypatch):
    from hardneg import vector_search as ix

    monkeypatch.setattr(ix, "cpu_has_native_bf16", lambda: True)
    assert ix.parse_index_spec("auto") == ("bf16", 0) and ix.resolve_index_spec("AUTO") == "bf16"
    monkeypatch.setattr(ix, "cpu_has_native_bf16", lambda: False)
    assert ix.parse_index_spec("auto") == ("flat", 0)
    assert ix.resolve_index_spec("hnsw32") == "hnsw32"
    with open("/proc/cpuinfo") as f:  # the real probe agrees with the flags line
        flags = next((set(x.split()) for x in f if x.startswith("flags")), set())
    monkeypatch.undo()
    assert ix.cpu_has_native_bf16() == bool(flags & {"amx_bf16", "avx512_bf16"})


def well_separated(n=20, m=48, spread=0.2, seed=0):
    """Queries and documents whose scores to each query are a permutation of an evenly spaced grid
    (spacing 2·spread/(m−1) ≈ 0.0085), built as one-hot documents plus a private unit residual per
    query, then rotated by one random orthogonal matrix (dense vectors, same scores)."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(-spread, spread, m)
    S = np.stack([rng.permutation(grid) for _ in range(n)])
    d = m + n
    C = np.eye(m, d)
    Q = np.zeros((n, d))
    Q[:, :m] = S
    Q[np.arange(n), m + np.arange(n)] = np.sqrt(1.0 - (S**2).sum(1))
    R, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q @ R).astype(np.float32), (C @ R).astype(np.float32), grid[1] - grid[0]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"range_min": 3, "range_max": 20},
        {"absolute_margin": 0.02, "range_max": 30},
        {"relative_margin": 0.05, "min_score": -0.1, "max_score": 0.15},
        {"sampling": "tilted", "beta": 1.0, "t": 0.05, "seed": 3, "range_max": 25},
    ],
)
def test_flat_and_bf16_mining_give_the_same_negatives(kw):
    """Where bf16 rounding cannot reorder scores, the bf16 index mines exactly what exact search does.

    BF16Index multiplies in torch's bfloat16 matmul, which runs on any CPU (AMX / AVX512-BF16 only
    make it faster); nothing here depends on the CPU flags."""
    import torch

    from hardneg.vector_search import BF16Index

    q, c, spacing = well_separated()
    pos = np.random.default_rng(1).integers(0, len(c), len(q))
    exact = q.astype(np.float64) @ c.T.astype(np.float64)
    bf = (torch.from_numpy(q).bfloat16() @ torch.from_numpy(c).bfloat16().T).double().numpy()
    assert np.abs(bf - exact).max() < spacing / 2, "fixture: bf16 scores must not be able to reorder"
    cfg = MineConfig(num_negatives=4, **kw)
    flat = mine_embeddings(q, c, pos, MineConfig(**{**vars(cfg), "index": "flat"}), show_progress=False)
    runs = {
        "bf16": mine_embeddings(q, c, pos, MineConfig(**{**vars(cfg), "index": "bf16"}), show_progress=False),
        # several corpus blocks and query chunks: the block merge must not reorder either
        "bf16 blocks": mine_embeddings(q, c, pos, MineConfig(**{**vars(cfg), "index": "bf16"}),
                                       index=BF16Index(c, c_block=32, group=16, q_chunk=7), show_progress=False),
    }
    assert (flat.n_found > 0).mean() > 0.5  # most queries get negatives (margins may empty a few)
    if cfg.sampling == "top":
        ref = reference_top(q, c, pos, cfg)
        assert [[int(j) for j in row if j >= 0] for row in flat.neg_ids] == ref
    for name, res in runs.items():
        np.testing.assert_array_equal(res.neg_ids, flat.neg_ids, err_msg=name)
        np.testing.assert_allclose(res.neg_scores, flat.neg_scores, rtol=1e-6, atol=1e-6, err_msg=name)
        assert res.recall == 1.0, name
        assert res.removed == flat.removed, name


def test_range_min_counts_the_survivors_of_the_filters():
    # sentence-transformers' meaning (window="filtered", the default) and the retrieval-rank window differ
    # when range_min and a score filter meet: the cases above compare each with its own reference
    rng = np.random.default_rng(0)
    q, c = unit(rng, 40, 16), unit(rng, 300, 16)
    pos = np.argmax(q @ c.T, 1)  # the nearest document: the margin and max_score filters remove the top ranks
    kw = {"num_negatives": 4, "range_min": 10, "range_max": 50, "max_score": 0.4, "relative_margin": 0.05}
    filtered = mine_embeddings(q, c, pos, MineConfig(**kw), show_progress=False).neg_ids
    retrieval = mine_embeddings(q, c, pos, MineConfig(window="retrieval", **kw), show_progress=False).neg_ids
    assert (filtered >= 0).all() and (retrieval >= 0).all()
    assert (filtered != retrieval).any(1).all()
    assert filtered.tolist() == reference_top(q, c, pos, MineConfig(**kw))
    with pytest.raises(ValueError, match="window must be one of"):
        MineConfig(window="ranks").validate()


def test_relative_margin_threshold_for_a_negative_positive_score():
    # sentence-transformers: threshold = s_p − |s_p|·r, so with s_p = −0.5, r = 0.1 it is −0.55 and a
    # candidate at −0.52 is dropped (s_p·(1 − r) = −0.45 would keep it)
    import torch

    from hardneg.negatives.filters import similarity_drops

    S = torch.tensor([[-0.52, -0.58, 0.1], [0.44, 0.46, -0.2]])
    sp = torch.tensor([-0.5, 0.5])
    drop = similarity_drops(S, sp, relative_margin=0.1)["relative_margin"]
    assert drop.tolist() == [[True, False, True], [False, True, False]]
