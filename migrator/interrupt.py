"""SIGTERM (the Job's deadline, a pod eviction) during a real run: an orderly stop, reported.

The handler raises `Interrupted` where the runner is, so the running patch (Mongo) or migration
(SQL) fails like any other and its record is settled. While a record is being written the signal
waits, so that a record is never half written; `check()` raises it right after. The SQL side defers
the signal for the whole run and lets it through only while a migration's own statements run
(`live()`), so its bookkeeping is never cut in half. The Mongo side's guard takes Ctrl-C (SIGINT) the
same way (`ctrl_c=True`; on the SQL side Ctrl-C stays Python's KeyboardInterrupt, unchanged), and there
the run stops once: a later signal only waits, so that a burst of Ctrl-C cannot cut the patch's cleanup,
its record or the message short (`after_stop()`, in runner.py, keeps it so until the process ends).
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
    def __init__(self, main: bool = True, once: bool = False):
        self._deferring = False
        self._pending: int | None = None
        self._main = main  # False: a worker thread's guard, which sees the main thread's signal
        self._once = once  # raise one signal only: the run is stopping, a later one would cut its cleanup short
        self._raised = False

    def _handle(self, signum, _frame) -> None:
        global _requested
        _requested = signum
        if self._once and self._raised:
            return  # the run is stopping already
        if self._deferring:
            if self._pending is None or not self._once:
                self._pending = signum
        else:
            self._raised = True
            raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        saved, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = saved

    def hold(self) -> None:
        """A signal waits from now until `resume()` (or the guard's end): where a patch's run ends, so that its
        cleanup, its record and the outcome's line happen whatever comes."""
        self._deferring = True

    def resume(self) -> None:
        self._deferring = False

    @property
    def pending(self) -> int | None:
        """The signal waiting to be raised, if any."""
        return self._pending

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
            self._raised = True
            raise Interrupted(signum)
        if not self._main and _requested is not None:
            raise Interrupted(_requested)


@contextmanager
def guard(ctrl_c: bool = False) -> Iterator[Guard]:
    """Turn SIGTERM (with ctrl_c, SIGINT too, raised once) into `Interrupted` for the block. Signals are
    delivered to the main thread; in a worker thread (schemas run in parallel) the guard raises, before
    each migration and each statement, the signal the main thread's handler recorded."""
    global _active, _requested
    if threading.current_thread() is not threading.main_thread():
        yield Guard(main=False)
        return
    g = Guard(once=ctrl_c)
    if _active is None:
        _requested = _unanswered  # (a new run has none; a swallowed raise of stop() is kept)
    keep_off = signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # (started with Ctrl-C ignored, as `cmd &` is)
    signums = (signal.SIGTERM, signal.SIGINT) if ctrl_c and not keep_off else (signal.SIGTERM,)
    previous, outer = {signum: signal.signal(signum, g._handle) for signum in signums}, _active
    _active = g
    try:
        yield g
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _active = outer


_active: Guard | None = None
_requested: int | None = None  # the signal received during the run, for every thread to see


def hold() -> None:
    """The active guard's `hold()` (main thread; nothing without a guard)."""
    if _active is not None and threading.current_thread() is threading.main_thread():
        _active.hold()


def after_stop() -> None:
    """For runner.py's process: once a run was told to stop (`requested()`), a later SIGTERM or Ctrl-C is ignored
    while the runner releases its lock, says what happened and exits (a second Ctrl-C printed a KeyboardInterrupt
    traceback, a second SIGTERM ended it before its message). Before that, Ctrl-C is Python's KeyboardInterrupt and
    SIGTERM stop(): one line, exit 143 (its default action, re-sent to itself, is ignored by the Job's container's
    PID 1: the run went on as if never told)."""
    def late(signum, _frame) -> None:
        if _requested is not None:
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop(signum, _frame)

    global _own_process
    _own_process = True
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (not when started with Ctrl-C ignored)
        signal.signal(signal.SIGINT, late)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, _kept_early):
        signal.signal(signal.SIGTERM, late)


_early: int | None = None  # a SIGTERM received while runner.py loaded the CLI (early())
_own_process = False  # after_stop() ran: this is runner.py's process (not a test's), whose exit exiting() quiets


def _kept_early(signum, _frame) -> None:
    global _early
    _early = signum


def early() -> None:
    """runner.py's very first step: a SIGTERM while the CLI loads (a fraction of a second) is kept, and said by main()
    as one line, exit 143, nothing run. As a container's PID 1, a SIGTERM that finds no handler is dropped by the kernel
    (PID 1 has no default action): the run went on as if never told. Kept, not raised: a raise in an import is a
    traceback."""
    signal.signal(signal.SIGTERM, _kept_early)


def early_stop() -> int | None:
    """The SIGTERM early() kept, if any."""
    return _early


def exiting() -> None:
    """runner.py's command has rendered its result: a SIGTERM or Ctrl-C while the process exits (pymongo's atexit
    joins its threads, half a second) is ignored. It printed "Exception ignored in atexit callback" and a traceback
    after a run that was done and said; what was done is recorded, and the exit code is the command's."""
    if _own_process:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)


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
