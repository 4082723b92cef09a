"""`python -m reproduce readme-table mining`: the mining benchmark's rows as a page's table."""

import json

import pytest

from reproduce.cli import main as reproduce_main


def _run(args: list[str]) -> int:
    try:
        reproduce_main(args)
    except SystemExit as e:  # typer's standalone mode exits after the command
        return int(e.code or 0)
    return 0


ROWS = [
    {"case": "wordnet same embeddings", "hardneg_s": 1.164, "st_s": 3.08, "time_ratio_st_over_hardneg": 2.65,
     "hardneg_peak_mb": 813, "st_peak_mb": 942, "memory_ratio_st_over_hardneg": 1.16,
     "negatives_overlap_with_st": 0.9999, "queries": 11482, "cpu": "Some CPU, 2 cores"},
    {"case": "wordnet end-to-end, --backend torch", "hardneg_s": 88.76, "st_s": 203.14,
     "time_ratio_st_over_hardneg": 2.29, "hardneg_peak_mb": 1005, "st_peak_mb": 1245,
     "memory_ratio_st_over_hardneg": 1.24, "negatives_overlap_with_st": 0.9926, "queries": 11482,
     "cpu": "Some CPU, 2 cores"},
    {"case": "synthetic", "hardneg_s": 8.33, "st_s": 30.5, "time_ratio_st_over_hardneg": 3.66,
     "hardneg_peak_mb": 2861, "st_peak_mb": 3718, "memory_ratio_st_over_hardneg": 1.3,
     "negatives_overlap_with_st": 1.0, "queries": 9116, "cpu": "Some CPU, 2 cores"},
]


def test_mining_rows_become_the_pages_table(tmp_path):
    page = tmp_path / "retrieval.md"
    page.write_text("intro\n<!-- bench:mining:start -->\nold\n<!-- bench:mining:end -->\nafter\n")
    rows = tmp_path / "mining_speed.json"
    rows.write_text(json.dumps(ROWS))
    assert _run(["readme-table", "mining", str(rows), "--readme", str(page)]) == 0
    text = page.read_text()
    expected = "\n".join([  # written out by hand from ROWS
        "| case | queries | hardneg | ST | ST time / ours | peak MB ours / ST | same negatives as ST |",
        "|---|---:|---:|---:|---:|---|---:|",
        "| wordnet same embeddings | 11,482 | 1.16 s | 3.08 s | **2.65×** | 813 / 942 | 99.99 % |",
        "| wordnet end-to-end, --backend torch | 11,482 | 88.8 s | 203.1 s | **2.29×** | 1,005 / 1,245 | 99.3 % |",
        "| synthetic | 9,116 | 8.33 s | 30.5 s | **3.66×** | 2,861 / 3,718 | 100 % |",
        "",
        "CPU: Some CPU, 2 cores.",
    ])
    assert expected in text
    assert "old" not in text and text.startswith("intro\n") and text.endswith("<!-- bench:mining:end -->\nafter\n")
    assert (f"Regenerate with `python benchmarks/mining_speed.py --backend torch,onnx-int8 --out {rows}` then "
            f"`python -m reproduce readme-table mining {rows} --readme {page}`.") in text


@pytest.mark.parametrize("drop", ["st_s", "negatives_overlap_with_st"])
def test_mining_rows_without_a_column_are_refused_naming_the_file(tmp_path, capsys, drop):
    page = tmp_path / "page.md"
    before = "<!-- bench:mining:start -->\nold\n<!-- bench:mining:end -->\n"
    page.write_text(before)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{k: v for k, v in ROWS[0].items() if k != drop}]))
    capsys.readouterr()
    assert _run(["readme-table", "mining", str(rows), "--readme", str(page)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hardneg: error: ") and "rows.json" in err and repr(drop) in err and "\n" not in err
    assert page.read_text() == before
