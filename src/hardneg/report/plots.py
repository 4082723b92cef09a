"""Plots of a compare folder or a single run (matplotlib, Agg backend, PNG written atomically)."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hardneg._optional import require
from hardneg.io import atomic_open

require("matplotlib", "train", feature="plots").use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the Agg backend)


def save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def _ms(v: list[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


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
