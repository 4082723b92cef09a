"""``--nproc N``: run a command on N worker processes joined in one process group, and end it with one
outcome.

The launcher hosts the group's store (the workers reach it through ``HARDNEG_STORE``, see
`hardneg.distributed.init_from_env`), starts ``python -m hardneg.cli <command> ...`` once per rank
and returns only when every worker has exited. Each worker hands the line it ends with (or its
traceback) to the launcher (`hardneg.cli.app.final_line`), which prints one:

- every worker finished: exit 0 (rank 0 printed the results);
- a user error in any worker: its one line ``hardneg: error: …``, exit 2;
- a stop — Ctrl-C or SIGTERM to the launcher, or a signal to any worker: rank 0's line saying where the
  checkpoint is, exit 128 + the signal (130, 143);
- anything else: the traceback of the first worker that failed, exit 1; a worker that failed leaves
  the others `FAILURE_GRACE` seconds to exit, then they are killed (they would wait for it in
  their next collective).

A signal to the launcher: the first asks every worker to stop at its next stop point, through the store
(a worker that got the same signal itself — Ctrl-C reaches the whole process group — still counts one
request); a second is sent on to every worker, which then stops at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from hardneg.cli.app import REPORT_ENV

__all__ = ["FAILURE_GRACE", "run_workers"]

#: seconds the other workers get to exit once one failed, before they are killed
FAILURE_GRACE = 5.0
_STOPPED = {128 + signal.SIGINT, 128 + signal.SIGTERM}


def run_workers(nproc: int, argv: list[str]) -> int:
    """Run ``hardneg <argv>`` on ``nproc`` processes (ranks 0 … nproc − 1 of one group); print the one
    line the run ends with and return its exit status."""
    import torch.distributed as dist

    from hardneg.distributed import STOP_KEY

    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False)
    received: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            store.set(STOP_KEY, str(signum))
            return
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    with tempfile.TemporaryDirectory(prefix="hardneg-launch-") as tmp:
        reports = [Path(tmp, f"rank{r}") for r in range(nproc)]
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for r in range(nproc):
                procs.append(_start(r, nproc, argv, store.port, reports[r]))
            order = _wait(procs)
        finally:
            for p in procs:  # only when the launcher itself failed: no worker outlives it
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for s, h in old.items():
                signal.signal(s, h)
        texts = [p.read_text(encoding="utf-8").strip() if p.is_file() else "" for p in reports]
    code, message = _outcome([_status(p.returncode) for p in procs], order, texts, received)
    if message:
        print(message, file=sys.stderr)
    return code


def _start(r: int, nproc: int, argv: list[str], port: int, report: Path) -> subprocess.Popen[bytes]:
    """Worker ``r``: the same command, told its rank, the group's size and where the store is."""
    from hardneg.distributed import STORE_ENV

    env = {
        **os.environ,
        "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
        STORE_ENV: f"127.0.0.1:{port}", REPORT_ENV: str(report),
        # N processes share the cores: one thread each unless the user says otherwise
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    return subprocess.Popen([sys.executable, "-m", "hardneg.cli", *argv], env=env)


def _status(code: int) -> int:
    """A worker's exit status; one that SIGINT or SIGTERM ended before it could handle them (still
    starting) stopped as a handled signal does."""
    return 128 - code if code in (-signal.SIGINT, -signal.SIGTERM) else code


def _failed(code: int) -> bool:
    return code != 0 and code not in _STOPPED


def _wait(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """Wait until every worker has exited; return the ranks in the order they exited."""
    order: list[int] = []
    deadline: float | None = None
    while len(order) < len(procs):
        for r, p in enumerate(procs):
            if r not in order and p.poll() is not None:
                order.append(r)
                if deadline is None and _failed(_status(p.returncode)):
                    deadline = time.monotonic() + FAILURE_GRACE
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)
    return order


def _last_line(text: str) -> str:
    lines = text.splitlines()
    return lines[-1] if lines else ""


def _outcome(codes: list[int], order: list[int], texts: list[str], received: list[int]) -> tuple[int, str]:
    """The exit status and the message of a run whose workers exited with ``codes`` (in ``order``),
    handing over ``texts``, while the launcher received the signals ``received``."""
    if all(c == 0 for c in codes):
        return 0, ""
    failed = [r for r in order if codes[r] != 0]
    errors = [r for r in failed if codes[r] == 2]
    if errors:  # every worker checks the same things: the first one's line stands for all
        r = errors[0]
        return 2, _last_line(texts[r]) or f"hardneg: error: process {r} of {len(codes)} exited with status 2"
    stopped = [r for r in failed if codes[r] in _STOPPED]
    if received or stopped:
        who = 0 if 0 in stopped else (stopped[0] if stopped else None)  # the process whose line is shown
        line = _last_line(texts[who]) if who is not None else ""
        code = 128 + received[0] if received or who is None else codes[who]
        return code, line or f"hardneg: interrupted ({signal.Signals(code - 128).name})"
    r = failed[0]
    if codes[r] < 0:
        return 1, f"hardneg: error: process {r} of {len(codes)} was killed by {signal.Signals(-codes[r]).name}"
    return codes[r], texts[r] or f"hardneg: error: process {r} of {len(codes)} exited with status {codes[r]}"
