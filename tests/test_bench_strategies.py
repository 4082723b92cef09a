"""`hardneg bench strategies`: every in-batch preset timed against the floor, as JSON and a README table."""

import json
import math

import pytest

from hardneg.bench.loss_speed import OWN_WORK_PRESETS, PRESET_CASES, PRESETS, format_preset_table, run
from hardneg.cli import main
from reproduce.cli import main as reproduce_main


def test_bench_strategies_times_every_preset_and_writes_the_readme_table(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:strategies:start -->\nold\n<!-- bench:strategies:end -->\ntail\n")
    out = tmp_path / "rows.json"
    try:
        main(["bench", "strategies", "--sizes", "64", "--repeats", "1", "--threads", "1", "--no-memory",
              "--json", str(out)])
    except SystemExit as e:  # typer's standalone mode exits 0 after the command
        assert e.code == 0
    try:  # the repository writes its README from the rows
        reproduce_main(["readme-table", "strategies", str(out), "--readme", str(readme)])
    except SystemExit as e:
        assert e.code == 0
    rows = json.loads(out.read_text())
    assert [r["case"] for r in rows] == (["floor"] + [f"preset.{p}" for p in PRESETS]
                                         + [f"own.{p}" for p in OWN_WORK_PRESETS])
    for r in rows:
        assert r["2B"] == 64 and r["seconds"] > 0 and math.isfinite(r["x_floor"]) and r["x_floor"] > 0
    assert next(r for r in rows if r["case"] == "floor")["x_floor"] == 1.0
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- bench:strategies:end -->\ntail\n")
    # the command that regenerates the rows, with the repeats they were measured with
    assert all(r["repeats"] == 1 for r in rows)
    assert f"hardneg bench strategies --sizes 64 --repeats 1 --json {out}` then `python -m reproduce" in text
    assert format_preset_table(rows) in text
    for p in PRESETS:
        assert f"| 64 | {p} | " in text
    assert "| 64 | distance_weighted |" in capsys.readouterr().out


def test_presets_with_work_of_their_own_are_split_into_loss_and_own_work():
    """calibrated, cluster_guided, mochi, adco, generator: measured, the step splits into a loss part
    (× floor) and the time of the components' own hooks, which is real and part of the step."""
    cases = [c for c in PRESET_CASES if c.kind in ("floor", "own")]
    lines: list[str] = []
    rows = run([128], repeats=1, threads=1, memory=False, case_list=cases, table=format_preset_table,
               echo=lines.append)
    own = {r["case"].removeprefix("own."): r for r in rows if r["kind"] == "own"}
    assert sorted(own) == sorted(OWN_WORK_PRESETS)
    floor = next(r for r in rows if r["case"] == "floor")["seconds"]
    for name, r in own.items():
        assert 0 < r["own_seconds"] < r["seconds"], name
        # one repeat: both ratios are to the same floor steps (those either side of the step)
        assert r["loss_x_floor"] == pytest.approx(r["x_floor"] * (r["seconds"] - r["own_seconds"]) / r["seconds"])
        assert 0 < r["loss_x_floor"] < r["x_floor"], name
    # the k-means refresh and the calibrator's MLP are each a large share of a small step
    assert own["cluster_guided"]["own_seconds"] > floor and own["calibrated"]["own_seconds"] > floor
    table = lines[-1]
    assert "| 2B | preset | time | loss (× floor) | own work (ms per step) |" in table
    for name, r in own.items():
        assert f"| 128 | {name} | " in table and f"| {r['own_seconds'] * 1e3:.1f} |" in table


def test_readme_table_refuses_a_readme_it_cannot_update(tmp_path, capsys):
    """A README that is not UTF-8 or has no section for the table: one line naming it, exit 2, unchanged."""
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"case": "floor", "2B": 8, "kind": "floor", "seconds": 1.0, "x_floor": 1.0}]))
    for name, content, says in [("bin.md", bytes(range(255, 0, -1)), "not UTF-8 text"),
                                ("plain.md", b"# no markers\n", "has no <!-- bench:strategies:start -->")]:
        readme = tmp_path / name
        readme.write_bytes(content)
        capsys.readouterr()
        try:
            reproduce_main(["readme-table", "strategies", str(rows), "--readme", str(readme)])
        except SystemExit as e:
            assert e.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hardneg: error: ") and name in err and says in err and "\n" not in err
        assert readme.read_bytes() == content


def test_in_batch_times_only_the_floor_and_the_in_batch_presets(tmp_path):
    out = tmp_path / "rows.json"
    try:
        main(["bench", "strategies", "--in-batch", "--sizes", "64", "--repeats", "1", "--threads", "1",
              "--no-memory", "--json", str(out)])
    except SystemExit as e:
        assert e.code == 0
    rows = json.loads(out.read_text())
    assert [r["case"] for r in rows] == ["floor"] + [f"preset.{p}" for p in PRESETS]
    assert all(r["kind"] in ("floor", "preset") and r["seconds"] > 0 for r in rows)
