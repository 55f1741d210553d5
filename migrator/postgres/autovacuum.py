"""An autovacuum worker in the way of a migration's lock.

PostgreSQL cancels a (non-wraparound) autovacuum that blocks a lock request, but only once that request has waited
deadlock_timeout (1 s by default): longer than each try's lock_timeout (300 ms), so every try would give up first
and the retries would never get past it. The migration session lowers its own deadlock_timeout below the try's
(the server reads the waiting session's value), when its role may set it (a superuser, or GRANT SET ON PARAMETER on
PostgreSQL 15+): the server then cancels the autovacuum within the try, as it would after 1 s. An anti-wraparound
autovacuum is never cancelled by the server: it is named as such, and the retries wait for it truthfully.
"""

from __future__ import annotations

import re

SHARE = 3  # deadlock_timeout is a third of the try's lock_timeout: the cancel, then the grant, fit in the try
# May this role set deadlock_timeout (PostgreSQL 15+ asks for its SET privilege; before, only a superuser may)?
_MAY_SET_15 = "SELECT pg_catalog.has_parameter_privilege('deadlock_timeout', 'SET')"
_SET_TRANSACTION = re.compile(r"\s*SET\s+TRANSACTION\b", re.IGNORECASE)


def may_set(connection, statements) -> bool:
    """Asked of the migration's own session (a file may change the database's default role for the next one). A
    superuser may: the server reports is_superuser at every change, no query. Else (PostgreSQL 15+) a SELECT asks,
    but not before a file's SET TRANSACTION, which must be its transaction's first query (the SELECT would take its
    snapshot): that file goes without the quick cancel."""
    if connection.info.parameter_status("is_superuser") == "on":
        return True
    if connection.server_version < 150000 or statements and _SET_TRANSACTION.match(statements[0].text):
        return False
    with connection.cursor() as cursor:
        cursor.execute(_MAY_SET_15)
        return bool(cursor.fetchone()[0])


def lower_deadlock_timeout(connection, per_try: float) -> None:
    """deadlock_timeout below the try's lock_timeout for this session (a SET: inside a transaction its ROLLBACK
    undoes it, so a transactional file's retry sets it again; the session ends with the migration)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SET deadlock_timeout = '{max(1, round(per_try * 1000 / SHARE))}ms'")


def advice(blockers: list[dict], per_try: float, lowered: bool) -> str | None:
    """What to do about the autovacuum workers among a try's blockers (None: none there)."""
    workers = [h for h in blockers if h.get("autovacuum") or h.get("no_role")]
    if not workers:
        return None
    if any(h.get("wraparound") for h in workers):
        return ("an anti-wraparound autovacuum is never cancelled by PostgreSQL and must finish (pg_stat_progress_"
                "vacuum shows how far; cancelled, it starts again): run again once it has, or raise "
                "--lock-retry-budget to wait for it")
    if lowered:
        return "the server did not cancel the autovacuum in time: run again, or cancel it yourself"
    return (f"PostgreSQL cancels an autovacuum in a lock's way only after deadlock_timeout (1 s), longer than each "
            f"try's {round(per_try * 1000)} ms, and this role may not lower it: GRANT SET ON PARAMETER "
            "deadlock_timeout TO the migration role (PostgreSQL 15+), cancel it (SELECT pg_cancel_backend(pid)), "
            "or raise --ddl-lock-timeout above deadlock_timeout")
