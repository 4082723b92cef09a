"""The README's benchmark tables: written between ``<!-- bench:<key>:start -->`` and ``…:end -->`` from
the JSON rows ``hardneg bench loss|strategies --json`` measured (the package measures; the repository
writes its own README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hardneg.bench.loss_speed import format_preset_table, format_table
from hardneg.io import atomic_write_text, read_json

#: which benchmark -> how its rows become the README's table
TABLES = {"loss": format_table, "strategies": format_preset_table}


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


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows ``hardneg bench … --json`` wrote; anything else is refused naming the file."""
    rows = read_json(path, "rows of hardneg bench", "rerun hardneg bench … --json")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and "case" in r and "2B" in r
                                                         for r in rows):
        raise ValueError(f"{path}: not the JSON rows of hardneg bench (a list of rows with 'case' and '2B')")
    return rows


def update_readme(readme: Path, rows_file: Path, key: str) -> str:
    """Replace the ``bench:<key>`` section of ``readme`` with the table of the rows in ``rows_file`` and
    the two commands that regenerate it (atomically); return the table."""
    if key not in TABLES:
        raise ValueError(f"the table must be one of {sorted(TABLES)}, got {key!r}")
    rows = read_rows(rows_file)
    text = readme_text(readme, key)
    sizes = ",".join(str(s) for s in sorted({int(r["2B"]) for r in rows}))
    table = TABLES[key](rows)
    start, end = markers(key)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    command = (f"hardneg bench {key} --sizes {sizes} --json {rows_file}` then "
               f"`python -m reproduce readme-table {key} {rows_file} --readme {readme}")
    atomic_write_text(readme, head + f"{start}\nRegenerate with `{command}`.\n\n{table}\n{end}" + tail)
    return table
