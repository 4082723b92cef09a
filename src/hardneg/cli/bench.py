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


def _check_output(json_out: Path | None) -> None:
    """Refuse, before the benchmark runs, a ``--json`` it could not write at the end."""
    from hardneg.io import check_writable

    if json_out:
        check_writable(json_out, "--json")


def _write_output(rows: list, json_out: Path | None) -> None:
    """The rows as JSON to ``json_out`` (the repository's README tables are written from them by
    ``python -m reproduce readme-table``)."""
    from hardneg.io import atomic_write_text

    if json_out:
        atomic_write_text(json_out, json.dumps(rows, indent=1))


@bench_app.command("loss")
def bench_loss(
    sizes: str = typer.Option("512,2048,8192,32768,65536", help="comma-separated 2B values"),
    repeats: int = typer.Option(3, min=1, help="timed repeats per case (sizes > 8192: 1)"),
    threads: int = typer.Option(2, min=1, help="torch threads"),
    max_gb: float = typer.Option(20.0, help="skip a case whose estimated memory exceeds this"),
    memory: bool = typer.Option(True, help="measure peak extra memory per case in a fresh subprocess"),
    json_out: Path | None = typer.Option(None, "--json", help="write the rows as JSON"),
    device: str = typer.Option("cpu", help="cpu or cuda (GPU timings are synchronised; memory is GPU memory)"),
) -> None:
    """Forward+backward time and peak memory of every kernel loss vs PML, dense torch and the floor."""
    from hardneg.bench.loss_speed import run

    _check_output(json_out)
    rows = run(_parse_sizes(sizes), repeats, threads, max_gb, memory, echo=typer.echo, device=device)
    _write_output(rows, json_out)


@bench_app.command("strategies")
def bench_strategies(
    sizes: str = typer.Option("2048,8192", help="comma-separated 2B values"),
    large: bool = typer.Option(False, "--large", help="also 2B = 65,536 (minutes per preset on 2 cores)"),
    in_batch: bool = typer.Option(False, "--in-batch", help="only the in-batch presets (no own-work presets)"),
    repeats: int = typer.Option(3, min=1, help="timed repeats per case (sizes > 8192: 1)"),
    threads: int = typer.Option(2, min=1, help="torch threads"),
    memory: bool = typer.Option(True, help="measure peak extra memory per case in a fresh subprocess"),
    json_out: Path | None = typer.Option(None, "--json", help="write the rows as JSON"),
    device: str = typer.Option("cpu", help="cpu or cuda (GPU timings are synchronised; memory is GPU memory)"),
) -> None:
    """Forward+backward time (× floor) and peak memory of every in-batch preset, called as users call it,
    then the presets with work of their own split into the loss (× floor) and that work (ms per step)."""
    from hardneg.bench.loss_speed import PRESET_CASES, PRESETS, format_preset_table, run

    _check_output(json_out)
    size_list = _parse_sizes(sizes) + ([65536] if large and 65536 not in _parse_sizes(sizes) else [])
    cases = [f"preset.{p}" for p in PRESETS] if in_batch else None
    rows = run(size_list, repeats, threads, 1e9, memory, cases=cases, echo=typer.echo, device=device,
               case_list=PRESET_CASES, table=format_preset_table)
    _write_output(rows, json_out)
