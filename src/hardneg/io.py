"""Crash-safe file output: write to a temporary name in the same folder, then rename.

A crash or Ctrl-C therefore never leaves a half-written checkpoint, table or mined-negatives file. A
process killed outright (SIGKILL, power loss) can leave the hidden temporary file
``.<name>.<random>.tmp`` behind; :func:`remove_stale_temps` deletes those on the next start.

Files get the permissions a plain ``open(path, "w")`` would give them: those of the file they
replace, else ``0o666`` minus the process umask (``tempfile`` alone would create them ``0o600``).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

# mkstemp's names: prefix + 8 characters from [a-z0-9_] + suffix
_TEMP = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    """The process umask: read from /proc where it is shown (no change to process state, safe with
    threads), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave: the existing file's, else 0o666 minus the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def temp_target(name: str) -> str | None:
    """The file name a temporary of :func:`atomic_open` stands for (``.a.json.x1y2z3w4.tmp`` → ``a.json``),
    or None when ``name`` is not such a temporary."""
    m = _TEMP.match(name)
    return m.group("target") if m else None


def remove_stale_temps(folder: str | os.PathLike[str], targets: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporaries that an interrupted :func:`atomic_open` left in ``folder`` (only those
    standing for a name in ``targets``, when given); return what was deleted."""
    d = Path(folder)
    if not d.is_dir():
        return []
    keep = None if targets is None else set(targets)
    gone = []
    for p in d.iterdir():
        t = temp_target(p.name)
        if t is not None and (keep is None or t in keep) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                gone.append(p)
    return gone


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode(path))
    finally:
        os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`atomic_open`."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def check_writable(path: str | os.PathLike[str], option: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output ``path`` that could not be written: a file under something
    that is not a folder, a folder given where a file goes (or a file where a folder goes), or a place
    this process may not create files in. Raises ``NotADirectoryError``, ``IsADirectoryError`` or
    ``PermissionError`` with one line naming ``option`` and the path; creates nothing."""
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise NotADirectoryError(f"{option} {p}: exists and is not a folder")
        if not folder and p.is_dir():
            raise IsADirectoryError(f"{option} {p}: is a folder, expected a file path")
        where = p if folder else p.parent
    else:
        where = p.parent
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise NotADirectoryError(f"{option} {p}: {where} is not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {p}: no permission to write in {where}")
