"""Every bound on a PostgreSQL wait (failures.answered_within: the read timeout, a migration's statement bound) is
watched by one long-lived thread (postgres/watchdog.py), not a thread per statement (issue 22: ~28k threads in a
suite run). What each bound does is unchanged: test_silent_network.py, test_settings.py and test_describe_waits.py
show every bound still ending a silent path's wait; here, what the shared thread must not get wrong."""

import threading

import psycopg2

from migrator.postgres import failures, watchdog
from pg_wire import StallProxy

LONG = 600  # seconds: a bound that must not be the one that fires


def _fired() -> tuple[threading.Event, callable]:
    event = threading.Event()
    return event, event.set


def test_a_guarded_connections_statements_start_no_thread_each(db, monkeypatch):
    conn = psycopg2.connect(dbname=db.name, user=db.server.user, host=db.server.host, port=db.server.port)
    try:
        failures.guard_reads(conn, "here", 30.0)
        started: list[threading.Thread] = []
        real_start = threading.Thread.start
        monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self), real_start(self))[1])
        with conn.cursor() as cursor:
            for n in range(50):
                cursor.execute("SELECT %s", (n,))
                assert cursor.fetchone() == (n,)
    finally:
        conn.close()
    assert len(started) <= 1, [t.name for t in started]  # (the watchdog's own, if no earlier test started it)


def test_a_bound_armed_after_a_longer_one_fires_at_its_own_time():
    """The thread sleeping toward the longer bound is woken for the shorter (else it fired LONG seconds late)."""
    late, _ = _fired()
    longer = watchdog.arm(LONG, late.set)
    soon, fire = _fired()
    watchdog.arm(0.05, fire)
    try:
        assert soon.wait(30)
        assert not late.is_set()
    finally:
        watchdog.disarm(longer)


def test_a_disarmed_bound_never_fires_and_the_next_one_still_does():
    never, fire_never = _fired()
    watchdog.disarm(watchdog.arm(0.05, fire_never))
    then, fire_then = _fired()
    watchdog.arm(0.2, fire_then)
    assert then.wait(30)
    assert not never.is_set()


def test_a_bound_whose_action_blocks_does_not_hold_back_another():
    """A shut waits for its connection's touch lock (a cancel in flight holds it): other connections' bounds fire."""
    release, entered = threading.Event(), threading.Event()

    def blocked() -> None:
        entered.set()
        release.wait(60)

    watchdog.arm(0.01, blocked)
    try:
        assert entered.wait(30)
        other, fire = _fired()
        watchdog.arm(0.05, fire)
        assert other.wait(30)
    finally:
        release.set()


def test_two_connections_gone_silent_are_each_ended_by_their_own_bound(pg, db):
    """Two waits under one watchdog: each connection's read ends with its own bound's error, the other untouched."""
    proxy = StallProxy(pg.host, pg.port)
    quiet = psycopg2.connect(dbname=db.name, user=db.server.user, host="127.0.0.1", port=proxy.port)
    errors: dict[str, BaseException] = {}

    def read(name: str, seconds: float) -> None:
        conn = psycopg2.connect(dbname=db.name, user=db.server.user, host="127.0.0.1", port=proxy.port)
        failures.guard_reads(conn, name, seconds)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 'STALLME'")
        except Exception as exc:  # noqa: BLE001 (the test looks at which)
            errors[name] = exc
        finally:
            conn.close()

    try:
        failures.guard_reads(quiet, "quiet", 30.0)
        threads = [threading.Thread(target=read, args=(name, seconds)) for name, seconds in (("a", 0.5), ("b", 1.5))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert "PostgreSQL at a: no answer within 0.5 s" in str(errors["a"]), errors
        assert "PostgreSQL at b: no answer within 1.5 s" in str(errors["b"]), errors
        with quiet.cursor() as cursor:  # (its bound, armed and disarmed meanwhile, never cut it)
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        quiet.close()
        proxy.close()
