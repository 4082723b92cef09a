"""`hardneg bench strategies`: every in-batch preset timed against the floor, as JSON and a README table."""

import json
import math

from hardneg.bench.loss_speed import OWN_WORK_PRESETS, PRESET_CASES, PRESETS, format_preset_table, run
from hardneg.cli import main


def test_bench_strategies_times_every_preset_and_writes_the_readme_table(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:strategies:start -->\nold\n<!-- bench:strategies:end -->\ntail\n")
    out = tmp_path / "rows.json"
    try:
        main(["bench", "strategies", "--sizes", "64", "--repeats", "1", "--threads", "1", "--no-memory",
              "--json", str(out), "--readme", str(readme)])
    except SystemExit as e:  # typer's standalone mode exits 0 after the command
        assert e.code == 0
    rows = json.loads(out.read_text())
    assert [r["case"] for r in rows] == (["floor"] + [f"preset.{p}" for p in PRESETS]
                                         + [f"own.{p}" for p in OWN_WORK_PRESETS])
    for r in rows:
        assert r["2B"] == 64 and r["seconds"] > 0 and math.isfinite(r["x_floor"]) and r["x_floor"] > 0
    assert next(r for r in rows if r["case"] == "floor")["x_floor"] == 1.0
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- bench:strategies:end -->\ntail\n")
    assert "hardneg bench strategies --sizes 64 --readme" in text
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
        assert r["loss_x_floor"] == (r["seconds"] - r["own_seconds"]) / floor > 0, name
    # the k-means refresh and the calibrator's MLP are each a large share of a small step
    assert own["cluster_guided"]["own_seconds"] > floor and own["calibrated"]["own_seconds"] > floor
    table = lines[-1]
    assert "| 2B | preset | time | loss (× floor) | own work (ms per step) |" in table
    for name, r in own.items():
        assert f"| 128 | {name} | " in table and f"| {r['own_seconds'] * 1e3:.1f} |" in table
