r"""sentence-transformers losses built on hardneg strategies (and so on the one kernel).

`HardNegativeRankingLoss` drops into ``SentenceTransformerTrainer`` wherever
``MultipleNegativesRankingLoss`` (MNRL) does: it takes the model, and its inputs are the columns
``(anchor, positive)`` or ``(anchor, positive, negative_1, ..., negative_n)`` (mined negatives, e.g.
from ``hardneg mine --format n-tuple`` or ``--format triplet``). With anchors ``q_i`` and candidates
``k = [positives; negatives_1; …; negatives_n]`` (every other row's positive and every mined negative
of the batch is a candidate), ``pos_index = i`` and temperature ``t = 1/logit_scale``::

    L_i = −log( e^{s_ip/t} / ( e^{s_ip/t} + N · Σ_j π_ij e^{s_ij/t} ) )

- defaults (β = 0, τ⁺ = 0, no filter): π uniform, N = number of candidates — exactly MNRL;
- ``beta > 0``: π ∝ e^{β s_ij / t}, the hardness-tilted negatives of HCL (Robinson et al., ICLR 2021)
  / H-UCL (Jiang et al., arXiv 2209.00078); ``beta`` is β, ``detach_weights`` keeps π out of the graph;
- ``tau_plus > 0``: the debiased estimator of DCL (Chuang et al., NeurIPS 2020) with class prior τ⁺;
- ``absolute_margin`` / ``relative_margin`` / ``max_score``: false-negative filtering with the one
  `SimilarityFilter` (sentence-transformers' rules; an anchor whose every
  candidate is removed is skipped). The mask is a constant, as in GISTEmbed (Solatorio 2024), but
  decided by the model's own similarities;
- ``strategy=``: any preset name, config mapping or `Strategy` — every
  hardneg strategy (queue, top-k, semi-hard, cluster-guided, calibrated, …) reaches
  sentence-transformers users. The mined negatives are the strategy's explicit negatives, shared by
  every anchor as in MNRL.

`CachedHardNegativeRankingLoss` is the same loss with GradCache (Gao et al., 2021) via
sentence-transformers' ``CachedLossMixin``: embeddings are computed in mini-batches without
gradients, the loss is back-propagated to the embeddings, then each mini-batch is re-encoded with
gradients — large batches at the memory of ``mini_batch_size``. Same value and gradients.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from hardneg._optional import require
from hardneg.distributed import DistributedStrategy, world_size
from hardneg.losses.candidates import NoValidAnchorError
from hardneg.losses.checks import check_n_neg, check_positive
from hardneg.negatives.filters import GuideFilter, IdFilter, LabelFilter, SimilarityFilter
from hardneg.negatives.registry import from_config, strategy_config
from hardneg.negatives.sources import InBatch
from hardneg.negatives.strategy import Strategy
from hardneg.negatives.weighting import ClusterGuided

# CachedLossMixin lives in sentence_transformers.base, which the 5.7 release introduced
require("sentence_transformers", "text", min_version="5.7", feature="hardneg.integrations.sentence_transformers")
from sentence_transformers.base.losses.gradcache import CachedLossMixin  # noqa: E402


def _as_strategy(strategy: Any, logit_scale: float | None, core: dict[str, Any]) -> tuple[Strategy, float]:
    """The strategy behind the loss and its logit scale (1 / temperature)."""
    if isinstance(strategy, Strategy):
        if logit_scale is not None:
            raise ValueError("give the temperature in the Strategy or logit_scale, not both")
        if core:
            raise ValueError(f"options {sorted(core)} belong in the Strategy when one is given")
        built = copy.deepcopy(strategy)  # the batch block is replaced below: the caller's object stays as it is
    else:
        explicit_scale = logit_scale is not None
        scale = check_positive("logit_scale (1/temperature)", 20.0 if logit_scale is None else logit_scale)
        cfg: dict[str, Any] = {"name": "ucl"} if strategy is None else (
            {"name": strategy} if isinstance(strategy, str) else dict(strategy)
        )
        if "temperature" in cfg or "t" in cfg:
            if explicit_scale:
                raise ValueError("give the temperature in the strategy mapping or logit_scale, not both")
        else:
            cfg["temperature"] = 1.0 / scale
        built = from_config({**cfg, **core})
    # sentence-transformers columns are pairs (anchor -> positive): the batch block is asymmetric, as MNRL
    built.in_batch = InBatch(symmetric=False, batch_negatives=built.in_batch.batch_negatives)
    return built, 1.0 / built.t


def _tags_needed(strategy: Strategy) -> str | None:
    """Why ``strategy`` needs class labels or sample ids, which sentence-transformers' columns
    (anchor, positive, negatives) do not carry; None when it needs neither."""
    if strategy.positives == "labels":
        return f"positives='labels' (family={strategy.family!r}) takes every same-label sample as a positive"
    for f in strategy.filters:
        if isinstance(f, LabelFilter):
            return "filter 'label' drops the candidates with the anchor's class label"
        if isinstance(f, (IdFilter, GuideFilter)):
            return f"filter {f.kind!r} looks candidates up by sample id"
    for w in strategy.weightings:
        if isinstance(w, ClusterGuided) and getattr(w, "features", None) is not None:
            return "cluster_guided with a features table looks samples up by sample id"
    return None


class HardNegativeRankingLoss(nn.Module):
    """MNRL-compatible loss driven by any hardneg strategy (a preset name, a config mapping or a
    `Strategy`).

    Args:
        model: the ``SentenceTransformer``.
        logit_scale: 1 / temperature (default 20): MNRL's ``scale``, under open_clip's name for the
            same quantity, the one hardneg uses everywhere; not allowed with a Strategy object,
            which carries its own temperature.
        strategy: ``None`` (MNRL: uniform in-batch negatives), a preset name (``"hucl"``, ``"topk"``,
            …), a mapping as in a YAML config, or a Strategy.
        beta, tau_plus, detach_weights, n_neg: the strategy's core options (HCL tilt, DCL
            debiasing, …), with `Strategy`'s values; None keeps the strategy's own (``n_neg="count"``
            for the default strategy: N counts the candidates, as MNRL).
        absolute_margin, relative_margin, max_score: the false-negative filter
            (`SimilarityFilter`, sentence-transformers' rules).
        gather_across_devices: in a ``torch.distributed`` run, every process's anchors see the
            positives and negatives of every process (gathered with gradient, as MNRL's option of
            the same name), and the gradient after DDP's averaging is that of the global batch on
            one process (`hardneg.distributed.DistributedStrategy`).
    """

    def __init__(
        self,
        model: Any,
        logit_scale: float | None = None,
        *,
        strategy: Any = None,
        beta: float | None = None,
        tau_plus: float | None = None,
        absolute_margin: float | None = None,
        relative_margin: float | None = None,
        max_score: float | None = None,
        detach_weights: bool | None = None,
        n_neg: str | float | None = None,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__()
        if n_neg is not None:
            n_neg = check_n_neg(n_neg)
        core: dict[str, Any] = {
            k: v for k, v in (("beta", beta), ("tau_plus", tau_plus), ("detach_weights", detach_weights),
                              ("n_neg", n_neg)) if v is not None
        }
        sim = {k: v for k, v in (("absolute_margin", absolute_margin), ("relative_margin", relative_margin),
                                 ("max_score", max_score)) if v is not None}
        if sim:
            core["filters"] = [SimilarityFilter(**sim)]
        self.model = model
        self.strategy, self.logit_scale = _as_strategy(strategy, logit_scale, core)
        why = _tags_needed(self.strategy)
        if why is not None:
            raise ValueError(
                f"HardNegativeRankingLoss: strategy {self.strategy.name!r} needs class labels or sample ids "
                f"({why}); sentence-transformers' (anchor, positive, negative...) columns carry neither. "
                "Use a strategy without label positives, label / id / guide filters (ucl, hucl, topk, ...)"
            )
        self.gather_across_devices = bool(gather_across_devices)
        self._config = {"logit_scale": self.logit_scale, "strategy": strategy_config(self.strategy),
                        **{k: v for k, v in core.items() if k != "filters"}, **sim,
                        "gather_across_devices": self.gather_across_devices}

    @property
    def temperature(self) -> float:
        return self.strategy.t

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """Loss from per-column embeddings ``[anchors, positives, negatives_1, ...]`` (each (B, d))."""
        if len(embeddings) < 2:
            raise ValueError(f"need at least (anchor, positive) columns, got {len(embeddings)} column(s)")
        q = embeddings[0]
        for j, e in enumerate(embeddings[1:], 1):
            if e.shape != q.shape:
                raise ValueError(f"column {j} has shape {tuple(e.shape)}, the anchors {tuple(q.shape)}")
        negatives = torch.cat(embeddings[2:], dim=0) if len(embeddings) > 2 else None
        loss_fn = DistributedStrategy(self.strategy) if self.gather_across_devices else self.strategy
        try:
            return loss_fn(q, embeddings[1], negatives=negatives)
        except NoValidAnchorError:
            if not self._holds_no_negative(q, negatives):
                raise  # negatives existed and the filters removed every one: a wrong setting, not a step
            # a batch of one pair and nothing else (the trainer's last batch): no loss, as MNRL
            return torch.stack([e.sum() for e in embeddings]).sum() * 0.0

    def _holds_no_negative(self, q: Tensor, negatives: Tensor | None) -> bool:
        """True when the step has no candidate but the positive: one pair in the (gathered) batch,
        no mined negatives and no source adding rows."""
        pairs = q.shape[0] * (world_size() if self.gather_across_devices else 1)
        return pairs == 1 and negatives is None and not len(self.strategy.sources)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        embeddings = [self.model(f)["sentence_embedding"] for f in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def get_config_dict(self) -> dict[str, Any]:
        return dict(self._config)

    @property
    def citation(self) -> str:
        return ("@inproceedings{robinson2021contrastive, title={Contrastive Learning with Hard Negative Samples}, "
                "author={Robinson, Joshua and Chuang, Ching-Yao and Sra, Suvrit and Jegelka, Stefanie}, "
                "booktitle={ICLR}, year={2021}}")


class CachedHardNegativeRankingLoss(CachedLossMixin, HardNegativeRankingLoss):
    """`HardNegativeRankingLoss` with GradCache: embed in ``mini_batch_size`` chunks."""

    def __init__(self, model: Any, logit_scale: float | None = None, *, mini_batch_size: int = 32,
                 show_progress_bar: bool = False, **kwargs: Any) -> None:
        HardNegativeRankingLoss.__init__(self, model, logit_scale, **kwargs)
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
