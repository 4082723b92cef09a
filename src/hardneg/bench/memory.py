"""Peak resident memory of this process, as the benchmarks report it."""

from __future__ import annotations

import resource


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
