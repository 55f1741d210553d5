"""The migration lock that survives crashes.

yoyo's lock is a row in `yoyo_lock`: a runner killed with SIGKILL (an evicted pod) leaves it behind
and every later run waits, then dies, until someone breaks it. The runner first takes a
PostgreSQL session-level advisory lock, which the server releases by itself when the holder's
connection dies. Holding it, a yoyo lock row is a dead runner's unless a session of that runner
is still connected (one that took another key, e.g. an older version): a dead one's row is cleared,
a live one's waited for. yoyo's own lock is then taken as usual (so a bare `yoyo` CLI still sees it).
SIGTERM ends a wait at once (LockWaitInterrupted): nothing was run.
"""

from __future__ import annotations

import os
import re
import signal
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from migrator import interrupt
from migrator.errors import LOCKED, MigratorError
from migrator.targets import PostgresTarget
from migrator.bookkeeping_lock import (AFTER_COMMIT_WAIT, BOOKKEEPING_WAIT, LOCK_KEY, POLL_SECONDS,  # noqa: F401
                                      RELEASE, TAKE, BookkeepingBusy, Recording, _hashed, bookkeeping_wait,
                                      creating_bookkeeping, lock_key, on_own_session, prepared)
from migrator.lock_row import (CREATE_HISTORY_LOCKS, HISTORY_LOCKS, PROOF_COLUMN, SESSION_VALUES, alive,  # noqa: F401
                               holder, live_row, lock_slot, lock_table, proof_column, row_of, run_key)

_proof_column = proof_column  # (its older name)


def place(backend, target: PostgresTarget) -> str:
    """Where the lock is, in words: the server (and schema), and a Flyway folder's history."""
    return target.where + (f" for the history {backend.bookkeeping_schema}.{target.history}" if target.history else "")


# DDL every history shares: PostgreSQL does not serialise two sessions' CREATE EXTENSION IF NOT EXISTS (the second
# fails on pg_extension's unique index), and tenants run the same file at the same moment (--parallel, several
# runners, an Indexed Job). (A tenant schema cannot be named so: names are plain identifiers.)
SHARED_DDL_KEY = lock_key(":database-wide ddl")
_SHARED_DDL = re.compile(r"\bcreate\s+extension\b", re.IGNORECASE)


def hold_for_shared_ddl(connection, statements, transactional: bool) -> None:
    """In a migration's session, before its statements: when the file creates an extension, wait for any other
    session doing so (to the end of this file's transaction, or session). SIGTERM ends the wait: nothing ran."""
    if not any(_SHARED_DDL.search(statement.text) for statement in statements):
        return
    # (in the migration's session, whose search_path is the migration's: qualified)
    call = f"pg_catalog.pg_try_advisory_{'xact_' if transactional else ''}lock(%(key)s)"
    with connection.cursor() as cursor:
        while True:
            got = on_own_session(connection, cursor, call, SHARED_DDL_KEY)
            if got:
                return
            signum = interrupt.requested()
            if signum is not None:
                stopped = interrupt.Interrupted(signum)
                stopped.before_block = True  # no statement of the file started
                raise stopped
            time.sleep(POLL_SECONDS / 4)


class LockWaitInterrupted(MigratorError):
    """SIGTERM came while the runner waited for the lock: nothing of the command ran."""


# Flyway 10's lock for a history table (PostgreSQLAdvisoryLockTemplate): this number ("Flyway" in ASCII) plus the
# Java hashCode of the table as Flyway quotes it ("schema"."table"), a session or transaction advisory lock.
FLYWAY_LOCK_BASE = 77431708279161


def flyway_lock_key(schema: str, table: str) -> int:
    """The advisory lock Flyway 10 takes while it migrates into `schema`.`table`."""
    text = '"{}"."{}"'.format(schema, table)
    units = text.encode("utf-16-be")
    value = 0
    for i in range(0, len(units), 2):  # String.hashCode: s[0]*31^(n-1) + ... over UTF-16 units, in an int
        value = (value * 31 + int.from_bytes(units[i:i + 2], "big")) & 0xFFFF_FFFF
    return FLYWAY_LOCK_BASE + (value - (1 << 32) if value >= 1 << 31 else value)


