r"""sentence-transformers losses built on :func:`hardneg.losses.weighted_info_nce`.

:class:`HardNegativeRankingLoss` drops into ``SentenceTransformerTrainer`` wherever
``MultipleNegativesRankingLoss`` (MNRL) does: it takes the model, and its inputs are the columns
``(anchor, positive)`` or ``(anchor, positive, negative_1, ..., negative_n)`` (mined negatives, e.g.
from ``hardneg mine --format n-tuple`` or ``--format triplet``). With anchors ``q_i`` and candidates
``k = [positives; negatives_1; …; negatives_n]`` (every other row's positive and every mined negative
of the batch is a candidate), ``pos_index = i`` and temperature ``t = 1/scale``::

    L_i = −log( e^{s_ip/t} / ( e^{s_ip/t} + N · Σ_j π_ij e^{s_ij/t} ) )

- defaults (β = 0, τ⁺ = 0, no filter): π uniform, N = number of candidates — exactly MNRL;
- ``beta > 0``: π ∝ e^{β s_ij / t}, the hardness-tilted negatives of HCL (Robinson et al., ICLR 2021)
  / H-UCL (Jiang et al., arXiv 2209.00078); ``beta`` is β, ``detach_weights`` keeps π out of the graph;
- ``tau_plus > 0``: the debiased estimator of DCL (Chuang et al., NeurIPS 2020) with class prior τ⁺;
- ``fn_margin`` / ``fn_threshold``: false-negative filtering — a candidate with
  ``s_ij > s_ip − fn_margin`` or ``s_ij > fn_threshold`` gets log-weight −∞ (removed; a row whose
  candidates would all be removed keeps them all). The mask is a constant, as in GISTEmbed
  (Solatorio 2024), but decided by the model's own similarities.

:class:`CachedHardNegativeRankingLoss` is the same loss with GradCache (Gao et al., 2021) via
sentence-transformers' ``CachedLossMixin``: embeddings are computed in mini-batches without
gradients, the loss is back-propagated to the embeddings, then each mini-batch is re-encoded with
gradients — large batches at the memory of ``mini_batch_size``. Same value and gradients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from hardneg._optional import require
from hardneg.losses import weighted_info_nce

# CachedLossMixin lives in sentence_transformers.base, which the 5.7 release introduced
require("sentence_transformers", "text", min_version="5.7", feature="hardneg.integrations.sentence_transformers")
from sentence_transformers.base.losses.gradcache import CachedLossMixin  # noqa: E402


def _fn_log_weights(pos_index: Tensor, fn_margin: float | None, fn_threshold: float | None):
    """log_weight_fn for the kernel: −∞ on candidates scoring within ``fn_margin`` of the positive
    (or above ``fn_threshold``); rows that would lose every negative keep them all."""

    def fn(S: Tensor, rows: slice) -> Tensor:
        pidx = pos_index[rows]
        r = torch.arange(S.shape[0], device=S.device)
        s_pos = S[r, pidx]
        drop = torch.zeros_like(S, dtype=torch.bool)
        if fn_margin is not None:
            drop |= (s_pos - fn_margin)[:, None] < S
        if fn_threshold is not None:
            drop |= fn_threshold < S
        drop[r, pidx] = False
        cand = torch.ones_like(drop)
        cand[r, pidx] = False
        all_dropped = (drop | ~cand).all(1)
        drop[all_dropped] = False
        out = torch.zeros_like(S)
        out[drop] = float("-inf")
        return out

    return fn


class HardNegativeRankingLoss(nn.Module):
    """MNRL-compatible loss with hardneg strategies (β-tilt, debiasing, false-negative filter)."""

    def __init__(
        self,
        model: Any,
        scale: float = 20.0,
        *,
        beta: float = 0.0,
        tau_plus: float = 0.0,
        fn_margin: float | None = None,
        fn_threshold: float | None = None,
        detach_weights: bool = False,
        n_neg: float | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale must be a number > 0 (scale = 1/t), got {scale!r}")
        if fn_margin is not None and not isinstance(fn_margin, (int, float)):
            raise TypeError(f"fn_margin must be a float or None, got {type(fn_margin).__name__}")
        if fn_threshold is not None and not (-1.0 <= fn_threshold <= 1.0):
            raise ValueError(f"fn_threshold must lie in [-1, 1] (a cosine similarity), got {fn_threshold}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= tau_plus < 1.0:
            raise ValueError(f"tau_plus must lie in [0, 1), got {tau_plus}")
        self.model = model
        self.scale = float(scale)
        self.beta = float(beta)
        self.tau_plus = float(tau_plus)
        self.fn_margin = fn_margin
        self.fn_threshold = fn_threshold
        self.detach_weights = detach_weights
        self.n_neg = n_neg

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """Loss from per-column embeddings ``[anchors, positives, negatives_1, ...]`` (each (B, d))."""
        if len(embeddings) < 2:
            raise ValueError(f"need at least (anchor, positive) columns, got {len(embeddings)} column(s)")
        q = embeddings[0]
        B = q.shape[0]
        for j, e in enumerate(embeddings[1:], 1):
            if e.shape != q.shape:
                raise ValueError(f"column {j} has shape {tuple(e.shape)}, the anchors {tuple(q.shape)}")
        k = torch.cat(embeddings[1:], dim=0)
        pos_index = torch.arange(B, device=q.device)
        lw = None
        if self.fn_margin is not None or self.fn_threshold is not None:
            lw = _fn_log_weights(pos_index, self.fn_margin, self.fn_threshold)
        return weighted_info_nce(
            q, k, t=self.temperature, pos_index=pos_index, beta=self.beta, tau_plus=self.tau_plus,
            log_weight_fn=lw, detach_weights=self.detach_weights, n_neg=self.n_neg,
        )

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        embeddings = [self.model(f)["sentence_embedding"] for f in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "beta": self.beta, "tau_plus": self.tau_plus, "fn_margin": self.fn_margin,
                "fn_threshold": self.fn_threshold, "detach_weights": self.detach_weights, "n_neg": self.n_neg}

    @property
    def citation(self) -> str:
        return ("@inproceedings{robinson2021contrastive, title={Contrastive Learning with Hard Negative Samples}, "
                "author={Robinson, Joshua and Chuang, Ching-Yao and Sra, Suvrit and Jegelka, Stefanie}, "
                "booktitle={ICLR}, year={2021}}")


class CachedHardNegativeRankingLoss(CachedLossMixin, HardNegativeRankingLoss):
    """:class:`HardNegativeRankingLoss` with GradCache: embed in ``mini_batch_size`` chunks."""

    def __init__(self, model: Any, scale: float = 20.0, *, mini_batch_size: int = 32,
                 show_progress_bar: bool = False, **kwargs: Any) -> None:
        HardNegativeRankingLoss.__init__(self, model, scale, **kwargs)
        if not isinstance(mini_batch_size, int) or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive int, got {mini_batch_size!r}")
        self.mini_batch_size = mini_batch_size
        self.show_progress_bar = show_progress_bar

    def calculate_loss(self, reps: list[list[Tensor]], labels: Tensor | None = None, *,
                       with_backward: bool = False) -> Tensor:
        embeddings = [torch.cat(r) for r in reps]
        loss = self.compute_loss_from_embeddings(embeddings, labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) < 2:
            raise ValueError(f"need at least (anchor, positive) columns, got {len(sentence_features)}")
        return self.forward_cached(sentence_features, labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}
