"""The benchmark tables of the README and the docs: written between ``<!-- bench:<key>:start -->`` and
``…:end -->`` from the JSON rows a benchmark measured — ``hardneg bench loss|strategies --json`` (the
package measures; the repository writes its own pages) and ``benchmarks/mining_speed.py --out``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg.bench.loss_speed import format_preset_table, format_table
from hardneg.io import atomic_write_text, read_json


def _overlap_text(share: float) -> str:
    """A share of ST's negatives as a percentage, with the digits a near-total share needs."""
    if share >= 1:
        return "100 %"
    return f"{100 * share:.2f} %" if share >= 0.999 else f"{100 * share:.1f} %"


def _seconds_text(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"


def format_mining_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `benchmarks/mining_speed.py`'s rows: each case's time for hardneg and
    sentence-transformers, their ratio, both peaks (VmHWM) and the share of ST's negatives hardneg also
    mined; the CPU the rows name below it."""
    lines = ["| case | queries | hardneg | ST | ST time / ours | peak MB ours / ST | same negatives as ST |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['queries']:,} | {_seconds_text(r['hardneg_s'])} | "
                     f"{_seconds_text(r['st_s'])} | **{r['time_ratio_st_over_hardneg']:.2f}×** | "
                     f"{r['hardneg_peak_mb']:,} / {r['st_peak_mb']:,} | "
                     f"{_overlap_text(r['negatives_overlap_with_st'])} |")
    cpus = sorted({str(r["cpu"]) for r in rows if r.get("cpu")})
    if cpus:
        lines += ["", "CPU: " + "; ".join(cpus) + "."]
    return "\n".join(lines)


@dataclass(frozen=True)
class Table:
    """How one benchmark's rows become a page's table: the formatter, the keys every row must have and
    the command that measures the rows (given the rows file)."""

    format: Callable[[list[dict[str, Any]]], str]
    keys: tuple[str, ...]
    measure: Callable[[list[dict[str, Any]], Path], str]


def _bench_command(key: str) -> Callable[[list[dict[str, Any]], Path], str]:
    def command(rows: list[dict[str, Any]], rows_file: Path) -> str:
        sizes = ",".join(str(s) for s in sorted({int(r["2B"]) for r in rows}))
        # repeats apply up to 2B = 8192 (larger sizes run once); the default, 3, goes unsaid
        reps = {int(r["repeats"]) for r in rows if "repeats" in r and int(r["2B"]) <= 8192}
        flag = f" --repeats {reps.pop()}" if len(reps) == 1 and 3 not in reps else ""
        return f"hardneg bench {key} --sizes {sizes}{flag} --json {rows_file}"

    return command


#: which benchmark -> how its rows become a page's table
TABLES = {
    "loss": Table(format_table, ("case", "2B"), _bench_command("loss")),
    "strategies": Table(format_preset_table, ("case", "2B"), _bench_command("strategies")),
    "mining": Table(format_mining_table,
                    ("case", "queries", "hardneg_s", "st_s", "time_ratio_st_over_hardneg", "hardneg_peak_mb",
                     "st_peak_mb", "negatives_overlap_with_st"),
                    lambda rows, rows_file: f"python benchmarks/mining_speed.py --backend torch,onnx-int8 "
                                            f"--out {rows_file}"),
}


def markers(key: str) -> tuple[str, str]:
    """The start and end markers of the README section ``key``."""
    return f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"


def readme_text(readme: Path, key: str) -> str:
    """The README's text, refused (naming it) when missing, not UTF-8 or without the ``bench:<key>`` markers."""
    start, end = markers(key)
    if not readme.is_file():
        raise FileNotFoundError(f"--readme {readme}: no such file")
    try:
        text = readme.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--readme {readme}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} … {end} section to update")
    return text


def read_rows(path: Path, keys: tuple[str, ...] = ("case", "2B")) -> list[dict[str, Any]]:
    """The rows a benchmark wrote, each with ``keys``; anything else is refused naming the file."""
    rows = read_json(path, "benchmark rows", "rerun the benchmark that writes them")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and all(k in r for k in keys)
                                                         for r in rows):
        raise ValueError(f"{path}: not the JSON rows of this benchmark (a list of rows with "
                         + ", ".join(repr(k) for k in keys) + ")")
    return rows


def update_readme(readme: Path, rows_file: Path, key: str) -> str:
    """Replace the ``bench:<key>`` section of ``readme`` with the table of the rows in ``rows_file`` and
    the two commands that regenerate it (atomically); return the table."""
    if key not in TABLES:
        raise ValueError(f"the table must be one of {sorted(TABLES)}, got {key!r}")
    spec = TABLES[key]
    rows = read_rows(rows_file, spec.keys)
    text = readme_text(readme, key)
    table = spec.format(rows)
    start, end = markers(key)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    command = (f"{spec.measure(rows, rows_file)}` then "
               f"`python -m reproduce readme-table {key} {rows_file} --readme {readme}")
    atomic_write_text(readme, head + f"{start}\nRegenerate with `{command}`.\n\n{table}\n{end}" + tail)
    return table
