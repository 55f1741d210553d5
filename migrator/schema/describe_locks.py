"""The schema description's lock waits (attack24c item 6). Its catalog reads (pg_get_expr, pg_get_indexdef) take
ACCESS SHARE on each relation: another session's ACCESS EXCLUSIVE on any table (held, or queued behind a reader)
would make a run wait, with no line, up to statement_timeout. On a migration session (its lock_timeout and the
run's lock retry budget pinned at connect, postgres/connection.py) each read waits at most that lock_timeout; a
read that gave up is retried with backoff, one line each naming who holds the lock, until the budget is spent,
then one error line. A read-only command's connection (status, plan, doctor; a tenant run's first survey) pins
the same bound for the description alone (hcm.describe_lock_timeout; attack 23f: it waited silently until the read
timeout blamed the network). Elsewhere (no budget pinned) the read waits as before, and a statement_timeout ending
it is one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time

from migrator import interrupt, output
from migrator.durations import pg_seconds
from migrator.errors import MigratorError

LOCK_NOT_AVAILABLE, QUERY_CANCELED = "55P03", "57014"
FIRST_DELAY, MAX_DELAY = 0.2, 5.0

# Who holds (or waits for) ACCESS EXCLUSIVE on a relation of this database: the only lock an ACCESS SHARE read
# waits behind (a queued one too). A prepared transaction has no session (pid 0 in pg_locks' view of it).
_HOLDERS = """
SELECT l.pid, l.relation::pg_catalog.regclass::text, l.granted, a.application_name, a.usename, a.state,
       pg_catalog.round(extract(epoch FROM pg_catalog.now() - coalesce(a.xact_start, a.backend_start))::numeric, 1)
FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
ORDER BY l.granted DESC, l.pid LIMIT 5
"""


_LIMITS = ("SELECT pg_catalog.current_setting('lock_timeout'), "
           "pg_catalog.current_setting('hcm.lock_retry_budget', true), "
           "pg_catalog.current_setting('hcm.describe_lock_timeout', true)")


def session_limits(cursor) -> tuple[str, float | None]:
    """(lock_timeout for the description's reads, the lock retry budget in seconds or None when none is pinned)."""
    cursor.execute(_LIMITS)
    return _limits(cursor.fetchone())


def _limits(row) -> tuple[str, float | None]:
    lock_timeout, budget, own = row
    if lock_timeout in ("0", "0ms") and own:  # a read-only command's connection: the description's own bound
        lock_timeout = own
    if not budget or lock_timeout in ("0", "0ms"):
        return "0", None  # not a migration session with limits: wait, bounded by statement_timeout
    return lock_timeout, pg_seconds(budget, "s")


class Waits:
    """The description's tries: started at the first lock wait, each later one after a jittered, doubling delay."""

    def __init__(self):
        self.started: float | None = None
        self.tries = 1

    def after(self, conn, exc) -> None:
        """A read that gave up on a lock (exc): one line naming the holder and the next try, then the wait; the
        budget spent (or none pinned), one error line. A statement_timeout: one error line."""
        code = getattr(exc, "pgcode", None)
        if code == QUERY_CANCELED and interrupt.requested() is not None:
            raise exc  # the runner's own stop (SIGTERM), told as such by the caller
        who = _holders(conn)
        if code == QUERY_CANCELED:
            raise MigratorError(f"reading the schema's catalog did not finish within statement_timeout "
                                f"(--statement-timeout); the sessions holding or waiting for ACCESS EXCLUSIVE: {who}; "
                                "end the one in the way, or run again once it has ended")
        lock_timeout, budget = _limits(_read(conn, _LIMITS)[0])
        seconds = pg_seconds(lock_timeout) if lock_timeout[-1:].isalpha() or lock_timeout.isdigit() else 0
        lock_timeout = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:g} s"
        self.started = self.started or time.monotonic()
        left = (budget or 0) - (time.monotonic() - self.started)
        if left <= 0:
            raise MigratorError(f"reading the schema's catalog: lock not granted within {lock_timeout} "
                                f"(lock_timeout), {self.tries} tries in {time.monotonic() - self.started:.1f} s (lock "
                                f"retry budget spent); blocked by {who}; end that session, or run again once it has "
                                "ended (--lock-retry-budget / DB_LOCK_RETRY_BUDGET sets how long to keep retrying)")
        delay = min(left, min(MAX_DELAY, FIRST_DELAY * 2 ** (self.tries - 1)) * random.uniform(0.5, 1))
        self.tries += 1
        output.progress(f"schema description: lock not granted within {lock_timeout} (lock_timeout) "
                        f"reading the catalog; blocked by {who}; try {self.tries} in {delay:.1f} s, {left:.0f} s of "
                        "the lock retry budget left", kind="lock_retry", file=None, line=None, next_try=self.tries,
                        delay_s=round(delay, 2), budget_left_s=round(left, 1), waiting_for="schema description")
        _sleep(delay)


def is_lock_wait(exc) -> bool:
    return getattr(exc, "pgcode", None) in (LOCK_NOT_AVAILABLE, QUERY_CANCELED)


def _read(conn, query: str) -> list:
    """A read that leaves an idle session idle (the next try then takes its own snapshot again)."""
    idle = conn.info.transaction_status == 0
    with conn.cursor() as cursor:
        cursor.execute(query)
        rows = cursor.fetchall()
    if idle and not conn.autocommit:
        conn.rollback()
    return rows


def _holders(conn) -> str:
    """The sessions holding or queued for ACCESS EXCLUSIVE, for a person: pid, the table, application, user, state."""
    import psycopg2

    try:
        rows = _read(conn, _HOLDERS)
    except psycopg2.Error:  # the wait is what to tell; who caused it is a bonus
        return "a session not seen"
    if not rows:
        return "a session not seen in time"
    return "; ".join(
        (f"pid {pid} ({'holds' if granted else 'waits for'} ACCESS EXCLUSIVE on {output.visible(table)}; application_name "
         f"{output.quoted(app) if app else '(none)'}, user {output.role(user)}, {state} for {age} s): to end it: SELECT pg_terminate_backend({pid})")
        if pid else f"a prepared transaction holding ACCESS EXCLUSIVE on {output.visible(table)} (pg_prepared_xacts: COMMIT PREPARED "
                    "or ROLLBACK PREPARED its gid)"
        for pid, table, granted, app, user, state, age in rows)


def _sleep(seconds: float) -> None:
    """SIGTERM during the wait stops at once, as the runner's other lock retries do."""
    end = time.monotonic() + seconds
    while (remaining := end - time.monotonic()) > 0:
        _stop_if_asked()
        time.sleep(min(0.05, remaining))


@contextlib.contextmanager
def stoppable():
    """Around the description's reads and waits: SIGTERM raised as Interrupted where a run's guard is active;
    else recorded, and the reads stop at the next wait or at their end with one error line, exit 128 + the signal,
    the migration lock released on the way out (the default action exited silently and left it)."""
    global _own
    if interrupt.guarded():
        yield
        return
    with interrupt.guard() as guard, guard.deferred():
        _own = True
        try:
            yield
            _stop_if_asked()
        finally:
            _own = False


_own = False  # the SIGTERM guard is the description's own (no run's is active)


def _stop_if_asked() -> None:
    signum = interrupt.requested()
    if signum is not None and _own:
        raise MigratorError(f"interrupted by {signal.Signals(signum).name} while reading the schema's catalog (its "
                            "lock waits retried): stopped there, nothing more was run; run the command again",
                            128 + signum)
    if signum is not None:
        raise interrupt.Interrupted(signum)
