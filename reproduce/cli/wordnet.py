"""`python -m reproduce wordnet-export` and `retrieval-compare`: the WordNet retrieval task and the
fine-tuning comparison of docs/retrieval.md."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from reproduce.cli.app import app


@app.command("wordnet-export")
def wordnet_export(
    out_dir: Path = typer.Option(..., "--out", help="Output folder for train/dev/test.jsonl and corpus.jsonl."),
    pos: str = typer.Option("noun", "--pos", help="Comma-separated parts of speech: noun, verb, adj, adv."),
    query: str = typer.Option("example", "--query", help="example, lemma or both."),
    ambiguous: bool = typer.Option(False, "--ambiguous", help="Also label ambiguous negatives (see docs)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with WordNet's data.noun etc."),
) -> None:
    """Write the WordNet retrieval task (pairs per split + corpus, with false-negative label sets) as JSONL."""
    from hardneg.data.wordnet import build_corpus, build_pairs, load_synsets
    from hardneg.io import atomic_open, check_writable

    check_writable(out_dir, "--out", folder=True)
    syn = load_synsets([p.strip() for p in pos.split(",")], data_dir)
    pairs = build_pairs(syn, query=query, ambiguous=ambiguous)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        with atomic_open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in pairs:
                if r["split"] == split:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
    texts, labels = build_corpus(syn, ambiguous=ambiguous)
    with atomic_open(out_dir / "corpus.jsonl", "w", encoding="utf-8") as f:
        for tx, lab in zip(texts, labels):
            f.write(json.dumps({"text": tx, "labels": lab}, ensure_ascii=False) + "\n")
    typer.echo(f"wrote {len(pairs):,} pairs and {len(texts):,} documents to {out_dir}")


@app.command("retrieval-compare")
def retrieval_compare(
    out: Path = typer.Option(..., "--out", help="Output folder: results.json and results.md (with --summarize: "
                             "seeds.md)."),
    results: list[Path] | None = typer.Argument(
        None, metavar="[RESULTS_JSON]...", help="With --summarize: results.json files of earlier runs (one per seed)."),
    summarize: bool = typer.Option(
        False, "--summarize", help="Train nothing: combine the RESULTS files into <out>/seeds.md."),
    runs: str | None = typer.Option(None, "--runs", help="Comma-separated subset of the runs (default: all but "
                                    "hardneg_unambiguous)."),
    train_pairs: int | None = typer.Option(None, "--train-pairs", help="Cap on training pairs (default: all)."),
    eval_queries: int | None = typer.Option(None, "--eval-queries", help="Cap on evaluation queries (default: all)."),
    eval_corpus: int | None = typer.Option(None, "--eval-corpus", help="Cap on the evaluation corpus (default: all "
                                           "test definitions)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Training batch size."),
    lr: float = typer.Option(5e-5, "--lr", help="Learning rate."),
    num_negatives: int = typer.Option(3, "--num-negatives", "-n", help="Negatives per query."),
    beta: float = typer.Option(0.5, "--beta", help="Tilt β of the hardneg_tilted loss."),
    max_minutes: float = typer.Option(40.0, "--max-minutes", help="Training budget per run, in minutes."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimizer steps per trained run, the same for "
                                         "every run (default: one epoch of the training pairs)."),
    bf16: bool = typer.Option(True, "--bf16/--no-bf16", help="bf16 autocast for training (same for every run)."),
    cache_dir: Path = typer.Option(Path(".cache/hardneg-embeddings"), "--cache-dir",
                                   help="Embedding cache folder of the mining."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data split, the mining and the training."),
    threads: int = typer.Option(2, "--threads", help="torch threads."),
) -> None:
    """Fine-tune all-MiniLM-L6-v2 on WordNet with MNRL / ST-mined / hardneg-mined negatives and compare
    on the dev and test splits (docs/retrieval.md)."""
    from types import SimpleNamespace

    from reproduce.wordnet_finetune import DEFAULT_RUNS, run

    if summarize != bool(results):
        raise ValueError("--summarize takes the results.json files to combine, and they go with --summarize only")
    run(SimpleNamespace(
        out=str(out), summarize=[str(p) for p in results] if summarize else None,
        runs=runs or ",".join(DEFAULT_RUNS), train_pairs=train_pairs, eval_queries=eval_queries,
        eval_corpus=eval_corpus, batch_size=batch_size, lr=lr, num_negatives=num_negatives, beta=beta,
        max_minutes=max_minutes, max_steps=max_steps, bf16=bf16, cache_dir=str(cache_dir), seed=seed,
        threads=threads))
