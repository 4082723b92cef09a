"""The strategy leaderboard of a compare folder: every grid entry's accuracy, accuracy on the
confusable classes, time per training step relative to plain InfoNCE, and the per-step diagnostics
over training; then each strategy against its base (the same method without its tilt, filter, queue
or weighting: each preset's ``base`` in the preset registry), "beyond the seed spread" by
`hardneg.report.stats.versus`.

Everything is read from the runs' own files: ``summary.json`` (accuracies, per-class accuracies,
``train_seconds`` and ``timed_steps``) and the ``neg_*`` step records of ``metrics.jsonl``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hardneg.negatives.registry import PRESETS
from hardneg.report.stats import format_mean_std, versus

#: presets that need data a Fashion-MNIST run cannot supply from its own config, and why
NOT_ON_LEADERBOARD: dict[str, str] = {
    "pool": "needs a separate corpus embedded in the model's own space; an image pool embedded once "
    "would go stale while the encoder trains (its use is a frozen text corpus, as `hardneg mine` "
    "retrieves from: docs/retrieval.md)",
    "gist": "needs a guide model's embedding of every training image, and the repository ships no image "
    "guide model (for text, `hardneg mine --guide` applies the same rule: docs/retrieval.md)",
}

#: the reference preset: time per step is relative to its run of the same seed
REFERENCE = "ucl"


def preset_of(row: dict[str, Any]) -> str | None:
    """The preset (or named loss) a run trained with, from its summary."""
    st = row.get("strategy")
    if isinstance(st, dict):
        return st.get("name", "ucl")
    return row.get("loss")


def _mean(v: list[float | None]) -> float:
    """The mean of the measured values (None and NaN are not measured); NaN when there is none."""
    known = [x for x in v if x is not None and x == x]
    return float(np.mean(known)) if known else math.nan


@dataclass
class RunStats:
    """One run's leaderboard numbers (accuracies as fractions; NaN where not measured)."""

    label: str
    beta: float | None
    seed: int
    run: str
    preset: str | None
    knn: float
    linear: float
    knn_confusable: float
    linear_confusable: float
    sec_per_step: float
    rel_time: float = math.nan
    #: diagnostics averaged over the step records of the first and of the last epoch
    diag_first: dict[str, float] = field(default_factory=dict)
    diag_last: dict[str, float] = field(default_factory=dict)


DIAG_KEYS = ("ess", "n_candidates", "fn_weight_share")


def run_stats(row: dict[str, Any], recs: list[dict[str, Any]], confusable: list[int] | None) -> RunStats:
    """The leaderboard numbers of one finished run (its summary row and its metrics records)."""

    def conf(key: str) -> float:
        pc = row.get(key)
        if not confusable or pc is None:
            return math.nan
        return float(np.mean([pc[c] for c in confusable]))

    steps = [r for r in recs if r["type"] == "step"]
    epochs = [r["epoch"] for r in steps]

    def diag(ep: int | None) -> dict[str, float]:
        sel = [r for r in steps if r["epoch"] == ep]
        return {k: _mean([r.get(f"neg_{k}") for r in sel]) for k in DIAG_KEYS}

    ts, n = row.get("train_seconds"), row.get("timed_steps")
    return RunStats(
        label=row["label"],
        beta=row["beta"],
        seed=row["seed"],
        run=row["run"],
        preset=preset_of(row),
        knn=row["knn_acc"],
        linear=row.get("linear_acc", math.nan),
        knn_confusable=conf("knn_per_class"),
        linear_confusable=conf("linear_per_class"),
        sec_per_step=ts / n if ts is not None and n else math.nan,
        diag_first=diag(min(epochs)) if epochs else {},
        diag_last=diag(max(epochs)) if epochs else {},
    )


def leaderboard_stats(
    rows: list[dict[str, Any]], recs: dict[str, list[dict[str, Any]]], confusable: list[int] | None
) -> list[RunStats]:
    """`run_stats` of every run, with the time per step relative to the reference run
    (preset ``ucl``, untilted) of the same seed."""
    stats = [run_stats(r, recs[r["run"]], confusable) for r in rows]
    ref = {s.seed: s.sec_per_step for s in stats if s.preset == REFERENCE and s.beta is None}
    for s in stats:
        if s.seed in ref and ref[s.seed] > 0:
            s.rel_time = s.sec_per_step / ref[s.seed]
    return stats


Group = tuple[str, float | None]


def group_stats(stats: list[RunStats]) -> dict[Group, list[RunStats]]:
    g: dict[Group, list[RunStats]] = defaultdict(list)
    for s in stats:
        g[(s.label, s.beta)].append(s)
    return dict(g)


def _pct(v: list[float]) -> str:
    return format_mean_std([x for x in v if x == x], 100)


def _num(v: list[float], fmt: str = ".2f") -> str:
    return format_mean_std([x for x in v if x == x], 1.0, fmt)


def _diag(rs: list[RunStats], key: str, fmt: str) -> str:
    a, b = _mean([s.diag_first.get(key) for s in rs]), _mean([s.diag_last.get(key) for s in rs])
    if a != a and b != b:
        return "–"
    return f"{a:{fmt}} → {b:{fmt}}"


def group_name(label: str, beta: float | None) -> str:
    return label if beta is None else f"{label} β={beta:g}"


