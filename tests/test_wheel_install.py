"""`make dist`'s sdist and wheel (python -m build, twine check), and the wheel in a fresh virtual environment:
the core alone, then with [all].

torch comes from constraints.txt (the local CPU build) and is installed first, so nothing large is
downloaded for it; the other dependencies come from the package index.
"""

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

CHECK = textwrap.dedent("""
    import json, sys
    from importlib import resources
    import torch
    import hardneg
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    y = torch.randint(0, 4, (32,), generator=g)
    a = float(hardneg.hscl(z1, z2, y, beta=1.0))
    b = float(hardneg.create_strategy("hscl", beta=1.0)(z1, z2, labels=y))
    optional = [m for m in ("faiss", "sentence_transformers", "datasets", "matplotlib", "sklearn") if m in sys.modules]
    print(json.dumps({"loss": a, "preset": b, "optional": optional, "file": hardneg.__file__,
                      "typed": resources.files("hardneg").joinpath("py.typed").is_file()}))
""")


def _sh(*cmd, check=True, timeout=1800):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # only the new venv
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd="/", env=env)
    if check:
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    pytest.importorskip("build")  # the dev extra's build and twine: what `make dist` runs
    pytest.importorskip("twine")
    dist = tmp_path / "dist"
    _sh(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    (wheel,) = dist.glob("hardneg-*.whl")
    (sdist,) = dist.glob("hardneg-*.tar.gz")
    _sh(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"src/hardneg/py.typed", "CHANGELOG.md", "constraints.txt", "LICENSE"} <= names

    venv = tmp_path / "venv"
    _sh(sys.executable, "-m", "venv", venv)
    py, pip = venv / "bin" / "python", [venv / "bin" / "python", "-m", "pip", "install", "-q",
                                        "--disable-pip-version-check", "-c", ROOT / "constraints.txt"]
    _sh(*pip, "torch")
    _sh(*pip, wheel)

    # the core: a loss and a preset run, nothing optional was installed or imported
    core = json.loads(_sh(py, "-c", CHECK).stdout.strip().splitlines()[-1])
    assert str(venv) in core["file"] and core["typed"] and core["optional"] == []
    assert core["preset"] == pytest.approx(core["loss"], rel=1e-6)
    for dist in ("faiss-cpu", "sentence-transformers", "scikit-learn", "matplotlib", "typer",
                 "pytorch-metric-learning"):
        assert _sh(py, "-m", "pip", "show", "-q", dist, check=False).returncode != 0, dist
    no_cli = _sh(venv / "bin" / "hardneg", "--help", check=False)
    assert no_cli.returncode != 0 and 'pip install "hardneg[cli]"' in no_cli.stderr

    # with every extra: the command line too
    _sh(*pip, f"{wheel}[all]")
    full = json.loads(_sh(py, "-c", CHECK).stdout.strip().splitlines()[-1])
    assert full["loss"] == pytest.approx(core["loss"], rel=1e-6)
    helped = _sh(venv / "bin" / "hardneg", "--help").stdout
    assert all(c in helped for c in ("train", "mine", "strategies", "compare"))
    listed = _sh(venv / "bin" / "hardneg", "strategies").stdout
    assert all(p in listed for p in ("hscl", "moco_queue", "mochi", "cluster_guided"))
    _sh(py, "-c", "import hardneg, hardneg.integrations.sentence_transformers, faiss; hardneg.mine_hard_negatives")
