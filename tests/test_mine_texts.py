"""Text-level mining with the real all-MiniLM-L6-v2: sentence-transformers' mine_hard_negatives as the
oracle, the embedding cache, input/output formats and the CLI's error policy."""

import json

import numpy as np
import pytest

from hardneg.mining.encode import encode_texts
from hardneg.mining.formats import build_rows, read_corpus, read_pairs, write_rows
from hardneg.mining.mine import MineConfig
from hardneg.mining.pipeline import mine_texts
from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES, minilm


def test_fp32_encoding_matches_sentence_transformers_and_bf16_is_close():
    m = minilm()
    texts = QUERIES + POSITIVES
    ref = m.encode(texts, normalize_embeddings=True, batch_size=8)
    got = encode_texts(m, texts, precision="fp32", show_progress=False)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    bf = encode_texts(m, texts, precision="bf16", show_progress=False)
    assert (bf * ref).sum(1).min() > 0.999


def test_embedding_cache_reuses_and_is_keyed_by_text(tmp_path):
    m = minilm()
    a = encode_texts(m, QUERIES[:3], precision="fp32", cache_dir=tmp_path, show_progress=False)
    shards = list(tmp_path.rglob("shard-*.npz"))
    assert len(shards) == 1
    # second call: two texts cached, one new -> one new shard holding only the new text
    b = encode_texts(m, [QUERIES[1], QUERIES[3], QUERIES[0], QUERIES[1]], precision="fp32", cache_dir=tmp_path,
                     show_progress=False)
    np.testing.assert_array_equal(b[0], a[1])
    np.testing.assert_array_equal(b[2], a[0])
    np.testing.assert_array_equal(b[3], a[1])
    shards = sorted(tmp_path.rglob("shard-*.npz"))
    assert len(shards) == 2 and min(np.load(s)["keys"].shape[0] for s in shards) == 1
    ref = m.encode([QUERIES[3]], normalize_embeddings=True)
    np.testing.assert_allclose(b[1], ref[0], atol=2e-5)


@pytest.mark.parametrize("kw", [{}, {"relative_margin": 0.05}, {"range_min": 2, "range_max": 8}])
def test_top_mining_matches_sentence_transformers(kw):
    datasets = pytest.importorskip("datasets")
    from sentence_transformers.util import mine_hard_negatives

    m = minilm()
    ds = datasets.Dataset.from_dict({"query": QUERIES, "positive": POSITIVES})
    st = mine_hard_negatives(ds, m, corpus=CORPUS, num_negatives=2, sampling_strategy="top",
                             output_format="triplet", use_faiss=True, verbose=False, batch_size=8, **kw)
    ours = mine_texts(QUERIES, POSITIVES, CORPUS, model=m, show_progress=False,
                      config=MineConfig(num_negatives=2, dedupe=False, precision="fp32", format="triplet", **kw))
    st_set = sorted((r["query"], r["negative"]) for r in st)
    our_set = sorted((r["anchor"], r["negative"]) for r in ours.rows)
    assert our_set == st_set


def test_formats_roundtrip_and_layouts(tmp_path):
    m = minilm()
    res = mine_texts(QUERIES, POSITIVES, CORPUS, model=m, show_progress=False,
                     config=MineConfig(num_negatives=2, precision="fp32", format="n-tuple", scores=True))
    r0 = res.rows[0]
    assert list(r0) == ["anchor", "positive", "negative_1", "negative_2", "scores"]
    e = m.encode([r0["anchor"], r0["positive"], r0["negative_1"]], normalize_embeddings=True)
    assert r0["scores"][0] == pytest.approx(float(e[0] @ e[1]), abs=1e-4)
    assert r0["scores"][1] == pytest.approx(float(e[0] @ e[2]), abs=1e-4)
    for fmt, n_rows in (("triplet", 12), ("labeled-pair", 18)):
        rows, dropped = build_rows(res.queries, res.positives, res.corpus, res.negatives.neg_ids,
                                   res.negatives.neg_scores, res.negatives.pos_scores, fmt, False)
        assert len(rows) == n_rows and dropped == 0
    lp, _ = build_rows(res.queries, res.positives, res.corpus, res.negatives.neg_ids, res.negatives.neg_scores,
                       res.negatives.pos_scores, "labeled-pair", False)
    assert [r["label"] for r in lp[:3]] == [1, 0, 0]
    import importlib.util

    exts = ("jsonl", "csv", "parquet") if importlib.util.find_spec("pyarrow") else ("jsonl", "csv")
    for ext in exts:
        p = tmp_path / f"out.{ext}"
        write_rows(res.rows, p)
        if ext != "csv":
            q, pos, _ = read_pairs(p, query_column="anchor")
            assert q == QUERIES and pos == POSITIVES
    assert not list(tmp_path.glob(".*.tmp"))
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"anchor": QUERIES, "positive": POSITIVES, "labels": [["a"]] * 6})
    q, pos, labels = read_pairs(ds)
    assert q == QUERIES and pos == POSITIVES and labels == [["a"]] * 6


