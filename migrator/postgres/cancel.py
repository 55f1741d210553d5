"""SIGTERM cancels the statement a migration is running, instead of waiting for it to end.

Python runs a signal handler only between bytecodes, and while a statement runs the main thread is
inside libpq. The C-level handler still writes the signal's number to the wakeup fd: a thread reads
it and sends the server a cancel request for the migration's session (connection.cancel()), but only
while the migration's own statements run (interrupt.is_live(): never the bookkeeping). The statement
ends at once, and the runner's SIGTERM handler (interrupt.py) stops the run in order, as it does
between statements. A cancel that goes unanswered (a silent network path) is followed by cutting libpq's wait
short (failures.shut): SIGTERM ends the run even then. A blocking libpq is kept (no wait callback): the wakeup fd
reaches this thread whatever the main thread waits in.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from migrator import interrupt
from migrator.errors import MigratorError
from migrator.postgres import failures


# A cancel the server does not answer within this (the path to it went silent: its session idles in a transaction
# while libpq waits for an answer that never comes) ends libpq's wait on the client side.
CANCEL_GRACE = 5.0
CUT_OFF_THREAD = "cancel-cut-off"


def cut_off(connection) -> None:
    if not connection.closed and interrupt.is_live():  # (still in the statement: the cancel was not answered)
        failures.shut(connection)


def by_pid(params: dict, session, where: str) -> None:
    """Cancel `session` (server_session.ServerSession: the server's pid and start, never a pooler's pid) from a new
    connection (`params`: psycopg2.connect keywords), each wait bounded and the GIL free meanwhile: the driver's own
    cancel request blocks every thread where the path has gone silent."""
    import psycopg2

    try:
        connection = failures.side_connection(params)
    except psycopg2.Error:
        return  # (the cut-off still comes)
    try:
        failures.guard_reads(connection, where, CANCEL_GRACE)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT pg_catalog.pg_cancel_backend(pid) {_OURS}", (session.pid, session.started))
    except (psycopg2.Error, MigratorError):
        pass
    finally:
        connection.close()


# The runner's own session and no other: its pid, its start (a pid is reused) and the run's own role.
_OURS = "FROM pg_catalog.pg_stat_activity WHERE pid = %s AND backend_start = %s AND usename = current_user"


def end_session(params: dict, session, where: str, in_transaction: bool,
                until: str = "at most its idle_in_transaction_session_timeout") -> str:
    """End the runner's own migration `session` (server_session.ServerSession) on the server from a new connection
    (`params`): cut off by a silent path, it idles in its transaction holding its locks until the server's idle bound
    (a cancel does nothing to an idle session; the same role may terminate it). What became of it, in words: "ended"
    only if its row was there before and is gone after."""
    import psycopg2

    found = gone = None
    try:  # (a session without its start read cannot be told from a later one of the same pid: left alone)
        connection = failures.side_connection(params) if session.started is not None else None
    except psycopg2.Error:
        connection = None
    if connection is not None:
        try:
            failures.guard_reads(connection, where, CANCEL_GRACE * 2)
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT pg_catalog.pg_terminate_backend(pid, %s) {_OURS}",
                               (int(CANCEL_GRACE * 1000), session.pid, session.started))
                found = cursor.fetchone() is not None
                cursor.execute("SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity WHERE pid = %s AND "
                               "backend_start = %s)", (session.pid, session.started))
                gone = cursor.fetchone()[0]
        except (psycopg2.Error, MigratorError):
            pass
        finally:
            connection.close()
    rolled = "its transaction rolled back and " if in_transaction else ""
    if found and gone:
        return f"the runner ended its session pid {session.pid} on the server: {rolled}its locks are released"
    if found is False and gone:
        return (f"its session pid {session.pid} had already left the server (no session of that pid and start): "
                f"{rolled}its locks are released")
    return (f"the runner could not end its session pid {session.pid} on the server: its locks stay until the server "
            f"notices it gone ({until}); end it now with `{session.ending()}`")


def own_session_ender(dburi, args: dict, connection, where: str) -> Callable[[], str]:
    """For the run's own session (yoyo's `dburi`, its connect `args`), cut off by a silent path (failures.guard_reads):
    it holds the migration lock with no idle bound (session_options.NO_IDLE_TIMEOUTS: it idles while migrations run),
    so the server would keep it for as long as the path keeps TCP open. Ends it from a new connection, in words."""
    from migrator import server_session

    params = side_params(dburi, args)

    def end() -> str:
        session = server_session.known(connection)
        if session is None or not server_session.holds_any(connection):  # (nothing of the run's to free)
            return ""
        return "it held the migration lock: " + end_session(
            params, session, where, False, "its TCP keepalives; never while a proxy keeps the connection open")
    return end


@contextmanager
def on_sigterm(session: Callable[[], object], cancel: Callable[[object], None] | None = None) -> Iterator[None]:
    """For the block, SIGTERM cancels what `session()` (a psycopg2 connection, or None) is running: by `cancel`
    (by_pid), else by the driver's cancel request (which holds the GIL until the server closes its connection;
    sent under failures.touching: the connection's close waits for it). The cut-offs end with the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end)
    cuts: list[threading.Timer] = []

    def watch() -> None:
        while data := os.read(read_end, 64):
            connection = session()
            if signal.SIGTERM in data and connection is not None and not connection.closed and interrupt.is_live():
                cut = threading.Timer(CANCEL_GRACE, cut_off, (connection,))  # (first: a silent path eats the
                cut.name, cut.daemon = CUT_OFF_THREAD, True                   # cancel request too, which then hangs)
                cuts.append(cut)
                cut.start()
                (cancel or failures.cancel)(connection)

    thread = threading.Thread(target=watch, name="cancel-on-sigterm", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        os.close(write_end)  # the thread reads the end of the pipe
        thread.join(timeout=5)
        for cut in list(cuts):  # (the statement it was for is over: never a later one's, nor a closed connection's)
            cut.cancel()
            cut.join(timeout=CANCEL_GRACE)
        if not thread.is_alive():  # (else its read would take a descriptor reused meanwhile)
            os.close(read_end)


def side_params(dburi, args: dict) -> dict:
    """psycopg2.connect keywords of a side connection to where yoyo's `dburi` (its connect `args`) goes: the same
    server, user and TLS, none of the session's options but a search_path of pg_catalog alone."""
    from migrator.postgres.session_options import CATALOG_ONLY

    fields = {"host": dburi.hostname, "port": dburi.port, "dbname": dburi.database, "user": dburi.username,
              "password": dburi.password}
    return {**{k: v for k, v in args.items() if k not in ("options", "schema")},
            **{k: v for k, v in fields.items() if v}, "options": CATALOG_ONLY}
