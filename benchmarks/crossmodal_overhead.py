"""Cost per training step of each cross-modal strategy, relative to plain CLIP loss, in one process.

    PYTHONPATH=src python benchmarks/crossmodal_overhead.py --config configs/crossmodal_quick.yaml --steps 20

Two measurements, each round-robin over the cases (median of ``--steps`` timed steps after two
warm-up steps), both relative to a literal CLIP loss (``F.cross_entropy`` on ``scale · I Tᵀ`` in
both directions) measured in the same run:

- **loss**: forward + backward of the loss alone on fixed random (B×d) features;
- **step**: one whole training step on captioned scenes (both towers forward and backward, the
  loss, edits encoded by the text tower, Adam) — what a user pays per step.

Run it on an otherwise idle machine; the ratios are what the docs quote.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the checkout's reproduce/

from hardneg.integrations.open_clip import ClipLoss  # noqa: E402
from reproduce.crossmodal import Run, build_data, load_crossmodal_config  # noqa: E402


def literal_clip_loss(image_features, text_features, logit_scale, **_: object) -> torch.Tensor:
    """open_clip's ClipLoss on normalised features (the reference of every ratio)."""
    i, t = F.normalize(image_features, dim=1), F.normalize(text_features, dim=1)
    logits = logit_scale * i @ t.T
    labels = torch.arange(i.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _median_ms(fns: dict[str, Callable[[], None]], steps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(2):
        for fn in fns.values():
            fn()
    for _ in range(steps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1000.0 for k, v in times.items()}


def _step_case(run: Run, batch_size: int) -> Callable[[], None]:
    """One training step of ``run`` on its first batch of a fresh epoch order."""

    def step() -> None:
        run.step(run.batch_order(batch_size)[0])

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/crossmodal_quick.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_crossmodal_config(args.config)
    data, table = build_data(cfg)
    B, d = cfg.batch_size, cfg.dim

    g = torch.Generator().manual_seed(0)
    fi, ft = torch.randn(B, d, generator=g), torch.randn(B, d, generator=g)
    edits = torch.randn(B, 4, d, generator=g)
    labels, ids = data["train"].scenes.labels[:B], torch.arange(B)
    scale = torch.tensor(1 / cfg.temperature, requires_grad=True)

    def loss_case(fn: Callable[..., torch.Tensor], n_edits: int) -> Callable[[], None]:
        def run() -> None:
            a, b = fi.clone().requires_grad_(), ft.clone().requires_grad_()
            neg = edits[:, :n_edits] if n_edits else None
            fn(a, b, scale, labels=labels, ids=ids, negatives=neg).backward()

        return run

    loss_cases: dict[str, Callable[[], None]] = {"literal CLIP": loss_case(literal_clip_loss, 0)}
    step_cases: dict[str, Callable[[], None]] = {}
    ref_run = Run(cfg, "", 0, data, table, loss_fn=literal_clip_loss, track_truth=False)
    step_cases["literal CLIP"] = _step_case(ref_run, B)
    for name, spec in cfg.strategies.items():
        s = {k: v for k, v in spec.items() if k != "edits"}
        loss_cases[name] = loss_case(ClipLoss(s), int(spec.get("edits", 0)))
        run = Run(cfg, name, 0, data, table, track_truth=False)
        step_cases[name] = _step_case(run, B)

    loss_ms = _median_ms(loss_cases, args.steps)
    step_ms = _median_ms(step_cases, args.steps)
    print(f"batch {B}, dim {d}, {args.threads} threads, median of {args.steps} steps")
    print("| strategy | loss fwd+bwd (ms) | × literal CLIP loss | training step (ms) | × CLIP step |")
    print("| --- | --- | --- | --- | --- |")
    for k in loss_cases:
        print(f"| {k} | {loss_ms[k]:.2f} | {loss_ms[k] / loss_ms['literal CLIP']:.2f} | "
              f"{step_ms[k]:.1f} | {step_ms[k] / step_ms['literal CLIP']:.2f} |")


if __name__ == "__main__":
    main()
