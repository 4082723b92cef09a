"""`hardneg mine` output: never replaces files it did not write, fails loudly when the filters leave
nothing, names non-UTF-8 input by file and line, caches embeddings in the user cache directory, and gives
every output file the same umask-derived permissions."""

import json
import os
import stat
import tempfile

import pytest

from tests.cli_helpers import mine_argv as _mine
from tests.cli_helpers import run_cli as _cli
from tests.cli_helpers import write_mine_inputs
from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES


@pytest.fixture
def inputs(tmp_path):
    return write_mine_inputs(tmp_path)




def test_overwrite_replaces_only_hardneg_mine_output(tmp_path, inputs, capsys):
    pairs, corpus = inputs
    cache = ["--cache-dir", tmp_path / "cache"]
    mine_out = tmp_path / "mined.jsonl"
    summary = tmp_path / "mined.jsonl.summary.json"
    # a summary alone (the rows file missing) is not replaced without --overwrite
    summary.write_text("my own summary\n")
    code, _, err = _cli(_mine(pairs, corpus, mine_out, *cache), capsys)
    assert code == 2 and "mined.jsonl.summary.json already exists" in err and "--overwrite" in err
    code, _, err = _cli(_mine(pairs, corpus, mine_out, *cache, "--overwrite"), capsys)
    assert code == 2 and "refusing to --overwrite" in err and "is not its hardneg mine summary" in err
    assert summary.read_text() == "my own summary\n" and not mine_out.exists()
    summary.unlink()
    # a file the user wrote, with no summary beside it: refused even with --overwrite
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"mine": true}\n')
    code, _, err = _cli(_mine(pairs, corpus, notes, *cache, "--overwrite"), capsys)
    assert code == 2 and f"refusing to --overwrite {notes}" in err and "no notes.jsonl.summary.json" in err
    assert notes.read_text() == '{"mine": true}\n'
    # the input itself given as --out: refused, intact
    before = pairs.read_bytes()
    assert _cli(_mine(pairs, corpus, pairs, *cache, "--overwrite"), capsys)[0] == 2
    assert pairs.read_bytes() == before
    # hardneg's own output: replaced with --overwrite only
    assert _cli(_mine(pairs, corpus, mine_out, *cache), capsys)[0] == 0
    s = json.loads(summary.read_text())
    assert s["written_by"] == "hardneg mine" and s["output"] == "mined.jsonl"
    assert _cli(_mine(pairs, corpus, mine_out, *cache), capsys)[0] == 2
    assert _cli(_mine(pairs, corpus, mine_out, *cache, "-n", "1", "--overwrite"), capsys)[0] == 0
    assert json.loads(summary.read_text())["num_negatives"] == 1


def test_filters_removing_everything_fail_and_write_nothing(tmp_path, inputs, capsys):
    pairs, corpus = inputs
    out = tmp_path / "neg.jsonl"
    code, stdout, err = _cli(_mine(pairs, corpus, out, "--relative-margin", "5", "--cache-dir", tmp_path / "c"),
                             capsys)
    last = err.splitlines()[-1]  # (above it: the model loader's progress bar)
    assert code == 2 and last.startswith("hardneg: error: no negatives selected") and last.endswith("nothing written")
    summary_lines = [x for x in stdout.splitlines() if not x.startswith(("embedding cache:", "estimate:"))]
    first = summary_lines[0]
    # the window (10 n = 20 ranks) holds every other document of the 20-document corpus: 6 queries x 19
    # candidates, and s <= s_pos - 5 |s_pos| removes each of them
    assert first == ("ERROR: no negatives selected for any of the 6 queries: relative_margin removed 114 of the "
                     "114 candidates in the window -> lower --relative-margin (or raise --range-max)")
    assert not out.exists() and not (tmp_path / "neg.jsonl.summary.json").exists()


@pytest.mark.parametrize(
    "name,content,line",
    [
        ("pairs.jsonl", b'{"query": "a", "positive": "b"}\n{"query": "c", "positive": "d"}\n{"query": "caf\xe9"}\n', 3),
        ("pairs.csv", b"query,positive\na,b\n\xff\xfe,c\n", 3),
    ],
)
def test_non_utf8_input_names_file_and_line(tmp_path, capsys, name, content, line):
    p = tmp_path / name
    p.write_bytes(content)
    code, _, err = _cli(["mine", "--pairs", p, "--out", tmp_path / "o.jsonl", "--no-cache"], capsys)
    assert code == 2 and err.count("\n") == 0
    assert f"{p} line {line}: not UTF-8 text" in err


