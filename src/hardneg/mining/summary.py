"""The mining summary: what was mined, what each filter removed, and what to loosen.

sentence-transformers only says how many pairs lost their negatives when ``verbose=True``; with
``relative_margin=0.05, num_negatives=1`` on WordNet only ~1,003 of 9,116 pairs survive.
This summary always prints, first, a loud line with the number of queries that got fewer
negatives than asked and the filter/knob responsible.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from hardneg.io import atomic_write_text
from hardneg.mining.mine import MineConfig, MinedNegatives, knob
from hardneg.vector_search import resolve_index_spec

#: per cause, the knob to loosen; ``{name}`` is a field of ``MineConfig`` (an argument of
#: ``mine_hard_negatives``), spelled by `hardneg.mining.mine.knob` in the caller's vocabulary (`advice`)
KNOBS = {
    "window": "widen the window (raise {range_max})",
    "duplicate": "widen the window (raise {range_max}); many candidates duplicate the query/positive text",
    "false_negative_label": "widen the window (raise {range_max}) or drop {filter_labels}",
    "min_score": "lower {min_score}",
    "max_score": "raise {max_score}",
    "absolute_margin": "lower {absolute_margin} (or raise {range_max})",
    "relative_margin": "lower {relative_margin} (or raise {range_max})",
    "guide": "lower {guide_margin} (or raise {range_max})",
}


def advice(cause: str, names: str = "python") -> str:
    """The knob to loosen for ``cause`` (a key of `KNOBS`), naming Python arguments
    (``names="python"``) or the flags of ``hardneg mine`` (``names="cli"``)."""
    text = KNOBS.get(cause, KNOBS["window"])
    return re.sub(r"\{(\w+)\}", lambda m: knob(m[1], names), text)


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"count": 0}
    q = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"count": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "p05": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p95": float(q[4]), "max": float(x.max())}


def build_summary(res: MinedNegatives, cfg: MineConfig, *, n_corpus: int, rows_written: int | None = None,
                  queries_dropped: int | None = None, output_format: str | None = None,
                  extra: dict | None = None) -> dict:
    """A JSON-able dict summarising a mining run (see module docstring)."""
    n = len(res.pos_scores)
    N = cfg.num_negatives
    short = res.n_found < N
    # for each short query: which filter removed most of its window candidates (or the window itself)
    culprit_counts: dict[str, int] = {}
    if short.any():
        names = list(res.removed_per_query)
        if names:
            per = np.stack([res.removed_per_query[k] for k in names], 1)[short]
            best = per.argmax(1)
            has = per.max(1) > 0
            for b, h in zip(best, has):
                key = names[b] if h else "window"
                culprit_counts[key] = culprit_counts.get(key, 0) + 1
        else:
            culprit_counts["window"] = int(short.sum())
    selected = int((res.neg_ids >= 0).sum())
    neg = res.neg_scores[res.neg_ids >= 0]
    margins = (res.pos_scores[:, None] - res.neg_scores)[res.neg_ids >= 0]
    s = {
        "queries": n,
        "corpus": n_corpus,
        "num_negatives": N,
        "window": [cfg.range_min, cfg.effective_range_max()],
        "candidates_in_window": res.candidates_in_window,
        "removed_by_filter": res.removed,
        "negatives_selected": selected,
        "queries_with_all_negatives": int((~short).sum()),
        "queries_with_too_few": int(short.sum()),
        "queries_with_none": int((res.n_found == 0).sum()),
        "too_few_by_cause": culprit_counts,
        "positive_scores": _stats(res.pos_scores),
        "negative_scores": _stats(neg),
        "positive_minus_negative": _stats(margins),
        "queries_positive_not_top1": int((res.positive_rank > 0).sum()),
        "false_negative_rate": (res.fn_selected / selected if res.fn_selected is not None and selected else None),
        "false_negatives_in_window": res.fn_in_window,
        "index": resolve_index_spec(cfg.index),
        "index_recall_vs_exact": res.recall,
        "timings_s": res.timings,
        "config": {k: v for k, v in cfg.__dict__.items()},
    }
    if output_format is not None:
        s["output_format"] = output_format
    if rows_written is not None:
        s["rows_written"] = rows_written
    if queries_dropped is not None:
        s["queries_dropped_from_output"] = queries_dropped
    if extra:
        s.update(extra)
    return s


def nothing_selected_line(s: dict, names: str = "python") -> str | None:
    """When no query got a single negative: one line saying which filter removed how many of the
    window's candidates (largest first) and which knob to loosen (see `advice` for ``names``);
    else None."""
    if s["negatives_selected"]:
        return None
    removed = sorted(((k, v) for k, v in s["removed_by_filter"].items() if v), key=lambda kv: -kv[1])
    cands = s["candidates_in_window"]
    if removed:
        what = "; ".join(f"{k} removed {v:,}" for k, v in removed) + f" of the {cands:,} candidates in the window"
        fix = advice(removed[0][0], names)
    else:
        what = f"the window {s['window']} held {cands:,} candidates"
        fix = advice("window", names)
    return f"no negatives selected for any of the {s['queries']:,} queries: {what} -> {fix}"


def warning_lines(s: dict, names: str = "python") -> list[str]:
    """The loud lines: no negatives at all (first), queries that got too few, and which knob to loosen."""
    none = nothing_selected_line(s, names)
    out = [f"ERROR: {none}"] if none else []
    if s["queries_with_too_few"]:
        n, k = s["queries_with_too_few"], s["queries"]
        causes = sorted(s["too_few_by_cause"].items(), key=lambda kv: -kv[1])
        cause_txt = "; ".join(f"{c}: {v} queries -> {advice(c, names)}" for c, v in causes)
        out.append(
            f"WARNING: {n:,} of {k:,} queries ({100 * n / max(k, 1):.1f}%) got fewer than "
            f"{s['num_negatives']} negatives ({s['queries_with_none']:,} got none). Main cause per query: {cause_txt}."
        )
    if s.get("queries_dropped_from_output"):
        out.append(
            f"WARNING: {s['queries_dropped_from_output']:,} queries are missing from the {s.get('output_format')} "
            f"output because they lack negatives."
        )
    return out


def format_summary(s: dict, names: str = "python") -> str:
    """Human-readable text of `build_summary`'s dict (warnings first; the knobs they name are
    Python arguments, or ``hardneg mine``'s flags with ``names="cli"``)."""
    lines = warning_lines(s, names)
    lines.append(f"queries {s['queries']:,}  corpus {s['corpus']:,}  window {s['window']}  "
                 f"negatives selected {s['negatives_selected']:,} / {s['queries'] * s['num_negatives']:,}")
    lines.append(f"candidates in window {s['candidates_in_window']:,}; removed by filter: "
                 + (", ".join(f"{k} {v:,}" for k, v in s["removed_by_filter"].items()) or "none"))
    lines.append(f"queries whose positive is not the top hit: {s['queries_positive_not_top1']:,}")
    for name in ("positive_scores", "negative_scores", "positive_minus_negative"):
        st = s[name]
        if st.get("count"):
            lines.append(f"{name:24s} n={st['count']:,} mean={st['mean']:.4f} std={st['std']:.4f} "
                         f"p05={st['p05']:.4f} median={st['median']:.4f} p95={st['p95']:.4f}")
    if s["false_negative_rate"] is not None:
        lines.append(f"known false negatives among selected: {100 * s['false_negative_rate']:.2f}% "
                     f"({s['false_negatives_in_window']:,} in the window before filtering)")
    if s["index_recall_vs_exact"] is not None:
        lines.append(f"index {s['index']} recall@K vs exact: {s['index_recall_vs_exact']:.4f}")
    if s.get("store", "memory") != "memory":
        lines.append(f"corpus embeddings: memory-mapped {s['store']} store")
    if "rows_written" in s:
        lines.append(f"rows written: {s['rows_written']:,} ({s.get('output_format')})")
    return "\n".join(lines)


def save_summary(s: dict, path: str | os.PathLike[str]) -> None:
    """Write the summary dict as JSON, atomically."""
    atomic_write_text(path, json.dumps(s, indent=2, default=float) + "\n")
