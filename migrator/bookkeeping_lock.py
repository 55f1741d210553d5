"""The advisory lock keys of the runner, and the schema's shared bookkeeping lock.

A leaf (it imports no other part of the runner but errors, output and targets' where_name): trust.py takes the
bookkeeping lock while it creates a table, and pg_lock (the migration lock) builds its keys here.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from typing import Iterator

from migrator import output
from migrator.errors import LOCKED, MigratorError
from migrator.output import quoted, role
from migrator.targets import where_name

# One advisory lock key per database for this project ("hcmdbmig" as a 64-bit integer).
LOCK_KEY = int.from_bytes(b"hcmdbmig", "big") & 0x7FFF_FFFF_FFFF_FFFF
POLL_SECONDS = 0.2


def lock_key(schema: str | None, history: str | None = None) -> int:
    """One key per history. The runner's own (NNNN) history: one per bookkeeping schema, public's (a plain run's
    usual one, and SCHEMA_NAME=public) the database's historic key, so older runners still exclude this one; each
    tenant schema has its own, so tenants migrate in parallel. A Flyway folder's `history` (SCHEMA_TABLE): one
    per table, so services sharing a schema migrate at once (one service run twice still waits for itself)."""
    if history:
        return _hashed(f"hcmdbmig:{schema or 'public'}:{history}")
    if not schema or schema == "public":
        return LOCK_KEY
    return _hashed(f"hcmdbmig:{schema}")


def _hashed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


# How long a run waits for its schema's shared bookkeeping lock: the run's --lock-timeout (held() sets it), never
# the DDL lock_timeout its session has (300 ms): another service's run holds it for a moment, and a wait cut short
# after a migration committed would leave that service's own change as drift.
BOOKKEEPING_WAIT = {"seconds": 10.0}
AFTER_COMMIT_WAIT = 60.0  # (at least, for the record of a change already committed: a run again finds it drift)
# (objsubid 1: a lock on one bigint key, never the two-int4 lock whose halves happen to match it)
_HOLDER = ("SELECT a.pid, a.usename, a.application_name, "
           "pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) a.backend_start) "
           "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid "
           "WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted AND l.objsubid OPERATOR(pg_catalog.=) 1 "
           "AND l.classid OPERATOR(pg_catalog.=) %s::pg_catalog.oid "
           "AND l.objid OPERATOR(pg_catalog.=) %s::pg_catalog.oid "
           "AND l.database OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database "
           "WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) ORDER BY a.pid")


# A lock a PREPAREd transaction holds has no session (pg_locks pid NULL): it outlives disconnects and restarts until
# COMMIT/ROLLBACK PREPARED. Its transaction is found by the transactionid lock it holds under the same
# virtualtransaction (LEFT JOINs: a row, gid NULL, when it cannot be told).
_PREPARED = ("SELECT p.gid, p.owner, p.prepared FROM pg_catalog.pg_locks l "
             "LEFT JOIN pg_catalog.pg_locks x ON x.virtualtransaction OPERATOR(pg_catalog.=) l.virtualtransaction "
             "AND x.locktype OPERATOR(pg_catalog.=) 'transactionid' AND x.pid IS NULL "
             "LEFT JOIN pg_catalog.pg_prepared_xacts p ON p.transaction OPERATOR(pg_catalog.=) x.transactionid "
             "WHERE l.pid IS NULL AND " + _HOLDER.split(" WHERE ", 1)[1].removesuffix(" ORDER BY a.pid") + " LIMIT 1")
SHOWN = 3  # holders named in a line; the rest counted


def prepared(cursor, key: int) -> str | None:
    """The prepared transaction holding advisory lock `key`, with how to end it; None when none does."""
    cursor.execute(_PREPARED, (key >> 32, key & 0xFFFF_FFFF))
    row = cursor.fetchone()
    if row is None:
        return None
    gid, owner, at = row
    if gid is None:
        return ("a prepared transaction (no session: it holds the lock across disconnects and restarts; "
                "pg_prepared_xacts names it: ROLLBACK PREPARED it, as its owner or a superuser)")
    literal = "'" + gid.replace("'", "''") + "'"
    end = f"ROLLBACK PREPARED {literal}" if literal.isascii() and literal.isprintable() else \
        "ROLLBACK PREPARED with its gid (pg_prepared_xacts)"
    return (f"the prepared transaction {quoted(gid)} (owner {role(owner)}, prepared {at:%Y-%m-%d %H:%M:%S %Z}; no "
            f"session: it holds the lock across disconnects and restarts until `{end}`, run as its owner or a "
            "superuser)")


def bookkeeping_key(schema: str) -> int:
    return lock_key(f":bookkeeping {schema}")  # (a schema cannot be named so: names are plain identifiers)


def holder(cursor, key: int) -> str | None:
    """Who holds advisory lock `key` as the server knows it (pid, user), its application_name (its own to choose)
    quoted and marked unverified, and a prepared transaction holding it (prepared): all of them in one line (a
    shared lock has many holders; named one per run, ending the one named left the next); None when none does."""
    cursor.execute(_HOLDER, (key >> 32, key & 0xFFFF_FFFF))
    named = []
    for pid, user, app, age in cursor.fetchall():
        said = f", application_name {quoted(app)} unverified" if app else ", no application_name"
        since = f", connected {age:.0f} s ago" if age is not None else ""
        named.append(f"server pid {pid} (user {role(user)}{said}{since})")
    stuck = prepared(cursor, key)
    named += [stuck] if stuck else []
    more = len(named) - SHOWN
    return " and ".join(named[:SHOWN]) + (f" and {more} more (pg_locks lists them)" if more > 0 else "") or None


def bookkeeping_wait(seconds: float) -> None:
    """The run's --lock-timeout, for its waits on the bookkeeping lock (connecting creates the tables: set first)."""
    BOOKKEEPING_WAIT["seconds"] = seconds