def test_non_utf8_corpus_names_file_and_line(tmp_path, inputs, capsys):
    pairs, _ = inputs
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"one\ntwo\nthr\xe9e\n")
    code, _, err = _cli(["mine", "--pairs", pairs, "--corpus", corpus, "--out", tmp_path / "o.jsonl", "--no-cache"],
                        capsys)
    assert code == 2 and f"{corpus} line 3: not UTF-8 text (byte 0xe9" in err


def test_default_cache_user_dir_permissions_and_stale_temporaries(tmp_path, inputs, capsys, monkeypatch):
    pairs, corpus = inputs
    xdg, work = tmp_path / "xdg", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.chdir(work)
    fd, _ = tempfile.mkstemp(prefix=".neg.jsonl.", suffix=".tmp", dir=work)  # as a killed write leaves it
    os.close(fd)
    old = os.umask(0o022)
    try:
        code, stdout, _ = _cli(_mine(pairs, corpus, work / "neg.jsonl"), capsys)
    finally:
        os.umask(old)
    assert code == 0
    cache = xdg / "hardneg" / "embeddings"
    assert f"embedding cache: {cache}" in stdout.splitlines()
    shards = list(cache.rglob("shard-*.npz"))
    assert shards and not (work / ".cache").exists() and sorted(os.listdir(work)) == [
        "neg.jsonl", "neg.jsonl.summary.json"]
    for p in [work / "neg.jsonl", work / "neg.jsonl.summary.json", *shards]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


@pytest.mark.parametrize("fmt,scores", [("labeled-list", False), ("labeled-list", True), ("n-tuple-scores", False)])
def test_cli_writes_sentence_transformers_formats(tmp_path, inputs, capsys, fmt, scores):
    # the oracle: sentence-transformers' mine_hard_negatives on the same pairs and corpus (exact search)
    datasets = pytest.importorskip("datasets")
    st_util = pytest.importorskip("sentence_transformers.util")
    from tests.retrieval_fixtures import minilm

    pairs, corpus = inputs
    out = tmp_path / "mined.jsonl"
    args = _mine(pairs, corpus, out, "--format", fmt, "--index", "flat", "--no-dedupe", "--cache-dir",
                 tmp_path / "cache", *(["--scores"] if scores else []))
    code, _, err = _cli(args, capsys)
    assert code == 0, err
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    ds = datasets.Dataset.from_dict({"anchor": QUERIES, "positive": POSITIVES})
    st = st_util.mine_hard_negatives(ds, minilm(), corpus=CORPUS, num_negatives=2, output_format=fmt,
                                     output_scores=scores, use_faiss=True, verbose=False).to_list()
    assert [{k: v for k, v in r.items() if k != "scores"} for r in ours] == [
        {k: v for k, v in r.items() if k != "scores"} for r in st]
    for a, b in zip(ours, st):
        assert a.get("scores") == pytest.approx(b.get("scores"), abs=2e-5)


def test_cli_random_sampling_is_sentence_transformers_name(tmp_path, inputs, capsys):
    # --sampling random draws uniformly from the window (the same draw as hardneg's alias "uniform")
    pairs, corpus = inputs
    rows = {}
    for sampling in ("random", "uniform"):
        out = tmp_path / f"{sampling}.jsonl"
        code, _, err = _cli(_mine(pairs, corpus, out, "--sampling", sampling, "--range-max", "8", "--seed", "3",
                                  "--cache-dir", tmp_path / "cache"), capsys)
        assert code == 0, err
        rows[sampling] = out.read_text()
    assert rows["random"] == rows["uniform"]
    code, _, err = _cli(_mine(pairs, corpus, tmp_path / "x.jsonl", "--sampling", "hardest"), capsys)
    assert code == 2 and "sampling must be one of ('top', 'random', 'uniform', 'tilted')" in err


def test_only_the_mine_command_caps_the_kernel_caches(tmp_path, inputs, capsys, monkeypatch):
    """`hardneg mine`, a process whose job is mining, sizes oneDNN's and ideep's kernel caches for
    encoding (`cap_kernel_caches`); the library's `mine_hard_negatives`, which a training script calls
    before it trains in the same process, leaves them as the process has them."""
    import hardneg
    from hardneg.mining.token_batching import KERNEL_CACHE_ENTRIES
    from tests.retrieval_fixtures import minilm

    names = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"anchor": QUERIES, "positive": POSITIVES})
    rows = hardneg.mine_hard_negatives(ds, minilm(), corpus=CORPUS, num_negatives=2, verbose=False)
    assert len(rows) == 2 * len(QUERIES)
    assert [os.environ.get(n) for n in names] == [None, None]
    pairs, corpus = inputs
    out = tmp_path / "neg.jsonl"
    assert _cli(_mine(pairs, corpus, out, "--cache-dir", tmp_path / "c"), capsys)[0] == 0
    assert [os.environ.get(n) for n in names] == [str(KERNEL_CACHE_ENTRIES)] * 2
