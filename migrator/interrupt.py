"""SIGTERM (the Job's deadline, a pod eviction) during a real run: an orderly stop, reported.

The handler raises `Interrupted` where the runner is, so the running patch (Mongo) or migration
(SQL) fails like any other and its record is settled. While a record is being written the signal
waits, so that a record is never half written; `check()` raises it right after. The SQL side defers
the signal for the whole run and lets it through only while a migration's own statements run
(`live()`), so its bookkeeping is never cut in half.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Interrupted(BaseException):
    """The runner was told to stop (SIGTERM/SIGINT)."""

    before_block = False  # raised on entering a live() block, so nothing in it started

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class Guard:
    def __init__(self, main: bool = True):
        self._deferring = False
        self._pending: int | None = None
        self._main = main  # False: a worker thread's guard, which sees the main thread's signal

    def _handle(self, signum, _frame) -> None:
        global _requested
        _requested = signum
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

    @contextmanager
    def live(self) -> Iterator[None]:
        """Inside a deferred block: let the signal through at once (a waiting one first)."""
        saved, self._deferring = self._deferring, False
        try:
            try:
                self.check()
            except Interrupted as exc:
                exc.before_block = True  # what the block guards (a statement) never started
                raise
            yield
        finally:
            self._deferring = saved

    def check(self) -> None:
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)
        if not self._main and _requested is not None:
            raise Interrupted(_requested)


@contextmanager
def guard() -> Iterator[Guard]:
    """Turn SIGTERM into `Interrupted` for the block. Signals are delivered to the main thread; in a
    worker thread (schemas run in parallel) the guard raises, before each migration and each
    statement, the signal the main thread's handler recorded."""
    global _active, _requested
    if threading.current_thread() is not threading.main_thread():
        yield Guard(main=False)
        return
    g = Guard()
    if _active is None:
        _requested = _unanswered  # (a new run has none; a swallowed raise of stop() is kept)
    previous, outer = signal.signal(signal.SIGTERM, g._handle), _active
    _active = g
    try:
        yield g
    finally:
        signal.signal(signal.SIGTERM, previous)
        _active = outer


_active: Guard | None = None
_requested: int | None = None  # the signal received during the run, for every thread to see


def requested() -> int | None:
    """The signal received since the outermost guard started, if any (or one stop() raised before it)."""
    return _requested


_unanswered: int | None = None  # a signal stop() raised: its Interrupted may have been swallowed


def reset() -> None:
    """A new run: no signal received yet (the CLI in tests runs several in one process)."""
    global _requested, _unanswered
    _requested = _unanswered = None


def stop(signum, _frame) -> None:
    """A plain SIGTERM handler for the steps outside any guard: raised where the runner is, and remembered for
    the run's next guard, since a raise inside an import's C code can be swallowed (seen: the run then waited out
    its whole --lock-timeout), so the next wait still stops the run."""
    global _requested, _unanswered
    _requested = _unanswered = signum
    raise Interrupted(signum)


def live() -> contextlib.AbstractContextManager:
    """The active guard's `live()` in the main thread; in a worker thread a check of the signal the main
    thread received (stop before the next statement); nothing when no guard is installed (tests)."""
    if threading.current_thread() is not threading.main_thread():
        return Guard(main=False).live() if _active else contextlib.nullcontext()
    return _active.live() if _active else contextlib.nullcontext()


def guarded() -> bool:
    """A guard is active (a run's): SIGTERM is turned into Interrupted, not the default silent exit."""
    return _active is not None


def is_live() -> bool:
    """True while a migration's own statements run (a signal would stop them now, not be deferred)."""
    return _active is not None and not _active._deferring
