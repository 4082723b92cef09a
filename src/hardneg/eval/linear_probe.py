"""Linear probe on frozen features (the standard SimCLR evaluation, Chen et al. 2020): a multinomial
logistic regression (scikit-learn, L-BFGS) on standardised features, plus per-class accuracy and the
confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hardneg._optional import require


@dataclass
class ProbeResult:
    accuracy: float
    per_class: list[float]
    confusion: list[list[int]]


def per_class_and_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> tuple[list[float], list[list[int]]]:
    """Per-class recall (accuracy on the samples of each class; NaN for absent classes) and the
    confusion matrix (rows: true class, columns: predicted), via scikit-learn."""
    require("sklearn", "train")
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pc = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return [float(v) for v in pc], cm.astype(int).tolist()


def linear_probe(
    train_feats: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_feats: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    C: float = 1.0,
    max_iter: int = 200,
    num_classes: int | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Fit ``LogisticRegression(C, lbfgs)`` on standardised train features, score on test features."""
    import warnings

    require("sklearn", "train", feature="the linear probe")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    Xtr, ytr, Xte, yte = (
        np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a)
        for a in (train_feats, train_labels, test_feats, test_labels)
    )
    if Xtr.ndim != 2 or Xte.ndim != 2 or Xtr.shape[1] != Xte.shape[1]:
        raise ValueError(
            f"features must be (n, d) and (m, d) with the same d, got {Xtr.shape} and {Xte.shape}"
        )
    if ytr.shape != (Xtr.shape[0],) or yte.shape != (Xte.shape[0],):
        raise ValueError("train_labels/test_labels must be 1-D and match the number of feature rows")
    C_ = int(num_classes if num_classes is not None else max(ytr.max(), yte.max()) + 1)
    scaler = StandardScaler().fit(Xtr)
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(Xtr), ytr)
    pred = clf.predict(scaler.transform(Xte))
    pc, cm = per_class_and_confusion(yte, pred, C_)
    return ProbeResult(float((pred == yte).mean()), pc, cm)
