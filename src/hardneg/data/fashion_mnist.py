"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from its four gzipped idx files.

The files are looked up in ``data_dir`` (``--data-dir``), else in ``/usr/share/datasets/fashion-mnist/``
where Debian's ``dataset-fashion-mnist`` package installs them. Each file is verified by size and
SHA-256 before it is parsed; a missing file raises `FileNotFoundError` and a corrupt one
`ValueError`, both saying how to get good files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")

#: name -> (size in bytes, sha256) of the files shipped by Debian's ``dataset-fashion-mnist``.
FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte.gz": (
        26421856,
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    ),
    "train-labels-idx1-ubyte.gz": (29491, "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    "t10k-images-idx3-ubyte.gz": (
        4422079,
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    ),
    "t10k-labels-idx1-ubyte.gz": (5125, "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
}

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

INSTALL_HINT = (
    "install them with `sudo apt-get install dataset-fashion-mnist` (files land in "
    f"{DEFAULT_DIR}) or pass --data-dir to a folder holding {', '.join(FILES)}"
)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder to read from: ``data_dir`` if given, else the Debian package's folder."""
    return Path(data_dir) if data_dir is not None else DEFAULT_DIR


def verify_file(path: Path) -> None:
    """Check that ``path`` exists and matches the expected size and SHA-256 of its name."""
    name = path.name
    if name not in FILES:
        raise ValueError(f"unknown Fashion-MNIST file name {name!r}; expected one of {sorted(FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"Fashion-MNIST file {path} is missing; {INSTALL_HINT}")
    size, sha = FILES[name]
    actual = path.stat().st_size
    if actual != size:
        raise ValueError(
            f"Fashion-MNIST file {path} is corrupt: {actual} bytes, expected {size}; {INSTALL_HINT}"
        )
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != sha:
        raise ValueError(
            f"Fashion-MNIST file {path} is corrupt: sha256 {h.hexdigest()} != {sha}; {INSTALL_HINT}"
        )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: idx header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def available(data_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when all four files exist in the resolved folder (not verified)."""
    d = resolve_data_dir(data_dir)
    return all((d / n).is_file() for n in FILES)


def load_fashion_mnist(
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    verify: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(X, y)``: float32 images (n, 1, 28, 28) in [0, 1] and int64 labels in 0..9.

    ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000); ``limit`` keeps the first ``limit``
    samples (the files are already shuffled).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    d = resolve_data_dir(data_dir)
    prefix = "train" if split == "train" else "t10k"
    img_p, lab_p = d / f"{prefix}-images-idx3-ubyte.gz", d / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img_p, lab_p):
        if verify:
            verify_file(p)
        elif not p.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file {p} is missing; {INSTALL_HINT}")
    images, labels = _read_idx(img_p), _read_idx(lab_p)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"Fashion-MNIST {split}: images {images.shape} do not match labels {labels.shape}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    X = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None].contiguous()
    y = torch.from_numpy(labels.astype(np.int64)).contiguous()
    return X, y
