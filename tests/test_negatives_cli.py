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


def _built_kinds(name: str) -> set[str]:
    """The component kinds a preset's strategy holds besides the in-batch source, built with the
    options a preset requires (an embedding dimension, a pool, a guide)."""
    import torch

    from hardneg.negatives import create_strategy

    required = {"generator": {"dim": 8}, "pool": {"embeddings": torch.randn(32, 8)},
                "gist": {"guide": torch.randn(32, 8)}}
    strategy = create_strategy(name, **required.get(name, {}))
    return {c.kind for c in strategy.components()} - {"in_batch"}


def test_alias_table_covers_every_preset_and_kind_and_says_what_each_preset_builds():
    from hardneg.negatives.filters import FILTERS
    from hardneg.negatives.registry import PRESETS, alias_table
    from hardneg.negatives.sources import SOURCES
    from hardneg.negatives.weighting import WEIGHTINGS

    rows = alias_table()
    kinds = {**SOURCES, **FILTERS, **WEIGHTINGS}
    assert [r.preset for r in rows if r.preset is not None] == list_strategies()
    assert {k for r in rows for k in r.kinds} == set(kinds)
    for r in rows:
        assert r.classes == tuple(kinds[k].__name__ for k in r.kinds)
        if r.preset is not None:  # the kinds the preset declares are the components it builds
            assert set(r.kinds) - {"in_batch"} == _built_kinds(r.preset), r.preset
            assert r.base == PRESETS[r.preset].base and r.paper == PRESETS[r.preset].paper
    by_preset = {r.preset: r for r in rows}
    assert by_preset["moco_queue"].classes == ("MemoryQueue",) and by_preset["moco_queue"].kinds == ("queue",)
    assert by_preset["adco"].kind_aliases == (("adco", "adversarial_bank"),)
    assert by_preset["mochi"].kinds == ("queue", "mixing") and by_preset["mochi"].base == "moco_queue"
    assert by_preset["mochi"].paper == "Kalantidis et al. 2020 (MoCHi)"


def test_components_lists_the_alias_table_and_refuses_a_name(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    from hardneg.negatives.registry import alias_table

    with pytest.raises(SystemExit) as e:
        main(_argv("--components"))
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for r in alias_table():
        cells = [r.preset or "—", r.base or "—", ", ".join(r.kinds), ", ".join(r.classes)]
        assert any(all(f" {c} " in line for c in cells) for line in lines), cells
    with pytest.raises(SystemExit) as e:
        main(_argv("mochi", "--components"))
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().startswith("hardneg: error: --components lists every preset")
