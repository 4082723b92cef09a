"""`hardneg mine` and the mining library under damage: paths that cannot be written are refused before
any encoding, as one line; damaged cache files are set aside and recomputed; temporaries of killed runs
are removed; stores with NaN rows and indexes FAISS cannot build or fill are refused before the work."""

import contextlib
import os
import shutil
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from hardneg.io import HardnegWarning, check_writable
from hardneg.mining.encode import EmbeddingCache, encode_texts
from hardneg.mining.mine import MineConfig, mine_embeddings
from tests.cli_helpers import mine_argv as _mine
from tests.cli_helpers import run_cli as _cli
from tests.cli_helpers import write_mine_inputs
from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES, minilm


@pytest.fixture
def inputs(tmp_path):
    return write_mine_inputs(tmp_path)




@contextlib.contextmanager
def immutable(folder):
    """A folder nobody may write into, root included (``chattr +i``); skips where the file system
    or the container does not allow it."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed: no way to make a folder unwritable for root")
    r = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"chattr +i is refused here ({r.stderr.strip()}): no way to make a folder unwritable for root")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_unwritable_paths_refused_before_encoding(tmp_path, inputs, capsys):
    pairs, corpus = inputs
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    out = tmp_path / "neg.jsonl"
    cases = [
        (["--cache-dir", a_file], "--cache-dir"),
        (["--cache-dir", a_file / "cache"], "--cache-dir"),
        (["--no-cache", "--store", "float16", "--store-dir", a_file / "stores"], "--store-dir"),
    ]
    for extra, option in cases:
        code, stdout, err = _cli(_mine(pairs, corpus, out, *extra), capsys)
        assert code == 2 and "\n" not in err, err
        assert err.startswith(f"hardneg: error: {option} ") and f"{a_file} is a file, not a folder" in err, err
        assert "estimate:" not in stdout  # refused before the model encoded anything
        assert not out.exists()
    code, stdout, err = _cli(_mine(pairs, corpus, a_file / "neg.jsonl", "--no-cache"), capsys)
    assert code == 2 and err == f"hardneg: error: --out {a_file / 'neg.jsonl'}: {a_file} is a file, not a folder"
    assert "estimate:" not in stdout
    # a folder that cannot be written into (immutable: even root is refused)
    locked = tmp_path / "locked"
    locked.mkdir()
    with immutable(locked):
        code, stdout, err = _cli(_mine(pairs, corpus, locked / "neg.jsonl", "--no-cache"), capsys)
        assert code == 2 and "\n" not in err
        assert err.startswith(f"hardneg: error: --out {locked / 'neg.jsonl'}: cannot write in {locked}: "), err
        code, stdout, err = _cli(_mine(pairs, corpus, out, "--cache-dir", locked / "cache"), capsys)
        assert code == 2 and err.startswith(f"hardneg: error: --cache-dir {locked / 'cache'}: cannot write in "), err
        assert "estimate:" not in stdout and list(locked.iterdir()) == []


def test_check_writable_refuses_what_the_file_system_would(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"^\[Errno 20\] --x .*f/a/b: .*f is a file, not a folder$"):
        check_writable(f / "a" / "b", "--x", folder=True)
    with pytest.raises(IsADirectoryError, match="--out .* is a folder"):
        check_writable(tmp_path, "--out")
    check_writable(tmp_path / "new" / "deeper", "--x", folder=True)  # created later: the parent is writable
    assert sorted(os.listdir(tmp_path)) == ["f"]  # the probe leaves nothing and creates no folder
    locked = tmp_path / "locked"
    locked.mkdir()
    with immutable(locked), pytest.raises(PermissionError, match="cannot write in .*locked: Operation not permitted"):
        check_writable(locked / "out.jsonl", "--out")


def test_file_system_errors_of_any_command_are_one_line(tmp_path, capsys):
    # `diagnose --json` into a path under a regular file: NotADirectoryError from deep in the library
    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    np.save(tmp_path / "labels.npy", np.arange(16) % 4)
    (tmp_path / "f").write_text("x")
    target = tmp_path / "f" / "sub" / "d.json"
    code, _, err = _cli(["diagnose", "--embeddings", emb, "--labels", tmp_path / "labels.npy", "--batches", "1",
                         "--batch-size", "8", "--json", target], capsys)
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith("hardneg: error: --json ") and f"{tmp_path / 'f'} is a file, not a folder" in err, err


def _corrupt(shard, how):
    if how == "truncated":
        shard.write_bytes(shard.read_bytes()[:100])
    else:
        shard.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("how", ["truncated", "random bytes"])
def test_damaged_cache_shard_is_set_aside_and_recomputed(tmp_path, how):
    m = minilm()
    ref = m.encode(QUERIES[:3], normalize_embeddings=True)
    encode_texts(m, QUERIES[:3], precision="fp32", cache_dir=tmp_path, show_progress=False)
    (shard,) = tmp_path.rglob("shard-*.npz")
    _corrupt(shard, how)
    with pytest.raises((zipfile.BadZipFile, ValueError, EOFError, OSError)):  # numpy alone cannot read it
        np.load(shard)["keys"]
    with pytest.warns(HardnegWarning, match=rf"{shard} is damaged \(.+\); moved to {shard.name}.corrupt"):
        got = encode_texts(m, QUERIES[:3], precision="fp32", cache_dir=tmp_path, show_progress=False)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert shard.with_name(shard.name + ".corrupt").exists()
    (fresh,) = tmp_path.rglob("shard-*.npz")  # recomputed and cached again, under the same name
    keys, emb = np.load(fresh)["keys"], np.load(fresh)["emb"]
    assert keys.shape == (3, 20)
    np.testing.assert_allclose(emb, ref, atol=2e-5)


def test_cli_names_a_damaged_shard_in_one_warning_line_and_removes_stale_temporaries(tmp_path, inputs, capsys):
    pairs, corpus = inputs
    cache = tmp_path / "cache"
    encode_texts(minilm(), QUERIES, precision="fp32", cache_dir=cache, show_progress=False)  # what mine caches
    (shard,) = cache.rglob("shard-*.npz")
    _corrupt(shard, "random bytes")
    # temporaries as a killed run leaves them: an old one is removed, a fresh one (a run writing now) stays
    old_tmp = shard.parent / ".shard-0123456789abcdef.npz.abcd1234.tmp"
    new_tmp = shard.parent / ".shard-fedcba9876543210.npz.wxyz5678.tmp"
    for t in (old_tmp, new_tmp):
        t.write_bytes(b"half a shard")
    os.utime(old_tmp, (0, 0))
    with warnings.catch_warnings():
        # pytest records warnings; show them as Python does by default: formatwarning(...) on stderr
        warnings.simplefilter("default")
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(m, c, f, n, line))
        code, _, err = _cli(_mine(pairs, corpus, tmp_path / "again.jsonl", "--cache-dir", cache), capsys)
    assert code == 0, err
    warns = [x for x in err.splitlines() if x.startswith("hardneg:")]
    assert warns == [f"hardneg: warning: {shard} is damaged (not a .npz file); moved to {shard.name}.corrupt "
                     "and recomputed"], err
    assert "allow_pickle" not in err and "Traceback" not in err
    assert not old_tmp.exists() and new_tmp.exists()
    assert len((tmp_path / "again.jsonl").read_text().splitlines()) == 12  # 6 queries x 2 negatives
    assert shard.with_name(shard.name + ".corrupt").exists()
    keys = np.concatenate([np.load(s)["keys"] for s in cache.rglob("shard-*.npz")])
    assert len(keys) == len(set(map(bytes, keys))) == len(QUERIES) + len(POSITIVES) + len(CORPUS)  # recomputed


def test_cache_refuses_to_unpickle_and_reads_whole_shards_only(tmp_path):
    c = EmbeddingCache(tmp_path, "ns")
    c.dir.mkdir(parents=True)
    np.savez(c.dir / "shard-aaaa.npz", keys=np.zeros((2, 20), np.uint8), emb=np.ones((3, 4), np.float32))
    np.savez(c.dir / "shard-bbbb.npz", keys=np.array([object()] * 2, dtype=object), emb=np.ones((2, 4), np.float32))
    good = np.arange(20, dtype=np.uint8)[None]
    np.savez(c.dir / "shard-cccc.npz", keys=good, emb=np.full((1, 4), 0.5, np.float32))
    with pytest.warns(HardnegWarning) as rec:
        found, rows = c.get(good)
    assert found.tolist() == [True] and rows[0].tolist() == [0.5] * 4
    named = sorted(str(w.message).split(" is damaged")[0] for w in rec)
    assert named == [str(c.dir / "shard-aaaa.npz"), str(c.dir / "shard-bbbb.npz")]
    assert "embeddings of dtype float32 and shape (3, 4) for 2 keys" in str(rec[0].message) + str(rec[1].message)
    assert "holds Python objects, which are never unpickled" in str(rec[0].message) + str(rec[1].message)
    assert sorted(p.name for p in c.dir.iterdir()) == ["shard-aaaa.npz.corrupt", "shard-bbbb.npz.corrupt",
                                                        "shard-cccc.npz"]


def test_store_folders_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    from hardneg.mining.pipeline import mine_texts

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid names a process that no longer runs
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_dir = tmp_path / f"hardneg-store-{gone.pid}-abcd1234"
        live_dir = tmp_path / f"hardneg-store-{alive.pid}-efgh5678"
        for d in (dead_dir, live_dir):
            d.mkdir()
            (d / ".corpus.float16.npy.a1b2c3d4.tmp").write_bytes(b"\x93NUMPY half")  # as SIGTERM left it
        res = mine_texts(QUERIES, POSITIVES, CORPUS, model=minilm(), show_progress=False, store_dir=tmp_path,
                         config=MineConfig(num_negatives=2, precision="fp32", store="float16"))
        assert res.summary["store"] == "float16"
        # a --store-dir still to be made is made (it was checked writable before the work)
        mine_texts(QUERIES, POSITIVES, CORPUS, MineConfig(num_negatives=2, precision="fp32", store="float16"),
                   model=minilm(), show_progress=False, store_dir=tmp_path / "new" / "stores")
        assert list((tmp_path / "new" / "stores").iterdir()) == []
        shutil.rmtree(tmp_path / "new")
        assert not dead_dir.exists() and (live_dir / ".corpus.float16.npy.a1b2c3d4.tmp").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == [live_dir.name]  # its own folder is gone too
    finally:
        alive.kill()
        alive.wait()


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_stores_with_nan_rows_are_refused_like_arrays(tmp_path, dtype):
    from hardneg.mining.store import EmbeddingStore, to_stored

    rng = np.random.default_rng(0)
    c = _unit(rng.standard_normal((300, 16)))
    c[[37, 120, 121]] = np.nan
    c[200, 3] = np.inf
    q = _unit(rng.standard_normal((5, 16)))
    np.save(tmp_path / "c.npy", to_stored(c, dtype))  # a store written by another tool: never checked
    cfg = MineConfig(num_negatives=3, index="flat")
    with pytest.raises(ValueError, match=r"^corpus embeddings contains non-finite values \(NaN or inf; first in "
                                         r"row 37\)$"):
        mine_embeddings(q, c, np.arange(5), cfg, show_progress=False)
    with pytest.raises(ValueError, match=rf"^corpus embeddings \({tmp_path / 'c.npy'}\) contains non-finite values "
                                         r"\(NaN or inf; first in row 37\)$"):
        mine_embeddings(q, EmbeddingStore(tmp_path / "c.npy"), np.arange(5), cfg, show_progress=False)
    # a clean store of the same rows mines (the check costs one pass and is not repeated per index built)
    c[[37, 120, 121, 200]] = _unit(rng.standard_normal((4, 16)))
    np.save(tmp_path / "c.npy", to_stored(c, dtype))
    st = EmbeddingStore(tmp_path / "c.npy")
    res = mine_embeddings(q, st, np.arange(5), cfg, show_progress=False)
    assert st.finite_checked and (res.neg_ids >= 0).all() and np.isfinite(res.neg_scores).all()


def test_index_and_search_parameters_are_refused_before_the_work(tmp_path):
    rng = np.random.default_rng(0)
    c = _unit(rng.standard_normal((100, 64)))
    q = _unit(rng.standard_normal((4, 64)))
    for kw, msg in [({"nprobe": 0}, "nprobe must be an int >= 1, got 0"),
                    ({"ef_search": 0}, "ef_search must be an int >= 1, got 0")]:
        with pytest.raises(ValueError, match=msg):
            MineConfig(**kw).validate()
    cases = [
        ({"index": "IDMap,Flat"}, "IDMap is not supported"),
        ({"index": "IDMap,IVF4,Flat"}, "IDMap is not supported"),
        # PQ with 8 bits trains 256 centroids per sub-quantizer: 100 rows cannot train it
        ({"index": "IVF4,PQ8"}, r"^IVF4,PQ8 needs at least 256 corpus vectors to train, got 100 in the corpus"),
        ({"index": "IVF64,Flat", "workers": 2},
         r"^IVF64,Flat needs at least 64 corpus vectors to train, got 50 in the smallest of 2 shards \(--workers\)"),
        ({"index": "IVF4096,PQ16", "workers": 2}, "needs at least 4096 corpus vectors"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            mine_embeddings(q, c, np.arange(4), MineConfig(num_negatives=2, **kw), show_progress=False)
    # what fits is built
    ok = mine_embeddings(q, c, np.arange(4), MineConfig(num_negatives=2, index="IVF4,Flat", nprobe=4),
                         show_progress=False)
    assert ok.recall == 1.0 and (ok.neg_ids >= 0).all()


def test_cli_refuses_unbuildable_indexes_before_encoding_in_one_line(tmp_path, inputs, capsys):
    pairs, corpus = inputs
    out = tmp_path / "neg.jsonl"
    for extra, msg in [(["--nprobe", "0"], "nprobe must be an int >= 1, got 0"),
                       (["--ef-search", "0", "--index", "hnsw8"], "ef_search must be an int >= 1, got 0"),
                       (["--index", "IDMap,Flat"], "IDMap is not supported"),
                       (["--index", "IVF4096,PQ48", "--workers", "2"],
                        "IVF4096,PQ48 needs at least 4096 corpus vectors to train, got 10 in the smallest of 2 "
                        "shards")]:
        code, stdout, err = _cli(_mine(pairs, corpus, out, "--no-cache", *extra), capsys)
        assert code == 2, err
        lines = [x for x in err.splitlines() if x.strip() and "Loading weights" not in x]
        assert len(lines) == 1 and lines[0].startswith("hardneg: error:") and msg in lines[0], err
        assert "estimate:" not in stdout and not out.exists()


def test_a_dead_shard_worker_is_one_line(tmp_path):
    import signal

    from hardneg.mining.shard import ShardedIndex
    from hardneg.mining.store import write_store
    from hardneg.vector_search import search

    c = _unit(np.random.default_rng(0).standard_normal((200, 16)))
    st = write_store(tmp_path / "c.npy", c, n=200, d=16)
    with ShardedIndex(st, "flat", 2, threads=1) as sh:
        os.kill(sh._procs[1].pid, signal.SIGKILL)
        sh._procs[1].join()
        with pytest.raises(ChildProcessError, match=r"^the search worker of shard \[100, 200\) was killed by "
                                                    r"signal 9 without an answer \(out of memory\?"):
            search(sh, c[:3], 5)


def test_mine_hard_negatives_names_a_missing_text():
    datasets = pytest.importorskip("datasets")
    from hardneg.mining.hard_negatives import mine_hard_negatives

    ds = datasets.Dataset.from_dict({"q": QUERIES[:3], "p": [POSITIVES[0], None, POSITIVES[2]]})
    with pytest.raises(ValueError, match=r"^positive column 'p': row 1 is None, not a text"):
        mine_hard_negatives(ds, None)
    ds = datasets.Dataset.from_dict({"q": QUERIES[:3], "p": POSITIVES[:3]})
    with pytest.raises(ValueError, match=r"^corpus: row 2 is None, not a text"):
        mine_hard_negatives(ds, None, corpus=["a", "b", None])


@pytest.mark.slow
def test_onnx_model_damage_no_cache_and_a_quiet_export(tmp_path, monkeypatch, recwarn):
    """A cached ONNX model the runtime cannot load is set aside and exported again; without a cache the
    export goes to a temporary folder; the export prints none of the tracer's warnings."""
    pytest.importorskip("onnxruntime")
    from hardneg.mining.encode import model_fingerprint
    from hardneg.mining.onnx_encoder import onnx_encoder
    from hardneg.mining.pipeline import mine_texts

    m = minilm()
    texts = QUERIES + POSITIVES
    ref = m.encode(texts, normalize_embeddings=True, batch_size=8)
    warnings.simplefilter("always")
    onnx_encoder(m, "onnx", tmp_path)
    # no TracerWarning, no exporter note (the deprecation notes are hidden outside tests anyway)
    assert [str(w.message)[:60] for w in recwarn if not issubclass(w.category, DeprecationWarning)] == []
    folder = tmp_path / "onnx" / model_fingerprint(m)
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx"]  # written once, no second copy
    (folder / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    with pytest.warns(HardnegWarning, match=r"model\.onnx is damaged \(ONNX Runtime cannot load it: .+\); moved to "
                                            r"model\.onnx\.corrupt"):
        enc = onnx_encoder(m, "onnx", tmp_path)
    np.testing.assert_allclose(encode_texts(enc, texts, precision="fp32", show_progress=False), ref, atol=1e-4)
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.corrupt"]
    # --no-cache: the model goes nowhere near the user cache, and the temporary folder is deleted
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    res = mine_texts(QUERIES, POSITIVES, CORPUS, model=m, show_progress=False,
                     config=MineConfig(num_negatives=2, precision="fp32", backend="onnx"))
    assert res.summary["backend"] == "onnx"
    assert not (tmp_path / "xdg").exists() and list((tmp_path / "tmp").iterdir()) == []
