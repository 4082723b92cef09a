r"""Classical hyperspectral target detectors and detection metrics, in numpy.

With pixels ``x`` (N×L), target signature ``d`` (L,):

- **CEM** (constrained energy minimisation, Harsanyi 1993): ``R = XᵀX / N`` (the correlation
  matrix), ``w = R⁻¹d / (dᵀR⁻¹d)``, score ``wᵀx`` (1 on a pure target, minimal output energy).
- **ACE** (adaptive coherence / cosine estimator, Kraut & Scharf 1999): ``μ``, ``Σ`` the sample mean
  and covariance, ``x̃ = x − μ``, ``d̃ = d − μ``; score
  ``(d̃ᵀΣ⁻¹x̃)² / ((d̃ᵀΣ⁻¹d̃)(x̃ᵀΣ⁻¹x̃))`` in [0, 1].

Metrics: ROC-AUC (scikit-learn) and the false-alarm rate at a detection rate (the share of
background pixels scoring at least the threshold that detects ``pd`` of the targets).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]  # scikit-learn ships no type stubs


def _pixels(X: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 3:
        X = X.reshape(-1, X.shape[-1])
    d = np.asarray(d, dtype=np.float64).ravel()
    if X.ndim != 2 or X.shape[1] != d.shape[0]:
        raise ValueError(f"pixels must be (N, L) or (H, W, L) with L = len(target) = {d.shape[0]}, got {X.shape}")
    return X, d


def _solve(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A⁻¹B for a symmetric positive semi-definite A (pseudo-inverse when singular)."""
    try:
        return np.linalg.solve(A, B)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(A, hermitian=True) @ B


def cem(X: np.ndarray, d: np.ndarray) -> np.ndarray:
    """CEM scores of the pixels of ``X`` ((N, L) or (H, W, L)) for target ``d``; shape (N,)."""
    X, d = _pixels(X, d)
    R = X.T @ X / X.shape[0]
    Rd = _solve(R, d)
    return X @ (Rd / (d @ Rd))


def ace(X: np.ndarray, d: np.ndarray) -> np.ndarray:
    """ACE scores of the pixels of ``X`` ((N, L) or (H, W, L)) for target ``d``; shape (N,)."""
    X, d = _pixels(X, d)
    mu = X.mean(0)
    Xc, dc = X - mu, d - mu
    cov = Xc.T @ Xc / max(X.shape[0] - 1, 1)
    Si_d = _solve(cov, dc)
    Si_X = _solve(cov, Xc.T).T  # (N, L) rows Σ⁻¹x̃
    num = (Xc @ Si_d) ** 2
    den = (dc @ Si_d) * np.einsum("nl,nl->n", Xc, Si_X)
    return num / np.maximum(den, np.finfo(np.float64).tiny)


def _truth(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(truth).ravel().astype(bool)
    if s.shape != t.shape:
        raise ValueError(f"scores and truth must have one size, got {s.size} and {t.size}")
    if t.all() or not t.any():
        raise ValueError("truth must contain both target and background pixels")
    return s, t


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean target map ``truth``."""
    s, t = _truth(scores, truth)
    return float(roc_auc_score(t, s))


def far_at_pd(scores: np.ndarray, truth: np.ndarray, pd: float = 0.9) -> float:
    """False-alarm rate at detection rate ``pd``: with the largest threshold τ that detects at
    least ``pd`` of the targets (score ≥ τ), the share of background pixels scoring ≥ τ."""
    if not 0.0 < pd <= 1.0:
        raise ValueError(f"pd must lie in (0, 1], got {pd!r}")
    s, t = _truth(scores, truth)
    tgt = np.sort(s[t])[::-1]
    need = int(np.ceil(pd * tgt.size - 1e-9))
    tau = tgt[need - 1]
    return float((s[~t] >= tau).mean())
