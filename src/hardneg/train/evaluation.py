"""What a run measures besides its loss: the end-of-epoch evaluation (kNN on frozen features, the
linear probe, alignment/uniformity and negative diagnostics on a fixed two-view test batch) and the
bound check on the training batches (Jiang et al. 2022). Rank 0 evaluates; the bound check gathers
the global batch on every process and computes on rank 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hardneg import distributed as D
from hardneg.eval.align_uniform import alignment, uniformity
from hardneg.eval.bounds import bound_terms
from hardneg.eval.knn import knn_predict
from hardneg.eval.linear_probe import linear_probe, per_class_and_confusion
from hardneg.eval.two_view_diagnostics import two_view_diagnostics
from hardneg.negatives.strategy import Strategy
from hardneg.runs.config import RunConfig
from hardneg.train.run_data import RunData

EVAL_BATCH = 512  # size of the fixed two-view test batch for alignment/uniformity/diagnostics
EVAL_SEED = 12345  # the generator of that batch's augmentations: the same views at every evaluation


def loss_beta_t(cfg: RunConfig, strategy: Strategy | None = None) -> tuple[float, float]:
    """β and t of the bound check and the evaluation diagnostics: ``bounds.beta`` / ``bounds.t``, else
    the training objective's (a strategy's attributes, a named loss's params), else β = 1, t = 0.5."""
    if strategy is not None:
        beta0 = float(strategy.beta)
        t0 = float(getattr(strategy, "temperature", None) or strategy.t)
    else:
        p = cfg.loss.params if cfg.loss is not None else {}
        beta0, t0 = float(p.get("beta", 1.0)), float(p.get("t", 0.5))
    beta = cfg.bounds.beta if cfg.bounds.beta is not None else beta0
    t = cfg.bounds.t if cfg.bounds.t is not None else t0
    return beta, t


class Evaluator:
    """Evaluates ``model`` on ``data`` as the config's ``eval`` and ``bounds`` sections say."""

    def __init__(self, cfg: RunConfig, model: nn.Module, data: RunData, strategy: Strategy | None) -> None:
        self.cfg, self.model, self.data = cfg, model, data
        self.beta, self.t = loss_beta_t(cfg, strategy)
        # the bound check compares tilted with untilted losses, which coincide at β = 0: an untilted
        # strategy is checked at β = 1, as a named loss without a β is (unless bounds.beta says otherwise)
        self.check_beta = self.beta if cfg.bounds.beta is not None or self.beta > 0 else 1.0

    @torch.no_grad()
    def embed(self, X: torch.Tensor, *, projection: bool = False, batch: int = 1024) -> torch.Tensor:
        """Frozen features f(x) (or projections g(f(x))) in eval mode."""
        was = self.model.training
        self.model.eval()
        f = self.model if projection else getattr(self.model, "features", self.model)
        out = torch.cat([f(X[i : i + batch]) for i in range(0, X.shape[0], batch)])
        self.model.train(was)
        return out

    @torch.no_grad()
    def evaluate(self, *, probe: bool) -> dict[str, Any]:
        """kNN (k, t of the config) on frozen features; optional linear probe; alignment/uniformity and
        negative diagnostics on a fixed two-view batch of test images (fixed generator)."""
        e = self.cfg.eval
        (ftr, ytr), (fte, yte) = self.data.features("train", self.embed), self.data.features("test", self.embed)
        nc = self.data.num_classes or int(max(int(ytr.max()), int(yte.max())) + 1)
        pred = knn_predict(ftr, ytr, fte, k=e.knn_k, t=e.knn_t, num_classes=nc)
        out: dict[str, Any] = {"knn_acc": float((pred == yte).float().mean())}
        if probe:
            pr = linear_probe(ftr, ytr, fte, yte, max_iter=e.probe_max_iter, num_classes=nc)
            out["linear_acc"] = pr.accuracy
            out["linear_per_class"] = pr.per_class
            out["linear_confusion"] = pr.confusion
            pc, cm = per_class_and_confusion(yte.numpy(), pred.numpy(), nc)
            out["knn_per_class"], out["knn_confusion"] = pc, cm
        g = torch.Generator().manual_seed(EVAL_SEED)
        xb, yb = self.data.test_head(EVAL_BATCH)
        was = self.model.training
        self.model.eval()
        augment = self.data.augment
        z1, z2 = self.model(augment(xb, g)), self.model(augment(xb, g))
        self.model.train(was)
        out["align"] = alignment(z1, z2)
        out["uniform"] = uniformity(z1)
        if e.diagnostics:
            out["diag"] = two_view_diagnostics(z1, z2, yb, beta=self.beta, t=self.t)
        return out

    def bound_terms(self, z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor) -> dict[str, Any] | None:
        """The four losses of the bound check on the global batch of this step's embeddings and labels
        (every process takes part in gathering it); None except on rank 0."""
        zb1, zb2, yb = D.gather(z1.detach()), D.gather(z2.detach()), D.gather_tags(y)
        if not D.is_main():
            return None
        return bound_terms(zb1, zb2, yb, beta=self.check_beta, t=self.t)
