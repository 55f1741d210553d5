"""Lock retries: a statement that cannot get its locks within lock_timeout is tried again, with backoff and
jitter, until the run's lock retry budget is spent.

Each try waits at most lock_timeout (300 ms by default) for its locks, so the application queries that queue
behind the migration's lock request never wait longer; between tries nothing is requested and the application
runs. A transactional file is retried as a whole (its transaction rolled back: as if that try never ran), a
non-transactional one from the statement that failed (or from the BEGIN of a block the file opened itself).

Who blocks is seen from a second connection while a try waits (pg_blocking_pids): once the try has failed its
lock request is gone, and the server no longer says. Of another session only its pid, application, user,
state and age are shown, never its query text.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from migrator import interrupt, output
from migrator.postgres.watch import lock_mode
from migrator.limits import duration_seconds

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (or NOWAIT)
FIRST_DELAY, MAX_DELAY = 0.5, 10.0  # seconds between tries: doubling, jittered, capped
PROBE_AFTER = 0.05  # seconds a statement runs before the probe asks who blocks it, then every PROBE_EVERY
PROBE_EVERY = 0.05
PROBE_NAME = "hcm-db-migrations lock probe"


@dataclass
class Policy:
    per_try: float  # seconds each try waits for a lock (lock_timeout); 0: forever, so nothing to retry
    budget: float  # seconds of retrying in all; 0: no retry

    @classmethod
    def of(cls, limits) -> "Policy":
        if limits is None:
            return cls(0.0, 0.0)
        return cls(duration_seconds(limits.lock_timeout), duration_seconds(limits.lock_retry_budget, "s"))


def lock_timed_out(exc) -> bool:
    """A StatementFailed whose statement gave up waiting for a lock."""
    return getattr(getattr(exc, "cause", None), "pgcode", None) == LOCK_NOT_AVAILABLE


class Backoff:
    """The waits between the tries of one file: doubling from FIRST_DELAY to MAX_DELAY, each jittered (so
    runners retrying together spread out), none beyond the budget."""

    def __init__(self, policy: Policy):
        self.policy, self.started, self.tries = policy, time.monotonic(), 1

    def spent(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return max(0.0, self.policy.budget - self.spent())

    def next_delay(self) -> float | None:
        """Seconds to wait before the next try, or None when the budget is spent."""
        left = self.left()
        if left <= 0:
            return None
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (self.tries - 1))
        self.tries += 1
        return min(left, delay / 2 + random.uniform(0, delay / 2))


def sleep(seconds: float) -> None:
    """The wait between tries. SIGTERM (or SIGINT) ends it at once: Interrupted, nothing of the next try started."""
    end = time.monotonic() + seconds
    while True:
        signum = interrupt.requested()
        if signum is not None:
            stopped = interrupt.Interrupted(signum)
            stopped.before_block = True
            raise stopped
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(0.05, remaining))


@dataclass
class Blocker:
    pid: int
    application: str | None
    user: str | None
    state: str | None  # None: another role's session this role may not see
    seconds: float
    wanted: str | None  # the lock the migration waited for, e.g. "ACCESS EXCLUSIVE on hcm_report_metadata"

    def describe(self) -> str:
        if self.state is None:
            return (f"pid {self.pid} (another role's session: grant this role pg_read_all_stats to see whose) "
                    f"-- to end it: SELECT pg_terminate_backend({self.pid})")
        return (f"pid {self.pid} (application {output.scrub(self.application or '') or '(none)'}, user {self.user}, "
                f"{self.state} for {_seconds(self.seconds)}) -- to end it: SELECT pg_terminate_backend({self.pid})")

    def to_json(self) -> dict:
        return {"pid": self.pid, "application_name": output.scrub(self.application or ""), "user": self.user,
                "state": self.state, "state_for_s": round(self.seconds, 1)}


# Who blocks `pid` now, and what it waits for: no query text (another session's SQL may hold data or secrets).
BLOCKERS = """
SELECT p.pid, b.application_name, b.usename, b.state,
       extract(epoch FROM clock_timestamp() - coalesce(b.state_change, b.backend_start)),
       (SELECT l.mode || ' on ' || coalesce(c.relname::text, l.locktype) FROM pg_catalog.pg_locks l
        LEFT JOIN pg_catalog.pg_class c ON l.locktype = 'relation' AND c.oid = l.relation
        WHERE l.pid = %(pid)s AND NOT l.granted LIMIT 1)
