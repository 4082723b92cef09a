"""Mining beyond memory: a memory-mapped 5,000,000 × 384 synthetic corpus, 9,116 queries; time, peak RSS,
recall@10 against exact search — and sentence-transformers' `mine_hard_negatives` on the largest corpus it
can hold, in the same run.

The corpus is clustered like real sentence embeddings are (uniformly random unit vectors have no
neighbourhoods: their nearest neighbours are barely nearer than any other vector, and no IVF or graph
index can find them without scanning everything): ``n / 50`` random centres, each row a centre plus
isotropic noise (cosine ≈ 0.78 to its centre, ≈ 0.6 between two rows of one cluster), normalised;
queries are noisy copies of random corpus rows, which are their positives. It is written once, in
100,000-row blocks, to a float16 ``.npy`` store (3.8 GB at 5M) under ``--data-dir`` and reused.

Measured, each in its own subprocess so that peak RSS (``VmHWM``; the store's pages that a search
touches count) is per method:

1. hardneg: ``build_index`` on the store (``--index``, default ``IVF4096,PQ48`` with exact re-scoring)
   and ``mine_embeddings`` (5 negatives, "top"); then recall@10 of the index against exact search
   (streamed over the store) on ``--recall-sample`` queries. With ``--workers N`` the search is sharded
   over N processes, whose peak RSS (VmHWM) is added.
2. sentence-transformers (``use_faiss=True``: exact ``IndexFlatIP``) on the first ``--st-n`` corpus rows
   plus the queries' positives (default: the largest multiple of 100,000 rows whose float32 embeddings,
   FAISS's copy and ST's working memory — ~3.8 KB per row at d=384, measured at 1M — fit in 80 % of
   the available memory), fed the same float32 vectors through its cache folder;
3. hardneg on exactly that corpus with ``--st-index`` (default ``auto``), for a like-for-like row with
   the overlap of the mined negatives.

Run:  python benchmarks/mining_scale.py [--n 5000000 --queries 9116] [--index IVF4096,PQ48 --nprobe 64]
      [--st-n N | --skip-st] [--data-dir DIR] [--out results.json]
Timings depend on load: publish only numbers measured on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from hardneg.bench.memory import peak_rss_mb, run_worker, serve_worker  # noqa: E402

ST_BYTES_PER_ROW_384 = 3.8e3  # sentence-transformers' peak RSS per corpus row at d=384 (1M rows: 3,729 MB)


def make_corpus(folder: str, n: int, n_q: int, d: int = 384, seed: int = 0) -> dict:
    """The clustered synthetic corpus (float16 store), queries and positives; reused when present."""
    import numpy as np

    from hardneg.mining.store import EmbeddingStore, write_store

    meta = {"n": n, "queries": n_q, "d": d, "seed": seed, "kind": "clustered-v1"}
    paths = {k: os.path.join(folder, f"{k}.npy") for k in ("corpus", "queries", "positives")}
    mpath = os.path.join(folder, "meta.json")
    if os.path.exists(mpath) and all(map(os.path.exists, paths.values())):
        with open(mpath) as f:
            if json.load(f) == meta:
                return paths
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_c = max(1, n // 50)
    centres = rng.standard_normal((n_c, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def blocks():
        for a in range(0, n, 100_000):
            r = np.random.default_rng([seed, a])
            z = r.integers(0, n_c, min(100_000, n - a))
            x = centres[z] + 0.8 * r.standard_normal((len(z), d), dtype=np.float32) / np.sqrt(d)
            yield x / np.linalg.norm(x, axis=1, keepdims=True)

    store = write_store(paths["corpus"], blocks(), n=n, d=d, dtype="float16")
    pos = np.sort(rng.choice(n, n_q, replace=False))
    q = store.take(pos) + 0.5 * rng.standard_normal((n_q, d), dtype=np.float32) / np.sqrt(d)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    np.save(paths["queries"], q.astype(np.float32))
    np.save(paths["positives"], pos)
    with open(mpath, "w") as f:
        json.dump(meta, f)
    assert EmbeddingStore(paths["corpus"]).shape == (n, d)
    return paths


def _children_hwm_mb(pids) -> float:
    return sum(peak_rss_mb(pid) for pid in pids)


def worker(spec: dict) -> dict:
    """One measured run in this fresh process."""
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    import faiss

    faiss.omp_set_num_threads(spec["threads"])
    from hardneg.mining.estimate import estimate_mining
    from hardneg.mining.mine import MineConfig, mine_embeddings
    from hardneg.mining.store import EmbeddingStore
    from hardneg.vector_search import build_index, measure_recall

    q = np.load(spec["queries"])
    pos = np.load(spec["positives"])
    rss0 = peak_rss_mb()
    out: dict = {"method": spec["method"], "rss_before_mb": rss0}
    if spec["method"] == "st":
        import datasets  # type: ignore[import-untyped]  # datasets ships no type information
        from sentence_transformers.util import mine_hard_negatives

        from hardneg.mining.encode import load_sentence_model

        model = load_sentence_model(None)
        corpus = [f"d{j}" for j in range(spec["st_n"])]
        ds = datasets.Dataset.from_dict({"query": [f"q{i}" for i in range(len(q))],
                                         "positive": [f"d{j}" for j in pos]})
        t0 = time.perf_counter()
        res = mine_hard_negatives(ds, model, corpus=corpus, num_negatives=5, sampling_strategy="top",
                                  output_format="n-tuple", use_faiss=True, verbose=False,
                                  cache_folder=spec["st_cache"])
        out["seconds"] = {"mine": time.perf_counter() - t0}
        out["negs"] = {r["query"]: [r[f"negative_{i}"] for i in range(1, 6)] for r in res}
    else:
        store = EmbeddingStore(spec["store"])
        cfg = MineConfig(num_negatives=5, index=spec["index"], nprobe=spec["nprobe"], rerank=spec["rerank"],
                         recall_sample=0, workers=spec["workers"])
        est = estimate_mining(store.shape[0], len(q), store.d, 6, index=cfg.index, store=store.dtype,
                              workers=cfg.workers, nprobe=cfg.nprobe, rerank=cfg.rerank,
                              recall_sample=spec["recall_sample"])
        out["estimate"] = est.as_dict()
        t0 = time.perf_counter()
        if cfg.workers > 1:
            from hardneg.mining.shard import ShardedIndex

            index = ShardedIndex(store, cfg.index, cfg.workers, nprobe=cfg.nprobe, rerank=cfg.rerank)
        else:
            index = build_index(store, cfg.index, nprobe=cfg.nprobe, rerank=cfg.rerank)
        t1 = time.perf_counter()
        # both read a memory-mapped store as well as an array (their docstrings); the annotations name arrays
        res = mine_embeddings(q, store, pos, cfg, index=index, show_progress=False)  # type: ignore[arg-type]
        t2 = time.perf_counter()
        rec = (measure_recall(store, q, index, 10, sample=spec["recall_sample"])  # type: ignore[arg-type]
               if spec["recall_sample"] else None)
        t3 = time.perf_counter()
        out["seconds"] = {"build": t1 - t0, "search_and_mine": t2 - t1, "recall_check": t3 - t2}
        out["recall_at_10"] = rec
        out["workers_peak_mb"] = _children_hwm_mb([p.pid for p in getattr(index, "_procs", [])])
        if cfg.workers > 1:
            index.close()
        names = np.load(spec["rows"]) if spec.get("rows") else np.arange(store.shape[0])  # store row -> corpus row
        out["negs"] = {f"q{i}": [f"d{names[j]}" for j in row if j >= 0]
                       for i, row in enumerate(res.neg_ids)}
    out["peak_rss_mb"] = peak_rss_mb() + out.get("workers_peak_mb", 0.0)
    return out


def run_sub(spec: dict) -> dict:
    return run_worker(__file__, spec, quiet=False)


def overlap(a: dict, b: dict) -> float:
    keys = [k for k in a if k in b]
    return sum(len(set(a[k]) & set(b[k])) / max(len(b[k]), 1) for k in keys) / max(len(keys), 1)


def st_size(n: int) -> int:
    from hardneg.mining.estimate import available_memory

    fit = int(0.8 * available_memory()[0] / ST_BYTES_PER_ROW_384) // 100_000 * 100_000
    return max(100_000, min(n, fit))


def main() -> None:
    if serve_worker(worker):
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5_000_000)
    ap.add_argument("--queries", type=int, default=9116)
    ap.add_argument("--index", default="IVF4096,PQ48")
    ap.add_argument("--nprobe", type=int, default=64)
    ap.add_argument("--rerank", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--recall-sample", type=int, default=1000)
    ap.add_argument("--st-n", type=int, default=None, help="ST's corpus rows (default: the largest that fits)")
    ap.add_argument("--st-index", default="auto", help="hardneg's index for the like-for-like row")
    ap.add_argument("--skip-st", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "hardneg-mining-scale"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import numpy as np

    t0 = time.perf_counter()
    paths = make_corpus(a.data_dir, a.n, a.queries)
    print(json.dumps({"corpus_ready_s": round(time.perf_counter() - t0, 1), **paths}), flush=True)
    base = {"threads": a.threads, "queries": paths["queries"], "positives": paths["positives"]}
    ours = run_sub({**base, "method": "hardneg", "store": paths["corpus"], "index": a.index, "nprobe": a.nprobe,
                    "rerank": a.rerank, "workers": a.workers, "recall_sample": a.recall_sample})
    rows = [{"case": f"hardneg {a.n:,} x 384 float16 store, {a.queries:,} queries, {a.index} nprobe={a.nprobe}"
                     f" rerank={a.rerank} workers={a.workers}",
             "seconds": {k: round(v, 1) for k, v in ours["seconds"].items()},
             "peak_rss_mb": round(ours["peak_rss_mb"]), "recall_at_10": ours["recall_at_10"],
             "estimated_peak_mb": round(ours["estimate"]["peak_bytes"] / 2**20),
             "estimated_s": round(ours["estimate"]["total_s"], 1)}]
    print(json.dumps(rows[-1]), flush=True)
    if not a.skip_st:
        from hardneg.mining.encode import load_sentence_model
        from hardneg.mining.st_compat import inject_st_cache
        from hardneg.mining.store import EmbeddingStore, write_store

        n_st = a.st_n or st_size(a.n)
        store = EmbeddingStore(paths["corpus"])
        pos = np.load(paths["positives"])
        q = np.load(paths["queries"])
        with tempfile.TemporaryDirectory(dir=a.data_dir) as tmp:
            # ST's corpus: rows [0, n_st) and the positives beyond them, in ST's own order
            rows_st = np.concatenate([np.arange(n_st), np.unique(pos[pos >= n_st])])
            np.save(os.path.join(tmp, "rows_st.npy"), rows_st)
            inject_st_cache(tmp, load_sentence_model(None), [f"q{i}" for i in range(len(q))],
                            [f"d{j}" for j in pos], [f"d{j}" for j in range(n_st)], lambda t: q,
                            lambda t: np.concatenate([store.rows(0, n_st), store.take(rows_st[n_st:])]))
            st = run_sub({**base, "method": "st", "st_n": n_st, "st_cache": tmp})
            sub = write_store(os.path.join(tmp, "st_corpus.npy"),
                              (store.take(rows_st[i : i + 100_000]) for i in range(0, len(rows_st), 100_000)),
                              n=len(rows_st), d=store.d, dtype="float16")
            np.save(os.path.join(tmp, "pos_st.npy"), np.searchsorted(rows_st, pos))
            like = run_sub({**base, "method": "hardneg", "store": str(sub.path), "index": a.st_index,
                            "positives": os.path.join(tmp, "pos_st.npy"), "nprobe": a.nprobe, "rerank": a.rerank,
                            "workers": 1, "recall_sample": a.recall_sample,
                            "rows": os.path.join(tmp, "rows_st.npy")})
        rows.append({"case": f"sentence-transformers on {len(rows_st):,} rows (largest it holds here)",
                     "seconds": {k: round(v, 1) for k, v in st["seconds"].items()},
                     "peak_rss_mb": round(st["peak_rss_mb"])})
        print(json.dumps(rows[-1]), flush=True)
        rows.append({"case": f"hardneg on the same {len(rows_st):,} rows, index {a.st_index}",
                     "seconds": {k: round(v, 1) for k, v in like["seconds"].items()},
                     "peak_rss_mb": round(like["peak_rss_mb"]), "recall_at_10": like["recall_at_10"],
                     "negatives_overlap_with_st": round(overlap(like["negs"], st["negs"]), 4)})
        print(json.dumps(rows[-1]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
