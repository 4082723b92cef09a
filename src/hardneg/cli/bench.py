"""`hardneg bench loss` (the losses against pytorch-metric-learning) and `hardneg bench strategies` (the
presets): speed as ratios to the floor measured in the same process, and memory."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hardneg.cli.app import app

bench_app = typer.Typer(help="Benchmarks that print measured ratios against the anchors run in the same process.",
                       rich_markup_mode=None)
app.add_typer(bench_app, name="bench")



def _parse_sizes(sizes: str) -> list[int]:
    try:
        out = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated even integers (2B), got {sizes!r}") from None
    if not out or any(s < 4 or s % 2 for s in out):
        raise ValueError(f"--sizes must be even integers >= 4 (2B), got {sizes!r}")
    return out


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"


def _readme_text(readme: Path, key: str = "loss") -> str:
    """The README's text, refused (naming it) when missing, not UTF-8 or without the ``bench:<key>`` markers."""
    start, end = _markers(key)
    if not readme.is_file():
        raise FileNotFoundError(f"--readme {readme}: no such file")
    try:
        text = readme.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--readme {readme}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} … {end} section to update")
    return text


def update_readme(readme: Path, table: str, command: str, key: str = "loss") -> None:
    """Replace the text between the ``bench:<key>`` markers of ``readme`` with ``table`` (atomically)."""
    from hardneg.io import atomic_write_text

    start, end = _markers(key)
    text = _readme_text(readme, key)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = f"{start}\nRegenerate with `{command}`.\n\n{table}\n{end}"
    atomic_write_text(readme, head + body + tail)


def _check_outputs(json_out: Path | None, readme: Path | None, key: str) -> None:
    """Refuse, before the benchmark runs, a ``--json`` or ``--readme`` it could not write at the end."""
    from hardneg.io import check_writable

    if json_out:
        check_writable(json_out, "--json")
    if readme:
        _readme_text(readme, key)
        check_writable(readme, "--readme")


def _write_outputs(rows: list, json_out: Path | None, readme: Path | None, table: str, command: str,
                   key: str) -> None:
    """The rows as JSON to ``json_out``; ``table`` into the ``bench:<key>`` section of ``readme``."""
    from hardneg.io import atomic_write_text

    if json_out:
        atomic_write_text(json_out, json.dumps(rows, indent=1))
    if readme:
        update_readme(readme, table, command, key=key)
        typer.echo(f"updated {readme}")


@bench_app.command("loss")
def bench_loss(
    sizes: str = typer.Option("512,2048,8192,32768,65536", help="comma-separated 2B values"),
    repeats: int = typer.Option(3, min=1, help="timed repeats per case (sizes > 8192: 1)"),
    threads: int = typer.Option(2, min=1, help="torch threads"),
    max_gb: float = typer.Option(20.0, help="skip a case whose estimated memory exceeds this"),
    memory: bool = typer.Option(True, help="measure peak extra memory per case in a fresh subprocess"),
    json_out: Path | None = typer.Option(None, "--json", help="write the rows as JSON"),
    readme: Path | None = typer.Option(None, help="update the performance table of this README"),
    device: str = typer.Option("cpu", help="cpu or cuda (GPU timings are synchronised; memory is GPU memory)"),
) -> None:
    """Forward+backward time and peak memory of every kernel loss vs PML, dense torch and the floor."""
    from hardneg.bench.loss_speed import format_table, run

    _check_outputs(json_out, readme, "loss")
    rows = run(_parse_sizes(sizes), repeats, threads, max_gb, memory, echo=typer.echo, device=device)
    _write_outputs(rows, json_out, readme, format_table(rows),
                   f"hardneg bench loss --sizes {sizes} --readme {readme}", "loss")


@bench_app.command("strategies")
def bench_strategies(
    sizes: str = typer.Option("2048,8192", help="comma-separated 2B values"),
    large: bool = typer.Option(False, "--large", help="also 2B = 65,536 (minutes per preset on 2 cores)"),
    repeats: int = typer.Option(3, min=1, help="timed repeats per case (sizes > 8192: 1)"),
    threads: int = typer.Option(2, min=1, help="torch threads"),
    memory: bool = typer.Option(True, help="measure peak extra memory per case in a fresh subprocess"),
    json_out: Path | None = typer.Option(None, "--json", help="write the rows as JSON"),
    readme: Path | None = typer.Option(None, help="update the strategies table of this README"),
    device: str = typer.Option("cpu", help="cpu or cuda (GPU timings are synchronised; memory is GPU memory)"),
) -> None:
    """Forward+backward time (× floor) and peak memory of every in-batch preset, called as users call it,
    then the presets with work of their own split into the loss (× floor) and that work (ms per step)."""
    from hardneg.bench.loss_speed import PRESET_CASES, format_preset_table, run

    _check_outputs(json_out, readme, "strategies")
    size_list = _parse_sizes(sizes) + ([65536] if large and 65536 not in _parse_sizes(sizes) else [])
    rows = run(size_list, repeats, threads, 1e9, memory, echo=typer.echo, device=device,
               case_list=PRESET_CASES, table=format_preset_table)
    cmd = f"hardneg bench strategies --sizes {sizes}{' --large' if large else ''} --readme {readme}"
    _write_outputs(rows, json_out, readme, format_preset_table(rows), cmd, "strategies")