def test_read_pairs_errors_name_the_line(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text('{"query": "a", "positive": "b"}\n{"query": "c", "positive": "d"\n')
    with pytest.raises(ValueError, match="line 2: malformed JSON"):
        read_pairs(p)
    p.write_text('{"query": "a", "positive": "b"}\n{"query": "c"}\n')
    with pytest.raises(ValueError, match="line 2: query without a positive"):
        read_pairs(p)
    p.write_text('{"query": "a", "positive": "b"}\n\n')
    with pytest.raises(ValueError, match="line 2: empty line"):
        read_pairs(p)
    p.write_text('{"query": "  ", "positive": "b"}\n')
    with pytest.raises(ValueError, match="line 1: empty 'query'"):
        read_pairs(p)
    c = tmp_path / "pairs.csv"
    c.write_text("query,positive\na,b\nc\n")
    with pytest.raises(ValueError, match="line 3"):
        read_pairs(c)
    with pytest.raises(FileNotFoundError):
        read_pairs(tmp_path / "nope.jsonl")
    t = tmp_path / "corpus.txt"
    t.write_text("x\n\ny\n")
    with pytest.raises(ValueError, match="line 2"):
        read_corpus(t)


def _cli(args):
    from hardneg.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_cli_errors_exit_2_without_output(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in zip(QUERIES, POSITIVES)))
    out = tmp_path / "out.jsonl"
    cases = [
        ["--pairs", str(pairs), "--out", str(out), "--format", "quadruplet"],
        ["--pairs", str(pairs), "--out", str(out), "--model", str(tmp_path / "no-model")],
        ["--pairs", str(tmp_path / "missing.jsonl"), "--out", str(out)],
        ["--pairs", str(pairs), "--out", str(tmp_path / "out.xlsx")],
        ["--out", str(out)],
        # corpus (6 positives + 0) smaller than the window
        ["--pairs", str(pairs), "--out", str(out), "--num-negatives", "10", "--no-cache", "--quiet"],
    ]
    for args in cases:
        assert _cli(["mine", *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("hardneg: error:") and "\n" not in err, err
        assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_cli_mines_and_writes_summary(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in zip(QUERIES, POSITIVES)))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    out = tmp_path / "neg.jsonl"
    code = _cli(["mine", "--pairs", str(pairs), "--corpus", str(corpus), "--out", str(out), "-n", "2",
                 "--format", "n-tuple", "--precision", "fp32", "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6 and all("negative_2" in r for r in rows)
    s = json.loads((tmp_path / "neg.jsonl.summary.json").read_text())
    assert s["queries"] == 6 and s["negatives_selected"] == 12 and s["corpus"] == 20
    assert "negatives selected 12 / 12" in capsys.readouterr().out
    assert _cli(["mine", "--pairs", str(pairs), "--out", str(out)]) == 2  # exists, no --overwrite


def test_st_cache_injection_runs_st_on_our_embeddings(tmp_path):
    """ST's mine_hard_negatives on injected random embeddings gives the same negatives as ours on them."""
    datasets = pytest.importorskip("datasets")
    from sentence_transformers.util import mine_hard_negatives

    from hardneg.mining.mine import mine_embeddings
    from hardneg.mining.pipeline import prepare_corpus
    from hardneg.mining.st_compat import inject_st_cache

    m = minilm()
    rng = np.random.default_rng(0)
    texts, pos_ids, _ = prepare_corpus(POSITIVES, CORPUS)
    c = rng.standard_normal((len(texts), 384)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q = c[pos_ids] + 0.5 * rng.standard_normal((len(QUERIES), 384)).astype(np.float32) / 20
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    inject_st_cache(tmp_path, m, QUERIES, POSITIVES, CORPUS, lambda t: q, lambda t: c)
    ds = datasets.Dataset.from_dict({"query": QUERIES, "positive": POSITIVES})
    st = mine_hard_negatives(ds, m, corpus=CORPUS, num_negatives=3, output_format="n-tuple", use_faiss=True,
                             verbose=False, cache_folder=str(tmp_path))
    ours = mine_embeddings(q, c, pos_ids, MineConfig(num_negatives=3), show_progress=False)
    for i, r in enumerate(st):
        assert [r[f"negative_{k}"] for k in (1, 2, 3)] == [texts[j] for j in ours.neg_ids[i]]


def test_bi_encoder_guide_equals_margin_filter_for_the_same_model():
    # guiding with the mining model itself: g = s, so "g(q,n) <= g(q,p) - 0" is absolute_margin=0
    m = minilm()
    kw = dict(num_negatives=2, range_max=10, precision="fp32", format="triplet")
    a = mine_texts(QUERIES, POSITIVES, CORPUS, MineConfig(guide_margin=0.0, **kw), model=m, show_progress=False,
                   guide=m)
    b = mine_texts(QUERIES, POSITIVES, CORPUS, MineConfig(absolute_margin=0.0, **kw), model=m, show_progress=False)
    np.testing.assert_array_equal(a.negatives.neg_ids, b.negatives.neg_ids)
    assert a.negatives.removed["guide"] == b.negatives.removed["absolute_margin"]


def test_bf16_linear_weights_give_the_autocast_embeddings_bit_for_bit():
    """A model loaded for the run keeps its linear layers in bfloat16: the same embeddings as bf16 autocast
    over the float32 weights, the same cache key; the pipeline does it only for a model it loads itself."""
    import torch

    from hardneg.mining.encode import load_sentence_model, model_fingerprint, store_linear_weights_in_bf16

    m = minilm()
    texts = QUERIES + POSITIVES + CORPUS
    ref = encode_texts(m, texts, precision="bf16", batch_size=5, show_progress=False)
    own = load_sentence_model(None)
    store_linear_weights_in_bf16(own)
    linear = [mod for mod in own.modules() if isinstance(mod, torch.nn.Linear)]
    assert len(linear) >= 36 and all(mod.weight.dtype == torch.bfloat16 for mod in linear)
    assert all(p.dtype == torch.float32 for mod in own.modules() if not isinstance(mod, torch.nn.Linear)
               for p in mod.parameters(recurse=False))
    np.testing.assert_array_equal(encode_texts(own, texts, precision="bf16", batch_size=5, show_progress=False), ref)
    assert model_fingerprint(own) == model_fingerprint(m)
    cfg = MineConfig(num_negatives=2)
    a = mine_texts(QUERIES, POSITIVES, CORPUS, cfg, model=m, show_progress=False)
    b = mine_texts(QUERIES, POSITIVES, CORPUS, cfg, model=None, show_progress=False)  # loaded: its own
    np.testing.assert_array_equal(b.negatives.neg_ids, a.negatives.neg_ids)
    np.testing.assert_array_equal(b.negatives.neg_scores, a.negatives.neg_scores)
    assert all(p.dtype == torch.float32 for p in m.parameters())  # the caller's model is left as it is


_ENCODE_IN_A_FRESH_PROCESS = """
import os, sys
import numpy as np
import torch
torch.set_num_threads(1)
from hardneg.mining.encode import encode_texts, load_sentence_model, store_linear_weights_in_bf16
from hardneg.mining.token_batching import cap_kernel_caches
from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES
cap_kernel_caches()
model = load_sentence_model(None)
store_linear_weights_in_bf16(model)
np.save(sys.argv[1], encode_texts(model, QUERIES + POSITIVES + CORPUS, precision="bf16", batch_size=3,
                                  show_progress=False))
print(os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"], os.environ["LRU_CACHE_CAPACITY"])
"""


def test_capped_kernel_caches_give_the_same_embeddings_bit_for_bit(tmp_path):
    """oneDNN's and ideep's kernel caches capped (`KERNEL_CACHE_ENTRIES`, what a mining run sets) against their
    1,024-entry defaults, each in a fresh process (the libraries read the capacity once): the same bf16
    embeddings bit for bit, from batches of many shapes (batch 3 over texts of many lengths); a capacity
    set in the environment is kept. At 2 entries, below one forward pass's kernels, the same again."""
    import os
    import subprocess
    import sys

    from hardneg.mining.token_batching import KERNEL_CACHE_ENTRIES

    def run(name: str, **env: str) -> tuple[np.ndarray, list[str]]:
        base = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                                                                  "LRU_CACHE_CAPACITY")}
        base["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        out = subprocess.run([sys.executable, "-c", _ENCODE_IN_A_FRESH_PROCESS, str(tmp_path / name)],
                             env={**base, **env}, capture_output=True, text=True, check=True)
        return np.load(tmp_path / f"{name}.npy"), out.stdout.split()

    capped, capacities = run("capped")
    assert capacities == [str(KERNEL_CACHE_ENTRIES)] * 2
    default, capacities = run("default", ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024", LRU_CACHE_CAPACITY="1024")
    assert capacities == ["1024", "1024"]
    tiny, capacities = run("tiny", ONEDNN_PRIMITIVE_CACHE_CAPACITY="2", LRU_CACHE_CAPACITY="2")
    assert capacities == ["2", "2"]
    assert capped.shape == (len(QUERIES + POSITIVES + CORPUS), 384)
    np.testing.assert_array_equal(capped, default)
    np.testing.assert_array_equal(tiny, default)
