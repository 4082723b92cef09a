"""Peak resident memory of a process, and the benchmarks' worker harness: each measured run in a
fresh Python process, so that its peak memory and its imports are its own."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

#: the command-line flags by which `run_worker` hands a worker its spec and where to write its result
WORKER_FLAG, WORKER_OUT_FLAG = "--worker", "--worker-out"


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident set size in MB of this process (or of process ``pid``): ``VmHWM`` from
    ``/proc/<pid>/status``, which starts afresh when a program is executed. ``ru_maxrss`` does not:
    Linux carries the parent's resident size at fork into the child across exec, so a benchmark
    worker started by a large parent would report the parent's size. Without ``/proc``: ``ru_maxrss``
    for this process, 0 for another (gone, or not readable)."""
    try:
        with open(f"/proc/{'self' if pid is None else pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if pid is None else 0.0


def run_worker(target: str, spec: dict[str, Any], *, quiet: bool = True,
               timeout: float | None = None) -> dict[str, Any]:
    """Run ``target``'s worker on ``spec`` in a fresh Python process and return the JSON dict it wrote.

    ``target``: a script (a path ending in ``.py``, run as ``python target``) or a module name (run
    as ``python -m target``) whose ``__main__`` code calls `serve_worker` first. ``quiet``: the
    worker's stderr (progress bars, warnings) is discarded. A worker that fails raises
    ``subprocess.CalledProcessError``, one that runs past ``timeout`` seconds
    ``subprocess.TimeoutExpired``."""
    program = [target] if target.endswith(".py") else ["-m", target]
    with tempfile.TemporaryDirectory(prefix="hardneg-worker-") as tmp:
        out = os.path.join(tmp, "result.json")
        subprocess.run([sys.executable, *program, WORKER_FLAG, json.dumps(spec), WORKER_OUT_FLAG, out],
                       check=True, stderr=subprocess.DEVNULL if quiet else None, timeout=timeout)
        with open(out) as f:
            return json.load(f)


def serve_worker(worker: Callable[[dict[str, Any]], dict[str, Any]],
                 argv: Sequence[str] | None = None) -> bool:
    """In a process started by `run_worker`: run ``worker(spec)``, write its result where
    `run_worker` reads it, and return True; with any other command line (``argv``, default
    ``sys.argv[1:]``) return False and do nothing."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4 or args[0] != WORKER_FLAG or args[2] != WORKER_OUT_FLAG:
        return False
    result = worker(json.loads(args[1]))
    with open(args[3], "w") as f:
        json.dump(result, f)
    return True


__all__ = ["WORKER_FLAG", "WORKER_OUT_FLAG", "peak_rss_mb", "run_worker", "serve_worker"]
