"""The failure matrix: every ``hardneg`` subcommand (and every ``python -m reproduce`` command) × every way
its files or its process can fail.

Conditions (:data:`CONDITIONS`): a missing input file, an unreadable (garbage) input file, an output
location that cannot be written (a path under a regular file: running as root, ``chmod`` would not
stop the write), a corrupt cache / store / model / state file where the command reads one, NaN or inf
in input arrays where it reads arrays, SIGINT and SIGTERM where the command runs long enough to be
stopped. Each cell is a :class:`Case` (run for real on tiny inputs) or :class:`NotApplicable` with the
reason. The subcommands are read from the CLI app itself, so a new subcommand without a row fails
:func:`test_every_subcommand_has_a_row_for_every_condition`.

What a failing case must show:

- exit code 2 (130 for SIGINT, 143 for SIGTERM) and one line ``hardneg: error: …`` naming the file or
  the option, no traceback;
- nothing half-written: every file and folder of the case's workspace is as before (user errors), or
  no temporary file and only whole JSON files are left (signals);
- nothing that blocks the next run: the workspace is unchanged, so the corrected command starts as
  from scratch; after a signal, ``--resume`` finishes the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml

from hardneg.cli import app, main
from reproduce.cli import app as reproduce_app
from reproduce.cli import main as reproduce_main

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")

CONDITIONS = ("missing input", "garbage input", "output not writable", "corrupt state", "NaN/inf input",
              "SIGINT", "SIGTERM")
EXIT = {"SIGINT": 130, "SIGTERM": 143}
GARBAGE = bytes(range(255, -1, -1)) * 8  # not UTF-8, not JSON, not YAML, not any array format

TINY = {
    "data": {"name": "digits", "train_limit": 64, "test_limit": 40},
    "model": {"encoder": "mlp", "hidden": 16, "depth": 1, "head_hidden": 16, "proj_dim": 8},
    "loss": {"name": "ucl"},
    "train": {"epochs": 1, "batch_size": 32, "progress": False, "threads": 1},
    "eval": {"knn_k": 5, "linear_probe": False, "diagnostics": False},
    "bounds": {"enabled": True, "every": 1},  # what `hardneg bounds` sets: one run serves train and bounds
}
TINY_COMPARE = {**{k: v for k, v in TINY.items() if k not in ("loss", "bounds")}, "grid": {"losses": [{"name": "ucl"}]},
                "report": {"embedding_map": True, "map_points": 20}}
# long enough to be stopped: many epochs of the tiny model
LONG = {**TINY, "train": {**TINY["train"], "epochs": 500, "checkpoint_every": 10_000}}
LONG_COMPARE = {**TINY_COMPARE, "train": LONG["train"]}
CROSSMODAL_QUICK = ROOT / "configs" / "crossmodal_quick.yaml"
PAIRS = [("how do plants make food", "photosynthesis turns light into sugar"),
         ("what melts ice", "heat melts ice into water"),
         ("where do whales live", "whales live in the ocean")]
CORPUS = ["rain falls from clouds", "the sun is a star", "bread is baked in ovens", "cats chase mice",
          "rivers flow to the sea", "glass is made from sand", "bees make honey", "iron rusts in water"]
PLATEAU = ["--entry", "ucl", "--max-epochs", "1", "--patience", "1"]
WORDNET_LINE = "{off} 05 n 01 {word} 0 000 | {gloss}; \"{example}\"\n"


@dataclass
class Case:
    """One row: ``build(ws, fx)`` makes the files in the workspace ``ws`` and returns the argv and the
    text (file or option) the error line must contain. Signal rows run a subprocess and wait until
    ``ready(ws)`` (default: the process has installed hardneg's SIGTERM handler) before signalling."""

    build: Callable[[Path, Fixtures], tuple[list[str], str]]
    xfail: str | None = None
    slow: bool = False
    ready: Callable[[Path], bool] | None = None
    resume: bool = False  # after a signal, append --resume and check the run finishes
    heals: bool = False  # a damaged cache file: set aside with one warning line naming it, the command succeeds


@dataclass
class NotApplicable:
    reason: str


def _write(p: Path, data: bytes | str | dict) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, dict):
        p.write_text(yaml.safe_dump(data))
    elif isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data)
    return p


