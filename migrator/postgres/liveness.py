"""A migration statement's answer lost on a silent path, noticed within seconds whatever its statement_timeout.

A proxy or NAT that goes silent keeps the TCP connection open (its kernel acknowledges everything): libpq waits for
an answer the server sent long ago, and the client's only bound was the statement_timeout (10 min by default) plus a
margin. While a statement waits longer than PROBE_AFTER, the server is asked from a new connection (the lost path is
one connection's: a NAT entry, a proxy's stuck relay) whether the session still runs it: idle (its answer sent, a
try's transaction left open) or gone (the server ended it: the try's idle bound) twice in a row, IDLE_FOR seconds or
more each, means the answer will never come: the socket is shut and the statement ends in NoAnswer. A probe that
cannot reach the server either proves nothing: the statement's own bound still holds.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Callable, Iterator

from migrator.postgres import failures, watchdog

PROBE_AFTER = 5.0  # seconds a statement waits for its answer before the server is asked about it
PROBE_EVERY = 3.0
IDLE_FOR = 2.0  # seconds the server has seen the session idle: an answer on a live path takes milliseconds
SEEN = 2  # consecutive probes that must find it so

# The session of that pid and start: its state, and how long it has been so (the server's clock); no row: gone.
_STATE = ("SELECT state, extract(epoch FROM clock_timestamp() - state_change) FROM pg_catalog.pg_stat_activity "
          "WHERE pid = %s AND backend_start = %s")


def watcher(dburi, args: dict, connection, where: str) -> Callable[[dict], AbstractContextManager]:
    """failures.guard_session's `watch` for `connection`, a migration's session (yoyo's `dburi`, its connect `args`)."""
    probe = probe_for(dburi, args, connection, where)
    return lambda state: watched(connection, state, probe)


@contextmanager
def watched(connection, state: dict, probe: Callable[[], str | None]) -> Iterator[None]:
    """While the block waits on `connection` (failures.answered_within's `state`): `probe()` every PROBE_EVERY s
    after PROBE_AFTER s; once it has said what ended the statement SEEN times in a row, the socket is shut and
    state["ended"] holds it."""
    seen = {"bound": None, "times": 0}

    def look() -> None:
        with state["lock"]:
            if state["done"]:
                return
        ended = probe()  # (outside the lock: a new connection, seconds on a bad path)
        with state["lock"]:
            if state["done"]:
                return
            seen["times"] = seen["times"] + 1 if ended else 0
            if seen["times"] < SEEN:
                seen["bound"] = watchdog.arm(PROBE_EVERY, look)
                return
            state["fired"], state["ended"] = True, ended
        failures.shut(connection)  # (libpq's wait ends; the statement is over on the server)

    seen["bound"] = watchdog.arm(PROBE_AFTER, look)
    try:
        yield
    finally:
        with state["lock"]:
            state["done"] = True
            watchdog.disarm(seen["bound"])


def probe_for(dburi, args: dict, connection, where: str) -> Callable[[], str | None]:
    """A probe of `connection`'s session (server_session's pid and start, read at its connect) from a new connection
    to where yoyo's `dburi` (its connect `args`) goes: what ended its statement in words, or None (running, unknown)."""
    import psycopg2

    from migrator import server_session
    from migrator.errors import MigratorError
    from migrator.postgres.cancel import side_params

    params = side_params(dburi, args)

    def probe() -> str | None:
        session = server_session.known(connection)
        if session is None or session.started is None:
            return None
        try:
            side = failures.side_connection(params)
        except psycopg2.Error:
            return None
        try:
            failures.guard_reads(side, where, PROBE_EVERY)
            side.autocommit = True
            with side.cursor() as cursor:
                cursor.execute(_STATE, (session.pid, session.started))
                row = cursor.fetchone()
        except (psycopg2.Error, MigratorError):
            return None
        finally:
            failures.close(side)
        if row is None:
            return f"the server had ended its session pid {session.pid}"
        if row[0] != "active" and row[1] is not None and row[1] >= IDLE_FOR:
            return f"the server had finished it {row[1]:.0f} s before (its session pid {session.pid} {row[0]})"
        return None
    return probe

