r"""`hardneg diagnose`: what a user's negatives look like, in numbers and plain words.

For batches of two-view embeddings ``z1, z2`` (B×d) with labels, every anchor of ``[z1; z2]`` has the
other view as its positive and the valid candidates of the one candidate rule
(`hardneg.losses.candidates`) as negatives. Measured, averaged over the batches:

- ``fn_share``: the share of the negatives that have the anchor's label — false negatives for an
  unsupervised loss;
- ``above_positive_share``: the share of the negatives that score above the anchor's positive, and
  ``anchors_with_harder_negative``: the share of anchors that have at least one;
- the strategy's own diagnostics (`DiagnosticsAccumulator`):
  similarity percentiles of the negatives, the positive–hardest gap, the effective number of
  negatives 1/Σπ² of the strategy's π, and the weight π puts on false negatives.

`Diagnosis.advice` turns these into suggestions (label filter, similarity filter, tilt).
With one view only (``z2 = None``), an anchor's positive is its most similar same-label sample.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from hardneg._optional import require
from hardneg.io import atomic_open, atomic_write_text
from hardneg.losses.candidates import Relations, repeat_two_views, safe_normalize, same_known_label, two_view_index
from hardneg.losses.checks import check_tags
from hardneg.negatives import Strategy, create_strategy

#: thresholds of the advice (shares, in [0, 1])
FN_NOTABLE = 0.05
ABOVE_POSITIVE_NOTABLE = 0.01
ESS_CONCENTRATED = 0.1
#: π weight on same-class negatives at or below which the strategy already keeps them out (SCL, H-SCL,
#: a label filter): no advice to add what it does
FN_WEIGHT_EXCLUDED = 1e-3


def _value(d: dict[str, float], key: str, fmt: str) -> str:
    """``d[key]`` formatted, or "n/a" where the strategy did not measure it."""
    v = d.get(key)
    return "n/a" if v is None or v != v else f"{v:{fmt}}"


@dataclass
class Diagnosis:
    """Averages over the diagnosed batches (see the module docstring)."""

    strategy: str
    batches: int
    anchors: int
    candidates: float
    fn_share: float | None
    above_positive_share: float
    anchors_with_harder_negative: float
    strategy_diagnostics: dict[str, float] = field(default_factory=dict)
    negatives_same: list[float] = field(default_factory=list, repr=False)  # similarity samples, for the plot
    negatives_other: list[float] = field(default_factory=list, repr=False)
    positives: list[float] = field(default_factory=list, repr=False)

    def advice(self) -> list[str]:
        """Plain-words suggestions from the numbers."""
        out = []
        fn_weight = self.strategy_diagnostics.get("fn_weight_share")
        if self.fn_share is not None and self.fn_share >= FN_NOTABLE and fn_weight is not None \
                and fn_weight <= FN_WEIGHT_EXCLUDED:
            out.append(
                f"{100 * self.fn_share:.0f} % of in-batch negatives share the anchor's class, and {self.strategy} "
                f"already keeps them out (π weight on them: {fn_weight:.3f})."
            )
        elif self.fn_share is not None and self.fn_share >= FN_NOTABLE:
            out.append(
                f"{100 * self.fn_share:.0f} % of negatives share the anchor's class: a label filter "
                "(filters: [{kind: label}]) or SCL / H-SCL (presets scl, hscl) stops pushing them away."
            )
        if self.above_positive_share >= ABOVE_POSITIVE_NOTABLE:
            out.append(
                f"{100 * self.above_positive_share:.1f} % of negatives score above the anchor's positive "
                f"({100 * self.anchors_with_harder_negative:.0f} % of anchors have one): likely false negatives or "
                "near-duplicates — a similarity filter (filters: [{kind: similarity, relative_margin: 0.05}]) "
                "or negatives from a mid-rank window."
            )
        ess, n = self.strategy_diagnostics.get("ess"), self.strategy_diagnostics.get("n_candidates")
        if ess is not None and n and ess == ess and ess / n < ESS_CONCENTRATED:
            out.append(
                f"the strategy's π concentrates on ~{ess:.0f} of {n:.0f} negatives (effective number): lower β or "
                "raise k if training is unstable."
            )
        if not out:
            out.append(
                "the negatives look clean (few false negatives, none above the positive): harder negatives — "
                "a tilt (beta: 1) or top-k — are worth trying."
            )
        return out

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("negatives_same", "negatives_other", "positives"):
            d.pop(k)
        return d

    def report(self) -> str:
        """A short text report: the numbers, then the advice."""
        sd = self.strategy_diagnostics
        lines = [
            f"strategy {self.strategy}: {self.batches} batches, {self.anchors} anchors, "
            f"{self.candidates:.0f} negatives per anchor",
            "  negatives sharing the anchor's class: "
            + ("n/a (no labels)" if self.fn_share is None else f"{100 * self.fn_share:.1f} %"),
            f"  negatives above the positive: {100 * self.above_positive_share:.2f} % "
            f"(anchors with one: {100 * self.anchors_with_harder_negative:.1f} %)",
        ]
        if sd:
            pct = " / ".join(f"{sd[f'sim_p{p:02d}']:.2f}" for p in (5, 25, 50, 75, 95) if f"sim_p{p:02d}" in sd)
            lines.append(f"  negative similarity p5/p25/p50/p75/p95: {pct}")
            lines.append(
                f"  positive − hardest negative: {_value(sd, 'pos_gap', '.3f')}; effective negatives "
                f"1/Σπ²: {_value(sd, 'ess', '.1f')}; π weight on same-class negatives: "
                f"{_value(sd, 'fn_weight_share', '.3f')}"
            )
        lines.append("advice:")
        lines += [f"  - {a}" for a in self.advice()]
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """Histogram of negative similarities (same class / other class) and of positive similarities."""
        require("matplotlib", "train", feature="hardneg diagnose --plot")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = torch.linspace(-1, 1, 81).tolist()
        if self.negatives_other:
            ax.hist(self.negatives_other, bins=bins, alpha=0.6, density=True, label="negatives, other class")
        if self.negatives_same:
            ax.hist(self.negatives_same, bins=bins, alpha=0.6, density=True, label="negatives, same class")
        if self.positives:
            ax.hist(self.positives, bins=bins, histtype="step", lw=2, density=True, label="positives")
        ax.set_xlabel("cosine similarity to the anchor")
        ax.set_ylabel("density")
        ax.set_title(f"negatives of {self.strategy}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)


def _nearest_same_label(S: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Column of each row's most similar other sample with its (known) label; −1 where none."""
    same = same_known_label(y, y)
    same.fill_diagonal_(False)
    best = S.masked_fill(~same, float("-inf")).argmax(1)
    return torch.where(same.any(1), best, torch.full_like(best, -1))


