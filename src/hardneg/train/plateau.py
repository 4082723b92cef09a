"""How long to train: one grid entry of a compare config, one seed, trained for up to ``max_epochs``
with the kNN accuracy measured after every epoch; the plateau is the epoch after which no later
evaluation gains more than ``min_gain`` over ``patience`` evaluations in a row.

The run uses the config's learning-rate schedule stretched over ``max_epochs``, so at the plateau the
rate has not decayed yet; a run of that many epochs decays fully and reaches at least as far in the
usual case. Early epochs are cheap on the quick budget, so the whole curve is trained and kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hardneg import runs
from hardneg.runs import CompareConfig, RunConfig, expand_grid, run_config
from hardneg.train.trainer import Trainer


def plateau_epoch(curve: list[tuple[int, float]], *, min_gain: float = 0.002, patience: int = 3) -> int | None:
    """The epoch of the last accuracy that some later evaluation beat by more than ``min_gain``
    (a fraction: 0.002 = 0.2 pp), once ``patience`` evaluations in a row have not; None when the
    curve ends before that (train longer).

    ``curve`` is ``[(epoch, accuracy), ...]`` in training order."""
    if patience < 1 or min_gain < 0:
        raise ValueError(f"patience must be >= 1 and min_gain >= 0, got {patience}, {min_gain}")
    if not curve:
        return None
    best_ep, best = curve[0]
    waited = 0
    for ep, acc in curve[1:]:
        if acc > best + min_gain:
            best_ep, best, waited = ep, acc, 0
        else:
            waited += 1
            if waited >= patience:
                return best_ep
    return None


def knn_curve(recs: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """``(epoch, kNN accuracy)`` of every evaluated epoch record of a run's metrics."""
    return [(r["epoch"], r["knn_acc"]) for r in recs if r["type"] == "epoch" and "knn_acc" in r]


def plateau_config(cfg: CompareConfig, label: str, seed: int, max_epochs: int) -> RunConfig:
    """The run config of grid entry ``label`` (its first β when tilted) at ``seed``, trained for
    ``max_epochs`` with a kNN evaluation after every epoch and no probe or bound check."""
    if max_epochs < 1:
        raise ValueError(f"--max-epochs must be >= 1, got {max_epochs}")
    specs = [s for s in expand_grid(cfg) if s.label == label]
    if not specs:
        labels = list(dict.fromkeys(s.label for s in expand_grid(cfg)))
        raise ValueError(f"grid entry {label!r} is not in the config; its entries: {labels}")
    spec = next(s for s in specs if s.beta == specs[0].beta and s.seed == specs[0].seed)
    raw = run_config(cfg, spec).model_dump()
    raw["train"].update(seed=seed, epochs=max_epochs)
    raw["eval"].update(every_epochs=1, linear_probe=False, probe_every_epochs=None)
    raw["bounds"]["enabled"] = False
    return RunConfig.model_validate(raw)


def measure_plateau(
    cfg: CompareConfig,
    label: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    max_epochs: int = 60,
    min_gain: float = 0.002,
    patience: int = 3,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[list[tuple[int, float]], int | None]:
    """Train `plateau_config` in ``out_dir`` (a run folder; resumable) and return the kNN curve
    and `plateau_epoch` of it."""
    rc = plateau_config(cfg, label, seed, max_epochs)
    Trainer(rc, out_dir, resume=resume, overwrite=overwrite).fit()
    curve = knn_curve(runs.read_metrics(out_dir))
    return curve, plateau_epoch(curve, min_gain=min_gain, patience=patience)
