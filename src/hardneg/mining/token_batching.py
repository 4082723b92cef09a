"""Encoding sentence-transformers models in batches formed by length in tokens.

``SentenceTransformer.encode`` sorts texts by length in characters and cuts batches of ``batch_size``;
on WordNet's texts (mean 15.2 tokens) at batch 64 that leaves 38 % of the computed tokens as padding.
`TokenBatchedEncoder` sorts by characters, tokenizes ``CHUNK_BATCHES`` batches at once with the
model's own ``preprocess``, re-sorts those rows by their length in tokens and cuts them into batches of
at most ``batch_size`` texts and ``max_tokens`` padded tokens (`token_batches`), each trimmed to
its longest row: 0.4 % padding. The transformer runs per batch (`TorchSentenceEncoder`: the
model's own modules under the caller's autocast; the ONNX encoder in `hardneg.mining.onnx_encoder`)
and the model's own pooling and normalisation follow.

The cap on padded tokens bounds the activations of the batches of the longest texts, which otherwise
set the peak memory (64 WordNet glosses of 138 tokens take 330 MB of activations in the int8 ONNX
model); on WordNet mining, 512 against 1,024 lowers the peak by 40 MB at 3.5 % of the time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hardneg._optional import require

#: batches tokenized together and re-sorted by their length in tokens
CHUNK_BATCHES = 16
#: default cap on the padded tokens of one batch (module docstring)
MAX_TOKENS = 512


def token_batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> list[tuple[int, int]]:
    """Cut rows sorted by length in tokens (longest first) into ``[lo, hi)`` batches of at most
    ``batch_size`` rows and at most ``max_tokens`` padded tokens (rows times the first row's length;
    a single row longer than ``max_tokens`` is a batch of its own)."""
    out, lo = [], 0
    while lo < len(lengths):
        rows = max(1, min(batch_size, max_tokens // max(int(lengths[lo]), 1)))
        out.append((lo, min(lo + rows, len(lengths))))
        lo = out[-1][1]
    return out


def batchable(model) -> bool:
    """Whether ``model`` is a sentence-transformers model whose first module is a transformer with a
    tokenizer (what `TokenBatchedEncoder` re-batches); anything else is encoded by its own
    ``encode``."""
    try:
        first = model[0]
    except (TypeError, IndexError, KeyError):
        return False
    return hasattr(model, "preprocess") and hasattr(first, "auto_model") and hasattr(first, "tokenizer")


class TokenBatchedEncoder:
    """``encode`` like ``SentenceTransformer.encode`` (the arguments `hardneg.mining.encode.encode_texts`
    uses) for the sentence-transformers ``model``, in batches by length in tokens (module docstring).

    Subclasses give `_token_embeddings`. ``workers``: batches run on that many threads at once
    (chunks of ``CHUNK_BATCHES`` batches go to the threads). ``max_tokens``: the cap on a batch's padded
    tokens."""

    def __init__(self, model, *, workers: int = 1, max_tokens: int = MAX_TOKENS) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        self.model, self.workers, self.max_tokens = model, workers, max_tokens
        self.max_seq_length = model.max_seq_length

    def _token_embeddings(self, features: dict):
        """The transformer's (rows, tokens, d) output for one batch of ``preprocess`` features."""
        raise NotImplementedError

    def _to_device(self, features: dict) -> dict:
        """The batch's features where the transformer and the pooling run (as they are: on the CPU)."""
        return features

    def get_embedding_dimension(self) -> int:
        return self.model.get_embedding_dimension()

    def state_dict(self):
        return self.model.state_dict()

    def encode(self, texts, *, batch_size: int = 64, normalize_embeddings: bool = False,
               convert_to_tensor: bool = False, show_progress_bar: bool = False, **_ignored):
        """Embeddings of ``texts`` in their order; ``show_progress_bar`` shows a bar over texts."""
        import torch

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        texts = list(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = torch.empty(len(texts), self.get_embedding_dimension())
        modules = list(self.model)[1:]  # the model's own pooling and normalisation
        left = getattr(self.model[0].tokenizer, "padding_side", "right") == "left"
        chunk = batch_size * CHUNK_BATCHES

        def one_chunk(a: int) -> int:
            idx = order[a : a + chunk]
            feats = self.model.preprocess([texts[i] for i in idx])
            n, width = feats["input_ids"].shape
            lengths = feats["attention_mask"].sum(1).numpy()
            by_len = np.argsort(-lengths, kind="stable")
            for lo, hi in token_batches(lengths[by_len], batch_size, self.max_tokens):
                rows = torch.from_numpy(by_len[lo:hi])
                longest = int(lengths[by_len[lo]])
                cols = slice(width - longest, None) if left else slice(longest)
                sub = {k: (v[rows][:, cols] if v.dim() == 2 and v.shape == (n, width) else v[rows])
                       if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == n else v for k, v in feats.items()}
                sub = self._to_device(sub)
                sub["token_embeddings"] = self._token_embeddings(sub)
                for module in modules:
                    sub = module(sub)
                emb = sub["sentence_embedding"].float()
                if normalize_embeddings:
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                out[torch.from_numpy(idx[by_len[lo:hi]])] = emb.cpu()  # distinct batches never share rows
            del feats, sub
            release_freed_memory()  # else the chunks' freed heap adds to the peak (20,000 WordNet texts: 25 MB)
            return len(idx)

        starts = range(0, len(texts), chunk)
        bar = None
        if show_progress_bar:
            bar = require("tqdm.auto", "train", feature="progress bars").tqdm(total=len(texts), desc="Batches",
                                                                            unit="text")
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hardneg-encode") if (
            self.workers > 1 and len(starts) > 1) else None
        try:
            run = _in_inference_mode(one_chunk)
            for done in (pool.map(run, starts) if pool is not None else map(run, starts)):
                if bar is not None:
                    bar.update(done)
        finally:
            if bar is not None:
                bar.close()
            if pool is not None:
                pool.shutdown()
        return out if convert_to_tensor else out.numpy()


