"""Loading arrays handed to hardneg by value or by path: one loader for every option that takes a
matrix or a vector (pool embeddings, cluster feature tables, guide tables, duplicate groups,
``hardneg diagnose`` inputs, memory-mapped training images, hyperspectral truth maps).

A file is checked before anything is allocated: a ``.npy`` header's shape × dtype must fit in the
file (a damaged or hostile header could otherwise ask for terabytes), object arrays are refused
(they would unpickle), a ``.pt`` file must hold one tensor. Every failure is one ``ValueError`` (or
``FileNotFoundError``) naming the option and the file.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from typing import Any

import numpy as np
import torch

#: The most bytes a compressed array file (a compressed ``.mat``) may declare. Compressed data can
#: expand a thousandfold, so the declared sizes are checked against this before decompressing.
MAX_DECOMPRESSED_BYTES = 16 * 2**30


def _describe(name: str, path: str) -> str:
    return f"{name} {path}" if name and name != path else path


def npy_header(path: str | os.PathLike[str], name: str = "") -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data offset)`` of a ``.npy`` file, after checking that the
    data the header declares is in the file and holds no Python objects."""
    p = os.fspath(path)
    what = _describe(name, p)
    try:
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
    except (ValueError, OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"{what}: not a readable .npy file ({_first_line(e)})") from None
    if dtype.hasobject:
        raise ValueError(f"{what}: holds Python objects (dtype {dtype}), which hardneg never unpickles; "
                         "save a numeric array")
    declared = math.prod(shape) * dtype.itemsize
    held = os.path.getsize(p) - offset
    if held < declared:
        raise ValueError(f"{what}: the header declares shape {tuple(shape)} of {dtype} ({declared:,} bytes) but "
                         f"the file holds {held:,} bytes of data (truncated or damaged)")
    return tuple(shape), dtype, fortran, offset


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def load_array_file(path: str | os.PathLike[str], name: str = "", mmap: bool = False) -> np.ndarray:
    """The array of a ``.npy`` or ``.pt`` file (``mmap``: a ``.npy`` opened memory-mapped, read-only).

    Raises ``FileNotFoundError`` naming ``name`` and the path, or ``ValueError`` for a file that is
    damaged, truncated, of another kind, or holds something other than one numeric array."""
    p = os.fspath(path)
    what = _describe(name, p)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{what}: no such file")
    if p.endswith(".npy"):
        npy_header(p, name)
        try:
            return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{what}: not a readable .npy file ({_first_line(e)})") from None
    if p.endswith(".pt"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError, zipfile.BadZipFile,
                AttributeError, KeyError, TypeError) as e:
            raise ValueError(f"{what}: not a readable .pt tensor file ({_first_line(e)})") from None
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{what}: holds a {type(obj).__name__}, expected one tensor (torch.save(tensor, path))")
        # numpy has no bfloat16: such a tensor is read as float32 (exact)
        return (obj.detach().float() if obj.dtype == torch.bfloat16 else obj.detach()).numpy()
    raise ValueError(f"{what}: expected a .npy or .pt file")


def load_array(x: Any, name: str) -> np.ndarray:
    """A numpy array from a tensor, an array, a (nested) list, or a ``.npy`` / ``.pt`` file path
    (read by `load_array_file`).

    Raises ``FileNotFoundError`` naming ``name`` and the path, ``ValueError`` for a bad file, or
    ``TypeError`` for anything else."""
    if isinstance(x, (str, os.PathLike)):
        return load_array_file(x, name)
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{name} must be a tensor, array, list or a .npy/.pt path, got {type(x).__name__}")


def check_real(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` when it holds real numbers (bool, integers, floats), free of NaN and inf; else one
    ``ValueError`` naming ``what`` and how many entries are not finite."""
    if a.dtype.kind == "c":
        raise ValueError(f"{what}: holds complex numbers ({a.dtype}); expected real values")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what}: holds {a.dtype} values; expected numbers")
    if a.dtype.kind == "f":
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise ValueError(f"{what}: {bad:,} of {a.size:,} values are NaN or inf")
    return a


def integer_labels(a: np.ndarray, what: str) -> np.ndarray:
    """Labels as int64: integers as they are, floats only when every value is a whole number
    (a fractional label would otherwise be silently truncated)."""
    check_real(a, what)
    if a.dtype.kind == "f":
        frac = a != np.round(a)
        if frac.any():
            i = int(np.flatnonzero(frac.ravel())[0])
            raise ValueError(f"{what}: labels must be integers, got {a.ravel()[i].item()!r} at index {i} "
                             f"({int(frac.sum()):,} non-integral values)")
    return a.astype(np.int64)
