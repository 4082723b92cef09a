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


def _commands(reproductions: bool = False):
    """(path, click command) of every `hardneg` sub-command, nested groups included; with
    ``reproductions``, also the repository's ``python -m reproduce`` commands (path ``reproduce <name>``),
    which share the option vocabulary."""
    import typer

    from hardneg.cli import app
    from reproduce.cli import app as reproduce_app

    out = []

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append((" ".join(path), cmd))

    walk(typer.main.get_command(app), [])
    if reproductions:
        walk(typer.main.get_command(reproduce_app), ["reproduce"])
    return out


def _kind(p) -> str:
    """The value type of an option ("path", "int", ...; a repeatable option's element type)."""
    name = p.bare_type() if hasattr(p, "bare_type") else p.type.name  # typer >= 0.20 / older typer
    name = name.lower()
    return name[5:-1] if name.startswith("list[") else name


def test_every_option_has_help_and_one_meaning():
    commands = _commands(reproductions=True)
    assert len(commands) >= 15 and "reproduce retrieval-compare" in dict(commands) and "init" in dict(commands)
    kinds: dict[str, set] = {}
    shorts: dict[str, set] = {}
    for path, cmd in commands:
        for p in cmd.params:
            assert (p.help or "").strip(), f"hardneg {path}: {p.opts} has no help"
            if p.param_type_name != "option":
                continue
            longs = [o for o in p.opts if o.startswith("--")]
            for o in longs:
                kinds.setdefault(o, set()).add((_kind(p), bool(p.is_flag)))
            for o in p.opts:
                if not o.startswith("--"):
                    shorts.setdefault(o, set()).update(longs)
    # one type per long option across the commands, one long option per short flag
    assert {o: k for o, k in kinds.items() if len(k) > 1} == {}
    assert {s: lo for s, lo in shorts.items() if len(lo) > 1} == {}
    assert shorts == {"-c": {"--config"}, "-s": {"--set"}, "-o": {"--option"}, "-n": {"--num-negatives"}}
    # outputs: --out (a folder or a file), --json PATH and --docs PAGE, never other spellings
    assert {"--out-dir", "--doc", "--results-dir", "--page"}.isdisjoint(kinds)
    assert kinds["--json"] == {("path", False)} and kinds["--docs"] == {("path", False)}
    with_config = {path for path, cmd in commands if any("--config" in p.opts for p in cmd.params)}
    with_set = {path for path, cmd in commands if any("--set" in p.opts for p in cmd.params)}
    assert with_config <= with_set and "reproduce crossmodal-compare" in with_set


def test_help_shows_no_bool_metavar(capsys):
    from reproduce.cli import main as reproduce_main

    for path, _ in [("", None), ("reproduce", None), *_commands(reproductions=True)]:
        words = path.split()
        entry, prog = (reproduce_main, "python -m reproduce") if words[:1] == ["reproduce"] else (main, "hardneg")
        with pytest.raises(SystemExit) as e:
            entry([*words[1:], "--help"] if entry is reproduce_main else [*words, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert f"Usage: {prog}" in text and "<bool>" not in text, path


def test_retrieval_compare_summarize_rebuilds_the_stored_seed_table(tmp_path, capsys):
    from reproduce.cli import main
    stored = sorted((ROOT / "docs/results").glob("wordnet_finetune_seed[0-9].json"))
    assert len(stored) == 2
    with pytest.raises(SystemExit) as e:
        main(["retrieval-compare", "--out", str(tmp_path), "--summarize", *map(str, stored)])
    assert e.value.code == 0
    assert (tmp_path / "seeds.md").read_text() == (ROOT / "docs/results/wordnet_finetune_seeds.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["retrieval-compare", "--out", str(tmp_path), "--summarize"])
    assert e.value.code == 2 and "--summarize takes the results.json files" in capsys.readouterr().err
