"""What the command-line tests share: running `hardneg` in process, and the small mining inputs."""

import json

import pytest

from hardneg.cli.app import main
from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES


def run_cli(args, capsys) -> tuple[int, str, str]:
    """``hardneg <args>`` in this process: (exit code, stdout, stderr stripped)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err.strip()


def write_mine_inputs(folder) -> tuple:
    """``pairs.jsonl`` (the fixture's query/positive pairs) and ``corpus.txt`` in ``folder``."""
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in zip(QUERIES, POSITIVES)))
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    return pairs, corpus


def mine_argv(pairs, corpus, out, *extra) -> list:
    """``hardneg mine`` on the fixture's files, 2 negatives, fp32, quiet."""
    return ["mine", "--pairs", pairs, "--corpus", corpus, "--out", out, "-n", "2", "--precision", "fp32",
            "--quiet", *extra]
