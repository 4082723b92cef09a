"""Mining beyond memory: memory-mapped stores, FAISS index_factory strings with exact re-scoring, search
sharded over worker processes, the estimate that refuses runs which cannot fit."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from hardneg.mining.estimate import estimate_mining, parse_memory
from hardneg.mining.mine import MineConfig, mine_embeddings
from hardneg.mining.shard import ShardedIndex, merge_topk, shard_bounds
from hardneg.mining.store import EmbeddingStore, write_store
from hardneg.vector_search import build_index, parse_index_spec, recall_at_k, search


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n=6000, m=200, d=64, centres=60, seed=0):
    """Unit vectors around random centres (what real embeddings look like to an IVF index), queries near
    random corpus rows; returns (queries, corpus, positives)."""
    rng = np.random.default_rng(seed)
    cen = unit(rng.standard_normal((centres, d)))
    c = unit(cen[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d)) / np.sqrt(d) * 3)
    pos = rng.choice(n, m, replace=False)
    q = unit(c[pos] + 0.3 * rng.standard_normal((m, d)) / np.sqrt(d) * 3)
    return q, c, pos


def exact_top(q, c, k):
    return np.argsort(-(q.astype(np.float64) @ c.T.astype(np.float64)), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_store_roundtrip_rows_take_slice(tmp_path, dtype):
    _, c, _ = clustered(n=1000, m=1)
    st = write_store(tmp_path / "c.npy", (c[a : a + 300] for a in range(0, 1000, 300)), n=1000, d=64, dtype=dtype)
    ref = {"float16": c.astype(np.float16).astype(np.float32),
           "bfloat16": torch.from_numpy(c).bfloat16().float().numpy(), "float32": c}[dtype]
    assert EmbeddingStore(tmp_path / "c.npy").dtype == dtype and st.shape == (1000, 64)
    np.testing.assert_array_equal(st.rows(0, 1000), ref)
    ids = np.array([[999, 3], [3, 500]])
    np.testing.assert_array_equal(st.take(ids), ref[ids])
    np.testing.assert_array_equal(st.slice(200, 700).rows(10, 20), ref[210:220])
    np.testing.assert_array_equal(st.slice(200, 700).take(np.array([0, 499])), ref[[200, 699]])
    np.testing.assert_array_equal(st.bf16_rows(5, 9).float().numpy(), torch.from_numpy(ref[5:9]).bfloat16().float())
    assert st.nbytes == 1000 * 64 * (4 if dtype == "float32" else 2)
    assert list(tmp_path.iterdir()) == [tmp_path / "c.npy"]  # written atomically: no temporary left


def test_store_refuses_what_it_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        write_store(tmp_path / "a.npy", np.full((3, 4), np.nan, np.float32), n=3, d=4)
    with pytest.raises(ValueError, match="hold 3 rows, 5 were announced"):
        write_store(tmp_path / "a.npy", np.ones((3, 4), np.float32), n=5, d=4)
    assert not list(tmp_path.iterdir())
    np.save(tmp_path / "i.npy", np.ones((3, 4), np.int32))
    with pytest.raises(ValueError, match="dtype int32"):
        EmbeddingStore(tmp_path / "i.npy")
    with pytest.raises(FileNotFoundError, match="no such file"):
        EmbeddingStore(tmp_path / "missing.npy")


@pytest.mark.parametrize("dtype,index", [("float16", "flat"), ("bfloat16", "flat"), ("float16", "bf16"),
                                         ("bfloat16", "bf16"), ("float16", "IVF16,PQ8x4"), ("bfloat16", "HNSW16,Flat")])
def test_memory_mapped_mining_equals_in_memory_mining(tmp_path, index, dtype):
    # the in-memory reference holds the very values of the store (the 16-bit rounding, as float32)
    q, c, pos = clustered()
    st = write_store(tmp_path / "c.npy", c, n=len(c), d=64, dtype=dtype)
    mem = st.rows(0, len(c))
    cfg = MineConfig(num_negatives=5, range_min=2, range_max=30, sampling="tilted", seed=1, index=index, nprobe=16)
    a = mine_embeddings(q, mem, pos, cfg, show_progress=False)
    b = mine_embeddings(q, st, pos, cfg, show_progress=False)
    np.testing.assert_array_equal(b.neg_ids, a.neg_ids)
    np.testing.assert_allclose(b.neg_scores, a.neg_scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(b.pos_scores, a.pos_scores)
    assert b.recall == a.recall and b.removed == a.removed
    # and the scores are the exact inner products of the stored vectors
    got = np.where(b.neg_ids >= 0, b.neg_ids, 0)
    ref = np.einsum("nd,nkd->nk", q.astype(np.float64), mem[got].astype(np.float64))
    np.testing.assert_allclose(b.neg_scores[b.neg_ids >= 0], ref[b.neg_ids >= 0], rtol=1e-5, atol=1e-6)


def test_factory_strings_parse_build_and_report_recall():
    assert parse_index_spec("IVF4096,PQ48") == ("factory", 4096)
    assert parse_index_spec("OPQ16,IVF256,PQ16", d=64) == ("factory", 256)
    assert parse_index_spec("HNSW32,Flat", d=64) == ("factory", 0)
    assert parse_index_spec("IVF64") == ("ivf", 64)  # a short spec keeps its meaning in capitals
    with pytest.raises(ValueError, match="multiple of the number of subquantizers"):
        parse_index_spec("IVF64,PQ48", d=100)
    with pytest.raises(ValueError, match="'IVFx,PQ8' cannot be built by FAISS for 64-dimensional"):
        parse_index_spec("IVFx,PQ8", d=64)
    with pytest.raises(ValueError, match="index_factory string"):
        parse_index_spec("ivfpq")
    q, c, pos = clustered()
    with pytest.raises(ValueError, match="needs at least 8192 corpus vectors"):
        build_index(c, "IVF8192,PQ16")
    # every cell visited and every candidate re-scored (rerank·k ≥ the corpus): exact neighbours and scores
    ex = build_index(c, "IVF16,PQ8x4", nprobe=16, rerank=600)
    s, i = search(ex, q, 10)
    np.testing.assert_allclose(s, -np.sort(-(q @ c.T), axis=1)[:, :10], atol=1e-6)  # the exact top-10 scores
    np.testing.assert_allclose(s, np.take_along_axis(q @ c.T, i, 1), rtol=1e-5, atol=1e-6)  # of these very rows
    # the reported recall is recall@K of the index's own lists against an independent exact top-K
    cfg = MineConfig(num_negatives=5, index="IVF64,PQ8x4", nprobe=4, recall_sample=10_000)
    res = mine_embeddings(q, c, pos, cfg, show_progress=False)
    K = cfg.effective_range_max() + 1
    idx = build_index(c, "IVF64,PQ8x4", nprobe=4, seed=0)
    ref = recall_at_k(search(idx, q, K)[1], exact_top(q, c, K))
    assert res.recall == pytest.approx(ref) and 0.5 < res.recall < 1.0
    from hardneg.mining.summary import build_summary, format_summary

    text = format_summary(build_summary(res, cfg, n_corpus=len(c)))
    assert f"index IVF64,PQ8x4 recall@K vs exact: {ref:.4f}" in text


def test_merge_topk_and_shard_bounds_against_a_global_sort():
    rng = np.random.default_rng(3)
    S = rng.standard_normal((7, 50)).astype(np.float32)
    parts = []
    for a, b in shard_bounds(50, 3):
        j = np.argsort(-S[:, a:b], axis=1)[:, :4]
        parts.append((np.take_along_axis(S[:, a:b], j, 1), j + a))
    s, i = merge_topk(parts, 4)
    np.testing.assert_array_equal(i, np.argsort(-S, axis=1)[:, :4])
    np.testing.assert_array_equal(s, -np.sort(-S, axis=1)[:, :4])
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    # a shard shorter than k pads with -1, which sorts last
    s2, i2 = merge_topk([(np.array([[0.5, -np.inf]], np.float32), np.array([[4, -1]])),
                         (np.array([[0.7, 0.1]], np.float32), np.array([[9, 8]]))], 3)
    assert i2.tolist() == [[9, 4, 8]]


def test_sharded_search_equals_unsharded(tmp_path):
    # two worker processes, each with half the corpus: exact search merged is exact search
    q, c, pos = clustered(n=3001)
    st = write_store(tmp_path / "c.npy", c, n=len(c), d=64, dtype="float16")
    mem = st.rows(0, len(c))
    with ShardedIndex(st, "flat", 2, threads=1) as sh:
        s, i = search(sh, q, 12)
    es, ei = search(build_index(mem, "flat"), q, 12)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(s, es, rtol=1e-6, atol=1e-6)
    assert sh._procs == []  # workers ended with the context
    # through mine_embeddings: an in-memory corpus is shared through a temporary store
    cfg = MineConfig(num_negatives=4, range_max=20, sampling="uniform", seed=2)
    a = mine_embeddings(q, mem, pos, cfg, show_progress=False)
    b = mine_embeddings(q, mem, pos, MineConfig(**{**vars(cfg), "workers": 2}), show_progress=False)
    np.testing.assert_array_equal(b.neg_ids, a.neg_ids)


@pytest.mark.slow
@pytest.mark.parametrize("index", ["bf16", "IVF16,Flat"])
def test_sharded_exhaustive_indexes_equal_unsharded(tmp_path, index):
    q, c, pos = clustered(n=3001)
    st = write_store(tmp_path / "c.npy", c, n=len(c), d=64, dtype="bfloat16")
    cfg = MineConfig(num_negatives=4, range_max=20, index=index, nprobe=16)
    a = mine_embeddings(q, st, pos, cfg, show_progress=False)
    b = mine_embeddings(q, st, pos, MineConfig(**{**vars(cfg), "workers": 3}), show_progress=False)
    np.testing.assert_array_equal(b.neg_ids, a.neg_ids)
    assert a.recall == b.recall == 1.0


def test_shard_worker_errors_reach_the_caller_as_one_line(tmp_path):
    _, c, _ = clustered(n=100, m=1)
    st = write_store(tmp_path / "c.npy", c, n=100, d=64)
    with pytest.raises(ValueError, match=r"shard \[0, 50\): IVF64,Flat needs at least 64 corpus vectors"):
        ShardedIndex(st, "IVF64,Flat", 2, threads=1)


def test_estimate_counts_by_hand_and_refuses_above_the_limit():
    for text, b in [("16G", 16 * 2**30), ("500MB", 500 * 2**20), ("1.5t", int(1.5 * 2**40)), ("2048", 2048)]:
        assert parse_memory(text) == b
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(ValueError, match="--max-memory"):
            parse_memory(bad)
    n, m, d, K = 5_000_000, 9116, 384, 11
    e16 = estimate_mining(n, m, d, K, index="IVF4096,PQ48", store="float16", base_bytes=0, recall_sample=1000)
    assert e16.memory["corpus embeddings"] == n * d * 2
    assert e16.memory["query embeddings"] == 2 * m * d * 4
    train = max(100_000, 50 * 4096)
    assert e16.memory["index"] == n * (48 + 8) + 4096 * d * 4 + train * d * 4  # PQ48 codes + ids, centroids, sample
    assert e16.peak_bytes == sum(e16.memory.values()) < 16 * 2**30
    mem = estimate_mining(n, m, d, K, index="flat", base_bytes=0, recall_sample=1000)
    assert mem.memory["corpus embeddings"] == mem.memory["index"] == n * d * 4  # the array and FAISS's copy
    assert mem.peak_bytes > 14 * 2**30
    with pytest.raises(ValueError, match=r"^estimated peak memory 1[45]\.\d\d GB exceeds the 8\.00 GB of --max-memory"):
        mem.check("8G")
    mem.check("64G")
    with pytest.raises(ValueError, match="exceeds the .* of available memory"):
        estimate_mining(10**11, m, d, K, index="flat", base_bytes=0).check()
    assert e16.total_s > 0 and all(v >= 0 for v in e16.seconds.values())


def test_cli_prints_the_estimate_and_refuses_above_max_memory(tmp_path, capsys):
    from hardneg.cli import main
    from tests.retrieval_fixtures import POSITIVES, QUERIES

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in zip(QUERIES, POSITIVES)))
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["mine", "--pairs", str(pairs), "--out", str(out), "-n", "1", "--no-cache", "--quiet",
              "--max-memory", "50M"])
    assert e.value.code == 2
    cap = capsys.readouterr()
    assert "estimate: peak memory" in cap.out and "estimate: time" in cap.out
    err = [x for x in cap.err.strip().splitlines() if x.startswith("hardneg")]  # not the model-loading bar
    assert len(err) == 1 and err[0].startswith("hardneg: error: estimated peak memory") and "50 MB" in err[0]
    assert cap.err.strip().splitlines()[-1] == err[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_mine_texts_on_a_store_equals_in_memory(tmp_path, monkeypatch):
    from hardneg.mining import pipeline
    from hardneg.mining.pipeline import mine_texts
    from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES, minilm

    monkeypatch.setattr(pipeline, "STORE_CHUNK", 7)  # several chunks: the store is written piece by piece
    kw = dict(model=minilm(), show_progress=False)
    cfg = MineConfig(num_negatives=2, precision="fp32")
    a = mine_texts(QUERIES, POSITIVES, CORPUS, cfg, **kw)
    lines = []
    b = mine_texts(QUERIES, POSITIVES, CORPUS, replace(cfg, store="float32"), store_dir=tmp_path, log=lines.append,
                   **kw)
    np.testing.assert_array_equal(b.negatives.neg_ids, a.negatives.neg_ids)
    np.testing.assert_allclose(b.negatives.neg_scores, a.negatives.neg_scores, atol=1e-6)
    assert b.summary["store"] == "float32" and a.summary["store"] == "memory"
    assert lines[0].startswith("estimate: peak memory") and b.summary["estimate"]["peak_bytes"] > 0
    assert list(tmp_path.iterdir()) == []  # the temporary store is gone
    c = mine_texts(QUERIES, POSITIVES, CORPUS, replace(cfg, store="float16"), **kw)
    assert (c.negatives.neg_ids == a.negatives.neg_ids).mean() >= 0.9  # 16-bit rounding may swap near-ties


def test_onnx_backends_match_the_torch_model(tmp_path):
    """The exported transformer in ONNX Runtime gives the model's own embeddings; int8 stays close; the
    cache keeps each backend's embeddings apart; the CLI mines with it."""
    pytest.importorskip("onnxruntime")
    from hardneg.mining.encode import encode_texts, load_sentence_model, model_fingerprint
    from hardneg.mining.onnx_encoder import OnnxSentenceEncoder, onnx_encoder
    from hardneg.mining.pipeline import mine_texts
    from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES, minilm

    m = minilm()
    texts = QUERIES + POSITIVES + CORPUS
    ref = m.encode(texts, normalize_embeddings=True, batch_size=8)
    onnx = onnx_encoder(m, "onnx", tmp_path)
    int8 = onnx_encoder(m, "onnx-int8", tmp_path)
    assert (tmp_path / "onnx" / model_fingerprint(m) / "model_int8.onnx").exists()
    # no memory pattern kept per batch shape; the arena stays (docs/scaling_mining.md)
    opts = int8.session.get_session_options()
    assert not opts.enable_mem_pattern and opts.enable_cpu_mem_arena
    got = encode_texts(onnx, texts, precision="fp32", batch_size=5, show_progress=False)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # batches on 1 or 3 workers land in the texts' order, each batch computed alike
    for workers in (1, 3):
        w = OnnxSentenceEncoder(m, tmp_path / "onnx" / model_fingerprint(m), "onnx", threads=workers)
        np.testing.assert_allclose(w.encode(texts, batch_size=5, normalize_embeddings=True), got, atol=1e-6)
    with pytest.raises(ValueError, match="threads"):
        OnnxSentenceEncoder(m, tmp_path, "onnx", threads=0)
    q8 = encode_texts(int8, texts, precision="fp32", show_progress=False)
    cos = (q8 * ref).sum(1)
    assert cos.min() > 0.98 and not np.allclose(q8, ref, atol=1e-3)  # quantized: close, not identical
    assert len({model_fingerprint(m), model_fingerprint(onnx), model_fingerprint(int8)}) == 3
    kw = dict(model=m, show_progress=False, cache_dir=tmp_path)
    a = mine_texts(QUERIES, POSITIVES, CORPUS, MineConfig(num_negatives=2, precision="fp32"), **kw)
    b = mine_texts(QUERIES, POSITIVES, CORPUS, MineConfig(num_negatives=2, precision="fp32", backend="onnx"), **kw)
    np.testing.assert_array_equal(b.negatives.neg_ids, a.negatives.neg_ids)
    assert b.summary["backend"] == "onnx"
    # a model loaded for the run: its torch weights go once the session exists, or, when the files are
    # exported, before the quantization; the encoder encodes and is cached as before, and the pipeline frees
    # only a model it loaded itself
    own = onnx_encoder(load_sentence_model(None), "onnx", tmp_path, own_model=True)  # the files exist: no export
    assert {p.device.type for p in own.model.parameters()} == {"meta"}
    np.testing.assert_array_equal(encode_texts(own, texts, precision="fp32", batch_size=5, show_progress=False), got)
    assert model_fingerprint(own) == model_fingerprint(onnx)
    built = onnx_encoder(load_sentence_model(None), "onnx-int8", tmp_path / "fresh", own_model=True)
    assert {p.device.type for p in built.model.parameters()} == {"meta"}
    assert (tmp_path / "fresh" / "onnx" / model_fingerprint(m) / "model_int8.onnx").exists()
    assert model_fingerprint(built) == model_fingerprint(int8)
    np.testing.assert_allclose(encode_texts(built, texts, precision="fp32", show_progress=False), q8, atol=1e-6)
    c = mine_texts(QUERIES, POSITIVES, CORPUS, MineConfig(num_negatives=2, precision="fp32", backend="onnx"),
                   **{**kw, "model": None})
    np.testing.assert_array_equal(c.negatives.neg_ids, b.negatives.neg_ids)
    assert {p.device.type for p in m.parameters()} == {"cpu"}


