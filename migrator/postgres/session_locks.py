"""A session-level advisory lock a migration file takes (pg_advisory_lock: "keep the nightly job out meanwhile"): it
outlives its statement, the try's ROLLBACK and each COMMIT, so an application session waiting on it would wait
through the lock retries' backoff and their tries too (attack24s 5; attack24u 1, 3, 5: stalls of 7 s to 5 min).

After a failed try the runner asks whether the session still holds one (one query, the try's transaction rolled
back first, as a retry would). If so the try is not retried, nor slept on: the migration's session is closed at
once, which releases the lock (PostgreSQL ends its locks with its session), so the application goes on now rather
than when the run ends; the one line says so. The session-level locks the run itself takes there (CREATE
EXTENSION's, pg_lock.hold_for_shared_ddl) are not the file's: left out.
"""

from __future__ import annotations

import re
import time
import weakref

from migrator import lazy_re
from migrator.postgres import failures, session_options
from migrator.postgres.transaction_status import IDLE

# Granted advisory locks of this session (between transactions: each one session-level), the run's own keys aside.
_HELD = ("SELECT EXISTS (SELECT FROM pg_catalog.pg_locks WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() "
         "AND locktype OPERATOR(pg_catalog.=) 'advisory' AND granted AND NOT (objsubid OPERATOR(pg_catalog.=) 1 AND "
         "(classid::pg_catalog.int8 OPERATOR(pg_catalog.<<) 32 OPERATOR(pg_catalog.|) objid::pg_catalog.int8) "
         "OPERATOR(pg_catalog.=) ANY (%s::pg_catalog.int8[])))")
_TAKES = lazy_re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE)
_ROUTINE = lazy_re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/)*create\s+(?:or\s+replace\s+)?(?:function|procedure)\b",
                           re.IGNORECASE | re.DOTALL)


def held(connection) -> bool:
    """The session holds a session-level advisory lock the run did not take itself (asked on the migration connection;
    a transaction the query opens is rolled back; a session gone answers no: its statement's own failure says so)."""
    import psycopg2

    from migrator import server_session

    try:
        with connection.cursor() as cursor:
            cursor.execute(_HELD, (server_session.taken(connection),))
            found = bool(cursor.fetchone()[0])
        if connection.info.transaction_status != IDLE:
            connection.rollback()
    except psycopg2.Error:
        return False
    return found


def after_failed_try(connection, transactional: bool) -> bool:
    """After a failed try, before any backoff: whether the session still holds such a lock, the try's transaction
    (aborted, or begun again empty after a deadlock) rolled back first; a transactional file's begun again when none
    is held (the retry's ROLLBACK and BEGIN expect one open, as deadlocks.other_sessions leaves it)."""
    with connection.cursor() as cursor:
        if connection.info.transaction_status != IDLE:
            cursor.execute("ROLLBACK")
        found = held(connection)
        if transactional and not found:
            cursor.execute("BEGIN")
    return found


# A migration connection's idle_session_timeout while it holds such a lock between autocommit statements: (ms, when
# its last statement ended). Every session connects with 0 (session_options.NO_IDLE_TIMEOUTS): idle there, a runner
# frozen (SIGSTOP, a VM pause) would keep the application waiting on the lock for the whole freeze (attack24w 1).
IDLE_SET: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def idle_bound(connection, probe, budget) -> None:
    """After a non-transactional file's statement that left its session idle: while the probe knows the session holds
    a session-level lock, its idle_session_timeout is a transactional try's idle bound (the lock bound plus the
    margin: the server ends a frozen runner's session, releasing the lock), its idle_in_transaction_session_timeout
    too; both as connected again once none is held. PostgreSQL 14+ (an older server has no idle_session_timeout).
    Plain SETs: one round trip when it changes, none otherwise."""
    held, bound = probe.session_locked(), IDLE_SET.get(connection)
    if held and bound is None and connection.server_version >= 140000:
        ms = session_options.idle_in_try_ms(budget.per_try_ms + budget.floor_ms)
        with connection.cursor() as cursor:
            # (and idle in a transaction: a backfill's checked batch, BEGIN ... COMMIT, between its round trips)
            cursor.execute(f"SET idle_session_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}")
        bound = IDLE_SET[connection] = [ms, 0.0]
    elif not held and bound is not None:
        with connection.cursor() as cursor:
            cursor.execute("RESET idle_session_timeout; RESET idle_in_transaction_session_timeout")  # (connect's)
        bound = IDLE_SET.pop(connection, None) and None
    if bound is not None:
        bound[1] = time.monotonic()


def mark_idle_ended(lost, connection, probe) -> None:
    """A non-transactional file's session lost while idle_bound's bound was set: marked (ms, seconds frozen) when the
    runner was frozen past it (its clock's gap since the last statement ended, or the probe thread's: it ticks every
    10 ms, so it is given two ticks to see a freeze that came as a statement ended), so that the line says the server
    ended the idle session and the statement did not run."""
    bound = IDLE_SET.get(connection)
    if bound is None:
        return
    time.sleep(0.03)
    thawed = probe.thawed if probe is not None else None
    gap = max(time.monotonic() - bound[1], thawed[1] if thawed and time.monotonic() - thawed[0] < 1 else 0)
    if gap * 1000 > bound[0]:
        lost.idle_ended = (bound[0], gap)


def end(connection) -> None:
    """The migration's session closed now: its locks go with it, and the application waiting on them goes on."""
    failures.close(connection)


def kept(statements, index: int) -> str:
    """Why the try that failed at statement `index` is not retried (after `not retried: `)."""
    return (f"{_holds(statements, index)} (pg_advisory_lock outlives its try and the try's ROLLBACK), so a retry would "
            f"keep the application waiting on it; {_CLOSED}; take it with pg_advisory_xact_lock in the transaction "
            "that needs it, or release it before the long statement")


def closed_if_held(exc, connection, statements) -> None:
    """A try the probe ended for what it held (not retried: lock_waiters.held_too_long's line): a session-level lock
    still held would keep the application waiting until the run ends, so the session is closed at once, and said."""
    if connection.closed:
        return
    try:
        found = after_failed_try(connection, False)
    except Exception:  # (a session lost meanwhile: nothing of it holds anything)
        return
    if found:
        end(connection)
        exc.todo += f"; {_holds(statements, exc.index)}: {_CLOSED}"


_CLOSED = "the runner closed the migration's session at once, which released it"


def _holds(statements, index: int) -> str:
    """The line of the file that took the lock (not a function's body it is written in; none found: taken through a
    function a statement up to `index` calls)."""
    taken = next((s for s in statements[:index + 1] if _TAKES.search(s.text) and not _ROUTINE.match(s.text)), None)
    if taken is not None:
        return f"the session still holds the advisory lock the file took at line {taken.line}"
    return (f"the session still holds an advisory lock the file took (by line {statements[index].line}, through a "
            "function it calls)")
