"""Corpus embeddings memory-mapped on disk, in float16 or bfloat16 (or float32), read in row blocks.

A corpus larger than memory cannot live in one float32 array (5M × 384 is 7.7 GB); stored as 16-bit
floats in a ``.npy`` file and memory-mapped, it costs 3.8 GB of disk and only the pages a search
touches. Files are plain ``.npy``: float16 as ``<f2``, float32 as ``<f4``, and bfloat16 — which numpy
has no type for — as its raw 16 bits in ``<u2`` (the upper half of the float32 bit pattern, rounded to
nearest even by torch), so any ``uint16`` ``.npy`` opened here is read as bfloat16 bits.

float16 keeps 10 mantissa bits against bfloat16's 7, and unit vectors never leave float16's range,
so float16 is the more accurate store for L2-normalised embeddings (cosine error ~1e-4 against
float32); bfloat16 is what the CPU's native bf16 matrix products consume without conversion.

`EmbeddingStore` has the row interface that `hardneg.vector_search` searches (``shape``, ``d``,
``rows(a, b)`` and ``take(ids)`` returning float32), so every index option works on a store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hardneg.io import atomic_open
from hardneg.vector_search import check_finite

STORE_DTYPES = ("float16", "bfloat16", "float32")
_NP: dict[str, np.dtype] = {"float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2"), "float32": np.dtype("<f4")}


def to_stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 rows → the stored representation of ``dtype`` (bfloat16: round-to-nearest-even bits)."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).view(torch.int16).numpy().view("<u2")
    return x.astype(_NP[dtype], copy=False)


def from_stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows → float32 (exact: every float16 and bfloat16 value is a float32)."""
    if dtype == "bfloat16":
        return (np.asarray(x, dtype=np.uint32) << 16).view(np.float32)
    return np.array(x, dtype=np.float32)  # a writable copy: torch refuses read-only memory maps


class EmbeddingStore:
    """An (n, d) embedding matrix memory-mapped from a ``.npy`` file (see module docstring).

    ``rows(a, b)`` and ``take(ids)`` return float32 copies of the requested rows only; ``slice(a, b)``
    is a store over a contiguous row range (what a shard worker searches).
    """

    def __init__(self, path: str | os.PathLike[str], *, _lo: int = 0, _hi: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"embedding store: no such file: {self.path}")
        try:
            mm = np.load(self.path, mmap_mode="r")
        except ValueError as e:
            raise ValueError(f"embedding store {self.path} is not a .npy file: {e}") from None
        if mm.ndim != 2:
            raise ValueError(f"embedding store {self.path} must hold an (n, d) matrix, got shape {mm.shape}")
        by_np = {v: k for k, v in _NP.items()}
        if mm.dtype not in by_np:
            raise ValueError(f"embedding store {self.path} has dtype {mm.dtype}; expected float16, "
                             "float32 or uint16 (bfloat16 bits)")
        self.dtype = by_np[mm.dtype]
        self._mm = mm
        self.lo, self.hi = _lo, mm.shape[0] if _hi is None else _hi
        self.shape = (self.hi - self.lo, mm.shape[1])
        self.ndim = 2
        #: set once `hardneg.vector_search.as_rows` has read every row and found no NaN or inf (a file
        #: written elsewhere may hold them; `write_store` refuses them)
        self.finite_checked = False

    @property
    def d(self) -> int:
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * _NP[self.dtype].itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def slice(self, a: int, b: int) -> EmbeddingStore:
        """The rows ``[a, b)`` as a store of their own (row 0 is row ``a`` of this one)."""
        if not 0 <= a <= b <= self.shape[0]:
            raise ValueError(f"row range [{a}, {b}) outside the store's {self.shape[0]} rows")
        part = EmbeddingStore(self.path, _lo=self.lo + a, _hi=self.lo + b)
        part.finite_checked = self.finite_checked
        return part

    def rows(self, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` as float32."""
        return from_stored(self._mm[self.lo + a : self.lo + min(b, self.shape[0])], self.dtype)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (any shape of row numbers) as float32, shape ``ids.shape + (d,)``."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        uniq, inv = np.unique(flat, return_inverse=True)  # sorted reads: sequential where rows repeat
        out = from_stored(self._mm[self.lo + uniq], self.dtype)[inv]
        return out.reshape(*ids.shape, self.d)

    def bf16_rows(self, a: int, b: int):
        """Rows ``[a, b)`` as a torch bfloat16 tensor (a bfloat16 store is read without conversion)."""
        import torch

        blk = self._mm[self.lo + a : self.lo + min(b, self.shape[0])]
        if self.dtype == "bfloat16":
            return torch.from_numpy(np.array(blk).view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(from_stored(blk, self.dtype)).to(torch.bfloat16)


def write_store(path: str | os.PathLike[str], blocks: Iterable[np.ndarray] | np.ndarray, *, n: int, d: int,
                dtype: str = "float16") -> EmbeddingStore:
    """Write ``n`` rows of dimension ``d`` — one array or an iterable of float32 row blocks — to a
    memory-mapped ``.npy`` in ``dtype``; returns the store. Only one block is in memory at a time.

    The file is written atomically (`hardneg.io.atomic_open`), so a store that exists is whole."""
    if dtype not in STORE_DTYPES:
        raise ValueError(f"store dtype must be one of {STORE_DTYPES}, got {dtype!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(blocks, np.ndarray):
        arr = blocks
        blocks = (arr[a : a + 65536] for a in range(0, len(arr), 65536))
    with atomic_open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(_NP[dtype]),
                                                 "fortran_order": False, "shape": (n, d)})
        at = 0
        for blk in blocks:
            blk = np.asarray(blk, dtype=np.float32)
            if blk.ndim != 2 or blk.shape[1] != d:
                raise ValueError(f"store block of shape {blk.shape} does not have {d} columns")
            if at + len(blk) > n:
                raise ValueError(f"store blocks hold more than the {n} rows announced")
            check_finite(blk, "embeddings", at)
            f.write(np.ascontiguousarray(to_stored(blk, dtype)).tobytes())
            at += len(blk)
        if at != n:
            raise ValueError(f"store blocks hold {at} rows, {n} were announced")
    st = EmbeddingStore(path)
    st.finite_checked = True  # every block was checked above
    return st


__all__ = ["STORE_DTYPES", "EmbeddingStore", "from_stored", "to_stored", "write_store"]