def leaderboard_table(stats: list[RunStats], *, confusable: list[int] | None) -> str:
    """Markdown: one row per grid entry (and β), sorted by mean kNN accuracy; mean ± sample std over
    seeds; diagnostics as first epoch → last epoch, averaged over seeds."""
    cname = ",".join(map(str, confusable)) if confusable else ""
    head = ["strategy", "seeds", "kNN %", "linear %"]
    if confusable:
        head += [f"kNN classes {cname} %", f"linear classes {cname} %"]
    head += ["time / step vs UCL", "ESS (epoch 1 → last)", "candidates", "weight on false negatives"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = sorted(group_stats(stats).items(), key=lambda kv: -_mean([s.knn for s in kv[1]]))
    for (label, beta), rs in groups:
        cells = [group_name(label, beta), str(len(rs)), _pct([s.knn for s in rs]), _pct([s.linear for s in rs])]
        if confusable:
            cells += [_pct([s.knn_confusable for s in rs]), _pct([s.linear_confusable for s in rs])]
        cells += [
            _num([s.rel_time for s in rs]),
            _diag(rs, "ess", ".1f"),
            _diag(rs, "n_candidates", ".0f"),
            _diag(rs, "fn_weight_share", ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def base_label(label: str, preset: str | None, labels: set[str], overrides: dict[str, str]) -> str | None:
    """The grid label of an entry's base: ``report.bases`` first, else its preset's ``base`` (the
    preset registry, `hardneg.negatives.registry.Preset`) when the grid has an entry of that name;
    None when there is none."""
    if label in overrides:
        return overrides[label]
    b = PRESETS[preset].base if preset in PRESETS else None
    return b if b is not None and b in labels and b != label else None


@dataclass(frozen=True)
class BaseComparison:
    """One group against its base group."""

    group: str
    base: str
    metrics: dict[str, Any]  # metric -> Versus
    rel_time: float  # mean time per step of the group / that of its base (same seeds)

    @property
    def gains(self) -> bool:
        """Better than the base beyond the seed spread in at least one accuracy, worse in none."""
        vs = [v for v in self.metrics.values() if v.beyond is not None]
        return any(v.beyond and v.diff > 0 for v in vs) and not any(v.beyond and v.diff < 0 for v in vs)

    @property
    def loses(self) -> bool:
        return any(v.beyond and v.diff < 0 for v in self.metrics.values())

    def reading(self) -> str:
        """Plain words: beats / loses to / does not separate from the base, and at what cost."""
        cost = f"{self.rel_time:.2f}× its base's time per step" if self.rel_time == self.rel_time else ""
        if self.gains:
            return f"beats {self.base} beyond the seed spread" + (f", at {cost}" if cost else "")
        if self.loses:
            return f"worse than {self.base} beyond the seed spread" + (f", at {cost}" if cost else "")
        if all(v.beyond is None for v in self.metrics.values()):
            return "one seed: no spread to judge by"
        costly = self.rel_time == self.rel_time and self.rel_time > 1.2
        return f"within the seed spread of {self.base}" + (
            f"; costs more than it gives ({cost})" if costly else (f" ({cost})" if cost else "")
        )


def base_comparisons(stats: list[RunStats], overrides: dict[str, str] | None = None) -> list[BaseComparison]:
    """Every group whose base is in the grid, against the base's group (untilted: β = None, else the
    same β) in kNN, linear and confusable-class accuracy."""
    groups = group_stats(stats)
    labels = {label for label, _ in groups}
    out = []
    for (label, beta), rs in groups.items():
        b = base_label(label, rs[0].preset, labels, overrides or {})
        if b is None:
            continue
        base = groups.get((b, None)) or groups.get((b, beta))
        if not base:
            continue
        metrics = {}
        for name, get in (
            ("kNN", lambda s: s.knn),
            ("linear", lambda s: s.linear),
            ("kNN confusable", lambda s: s.knn_confusable),
            ("linear confusable", lambda s: s.linear_confusable),
        ):
            a, c = [get(s) for s in rs if get(s) == get(s)], [get(s) for s in base if get(s) == get(s)]
            if a and c:
                metrics[name] = versus(a, c)
        ta, tb = _mean([s.sec_per_step for s in rs]), _mean([s.sec_per_step for s in base])
        out.append(BaseComparison(group_name(label, beta), b, metrics, ta / tb if tb and tb == tb else math.nan))
    return out


def comparisons_table(comps: list[BaseComparison]) -> str:
    """Markdown: each strategy against its base, Δ in percentage points with the seed spread."""
    if not comps:
        return "(no entry has its base in the grid)"
    names = list(dict.fromkeys(m for c in comps for m in c.metrics))
    head = ["strategy", "base", *[f"Δ {m} pp (spread)" for m in names], "time vs base", "reading"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comps:
        cells = [c.group, c.base]
        for m in names:
            v = c.metrics.get(m)
            cells.append("–" if v is None else f"{100 * v.diff:+.2f} ({100 * v.spread:.2f})")
        cells += ["–" if c.rel_time != c.rel_time else f"{c.rel_time:.2f}×", c.reading()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def not_run(presets_in_grid: set[str], all_presets: list[str]) -> str:
    """The presets absent from the grid, with the reason when `NOT_ON_LEADERBOARD` has one."""
    missing = [p for p in all_presets if p not in presets_in_grid]
    if not missing:
        return "Every preset is in the grid."
    return "\n".join(f"- `{p}`: {NOT_ON_LEADERBOARD.get(p, 'not in this grid')}" for p in missing)


def time_summary(rows: list[dict[str, Any]]) -> str:
    """How long the grid took, from the runs' summaries."""
    steps = sum(r.get("train_seconds", 0.0) for r in rows)
    wall = sum(r.get("seconds_last_session", 0.0) for r in rows)
    return (
        f"{len(rows)} runs: {wall / 60:.1f} min of run time (last session of each run, evaluations "
        f"included), of which {steps / 60:.1f} min in training steps."
    )
