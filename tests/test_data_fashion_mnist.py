"""Fashion-MNIST loader on the real idx files (skipped when Debian's dataset-fashion-mnist is not
installed), and its errors for missing / corrupt files."""

import gzip
import shutil

import numpy as np
import pytest
import torch

from hardneg.cli import main
from hardneg.data import fashion_mnist as fm

REAL = fm.available()
needs_files = pytest.mark.skipif(
    not REAL, reason=f"Fashion-MNIST idx files not in {fm.DEFAULT_DIR}: apt-get install dataset-fashion-mnist"
)


@needs_files
def test_real_files_verify_and_parse():
    X, y = fm.load_fashion_mnist("test")
    assert X.shape == (10000, 1, 28, 28) and X.dtype == torch.float32 and y.shape == (10000,)
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))  # 1,000 test images per class
    # literal parse of the label file: 8-byte header, then one byte per label
    with gzip.open(fm.DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        raw = f.read()
    assert int.from_bytes(raw[:4], "big") == 2049 and int.from_bytes(raw[4:8], "big") == 10000
    assert y.tolist() == list(raw[8:])
    # first image: 16-byte header, then 784 bytes
    with gzip.open(fm.DEFAULT_DIR / "t10k-images-idx3-ubyte.gz", "rb") as f:
        head = f.read(16 + 784)
    first = torch.tensor(list(head[16:]), dtype=torch.uint8).reshape(28, 28)
    assert torch.equal((X[0, 0] * 255).round().to(torch.uint8), first)
    Xl, yl = fm.load_fashion_mnist("train", limit=100)
    assert Xl.shape == (100, 1, 28, 28) and int(yl[0]) == 9  # the first training image is an ankle boot


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.load_fashion_mnist("train", data_dir=tmp_path)


@needs_files
def test_corrupt_file_is_refused(tmp_path):
    for name in fm.FILES:
        shutil.copy(fm.DEFAULT_DIR / name, tmp_path / name)
    p = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF  # same size, different content
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt: sha256"):
        fm.load_fashion_mnist("test", data_dir=tmp_path)
    p.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="corrupt: .* bytes"):
        fm.load_fashion_mnist("test", data_dir=tmp_path)


def test_cli_missing_data_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: fashion_mnist}\n")
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "nothing")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "missing" in err and "dataset-fashion-mnist" in err and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "nothing") in err


def test_idx_header_checked(tmp_path):
    bad = tmp_path / "x.gz"
    with gzip.open(bad, "wb") as f:
        f.write(np.array([0, 0, 8, 1, 0, 0, 0, 5, 1, 2], dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="holds 2 values"):
        fm._read_idx(bad)
