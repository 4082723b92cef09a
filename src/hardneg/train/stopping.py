"""Stopping a run on Ctrl-C (SIGINT) or SIGTERM: the step in flight finishes (an evaluation is cut
short), the trainer writes a checkpoint at its next stop point and raises `RunInterrupted`; a second
signal stops at once, keeping the last checkpoint. Over several processes every process stops at the
same stop point when any of them (or the ``--nproc`` launcher) was asked to
(`hardneg.distributed.agree_on_stop`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from hardneg import distributed as D

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped training; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class _EvalInterruptedError(Exception):
    """Raised by the signal handler to cut an evaluation short (the checkpoint is then written)."""


class StopRequests:
    """The stop signal a run received (``signum``, 0: none). ``where()`` says, for the message of a
    second signal, the step reached and the last checkpoint."""

    def __init__(self, where: Callable[[], str]) -> None:
        self.where = where
        self.signum = 0
        self._evaluating = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The handler of `STOP_SIGNALS`: record the request (and cut an evaluation short); a second
        signal raises `RunInterrupted` at once."""
        if self.signum:
            raise RunInterrupted(f"{signal.Signals(signum).name} again: stopped at once {self.where()}", signum)
        self.signum = signum
        if self._evaluating:
            raise _EvalInterruptedError

    @contextmanager
    def handled(self) -> Iterator[None]:
        """`on_signal` handles `STOP_SIGNALS` inside (on the main thread; elsewhere Python delivers
        no signals); the previous handlers come back after."""
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, self.on_signal) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def evaluate(self, evaluate: Callable[[], dict[str, Any]], cut: Callable[[], object]) -> dict[str, Any]:
        """``evaluate()``, or ``{}`` when a stop signal came before or during it (then ``cut()`` runs:
        the stop point after it writes the checkpoint from before the evaluation, which a resumed run
        repeats)."""
        if self.signum:
            return {}
        try:
            self._evaluating = True
            return evaluate()
        except _EvalInterruptedError:
            cut()
            return {}
        finally:
            self._evaluating = False

    def agreed(self) -> int:
        """The signal every process stops for at this stop point (0: go on). Every process must call
        it at the same points; one asked on another process stops here for the same signal."""
        agreed = D.agree_on_stop(lambda: self.signum)
        if agreed and not self.signum:
            self.signum = agreed
        return agreed
