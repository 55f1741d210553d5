"""The advisory lock keys of the runner, and the schema's shared bookkeeping lock.

A leaf (it imports no other part of the runner but errors): trust.py takes the bookkeeping lock while it creates
a table, and pg_lock (the migration lock) builds its keys here.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from typing import Iterator

from migrator.errors import LOCKED, MigratorError

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
_HOLDER = ("SELECT a.pid, a.application_name FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a "
           "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
           "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())")


def bookkeeping_wait(seconds: float) -> None:
    """The run's --lock-timeout, for its waits on the bookkeeping lock (connecting creates the tables: set first)."""
    BOOKKEEPING_WAIT["seconds"] = seconds


@contextmanager
def creating_bookkeeping(connection, schema: str, wait: float | None = None) -> Iterator[None]:
    """While a run creates, upgrades or rewrites its schema's shared bookkeeping (yoyo's tables, the checksum and
    snapshot tables): histories sharing a schema (services at once, each under its own lock) would race on its
    CREATE TABLEs and lose each other's snapshot updates. Held briefly: to the end of the transaction when one is
    open (so a CREATE is committed before another session looks), else for the block. Polled (a try never meets
    the session's lock_timeout) for `wait` seconds, else the run's --lock-timeout."""
    key = lock_key(f":bookkeeping {schema}")  # (a schema cannot be named so: names are plain identifiers)
    in_transaction = bool(connection.get_transaction_status())  # (yoyo's BEGIN on autocommit too)
    query = "SELECT pg_catalog.pg_try_advisory_{}lock(%s)".format("xact_" if in_transaction else "")
    seconds = BOOKKEEPING_WAIT["seconds"] if wait is None else wait
    deadline = time.monotonic() + seconds
    with connection.cursor() as cursor:
        while True:
            cursor.execute(query, (key,))
            if cursor.fetchone()[0]:
                break
            if time.monotonic() >= deadline:
                cursor.execute(_HOLDER, (key >> 32, key & 0xFFFF_FFFF))
                row = cursor.fetchone()
                who = f"server pid {row[0]} ({row[1] or 'no application_name'})" if row else "released meanwhile"
                raise MigratorError(f"the shared bookkeeping lock of schema {schema} (advisory lock {key}, held by "
                                    f"{who}) was not free within {seconds:g} s: another service's run in that schema "
                                    "is recording; run again, or raise --lock-timeout", LOCKED)
            time.sleep(POLL_SECONDS / 4)
        if in_transaction:
            yield
            return
        try:
            yield
        finally:
            cursor.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (key,))


