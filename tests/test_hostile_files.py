"""Damaged and hostile input files, each crafted for real in tmp_path: every loader of a user's array
or cube refuses it with one ValueError naming the file (exit 2 on the command line), before it
allocates what a header claims; names that become paths cannot leave their folder."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from hardneg.arrays import load_array, load_array_file
from hardneg.cli import main


def _one_line_exit_2(argv, capsys) -> str:
    from reproduce.cli import app as reproduce_app
    from reproduce.cli import main as reproduce_main

    # the repository's reproductions (`python -m reproduce`) follow the same error policy
    entry = reproduce_main if argv[0] in {c.name for c in reproduce_app.registered_commands} else main
    with pytest.raises(SystemExit) as e:
        entry(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert err.startswith("hardneg: error: ") and "\n" not in err and "Traceback" not in err
    return err


def _npy_with_header(path, descr: str, shape: tuple[int, ...], data: bytes = b"\0" * 16) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(data)


# --- .npy / .pt -----------------------------------------------------------------------------------


def test_npy_header_claiming_582_tib_is_refused_before_allocating(tmp_path, capsys):
    p = tmp_path / "huge.npy"
    _npy_with_header(p, "<f8", (80_000_000_000_000,))  # 80e12 float64 = 582 TiB, 16 bytes of data
    with pytest.raises(ValueError, match=r"huge\.npy.*640,000,000,000,000 bytes.*holds 16 bytes"):
        load_array_file(p, "--embeddings")
    with pytest.raises(ValueError, match="huge.npy"):  # every option taking a path reads through it
        load_array(str(p), "pool")
    err = _one_line_exit_2(["diagnose", "--embeddings", str(p)], capsys)
    assert "--embeddings" in err and str(p) in err


def test_truncated_garbage_and_object_npy_are_one_error_naming_the_file(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(100.0))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:300])
    with pytest.raises(ValueError, match=r"t\.npy.*800 bytes.*holds 172 bytes"):
        load_array_file(tmp_path / "t.npy", "x")
    (tmp_path / "g.npy").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match=r"g\.npy: not a readable \.npy file"):
        load_array_file(tmp_path / "g.npy", "x")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"o\.npy: holds Python objects"):
        load_array_file(tmp_path / "o.npy", "x")
    np.save(tmp_path / "ok.npy", np.arange(6.0).reshape(2, 3))  # the checks pass a whole file
    assert np.array_equal(load_array_file(tmp_path / "ok.npy", "x"), np.arange(6.0).reshape(2, 3))
    assert np.array_equal(load_array_file(tmp_path / "ok.npy", "x", mmap=True), np.arange(6.0).reshape(2, 3))


def test_pt_holding_a_dict_or_garbage_is_refused(tmp_path, capsys):
    torch.save({"a": torch.zeros(3)}, tmp_path / "d.pt")
    with pytest.raises(ValueError, match=r"d\.pt: holds a dict, expected one tensor"):
        load_array_file(tmp_path / "d.pt", "x")
    torch.save(torch.zeros(100), tmp_path / "t.pt")
    raw = (tmp_path / "t.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"t\.pt: not a readable \.pt tensor file"):
        load_array_file(tmp_path / "t.pt", "x")
    err = _one_line_exit_2(["diagnose", "--embeddings", str(tmp_path / "d.pt")], capsys)
    assert "d.pt" in err and "dict" in err
    t = torch.tensor([[1.5, -2.25], [0.125, 3.0]], dtype=torch.bfloat16)
    torch.save(t, tmp_path / "bf16.pt")  # numpy has no bfloat16; the values are exact in float32
    assert np.array_equal(load_array_file(tmp_path / "bf16.pt", "x"), np.array([[1.5, -2.25], [0.125, 3.0]]))


def test_memmap_images_refuse_a_header_claiming_more_than_the_file(tmp_path):
    from hardneg.data.loader import MemmapImages

    _npy_with_header(tmp_path / "x.npy", "|u1", (10**9, 1, 28, 28))
    np.save(tmp_path / "y.npy", np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"x\.npy.*declares shape \(1000000000, 1, 28, 28\)"):
        MemmapImages(tmp_path / "x.npy", tmp_path / "y.npy")
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 2, 2), np.uint8))
    np.save(tmp_path / "y.npy", np.array([0.0, 1.5, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"y\.npy: labels must be integers, got 1\.5 at index 1"):
        MemmapImages(tmp_path / "x.npy", tmp_path / "y.npy")


# --- diagnose inputs ------------------------------------------------------------------------------


def test_diagnose_refuses_fractional_labels_and_complex_embeddings(tmp_path, capsys):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(16, 4)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "frac.npy", np.arange(16) / 4)  # 0.25, 0.5, ... would truncate to 0, 0, 0, 0, 1
    err = _one_line_exit_2(["diagnose", "--embeddings", str(tmp_path / "z.npy"),
                            "--labels", str(tmp_path / "frac.npy")], capsys)
    assert "--labels" in err and "frac.npy" in err and "0.25 at index 1" in err
    np.save(tmp_path / "c.npy", z.astype(np.complex64) * 1j)
    err = _one_line_exit_2(["diagnose", "--embeddings", str(tmp_path / "c.npy")], capsys)
    assert "c.npy" in err and "complex" in err
    z[3, 1] = np.nan
    z[5, 0] = np.inf
    np.save(tmp_path / "nan.npy", z)
    err = _one_line_exit_2(["diagnose", "--embeddings", str(tmp_path / "nan.npy")], capsys)
    assert "nan.npy" in err and "2 of 64 values are NaN or inf" in err


def test_diagnose_reads_whole_number_float_labels_as_the_integers(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "z.npy", rng.normal(size=(16, 4)).astype(np.float32))
    labels = np.arange(16) % 4
    np.save(tmp_path / "yi.npy", labels)
    np.save(tmp_path / "yf.npy", labels.astype(np.float64))
    reports = []
    for f in ("yi.npy", "yf.npy"):
        with pytest.raises(SystemExit) as e:
            main(["diagnose", "--embeddings", str(tmp_path / "z.npy"), "--labels", str(tmp_path / f),
                  "--batch-size", "8"])
        assert e.value.code == 0
        reports.append(capsys.readouterr().out)
    assert reports[0] == reports[1] and "false" in reports[0].lower()


# --- hyperspectral scenes: .mat ---------------------------------------------------------------------


def _scene_arrays(rng=None):
    rng = rng or np.random.default_rng(0)
    cube = rng.uniform(size=(5, 4, 6)).astype(np.float32)
    gt = np.zeros((5, 4), np.uint8)
    gt[1, 2] = 1
    return cube, gt


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_mat_is_one_error_naming_it(tmp_path, compressed, capsys):
    from scipy.io import savemat

    from hardneg.data.hyperspectral import load_scene

    cube, gt = _scene_arrays()
    savemat(tmp_path / "sd.mat", {"data": cube, "map": gt}, do_compression=compressed)
    raw = (tmp_path / "sd.mat").read_bytes()
    (tmp_path / "sd.mat").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"sd\.mat: not a readable \.mat file"):
        load_scene(tmp_path, "sd")
    err = _one_line_exit_2(["dense-compare", "hyperspectral", "--data-dir", str(tmp_path), "--scene", "sd",
                            "--out", str(tmp_path / "res")], capsys)
    assert "sd.mat" in err
    assert not (tmp_path / "res").exists()


def _compressed_mat_declaring(path, dims: tuple[int, ...]) -> None:
    """A MATLAB 5 file with one compressed double array whose header declares ``dims`` (a handful of
    bytes of data follow): what a decompression bomb looks like before it is expanded."""
    header = b"MATLAB 5.0 MAT-file, crafted".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"
    body = struct.pack("<IIII", 6, 8, 6, 0)  # array flags: class double
    d = struct.pack(f"<{len(dims)}i", *dims)
    body += struct.pack("<II", 5, len(d)) + d + b"\0" * (-len(d) % 8)
    body += struct.pack("<HH", 1, 4) + b"data"
    body += struct.pack("<II", 9, 2**32 - 8) + b"\0" * 64
    z = zlib.compress(struct.pack("<II", 14, len(body)) + body)
    path.write_bytes(header + struct.pack("<II", 15, len(z)) + z)


def test_compressed_mat_sizes_are_checked_before_decompressing(tmp_path):
    from scipy.io import savemat, whosmat

    from hardneg.data.hyperspectral import load_mat

    _compressed_mat_declaring(tmp_path / "bomb.mat", (100_000, 100_000, 100))
    assert whosmat(tmp_path / "bomb.mat") == [("data", (100_000, 100_000, 100), "double")]  # a valid header
    assert (tmp_path / "bomb.mat").stat().st_size < 1000
    with pytest.raises(ValueError, match=r"bomb\.mat: its arrays declare 8,000,000,000,000 bytes .*'data'.*"
                                         r"before decompressing"):
        load_mat(tmp_path / "bomb.mat")
    # a real compressed file of zeros: 3.2 MB declared in a few kB, under and over a limit
    savemat(tmp_path / "z.mat", {"data": np.zeros((100, 100, 40))}, do_compression=True)
    assert (tmp_path / "z.mat").stat().st_size < 100_000
    assert load_mat(tmp_path / "z.mat")["data"].shape == (100, 100, 40)
    with pytest.raises(ValueError, match=r"z\.mat: its arrays declare 3,200,000 bytes"):
        load_mat(tmp_path / "z.mat", max_bytes=1_000_000)


def test_nan_in_a_cube_is_refused_at_load_naming_file_and_count(tmp_path, capsys):
    from scipy.io import savemat

    from hardneg.data.hyperspectral import load_scene

    cube, gt = _scene_arrays()
    cube[0, 0, :3] = np.nan
    cube[4, 3, 5] = -np.inf
    savemat(tmp_path / "sd.mat", {"data": cube, "map": gt})
    with pytest.raises(ValueError, match=r"sd\.mat \(cube\): 4 of 120 values are NaN or inf"):
        load_scene(tmp_path, "sd")
    big = cube.astype(np.float64)
    big[~np.isfinite(big)] = 1.0
    big[2, 2, 2] = 1e300  # finite in float64, inf in the float32 cube
    savemat(tmp_path / "sd.mat", {"data": big, "map": gt})
    with pytest.raises(ValueError, match=r"sd\.mat \(cube as float32\): 1 of 120"):
        load_scene(tmp_path, "sd")
    err = _one_line_exit_2(["dense-compare", "hyperspectral", "--data-dir", str(tmp_path), "--scene", "sd",
                            "--out", str(tmp_path / "res")], capsys)
    assert "sd.mat" in err and "NaN or inf" in err
    assert not (tmp_path / "res").exists()  # refused before the results folder is made


# --- hyperspectral scenes: ENVI ---------------------------------------------------------------------

_HDR = "ENVI\nsamples = {s}\nlines = {l}\nbands = {b}\nheader offset = 0\nfile type = ENVI Standard\n" \
       "data type = {dt}\ninterleave = bsq\nbyte order = 0\n"


def _envi(tmp_path, name="sc", s=4, lines=3, b=5, dt=4, nbytes=None, first="ENVI"):
    text = _HDR.format(s=s, l=lines, b=b, dt=dt).replace("ENVI", first, 1)
    (tmp_path / f"{name}.hdr").write_text(text)
    n = s * lines * b * 4 if nbytes is None else nbytes
    (tmp_path / f"{name}.raw").write_bytes(np.arange(n // 4, dtype="<f4").tobytes())
    return tmp_path / f"{name}.hdr"


def test_envi_damaged_headers_and_data_are_one_error_naming_the_file(tmp_path):
    pytest.importorskip("spectral")
    from hardneg.data.hyperspectral import MAX_ENVI_HEADER_BYTES, load_envi

    cube = load_envi(_envi(tmp_path, "ok"))
    assert cube.shape == (3, 4, 5) and cube[0, 0, 1] == 12.0  # bsq: band 1 starts after 3·4 values
    with pytest.raises(ValueError, match=r"magic\.hdr: not an ENVI header"):
        load_envi(_envi(tmp_path, "magic", first="NOPE"))
    with pytest.raises(ValueError, match=r"dtype\.hdr: ENVI data type 99 is not supported"):
        load_envi(_envi(tmp_path, "dtype", dt=99))
    with pytest.raises(ValueError, match=r"dtype6\.hdr: ENVI data type 6 .*complex"):
        load_envi(_envi(tmp_path, "dtype6", dt=6))
    with pytest.raises(ValueError, match=r"trunc\.raw: the header trunc\.hdr declares 3×4×5 values \(240 bytes\) "
                                         r"but the file holds 20"):
        load_envi(_envi(tmp_path, "trunc", nbytes=20))
    with pytest.raises(ValueError, match=r"huge\.raw: .*declares 1000000×1000000×1000 values"):
        load_envi(_envi(tmp_path, "huge", s=10**6, lines=10**6, b=1000, nbytes=240))
    big = _envi(tmp_path, "big")
    with open(big, "a") as f:
        f.write("description = {" + "x" * MAX_ENVI_HEADER_BYTES + "}\n")
    with pytest.raises(ValueError, match=r"big\.hdr: .* bytes, too large for an ENVI header"):
        load_envi(big)
    (tmp_path / "nolines.hdr").write_text(_HDR.format(s=4, l=3, b=5, dt=4).replace("lines = 3\n", ""))
    (tmp_path / "nolines.raw").write_bytes(b"\0" * 240)
    with pytest.raises(ValueError, match=r"nolines\.hdr: .*'lines'"):
        load_envi(tmp_path / "nolines.hdr")


# --- names that become paths; empty dense batches ----------------------------------------------------


@pytest.mark.parametrize("label", ["../../x", "a/b", "..", "a\\b"])
def test_a_grid_label_cannot_leave_the_compare_folder(tmp_path, label, capsys):
    from hardneg.runs import CompareConfig, validate_config

    raw = {"grid": {"losses": [{"name": "ucl", "label": label}]}}
    with pytest.raises(ValueError, match="plain name"):
        validate_config(raw, CompareConfig)
    with pytest.raises(ValueError, match="name must be a plain name"):
        validate_config({"name": "../up", "grid": {"losses": [{"name": "ucl"}]}}, CompareConfig)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"grid:\n  losses:\n    - {{name: ucl, label: {label!r}}}\n")
    err = _one_line_exit_2(["compare", "--config", str(cfg), "--out", str(tmp_path / "out")], capsys)
    assert "plain name" in err and str(cfg) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_crossmodal_strategy_name_cannot_leave_the_output_folder(tmp_path, capsys):
    cfg = tmp_path / "cm.yaml"
    cfg.write_text("strategies:\n  ../../escape: {name: ucl}\n")
    err = _one_line_exit_2(["crossmodal-compare", "-c", str(cfg), "--out", str(tmp_path / "out")], capsys)
    assert "strategy name must be a plain name" in err and "'../../escape'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.yaml"]


def test_scene_name_cannot_leave_the_data_folder(tmp_path, capsys):
    from scipy.io import savemat

    cube, gt = _scene_arrays()
    (tmp_path / "data").mkdir()
    savemat(tmp_path / "sd.mat", {"data": cube, "map": gt})  # a real scene one level up
    err = _one_line_exit_2(["dense-compare", "hyperspectral", "--data-dir", str(tmp_path / "data"),
                            "--scene", "../sd", "--out", str(tmp_path / "res")], capsys)
    assert "--scene" in err and "'../sd'" in err
    assert not (tmp_path / "res").exists()


def test_dense_contrast_with_an_empty_batch_is_one_clear_error():
    from hardneg.dense import DenseContrast

    dc = DenseContrast("ucl", anchors_per_image=2)
    with pytest.raises(ValueError, match=r"^f1 is empty: .* got \(0, 4, 5, 5\)$"):
        dc(torch.randn(0, 4, 5, 5), torch.randn(0, 4, 5, 5))
    with pytest.raises(ValueError, match=r"^f2 is empty"):
        dc(torch.randn(1, 4, 5, 5), torch.randn(1, 4, 0, 5))
