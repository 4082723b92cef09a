"""Crash-safe file output: write to a temporary name in the same folder, then rename.

A crash or Ctrl-C therefore never leaves a half-written checkpoint, table or mined-negatives file. A
process killed outright (SIGKILL, power loss) can leave the hidden temporary file
``.<name>.<random>.tmp`` behind; `remove_stale_temps` deletes those on the next start.

Files get the permissions a plain ``open(path, "w")`` would give them: those of the file they
replace, else ``0o666`` minus the process umask (``tempfile`` alone would create them ``0o600``).

One writer per output: `WriterLock` is the lock a command holds on its output folder or file
for as long as it writes there, so a second command writing to the same place is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
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
    """The file name a temporary of `atomic_open` stands for (``.a.json.x1y2z3w4.tmp`` → ``a.json``),
    or None when ``name`` is not such a temporary."""
    m = _TEMP.match(name)
    return m.group("target") if m else None


#: seconds after which a temporary in a folder that several runs share (the embedding cache) counts
#: as left behind by a killed run: writing one cache file takes seconds
SHARED_STALE_AGE_S = 3600.0


def remove_stale_temps(folder: str | os.PathLike[str], targets: Iterable[str] | None = None, *,
                       min_age_s: float = 0.0) -> list[Path]:
    """Delete the temporaries that an interrupted `atomic_open` left in ``folder`` (only those
    standing for a name in ``targets``, when given); return what was deleted.

    ``min_age_s``: leave temporaries modified less than this many seconds ago alone. A folder that
    other processes write into at the same time (a shared cache) needs it: a fresh temporary may be
    another run's file in the middle of being written."""
    d = Path(folder)
    if not d.is_dir():
        return []
    keep = None if targets is None else set(targets)
    now = time.time()
    gone = []
    for p in d.iterdir():
        t = temp_target(p.name)
        if t is not None and (keep is None or t in keep) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                if min_age_s > 0 and now - p.stat().st_mtime < min_age_s:
                    continue
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
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if e.filename is None and e.errno is not None:  # a full disk names no file: name the one being written
            raise type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through `atomic_open`."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


#: set by the ``--nproc`` launcher to the lock file it holds for its workers: they write under its lock
LOCK_HELD_ENV = "HARDNEG_LOCK_HELD"


class WriterLock:
    """One writer per output: an exclusive advisory lock (``fcntl.flock``) on the file ``path``, which
    records the holder's PID and command for the message a second writer gets.

    Taking it never waits: a lock held by a live process raises `FileExistsError` naming
    ``what`` and the holder. The kernel releases the lock when the holding process ends in any way
    (SIGKILL included), so a lock file left behind by a dead process does not block the next writer.
    `release` deletes the file while the lock is still held; a process that opened the file
    just before that finds it no longer at ``path`` once it gets the lock, and starts over, so two
    processes never both hold the lock on what ``path`` names.

    Holds nest: `held` keeps the lock through a ``with`` block even when the code inside
    releases it (a command that writes a report after its training run). Where ``fcntl`` does not
    exist (Windows) no lock is taken. A process whose environment names ``path`` in
    ``HARDNEG_LOCK_HELD`` (a worker of the ``--nproc`` launcher) writes under its parent's lock and
    takes none of its own.
    """

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None
        self._holds = 0
        self._pid = os.getpid()  # a forked child (a data-loader worker) must not release its parent's lock
        if os.environ.get(LOCK_HELD_ENV) == str(self.path.resolve()):
            # a worker of the --nproc launcher, which holds this lock for the whole run
            self._holds = 1
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: advisory locks of this kind do not exist
            self._holds = 1
            return
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise FileExistsError(
                    f"{what} is being written by another hardneg process, {holder}; wait for it to finish or stop it"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # released (and deleted) between our open and our lock: lock the file at path now
                os.close(fd)
        self._holds = 1
        cmd = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
        cmd = " ".join(cmd.split())  # one line in the message a second writer gets
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()} {cmd}\n".encode("utf-8", "replace"), 0)
        except BaseException:
            self.release()
            raise

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._holds > 0

    @contextlib.contextmanager
    def held(self) -> Iterator[WriterLock]:
        """Keep the lock through the ``with`` block (one more hold, released at its end)."""
        if not self.locked:
            raise RuntimeError(f"the lock of {self.what} is no longer held")
        self._holds += 1
        try:
            yield self
        finally:
            self.release()

    def release(self) -> None:
        """Give up one hold; the last deletes the lock file and unlocks it. Releasing a lock no longer
        held does nothing."""
        if self._holds == 0 or os.getpid() != self._pid:
            return
        self._holds -= 1
        if self._holds or self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        finally:
            os.close(fd)

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        # the kernel would release the lock with the file descriptor; this also deletes the file
        with contextlib.suppress(Exception):
            while self._holds:
                self.release()