def release_freed_memory() -> None:
    """Hand the heap that Python and the libraries have freed back to the OS. glibc keeps freed heap
    pages resident otherwise (each chunk's activations and tokenizer output leave tens of MB), and the
    large blocks that follow an encoding — the embeddings, the search index — are mapped afresh, so
    they would stack on top of those pages in the peak memory. No garbage collection: with a corpus's
    texts in memory one takes ~0.3-1 s, and what encoding frees is freed by reference counting."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


#: oneDNN and ideep kernel-cache entries kept while a mining run encodes (`cap_kernel_caches`)
KERNEL_CACHE_ENTRIES = 64


def cap_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> None:
    """Cap oneDNN's primitive cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) and ideep's
    (``LRU_CACHE_CAPACITY``) at ``entries`` kernels, unless the environment sets them already.

    Why: torch's bf16 products run in oneDNN, which builds a primitive (JIT-compiled kernels with their
    scratch and reordered weights) for every shape it is given and keeps up to 1,024 of them. Batches
    by length in tokens give nearly every batch a shape of its own, so on a whole WordNet corpus those
    caches fill with kernels that are rarely used again: ~280 MB of peak memory. A batch's forward pass
    needs only a handful (the same few products in every layer), and batches of neighbouring lengths
    follow each other, so a short cache keeps most of the reuse: on whole-WordNet mining 64 entries cut
    the peak by ~240 MB at no time measurable on an idle machine, where 16 cut ~280 MB but cost 16-29 %
    on a loaded one (docs/scaling_mining.md). The embeddings are the same bit for bit
    (`tests/test_mine_texts.py`).

    Both libraries read these variables once, lazily, when they build their first kernel (torch has no
    call that sets them at run time): this must run before the process's first oneDNN product, else it
    changes nothing. It changes the whole process's caches for as long as it runs, and a process that
    trains after mining (`hardneg.mining.hard_negatives.mine_hard_negatives` in a training script)
    needs more kernels than 64, so only a process whose job is mining calls it: the ``hardneg mine``
    command, before it encodes. A value set in the environment is kept (``1024`` restores the
    libraries' defaults)."""
    import os

    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, str(entries))


def _in_inference_mode(fn):
    """``fn`` run under ``torch.inference_mode`` in whichever thread calls it (the mode is per thread)."""
    import torch

    def wrapped(*a, **k):
        with torch.inference_mode():
            return fn(*a, **k)

    return wrapped


class TorchSentenceEncoder(TokenBatchedEncoder):
    """The sentence-transformers model's own transformer module, one batch at a time in the calling
    thread (``workers=1``: torch parallelises inside each operation), under the caller's autocast, on
    the model's device."""

    def _token_embeddings(self, features: dict):
        return self.model[0](dict(features))["token_embeddings"]

    def _to_device(self, features: dict) -> dict:
        import torch

        device = self.model.device  # a model on a GPU encodes there, as ``SentenceTransformer.encode`` does
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}


__all__ = ["CHUNK_BATCHES", "KERNEL_CACHE_ENTRIES", "MAX_TOKENS", "TokenBatchedEncoder", "TorchSentenceEncoder",
           "batchable", "cap_kernel_caches", "release_freed_memory", "token_batches"]
