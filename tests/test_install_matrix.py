"""The wheel, built once, installed into a fresh virtual environment per extra (no system site
packages): the core alone, each extra docs/install.md documents for users (mining, text, cli, train,
onnx, bench) and [all]. In each, what the install table says the extra enables is run: the command's
`--help` and `--version`, `hardneg strategies`, `mine_hard_negatives` and `hardneg mine` on a tiny
fixture, a 1-epoch `hardneg train`; and on an install without the command, `hardneg` prints one line
naming the pip install line and exits with 2. `docs` and `dev` are a checkout's tooling (`make docs`, `make test`).

torch comes from constraints.txt (the local CPU build), installed first; the rest from the package
sources pip is configured with. Slow: about a minute or two per environment.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

NO_CLI = 'pip install "hardneg[cli]"'

LOSSES = textwrap.dedent("""
    import torch, hardneg
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    y = torch.randint(0, 4, (32,), generator=g)
    assert abs(float(hardneg.hscl(z1, z2, y, beta=1.0))
               - float(hardneg.create_strategy("hscl", beta=1.0)(z1, z2, labels=y))) < 1e-5
""")

MINING = textwrap.dedent("""
    import numpy as np, torch
    from hardneg.mining.mine import MineConfig, mine_embeddings
    rng = np.random.default_rng(0)
    c = rng.standard_normal((50, 8)).astype(np.float32); c /= np.linalg.norm(c, axis=1, keepdims=True)
    q = c[:5] + 0.1
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    res = mine_embeddings(q, c, np.arange(5), MineConfig(num_negatives=2), show_progress=False)
    s = q @ c.T
    for i in range(5):  # the top-2 non-positive documents, by hand
        assert list(res.neg_ids[i]) == [j for j in np.argsort(-s[i]) if j != i][:2]
    from hardneg.negatives import create_strategy
    z = torch.randn(16, 8)
    float(create_strategy("cluster_guided", n_clusters=2)(z, z + 0.1))
""")

TEXT = textwrap.dedent("""
    import os
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets, hardneg
    import hardneg.integrations.sentence_transformers  # noqa: F401
    ds = datasets.Dataset.from_dict({"anchor": ["he drank cold milk", "we planted roses"],
                                     "positive": ["a white liquid from cows", "flowering shrubs of the genus Rosa"]})
    corpus = ["a hot drink of coffee", "a plot of ground for plants", "a dairy product", "a bird of prey"]
    out = hardneg.mine_hard_negatives(ds, None, corpus=corpus, num_negatives=2, verbose=False)
    assert out.column_names == ["anchor", "positive", "negative"] and len(out) == 4, out.to_list()
""")

ONNX = TEXT + textwrap.dedent("""
    from hardneg.mining.mine import MineConfig
    from hardneg.mining.pipeline import mine_texts
    r = mine_texts(list(ds["anchor"]), list(ds["positive"]), corpus, MineConfig(num_negatives=2, backend="onnx"),
                   show_progress=False, cache_dir=None)
    assert len(r.rows) == 4
""")

BENCH = textwrap.dedent("""
    from hardneg.bench.loss_speed import run
    rows = run([64], repeats=1, threads=1, memory=False, cases=["hardneg.supcon", "pml.SupConLoss"], echo=print)
    assert any("speedup_vs_pml.SupConLoss" in r for r in rows)
""")

TINY = ["data.train_limit=128", "data.test_limit=60", "train.epochs=1", "train.batch_size=64", "train.threads=1",
        "train.progress=false", "model={encoder: mlp, hidden: 16, depth: 1, head_hidden: 16, proj_dim: 8}",
        "eval={every_epochs: 1, knn_k: 10, probe_max_iter: 20}"]

# extra -> (Python checks, has the command, `hardneg train`: "runs", "refused" (names [train]) or None (the
# table promises neither: [text]'s dependencies happen to bring scikit-learn))
MATRIX = {
    "": ([LOSSES], False, None),
    "mining": ([LOSSES, MINING], False, None),
    "text": ([LOSSES, TEXT], True, None),
    "cli": ([LOSSES], True, "refused"),
    "train": ([LOSSES], True, "runs"),
    "onnx": ([LOSSES, ONNX], True, None),
    "bench": ([LOSSES, BENCH], False, None),
    "all": ([LOSSES, MINING, TEXT, ONNX], True, "runs"),
}


def _sh(*cmd, check=True, timeout=1800, cwd="/"):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # only the new venv
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    if check:
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("build")
    dist = tmp_path_factory.mktemp("dist")
    _sh(sys.executable, "-m", "build", "--wheel", "--outdir", dist, ROOT)
    (whl,) = dist.glob("hardneg-*.whl")
    return whl


@pytest.mark.parametrize("extra", list(MATRIX), ids=[e or "core" for e in MATRIX])
def test_each_extra_enables_what_the_install_table_says(wheel, tmp_path, extra):
    checks, has_cli, train = MATRIX[extra]
    venv = tmp_path / "venv"
    _sh(sys.executable, "-m", "venv", venv)
    py, hn = venv / "bin" / "python", venv / "bin" / "hardneg"
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", ROOT / "constraints.txt"]
    _sh(*pip, "torch")
    _sh(*pip, f"{wheel}[{extra}]" if extra else wheel)
    assert json.loads(_sh(py, "-c", "import json, hardneg; print(json.dumps(hardneg.__file__))").stdout).startswith(
        str(venv))
    for code in checks:
        _sh(py, "-c", code, cwd=tmp_path)
    version = _sh(hn, "--version").stdout
    assert version.startswith("hardneg ") and version.split()[1][0].isdigit()
    helped = _sh(hn, "--help", check=False)
    if not has_cli:
        assert helped.returncode == 2 and helped.stdout == ""
        (line,) = helped.stderr.splitlines()
        assert line.startswith("hardneg: error: ") and line.endswith(NO_CLI), line
        return
    assert helped.returncode == 0 and "strategies" in helped.stdout and "<bool>" not in helped.stdout
    assert "hscl" in _sh(hn, "strategies").stdout
    assert "built:" in _sh(hn, "strategies", "hscl", "-o", "beta=2").stdout
    if TEXT in checks:  # `hardneg mine` on two pairs and a four-line corpus
        (tmp_path / "pairs.jsonl").write_text('{"query": "he drank cold milk", "positive": "a white liquid"}\n'
                                              '{"query": "we planted roses", "positive": "flowering shrubs"}\n')
        (tmp_path / "corpus.txt").write_text("a hot drink\na plot of ground\na dairy product\na bird of prey\n")
        _sh(hn, "mine", "--pairs", "pairs.jsonl", "--corpus", "corpus.txt", "--out", "mined.jsonl", "-n", "2",
            "--quiet", "--no-cache", cwd=tmp_path)
        assert len((tmp_path / "mined.jsonl").read_text().splitlines()) == 4
    sets = [x for s in TINY for x in ("--set", s)]
    if train == "refused":
        refused = _sh(hn, "train", "--config", "train", "--out", "run", *sets, check=False, cwd=tmp_path)
        assert refused.returncode == 2 and refused.stderr.strip().endswith('pip install "hardneg[train]"')
    elif train == "runs":
        _sh(hn, "init", "train", cwd=tmp_path)
        trained = _sh(hn, "train", "--config", "train.yaml", "--out", "run", *sets, cwd=tmp_path).stdout
        assert trained.startswith("kNN ") and (tmp_path / "run" / "model.pt").is_file()
