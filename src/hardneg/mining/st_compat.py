"""Run sentence-transformers' ``mine_hard_negatives`` on given embeddings (for like-for-like comparisons).

``mine_hard_negatives`` has no argument for precomputed embeddings, but with ``cache_folder`` it loads
``query_embeddings_<sha256>.npy`` / ``corpus_embeddings_<sha256>.npy`` whose names hash
``repr((model_name, prompt, prompt_name, texts))`` of its deduplicated query and corpus lists
(sentence_transformers/util/hard_negatives.py). `inject_st_cache` writes those files, so the
function runs on exactly the embeddings we pass and skips encoding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

from hardneg.io import atomic_open


def st_cache_files(folder: str | os.PathLike[str], model, queries: Sequence[str], positives: Sequence[str],
                   corpus: Sequence[str] | None) -> tuple[str, str, list[str], list[str]]:
    """Paths ST will look for, and its deduplicated query and corpus lists (in its order)."""
    model_name = model.model_card_data.base_model or ""
    uq = list(dict.fromkeys(queries))
    uc = list(dict.fromkeys(list(corpus if corpus is not None else positives) + list(positives)))
    qh = hashlib.sha256(repr((model_name, None, None, uq)).encode(), usedforsecurity=False).hexdigest()
    ch = hashlib.sha256(repr((model_name, None, None, uc)).encode(), usedforsecurity=False).hexdigest()
    return (os.path.join(folder, f"query_embeddings_{qh}.npy"), os.path.join(folder, f"corpus_embeddings_{ch}.npy"),
            uq, uc)


def inject_st_cache(folder: str | os.PathLike[str], model, queries: Sequence[str], positives: Sequence[str],
                    corpus: Sequence[str] | None, embed_query, embed_corpus) -> None:
    """Write ST's cache files from ``embed_query(texts) -> (n, d)`` / ``embed_corpus(texts)`` arrays."""
    qf, cf, uq, uc = st_cache_files(folder, model, queries, positives, corpus)
    for path, emb in ((qf, embed_query(uq)), (cf, embed_corpus(uc))):
        with atomic_open(path, "wb") as f:  # sentence-transformers must never find half a file
            np.save(f, np.ascontiguousarray(emb, dtype=np.float32))
