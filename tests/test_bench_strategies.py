"""`hardneg bench strategies`: every in-batch preset timed against the floor, as JSON and a README table."""

import json
import math

from hardneg.bench.loss_speed import PRESETS
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
    assert [r["case"] for r in rows] == ["floor"] + [f"preset.{p}" for p in PRESETS]
    for r in rows:
        assert r["2B"] == 64 and r["seconds"] > 0 and math.isfinite(r["x_floor"]) and r["x_floor"] > 0
    assert next(r for r in rows if r["case"] == "floor")["x_floor"] == 1.0
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- bench:strategies:end -->\ntail\n")
    assert "hardneg bench strategies --sizes 64 --readme" in text
    for p in PRESETS:
        assert f"| 64 | {p} | " in text
    assert "| 64 | distance_weighted |" in capsys.readouterr().out