FROM unnest(pg_catalog.pg_blocking_pids(%(pid)s)) AS p(pid)
LEFT JOIN pg_catalog.pg_stat_activity b ON b.pid = p.pid
ORDER BY p.pid
"""


class Probe:
    """Who blocks the migration session's running statement, asked from a second (read-only) connection every
    PROBE_EVERY seconds while a statement has run longer than PROBE_AFTER; `seen` is the last answer that named
    someone. A statement only stamps when it started (no cost per statement); the connection is opened the first
    time one runs long enough. If it cannot be, the retries go on without naming the blocker."""

    def __init__(self, params: dict | None, pid: int):
        self.params, self.pid = params, pid
        self.seen: list[Blocker] = []
        self._since: float | None = None  # when the running statement started; None: none runs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None

    @contextmanager
    def statement(self) -> Iterator[None]:
        """Around one statement: the probe asks while it runs."""
        self.seen, self._since = [], time.monotonic()
        if self._thread is None and self.params is not None:
            self._thread = threading.Thread(target=self._run, name="lock-probe", daemon=True)
            self._thread.start()
        try:
            yield
        finally:
            self._since = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        import psycopg2

        while not self._stop.wait(PROBE_EVERY):
            since = self._since
            running = time.monotonic() - since if since is not None else 0.0
            # a lock is mostly asked for as a statement starts; later on, ask once a second
            if running < PROBE_AFTER or (running > 5 and int(running / PROBE_EVERY) % int(1 / PROBE_EVERY)):
                continue
            try:
                if self._conn is None:
                    self._conn = psycopg2.connect(**{**self.params, "application_name": PROBE_NAME})
                    self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    cur.execute(BLOCKERS, {"pid": self.pid})
                    found = [Blocker(pid, app, user, state, float(age or 0), wanted)
                             for pid, app, user, state, age, wanted in cur.fetchall()]
            except psycopg2.Error:
                return  # the retries go on; their lines cannot name the blocker
            if found and self._since == since:  # still the statement it asked about
                self.seen = found


def probe_params(backend) -> dict | None:
    """The side connection's keywords: the watcher's (read-only, no limits), when the run has one."""
    watcher = getattr(getattr(backend, "parent", None), "watcher", None)
    return dict(watcher.params) if watcher is not None else None


def say_retry(exc, blockers: list[Blocker], backoff: Backoff, delay: float) -> None:
    """One line per retry: which statement, who blocks it (and how to end that), when the next try comes."""
    waited = _seconds(backoff.policy.per_try)
    text = f"{exc.path}:{exc.line}: lock not granted within {waited} (lock_timeout)"
    if blockers and blockers[0].wanted:
        text += f" waiting for {_lock(blockers[0].wanted)}"
    text += "; blocked by " + ("; ".join(b.describe() for b in blockers) if blockers else "a session not seen in time")
    text += (f"; try {backoff.tries} in {delay:.1f} s, {_seconds(backoff.left())} of the lock retry budget left")
    schema = output.event_context().get("schema")
    output.progress(f"[{schema}] {text}" if schema else text, kind="lock_retry", file=str(exc.path), line=exc.line,
                    next_try=backoff.tries, delay_s=round(delay, 2), lock_timeout_s=backoff.policy.per_try,
                    budget_s=backoff.policy.budget, budget_left_s=round(backoff.left(), 1),
                    blocked_by=[b.to_json() for b in blockers])


def gave_up(exc, blockers: list[Blocker], backoff: Backoff):
    """The final failure: the statement's error, told who blocked it and what to do."""
    who = "; ".join(b.describe() for b in blockers) if blockers else "a session not seen in time"
    retried = (f"gave up after {backoff.tries} tries in {_seconds(backoff.spent())} (lock retry budget "
               f"{_seconds(backoff.policy.budget)}, each try waiting {_seconds(backoff.policy.per_try)})"
               if backoff.policy.budget else "not retried (lock retry budget 0)")
    exc.todo = (f"{retried}; blocked by {who}; end that session, or run again once it has ended "
                "(--lock-retry-budget / DB_LOCK_RETRY_BUDGET sets how long to keep retrying)")
    return exc


def _lock(wanted: str) -> str:
    mode, _, what = wanted.partition(" on ")
    return f"{lock_mode(mode)} lock on {what}"


def _seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    return f"{int(seconds // 60)} min" + (f" {int(seconds % 60)} s" if int(seconds % 60) else "")
