"""How the runner's PostgreSQL connections fail: in one line naming the server, never a hang.

connection_error turns a driver's connect error into what to check; guard_reads bounds every statement's
wait for an answer on a connection (a proxy gone silent after login otherwise hangs libpq for ever).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

from migrator import durations, output
from migrator.errors import MigratorError
from migrator.postgres import watchdog
from migrator.targets import PostgresTarget

# The run's own URL carries its read timeout to Backend.connect (popped there, never sent to libpq).
READ_TIMEOUT_ARG = "hcm_read_timeout"


def guard_reads(connection, where: str, seconds: float, on_silent: Callable[[], str] | None = None) -> None:
    """Every statement on `connection` gets an answer within `seconds`, or fails in one line naming the server.

    libpq waits for an answer for ever, and neither keepalives nor tcp_user_timeout help when a proxy
    between goes silent after login (its kernel still acknowledges everything). The run's own connection
    (bookkeeping and catalog reads, in migrate too); a migration's session has guard_session's bound.
    `on_silent()`: what became of the session on the server once cut off (the run's own: cancel.own_session_ender)."""
    import psycopg2.extensions

    class GuardedCursor(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):
            with answered_within(connection, seconds) as state:
                try:
                    return super().execute(query, vars)
                except psycopg2.Error as exc:
                    if state["fired"]:
                        ended = f"; {said}" if on_silent and (said := on_silent()) else ""
                        raise MigratorError(f"PostgreSQL at {where}: no answer within {seconds:g} s (the server, or a "
                                            f"proxy or network between, went silent){ended}; check the network path, "
                                            "or raise DB_READ_TIMEOUT for slow catalog reads") from exc
                    raise

    connection.cursor_factory = GuardedCursor


@contextmanager
def answered_within(connection, seconds: float | None) -> Iterator[dict]:
    """The block's wait on `connection` ends within `seconds` (None: no bound); state["fired"]: the bound ended it.

    The watchdog shuts the socket down (a dup of libpq's descriptor, so libpq's own stays valid): libpq's wait ends
    with "server closed the connection"."""
    lock = threading.Lock()  # the timer never shuts a socket whose statement has already returned
    state = {"done": False, "fired": False, "lock": lock}  # (liveness.watched shares the lock)
    if seconds is None:
        yield state
        return

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                shut(connection)

    bound = watchdog.arm(seconds, fire)  # (one thread watches every bound: a Timer per statement cost ~0.1 ms)
    try:
        yield state
    finally:
        with lock:
            state["done"] = True
        watchdog.disarm(bound)


_cut: weakref.WeakSet = weakref.WeakSet()  # the connections shut() cut off (their server side may live on)


def was_cut_off(connection) -> bool:
    return connection in _cut


# psycopg2 (2.9) runs connection.cancel() and .fileno() without the connection's own mutex, while close() frees
# the PGconn with the GIL released: another thread's fileno racing a close reads the freed PGconn, and the number
# it returns may already be a new socket's (shut would cut someone else's connection); its cancel is sent for a
# session being closed. Each such touch and the connection's close take its one lock here (cancel.py, the lock
# probe, answered_within's bound; close() where the connection is one of theirs).
_touch_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_touch_locks_guard = threading.Lock()


def _touch_lock(connection) -> threading.Lock:
    with _touch_locks_guard:
        return _touch_locks.setdefault(connection, threading.Lock())


@contextmanager
def touching(connection) -> Iterator[bool]:
    """From another thread: the block touches `connection` only if it yields True (open, and it stays open until
    the block ends: close() waits for it)."""
    with _touch_lock(connection):
        yield not connection.closed


def close(connection) -> None:
    """Close `connection` once no other thread's cancel or shut is on it (none touches it after)."""
    with _touch_lock(connection):
        connection.close()


def cancel(connection) -> None:
    """The driver's cancel request for what `connection` runs, sent from another thread (its InterfaceError once
    closed, as the driver's own: never a cancel of a connection being closed)."""
    with _touch_lock(connection):
        connection.cancel()


def shut(connection) -> None:
    """End whatever libpq waits for on `connection` (cancel.py's SIGTERM too), the session's server side untouched."""
    import psycopg2

    _cut.add(connection)
    with touching(connection) as still_open:
        if not still_open:
            return
        try:
            with socket.socket(fileno=os.dup(connection.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg2.Error):
            pass


def side_connection(params: dict):
    """A side connection (the lock probe's, the progress watcher's, a cancel's) on connection.watcher_params'
    keywords: its reads bounded as the run's own are (READ_TIMEOUT_ARG, popped: never sent to libpq), so its thread
    gives up on a silent path (a MigratorError) instead of holding the connection in libpq for ever."""
    import psycopg2

    given = dict(params)
    seconds = given.pop(READ_TIMEOUT_ARG, None)
    connection = psycopg2.connect(**given)
    if seconds:
        guard_reads(connection, f"{given.get('host')}:{given.get('port')}", float(seconds))
    return connection


STOPPING = 0.1  # seconds a stopping side connection's thread gets to end its read, before its socket is shut
LET_GO = 1.0  # seconds it gets after that (its read then fails at once), else it is left to it


def let_go(connection, thread) -> bool:
    """Close a side connection whose `thread` may still be in libpq on it (a silent path; psycopg2's close would
    wait for that read for ever): its socket is shut from outside first, which ends the read. A thread stuck even
    then keeps it (False: left open, to the process's end); never a wait longer than STOPPING + LET_GO."""
    if thread is not None and thread.is_alive():
        shut(connection)
        thread.join(LET_GO)
        if thread.is_alive():
            return False
    close(connection)
    return True


# A session this run just closed may not have left the server yet (its backend exits after the client has gone):
# under a role's CONNECTION LIMIT the next one is refused meanwhile, so "too many connections" is tried again so long.
SLOT_WAIT = 3.0


def opened(connect, *args):
    """connect(*args); a refused connect is marked `at_connect` (errors.migration_error: nothing was sent on it)."""
    import psycopg2

    deadline = time.monotonic() + SLOT_WAIT
    while True:
        try:
            return connect(*args)
        except psycopg2.OperationalError as exc:
            if "too many connections" in str(exc) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            exc.at_connect = True
            raise


class NoAnswer(MigratorError):
    """A migration's session got no answer within its bound (guard_session): the path to the server went silent.
    `in_transaction`: the file's transaction was open (running.py knows), so nothing of it committed."""

    in_transaction = False


# A migration's statement ends on the server within its statement_timeout: this much later, no answer means the
# path went silent (the server's error on a timeout, a rollback, a commit's flush take far less).
ANSWER_MARGIN = 30.0
# Statements after which the session's statement_timeout is read again: a file may change it (SET, RESET, set_config,
# a DO block or procedure; a transaction's end undoes SET LOCAL).
_MAY_SET_TIMEOUT = re.compile(r"statement_timeout|set_config|^\s*(DO|CALL|RESET|COMMIT|END|ROLLBACK|ABORT)\b",
                              re.IGNORECASE | re.MULTILINE)


def guard_session(connection, where: str, first=None, watch=None) -> None:
    """A migration's session: each statement gets an answer within the session's statement_timeout plus
    ANSWER_MARGIN, else NoAnswer (one line). No bound while statement_timeout is 0: the server never ends the
    statement, so no wait is known to be too long (the server-side idle_in_transaction bound still frees locks).
    `first(cursor)`: the session's first read (server_session.first_read), its statement_timeout as shown.
    `watch(state)`: a context around each wait (liveness.py): it asks the server from a new connection whether the
    session still runs the statement, and sets state["ended"] and shuts the socket once it does not: a silent path,
    NoAnswer within seconds whatever the bound."""
    import contextlib

    import psycopg2.extensions

    bound = {"seconds": None}

    def show(cursor) -> str:
        cursor.execute("SHOW statement_timeout")  # (takes no snapshot, in a file's transaction too)
        return cursor.fetchone()[0]

    def read_bound(read=show) -> None:
        with answered_within(connection, ANSWER_MARGIN) as state, \
                connection.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
            try:
                shown = read(cursor)
            except psycopg2.Error as exc:
                if state["fired"]:
                    raise NoAnswer(silent(where, ANSWER_MARGIN)) from exc
                raise
            ms = durations.pg_milliseconds(shown)
        bound["seconds"] = ms / 1000 + ANSWER_MARGIN if ms else None

    class SessionCursor(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):
            seconds = bound["seconds"]
            with answered_within(connection, seconds) as state, (watch or contextlib.nullcontext)(state):
                try:
                    result = super().execute(query, vars)
                except psycopg2.Error as exc:
                    if state.get("ended"):  # (the server ended the statement: its answer was lost on the way)
                        raise NoAnswer(f"no answer from PostgreSQL at {where} although {state['ended']} (a proxy or "
                                       "network between went silent, keeping the connection open)") from exc
                    if state["fired"]:
                        raise NoAnswer(silent(where, seconds)) from exc
                    raise
            if isinstance(query, str) and _MAY_SET_TIMEOUT.search(query):
                read_bound()
            return result

    read_bound(first or show)
    connection.cursor_factory = SessionCursor


def outcome(in_transaction: bool, ended: str | None = None) -> str:
    """What a NoAnswer left on the server, and what to do; `ended`: what became of its session (cancel.end_session)."""
    if in_transaction:
        done = "nothing of the file committed: " + (ended or (
            "the server rolls its transaction back and releases its locks when it notices the session gone (at the "
            "latest after its idle_in_transaction_session_timeout)"))
    else:
        done = "whether the server carried it out (and committed it) is unknown: `runner.py status` and the objects tell"
        done += f"; {ended}" if ended else ""
    return f"{done}; check the network path to the server, then run the command again"


def silent(where: str, seconds: float) -> str:
    return f"no answer from PostgreSQL at {where} within {seconds:g} s (the server, or a proxy or network between, went silent)"


def connection_error(exc: Exception, target: PostgresTarget) -> MigratorError:
    text = output.scrub(str(exc).strip())
    where = target.where
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        what = f"authentication failed for user {target.user}; check the user and password ({_origin(target)})"
    elif "does not exist" in lowered and "database" in lowered:
        what = f"database {target.dbname} does not exist; create it (createdb {target.dbname}) or fix the database name ({_origin(target)})"
    elif "could not translate host name" in lowered or "name or service not known" in lowered:
        what = f"host {target.host} cannot be resolved; check the host name ({_origin(target)})"
    elif (folder := target.host or target.params.get("host") or "").startswith("/") and (
            "no such file or directory" in lowered or "connection refused" in lowered):  # a socket, no host or port
        what = (f"no server socket {folder}/.s.PGSQL.{target.port or 5432}" if "no such file" in lowered else
                "connection refused on its socket")
        what += f"; is the server running, and are the socket folder and port right? ({_origin(target)})"
    elif "connection refused" in lowered or "no such file or directory" in lowered:
        what = f"connection refused; is the server running, and are host and port right? ({_origin(target)})"
    elif "unrecognized configuration parameter" in lowered and "client_connection_check_interval" in lowered:
        what = "the server is older than PostgreSQL 14, which the runner needs (it cancels a dead runner's work)"
    elif "timeout expired" in lowered:
        what = "no answer within 10 s; check the host, port, firewall or security group"
    elif "root certificate file" in lowered or "certificate verify failed" in lowered:
        what = f"TLS verification failed ({text.splitlines()[-1].strip()}); check the CA bundle"
    else:
        what = _last_error(text) or exc.__class__.__name__
        # (a function's error while connecting: only a login event trigger runs one then, attack23u 11)
        if (function := re.search(r"^\s*PL/pgSQL function (\S+\(.*?\)) line ", text, re.M)) and "FATAL" in text:
            what += (f" (raised by function {function[1]}, which a login event trigger (ON login, PostgreSQL 17+) ran "
                     "while connecting as this user: as a superuser drop that event trigger or fix its function)")
    return MigratorError(f"cannot connect to PostgreSQL at {where}: {what}")


def _last_error(text: str) -> str:
    """libpq's last attempt (each host tried starts a line 'connection to server ...'): its error line first, then
    each HINT/DETAIL, every part with its continuation lines folded in. A message spanning lines (or holding a CR)
    can then never put one of its lines in place of the server's FATAL, nor leave the HINT alone."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith(_ATTEMPT)]
    parts: list[str] = []
    for line in lines[starts[-1]:] if starts else lines:
        if parts and not line.startswith(("HINT:", "DETAIL:")):
            parts[-1] += " " + line
        else:
            parts.append(line)
    return "; ".join(parts)


_ATTEMPT = ("connection to server ", "could not connect to server")


def _origin(target: PostgresTarget) -> str:
    origins = sorted(set(target.sources.values()) - {"default"})
    return "settings from " + (", ".join(origins) if origins else "defaults")
