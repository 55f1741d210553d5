"""The runner's own reads on a session whose search_path it does not choose (the migration's session, whose path
is the file's; a scratch database's session, made before anyone could lock its public schema).

Another role that may CREATE in a schema on that path can plant an operator or function there that beats
pg_catalog's for an unqualified comparison (`relname ~ '...'` took a planted ~(name, name)), which then runs as
the migration role. Around such a read the path is pg_catalog, then pg_temp (never a planted temporary
function), and the session's own path is set back afterwards, so the file's later statements see theirs.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

CATALOG_ONLY = "pg_catalog, pg_temp"
# The run's own connections, whose session path the runner set to pg_catalog and nothing changes after (they never
# run a migration's SQL; connection.py): a read there needs no change of path, saving two round trips each time.
# (pg_temp unlisted is searched first for tables only, never for operators or functions; the runner makes none.)
_PINNED: weakref.WeakSet = weakref.WeakSet()


def pin(connection) -> None:
    """Marks `connection` as pinned to pg_catalog, once its session path was set so outside a transaction (a
    setting made inside one would go with its rollback)."""
    import psycopg2.extensions as ext

    if connection.info.transaction_status == ext.TRANSACTION_STATUS_IDLE:
        _PINNED.add(connection)


@contextmanager
def catalog_path(cursor) -> Iterator[None]:
    """Runs the block's statements on `cursor` with search_path = pg_catalog, pg_temp; the path set back after
    (a failed transaction takes the change back itself: nothing is sent then)."""
    import psycopg2.extensions as ext

    if cursor.connection in _PINNED:
        yield
        return
    # Inside a transaction both changes are LOCAL: at its end the path is what the file's own SET / SET LOCAL
    # leave, exactly as without this read (a session-wide restore would keep a SET LOCAL's path past COMMIT).
    local = cursor.connection.info.transaction_status == ext.TRANSACTION_STATUS_INTRANS
    cursor.execute("SELECT pg_catalog.current_setting('search_path'), "
                   "pg_catalog.set_config('search_path', %s, %s)", (CATALOG_ONLY, local))
    saved = cursor.fetchone()[0]
    try:
        yield
    finally:
        if cursor.connection.info.transaction_status != ext.TRANSACTION_STATUS_INERROR:
            cursor.execute("SELECT pg_catalog.set_config('search_path', %s, %s)", (saved, local))