def _same_file(fd: int, path: Path) -> bool:
    """True when ``path`` names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(fd: int) -> str:
    """``PID n (command)`` of the lock's holder, from what it wrote into the lock file."""
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    pid, _, cmd = text.partition(" ")
    if not pid.isdigit():
        return "PID unknown (it has just started)"
    return f"PID {pid} ({cmd})" if cmd else f"PID {pid}"


#: errno values of a file-system refusal that the user can act on (permissions, a read-only or full
#: disk, a file where a folder is needed or the reverse)
FILE_SYSTEM_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                                errno.ENOTDIR, errno.EISDIR})


def is_file_system_error(e: BaseException) -> bool:
    """True for an ``OSError`` that says a path cannot be written or read as asked (see
    `FILE_SYSTEM_ERRNOS`); the CLI prints those as one line."""
    return isinstance(e, (PermissionError, NotADirectoryError, IsADirectoryError)) or (
        isinstance(e, OSError) and e.errno in FILE_SYSTEM_ERRNOS)


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError``: ``<path>: <reason>`` (both paths of a rename), else its reason."""
    why = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
    if e.filename is None:
        return why
    where = os.fsdecode(e.filename)
    if e.filename2 is not None:
        where += f" -> {os.fsdecode(e.filename2)}"
    return f"{where}: {why}"


def check_writable(path: str | os.PathLike[str], what: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: the file ``path`` (created or
    replaced; ``folder=False``) or the folder ``path`` (created if missing, written into; ``folder=True``).

    The nearest existing folder on the way is probed by creating and deleting an empty temporary
    file in it, so what the file system would refuse later (permissions, a read-only mount, an
    immutable folder, a file standing where a folder is needed) is refused now. Raises an ``OSError``
    (``NotADirectoryError``, ``IsADirectoryError``, ``PermissionError`` or ``OSError`` with the
    file system's errno) whose message starts with ``what`` and names the path."""
    p = Path(path)
    if not folder and p.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{what} {p} is a folder; give a file name")
    d = p if folder else p.parent
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{what} {p}: {probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".hardneg-write-check.", suffix=".tmp", dir=probe)
    except OSError as e:
        code = e.errno or errno.EACCES
        cls = PermissionError if code in (errno.EACCES, errno.EPERM) else OSError
        raise cls(code, f"{what} {p}: cannot write in {probe}: {os.strerror(code)}") from None
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):  # another user's process: alive
        return False
    return False


@contextlib.contextmanager
def process_temp_dir(prefix: str, dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A temporary folder ``<dir>/<prefix><pid>-<random>`` (``dir``: the system's temporary folder by
    default), deleted with everything in it on exit.

    A process killed outright (SIGKILL, a SIGTERM it does not handle) cannot delete its folder; the
    process id in the name tells the next caller with the same ``prefix`` which folders belong to a
    process that no longer runs, and those are deleted first. A folder of a running process is never
    touched."""
    base = Path(dir) if dir is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)  # a --store-dir may name a folder still to be made
    if base.is_dir():
        for p in base.glob(f"{prefix}*"):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and p.is_dir() and _process_gone(int(pid)):
                remove_stale_temps(p)  # a store or shard file being written when the process died
                shutil.rmtree(p, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-", dir=dir) as tmp:
        yield Path(tmp)


class HardnegWarning(UserWarning):
    """A warning of hardneg's own, e.g. a damaged cache file set aside; the CLI prints it as one line."""


def set_aside(path: str | os.PathLike[str], why: str) -> Path:
    """Rename a damaged file to ``<name>.corrupt`` (kept for inspection, never read again) and warn
    in one line naming it; a file of that name from an earlier damage is replaced."""
    p = Path(path)
    dest = p.with_name(p.name + ".corrupt")
    with contextlib.suppress(FileNotFoundError):  # another process set it aside first
        os.replace(p, dest)
    warnings.warn(f"{p} is damaged ({why}); moved to {dest.name} and recomputed", HardnegWarning, stacklevel=3)
    return dest


def read_json(path: str | os.PathLike[str], what: str, remedy: str) -> Any:
    """The JSON value in the file ``path``; a missing file is a ``FileNotFoundError`` and a file that is
    not JSON (damaged, truncated, not UTF-8) one ``ValueError``, each naming it as ``what`` and saying
    ``remedy``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file ({what}); {remedy}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: damaged {what} ({e}); {remedy}") from None


def read_json_object(path: str | os.PathLike[str], what: str, remedy: str) -> dict[str, Any]:
    """The JSON object in the file ``path`` (`read_json`); another JSON value is one ``ValueError``
    naming it as ``what`` and saying ``remedy``."""
    value = read_json(path, what, remedy)
    if not isinstance(value, dict):
        raise ValueError(f"{Path(path)}: damaged {what} (not a JSON object); {remedy}")
    return value