@contextmanager
def held(backend, target: PostgresTarget, timeout: float, notify: Callable[[str], None]) -> Iterator[None]:
    deadline = time.monotonic() + timeout
    bookkeeping_wait(timeout)
    key = run_key(backend, target)
    _wait(backend, target, key, deadline, lambda: _held_by(backend, target, key, timeout))
    # Flyway's own lock on the history SCHEMA_TABLE names, held for the whole run: a Flyway migrate on the same
    # history (an init container, a developer) waits for this run, or this run for it; the history is read after.
    table = getattr(backend, "flyway_table", None)
    flyway_key = flyway_lock_key(backend.bookkeeping_schema, table) if table else None
    try:
        if flyway_key is not None:
            _wait(backend, target, flyway_key, deadline, lambda: (
                f"Flyway (or another runner) holds Flyway's lock on the history {backend.bookkeeping_schema}.{table} "
                f"on {target.where} (advisory lock {flyway_key}, {holder(backend, flyway_key)}; waited {timeout:g} "
                "s); wait for that Flyway migrate to finish and run again, or raise --lock-timeout"))
        try:
            with _interruptible():
                _clear_dead_runners_row(backend, target, deadline, notify)
            with _row(backend, target, deadline):
                yield
        finally:
            if flyway_key is not None:
                _unless_lost(backend, lambda: _unlock(backend, target, flyway_key))
    finally:  # (a lost session's advisory locks went with it)
        _unless_lost(backend, lambda: _unlock(backend, target, key))


def _held_by(backend, target: PostgresTarget, key: int, timeout: float) -> str:
    """The line of a run that found the migration lock held: "another runner" only when proven (holder)."""
    who = holder(backend, key)
    where = f"the migration lock on {place(backend, target)} ({who}; waited {timeout:g} s)"
    if who.startswith("held by host "):
        return f"another runner holds {where}; wait for it to finish and run again, or raise --lock-timeout"
    if who.startswith(("held by the prepared transaction", "held by a prepared transaction")):
        return f"a prepared transaction, not a runner, holds {where}; end it as said, then run again"
    return (f"a session holds {where}; wait for it to finish and run again (if it is not a runner's, end it), or "
            "raise --lock-timeout")


def _wait(backend, target: PostgresTarget, key: int, deadline: float, message: Callable[[], str]) -> None:
    with _interruptible():
        while not _try(backend, target, key):
            _stop_if_interrupted(target, lambda: holder(backend, key))
            if time.monotonic() >= deadline:
                raise MigratorError(message(), LOCKED)
            time.sleep(POLL_SECONDS)


# The INSERT's errors that cannot mean another runner's row: the session may not write (a reader endpoint, a
# read-only default), said at once instead of waiting the lock timeout out and calling the lock held.
_NOT_HELD = ("25006",)


@contextmanager
def _row(backend, target: PostgresTarget, deadline: float) -> Iterator[None]:
    """yoyo's lock row, in the history's slot (lock_slot), held while the run is; yoyo's own lock() calls within
    (apply, rollback, mark) find it held. Polled until the deadline, as yoyo's lock(): an older runner's may be
    there."""
    slot, table, pid = lock_slot(target.history), lock_table(backend, target.history, create=True), os.getpid()
    # (the writing session's server pid and backend_start: what proves this run holds the advisory lock, lock_row)
    columns, values = (", backend_pid, backend_start", f", {SESSION_VALUES}") if proof_column(backend, table) \
        else ("", "")
    while True:
        try:  # (a write: a CREATE TRIGGER still open on its tables is waited out and refused first)
            _guarded(backend, target, f"INSERT INTO {table} (locked, ctime, pid{columns}) VALUES (%(slot)s, "
                     f"pg_catalog.timezone('UTC', pg_catalog.clock_timestamp()), %(pid)s{values})",
                     {"slot": slot, "pid": pid})
            break
        except backend.DatabaseError as exc:
            if getattr(exc, "pgcode", None) in _NOT_HELD:
                from migrator import server_session

                raise server_session.read_only(target.where) from None
            if time.monotonic() >= deadline:
                raise MigratorError(f"the migration lock on {place(backend, target)} is held: {table} has its row; "
                                    "wait for that runner to finish and run again, or raise --lock-timeout", LOCKED)
            time.sleep(POLL_SECONDS)
    backend._is_locked = True  # (yoyo's flag: its lock() is then a no-op)
    from migrator import server_session  # (a refusal deletes it: server_session._refused)

    server_session.wrote_row(backend.connection, f"DELETE FROM {table} WHERE locked "
                           f"OPERATOR(pg_catalog.=) {slot} AND pid OPERATOR(pg_catalog.=) {pid}")
    try:
        yield
    finally:
        backend._is_locked = False
        _unless_lost(backend, lambda: _delete_row(backend, table, slot, pid))


def _delete_row(backend, table: str, slot, pid: int) -> None:
    from migrator import server_session

    with backend.transaction():
        backend.execute(f"DELETE FROM {table} WHERE locked = :slot AND pid = :pid", {"slot": slot, "pid": pid})
    server_session.wrote_row(backend.connection, None)


def _unless_lost(backend, cleanup: Callable[[], None]) -> None:
    """A cleanup on the run's session, left out when that session is lost (a failover, pg_terminate_backend): what
    it held went with it, and the next run clears a row no session holds. Lost is told by the error too: a
    connection the server closed while idle still reads as open until used, and the cleanup's error would then
    replace the run's own line (what was applied, run again)."""
    if backend.connection.closed:
        return
    try:
        cleanup()
    except Exception as exc:
        if not _session_lost(backend, exc):
            raise


