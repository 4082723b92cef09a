"""A sentence-transformers bi-encoder whose transformer runs in ONNX Runtime (float32 or int8).

Encoding is ~98 % of end-to-end mining time on CPU. ONNX Runtime runs the exported transformer with
fused kernels, and int8 dynamic quantization (weights int8, activations quantized per batch) makes the
matrix products several times cheaper again (VNNI / AMX where present).

sentence-transformers' own ``backend="onnx"`` loads models through ``optimum.onnxruntime``, whose
``optimum-onnx`` release pins ``transformers<4.58`` and so cannot be installed beside the
transformers 5 that the ``text`` extra brings. This module therefore exports the model's transformer
with ``torch.onnx.export`` (once; the file is kept under the embedding cache folder, keyed by the
model's fingerprint), quantizes it with ``onnxruntime.quantization.quantize_dynamic``, and keeps
everything else of the sentence-transformers model — its tokenizer (``preprocess``), its pooling and
normalisation modules — so the embeddings are the model's own up to the runtime's arithmetic.

Batches run concurrently, one per CPU core, each on one runtime thread (``workers``). WordNet glosses
are ~22 tokens: a batch's matrix products are too small for two threads to share one well (2 intra-op
threads encode 1.45x faster than 1), while two batches side by side on one thread each are 1.6x faster
again (``benchmarks/encode_backends.py``). The runtime, the tokenizer and torch's pooling release the
GIL, so Python threads suffice, the session is shared, and memory grows by one batch of activations
per worker.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hardneg._optional import require
from hardneg.cores import usable_cores
from hardneg.io import atomic_open

BACKENDS = ("torch", "onnx", "onnx-int8")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: batches tokenized together and re-sorted by their length in tokens (``OnnxSentenceEncoder.encode``)
CHUNK_BATCHES = 16


def export_onnx(model, path: str | os.PathLike[str]) -> Path:
    """Export the transformer of sentence-transformers ``model`` to ONNX (dynamic batch and length)."""
    import torch

    require("onnx", "onnx", feature="the ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hf = model[0].auto_model

    class _Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    feats = model.preprocess(["an example sentence to trace", "another one"])
    args = tuple(feats[k] for k in _INPUTS)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.export")
    try:
        with torch.no_grad():
            torch.onnx.export(_Hidden(hf).eval(), args, str(tmp), input_names=list(_INPUTS),
                              output_names=["token_embeddings"], opset_version=17, dynamo=False,
                              dynamic_axes={k: {0: "batch", 1: "tokens"} for k in (*_INPUTS, "token_embeddings")})
        with open(tmp, "rb") as src, atomic_open(path, "wb") as dst:
            dst.write(src.read())
    finally:
        tmp.unlink(missing_ok=True)
    return path


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """int8 dynamic quantization of an ONNX model (weights int8 with one scale per output channel;
    activations quantized at run time). One scale per tensor costs far more accuracy on all-MiniLM-L6-v2
    (cosine to float32 down to 0.92 on WordNet glosses, against 0.99 per channel)."""
    q = require("onnxruntime.quantization", "onnx", feature="int8 quantization")
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.quant")
    try:
        q.quantize_dynamic(str(src), str(tmp), weight_type=q.QuantType.QInt8, per_channel=True)
        with open(tmp, "rb") as f, atomic_open(dst, "wb") as g:
            g.write(f.read())
    finally:
        tmp.unlink(missing_ok=True)
    return dst


class OnnxSentenceEncoder:
    """``encode`` like ``SentenceTransformer.encode`` (the arguments :func:`hardneg.mining.encode.encode_texts`
    uses), with the transformer in ONNX Runtime; ``backend`` is ``"onnx"`` or ``"onnx-int8"``.

    ``folder`` holds ``model.onnx`` / ``model_int8.onnx``; they are exported there when missing.
    ``threads``: CPU cores to use (default: those this process may run on); batches run on that many
    workers at once, one runtime thread each (module docstring). ``max_tokens``: a batch holds at most this
    many padded tokens as well as at most ``batch_size`` texts. A batch of the longest texts otherwise
    sets the peak (64 WordNet glosses of 138 tokens take 330 MB of activations in the int8 model); on
    WordNet mining, 512 against 1,024 lowers the peak by 40 MB and costs 3.5 % of the time."""

    def __init__(self, model, folder: str | os.PathLike[str], backend: str = "onnx", *,
                 threads: int | None = None, max_tokens: int = 512) -> None:
        if backend not in ("onnx", "onnx-int8"):
            raise ValueError(f"backend must be 'onnx' or 'onnx-int8', got {backend!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        self.max_tokens = max_tokens
        ort = require("onnxruntime", "onnx", feature="--backend onnx")
        self.model, self.backend = model, backend
        folder = Path(folder)
        fp32 = folder / "model.onnx"
        path = folder / "model_int8.onnx" if backend == "onnx-int8" else fp32
        if not path.exists():
            if not fp32.exists():
                export_onnx(model, fp32)
            if path != fp32:
                quantize_int8(fp32, path)
            _release_freed_memory()
        self.workers = threads or usable_cores()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # parallel over batches instead (module docstring)
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = path
        self.max_seq_length = model.max_seq_length
        #: read by :func:`hardneg.mining.encode.model_fingerprint`: another backend, other cached embeddings
        self.backend_tag = backend

    def get_embedding_dimension(self) -> int:
        return self.model.get_embedding_dimension()

    def state_dict(self):
        return self.model.state_dict()

    def encode(self, texts, *, batch_size: int = 64, normalize_embeddings: bool = False,
               convert_to_tensor: bool = False, show_progress_bar: bool = False, **_ignored):
        """Embeddings of ``texts`` in their order.

        Texts are sorted by length in characters and tokenized in chunks of ``batch_size *
        CHUNK_BATCHES``; within a chunk the rows are re-sorted by their length in tokens and cut into
        batches by :func:`token_batches`, each trimmed to its longest row. Sorting by characters alone
        (what ``SentenceTransformer.encode`` does) leaves 38 % padding on WordNet's texts at batch 64;
        sorting by tokens leaves 0.4 %. Chunks run on ``self.workers`` threads; ``show_progress_bar``
        shows a bar over texts."""
        import torch

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        texts = list(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = torch.empty(len(texts), self.get_embedding_dimension())
        modules = list(self.model)[1:]  # the model's own pooling and normalisation
        left = getattr(getattr(self.model, "tokenizer", None), "padding_side", "right") == "left"
        chunk = batch_size * CHUNK_BATCHES

        def one_chunk(a: int) -> int:
            idx = order[a : a + chunk]
            feats = self.model.preprocess([texts[i] for i in idx])
            n, width = feats["input_ids"].shape
            lengths = feats["attention_mask"].sum(1).numpy()
            by_len = np.argsort(-lengths, kind="stable")
            for lo, hi in token_batches(lengths[by_len], batch_size, self.max_tokens):
                rows = torch.from_numpy(by_len[lo:hi])
                cols = slice(width - int(lengths[by_len[lo]]), None) if left else slice(int(lengths[by_len[lo]]))
                sub = {k: (v[rows][:, cols] if v.dim() == 2 and v.shape == (n, width) else v[rows])
                       if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == n else v for k, v in feats.items()}
                h = self.session.run(None, {k: sub[k].numpy() for k in _INPUTS})[0]
                sub["token_embeddings"] = torch.from_numpy(h)
                with torch.inference_mode():
                    for module in modules:
                        sub = module(sub)
                    emb = sub["sentence_embedding"].float()
                    if normalize_embeddings:
                        emb = torch.nn.functional.normalize(emb, dim=-1)
                    out[torch.from_numpy(idx[by_len[lo:hi]])] = emb  # distinct batches never share rows
            return len(idx)

        starts = range(0, len(texts), chunk)
        bar = None
        if show_progress_bar:
            bar = require("tqdm.auto", "train", feature="progress bars").tqdm(total=len(texts), desc="Batches",
                                                                            unit="text")
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hardneg-onnx") if (
            self.workers > 1 and len(starts) > 1) else None
        try:
            for done in (pool.map(one_chunk, starts) if pool is not None else map(one_chunk, starts)):
                if bar is not None:
                    bar.update(done)
        finally:
            if bar is not None:
                bar.close()
            if pool is not None:
                pool.shutdown()
        return out if convert_to_tensor else out.numpy()


def _release_freed_memory() -> None:
    """Hand the heap that the export and the quantization freed back to the OS (glibc keeps it
    otherwise, ~140 MB for all-MiniLM-L6-v2, and the encoding's own peak would stack on top of it)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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


def onnx_encoder(model, backend: str, cache_root: str | os.PathLike[str], *, threads: int | None = None):
    """``model`` itself for ``"torch"``, else an :class:`OnnxSentenceEncoder` whose ONNX files live in
    ``<cache_root>/onnx/<model fingerprint>/``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return model
    from hardneg.mining.encode import model_fingerprint

    return OnnxSentenceEncoder(model, Path(cache_root) / "onnx" / model_fingerprint(model), backend,
                               threads=threads)


__all__ = ["BACKENDS", "OnnxSentenceEncoder", "export_onnx", "onnx_encoder", "quantize_int8", "token_batches"]
