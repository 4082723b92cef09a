"""Mining speed and peak memory: `hardneg mine` vs sentence-transformers' `mine_hard_negatives`.

Case A (WordNet): example→definition pairs of the noun train+dev+test splits, corpus = all noun
definitions, all-MiniLM-L6-v2, 5 negatives, "top"; ST with use_faiss=True (exact IndexFlatIP),
hardneg with --index (default "bf16": bf16 coarse search + exact float32 re-scoring). Measured
  A1 end to end from texts, cold, loading the model included (ST: its encode at batch 32, fp32; hardneg:
     given the model's folder as `hardneg mine` is, bf16 autocast, dedupe, batch 64, or --backend onnx /
     onnx-int8), each in its own subprocess so peak RSS is per method;
     with an ONNX backend hardneg runs twice: a first run that exports the model inside the measured
     time, and a later run whose exported files exist (embeddings still cold);
  A2 on the SAME embeddings (ST reads them from its cache_folder, hardneg gets the arrays).
  Recall: overlap of hardneg's mined negatives with ST's (same embeddings: should be 1.0; end to
  end: bf16 vs fp32 embeddings).
Case B (synthetic): 1M random unit vectors d=384 as corpus, 9,116 queries, precomputed embeddings,
  both on the same arrays (ST via cache_folder).

Run:  python benchmarks/mining_speed.py [--pairs N] [--e2e-pairs N --e2e-corpus M] [--skip-e2e] [--skip-same]
                                      [--kernel-cache 16,64,1024 [--kernel-cache-only]]
                                      [--synthetic-n 1000000 --synthetic-q 9116] [--backend torch,onnx-int8]
Prints time and peak-memory ratios (ST / hardneg); peak memory = max RSS of each subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from hardneg.bench.memory import peak_rss_mb, run_worker, serve_worker  # noqa: E402
from hardneg.cores import describe_cpu  # noqa: E402


def wordnet_pairs(n: int | None, corpus_cap: int | None = None):
    from hardneg.data.wordnet import build_corpus, build_pairs, load_synsets

    syn = load_synsets("noun")
    rows = build_pairs(syn)
    if n:
        rows = rows[:n]
    corpus, _ = build_corpus(syn)
    if corpus_cap:
        corpus = corpus[:corpus_cap]
    return [r["query"] for r in rows], [r["positive"] for r in rows], corpus


def synthetic(path: str, n_corpus: int, n_q: int, d: int = 384, seed: int = 0) -> None:
    """1M random unit vectors (corpus) and queries near random corpus rows, saved to ``path`` (.npz)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = np.empty((n_corpus, d), dtype=np.float32)
    for a in range(0, n_corpus, 100_000):  # in blocks: keep the parent's memory low
        b = rng.standard_normal((min(100_000, n_corpus - a), d), dtype=np.float32)
        c[a : a + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
    pos = rng.choice(n_corpus, n_q, replace=False)
    q = c[pos] + 0.8 * rng.standard_normal((n_q, d), dtype=np.float32) / np.sqrt(d)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    np.save(path + ".c.npy", c)
    np.save(path + ".q.npy", q)
    np.save(path + ".pos.npy", pos)


def prepare_st_cache(folder: str, queries, positives, corpus, q_emb, c_emb) -> None:
    """Write ST's cache files (done in the parent, not timed, not in the measured process)."""
    from hardneg.mining.encode import load_sentence_model
    from hardneg.mining.st_compat import inject_st_cache

    model = load_sentence_model(None)
    inject_st_cache(folder, model, queries, positives, corpus, lambda t: q_emb, lambda t: c_emb)


def worker(spec: dict) -> dict:
    """One measured run in this (fresh) process; peak RSS is this process's."""
    import numpy as np
    import torch

    torch.set_num_threads(spec.get("threads", 2))
    import faiss

    faiss.omp_set_num_threads(spec.get("threads", 2))
    from hardneg.mining.encode import encode_texts, load_sentence_model

    method, case = spec["method"], spec["case"]
    if spec.get("kernel_cache"):  # before the first oneDNN product; `cap_kernel_caches` keeps what is set
        for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
            os.environ[name] = str(spec["kernel_cache"])
    if case.startswith("wordnet"):
        queries, positives, corpus = wordnet_pairs(spec.get("pairs"), spec.get("corpus_cap"))
    else:
        n_q = spec["synthetic_q"]
        queries = [f"q{i}" for i in range(n_q)]
        pos = np.load(spec["syn"] + ".pos.npy")
        if method == "st":
            corpus = [f"d{j}" for j in range(spec["synthetic_n"])]
            positives = [corpus[j] for j in pos]
    if case == "wordnet_e2e" and spec.get("onnx_from"):  # ONNX files exported beforehand (a later run's case)
        import shutil

        cache = spec.get("cache_dir") or tempfile.mkdtemp(prefix="hncache")
        shutil.copytree(spec["onnx_from"], os.path.join(cache, "onnx"))
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    # end to end, loading the model is part of the measured run, and hardneg loads it itself as `hardneg mine`
    # does (a model it loaded is its own: with an ONNX backend it frees the torch weights the session replaces)
    model = None if (case == "wordnet_e2e" and method == "hardneg") else load_sentence_model(None)
    if case != "wordnet_e2e":  # the same-embeddings cases time the mining alone
        t0 = time.perf_counter()
    if method == "st":
        import datasets  # type: ignore[import-untyped]  # datasets ships no type information
        from sentence_transformers.util import mine_hard_negatives

        cache = spec.get("st_cache")  # None for the cold end-to-end case
        ds = datasets.Dataset.from_dict({"query": queries, "positive": positives})
        out = mine_hard_negatives(ds, model, corpus=corpus, num_negatives=5, sampling_strategy="top",
                                  output_format="n-tuple", use_faiss=True, batch_size=32, verbose=False,
                                  cache_folder=cache)
        elapsed = time.perf_counter() - t0
        negs = {r["query"]: [r[f"negative_{i}"] for i in range(1, 6)] for r in out}
    else:
        from hardneg.mining.mine import MineConfig, mine_embeddings
        from hardneg.mining.pipeline import mine_texts, prepare_corpus
        from hardneg.mining.token_batching import cap_kernel_caches

        cap_kernel_caches()  # as `hardneg mine`, whose process this worker measures, does before encoding

        # recall is checked below as the overlap with ST's exact (flat FAISS) negatives, not inside the timing
        cfg = MineConfig(num_negatives=5, dedupe=False, index=spec.get("index", "bf16"), recall_sample=0)
        if case == "wordnet_e2e":
            # cold: a fresh, empty embedding cache (filling it is part of the measured time)
            if not spec.get("onnx_from"):
                cache = spec.get("cache_dir") or tempfile.mkdtemp(prefix="hncache")
            backend = spec.get("backend", "torch")
            cfg = replace(cfg, format="n-tuple", precision="bf16", batch_size=64, backend=backend)
            res = mine_texts(queries, positives, corpus, cfg, model=model, show_progress=True, cache_dir=cache)
            elapsed = time.perf_counter() - t0
            negs = {r["anchor"]: [r[f"negative_{i}"] for i in range(1, 6)] for r in res.rows}
            if spec.get("save_emb"):  # from the cache just filled (not timed)
                model = load_sentence_model(None)
                texts, _, _ = prepare_corpus(positives, corpus)
                qe = encode_texts(model, list(dict.fromkeys(queries)), precision="bf16", show_progress=False,
                                  cache_dir=cache)
                ce = encode_texts(model, texts, precision="bf16", show_progress=False, cache_dir=cache)
                np.save(spec["save_emb"] + ".q.npy", qe)
                np.save(spec["save_emb"] + ".c.npy", ce)
            if not spec.get("cache_dir"):
                import shutil

                shutil.rmtree(cache, ignore_errors=True)
        else:
            if case == "wordnet_same":
                texts, pos_ids, _ = prepare_corpus(positives, corpus)
                uq = list(dict.fromkeys(queries))
                qrow = {t: i for i, t in enumerate(uq)}
                q_emb = np.load(spec["emb"] + ".q.npy")[[qrow[t] for t in queries]]
                c_emb = np.load(spec["emb"] + ".c.npy")
                t0 = time.perf_counter()
                r = mine_embeddings(q_emb, c_emb, pos_ids, cfg, show_progress=False)
                elapsed = time.perf_counter() - t0
                negs = {queries[i]: [texts[j] for j in r.neg_ids[i] if j >= 0] for i in range(len(queries))}
            else:
                c_emb = np.load(spec["syn"] + ".c.npy")
                q_emb = np.load(spec["syn"] + ".q.npy")
                t0 = time.perf_counter()
                r = mine_embeddings(q_emb, c_emb, pos, cfg, show_progress=False)
                elapsed = time.perf_counter() - t0
                negs = {queries[i]: [f"d{j}" for j in r.neg_ids[i] if j >= 0] for i in range(len(queries))}
    return {"method": method, "case": case, "seconds": elapsed, "peak_rss_mb": peak_rss_mb(),
            "rss_before_mb": rss0, "negs": negs}


def run_sub(spec: dict) -> dict:
    return run_worker(__file__, spec, quiet=not spec.get("verbose"))


def _model():
    from hardneg.mining.encode import load_sentence_model

    return load_sentence_model(None)


def overlap(a: dict, b: dict) -> float:
    keys = [k for k in a if k in b]
    if not keys:
        return float("nan")
    return sum(len(set(a[k]) & set(b[k])) / max(len(b[k]), 1) for k in keys) / len(keys)


def report(name: str, ours: dict, st: dict) -> dict:
    row = {
        "case": name,
        "hardneg_s": round(ours["seconds"], 2), "st_s": round(st["seconds"], 2),
        "time_ratio_st_over_hardneg": round(st["seconds"] / ours["seconds"], 2),
        "hardneg_peak_mb": round(ours["peak_rss_mb"]), "st_peak_mb": round(st["peak_rss_mb"]),
        "memory_ratio_st_over_hardneg": round(st["peak_rss_mb"] / ours["peak_rss_mb"], 2),
        "negatives_overlap_with_st": round(overlap(ours["negs"], st["negs"]), 4),
        "queries": len(ours["negs"]),
        "cpu": describe_cpu(),
    }
    print(json.dumps(row), flush=True)
    return row


def kernel_cache_sitting(base: dict, capacities: list[int]) -> None:
    """One whole-WordNet end-to-end torch worker per kernel-cache capacity, in the order given (repeat a
    value to see the machine's drift), each printed as a JSON line: time and peak."""
    if not capacities:
        raise SystemExit("--kernel-cache-only needs --kernel-cache, e.g. --kernel-cache 1024,64,1024,64")
    for cap in capacities:
        r = run_sub({**base, "method": "hardneg", "case": "wordnet_e2e", "kernel_cache": cap})
        print(json.dumps({"kernel_cache": cap, "seconds": round(r["seconds"], 2),
                          "peak_mb": round(r["peak_rss_mb"])}), flush=True)


def main() -> None:
    if serve_worker(worker):
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=None, help="use only the first N WordNet pairs")
    ap.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end (encoding) comparison")
    ap.add_argument("--skip-wordnet", action="store_true")
    ap.add_argument("--skip-same", action="store_true", help="skip the WordNet same-embeddings comparison")
    ap.add_argument("--e2e-pairs", type=int, default=None, help="pairs for the end-to-end case (default --pairs)")
    ap.add_argument("--e2e-corpus", type=int, default=None, help="cap on the corpus of the end-to-end case")
    ap.add_argument("--synthetic-n", type=int, default=1_000_000)
    ap.add_argument("--synthetic-q", type=int, default=9116)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--index", default="bf16", help="hardneg's index option (flat, bf16, ivf..., hnsw...)")
    ap.add_argument("--backend", default="torch",
                    help="hardneg's encoding backends in the end-to-end case, comma-separated: torch, onnx, "
                         "onnx-int8 (an ONNX backend runs twice: export inside the measured time, and exported "
                         "beforehand); the same-embeddings case always encodes with torch")
    ap.add_argument("--kernel-cache", default="",
                    help="comma-separated oneDNN / ideep kernel-cache capacities: one more end-to-end torch run "
                         "for each (default: none; the runs above use hardneg's own cap)")
    ap.add_argument("--kernel-cache-only", action="store_true",
                    help="run only the --kernel-cache torch workers, in the order given, and print each one's "
                         "time and peak (no sentence-transformers run, no other case)")
    ap.add_argument("--cache-dir", default=".cache/hardneg-embeddings",
                    help="embedding cache for the same-embeddings case (the e2e case always starts cold)")
    ap.add_argument("--out", default=None, help="write the result rows as JSON here")
    a = ap.parse_args()
    rows = []
    base = {"pairs": a.pairs, "threads": a.threads, "index": a.index, "backend": "torch",
            "synthetic_n": a.synthetic_n,
            "synthetic_q": a.synthetic_q}
    if a.kernel_cache_only:
        kernel_cache_sitting({**base, "pairs": a.e2e_pairs or a.pairs, "corpus_cap": a.e2e_corpus},
                             [int(c) for c in filter(None, a.kernel_cache.split(","))])
        return
    tmp = tempfile.mkdtemp(prefix="hnbench")
    if not a.skip_wordnet and not a.skip_e2e:
        e2e = {**base, "pairs": a.e2e_pairs or a.pairs, "corpus_cap": a.e2e_corpus}
        st = run_sub({**e2e, "method": "st", "case": "wordnet_e2e"})
        for backend in a.backend.split(","):
            ours = run_sub({**e2e, "backend": backend, "method": "hardneg", "case": "wordnet_e2e"})
            export = ", ONNX export included" if backend != "torch" else ""
            rows.append(report(f"wordnet end-to-end, --backend {backend} (cold, encode included{export})",
                               ours, st))
            if backend != "torch":  # a later run: the exported files exist, the embeddings are not cached
                from hardneg.mining.onnx_encoder import onnx_encoder

                onnx_encoder(_model(), backend, os.path.join(tmp, "exported"))
                ours = run_sub({**e2e, "backend": backend, "method": "hardneg", "case": "wordnet_e2e",
                                "onnx_from": os.path.join(tmp, "exported", "onnx")})
                rows.append(report(f"wordnet end-to-end, --backend {backend} (cold embeddings, ONNX files "
                                   "exported beforehand)", ours, st))
        for cap in filter(None, a.kernel_cache.split(",")):
            ours = run_sub({**e2e, "method": "hardneg", "case": "wordnet_e2e", "kernel_cache": int(cap)})
            rows.append(report(f"wordnet end-to-end, --backend torch, kernel caches of {cap} entries", ours, st))
    if not a.skip_wordnet and not a.skip_same:
        emb = os.path.join(tmp, "wordnet")
        # embeddings for the same-embeddings case (from --cache-dir when filled; not timed)
        run_sub({**base, "method": "hardneg", "case": "wordnet_e2e", "save_emb": emb, "cache_dir": a.cache_dir})
        import numpy as np

        queries, positives, corpus = wordnet_pairs(a.pairs)
        from hardneg.mining.pipeline import prepare_corpus

        texts, _, _ = prepare_corpus(positives, corpus)
        cmap = dict(zip(texts, np.load(emb + ".c.npy")))
        uq = list(dict.fromkeys(queries))
        qe = np.load(emb + ".q.npy")
        st_cache = os.path.join(tmp, "st_wordnet")
        from hardneg.mining.st_compat import st_cache_files

        _, _, _, uc = st_cache_files(st_cache, _model(), queries, positives, corpus)
        prepare_st_cache(st_cache, queries, positives, corpus, qe[: len(uq)], np.stack([cmap[t] for t in uc]))
        del cmap
        ours = run_sub({**base, "method": "hardneg", "case": "wordnet_same", "emb": emb})
        st = run_sub({**base, "method": "st", "case": "wordnet_same", "st_cache": st_cache})
        rows.append(report("wordnet same embeddings", ours, st))
    if a.synthetic_n:
        import numpy as np

        syn = os.path.join(tmp, "synthetic")
        synthetic(syn, a.synthetic_n, a.synthetic_q)
        st_cache = os.path.join(tmp, "st_synthetic")
        corpus = [f"d{j}" for j in range(a.synthetic_n)]
        pos = np.load(syn + ".pos.npy")
        prepare_st_cache(st_cache, [f"q{i}" for i in range(a.synthetic_q)], [corpus[j] for j in pos], corpus,
                         np.load(syn + ".q.npy"), np.load(syn + ".c.npy"))
        del corpus
        ours = run_sub({**base, "method": "hardneg", "case": "synthetic", "syn": syn})
        st = run_sub({**base, "method": "st", "case": "synthetic", "st_cache": st_cache, "syn": syn})
        rows.append(report(f"synthetic {a.synthetic_n:,} x 384, {a.synthetic_q:,} queries", ours, st))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)  # the 1M-vector files are 3 GB
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