@dataclass
class Fixtures:
    """Finished outputs built once per session (a run, a compare folder, a mining cache), copied into a
    case's workspace on request."""

    root: Path
    built: dict[str, Path] = field(default_factory=dict)

    def _build(self, key: str, argv: Callable[[Path], list[str]]) -> Path:
        if key not in self.built:
            d = self.root / key
            with pytest.raises(SystemExit) as e:
                main(argv(d))
            assert e.value.code == 0, f"building the {key} fixture failed"
            self.built[key] = d
        return self.built[key]

    def run(self, ws: Path) -> Path:
        src = self._build("run", lambda d: ["train", "-c", str(_write(d.parent / "run.yaml", TINY)), "--out",
                                            str(d)])
        shutil.copytree(src, ws / "run")
        return ws / "run"

    def compare(self, ws: Path) -> Path:
        src = self._build("compare", lambda d: ["compare", "-c", str(_write(d.parent / "cmp.yaml", TINY_COMPARE)),
                                                "--out", str(d)])
        shutil.copytree(src, ws / "cmp")
        return ws / "cmp"

    def plateau(self, ws: Path) -> Path:
        src = self._build("plateau", lambda d: ["plateau", "-c", str(_write(d.parent / "pl.yaml", TINY_COMPARE)),
                                                *PLATEAU, "--out", str(d)])
        shutil.copytree(src, ws / "pl")
        return ws / "pl"

    def mine_inputs(self, ws: Path) -> tuple[Path, Path]:
        pairs = _write(ws / "pairs.jsonl", "".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in PAIRS))
        corpus = _write(ws / "corpus.txt", "\n".join(CORPUS) + "\n")
        return pairs, corpus

    def mine_cache(self, ws: Path) -> Path:
        def argv(d: Path) -> list[str]:
            pairs, corpus = self.mine_inputs(d)
            return ["mine", "--pairs", str(pairs), "--corpus", str(corpus), "--out", str(d / "out.jsonl"), "-n", "2",
                    "--precision", "fp32", "--cache-dir", str(d / "cache"), "--quiet"]

        src = self._build("mine", argv)
        shutil.copytree(src / "cache", ws / "cache")
        return ws / "cache"


# --- the rows -------------------------------------------------------------------------------------


def _cfg(ws: Path, raw: dict = TINY, name: str = "c.yaml") -> str:
    return str(_write(ws / name, raw))


def _file(ws: Path) -> Path:
    """A regular file: an output path under it cannot be created."""
    return _write(ws / "file", "a file, not a folder\n")


def _pid_catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _metrics_written(ws: Path) -> bool:
    return any(p.stat().st_size > 0 for p in ws.rglob("metrics.jsonl"))


