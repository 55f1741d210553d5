"""The options every session the runner opens connects with: who it is, how a dead peer is noticed, and what a
DBA's session defaults may not do to it (a leaf: connection.py and the side connections, impact's, read them)."""

from __future__ import annotations

import os
import socket
import weakref

# libpq's GSSAPI encryption probe (gssencmode=prefer, tried on every TCP connect) runs the Kerberos library bundled
# in psycopg2-binary, which is not safe across threads (psycopg#1213: segfaults; the runner connects from several
# threads: the watcher, the lock probe). Off unless the user asks for it (PGGSSENCMODE, or gssencmode in the URL).
os.environ.setdefault("PGGSSENCMODE", "disable")

# application_name names this runner (host:pid), so a lock timeout can say who holds the lock.
# A dead peer or a network that drops packets is noticed within about a minute: keepalives while
# waiting for an answer, and tcp_user_timeout for data the peer's kernel never acknowledges.
CONNECT_PARAMS = {"connect_timeout": "10", "application_name": f"hcm-db-migrations {socket.gethostname()}:{os.getpid()}"[:63],
                  "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3",
                  "tcp_user_timeout": "60000"}
READ_ONLY = "-c default_transaction_read_only=on"
# The side connections (tenants' survey, watcher, lock probe) resolve operators and functions in pg_catalog alone.
CATALOG_ONLY = "-c search_path=pg_catalog"
# A migration whose client died (SIGKILL) is cancelled within seconds, releasing its locks (PostgreSQL 14+).
CLIENT_CHECK = "-c client_connection_check_interval=2s"
# Every session the runner opens outlives a DBA's idle timeouts (PostgreSQL 14+): the run's own connection idles
# while a migration works (closed, a committed migration would go unrecorded), the probe between tries, a session
# in a transaction during a retry's backoff. A connection option outranks the database's and the role's settings.
NO_IDLE_TIMEOUTS = "-c idle_session_timeout=0 -c idle_in_transaction_session_timeout=0"
# A migration's session, though, gets a bound the runner never reaches inside a transaction (its longest gaps there:
# the bookkeeping lock's waits before a COMMIT or a progress record, a retry's backoff), so that a runner gone or cut
# off mid-file (a proxy gone silent keeps the TCP connection open) leaves no lock held for ever: the server rolls the
# session's transaction back. Never below IDLE_IN_TRANSACTION_FLOOR seconds.
IDLE_IN_TRANSACTION_FLOOR = 600.0


# While a try holds locks (from its first statement in a transaction to that transaction's end), the runner sends
# its statements back to back: a gap of seconds there means it froze (SIGSTOP, a VM pause) or was cut off (a
# partition sends no FIN), and the application would wait on its locks until the floor above. So each try sets
# idle_in_transaction_session_timeout LOCAL (gone with its transaction: a retry's backoff, after the ROLLBACK, has
# the session's) to its lock bound plus this margin (a loaded pod's pauses), and the server ends such a try.
IDLE_IN_TRY_MARGIN = 3.0
# And a peer gone from the network is noticed by the server too (the client's keepalives are the client's side):
# server-side TCP keepalives and tcp_user_timeout for the run's own session (it holds the migration lock, with no idle
# bound: see NO_IDLE_TIMEOUTS) and each migration's, which copies its options (a Unix socket ignores them).
SERVER_KEEPALIVES = ("-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3 "
                     "-c tcp_user_timeout=60000")

# Each migration connection's try-local value, as last set (statement_bound.hold tells it from a file's own).
TRY_IDLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# PostgreSQL's integer settings are 32-bit: a millisecond value above this is refused at connect.
PG_INT_MAX = 2147483647


def idle_in_try_ms(bound_ms: int) -> int:
    """A try's idle_in_transaction_session_timeout: its lock bound (lock_timeout plus the floor) and the margin."""
    return min(bound_ms + round(IDLE_IN_TRY_MARGIN * 1000), PG_INT_MAX)


def migration_idle_bound(options: str, bookkeeping_wait: float, backoff: float) -> str:
    """`options` and, after them (a later -c wins; the user's own text is left as written), a migration session's
    idle_in_transaction_session_timeout instead of NO_IDLE_TIMEOUTS' 0: `bookkeeping_wait` (the run's
    --lock-timeout) and `backoff` (a retry's longest wait) with room to spare, at most PostgreSQL's int (a try
    sets a short one of its own: idle_in_try_ms). (The server-side keepalives come with the run's options.)"""
    seconds = max(IDLE_IN_TRANSACTION_FLOOR, 3 * bookkeeping_wait + 2 * backoff)
    bound = f"-c idle_in_transaction_session_timeout={min(round(seconds * 1000), PG_INT_MAX)}ms"
    return f"{options} {bound}" if options else bound
