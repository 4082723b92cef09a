"""How many CPU cores this process may use, and what the CPU is."""

from __future__ import annotations

import functools
import os

#: instruction sets that decide how fast bf16 and int8 matrix products run, in the order they are named
SPEED_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_vnni")


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS reports it (a container or
    ``taskset`` limits it below ``os.cpu_count()``), else ``os.cpu_count()``; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@functools.cache  # the CPU does not change while the process runs
def cpu_info() -> tuple[str, frozenset[str]]:
    """The first processor's model name and instruction-set flags from ``/proc/cpuinfo``;
    ``("unknown", frozenset())`` where it cannot be read (not Linux)."""
    name, flags = "unknown", frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = frozenset(line.split(":", 1)[1].split())
                if name != "unknown" and flags:
                    break
    except OSError:
        pass
    return name, flags


def describe_cpu() -> str:
    """One line for benchmark results: model name, ``os.cpu_count()`` cores, and which of
    `SPEED_FLAGS` the CPU has, e.g. ``"AMD EPYC, 2 cores (avx512_bf16, avx512_vnni)"``."""
    name, flags = cpu_info()
    extra = [f for f in SPEED_FLAGS if f in flags]
    return f"{name}, {os.cpu_count()} cores" + (f" ({', '.join(extra)})" if extra else "")


__all__ = ["SPEED_FLAGS", "cpu_info", "describe_cpu", "usable_cores"]