@torch.no_grad()
def diagnose(
    z1: torch.Tensor,
    z2: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    strategy: Strategy | str | None = None,
    batch_size: int = 256,
    max_batches: int = 8,
    seed: int = 0,
    samples: int = 20000,
) -> Diagnosis:
    """Diagnose the negatives of ``strategy`` (a Strategy, a preset name; default ``ucl`` with two
    views, ``supcon`` with one) on
    embeddings ``z1`` (n×d), their second views ``z2`` (or None) and ``labels`` (n,), in random
    batches of ``batch_size`` (at most ``max_batches``). ``samples`` caps the similarities kept
    for the plot."""
    if not isinstance(z1, torch.Tensor) or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(f"z1 must be an (n >= 2, d) tensor, got {getattr(z1, 'shape', type(z1).__name__)}")
    if z2 is not None and (not isinstance(z2, torch.Tensor) or z2.shape != z1.shape):
        raise ValueError(f"z2 must be None or a tensor of z1's shape {tuple(z1.shape)}")
    n = z1.shape[0]
    labels = check_tags("labels", labels, n)
    if z2 is None and labels is None:
        raise ValueError("one view needs labels (the positive of an anchor is its nearest same-label sample)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2, got {batch_size!r}")
    if isinstance(strategy, Strategy):
        strat = copy.deepcopy(strategy)  # the caller's strategy keeps its state (queue, step counter)
    else:
        strat = create_strategy(strategy or ("ucl" if z2 is not None else "supcon"))
    strat.eval()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    B = min(batch_size, n)
    acc: dict[str, list[float]] = {}
    tot = {"anchors": 0, "cands": 0.0, "fn": 0.0, "above": 0.0, "harder": 0.0}
    same_s, other_s, pos_s = [], [], []
    batches = 0
    for b0 in range(0, n - B + 1, B):
        if batches >= max_batches:
            break
        idx = order[b0 : b0 + B]
        a, c = z1[idx].float(), None if z2 is None else z2[idx].float()
        y = None if labels is None else labels[idx]
        d = _batch(a, c, y, strat, idx)
        for k, v in d.pop("strategy").items():
            acc.setdefault(k, []).append(v)
        for k in tot:
            tot[k] += d[k]
        same_s += d["same"]
        other_s += d["other"]
        pos_s += d["pos"]
        batches += 1
    m = max(tot["anchors"], 1)
    return Diagnosis(
        strategy=strat.name,
        batches=batches,
        anchors=int(tot["anchors"]),  # a sum of per-batch counts
        candidates=tot["cands"] / m,
        fn_share=None if labels is None else tot["fn"] / max(tot["cands"], 1.0),
        above_positive_share=tot["above"] / max(tot["cands"], 1.0),
        anchors_with_harder_negative=tot["harder"] / m,
        strategy_diagnostics={k: sum(v) / len(v) for k, v in acc.items() if all(x == x for x in v)},
        negatives_same=_thin(same_s, samples, g),
        negatives_other=_thin(other_s, samples, g),
        positives=_thin(pos_s, samples, g),
    )


