"""`MineConfig` is the one list of mining knobs: every field is one option of `hardneg mine` (same name with
dashes, same default and help), and messages name a knob in the caller's vocabulary (`knob`)."""

import dataclasses
import re

import pytest

from hardneg.mining.estimate import estimate_mining
from hardneg.mining.mine import MineConfig, knob
from hardneg.mining.pipeline import mine_texts
from hardneg.mining.summary import KNOBS
from tests.cli_helpers import run_cli, write_mine_inputs
from tests.retrieval_fixtures import POSITIVES, QUERIES

#: the fields whose command-line default differs from the Python one, and that default (docs/retrieval.md)
CLI_DEFAULTS = {"index": "auto", "store": "auto"}


def _mine_options():
    import typer

    from hardneg.cli import app

    return {p.name: p for p in typer.main.get_command(app).commands["mine"].params}


def test_every_field_is_one_option_with_its_default_and_help():
    options = _mine_options()
    fields = dataclasses.fields(MineConfig)
    assert len(fields) == 28  # a new field fails here first: the checks below then cover it
    for f in fields:
        p = options[f.name]  # the option that fills the field
        assert [o for o in p.opts if o.startswith("--")] == ["--" + f.name.replace("_", "-")], f.name
        holders = [q.name for q in options.values() if set(q.opts + q.secondary_opts) & set(p.opts)]
        assert holders == [f.name], f.name  # no other option spells it
        assert p.default == CLI_DEFAULTS.get(f.name, f.default), f.name
        assert p.help == f.metadata["help"], f.name
    assert {f.name for f in fields if "cli_default" in f.metadata} == set(CLI_DEFAULTS)
    assert options["num_negatives"].opts == ["--num-negatives", "-n"]
    assert options["dedupe"].secondary_opts == ["--no-dedupe"] and options["scores"].is_flag
    kinds = {name: options[name].bare_type() for name in ("range_max", "max_memory", "beta", "index")}
    assert kinds == {"range_max": "int", "max_memory": "str", "beta": "float", "index": "str"}
    # the options that are not knobs: inputs, outputs, models, the cache
    assert set(options) - {f.name for f in fields} == {
        "out", "pairs", "corpus", "wordnet", "wordnet_pos", "wordnet_split", "wordnet_query", "wordnet_ambiguous",
        "data_dir", "max_pairs", "query_column", "positive_column", "model", "guide", "store_dir", "cache_dir",
        "no_cache", "overwrite", "quiet"}


def test_an_option_reaches_the_config(tmp_path, capsys):
    # --recall-sample is generated from its field: its value is validated there, before any model loads
    pairs, corpus = write_mine_inputs(tmp_path)
    out = tmp_path / "out.jsonl"
    for extra, msg in ((["--recall-sample", "-1"], "recall_sample must be an int >= 0, got -1"),
                       (["--format", "quadruplet"], "format must be one of triplet, n-tuple, n-tuple-scores, "
                                                    "labeled-pair, labeled-list, got 'quadruplet'"),
                       (["--max-memory", "lots"], "--max-memory must be a size like 16G")):
        code, _, err = run_cli(["mine", "--pairs", pairs, "--corpus", corpus, "--out", out, *extra], capsys)
        assert code == 2 and err.splitlines() == [f"hardneg: error: {err.removeprefix('hardneg: error: ')}"]
        assert msg in err, err
        assert not out.exists()


def test_knob_spells_a_field_for_python_and_for_the_command_line():
    assert knob("max_memory") == "max_memory" and knob("max_memory", "cli") == "--max-memory"
    assert knob("store", "python", "float16") == "store='float16'"
    assert knob("store", "cli", "float16") == "--store float16"
    assert knob("index", "cli", "IVF4096, PQ48") == "--index 'IVF4096, PQ48'"  # quoted for a shell
    with pytest.raises(ValueError, match="names must be one of"):
        knob("store", "yaml")
    # the summary's advice names only fields (so both spellings exist)
    named = {m for text in KNOBS.values() for m in re.findall(r"\{(\w+)\}", text)}
    assert named <= {f.name for f in dataclasses.fields(MineConfig)}


def test_estimate_refusal_names_the_callers_knobs():
    est = estimate_mining(10**8, 10, 384, 10, base_bytes=0)  # 10^8 float32 rows of 384: far above 8 GB
    with pytest.raises(ValueError) as py:
        est.check("8G", "python")
    assert str(py.value).endswith("exceeds the 8.00 GB of max_memory; store the corpus on disk (store='float16'), "
                                  "use a compressed index (e.g. index='IVF4096,PQ48'), or raise max_memory")
    with pytest.raises(ValueError) as cli:
        est.check("8G", "cli")
    assert str(cli.value).endswith("exceeds the 8.00 GB of --max-memory; store the corpus on disk (--store float16), "
                                   "use a compressed index (e.g. --index IVF4096,PQ48), or raise --max-memory")


def test_mine_texts_names_python_arguments_before_loading_a_model():
    # 6 pairs, no corpus: 6 documents, fewer than range_min + num_negatives + the positive
    with pytest.raises(ValueError, match=r"lower range_min / num_negatives$"):
        mine_texts(QUERIES, POSITIVES, None, MineConfig(num_negatives=10), show_progress=False)
    with pytest.raises(ValueError, match=r"lower --range-min / --num-negatives$"):
        mine_texts(QUERIES, POSITIVES, None, MineConfig(num_negatives=10), show_progress=False, names="cli")
    with pytest.raises(ValueError, match=r"^max_memory must be a size like 16G"):
        mine_texts(QUERIES, POSITIVES, None, MineConfig(max_memory="lots"), show_progress=False)
