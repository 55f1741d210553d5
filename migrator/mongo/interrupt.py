"""SIGTERM (the Job's deadline, a pod eviction) during a real run: a failure of the patch, logged.

The handler raises `Interrupted` where the runner is, so the running patch fails like any other
and its record is settled. While a log record is being written the signal waits, so that a record
is never half written; `check()` raises it right after.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Interrupted(BaseException):
    """The runner was told to stop (SIGTERM/SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class Guard:
    def __init__(self):
        self._deferring = False
        self._pending: int | None = None

    def _handle(self, signum, _frame) -> None:
        if self._deferring:
            self._pending = signum
        else:
            raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def check(self) -> None:
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)


@contextmanager
def guard() -> Iterator[Guard]:
    """Turn SIGTERM into `Interrupted` for the block (main thread only: signals are delivered there)."""
    g = Guard()
    if threading.current_thread() is not threading.main_thread():
        yield g
        return
    previous = signal.signal(signal.SIGTERM, g._handle)
    try:
        yield g
    finally:
        signal.signal(signal.SIGTERM, previous)
