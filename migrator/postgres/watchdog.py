"""One long-lived thread that watches every bound the process sets on a wait (failures.answered_within).

A thread per statement (threading.Timer) cost ~0.1 ms of CPU and two context switches each, for a bound that almost
never fires (a command sends ~150 statements). Here arming is a heap push under a lock; the thread wakes only when
the earliest bound may have passed, and a bound that fires runs in a thread of its own, so a callback that blocks
(a shut waiting on a connection's touch lock) never delays another connection's bound.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from typing import Callable


class Bound:
    """One armed bound: `fire` runs once `deadline` (time.monotonic) passes, unless disarmed first."""

    __slots__ = ("deadline", "seq", "fire", "armed")

    def __init__(self, deadline: float, seq: int, fire: Callable[[], None]):
        self.deadline, self.seq, self.fire, self.armed = deadline, seq, fire, True

    def __lt__(self, other: Bound) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class Watchdog:
    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._heap: list[Bound] = []
        self._seq = itertools.count()
        self._wakes_at = float("inf")  # when the thread looks next: an earlier bound must wake it
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, fire: Callable[[], None]) -> Bound:
        bound = Bound(time.monotonic() + seconds, next(self._seq), fire)
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="answer-watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, bound)
            if bound.deadline < self._wakes_at:
                self._changed.notify()
        return bound

    def disarm(self, bound: Bound) -> None:
        """`bound` never fires after this returns (it may have fired before; its callback says whether)."""
        with self._changed:
            bound.armed = False
            while self._heap and not self._heap[0].armed:  # (statements end in order: the heap stays small)
                heapq.heappop(self._heap)

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                while self._heap and (not self._heap[0].armed or self._heap[0].deadline <= now):
                    bound = heapq.heappop(self._heap)
                    if bound.armed:
                        bound.armed = False
                        threading.Thread(target=bound.fire, name="answer-bound", daemon=True).start()
                self._wakes_at = self._heap[0].deadline if self._heap else float("inf")
                self._changed.wait(None if not self._heap else max(0.0, self._wakes_at - now))


_watchdog = Watchdog()


def _after_fork() -> None:  # a forked child has no watchdog thread, and the lock may have been held at the fork
    global _watchdog
    _watchdog = Watchdog()


os.register_at_fork(after_in_child=_after_fork)


def arm(seconds: float, fire: Callable[[], None]) -> Bound:
    """`fire()` runs in a thread of its own once `seconds` pass, unless disarm(bound) comes first."""
    return _watchdog.arm(seconds, fire)


def disarm(bound: Bound) -> None:
    _watchdog.disarm(bound)