def _thin(x: list[float], k: int, g: torch.Generator) -> list[float]:
    if len(x) <= k:
        return x
    keep = torch.randperm(len(x), generator=g)[:k]
    return [x[i] for i in keep.tolist()]


def _batch(z1, z2, y, strat: Strategy, ids) -> dict[str, Any]:
    if z2 is None:
        z = safe_normalize(z1)
        S = z @ z.T
        pos = _nearest_same_label(S, y)
        self_idx = torch.arange(z.shape[0])
        yy = y
    else:
        z = safe_normalize(torch.cat([z1, z2]))
        S = z @ z.T
        pos, self_idx = two_view_index(z1.shape[0])
        yy = repeat_two_views(y)
    rel = Relations(m=z.shape[0], self_index=self_idx, pos_index=pos, q_labels=yy, k_labels=yy)
    rows = slice(0, z.shape[0])
    valid = rel.valid(rows, S.device)
    has_pos = pos >= 0
    valid &= has_pos[:, None]
    sp = rel.s_pos(S, rows)
    above = valid & (sp[:, None] < S)
    same = rel.same_label(rows)
    same_v = None if same is None else same & valid
    strat(z1, z2, labels=y, ids=ids)
    return {
        "anchors": int(has_pos.sum()),
        "cands": float(valid.sum()),
        "fn": 0.0 if same_v is None else float(same_v.sum()),
        "above": float(above.sum()),
        "harder": float(above.any(1).sum()),
        "same": [] if same_v is None else S[same_v].tolist(),
        "other": S[valid & ~same_v].tolist() if same_v is not None else S[valid].tolist(),
        "pos": sp[has_pos].tolist(),
        "strategy": dict(strat.last_diagnostics),
    }


def save_json(d: Diagnosis, path: str) -> None:
    """The numbers and the advice as JSON (atomically)."""
    atomic_write_text(path, json.dumps({**d.summary(), "advice": d.advice()}, indent=1))
