"""CLI: ``hardneg diagnose`` — how many negatives are false, how hard they are, and what to do about it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from hardneg.cli.app import app


def _config_embeddings(config: Path | None, run: Path | None, overrides: list[str] | None, n: int, seed: int):
    """Two augmented views of ``n`` training samples embedded by the configured model (untrained) or
    by a finished run's model, their labels, and the config's strategy."""
    from hardneg.data.augment import Augment
    from hardneg.data.base import dataset_to_tensors, load_named
    from hardneg.eval.run_eval import load_trained_model
    from hardneg.models.encoders import build_model_from_config
    from hardneg.runs import load_config, load_run
    from hardneg.train.losses_from_config import build_objective, strategy_of

    if run is not None:
        r = load_run(run)
        cfg = r.config
    else:
        assert config is not None  # the command takes exactly one of --config, --run, --embeddings
        cfg = load_config(config, overrides)
    objective = build_objective(cfg)
    strategy = strategy_of(objective)
    loss = cfg.loss  # None only beside a strategy mapping, which strategy_of returns
    if strategy is None and loss is not None:  # a named loss: the preset of the same name, when there is one
        from hardneg.negatives import create_strategy, list_strategies

        name = loss.name
        strategy = create_strategy(name, **loss.params) if name in list_strategies() else create_strategy("ucl")
    c = cfg.data
    X, y = dataset_to_tensors(load_named(c.name, "train", data_dir=c.data_dir, limit=c.train_limit,
                                         seed=c.split_seed), name="train data")
    torch.manual_seed(seed)
    idx = torch.randperm(X.shape[0])[:n]
    X, y = X[idx], y[idx]
    model = load_trained_model(r, X.shape[1:]) if run is not None else build_model_from_config(cfg.model, X.shape[1:])
    model.eval()
    a = cfg.augment
    aug = Augment(a.crop_scale, a.flip_p, a.noise_std, a.erase_p)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z1 = torch.cat([model(aug(X[i : i + 512], g)) for i in range(0, len(X), 512)])
        z2 = torch.cat([model(aug(X[i : i + 512], g)) for i in range(0, len(X), 512)])
    return z1, z2, y, strategy, cfg.train.batch_size


def _load(path: Path, name: str, labels: bool = False) -> torch.Tensor:
    """An embedding matrix (real, finite) or, with ``labels``, a label vector (whole numbers)."""
    from hardneg.arrays import check_real, integer_labels, load_array_file

    a = load_array_file(path, name)
    a = integer_labels(a, f"{name} {path}") if labels else check_real(a, f"{name} {path}")
    return torch.from_numpy(np.ascontiguousarray(a))


@app.command("diagnose")
def diagnose_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="A training config: its data, model "
                                                "(untrained) and strategy.")] = None,
    run: Annotated[Path | None, typer.Option("--run", help="A finished run: its trained model, data and strategy.")]
    = None,
    embeddings: Annotated[Path | None, typer.Option("--embeddings", help="Saved embeddings (.npy/.pt), (n, d).")]
    = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Their labels (.npy/.pt), (n,); -1 = unknown.")]
    = None,
    second_view: Annotated[Path | None, typer.Option("--second-view", help="Embeddings of a second view, (n, d): "
                                                     "row i is the positive of row i.")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", help="A preset name (default: the config's, "
                                                 "else ucl with two views, supcon with one).")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Preset option KEY=VALUE (YAML "
                                                     "value), repeatable.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override, e.g. --set "
                                                        "train.batch_size=128 (repeatable).")] = None,
    samples: Annotated[int, typer.Option("--samples", min=4, help="Samples embedded from the data (config/run).")]
    = 2048,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=2, help="Batch size (default: the "
                                                   "config's, else 256).")] = None,
    batches: Annotated[int, typer.Option("--batches", min=1, help="Batches to diagnose.")] = 8,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a histogram of the similarities (PNG).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers and the advice as JSON.")]
    = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the sample, the augmentations and the "
                                      "batches.")] = 0,
) -> None:
    """Report how false and how hard the negatives are, with suggestions (label filter, similarity filter, tilt)."""
    from hardneg.eval.diagnose import diagnose, save_json
    from hardneg.io import check_writable
    from hardneg.negatives import create_strategy
    from hardneg.negatives.registry import parse_overrides

    sources = [x is not None for x in (config, run, embeddings)]
    if sum(sources) != 1:
        raise ValueError("give exactly one of --config, --run and --embeddings")
    for opt, path in (("--plot", plot), ("--json", json_out)):
        if path is not None:
            check_writable(path, opt)
    if embeddings is not None:
        z1 = _load(embeddings, "--embeddings")
        y = None if labels is None else _load(labels, "--labels", labels=True)
        z2 = None if second_view is None else _load(second_view, "--second-view")
        strat = None
        bs = batch_size or 256
    else:
        if labels is not None or second_view is not None:
            raise ValueError("--labels and --second-view go with --embeddings")
        z1, z2, y, strat, cfg_bs = _config_embeddings(config, run, overrides, samples, seed)
        bs = batch_size or cfg_bs
    if strategy is not None or option:
        name = strategy or (strat.name if strat is not None else ("ucl" if z2 is not None else "supcon"))
        strat = create_strategy(name, **parse_overrides(option or []))
    elif strat is None:
        strat = create_strategy("ucl" if z2 is not None else "supcon")
    d = diagnose(z1, z2, y, strategy=strat, batch_size=bs, max_batches=batches, seed=seed)
    typer.echo(d.report())
    if plot is not None:
        d.plot(str(plot))
        typer.echo(f"plot: {plot}")
    if json_out is not None:
        save_json(d, str(json_out))
        typer.echo(f"json: {json_out}")
