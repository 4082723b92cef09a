"""`hardneg strategies`."""

from __future__ import annotations

import pytest
import typer

from hardneg.cli import app, main
from hardneg.negatives import list_strategies


def _argv(*args: str) -> list[str]:
    # with a single registered command typer makes it the root command (no sub-command name)
    is_group = hasattr(typer.main.get_command(app), "commands")
    return ["strategies", *args] if is_group else list(args)


def test_lists_every_preset(capsys):
    with pytest.raises(SystemExit) as e:
        main(_argv())
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in list_strategies():
        assert name in out


def test_shows_a_preset_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(_argv("mochi"))
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "query_mix_max" in out and "0.45" in out


def test_unknown_preset_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(_argv("nope"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "unknown strategy preset 'nope'" in err and len(err.splitlines()) == 1


def test_option_builds_the_preset_and_bad_options_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(_argv("hscl", "-o", "beta=2.5", "-o", "filters=[{kind: id}]"))
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "beta=2.5" in out and "IdFilter" in out
    with pytest.raises(SystemExit) as e:
        main(_argv("topk", "-o", "kk=3"))
    assert e.value.code == 2
    assert "unknown option(s) ['kk']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(_argv("topk", "-o", "k"))
    assert e.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err
