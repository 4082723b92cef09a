"""Reading query/positive pairs and corpora (JSONL, CSV, Parquet, ``datasets.Dataset``) and writing
mined negatives in sentence-transformers' dataset formats (triplet, n-tuple, labeled-pair, labeled-list).

Output files are written to a temporary name and renamed (`hardneg.io.atomic_open`), so a
failure never leaves a partial file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg._optional import require
from hardneg.io import atomic_open

#: sentence-transformers' output formats ("n-tuple-scores" is its name for "n-tuple" with the scores)
OUTPUT_FORMATS_ALL = ("triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "labeled-list")
QUERY_COLUMNS = ("query", "anchor", "question", "sentence1")
POSITIVE_COLUMNS = ("positive", "document", "answer", "passage", "sentence2")


def _suffix(path: Path) -> str:
    s = path.suffix.lower()
    if s in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if s in (".csv", ".tsv"):
        return "csv"
    if s in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"{path}: unknown file type {s!r}; use .jsonl, .csv or .parquet")


def read_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of an input file; bytes that are not UTF-8 raise ValueError naming file and line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at byte offset {e.start:,}); "
            "convert the file to UTF-8"
        ) from None


def _read_rows(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row dict) for every row; line numbers are 1-based file lines (CSV: header = 1)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    kind = _suffix(path)
    rows: list[tuple[int, dict[str, Any]]] = []
    if kind == "jsonl":
        with io.StringIO(read_text(path), newline=None) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    raise ValueError(f"{path} line {lineno}: empty line")
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {lineno}: malformed JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
                rows.append((lineno, obj))
    elif kind == "csv":
        with io.StringIO(read_text(path), newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            for i, obj in enumerate(reader):
                if None in obj or any(v is None for v in obj.values()):
                    raise ValueError(f"{path} line {reader.line_num}: wrong number of fields")
                rows.append((reader.line_num, obj))
                del i
    else:
        pq = require("pyarrow.parquet", "text", feature="reading Parquet")
        table = pq.read_table(path)
        rows = [(i + 1, r) for i, r in enumerate(table.to_pylist())]
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _pick(cols: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, src: str) -> str:
    if wanted is not None:
        if wanted not in cols:
            raise ValueError(f"{src}: no column {wanted!r} for the {what}; columns are {list(cols)}")
        return wanted
    for c in candidates:
        if c in cols:
            return c
    raise ValueError(f"{src}: no {what} column (tried {list(candidates)}); columns are {list(cols)}")


def _check_text(v: Any, src: str, lineno: int, col: str) -> str:
    if v is None or (isinstance(v, str) and not v.strip()):
        raise ValueError(f"{src} line {lineno}: empty {col!r}")
    if not isinstance(v, str):
        raise ValueError(f"{src} line {lineno}: {col!r} must be a string, got {type(v).__name__}")
    return v


def read_pairs(
    source: Any,
    *,
    query_column: str | None = None,
    positive_column: str | None = None,
    label_column: str | None = "labels",
) -> tuple[list[str], list[str], list | None]:
    """(queries, positives, labels or None) from a file path or a ``datasets.Dataset``.

    Errors name the file and line: empty rows, malformed JSON/CSV, a query without a positive.
    """
    if isinstance(source, (str, os.PathLike)):
        src = str(source)
        rows = _read_rows(source)
    elif hasattr(source, "column_names") and hasattr(source, "to_list"):
        src = "dataset"
        rows = [(i + 1, r) for i, r in enumerate(source.to_list())]
        if not rows:
            raise ValueError("dataset: no rows")
    else:
        raise TypeError(f"pairs must be a file path or a datasets.Dataset, got {type(source).__name__}")
    cols = list(rows[0][1].keys())
    qc = _pick(cols, query_column, QUERY_COLUMNS, "query", src)
    pc = _pick(cols, positive_column, POSITIVE_COLUMNS, "positive", src)
    queries, positives, labels = [], [], []
    has_labels = label_column is not None and label_column in cols
    for lineno, r in rows:
        if qc not in r:
            raise ValueError(f"{src} line {lineno}: missing {qc!r}")
        if pc not in r or r[pc] is None or (isinstance(r[pc], str) and not r[pc].strip()):
            raise ValueError(f"{src} line {lineno}: query without a positive ({pc!r} missing or empty)")
        queries.append(_check_text(r.get(qc), src, lineno, qc))
        positives.append(_check_text(r.get(pc), src, lineno, pc))
        if label_column is not None and has_labels:
            lab = r.get(label_column)
            if isinstance(lab, str) and lab.startswith("["):
                lab = json.loads(lab)
            labels.append(lab)
    return queries, positives, (labels if has_labels else None)


def read_corpus(source: Any, *, text_column: str | None = None, label_column: str | None = "labels"):
    """(texts, labels or None) from a .txt (one document a line), JSONL/CSV/Parquet, a list or a Dataset."""
    if isinstance(source, (list, tuple)):
        texts = [_check_text(t, "corpus", i + 1, "text") for i, t in enumerate(source)]
        return texts, None
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".txt":
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {str(p)!r} does not exist")
        texts = []
        with io.StringIO(read_text(p), newline=None) as f:
            for lineno, line in enumerate(f, 1):
                texts.append(_check_text(line.rstrip("\n"), str(p), lineno, "text"))
        if not texts:
            raise ValueError(f"{p}: no rows")
        return texts, None
    if isinstance(source, (str, os.PathLike)):
        src, rows = str(source), _read_rows(source)
    elif hasattr(source, "to_list"):
        src, rows = "corpus dataset", [(i + 1, r) for i, r in enumerate(source.to_list())]
    else:
        raise TypeError(f"corpus must be a path, a list of strings or a datasets.Dataset, got {type(source).__name__}")
    cols = list(rows[0][1].keys())
    tc = _pick(cols, text_column, ("text", "document", "positive", "passage"), "text", src)
    texts = [_check_text(r.get(tc), src, lineno, tc) for lineno, r in rows]
    labels = [r.get(label_column) for _, r in rows] if label_column in cols else None
    return texts, labels


def build_rows(
    queries: Sequence[str],
    positives: Sequence[str],
    corpus: Sequence[str],
    neg_ids: np.ndarray,
    neg_scores: np.ndarray,
    pos_scores: np.ndarray,
    output_format: str,
    output_scores: bool,
) -> tuple[list[dict], int]:
    """Rows in sentence-transformers' column layout; returns (rows, queries dropped).

    - ``triplet``: ``anchor, positive, negative`` (one row per mined negative);
    - ``n-tuple``: ``anchor, positive, negative_1..negative_N`` (queries with fewer than N dropped);
    - ``labeled-pair``: ``anchor, positive, label`` with label 1 for the positive, 0 per negative;
    - ``labeled-list``: ``anchor, positive, labels``: ``positive`` lists the positive and then the
      negatives, ``labels`` is ``[1, 0, …]`` (queries without a negative dropped).
    With ``output_scores``, ``scores`` = [positive, negative...] (labeled-pair: ``score``; labeled-list:
    ``scores`` replaces ``labels``). ``n-tuple-scores`` is ``n-tuple`` with the scores.
    """
    if output_format == "n-tuple-scores":
        output_format, output_scores = "n-tuple", True
    rows: list[dict] = []
    dropped = 0
    N = neg_ids.shape[1]
    for i, (q, p) in enumerate(zip(queries, positives)):
        ok = neg_ids[i] >= 0
        if output_format == "triplet":
            if not ok.any():
                dropped += 1
            for j in np.flatnonzero(ok):
                r = {"anchor": q, "positive": p, "negative": corpus[neg_ids[i, j]]}
                if output_scores:
                    r["scores"] = [float(pos_scores[i]), float(neg_scores[i, j])]
                rows.append(r)
        elif output_format == "n-tuple":
            if not ok.all():
                dropped += 1
                continue
            r = {"anchor": q, "positive": p}
            for k in range(N):
                r[f"negative_{k + 1}"] = corpus[neg_ids[i, k]]
            if output_scores:
                r["scores"] = [float(pos_scores[i]), *map(float, neg_scores[i])]
            rows.append(r)
        elif output_format == "labeled-pair":
            if not ok.any():
                dropped += 1
            rows.append({"anchor": q, "positive": p, **({"score": float(pos_scores[i])} if output_scores
                                                         else {"label": 1})})
            for j in np.flatnonzero(ok):
                rows.append({"anchor": q, "positive": corpus[neg_ids[i, j]],
                             **({"score": float(neg_scores[i, j])} if output_scores else {"label": 0})})
        elif output_format == "labeled-list":
            if not ok.any():
                dropped += 1
                continue
            js = np.flatnonzero(ok)
            r = {"anchor": q, "positive": [p, *(corpus[neg_ids[i, j]] for j in js)]}
            if output_scores:
                r["scores"] = [float(pos_scores[i]), *(float(neg_scores[i, j]) for j in js)]
            else:
                r["labels"] = [1] + [0] * len(js)
            rows.append(r)
        else:
            raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS_ALL)}, got {output_format!r}")
    return rows, dropped


def st_columns(queries: Sequence[str], positives: Sequence[str], corpus: Sequence[str], neg_ids: np.ndarray,
               neg_scores: np.ndarray, pos_scores: np.ndarray, output_format: str, output_scores: bool, *,
               columns: tuple[str, str] = ("anchor", "positive")) -> tuple[dict[str, list], int]:
    """The columns of the ``datasets.Dataset`` ``sentence_transformers.util.mine_hard_negatives`` returns,
    for pairs grouped by query (the pairs of one query share its negatives); returns (columns, pairs left out).

    Unlike `build_rows` (rows for ``hardneg mine``'s files, fixed column names), this keeps the dataset's
    anchor and positive column names (``columns``), and ``labeled-pair`` lists a query's positives and
    then its negatives once, as sentence-transformers does.
    """
    fmt, a_col, p_col = output_format, *columns
    if fmt == "n-tuple-scores":
        fmt, output_scores = "n-tuple", True
    ok = neg_ids >= 0
    n, N = neg_ids.shape
    left_out = 0
    cols: dict[str, list]
    if fmt == "triplet":
        cols = {a_col: [], p_col: [], "negative": []}
        if output_scores:
            cols["scores"] = []
        for i in range(n):
            left_out += not ok[i].any()
            for j in np.flatnonzero(ok[i]):
                cols[a_col].append(queries[i])
                cols[p_col].append(positives[i])
                cols["negative"].append(corpus[neg_ids[i, j]])
                if output_scores:
                    cols["scores"].append([float(pos_scores[i]), float(neg_scores[i, j])])
    elif fmt == "n-tuple":
        keep: list[int] = np.flatnonzero(ok.all(1)).tolist()
        left_out = n - len(keep)
        cols = {a_col: [queries[i] for i in keep], p_col: [positives[i] for i in keep]}
        for k in range(N):
            cols[f"negative_{k + 1}"] = [corpus[neg_ids[i, k]] for i in keep]
        if output_scores:
            cols["scores"] = [[float(pos_scores[i]), *map(float, neg_scores[i])] for i in keep]
    elif fmt == "labeled-pair":
        last = "score" if output_scores else "label"
        cols = {a_col: [], p_col: [], last: []}
        starts = [i for i in range(n) if i == 0 or queries[i] != queries[i - 1]]
        for i, end in zip(starts, [*starts[1:], n]):
            for r in range(i, end):  # the anchor's positives, then its negatives (shared by its pairs)
                cols[a_col].append(queries[r])
                cols[p_col].append(positives[r])
                cols[last].append(float(pos_scores[r]) if output_scores else 1)
                left_out += not ok[r].any()
            for j in np.flatnonzero(ok[i]):
                cols[a_col].append(queries[i])
                cols[p_col].append(corpus[neg_ids[i, j]])
                cols[last].append(float(neg_scores[i, j]) if output_scores else 0)
    elif fmt == "labeled-list":
        last = "scores" if output_scores else "labels"
        cols = {a_col: [], p_col: [], last: []}
        for i in range(n):
            js = np.flatnonzero(ok[i])
            if not len(js):
                left_out += 1
                continue
            cols[a_col].append(queries[i])
            cols[p_col].append([positives[i], *(corpus[neg_ids[i, j]] for j in js)])
            cols[last].append([float(pos_scores[i]), *(float(neg_scores[i, j]) for j in js)] if output_scores
                              else [1] + [0] * len(js))
    else:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS_ALL)}, got {output_format!r}")
    return cols, left_out


def write_rows(rows: list[dict], path: str | os.PathLike[str]) -> None:
    """Write rows as JSONL, CSV or Parquet (by extension), atomically."""
    path = Path(path)
    kind = _suffix(path)
    if kind == "jsonl":
        with atomic_open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    elif kind == "csv":
        cols = list(rows[0].keys()) if rows else ["anchor", "positive"]
        with atomic_open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
    else:
        pa = require("pyarrow", "text", feature="writing Parquet")
        pq = require("pyarrow.parquet", "text", feature="writing Parquet")

        table = pa.Table.from_pylist(rows)
        with atomic_open(path, "wb") as f:
            pq.write_table(table, f)