@contextmanager
def creating_bookkeeping(connection, schema: str, wait: float | None = None, setup: bool = False) -> Iterator[None]:
    """While a run creates, upgrades or rewrites its schema's shared bookkeeping (yoyo's tables, the checksum and
    snapshot tables): histories sharing a schema (services at once, each under its own lock) would race on its
    CREATE TABLEs and lose each other's snapshot updates. Held briefly: to the end of the transaction when one is
    open (so a CREATE is committed before another session looks), else for the block. Polled (a try never meets
    the session's lock_timeout) for `wait` seconds, else the run's --lock-timeout. `setup`: the run's first set-up,
    before any migration: the connection lost meanwhile (a failover) is said as such, in one line."""
    import psycopg2

    key = bookkeeping_key(schema)
    info = connection.info
    where = where_name(info.host, info.port, info.dbname)
    in_transaction = bool(connection.get_transaction_status())  # (yoyo's BEGIN on autocommit too)
    try:
        with connection.cursor() as cursor:
            _take(cursor, schema, key, "xact_" if in_transaction else "", wait)
            if in_transaction:
                yield
                return
            try:
                yield
            finally:
                if not connection.closed:  # (a lost session's locks went with it: its own error is the one to tell)
                    on_own_session(connection, cursor, "pg_catalog.pg_advisory_unlock(%(key)s)", key)
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        if not setup or not connection.closed:
            raise
        raise lost_before_migrations(where, exc, "while the run set up its bookkeeping, before any migration") from exc


def lost_before_migrations(where: str, exc: BaseException, when: str) -> MigratorError:
    """The run's connection lost (a failover) `when`, before any migration began: nothing was applied. Said with
    the server's own words (the first lost-connection error: a later "cursor already closed" is its echo)."""
    return MigratorError(f"the connection to {where} was lost {when}: nothing was applied; run again ({_why(exc)})")


def lost_after_migrations(where: str, exc: BaseException) -> MigratorError:
    """The run's connection lost after its migrations began, outside any of them (as it recorded the schema they
    changed): each one applied before is committed and marked; the rest were not run."""
    return MigratorError(f"the connection to {where} was lost after this run's migrations began, outside any of them "
                         f"(as the run recorded what they changed): what `status` lists as applied is committed; run "
                         f"again for the rest ({_why(exc)})")


def _why(exc: BaseException) -> str:
    import psycopg2

    cause = exc
    while cause.__context__ is not None and not isinstance(cause, psycopg2.OperationalError):
        cause = cause.__context__
    cause = cause if isinstance(cause, psycopg2.Error) else exc
    return (output.scrub(str(cause)).strip().splitlines() or [type(cause).__name__])[0]


# Whether a session waits for a lock that `pid` (a migration's session) holds: the application queued behind it.
_QUEUED = ("SELECT EXISTS (SELECT FROM pg_catalog.pg_locks w WHERE NOT w.granted "
           "AND %s OPERATOR(pg_catalog.=) ANY (pg_catalog.pg_blocking_pids(w.pid)))")