def test_token_batches_cap_rows_and_padded_tokens():
    """Rows sorted longest first are cut into batches of ≤ batch_size rows and ≤ max_tokens padded
    tokens (rows × the first row's length); a row longer than max_tokens stands alone."""
    from hardneg.mining.token_batching import token_batches

    lengths = np.array([300, 100, 100, 60, 50, 50, 50, 10, 10, 10, 10, 10])
    got = token_batches(lengths, batch_size=4, max_tokens=200)
    # by hand: 300 > 200 alone; 100 → 2 rows; 60 → 3 rows (60, 50, 50); 50 → 4 rows (50, 10, 10, 10);
    # 10 → 2 remaining rows
    assert got == [(0, 1), (1, 3), (3, 6), (6, 10), (10, 12)]
    for lo, hi in got:
        assert hi - lo <= 4 and (hi - lo == 1 or (hi - lo) * lengths[lo] <= 200)
    assert token_batches(lengths[:0], 4, 200) == []


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_batched_torch_encoder_matches_sentence_transformers(side):
    """Batches by length in tokens, trimmed to their longest row on the tokenizer's padding side, give
    the model's own embeddings: with batch 1 (no padding at all) equal to ``encode`` at batch 1, with
    larger batches within float rounding of it; a cap of 8 tokens still encodes every text."""
    from hardneg.mining.token_batching import TorchSentenceEncoder, batchable
    from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES, minilm

    m = minilm()
    texts = QUERIES + POSITIVES + CORPUS
    assert batchable(m) and not batchable(object())
    tok = m[0].tokenizer
    old = tok.padding_side
    tok.padding_side = side
    try:
        ref1 = m.encode(texts, batch_size=1, normalize_embeddings=True)
        enc = TorchSentenceEncoder(m)
        with torch.inference_mode():
            np.testing.assert_allclose(enc.encode(texts, batch_size=1, normalize_embeddings=True), ref1, atol=1e-6)
            if side == "right":  # left padding shifts BERT's positions: only batch 1 is padding-free
                for bs, cap in ((7, 512), (64, 8)):
                    got = TorchSentenceEncoder(m, max_tokens=cap).encode(texts, batch_size=bs,
                                                                         normalize_embeddings=True)
                    np.testing.assert_allclose(got, ref1, atol=2e-5)
    finally:
        tok.padding_side = old
    with pytest.raises(ValueError, match="max_tokens"):
        TorchSentenceEncoder(m, max_tokens=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_token_batched_torch_encoder_on_cuda():
    """A model on a GPU encodes there (features moved to its device) and gives the CPU model's embeddings."""
    from hardneg.mining.encode import load_sentence_model
    from hardneg.mining.token_batching import TorchSentenceEncoder
    from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES

    texts = QUERIES + POSITIVES + CORPUS
    ref = load_sentence_model(None).encode(texts, batch_size=1, normalize_embeddings=True)
    with torch.inference_mode():
        got = TorchSentenceEncoder(load_sentence_model(None).to("cuda")).encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(got, ref, atol=1e-4)
