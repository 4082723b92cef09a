"""Plots of a compare folder or a single run (matplotlib, Agg backend, PNG written atomically)."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hardneg._optional import require
from hardneg.io import atomic_open
from hardneg.report.stats import mean_std

require("matplotlib", "train", feature="plots").use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the Agg backend)


def save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


_ms = mean_std


def accuracy_vs_beta(rows: list[dict[str, Any]], path: Path) -> Path:
    """kNN and linear accuracy (mean ± std over seeds) against β; untilted losses as horizontal bands."""
    metrics = [m for m in ("knn_acc", "linear_acc") if any(m in r for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    betas = sorted({r["beta"] for r in rows if r["beta"] is not None}) or [0.0, 1.0]
    for ax, m in zip(axes[0], metrics):
        groups: dict[str, dict[float | None, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in rows:
            if m in r:
                groups[r["label"]][r["beta"]].append(r[m])
        for i, (label, by_b) in enumerate(sorted(groups.items())):
            color = f"C{i}"
            if None in by_b:
                mu, sd = _ms(by_b[None])
                ax.axhline(mu, color=color, ls="--", label=f"{label} (no β)")
                ax.axhspan(mu - sd, mu + sd, color=color, alpha=0.12)
            bs = sorted(b for b in by_b if b is not None)
            if bs:
                st = [_ms(by_b[b]) for b in bs]
                ax.errorbar(
                    bs, [s[0] for s in st], yerr=[s[1] for s in st], color=color, marker="o", capsize=3, label=label
                )
        ax.set_xticks(betas)
        ax.set_xlabel("β (tilt η(s) = exp(βs/t))")
        ax.set_ylabel(m.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def curves(series: dict[str, list[tuple[float, float]]], path: Path, *, xlabel: str, ylabel: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, pts in sorted(series.items()):
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, label=name, lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def bound_curves(recs: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """The four losses L_UCL, L_SCL, L_H-UCL, L_H-SCL per logged step, and the Assumption-1 fraction."""
    b = [r for r in recs if r["type"] == "bounds"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    steps = [r["step"] for r in b]
    for key, name in (("ucl", "L_UCL"), ("scl", "L_SCL"), ("hucl", "L_H-UCL"), ("hscl", "L_H-SCL")):
        a1.plot(steps, [r[key] for r in b], label=name, lw=1.2)
    a1.set_xlabel("step")
    a1.set_ylabel("loss on the training batch")
    a1.set_title(title)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    for key, name in (
        ("assumption1", "Assumption 1 holds (anchors)"),
        ("frac_hscl_le_hucl", "L_H-SCL ≤ L_H-UCL (anchors)"),
    ):
        a2.plot(steps, [r[key] for r in b], label=name, lw=1.2)
    a2.set_ylim(0, 1.02)
    a2.set_xlabel("step")
    a2.set_ylabel("fraction of anchors")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    return save(fig, path)


def embedding_maps(maps: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, seed: int = 0) -> Path:
    """t-SNE (scikit-learn) of frozen test features, one panel per run, points coloured by class."""
    require("sklearn", "train", feature="t-SNE maps")
    from sklearn.manifold import TSNE

    n = len(maps)
    cols = min(3, n)
    rows_ = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(4 * cols, 4 * rows_), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, (X, y)) in zip(axes.flat, sorted(maps.items())):
        perp = float(min(30, max(5, (X.shape[0] - 1) // 4)))
        E = TSNE(2, init="pca", perplexity=perp, random_state=seed, max_iter=500).fit_transform(X)
        ax.scatter(E[:, 0], E[:, 1], c=y, cmap="tab10", s=4)
        ax.set_title(name, fontsize=9)
    return save(fig, path)


def leaderboard_bars(groups: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Horizontal bars, one per grid entry, of each accuracy (mean ± std over seeds, in %)."""
    names = list(groups)
    metrics = list(dict.fromkeys(m for g in groups.values() for m in g))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.35 * len(names) + 1.5), squeeze=False)
    y = np.arange(len(names))
    for ax, m in zip(axes[0], metrics):
        st = [_ms(groups[n][m]) if groups[n].get(m) else (np.nan, 0.0) for n in names]
        ax.barh(y, [100 * s[0] for s in st], xerr=[100 * s[1] for s in st], color="C0", alpha=0.8, capsize=2)
        lo = np.nanmin([100 * (s[0] - s[1]) for s in st])
        hi = np.nanmax([100 * (s[0] + s[1]) for s in st])
        if np.isfinite(lo) and np.isfinite(hi):
            ax.set_xlim(lo - 0.1 * (hi - lo + 1), hi + 0.1 * (hi - lo + 1))
        ax.set_yticks(y)
        ax.set_yticklabels(names if ax is axes[0][0] else [], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{m} %")
        ax.grid(alpha=0.3, axis="x")
    return save(fig, path)


def accuracy_vs_time(points: dict[str, tuple[list[float], list[float]]], path: Path, *, ylabel: str) -> Path:
    """One point per grid entry: time per step relative to UCL (x) against accuracy in % (y), both
    mean ± std over seeds."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (name, (t, acc)) in enumerate(sorted(points.items())):
        t = [v for v in t if v == v]
        if not t or not acc:
            continue
        (mt, st), (ma, sa) = _ms(t), _ms(acc)
        ax.errorbar(mt, 100 * ma, xerr=st, yerr=100 * sa, fmt="o", color=f"C{i % 10}", capsize=2)
        ax.annotate(name, (mt, 100 * ma), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("time per training step relative to UCL (same seed)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return save(fig, path)


#: the bound check's gaps (positive where the inequality of its name holds) and rates, as logged
BOUND_GAPS = (
    ("L_H-UCL − L_UCL ≥ 0", "hucl", "ucl"),
    ("L_H-SCL − L_SCL ≥ 0", "hscl", "scl"),
    ("L_H-UCL − L_H-SCL ≥ 0", "hucl", "hscl"),
)
BOUND_RATES = (
    ("frac_hucl_ge_ucl", "L_UCL ≤ L_H-UCL"),
    ("frac_hscl_ge_scl", "L_SCL ≤ L_H-SCL"),
    ("frac_hscl_le_hucl", "L_H-SCL ≤ L_H-UCL"),
    ("frac_hscl_le_hucl_given_a1", "L_H-SCL ≤ L_H-UCL where Assumption 1 holds"),
    ("assumption1", "Assumption 1 holds"),
)


def bound_groups(groups: dict[str, list[list[dict[str, Any]]]], path: Path) -> Path:
    """Per grid entry (one row each), over training: the three bound gaps (batch means) and the
    fraction of anchors for which each inequality and Assumption 1 hold, averaged over the seeds'
    runs at each logged step."""
    n = len(groups)
    fig, axes = plt.subplots(n, 2, figsize=(12, 3.2 * n), squeeze=False)

    def mean_by_step(runs_: list[list[dict[str, Any]]], f: Any) -> tuple[list[int], list[float]]:
        by: dict[int, list[float]] = defaultdict(list)
        for recs in runs_:
            for r in recs:
                if r["type"] == "bounds":
                    v = f(r)
                    if v is not None and v == v:
                        by[r["step"]].append(v)
        xs = sorted(by)
        return xs, [float(np.mean(by[x])) for x in xs]

    for (a1, a2), (name, runs_) in zip(axes, groups.items()):
        for label, hi, lo in BOUND_GAPS:
            a1.plot(*mean_by_step(runs_, lambda r, hi=hi, lo=lo: r[hi] - r[lo]), label=label, lw=1.1)
        a1.axhline(0.0, color="grey", lw=0.8)
        a1.set_title(f"{name}: loss gaps on the training batches", fontsize=9)
        a1.set_xlabel("step")
        a1.grid(alpha=0.3)
        a1.legend(fontsize=7)
        for key, label in BOUND_RATES:
            a2.plot(*mean_by_step(runs_, lambda r, key=key: r.get(key)), label=label, lw=1.1)
        a2.set_ylim(0, 1.02)
        a2.set_title(f"{name}: fraction of anchors", fontsize=9)
        a2.set_xlabel("step")
        a2.grid(alpha=0.3)
        a2.legend(fontsize=7)
    return save(fig, path)