def _take(cursor, schema: str, key: int, kind: str, wait: float | None, busy: str | None = None,
          queue: tuple[int, float] | None = None) -> None:
    """Polled (a try never meets the session's lock_timeout) for `wait` seconds, else the run's --lock-timeout;
    then one line naming the holder (`busy`: what that means for the run, else "run again"). `queue`: (pid,
    seconds): given up sooner, that long after a session was first seen queued behind the locks of session `pid`."""
    call = f"pg_catalog.pg_try_advisory_{kind}lock(%(key)s)"
    seconds = BOOKKEEPING_WAIT["seconds"] if wait is None else wait
    deadline = time.monotonic() + seconds
    queued_since = None
    while True:
        if on_own_session(cursor.connection, cursor, call, key):
            return
        now = time.monotonic()
        if queue is not None and queued_since is None:  # (never reset: an application whose queries time out
            # sooner than queue[1] and retry is never queued that long without a break, yet stalls all the while)
            cursor.execute(_QUEUED, (queue[0],))
            queued_since = now if cursor.fetchone()[0] else None
        behind = queued_since is not None and now - queued_since >= queue[1]
        if now >= deadline or behind:
            who = holder(cursor, key) or "released meanwhile"
            lock = f"the shared bookkeeping lock of schema {schema} (advisory lock {key}, held by {who})"
            within = (f"while sessions queued {queue[1]:g} s behind the file's locks" if behind
                      else f"within {seconds:g} s")
            raise BookkeepingBusy(f"{lock} was not free {within}: "
                                  + (busy or "a runner holds it for a moment while it records (held longer, it "
                                     "may not be a runner's: end that session); run again, or raise --lock-timeout"),
                                  LOCKED, lock=lock)
        time.sleep(POLL_SECONDS / 4)


TAKE, RELEASE = "pg_catalog.pg_try_advisory_lock(%(key)s)", "pg_catalog.pg_advisory_unlock(%(key)s)"
# Whether this server session holds advisory lock %(key)s (whoever of its clients took it).
_OWN_HOLD = ("EXISTS (SELECT FROM pg_catalog.pg_locks l WHERE l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() "
             "AND l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.objsubid OPERATOR(pg_catalog.=) 1 "
             "AND l.classid OPERATOR(pg_catalog.=) %(high)s::pg_catalog.oid "
             "AND l.objid OPERATOR(pg_catalog.=) %(low)s::pg_catalog.oid)")


def on_own_session(connection, cursor, call: str, key: int, where: str | None = None, once: bool = False):
    """`call` (of advisory lock `key`, a session-level lock's take or release) on `connection`'s own server session
    only; elsewhere (a transaction-mode pool) nothing, and the run refuses (server_session.here): such a lock is
    re-entrant, so another client's run's would be taken again, or released. `once` (the migration lock's take):
    refused too where the session already holds it and this connection did not take it (a pool sharing one server
    session: server_session.shared), in the same statement as the take. Takes and releases are recorded, so that
    a refusal lets the locks go (server_session.holds)."""
    from migrator import server_session

    here = server_session.here(connection)
    if once and not server_session.holding(connection, key):
        cursor.execute(f"SELECT CASE WHEN {here} IS NOT TRUE THEN NULL WHEN {_OWN_HOLD} THEN -1 WHEN {call} THEN 1 "
                       "ELSE 0 END", {"key": key, "high": key >> 32, "low": key & 0xFFFF_FFFF})
    else:
        cursor.execute(f"SELECT CASE WHEN {here} THEN {call} END", {"key": key})
    done = cursor.fetchone()[0]
    if done is None:
        raise server_session.elsewhere(connection, where)
    if done == -1:
        raise server_session.shared(connection, where)
    if done and call in (TAKE, RELEASE):
        server_session.holds(connection, key, call == TAKE)
    return bool(done) if once else done


class BookkeepingBusy(MigratorError):
    """The bookkeeping lock was not free: nothing was committed by the step that asked for it. `lock`: which lock,
    and who held it."""

    def __init__(self, message: str, code: int, lock: str = ""):
        super().__init__(message, code)
        self.lock = lock


class Recording:
    """A run that records what it commits (commands/deploy.advancing_schema): the schema's bookkeeping lock, taken
    on the run's own session before its first change can commit (inside a migration's transaction, before its
    COMMIT; before a non-transactional file's first statement) and held until the record is written. Another
    session holding that lock (any role that can connect may) then stops the run before anything commits, so the
    record is never left behind a committed change (which every later run would call drift)."""

    def __init__(self, connection, schema: str):
        self.connection, self.schema, self.held, self.refused = connection, schema, False, False

    def before_commit(self, busy: str, queue: tuple[int, float] | None = None) -> None:
        """Taken (session-level, on the run's own session) unless held, polled for the run's --lock-timeout (or
        until sessions queued behind the migration's locks, `queue`: see _take); `busy`: what a refusal leaves."""
        if not self.held:
            try:
                with self.connection.cursor() as cursor:
                    _take(cursor, self.schema, bookkeeping_key(self.schema), "", None, busy, queue)
            except BookkeepingBusy:
                self.refused = True
                raise
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            if self.connection.closed:  # the session is gone, and its session-level lock with it
                return
            with self.connection.cursor() as cursor:
                on_own_session(self.connection, cursor, "pg_catalog.pg_advisory_unlock(%(key)s)",
                               bookkeeping_key(self.schema))
