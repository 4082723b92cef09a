"""A sentence-transformers bi-encoder whose transformer runs in ONNX Runtime (float32 or int8).

Encoding is most of end-to-end mining time on CPU. ONNX Runtime runs the exported transformer with
fused kernels, and int8 dynamic quantization (weights int8, activations quantized per batch) makes the
matrix products several times cheaper again (VNNI / AMX where present).

sentence-transformers' own ``backend="onnx"`` loads models through ``optimum.onnxruntime``, whose
``optimum-onnx`` release pins ``transformers<4.58`` and so cannot be installed beside the
transformers 5 that the ``text`` extra brings. This module therefore exports the model's transformer
with ``torch.onnx.export`` (once; the file is kept under the embedding cache folder, keyed by the
model's fingerprint), quantizes it with ``onnxruntime.quantization.quantize_dynamic``, and keeps
everything else of the sentence-transformers model — its tokenizer (``preprocess``), its pooling and
normalisation modules — so the embeddings are the model's own up to the runtime's arithmetic.

Batches are formed by length in tokens (`hardneg.mining.token_batching`) and run concurrently,
one per CPU core, each on one runtime thread (``threads``). WordNet's texts average 15 tokens: a batch's
matrix products are too small for two threads to share well (int8, batch 64: one runtime thread 460
texts/s, two ~670), while two batches side by side on one thread each reach 850 (measured with
length-in-characters batches, 2 cores). The runtime, the tokenizer and torch's pooling release the GIL, so
Python threads suffice, the session is shared, and memory grows by one batch of activations per worker.
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from hardneg._optional import require
from hardneg.cores import usable_cores
from hardneg.io import SHARED_STALE_AGE_S, atomic_open, remove_stale_temps, set_aside
from hardneg.mining.encode import model_fingerprint
from hardneg.mining.token_batching import MAX_TOKENS, TokenBatchedEncoder, release_freed_memory

BACKENDS = ("torch", "onnx", "onnx-int8")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_onnx(model, path: str | os.PathLike[str]) -> Path:
    """Export the transformer of sentence-transformers ``model`` to ONNX (dynamic batch and length),
    straight into the temporary file of `hardneg.io.atomic_open` (written once, renamed whole)."""
    import torch

    require("onnx", "onnx", feature="the ONNX export")
    path = Path(path)
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
    with atomic_open(path, "wb") as f, torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on Python branches of the transformer, which hold for every batch and length
        # (the test of the exported model against the torch one checks that), and the exporter's note on
        # advanced indexing, which this model never does with negative indices
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator", category=UserWarning)
        # the stub names paths only; torch.onnx.export writes to a binary file object as well (documented)
        torch.onnx.export(_Hidden(hf).eval(), args, f, input_names=list(_INPUTS),  # type: ignore[arg-type]
                          output_names=["token_embeddings"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {0: "batch", 1: "tokens"} for k in (*_INPUTS, "token_embeddings")})
    return path


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """int8 dynamic quantization of an ONNX model (weights int8 with one scale per output channel;
    activations quantized at run time). One scale per tensor costs far more accuracy on all-MiniLM-L6-v2
    (cosine to float32 down to 0.92 on WordNet glosses, against 0.99 per channel)."""
    q = require("onnxruntime.quantization", "onnx", feature="int8 quantization")
    # quantize_dynamic writes to a path: it writes atomic_open's temporary file by name, whose handle then
    # fsyncs the same file before the rename
    with atomic_open(dst, "wb") as g:
        q.quantize_dynamic(str(src), g.name, weight_type=q.QuantType.QInt8, per_channel=True)
    return Path(dst)


def _session(ort, path: Path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # parallel over batches instead (module docstring)
    opts.inter_op_num_threads = 1
    # a memory pattern is planned and kept for every distinct input shape, and batches by length in tokens
    # give nearly every batch its own: without them the WordNet mining peak is 23 MB lower at the same
    # speed. The memory arena stays: without it the same run is 9 % slower and no lower.
    opts.enable_mem_pattern = False
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _load_or_build(ort, model, folder: Path, backend: str, done_with_torch: Callable[[], None] | None = None):
    """The runtime session of ``folder``'s model for ``backend``, exporting (and quantizing) what is
    missing. A cached file the runtime cannot load is damaged: set aside (``.corrupt``, one warning)
    and built again, once; the float32 file it was quantized from goes with a damaged int8 file.
    ``done_with_torch`` (when given) is called as soon as the torch weights are no longer needed: right
    after an export, so they are gone before the quantization (whose peak they would add to), or once a
    cached file has loaded."""
    fp32 = folder / "model.onnx"
    path = folder / "model_int8.onnx" if backend == "onnx-int8" else fp32
    remove_stale_temps(folder, [fp32.name, path.name], min_age_s=SHARED_STALE_AGE_S)  # of killed exports
    for attempt in (0, 1):
        built = not path.exists()
        if built:
            if not fp32.exists():
                export_onnx(model, fp32)
            if done_with_torch is not None:
                done_with_torch()
            if path != fp32:
                quantize_int8(fp32, path)
            gc.collect()  # the exporter's graph objects hold reference cycles
            release_freed_memory()  # the export's and the quantization's heap (~140 MB for all-MiniLM-L6-v2)
        try:
            session = _session(ort, path)
        except Exception as e:  # onnxruntime's own classes (InvalidProtobuf, Fail, ...) say what is wrong
            if built or attempt:
                raise
            why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            set_aside(path, f"ONNX Runtime cannot load it: {why[:200]}")
            if path != fp32 and fp32.exists():
                fp32.unlink()
            continue
        if done_with_torch is not None and not built:  # a build has called it already, after the export
            done_with_torch()
        return session, path
    raise AssertionError("unreachable")


class OnnxSentenceEncoder(TokenBatchedEncoder):
    """A `TokenBatchedEncoder` whose transformer runs in ONNX
    Runtime; ``backend`` is ``"onnx"`` or ``"onnx-int8"``.

    ``folder`` holds ``model.onnx`` / ``model_int8.onnx``; they are exported there when missing, and
    exported again when the runtime cannot load them (`_load_or_build`).
    ``threads``: CPU cores to use (default: those this process may run on); batches run on that many
    workers at once, one runtime thread each (module docstring). ``max_tokens``: the cap on a batch's
    padded tokens (`hardneg.mining.token_batching`). ``own_model``: ``model`` is this encoder's alone, so
    its torch weights are freed (`release_torch_weights`) as soon as the export no longer needs them."""

    def __init__(self, model, folder: str | os.PathLike[str], backend: str = "onnx", *,
                 threads: int | None = None, max_tokens: int = MAX_TOKENS, own_model: bool = False) -> None:
        if backend not in ("onnx", "onnx-int8"):
            raise ValueError(f"backend must be 'onnx' or 'onnx-int8', got {backend!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        super().__init__(model, workers=threads or usable_cores(), max_tokens=max_tokens)
        ort = require("onnxruntime", "onnx", feature="--backend onnx")
        self.backend = backend
        #: read by `hardneg.mining.encode.model_fingerprint`: another backend, other cached embeddings
        self.backend_tag = backend
        #: the embedding cache's key for this encoder, taken while the torch weights it hashes exist
        #: (`release_torch_weights` frees them; `hardneg.mining.encode.model_fingerprint` reads this)
        self.weights_fingerprint = model_fingerprint(self)
        self.session, self.path = _load_or_build(ort, model, Path(folder), backend,
                                                 self.release_torch_weights if own_model else None)

    def release_torch_weights(self) -> None:
        """Free the torch weights of the model's transformer, which the runtime session replaces (91 MB
        for all-MiniLM-L6-v2, beside the session's own copy): they go to the ``meta`` device, keeping
        their shapes and the configuration that the tokenizer and the pooling read. The sentence-transformers
        model given to this encoder can no longer run its transformer in torch afterwards, so only its
        owner calls this (``own_model=True``: `hardneg.mining.pipeline.mine_texts` for a model it loaded
        itself)."""
        self.model[0].auto_model.to("meta")
        release_freed_memory()

    def _token_embeddings(self, features: dict):
        import torch

        return torch.from_numpy(self.session.run(None, {k: features[k].numpy() for k in _INPUTS})[0])


def onnx_encoder(model, backend: str, cache_root: str | os.PathLike[str], *, threads: int | None = None,
                 own_model: bool = False):
    """``model`` itself for ``"torch"``, else an `OnnxSentenceEncoder` whose ONNX files live in
    ``<cache_root>/onnx/<model fingerprint>/`` (``own_model``: see `OnnxSentenceEncoder`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return model
    return OnnxSentenceEncoder(model, Path(cache_root) / "onnx" / model_fingerprint(model), backend,
                               threads=threads, own_model=own_model)


__all__ = ["BACKENDS", "OnnxSentenceEncoder", "export_onnx", "onnx_encoder", "quantize_int8"]
