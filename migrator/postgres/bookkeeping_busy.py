"""The runner's own statement on a bookkeeping table (_yoyo_migration, _yoyo_log, yoyo_lock, the _hcm_* tables, a
Flyway history) cancelled by lock_timeout: another session locks that table (a DBA's LOCK TABLE, a MAINTAIN right's
holder, a VACUUM FULL). One true line: which table, who holds it (named as the retry lines name blockers:
sessions.describe), what committed, what to do (attack24l H, attack23o 3: was "unexpected LockNotAvailable", or
"nothing of it was applied" for a file that had committed).

Not retried within the lock retry budget as a migration's statement is: no application query waits behind the
runner's bookkeeping (the application never touches these tables, and the runner holds none of the application's
locks then), so a short try protects no one; what holds such a table is a person or a maintenance job, not the
application's traffic that a retry outwaits."""

from __future__ import annotations

from migrator import output
from migrator.errors import LOCKED, MigratorError
from migrator.postgres import sessions

LOCK_NOT_AVAILABLE = "55P03"
_NAMES = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock", "_hcm_")

# The sessions (and prepared transactions) holding, or queued for, a lock on the table that a write's ROW EXCLUSIVE
# (or a read's ACCESS SHARE) waits behind, in sessions.blocker's row shape.
_HOLDERS = """
SELECT a.pid, a.application_name, a.usename, host(a.client_addr), a.state,
       extract(epoch FROM clock_timestamp() - a.state_change), extract(epoch FROM clock_timestamp() - a.xact_start),
       extract(epoch FROM a.xact_start),
       pg_catalog.string_agg(DISTINCT l.mode, ',') FILTER (WHERE l.granted), NULL, a.backend_type,
       a.usesysid IS NULL, false
FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = %(table)s::regclass AND l.pid <> pg_catalog.pg_backend_pid()
  AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 11, 12 ORDER BY a.pid
"""
_PREPARED = """
SELECT x.gid, x.owner, x.database, extract(epoch FROM clock_timestamp() - x.prepared),
       pg_catalog.string_agg(DISTINCT h.mode, ',')
FROM pg_catalog.pg_prepared_xacts x
JOIN pg_catalog.pg_locks t ON t.pid IS NULL AND t.locktype = 'transactionid' AND t.transactionid = x.transaction
JOIN pg_catalog.pg_locks h ON h.pid IS NULL AND h.granted AND h.virtualtransaction = t.virtualtransaction
 AND h.locktype = 'relation' AND h.relation = %(table)s::regclass
 AND h.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
GROUP BY x.gid, x.owner, x.database, x.prepared ORDER BY x.prepared
"""


def table(exc, schema: str, flyway_table: str | None = None) -> str | None:
    """The bookkeeping table whose lock the runner's statement could not get (`exc` a lock timeout), qualified,
    or None (not a lock timeout, or not the runner's bookkeeping statement)."""
    import re

    if getattr(exc, "pgcode", None) != LOCK_NOT_AVAILABLE or getattr(exc, "cursor", None) is None:
        return None
    query = exc.cursor.query
    text = query.decode("utf-8", "replace") if isinstance(query, bytes) else str(query or "")
    names = [*_NAMES, *([flyway_table] if flyway_table else [])]
    found = re.search(r'"?(' + "|".join(re.escape(n) + (r"\w*" if n.endswith("_") else r"\b") for n in names) + ')"?',
                      text)
    return f'"{schema}"."{found.group(1)}"' if found else None


def holders(connection, table_name: str) -> str:
    """Who holds `table_name` against the runner, in words with each one's way out (a fresh transaction: the
    failed one is rolled back first, as it is anyway)."""
    connection.rollback()
    with connection.cursor() as cursor:
        cursor.execute(_HOLDERS, {"table": table_name})
        found = [sessions.blocker(row) for row in cursor.fetchall()]
        cursor.execute(_PREPARED, {"table": table_name})
        found += [sessions.prepared(row) for row in cursor.fetchall()]
    connection.rollback()
    if not found:
        return NONE_NOW
    return sessions.describe_all(found)


NONE_NOW = "a session that has let go since (none holds it now)"


def error(connection, table_name: str, where: str, committed: str, then: str) -> MigratorError:
    """The one line: which table, who holds it, what committed (`committed`), what to do (`then`); exit 4."""
    try:
        who = holders(connection, table_name)
    except Exception:  # (the line without its holders rather than none: the session may be gone too)
        who = "a session (which could not be read)"
    return MigratorError(f"{where}: the runner's own statement on its bookkeeping table {output.visible(table_name)} "
                         f"waited longer than lock_timeout: held by {who}; {committed}; {then}", LOCKED)


def held(connection, tables: list[str]) -> str:
    """The first of `tables` (qualified) another session or a prepared transaction holds against the runner (the
    first when none does now). (A PREPAREd CREATE TRIGGER holds its lock with no session: attack23r 5.)"""
    connection.rollback()
    with connection.cursor() as cursor:
        for name in tables:
            for query in (_HOLDERS, _PREPARED):
                cursor.execute(query, {"table": name})
                if cursor.fetchall():
                    return name
    return tables[0]