def _session_lost(backend, exc: BaseException) -> bool:
    import psycopg2

    return bool(backend.connection.closed) or (isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
                                               and getattr(exc, "pgcode", None) is None)


def _try(backend, target: PostgresTarget, key: int) -> bool:
    """Taken once per server session: one that already holds it for another client (a pool sharing it) refuses."""
    return _here(backend, target, TAKE, key, once=True)


def _unlock(backend, target: PostgresTarget, key: int) -> None:
    _here(backend, target, RELEASE, key)


def _here(backend, target: PostgresTarget, call: str, key: int, once: bool = False):
    with backend.connection.cursor() as cursor:
        return on_own_session(backend.connection, cursor, call, key, target.where, once)


@contextmanager
def _interruptible() -> Iterator[None]:
    """While waiting: SIGTERM is recorded (the wait's poll ends it), never raised in the middle of a query."""
    with interrupt.guard() as guard, guard.deferred():
        yield


def _stop_if_interrupted(target: PostgresTarget, who: Callable[[], str]) -> None:
    signum = interrupt.requested()
    if signum is not None:
        raise LockWaitInterrupted(
            f"interrupted by {signal.Signals(signum).name} while waiting for the migration lock on {target.where} "
            f"({who()}): nothing was run; run the command again", 128 + signum)


def break_dead(backend, target: PostgresTarget) -> bool:
    """`sql break-lock`: remove the yoyo lock row a dead runner left (True), never a live runner's: the
    advisory lock taken by another session, or a row whose runner is still connected, is refused."""
    key = run_key(backend, target)
    advice = "break-lock removes only a dead runner's lock: wait for it to finish, or end that runner first"
    if not _try(backend, target, key):
        who = holder(backend, key)
        if who.startswith("held by host "):
            raise MigratorError(f"a live runner holds the migration lock on {place(backend, target)} ({who}); "
                                f"{advice}", LOCKED)
        row = row_of(backend, target)  # (a dead runner's row is dead whoever holds the advisory lock)
        removed = row is not None and not alive(backend, row, target)
        if removed:
            _break(backend, target)
        raise MigratorError(f"a session that no runner's lock row proves holds the migration lock on "
                            f"{place(backend, target)} ({who}){'; removed the lock row of a dead runner' * removed}: "
                            "end that session if it is not a runner's (pg_terminate_backend), and run again", LOCKED)
    try:
        row = row_of(backend, target)
        if row and alive(backend, row, target):
            raise MigratorError(f"the migration lock on {place(backend, target)} is held by a live runner (pid "
                                f"{row[0]}, since {row[1]:%Y-%m-%d %H:%M:%S} UTC, still connected); {advice}", LOCKED)
        if row:
            _break(backend, target)
        return row is not None
    finally:
        _unlock(backend, target, key)


def _break(backend, target: PostgresTarget) -> None:
    """A dead runner's row deleted: a write, so the first-write guard first, in its statement (see _guarded)."""
    _guarded(backend, target, f"DELETE FROM {lock_table(backend, target.history)} WHERE locked "
             "OPERATOR(pg_catalog.=) %(slot)s", {"slot": lock_slot(target.history)})


def _guarded(backend, target: PostgresTarget, statement: str, params: dict) -> None:
    """`statement` (%(name)s parameters) in one transaction behind the first-write guard (postgres/first_write.py):
    a CREATE TRIGGER still open on the bookkeeping is waited out and refused before anything fires (every write of a
    run before its lock row's: the dead row's DELETE, break-lock's)."""
    first_write = backend.first_write()
    guard, extra = first_write.guard(backend.connection, backend.bookkeeping_schema)
    try:
        with backend.transaction(), backend.connection.cursor() as cursor:
            cursor.execute(guard + statement, {**extra, **params})
    except backend.DatabaseError as exc:
        first_write.refuse(backend, exc, target.where)
        raise


def _clear_dead_runners_row(backend, target: PostgresTarget, deadline: float, notify: Callable[[str], None]) -> None:
    while True:
        row = row_of(backend, target)
        if not row:
            return
        if not alive(backend, row, target):
            break
        if time.monotonic() >= deadline:
            raise MigratorError(
                f"the migration lock on {place(backend, target)} is held by a live runner (pid {row[0]}, since "
                f"{row[1]:%Y-%m-%d %H:%M:%S} UTC) that does not share this runner's lock key (an older version?); "
                "wait for it to finish and run again, or raise --lock-timeout", LOCKED)
        _stop_if_interrupted(target, lambda: f"held by a live runner, pid {row[0]}")
        time.sleep(POLL_SECONDS)
    _break(backend, target)
    notify(f"note: cleared the migration lock left by a runner that died (pid {row[0]}, since {row[1]:%Y-%m-%d %H:%M:%S} UTC)")


