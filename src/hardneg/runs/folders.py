"""Output folders of ``hardneg train | bounds | compare``: their layout, the marker that says hardneg
created them, and the rule for what ``--overwrite`` may delete.

A run folder holds the files named in `RUN_FILES`; a compare folder those in
`COMPARE_FILES` plus ``runs/<name>/``, one run folder per grid point. Both get a marker file
``.hardneg`` (JSON: ``{"written_by": "hardneg", "kind": "run" | "compare"}``) when they are created.

- A new or empty folder is used as is.
- A folder without the marker is refused, with or without ``--overwrite``; the message names what it
  holds. (``--resume`` accepts one whose ``config.yaml`` is byte-identical to the run's, which only
  hardneg writes, and adds the marker.)
- ``--overwrite`` deletes the files hardneg writes there and nothing else: a folder that also holds
  anything else is refused, naming it. The folder itself is kept (``--out .`` empties nothing).
- ``--resume`` needs the same ``config.yaml``; it deletes nothing but stale temporary files.

One writer per folder: whoever prepares an output holds its lock (`hardneg.io.WriterLock` on
the file ``.hardneg.lock`` inside it) for as long as it writes there. A second writer — a fresh start,
``--resume`` or ``--overwrite`` — is refused, naming the folder and the holder's PID, before it changes
anything; ``--overwrite`` never deletes the lock file of a live holder. The lock file is hardneg's own
(in `RUN_FILES` and `COMPARE_FILES`); the holder deletes it when it finishes, and one left by
a killed process blocks nothing.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
from pathlib import Path

from hardneg.io import WriterLock, atomic_write_text, remove_stale_temps, temp_target

MARKER = ".hardneg"
LOCK = ".hardneg.lock"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
MODEL = "model.pt"
EMBEDDINGS = "embeddings.pt"
REPORT = "report.md"
RESULTS = "results.json"
RUNS = "runs"
#: ``hardneg compare --search``: its summary (plain JSON) and Optuna's journal (JSON lines) with the
#: journal's lock file, held only while a line is appended
SEARCH = "search.json"
SEARCH_JOURNAL = "search.journal"

#: every file hardneg writes into a run folder (training, then ``hardneg report`` / ``bounds``)
RUN_FILES = (
    MARKER, LOCK, CONFIG, METRICS, CHECKPOINT, SUMMARY, MODEL, EMBEDDINGS, REPORT, "loss_curve.png", "bounds.png",
)
#: every file hardneg writes at the top of a compare folder (the grid's config, the report and its plots)
COMPARE_FILES = (
    MARKER, LOCK, CONFIG, RESULTS, REPORT, "accuracy_vs_beta.png", "loss_curves.png", "knn_curves.png",
    "align.png", "uniform.png", "bounds.png", "embedding_map.png", "bounds_by_entry.png", "leaderboard.png",
    "accuracy_vs_time.png", SEARCH, SEARCH_JOURNAL, SEARCH_JOURNAL + ".lock",
)
#: plus one plot per negative diagnostic, ``diag_<name>.png`` (evaluation) and ``train_<name>.png``
#: (training steps); the report chooses which diagnostics
COMPARE_PATTERNS = ("diag_*.png", "train_*.png")
KINDS = {"run": RUN_FILES, "compare": COMPARE_FILES}
PATTERNS: dict[str, tuple[str, ...]] = {"run": (), "compare": COMPARE_PATTERNS}
_SHOWN = 5  # entries named in a refusal


def owned_name(name: str, kind: str) -> bool:
    """True when hardneg writes a file called ``name`` into an output of ``kind`` (or it is the
    temporary of such a file)."""
    target = temp_target(name) or name
    return target in KINDS[kind] or any(fnmatch.fnmatchcase(target, p) for p in PATTERNS[kind])


def read_marker(folder: str | os.PathLike[str]) -> str | None:
    """The kind (``"run"`` / ``"compare"``) recorded in ``folder``'s marker, or None without a valid one."""
    p = Path(folder) / MARKER
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(m, dict) and m.get("written_by") == "hardneg" and m.get("kind") in KINDS:
        return m["kind"]
    return None


