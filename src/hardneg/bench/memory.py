"""Peak resident memory of this process, as the benchmarks report it."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: ``VmHWM`` from ``/proc/self/status``, which starts
    afresh when a program is executed. ``ru_maxrss`` does not: Linux carries the parent's resident size
    at fork into the child across exec, so a benchmark worker started by a large parent would report
    the parent's size. Falls back to ``ru_maxrss`` where ``/proc`` is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
