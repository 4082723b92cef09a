"""A pitfall users hit with sentence-transformers' miner: relative_margin=0.05, num_negatives=1,
triplet output on WordNet noun pairs.

Runs sentence-transformers' mine_hard_negatives and hardneg's miner on the same (cached, bf16) embeddings,
counts the pairs that keep a negative, and prints hardneg's summary (whose first line says how many
queries lost their negatives and which knob to loosen).

    python benchmarks/pitfall_relative_margin.py [--cache-dir .cache/hardneg-embeddings]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=".cache/hardneg-embeddings")
    a = ap.parse_args()
    import datasets
    from sentence_transformers.util import mine_hard_negatives

    from hardneg.data.wordnet import build_corpus, build_pairs, load_synsets
    from hardneg.mining.encode import encode_texts, load_sentence_model
    from hardneg.mining.mine import MineConfig
    from hardneg.mining.pipeline import format_summary, mine_texts
    from hardneg.mining.st_compat import inject_st_cache

    syn = load_synsets("noun")
    rows = build_pairs(syn)
    corpus, _ = build_corpus(syn)
    queries, positives = [r["query"] for r in rows], [r["positive"] for r in rows]
    model = load_sentence_model(None)

    def emb(texts):
        return encode_texts(model, texts, precision="bf16", cache_dir=a.cache_dir, show_progress=True)

    st_cache = tempfile.mkdtemp(prefix="st_cache")
    inject_st_cache(st_cache, model, queries, positives, corpus, emb, emb)
    ds = datasets.Dataset.from_dict({"query": queries, "positive": positives})
    st = mine_hard_negatives(ds, model, corpus=corpus, relative_margin=0.05, num_negatives=1,
                             output_format="triplet", use_faiss=True, verbose=False, cache_folder=st_cache)
    res = mine_texts(queries, positives, corpus, model=model, cache_dir=a.cache_dir, show_progress=False,
                     config=MineConfig(num_negatives=1, relative_margin=0.05, dedupe=False, precision="bf16",
                                       format="triplet"))
    print(f"sentence-transformers (verbose=False): {len(st):,} of {len(ds):,} pairs kept a negative, silently")
    print(f"hardneg: {len(res.rows):,} of {len(queries):,} pairs kept a negative; its summary:")
    print(format_summary(res.summary))
    import shutil

    shutil.rmtree(st_cache, ignore_errors=True)


if __name__ == "__main__":
    main()
