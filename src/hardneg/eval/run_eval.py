"""Evaluate a finished run directory again: rebuild the model from ``config.yaml``, load ``model.pt``,
and compute weighted kNN, the linear probe, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hardneg.data.base import load_named
from hardneg.eval.knn import knn_predict
from hardneg.eval.linear_probe import linear_probe, per_class_and_confusion
from hardneg.models.encoders import ContrastiveModel, build_model_from_config
from hardneg.runs import MODEL, Run, load_run


def load_trained_model(run: Run, sample_shape: tuple[int, ...]) -> ContrastiveModel:
    """The finished run's model (``config.yaml`` + ``model.pt``), in eval mode; one clear error when
    the run has not finished or its model file is damaged."""
    mp = run.path / MODEL
    if not mp.is_file():
        raise FileNotFoundError(f"{mp} not found; the run in {run.path} has not finished (resume it with --resume)")
    model = build_model_from_config(run.config.model, sample_shape)
    try:
        model.load_state_dict(torch.load(mp, map_location="cpu", weights_only=True))
    except Exception as e:  # model.pt is only ever renamed into place, so this means outside damage
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{mp} cannot be loaded as this run's model ({type(e).__name__}: {first})") from None
    bad = sum(int((~torch.isfinite(t)).sum()) for t in model.state_dict().values() if t.is_floating_point())
    if bad:
        raise ValueError(f"{mp}: {bad} of the model's values are NaN or inf")
    return model.eval()


@torch.no_grad()
def evaluate_run(
    run_dir: str | Path, *, probe: bool = True, k: int | None = None, t: float | None = None
) -> dict[str, Any]:
    run = load_run(run_dir)
    cfg = run.config
    c = cfg.data
    X, y = load_named(c.name, "train", data_dir=c.data_dir, limit=c.train_limit, seed=c.split_seed)
    Xt, yt = load_named(c.name, "test", data_dir=c.data_dir, limit=c.test_limit, seed=c.split_seed)
    model = load_trained_model(run, X.shape[1:])

    def feats(A: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.features(A[i : i + 1024]) for i in range(0, A.shape[0], 1024)])

    ftr, fte = feats(X), feats(Xt)
    C = int(max(int(y.max()), int(yt.max())) + 1)
    pred = knn_predict(ftr, y, fte, k=k or cfg.eval.knn_k, t=t or cfg.eval.knn_t, num_classes=C)
    pc, cm = per_class_and_confusion(yt.numpy(), pred.numpy(), C)
    out: dict[str, Any] = {"knn_acc": float((pred == yt).float().mean()), "knn_per_class": pc, "knn_confusion": cm}
    if probe:
        pr = linear_probe(ftr, y, fte, yt, max_iter=cfg.eval.probe_max_iter, num_classes=C)
        out.update(linear_acc=pr.accuracy, linear_per_class=pr.per_class, linear_confusion=pr.confusion)
    return out
