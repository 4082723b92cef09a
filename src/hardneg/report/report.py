"""Markdown report and plots of a ``hardneg compare`` folder (or of one ``hardneg train`` run).

The headline table gives, per loss and β, kNN and linear-probe accuracy as mean ± sample std over
seeds; the "claims" section compares H-SCL with SCL and H-UCL with UCL and says whether each
difference is larger than the seed spread (|Δ mean| > √(σ_a² + σ_b²)).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hardneg import runs
from hardneg.io import atomic_open, atomic_write_text
from hardneg.negatives.registry import list_strategies
from hardneg.report import leaderboard
from hardneg.report.stats import Versus, format_mean_std, mean_std, versus

_ms = mean_std


def _fmt(v: list[float]) -> str:
    return format_mean_std(v, 100)


def group_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, float | None], list[dict[str, Any]]]:
    g: dict[tuple[str, float | None], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        g[(r["label"], r["beta"])].append(r)
    return dict(g)


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: loss, β, seeds, kNN %, linear %, alignment, uniformity, seconds per run."""
    lines = [
        "| loss | β | seeds | kNN acc % | linear acc % | align ↓ | uniform ↓ | s / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (label, beta), rs in group_rows(rows).items():
        b = "–" if beta is None else f"{beta:g}"
        knn = [r["knn_acc"] for r in rs]
        lin = [r["linear_acc"] for r in rs if "linear_acc" in r]
        al = np.mean([r["align"] for r in rs])
        un = np.mean([r["uniform"] for r in rs])
        sec = np.mean([r.get("seconds_last_session", float("nan")) for r in rs])
        lines.append(f"| {label} | {b} | {len(rs)} | {_fmt(knn)} | {_fmt(lin)} | {al:.3f} | {un:.3f} | {sec:.0f} |")
    return "\n".join(lines)


def claims(rows: list[dict[str, Any]]) -> str:
    """H-SCL vs SCL and H-UCL vs UCL per β, in kNN and linear accuracy (percentage points)."""
    g = group_rows(rows)
    out = []
    for hard, base in (("hscl", "scl"), ("hucl", "ucl")):
        if (base, None) not in g:
            continue
        for (label, beta), rs in sorted(g.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            if label != hard or beta is None:
                continue
            parts = []
            for m in ("knn_acc", "linear_acc"):
                a = [r[m] for r in rs if m in r]
                c = [r[m] for r in g[(base, None)] if m in r]
                if not a or not c:
                    continue
                parts.append(f"{m.split('_')[0]} {versus_text(versus(a, c))}")
            if parts:
                out.append(f"- {hard.upper()} β={beta:g} vs {base.upper()}: " + "; ".join(parts))
    return "\n".join(out) if out else "- (the grid lacks a pair to compare)"


def versus_text(v: Versus) -> str:
    """``+1.23 pp (better; beyond the seed spread 0.80 pp)`` for accuracies given as fractions."""
    if v.beyond is None:
        note = "one seed: spread not measured"
    else:
        note = f"{'beyond' if v.beyond else 'within'} the seed spread {100 * v.spread:.2f} pp"
    return f"{100 * v.diff:+.2f} pp ({v.verdict}; {note})"


def spread(rows: list[dict[str, Any]]) -> str:
    sds: dict[str, list[float]] = {m: [] for m in ("knn_acc", "linear_acc")}
    for rs in group_rows(rows).values():
        for m in sds:
            v = [r[m] for r in rs if m in r]
            if len(v) > 1:
                sds[m].append(_ms(v)[1])
    parts = [
        f"{m.split('_')[0]}: mean {100 * np.mean(v):.2f} pp, max {100 * np.max(v):.2f} pp" for m, v in sds.items() if v
    ]
    return "; ".join(parts) if parts else "one seed per group: no spread measured"


def bounds_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | batches | L_H-SCL ≤ L_H-UCL (batches / anchors) | L_H-SCL ≥ L_SCL | L_H-UCL ≥ L_UCL "
        "| Assumption 1 (anchors) | L_H-SCL ≤ L_H-UCL where Assumption 1 holds (anchors) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r.get("bounds") or {}
        if not b:
            continue
        g = b.get("anchor_frac_hscl_le_hucl_given_a1")
        given = "–" if g is None else f"{g:.2f}"
        lines.append(
            f"| {r['run']} | {b['batches']} | {b['batch_frac_hscl_le_hucl']:.2f} / {b['anchor_frac_hscl_le_hucl']:.2f} "
            f"| {b['batch_frac_hscl_ge_scl']:.2f} / {b['anchor_frac_hscl_ge_scl']:.2f} "
            f"| {b['batch_frac_hucl_ge_ucl']:.2f} / {b['anchor_frac_hucl_ge_ucl']:.2f} | {b['assumption1']:.2f} "
            f"| {given} |"
        )
    return "\n".join(lines) if len(lines) > 2 else "(bounds were not logged)"


def _read_recs(run_dir: Path) -> list[dict[str, Any]]:
    return runs.read_metrics(run_dir)


def write_report(out_dir: str | Path, *, docs_path: str | Path | None = None) -> Path:
    """Write ``results.json``, plots and ``report.md`` into a compare folder; optionally also the tables
    (without images) to ``docs_path``. Returns the report path."""
    from hardneg.report import plots

    out = Path(out_dir)
    rows = runs.collect(out)
    if not rows:
        raise ValueError(f"{out} holds no finished run yet; run `hardneg compare` first")
    cfg = runs.load_compare_config(out)
    slim = [{k: v for k, v in r.items() if not k.endswith(("confusion", "per_class"))} for r in rows]
    atomic_write_text(out / "results.json", json.dumps(slim, indent=1))
    recs = {r["run"]: _read_recs(out / runs.RUNS / r["run"]) for r in rows}
    first_seed = min(r["seed"] for r in rows)
    series = _series_of([r for r in rows if r["seed"] == first_seed], recs)
    figs = [("Accuracy vs β", plots.accuracy_vs_beta(rows, out / "accuracy_vs_beta.png"))]
    figs += _curve_figures(plots, series, out, cfg.eval.knn_k, first_seed)
    figs += _bound_figures(plots, rows, recs, out, cfg.report.bounds_run)
    lb_md: list[str] = []
    if cfg.report.leaderboard or cfg.report.bases:
        lb_md, lb_figs = _leaderboard(cfg, rows, recs, out, series)
        figs += lb_figs
    if cfg.report.embedding_map:
        figs += _embedding_map_figure(plots, rows, out, first_seed, cfg.report.map_points)
    md = _report_markdown(cfg, rows, lb_md, figs, out)
    rp = out / "report.md"
    atomic_write_text(rp, "\n".join(md))
    if docs_path is not None:
        n_done, n_all = len(rows), _grid_size(cfg)
        doc = [
            f"# Results: {cfg.name}",
            "",
            f"Generated by `hardneg report {out} --docs {docs_path}` from {n_done} of {n_all} runs.",
            "",
            *md[2 : md.index("## Plots")],
        ]
        if cfg.report.docs_plots:
            doc += _copy_plots(figs, Path(docs_path))
        atomic_write_text(docs_path, "\n".join(doc))
    return rp


Series = Callable[..., dict[str, list[tuple[float, float]]]]


def _series_of(sel: list[dict[str, Any]], recs: dict[str, list[dict[str, Any]]]) -> Series:
    """``series(key, typ, sub)``: per run of ``sel``, the (epoch or step, value) points of a metric."""

    def series(key: str, typ: str = "epoch", sub: str | None = None) -> dict[str, list[tuple[float, float]]]:
        s = {}
        for r in sel:
            pts = []
            for x in recs[r["run"]]:
                if x["type"] != typ:
                    continue
                v = x.get(sub, {}).get(key) if sub else x.get(key)
                if v is not None:
                    pts.append((x["epoch"] if typ == "epoch" else x["step"], v))
            s[r["run"]] = pts
        return s

    return series


def _curve_figures(plots: Any, series: Series, out: Path, knn_k: int, first_seed: int) -> list[tuple[str, Path]]:
    """Loss, kNN accuracy, negative diagnostics, alignment and uniformity over training (first seed)."""
    # (figure name, metric, the sub-record of the epoch record holding it (None: the record itself), file,
    # y label, title)
    specs: list[tuple[str, str, str | None, str, str, str]] = [
        ("Training loss per epoch", "train_loss", None, "loss_curves.png", "mean training loss",
         f"training loss (seed {first_seed})"),
        ("kNN accuracy over training", "knn_acc", None, "knn_curves.png", "kNN accuracy", f"weighted kNN (k={knn_k})"),
    ]
    for key, title in (
        ("hardest_fn_share", "hardest in-batch negative has the anchor's class"),
        ("fn_weight_share", "tilted π weight on same-class candidates"),
        ("ess", "effective number of negatives 1/Σπ² under the tilt"),
    ):
        specs.append((f"Diagnostics: {title}", key, "diag", f"diag_{key}.png", key, title))
    specs += [
        ("Alignment over training", "align", None, "align.png", "alignment", "alignment (Wang & Isola)"),
        ("Uniformity over training", "uniform", None, "uniform.png", "uniformity", "uniformity (Wang & Isola)"),
    ]
    return [
        (name, plots.curves(series(key, sub=sub), out / fname, xlabel="epoch", ylabel=ylabel, title=title))
        for name, key, sub, fname, ylabel, title in specs
    ]


def _bound_figures(plots: Any, rows, recs, out: Path, pick: str | None) -> list[tuple[str, Path]]:
    """The four bound curves of one run, and the bound check of every entry (mean over seeds)."""
    bruns = [r for r in rows if r.get("bounds")]
    if not bruns:
        return []
    br = next((r for r in bruns if r["run"] == pick), None)
    br = br or next((r for r in bruns if r["label"] == "hscl"), bruns[0])
    by_group: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for r in bruns:
        by_group[leaderboard.group_name(r["label"], r["beta"])].append(recs[r["run"]])
    return [
        (
            f"The four bound curves ({br['run']})",
            plots.bound_curves(recs[br["run"]], out / "bounds.png", title=f"bound check, trained with {br['run']}"),
        ),
        (
            "Bound check over training, every entry (mean over seeds)",
            plots.bound_groups(dict(by_group), out / "bounds_by_entry.png"),
        ),
    ]


def _frozen_embeddings(path: Path, n: int) -> tuple[Any, Any]:
    """The first ``n`` frozen test features and labels a run saved; a damaged file, or features that
    are not finite, is one ``ValueError`` naming it (t-SNE would fail deep inside scikit-learn)."""
    import torch

    try:
        e = torch.load(path, map_location="cpu", weights_only=True)
        feats, labels = e["features"][:n], e["labels"][:n]
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds on damaged bytes
        raise ValueError(f"{path}: damaged embeddings file ({type(err).__name__}: {str(err).strip()[:120]})") from None
    bad = int((~torch.isfinite(feats)).sum())
    if bad:
        raise ValueError(f"{path}: {bad} of {feats.numel()} feature values are NaN or inf")
    return feats.numpy(), labels.numpy()


def _embedding_map_figure(plots: Any, rows, out: Path, first_seed: int, n: int) -> list[tuple[str, Path]]:
    """t-SNE of the frozen test features of each entry's best first-seed run."""

    maps = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        cand = [r for r in rows if r["label"] == label and r["seed"] == first_seed]
        best = max(cand, key=lambda r: r["knn_acc"], default=None)
        if best is None:
            continue
        maps[best["run"]] = _frozen_embeddings(out / runs.RUNS / best["run"] / runs.EMBEDDINGS, n)
    return [("t-SNE of frozen test features", plots.embedding_maps(maps, out / "embedding_map.png"))] if maps else []


def _report_markdown(cfg, rows, lb_md: list[str], figs, out: Path) -> list[str]:
    n_done, n_all = len(rows), _grid_size(cfg)
    md = [
        f"# hardneg compare: {cfg.name}",
        "",
        f"Data: {cfg.data.name} (train {rows[0].get('n_train', '?')}, test {rows[0].get('n_test', '?')}); encoder "
        f"{cfg.model.encoder} (width {cfg.model.width}); {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, "
        f"AdamW lr {cfg.optim.lr}, {cfg.optim.schedule} schedule; kNN k={cfg.eval.knn_k}, t={cfg.eval.knn_t}. "
        f"Runs finished: {n_done} of {n_all}.",
        "",
        "## Accuracy (mean ± sample std over seeds)",
        "",
        results_table(rows),
        "",
        f"Seed-to-seed spread (std within a group): {spread(rows)}.",
        "",
        "## Claims: hard negatives vs uniform negatives",
        "",
        claims(rows),
        "",
        *lb_md,
        "## Bound check (Jiang et al. 2022): fraction of logged training batches / anchors where each holds",
        "",
        bounds_table(rows),
        "",
        "## Plots",
        "",
    ]
    for title, p in figs:
        md += [f"### {title}", "", f"![{title}]({p.name})", ""]
    md += ["Regenerate: `hardneg report " + str(out) + "`", ""]
    return md


def _leaderboard(
    cfg: Any, rows: list[dict[str, Any]], recs: dict[str, list[dict[str, Any]]], out: Path, series: Any
) -> tuple[list[str], list[tuple[str, Path]]]:
    """The leaderboard's markdown sections and plots (`hardneg.report.leaderboard`)."""
    from hardneg.report import plots

    conf = cfg.report.confusable_classes
    stats = leaderboard.leaderboard_stats(rows, recs, conf)
    comps = leaderboard.base_comparisons(stats, cfg.report.bases)
    md = [
        "## Leaderboard (mean ± sample std over seeds)",
        "",
        leaderboard.leaderboard_table(stats, confusable=conf),
        "",
        "Time per step: the runs' own `train_seconds` / `timed_steps` (training steps only, the first of each "
        "session left out), divided by the UCL run of the same seed. ESS, candidates and the weight on false "
        "negatives: the strategy's per-step diagnostics, averaged over the first and over the last epoch's "
        "logged steps.",
        "",
        "## Each strategy against its base",
        "",
        leaderboard.comparisons_table(comps),
        "",
        f"Beyond the seed spread: |Δ mean| > √(σ_a² + σ_b²). {leaderboard.time_summary(rows)}",
        "",
    ]
    if cfg.report.leaderboard:
        presets = {p for p in (leaderboard.preset_of(r) for r in rows) if p is not None}
        md += ["### Presets not on the leaderboard", "", leaderboard.not_run(presets, list_strategies()), ""]
    groups: dict[str, dict[str, list[float]]] = {}
    points: dict[str, tuple[list[float], list[float]]] = {}
    for (label, beta), rs in sorted(
        leaderboard.group_stats(stats).items(), key=lambda kv: -float(np.mean([s.knn for s in kv[1]]))
    ):
        name = leaderboard.group_name(label, beta)
        groups[name] = {"kNN": [s.knn for s in rs], "linear": [s.linear for s in rs if s.linear == s.linear]}
        if conf:
            groups[name]["kNN, confusable classes"] = [s.knn_confusable for s in rs]
        points[name] = ([s.rel_time for s in rs], [s.knn for s in rs])
    figs = [
        ("Leaderboard: accuracy per strategy", plots.leaderboard_bars(groups, out / "leaderboard.png")),
        (
            "kNN accuracy against time per step",
            plots.accuracy_vs_time(points, out / "accuracy_vs_time.png", ylabel="kNN accuracy %"),
        ),
    ]
    for key, title in (
        ("neg_ess", "effective number of negatives 1/Σπ² per training step"),
        ("neg_fn_weight_share", "weight π puts on same-class negatives per training step"),
    ):
        figs.append(
            (
                f"Over training: {title}",
                plots.curves(series(key, typ="step"), out / f"train_{key}.png", xlabel="step", ylabel=key, title=title),
            )
        )
    return md, figs


def _copy_plots(figs: list[tuple[str, Path]], docs_path: Path) -> list[str]:
    """Copy the plots into ``<page stem>_files/`` beside the docs page; the markdown showing them."""
    folder = docs_path.parent / f"{docs_path.stem}_files"
    folder.mkdir(parents=True, exist_ok=True)
    md = ["## Plots", ""]
    for title, p in figs:
        with atomic_open(folder / p.name, "wb") as f:
            f.write(p.read_bytes())
        md += [f"### {title}", "", f"![{title}]({folder.name}/{p.name})", ""]
    return md


def _grid_size(cfg: Any) -> int:
    return len(runs.expand_grid(cfg))


def write_run_report(run_dir: str | Path) -> Path:
    """A short report of one ``hardneg train`` / ``hardneg bounds`` run: summary, loss curve, and the
    four bound curves when they were logged."""
    from hardneg.report import plots

    d = Path(run_dir)
    recs = runs.read_metrics(d)
    s = runs.read_summary(d / runs.SUMMARY)
    md = [f"# hardneg run: {d.name}", ""]
    if s:
        md += [
            f"Loss {s['loss']} {s['params']}, seed {s['seed']}, {s['epochs']} epochs ({s['steps']} steps).",
            "",
            f"- kNN accuracy: {100 * s['knn_acc']:.2f} %",
        ]
        if "linear_acc" in s:
            md.append(f"- linear probe accuracy: {100 * s['linear_acc']:.2f} %")
        md += [f"- alignment {s['align']:.3f}, uniformity {s['uniform']:.3f}", ""]
        if s.get("bounds"):
            md += ["## Bound check", "", bounds_table([{"run": d.name, **s}]), ""]
    else:
        md += ["(not finished: no summary.json yet)", ""]
    steps = [(r["step"], r["loss"]) for r in recs if r["type"] == "step"]
    p = plots.curves({"loss": steps}, d / "loss_curve.png", xlabel="step", ylabel="loss", title="training loss")
    md += [f"![training loss]({p.name})", ""]
    if any(r["type"] == "bounds" for r in recs):
        p = plots.bound_curves(recs, d / "bounds.png", title=f"bound check ({d.name})")
        md += [f"![bound curves]({p.name})", ""]
    rp = d / "report.md"
    atomic_write_text(rp, "\n".join(md))
    return rp