def write_marker(folder: str | os.PathLike[str], kind: str) -> None:
    """Mark ``folder`` as a hardneg output of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    atomic_write_text(Path(folder) / MARKER, json.dumps({"written_by": "hardneg", "kind": kind}) + "\n")


def foreign_entries(folder: str | os.PathLike[str], kind: str) -> list[str]:
    """What ``folder`` holds that hardneg does not write into an output of ``kind`` (relative paths,
    sorted; a sub-folder ends in ``/``)."""
    d = Path(folder)
    out: list[str] = []
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        if kind == "compare" and p.name == RUNS and p.is_dir() and not p.is_symlink():
            for r in sorted(p.iterdir()):
                if not r.is_dir() or r.is_symlink() or read_marker(r) != "run":
                    out.append(f"{RUNS}/{r.name}" + ("/" if r.is_dir() else ""))
                else:
                    out += [f"{RUNS}/{r.name}/{x}" for x in foreign_entries(r, "run")]
        elif p.is_dir() or p.is_symlink() or not owned_name(p.name, kind):
            out.append(p.name + ("/" if p.is_dir() else ""))
    return out


def _names(entries: list[str]) -> str:
    more = f" and {len(entries) - _SHOWN} more" if len(entries) > _SHOWN else ""
    return ", ".join(entries[:_SHOWN]) + more


def clear_output(folder: str | os.PathLike[str], kind: str) -> None:
    """Delete the files hardneg wrote into ``folder`` (an output of ``kind``), keeping the folder itself
    and its lock file (the caller's own lock, or one a killed process left, which blocks nothing);
    refuse (FileExistsError, naming them) when it holds anything else, or when another process writes
    one of a compare folder's runs."""
    d = Path(folder)
    foreign = foreign_entries(d, kind)
    if foreign:
        raise FileExistsError(
            f"refusing to --overwrite {d}: it holds {_names(foreign)}, which hardneg did not write; "
            "move them away or choose another folder"
        )
    grid = sorted((d / RUNS).iterdir()) if kind == "compare" and (d / RUNS).is_dir() else []
    with contextlib.ExitStack() as held:
        for r in grid:  # every run's lock before anything is deleted: a run in use is not cleared under it
            held.enter_context(WriterLock(r / LOCK, f"run directory {r}"))
        for r in grid:
            clear_output(r, "run")
    for r in grid:  # their locks released, which deleted the lock files
        r.rmdir()
    if grid or (d / RUNS).is_dir():
        (d / RUNS).rmdir()
    for p in d.iterdir():
        if p.name not in (MARKER, LOCK) and owned_name(p.name, kind):
            p.unlink()
    (d / MARKER).unlink(missing_ok=True)  # last: an interrupted clear stays recognisable


def _being_made(name: str, kind: str) -> bool:
    """True for what a folder of ``kind`` holds while hardneg creates it: the lock file and the
    temporaries of hardneg's files (the marker being written)."""
    return name == LOCK or (temp_target(name) is not None and owned_name(name, kind))


def _held_kind(d: Path, kind: str, config_text: str, resume: bool) -> str | None:
    """The kind of output ``d`` holds, None when it is new or empty (one holding only what
    `_being_made` names counts as empty); refuse a folder hardneg did not create or one of
    another kind. Reads only."""
    what = "run directory" if kind == "run" else "output folder"
    if d.exists() and not d.is_dir():
        raise FileExistsError(f"{what} {d} exists and is not a directory")
    if not d.is_dir() or all(_being_made(p.name, kind) for p in d.iterdir()):
        return None
    found = read_marker(d)
    cfg = d / CONFIG
    if found is None and resume and cfg.is_file() and cfg.read_text(encoding="utf-8") == config_text:
        found = kind  # a config.yaml identical to this one is hardneg's own: a run folder without a marker
    if found is None:
        entries = [p.name + ("/" if p.is_dir() else "") for p in sorted(d.iterdir())]
        raise FileExistsError(
            f"{what} {d} is not empty and has no hardneg marker ({MARKER}), so hardneg did not create it "
            f"(it holds {_names(entries)}); choose a new or empty folder"
        )
    if found != kind:
        raise FileExistsError(f"{what} {d} holds a hardneg {found} output, not a {kind}; choose another folder")
    return found


def prepare_output(
    folder: str | os.PathLike[str], kind: str, config_text: str, *, resume: bool = False, overwrite: bool = False
) -> tuple[bool, WriterLock]:
    """Create or check an output folder of ``kind`` and lock it; return ``(resumed, lock)``: resumed is
    True when an existing one of the same config is resumed; the caller holds ``lock`` while it writes
    there and releases it at the end. Writes the marker and ``config.yaml`` of a new output; see the
    module docstring."""
    if resume and overwrite:
        raise ValueError("pass at most one of --resume and --overwrite")
    d = Path(folder)
    what = "run directory" if kind == "run" else "output folder"
    if not (d / LOCK).is_file():  # a folder hardneg did not create gets no lock file
        _held_kind(d, kind, config_text, resume)
        d.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(d / LOCK, f"{what} {d}")
    try:
        return _prepare_locked(d, kind, config_text, resume=resume, overwrite=overwrite), lock
    except BaseException:
        lock.release()
        raise


def _prepare_locked(d: Path, kind: str, config_text: str, *, resume: bool, overwrite: bool) -> bool:
    """`prepare_output` once the lock is held (checked again: a writer that held it may have
    changed the folder in between)."""
    what = "run directory" if kind == "run" else "output folder"
    if _held_kind(d, kind, config_text, resume) is not None:
        cfg = d / CONFIG
        if overwrite:
            clear_output(d, kind)
        elif not resume:
            raise FileExistsError(
                f"{what} {d} already holds a {kind}; pass --resume to continue it or --overwrite to replace it"
            )
        else:
            if not cfg.is_file():
                raise FileExistsError(f"{what} {d} holds no {CONFIG}; refusing to resume into it")
            if cfg.read_text(encoding="utf-8") != config_text:
                raise FileExistsError(
                    f"{what} {d} holds a different run (its {CONFIG} differs); use another folder or --overwrite"
                )
            remove_stale_temps(d, [n for p in d.iterdir() if (n := temp_target(p.name)) and owned_name(n, kind)])
            if read_marker(d) is None:
                write_marker(d, kind)
            return True
    write_marker(d, kind)
    atomic_write_text(d / CONFIG, config_text)
    return False