def _training_rows(cmd: str) -> dict[str, Case | NotApplicable]:
    compare = cmd in ("compare", "plateau")
    base, long = (TINY_COMPARE, LONG_COMPARE) if compare else (TINY, LONG)
    extra = PLATEAU if cmd == "plateau" else []

    def corrupt(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        if cmd == "compare":  # a compare folder whose finished run's summary is damaged
            cmp = fx.compare(ws)
            summary = next((cmp / "runs").glob("*/summary.json"))
            _write(summary, GARBAGE)
            return ["compare", "-c", _cfg(ws, base), "--out", str(cmp), "--resume"], str(summary)
        run = fx.plateau(ws) if cmd == "plateau" else fx.run(ws)
        _write(run / "checkpoint.pt", GARBAGE)
        return [cmd, "-c", _cfg(ws, base), "--out", str(run), "--resume", *extra], str(run / "checkpoint.pt")

    def signalled(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        # plateau: at most 500 epochs, and no plateau can be found before 500 evaluations
        long_extra = ["--entry", "ucl", "--max-epochs", "500", "--patience", "500"] if cmd == "plateau" else []
        return [cmd, "-c", _cfg(ws, long), "--out", str(ws / "out"), *long_extra], "--resume"

    return {
        "missing input": Case(lambda ws, fx: ([cmd, "-c", str(ws / "none.yaml"), "--out", str(ws / "out"), *extra],
                                              "none.yaml")),
        "garbage input": Case(lambda ws, fx: ([cmd, "-c", str(_write(ws / "g.yaml", GARBAGE)), "--out",
                                               str(ws / "out"), *extra], "g.yaml")),
        "output not writable": Case(lambda ws, fx: ([cmd, "-c", _cfg(ws, base), "--out", str(_file(ws) / "out"),
                                                     *extra], "--out")),
        "corrupt state": Case(corrupt),
        "NaN/inf input": NotApplicable("reads no arrays: the training data are the built-in digits or "
                                       "Fashion-MNIST's uint8 idx files, which cannot hold NaN"),
        "SIGINT": Case(signalled, slow=True, ready=_metrics_written, resume=True),
        "SIGTERM": Case(signalled, slow=cmd != "train", ready=_metrics_written, resume=True),
    }


def _report_rows() -> dict[str, Case | NotApplicable]:
    def nan_embeddings(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        cmp = fx.compare(ws)
        emb = next((cmp / "runs").glob("*/embeddings.pt"))
        e = torch.load(emb, weights_only=True)
        e["features"][0, 0] = float("nan")
        torch.save(e, emb)
        return ["report", str(cmp)], str(emb)

    def corrupt(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        cmp = fx.compare(ws)
        summary = next((cmp / "runs").glob("*/summary.json"))
        _write(summary, GARBAGE)
        return ["report", str(cmp)], str(summary)

    return {
        "missing input": Case(lambda ws, fx: (["report", str(ws / "none")], "none")),
        "garbage input": Case(lambda ws, fx: (["report", str(_write(ws / "g", GARBAGE))], "g")),
        "output not writable": Case(lambda ws, fx: (["report", str(fx.compare(ws)), "--docs",
                                                     str(_file(ws) / "page.md")], "--docs")),
        "corrupt state": Case(corrupt),
        "NaN/inf input": Case(nan_embeddings),
        "SIGINT": NotApplicable("finishes in about a second on a tiny run; no window to stop it"),
        "SIGTERM": NotApplicable("finishes in about a second on a tiny run; no window to stop it"),
    }


def _nan_model(ws: Path, fx: Fixtures) -> Path:
    run = fx.run(ws)
    state = torch.load(run / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first].view(-1)[0] = float("inf")
    torch.save(state, run / "model.pt")
    return run


def _eval_rows() -> dict[str, Case | NotApplicable]:
    def corrupt(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        run = fx.run(ws)
        _write(run / "model.pt", GARBAGE)
        return ["eval", str(run)], "model.pt"

    return {
        "missing input": Case(lambda ws, fx: (["eval", str(ws / "none")], "none")),
        "garbage input": Case(lambda ws, fx: (["eval", str(_write(ws / "g", GARBAGE))], "g")),
        "output not writable": NotApplicable("writes no file: prints to stdout"),
        "corrupt state": Case(corrupt),
        "NaN/inf input": Case(lambda ws, fx: (["eval", str(_nan_model(ws, fx))], "model.pt")),
        "SIGINT": NotApplicable("finishes in seconds on a tiny run; no window to stop it"),
        "SIGTERM": NotApplicable("finishes in seconds on a tiny run; no window to stop it"),
    }


def _crossmodal_rows() -> dict[str, Case | NotApplicable]:
    def corrupt(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        rec = _write(ws / "out" / "crossmodal_quick" / "runs" / "uniform_s0" / "summary.json", GARBAGE)
        return ["crossmodal-compare", "-c", str(CROSSMODAL_QUICK), "--out", str(ws / "out"), "--summarize"], str(rec)

    def signalled(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        return ["crossmodal-compare", "-c", str(CROSSMODAL_QUICK), "--out", str(ws / "out")], ""

    return {
        "missing input": Case(lambda ws, fx: (["crossmodal-compare", "-c", str(ws / "none.yaml"), "--out",
                                               str(ws / "out")], "none.yaml")),
        "garbage input": Case(lambda ws, fx: (["crossmodal-compare", "-c", str(_write(ws / "g.yaml", GARBAGE)),
                                               "--out", str(ws / "out")], "g.yaml")),
        "output not writable": Case(lambda ws, fx: (["crossmodal-compare", "-c", str(CROSSMODAL_QUICK), "--out",
                                                     str(_file(ws) / "out")], "--out")),
        "corrupt state": Case(corrupt),
        "NaN/inf input": NotApplicable("reads no input arrays: the scenes are generated; its MiniLM table cache "
                                       "goes through hardneg.arrays.load_array_file and the finiteness check"),
        "SIGINT": Case(signalled, slow=True),
        "SIGTERM": Case(signalled, slow=True),
    }


def _scene(ws: Path, nan: bool = False) -> Path:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    cube = rng.uniform(size=(5, 4, 6)).astype(np.float32)
    if nan:
        cube[1, 1, :2] = np.nan
    gt = np.zeros((5, 4), np.uint8)
    gt[1, 2] = 1
    (ws / "scene").mkdir(exist_ok=True)
    savemat(ws / "scene" / "sd.mat", {"data": cube, "map": gt})
    return ws / "scene"


def _dense_rows() -> dict[str, Case | NotApplicable]:
    def args(ws: Path, data_dir: Path, **kw: str) -> list[str]:
        opts = {"--out": str(ws / "res"), "--docs": str(ws / "page.md"), **kw}
        return ["dense-compare", "hyperspectral", "--seeds", "0", "--abundances", "0.2", "--hs-steps", "2",
                "--data-dir", str(data_dir), "--scene", "sd", *[x for kv in opts.items() for x in kv]]

    def garbage(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        (ws / "scene").mkdir()
        return args(ws, ws / "scene"), str(_write(ws / "scene" / "sd.mat", GARBAGE))

    def corrupt(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        bad = _write(ws / "res" / "dense_instances.json", GARBAGE)
        return args(ws, _scene(ws)), str(bad)

    def signalled(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        return ["dense-compare", "instances", "--seeds", "0,1,2", "--inst-steps", "100000", "--out",
                str(ws / "res"), "--docs", str(ws / "page.md")], ""

    return {
        "missing input": Case(lambda ws, fx: (args(ws, ws / "none"), "none")),
        "garbage input": Case(garbage),
        "output not writable": Case(lambda ws, fx: (args(ws, _scene(ws), **{"--out": str(_file(ws) / "r")}),
                                                    "--out")),
        "corrupt state": Case(corrupt),
        "NaN/inf input": Case(lambda ws, fx: (args(ws, _scene(ws, nan=True)), "sd.mat")),
        "SIGINT": Case(signalled, slow=True),
        "SIGTERM": Case(signalled),
    }


def _diagnose_rows() -> dict[str, Case | NotApplicable]:
    def emb(ws: Path, nan: bool = False) -> str:
        z = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
        if nan:
            z[2, 3] = np.inf
        np.save(ws / "z.npy", z)
        return str(ws / "z.npy")

    def corrupt(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        run = fx.run(ws)
        _write(run / "model.pt", GARBAGE)
        return ["diagnose", "--run", str(run), "--samples", "32"], "model.pt"

    return {
        "missing input": Case(lambda ws, fx: (["diagnose", "--embeddings", str(ws / "none.npy")], "none.npy")),
        "garbage input": Case(lambda ws, fx: (["diagnose", "--embeddings", str(_write(ws / "g.npy", GARBAGE))],
                                              "g.npy")),
        "output not writable": Case(lambda ws, fx: (["diagnose", "--embeddings", emb(ws), "--labels",
                                                     str(_labels(ws)), "--json", str(_file(ws) / "d.json")],
                                                    "--json")),
        "corrupt state": Case(corrupt),
        "NaN/inf input": Case(lambda ws, fx: (["diagnose", "--embeddings", emb(ws, nan=True)], "z.npy")),
        "SIGINT": NotApplicable("finishes in a second on its inputs; no window to stop it"),
        "SIGTERM": NotApplicable("finishes in a second on its inputs; no window to stop it"),
    }


def _labels(ws: Path) -> Path:
    np.save(ws / "y.npy", np.arange(16) % 4)
    return ws / "y.npy"


def _mine_rows() -> dict[str, Case | NotApplicable]:
    def mine(ws: Path, fx: Fixtures, *extra: str, out: Path | None = None) -> list[str]:
        pairs, corpus = fx.mine_inputs(ws)
        return ["mine", "--pairs", str(pairs), "--corpus", str(corpus), "--out", str(out or ws / "out.jsonl"), "-n",
                "2", "--precision", "fp32", "--quiet", *extra]

    def corrupt(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        cache = fx.mine_cache(ws)
        shard = next(cache.rglob("shard-*.npz"))
        _write(shard, GARBAGE)
        return mine(ws, fx, "--cache-dir", str(cache)), shard.name

    def nan(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        cache = fx.mine_cache(ws)
        shard = next(cache.rglob("shard-*.npz"))
        with np.load(shard) as z:
            keys, emb = z["keys"], z["emb"].copy()
        emb[0, 0] = np.nan
        with open(shard, "wb") as f:
            np.savez(f, keys=keys, emb=emb)
        return mine(ws, fx, "--cache-dir", str(cache)), shard.name

    def signalled(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        big = _write(ws / "big.txt", "\n".join(f"document number {i} about topic {i % 97}" for i in range(200_000)))
        return mine(ws, fx, "--corpus", str(big), "--no-cache"), ""

    return {
        "missing input": Case(lambda ws, fx: (["mine", "--pairs", str(ws / "none.jsonl"), "--out",
                                               str(ws / "out.jsonl")], "none.jsonl")),
        "garbage input": Case(lambda ws, fx: (["mine", "--pairs", str(_write(ws / "g.jsonl", GARBAGE)), "--out",
                                               str(ws / "out.jsonl")], "g.jsonl")),
        "output not writable": Case(lambda ws, fx: (mine(ws, fx, "--no-cache", out=_file(ws) / "out.jsonl"),
                                                    "out.jsonl")),
        "corrupt state": Case(corrupt, heals=True),
        "NaN/inf input": Case(nan, heals=True),
        "SIGINT": Case(signalled, slow=True),
        "SIGTERM": Case(signalled, slow=True),
    }


def _wordnet(ws: Path, garbage: bool = False) -> Path:
    d = ws / "wn"
    if garbage:
        _write(d / "data.noun", GARBAGE)
    else:
        _write(d / "data.noun", "".join(WORDNET_LINE.format(off=f"{i:08d}", word=f"thing{i}", gloss=f"a thing {i}",
                                                             example=f"the thing{i} here") for i in range(1, 9)))
    return d


def _wordnet_rows() -> dict[str, Case | NotApplicable]:
    return {
        "missing input": Case(lambda ws, fx: (["wordnet-export", "--out", str(ws / "out"), "--data-dir",
                                               str(ws / "none")], "none")),
        "garbage input": Case(lambda ws, fx: (["wordnet-export", "--out", str(ws / "out"), "--data-dir",
                                               str(_wordnet(ws, garbage=True))], "data.noun")),
        "output not writable": Case(lambda ws, fx: (["wordnet-export", "--out", str(_file(ws) / "out"),
                                                     "--data-dir", str(_wordnet(ws))], "--out")),
        "corrupt state": NotApplicable("keeps no cache or state"),
        "NaN/inf input": NotApplicable("reads text only"),
        "SIGINT": NotApplicable("writes four small files in well under a second"),
        "SIGTERM": NotApplicable("writes four small files in well under a second"),
    }


def _retrieval_rows() -> dict[str, Case | NotApplicable]:
    def results(ws: Path) -> str:
        return str(_write(ws / "results.json", json.dumps({"config": {"seed": 0}, "runs": {}})))

    return {
        "missing input": Case(lambda ws, fx: (["retrieval-compare", "--out", str(ws / "out"), "--summarize",
                                               str(ws / "none.json")], "none.json")),
        "garbage input": Case(lambda ws, fx: (["retrieval-compare", "--out", str(ws / "out"), "--summarize",
                                               str(_write(ws / "g.json", GARBAGE))], "g.json")),
        "output not writable": Case(lambda ws, fx: (["retrieval-compare", "--out", str(_file(ws) / "out"),
                                                     "--summarize", results(ws)], "--out")),
        "corrupt state": NotApplicable("its only state is the results.json files it summarizes: the garbage row"),
        "NaN/inf input": NotApplicable("reads text and JSON only"),
        "SIGINT": NotApplicable("fine-tunes MiniLM on the WordNet files for minutes; too heavy for this matrix"),
        "SIGTERM": NotApplicable("fine-tunes MiniLM on the WordNet files for minutes; too heavy for this matrix"),
    }


def _bench_rows(which: str = "loss") -> dict[str, Case | NotApplicable]:
    quick = ["bench", which, "--sizes", "8", "--repeats", "1", "--no-memory", "--threads", "1"]

    def signalled(ws: Path, fx: Fixtures) -> tuple[list[str], str]:
        return ["bench", which, "--sizes", "65536", "--repeats", "50", "--no-memory", "--threads", "1", "--json",
                str(ws / "rows.json")], ""

    return {
        "missing input": NotApplicable("reads no file: it generates its inputs"),
        "garbage input": NotApplicable("reads no file: it generates its inputs"),
        "output not writable": Case(lambda ws, fx: ([*quick, "--json", str(_file(ws) / "rows.json")], "--json")),
        "corrupt state": NotApplicable("keeps no cache or state"),
        "NaN/inf input": NotApplicable("reads no arrays: it generates its inputs"),
        "SIGINT": Case(signalled, slow=True),
        "SIGTERM": Case(signalled, slow=True),
    }


def _readme_table_rows() -> dict[str, Case | NotApplicable]:
    def readme(ws: Path) -> Path:
        return _write(ws / "README.md", b"# x\n<!-- bench:loss:start -->\n<!-- bench:loss:end -->\n")

    def rows(ws: Path) -> Path:
        return _write(ws / "rows.json", json.dumps([{"case": "floor", "2B": 8}]).encode())

    return {
        "missing input": Case(lambda ws, fx: (["readme-table", "loss", str(ws / "none.json"), "--readme",
                                               str(readme(ws))], "none.json")),
        "garbage input": Case(lambda ws, fx: (["readme-table", "loss", str(_write(ws / "g.json", GARBAGE)),
                                               "--readme", str(readme(ws))], "g.json")),
        "output not writable": Case(lambda ws, fx: (["readme-table", "loss", str(rows(ws)), "--readme",
                                                     str(_file(ws) / "README.md")], "README.md")),
        "corrupt state": NotApplicable("keeps no cache or state"),
        "NaN/inf input": NotApplicable("reads no arrays"),
        "SIGINT": NotApplicable("returns at once"),
        "SIGTERM": NotApplicable("returns at once"),
    }


_NO_FILES = NotApplicable("reads and writes no file; prints the presets")
MATRIX: dict[str, dict[str, Case | NotApplicable]] = {
    "train": _training_rows("train"),
    "bounds": _training_rows("bounds"),
    "compare": _training_rows("compare"),
    "plateau": _training_rows("plateau"),
    "report": _report_rows(),
    "eval": _eval_rows(),
    "reproduce crossmodal-compare": _crossmodal_rows(),
    "reproduce dense-compare": _dense_rows(),
    "diagnose": _diagnose_rows(),
    "mine": _mine_rows(),
    "reproduce wordnet-export": _wordnet_rows(),
    "reproduce retrieval-compare": _retrieval_rows(),
    "strategies": {c: _NO_FILES if c not in EXIT else NotApplicable("returns at once") for c in CONDITIONS},
    "init": {**{c: NotApplicable("reads no file: the example configs ship inside the package")
                for c in CONDITIONS if c not in EXIT},
             "output not writable": Case(lambda ws, fx: (["init", "train", str(_file(ws) / "train.yaml")],
                                                         "train.yaml")),
             **{c: NotApplicable("returns at once") for c in EXIT}},
    "bench loss": _bench_rows("loss"),
    "bench strategies": _bench_rows("strategies"),
    "reproduce readme-table": _readme_table_rows(),
}
CASES = [(cmd, cond) for cmd, row in MATRIX.items() for cond, cell in row.items() if isinstance(cell, Case)]
#: the numbers docs/reliability.md states
N_SUBCOMMANDS = len(MATRIX)
N_CELLS = N_SUBCOMMANDS * len(CONDITIONS)
N_CASES = len(CASES)


def subcommands() -> list[str]:
    """Every runnable subcommand of the app, nested groups spelled ``group command``."""
    out = []

    def walk(cmd, prefix: str) -> None:
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            if getattr(sub, "commands", None) is not None and hasattr(sub, "list_commands"):
                walk(sub, f"{prefix}{name} ")
            else:
                out.append(prefix + name)

    walk(typer.main.get_command(app), "")
    walk(typer.main.get_command(reproduce_app), "reproduce ")
    return sorted(out)


def test_every_subcommand_has_a_row_for_every_condition():
    assert sorted(MATRIX) == subcommands()
    for cmd, row in MATRIX.items():
        assert tuple(row) == CONDITIONS, cmd
        for cond, cell in row.items():
            assert isinstance(cell, Case) or (isinstance(cell, NotApplicable) and cell.reason), (cmd, cond)


SHORT = {"missing input": "missing", "garbage input": "garbage", "output not writable": "unwritable out",
         "corrupt state": "corrupt state", "NaN/inf input": "NaN/inf", "SIGINT": "SIGINT", "SIGTERM": "SIGTERM"}


def matrix_table() -> str:
    """The markdown table of the matrix that docs/reliability.md shows."""
    def cell(c: Case | NotApplicable) -> str:
        if isinstance(c, NotApplicable):
            return "—"
        return "xfail" if c.xfail else "run (slow)" if c.slow else "heals" if c.heals else "run"

    lines = ["| subcommand | " + " | ".join(SHORT[c] for c in CONDITIONS) + " |",
             "| --- |" + " --- |" * len(CONDITIONS)]
    lines += [f"| `{cmd}` | " + " | ".join(cell(row[c]) for c in CONDITIONS) + " |" for cmd, row in MATRIX.items()]
    return "\n".join(lines)


def test_docs_state_the_size_of_the_matrix():
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    stated = (f"{N_SUBCOMMANDS} subcommands × {len(CONDITIONS)} conditions = {N_CELLS} cells, "
              f"{N_CASES} of them run")
    assert stated in doc, stated
    shown = doc.split("<!-- failure-matrix:start -->\n", 1)[1].split("\n<!-- failure-matrix:end -->", 1)[0]
    assert shown == matrix_table(), "regenerate the table: python -c 'from tests.test_failure_matrix import " \
        "matrix_table; print(matrix_table())'"


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> Fixtures:
    return Fixtures(tmp_path_factory.mktemp("matrix-fixtures"))


def _snapshot(ws: Path) -> dict[str, tuple]:
    return {str(p.relative_to(ws)): (p.is_dir(), None if p.is_dir() else (p.stat().st_size, p.read_bytes()))
            for p in sorted(ws.rglob("*"))}


def _params():
    out = []
    for cmd, cond in CASES:
        cell = MATRIX[cmd][cond]
        marks = [pytest.mark.xfail(strict=True, reason=cell.xfail)] if cell.xfail else []
        if cell.slow:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(cmd, cond, marks=marks, id=f"{cmd}|{cond}"))
    return out


@pytest.mark.parametrize("cmd,cond", _params())
def test_failure_matrix(cmd, cond, tmp_path, fx, capsys):
    cell = MATRIX[cmd][cond]
    ws = tmp_path / "ws"
    ws.mkdir()
    argv, name = cell.build(ws, fx)
    entry = main
    if cmd.startswith("reproduce "):  # the repository's reproductions: `python -m reproduce`, same policy
        entry = reproduce_main
    if cond in EXIT:
        # name: what the line adds (a training run: --resume)
        _signal_case(cell, argv, name, ws, getattr(signal, cond), entry is reproduce_main)
        return
    if cell.heals:
        _check_healed(entry, argv, name, ws, capsys)
        return
    before = _snapshot(ws)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        entry(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith("hardneg: error: ") and name in err, err
    assert _snapshot(ws) == before, "the failed command changed its workspace"


def _check_healed(entry: Callable[[list[str]], None], argv: list[str], name: str, ws: Path, capsys) -> None:
    """A damaged cache file does not stop the command: exit 0, one warning naming the file (printed
    as one line by the CLI; pytest records it instead), the file kept beside as ``<name>.corrupt``."""
    from hardneg.io import HardnegWarning

    with pytest.warns(HardnegWarning) as rec, pytest.raises(SystemExit) as e:
        entry(argv)
    err = capsys.readouterr().err
    assert e.value.code == 0 and "Traceback" not in err, err
    damaged = [str(w.message) for w in rec if issubclass(w.category, HardnegWarning)]
    assert len(damaged) == 1 and name in damaged[0] and "damaged" in damaged[0] and "\n" not in damaged[0], damaged
    assert list(ws.rglob(f"{name}.corrupt")), "the damaged file was not set aside"


def _signal_case(cell: Case, argv: list[str], name: str, ws: Path, signum: int, reproduction: bool = False) -> None:
    path = os.pathsep.join([SRC, str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    entry = "from reproduce.cli import main" if reproduction else "from hardneg.cli import main"
    cmd = [sys.executable, "-c", f"{entry}; main()", *argv]
    proc = subprocess.Popen(cmd, env=env, cwd=ws, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (proc.poll() is None and _pid_catches_sigterm(proc.pid) and (cell.ready or (lambda _ws: True))(ws)):
            assert proc.poll() is None, f"the command ended before it was signalled: {proc.stderr.read()}"
            assert time.time() - t0 < 180, "the command did not get going"
            time.sleep(0.05)
        time.sleep(0.5)  # inside the command's work
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"hardneg: interrupted ({signal.Signals(signum).name})") and name in last, err
    assert not [p for p in ws.rglob(".*.tmp")], "a temporary file was left behind"
    for p in ws.rglob("*.json"):
        json.loads(p.read_text(encoding="utf-8"))  # whole files only
    if cell.resume:  # the stopped run does not block the next one: --resume continues it (and is stopped)
        size = sum(p.stat().st_size for p in ws.rglob("metrics.jsonl"))
        proc = subprocess.Popen([*cmd, "--resume"], env=env, cwd=ws, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            t0 = time.time()
            while sum(p.stat().st_size for p in ws.rglob("metrics.jsonl")) <= size:
                assert proc.poll() is None, proc.stderr.read()
                assert time.time() - t0 < 180, "the resumed run did not continue"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 143, err
