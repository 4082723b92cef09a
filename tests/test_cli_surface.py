"""The `hardneg` command as a new user meets it: what it needs installed, `--version`, and one vocabulary
of options across its sub-commands."""

import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from hardneg.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def _blocked(modules: tuple[str, ...], call: str) -> subprocess.CompletedProcess:
    """Run ``call`` in a fresh interpreter in which importing any of ``modules`` fails as if not installed."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {modules!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Block())
        from hardneg.__main__ import main
        {call}
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})


def test_the_console_script_is_the_module_that_imports_nothing_optional():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"hardneg": "hardneg.__main__:main"}


def test_the_command_runs_without_click():
    # typer >= 0.20 vendors click and nothing declares click: the [cli] extra must not need it
    out = _blocked(("click",), 'main(["strategies"])')
    assert out.returncode == 0, out.stderr
    assert "hscl" in out.stdout


@pytest.mark.parametrize("argv", [["--help"], [], ["train", "--config", "x.yaml"]])
def test_core_install_prints_the_install_line_and_fails(argv):
    out = _blocked(("typer", "rich", "yaml", "click"), f"main({argv!r})")
    assert out.returncode == 2
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("hardneg: error: ") and line.endswith('for the hardneg command; it comes with: '
                                                                  'pip install "hardneg[cli]"'), line


def test_version_is_the_installed_distribution_s(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"hardneg {metadata.version('hardneg')}\n"
    out = _blocked(("typer", "rich", "yaml", "click"), 'main(["--version"])')  # the core answers it too
    assert out.returncode == 0 and out.stdout == f"hardneg {metadata.version('hardneg')}\n"
