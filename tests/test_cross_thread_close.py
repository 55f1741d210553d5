"""A connection another thread cancels or shuts (the lock probe, SIGTERM's cancel and cut-off, the read bound's
timer) is never closed under it: psycopg2's cancel() and fileno() run without the connection's own mutex while
close() frees the PGconn (a read of freed memory, a descriptor reused meanwhile: someone else's socket shut).
Each such touch and the close take one lock (failures.touching / failures.close). Asserted from the structure,
against the real server: a close waits for the cancel in flight, and that cancel still reaches its statement.
"""

import os
import signal
import threading
from types import SimpleNamespace

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

from migrator import interrupt, postgres, server_session
from migrator.postgres import cancel, failures, retry
from test_pg_lock import target_of

HELD = 0.5  # how long a closer is given to (wrongly) finish while a cancel is in flight: not a timing assertion


class HeldCancel(psycopg2.extensions.connection):
    """A real connection whose cancel() stops, once inside, until the test lets it go on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inside, self.go_on = threading.Event(), threading.Event()

    def cancel(self):
        self.inside.set()
        assert self.go_on.wait(30)
        return super().cancel()


def held_cancel_connection(db) -> HeldCancel:
    server = db.server
    conn = psycopg2.connect(dbname=db.name, user=server.user, password=server.password, host=server.host,
                            port=server.port, connection_factory=HeldCancel)
    server_session.of(conn)  # its server pid read at connect, as for the runner's own sessions (the lock probe's)
    return conn


def sleeping(conn) -> tuple[threading.Thread, list]:
    """`conn` runs a long statement in a thread of its own; the list gets what ended it."""
    ended = []

    def run():
        try:
            conn.cursor().execute("SELECT pg_catalog.pg_sleep(60)")
            ended.append("finished")
        except psycopg2.Error as exc:
            ended.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, ended


def in_thread(function, *args) -> threading.Thread:
    thread = threading.Thread(target=function, args=args, daemon=True)
    thread.start()
    return thread


def assert_close_waits_for_the_cancel(db, cancel_of):
    """`cancel_of(conn)` sent from one thread while another closes `conn` (failures.close): the close waits."""
    conn = held_cancel_connection(db)
    statement, ended = sleeping(conn)
    assert statement.is_alive()
    db.query("SELECT 1")
    sender = in_thread(cancel_of, conn)
    assert conn.inside.wait(30)
    closer = in_thread(failures.close, conn)
    closer.join(HELD)
    assert closer.is_alive() and not conn.closed  # the close waits for the cancel in flight
    conn.go_on.set()
    sender.join(30)
    statement.join(30)
    closer.join(30)
    assert conn.closed
    assert len(ended) == 1 and isinstance(ended[0], psycopg2.errors.QueryCanceled), ended  # (sent on a live one)


def test_a_close_waits_for_the_cancel_another_thread_is_sending(db):
    assert_close_waits_for_the_cancel(db, failures.cancel)


def test_the_lock_probes_cancel_of_the_migration_session_is_sent_under_the_same_lock(db):
    run = SimpleNamespace(watcher=SimpleNamespace(params={}, show_query=False))
    budget = SimpleNamespace(per_try_ms=1000, floor_ms=100)
    assert_close_waits_for_the_cancel(
        db, lambda conn: retry.probe(SimpleNamespace(parent=run), conn, budget)._cancel())


def test_a_cancel_or_cut_off_after_the_close_touches_nothing(db):
    conn = held_cancel_connection(db)
    conn.go_on.set()
    failures.close(conn)
    other = held_cancel_connection(db)  # (may well get the closed one's descriptor number)
    try:
        with pytest.raises(psycopg2.InterfaceError):  # (the driver's own answer, as the lock probe expects it)
            failures.cancel(conn)
        failures.shut(conn)
        with other.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        other.close()


def test_a_migration_sessions_close_waits_for_another_threads_touch(db):
    """yoyo closes each migration's session as the migration ends (its __exit__): after any cancel or cut-off
    another thread has in flight on it, never under it."""
    with postgres.connect(target_of(db), read_only=False) as backend:
        session = backend.copy()
        touching, release = threading.Event(), threading.Event()

        def touch():
            with failures.touching(session.connection) as still_open:
                assert still_open
                touching.set()
                release.wait(30)

        toucher = in_thread(touch)
        assert touching.wait(30)
        closer = in_thread(session.__exit__, None, None, None)
        closer.join(HELD)
        assert closer.is_alive() and not session.connection.closed
        release.set()
        closer.join(30)
        toucher.join(30)
        assert session.connection.closed


def test_sigterms_cut_off_ends_with_the_block(db):
    """The cut-off a SIGTERM arms (in case its cancel goes unanswered) is for that statement: the block's end
    disarms it, so it never shuts the connection later (a closed one's reused descriptor, or a next statement)."""
    conn = held_cancel_connection(db)
    conn.go_on.set()
    pid = conn.info.backend_pid
    timers_before = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]

    def terminate_once_it_runs():
        while not db.poll("SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = %s AND state = 'active'", (pid,)):
            db.poll("SELECT pg_catalog.pg_sleep(0.01)")
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        with pytest.raises(BaseException) as ended:
            with interrupt.guard() as guard, guard.deferred(), cancel.on_sigterm(lambda: conn):
                with interrupt.live():
                    in_thread(terminate_once_it_runs)
                    conn.cursor().execute("SELECT pg_catalog.pg_sleep(60)")
        assert isinstance(ended.value, (interrupt.Interrupted, psycopg2.errors.QueryCanceled)), ended.value
        assert conn.inside.is_set()  # SIGTERM's cancel was sent, and armed the cut-off
        assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t not in timers_before]
    finally:
        conn.close()


@pytest.mark.parametrize("given,expected", [(None, "disable"), ("prefer", "prefer")])
def test_libpqs_gssapi_probe_is_off_unless_the_user_asks_for_it(given, expected):
    """libpq's GSSAPI encryption probe runs the driver's bundled Kerberos library, not safe across threads
    (psycopg#1213: segfaults); the runner connects from several threads. Off by default for every connection the
    process makes (libpq reads PGGSSENCMODE); a user's own PGGSSENCMODE wins."""
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    env = {k: v for k, v in os.environ.items() if k != "PGGSSENCMODE"} | ({"PGGSSENCMODE": given} if given else {})
    shown = subprocess.run([sys.executable, "-c", "import os, migrator.postgres.connection; "
                            "print(os.environ.get('PGGSSENCMODE'))"], cwd=PROJECT_ROOT, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert shown == expected
