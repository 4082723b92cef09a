"""The comparison page of `hardneg compare --search` against the full grid: for each search summary
(`search.json`), the training steps it spent against the grid's, its three best strategies, and whether
they are the grid's three best by mean kNN accuracy, read from the grid's published results page.

    python benchmarks/search_vs_grid.py --grid docs/results_strategies.md \
        --summary docs/results_search_files/search_s0.json [--summary ...] --out docs/results_search.md

A summary of a search that has not finished is listed as such, with what it had spent so far.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

_ROW = re.compile(r"^\| (?P<label>[^|]+?) \| (?P<beta>[^|]+?) \| (?P<seeds>\d+) \| "
                  r"(?P<mean>[\d.]+) ± (?P<sd>[\d.]+) \|")


def grid_stats(page: str) -> dict[str, tuple[float, float]]:
    """Grid label -> (mean, seed std) of the kNN accuracy % from the accuracy table ("## Accuracy ...") of
    a results page; a label run at several β keeps its best β."""
    section = page.split("## Accuracy", 1)[1].split("\n## ", 1)[0]
    out: dict[str, tuple[float, float]] = {}
    for line in section.splitlines():
        m = _ROW.match(line)
        if m and float(m["mean"]) > out.get(m["label"], (0.0, 0.0))[0]:
            out[m["label"]] = (float(m["mean"]), float(m["sd"]))
    if not out:
        raise ValueError("no accuracy table found in the grid's page")
    return out


def top(means: dict[str, float], n: int = 3) -> list[str]:
    """The ``n`` labels with the highest mean."""
    return sorted(means, key=lambda k: -means[k])[:n]


def _knobs(k: dict[str, Any]) -> str:
    return ", ".join(f"{a}={v:.3g}" if isinstance(v, float) else f"{a}={v}" for a, v in k.items()) or "defaults"


def best_at_rung(summary: dict[str, Any], n: int = 3) -> tuple[int, list[tuple[str, float]]]:
    """The rung below the full budget (its epoch) and the ``n`` strategies with the highest kNN accuracy at
    that epoch among the trials that reached it (each strategy's best trial): a comparison at one budget,
    which the finished trials alone are not when early trials were promoted before there was competition."""
    rungs = summary["rungs"]
    ep = rungs[-2] if len(rungs) > 1 else rungs[-1]
    best: dict[str, float] = {}
    for t in summary["trials"]:
        v = t["knn_by_epoch"].get(str(ep))
        if v is not None and t["run"]:
            best[t["strategy"]] = max(best.get(t["strategy"], 0.0), v)
    return ep, sorted(best.items(), key=lambda kv: -kv[1])[:n]


def best_three(summary: dict[str, Any]) -> tuple[list[str], str]:
    """The search's three best strategies and how the page shows them: with confirmation (``search.confirm``)
    the finalists by mean kNN over the grid's seeds (± sample std), else the finished trials by their kNN."""
    if summary.get("confirmed"):
        best = summary["confirmed"][:3]
        def shown(b: dict[str, Any]) -> str:
            if b["knn_mean"] is None:
                return f"{b['strategy']} ({_knobs(b['knobs'])}) not trained yet"
            seeds = len(b["knn_by_seed"])
            return (f"{b['strategy']} ({_knobs(b['knobs'])}) {100 * b['knn_mean']:.2f} ± "
                    f"{100 * (b['knn_std'] or 0):.2f}" + ("" if b["complete"] else f" ({seeds} seeds so far)"))

        return [b["strategy"] for b in best], "; ".join(shown(b) for b in best)
    best = summary["strategy_ranking"][:3]
    return [b["strategy"] for b in best], "; ".join(
        f"{b['strategy']} ({_knobs(b['knobs'])}) {100 * b['knn_acc']:.2f}" for b in best)


def seed_row(summary: dict[str, Any], grid_top: list[str]) -> tuple[str, bool]:
    """One table row for a search summary and whether it found the grid's top 3 within a third of its
    steps."""
    seed = summary["search"]["seed"]
    spent, grid = summary["steps_spent"], summary["grid_steps"]
    names, shown = best_three(summary)
    ok = summary["finished"] and set(names) == set(grid_top) and 3 * spent <= grid
    shown = shown or "–"
    finished = {b["strategy"] for b in summary["strategy_ranking"]} | {b["strategy"] for b in
                                                                      summary.get("confirmed", [])}
    trained = [s for s in grid_top if s in finished]
    state = "finished" if summary["finished"] else f"NOT finished ({len(summary['trials'])} trials so far)"
    ep, at_rung = best_at_rung(summary)
    rung = "; ".join(f"{k} {100 * v:.2f}" for k, v in at_rung) or "–"
    return (f"| {seed} | {state} | {len(summary['trials'])} | {spent:,} / {grid:,} ({spent / grid:.1%}) | {shown} | "
            f"{rung} | {len(trained)} of 3 | {'yes' if ok else 'no'} |"), ok


def page(grid_page: str, summaries: list[dict[str, Any]], sources: list[str]) -> str:
    """The markdown of docs/results_search.md."""
    stats = grid_stats(grid_page)
    means = {k: v[0] for k, v in stats.items()}
    grid_top = top(means)
    fourth = top(means, 4)[3]
    rows = [seed_row(s, grid_top) for s in summaries]
    first = summaries[0]
    confirm = first["search"].get("confirm", 0)
    then = (f", then its {confirm} finalists (the best distinct strategies at the deepest rung below the full "
            f"budget that {confirm} reached) "
            "trained to the end at each of the grid's seeds and ranked by their mean" if confirm else "")
    lines = [
        "# Results: `hardneg compare --search` against the full strategy grid",
        "",
        f"Generated by `python benchmarks/search_vs_grid.py` from {', '.join(f'`{s}`' for s in sources)} and "
        "the grid's page [results_strategies.md](results_strategies.md).",
        "",
        f"Search: {first['search']['pruner'].replace('_', ' ')}, rungs at epochs {first['rungs']}, "
        f"reduction factor {first['search']['reduction_factor']}, {first['search']['trials']} trials per search"
        f"{then}; each search seed is also the training seed of its trials.",
        "",
        "The grid's three best strategies by mean kNN accuracy (3 seeds): "
        + ", ".join(f"{g} ({means[g]:.2f} %)" for g in grid_top) + f"; the fourth is {fourth} "
        f"({means[fourth]:.2f} %), {means[grid_top[2]] - means[fourth]:.2f} pp below the third, whose seed "
        f"standard deviations are {stats[grid_top[2]][1]:.2f} and {stats[fourth][1]:.2f} pp. A search trains each "
        "configuration at one seed, so it tells two strategies apart only by more than that noise.",
        "",
        "| search seed | state | trials | training steps (search / grid) | its 3 best strategies (kNN %"
        + (", mean ± std over the grid's seeds" if confirm else "") + ") | "
        f"3 best at epoch {best_at_rung(first)[0]} (kNN %) | grid's top 3 trained to the end | "
        "found the grid's top 3 at ≤ 1/3 of the steps |",
        "|---|---|---|---|---|---|---|---|",
        *[r for r, _ in rows],
        "",
        f"Found in {sum(ok for _, ok in rows)} of {len(rows)} searches.",
        "",
        "Each search: `hardneg compare --config configs/strategies_leaderboard.yaml --search --search-seed S "
        f"--set search.trials={first['search']['trials']}" + (f" --set search.confirm={confirm}" if confirm else "")
        + f" --out runs/search_leaderboard_t{first['search']['trials']}" + (f"_c{confirm}" if confirm else "")
        + "_sS`; its `search.json` is copied to `docs/results_search_files/search_sS.json`. Regenerate this page with "
        "`python benchmarks/search_vs_grid.py --summary docs/results_search_files/search_s0.json --summary ...`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=Path, default=Path("docs/results_strategies.md"))
    ap.add_argument("--summary", type=Path, action="append", required=True, help="a search.json (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("docs/results_search.md"))
    a = ap.parse_args()
    summaries = [json.loads(p.read_text(encoding="utf-8")) for p in a.summary]
    a.out.write_text(page(a.grid.read_text(encoding="utf-8"), summaries, [str(p) for p in a.summary]),
                     encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
