"""A deadlock between a migration and another session (40P01): PostgreSQL ends one side's transaction so the other
goes on. For the migration that is a try that lost, like a lock timeout: retried (retry.py) within the lock retry
budget, never "fix the file". The line names the other session(s) from the error's DETAIL ("Process 12 waits for
ShareLock on transaction 34; blocked by process 56. ..."), each pid as the progress lines name a session, and each
relation by name, not by the OID the server gives.

The runner's own session lowers deadlock_timeout (autovacuum.py) below the application's: the side that waits
deadlock_timeout first runs the check and ends itself, so the migration, not the application's transaction, is the
one ended, and retried; that is kept on purpose (an application's request failing is worse than a retry).
"""

from __future__ import annotations

import re

from migrator import output, server_session
from migrator.postgres import sessions
from migrator.postgres.transaction_status import IN_ERROR

DEADLOCK = "40P01"
_WAITS = re.compile(r"Process (\d+) waits for (\w+) on (.+?); blocked by process (\d+)\.")
_RELATION = re.compile(r"relation (\d+) of database \d+")
_WHO = """SELECT a.pid, a.usename, a.application_name, a.state FROM pg_catalog.pg_stat_activity a
WHERE a.pid = ANY(%s)"""


def deadlocked(exc) -> bool:
    """A StatementFailed whose statement PostgreSQL ended to break a deadlock."""
    return getattr(getattr(exc, "cause", None), "pgcode", None) == DEADLOCK


def other_sessions(connection, exc, transactional: bool, seen: list[dict]) -> str:
    """Who the migration deadlocked with and over what, in words; a session already gone (it went on and ended)
    as the probe `seen` it blocking the wait. The aborted transaction is rolled back first (nothing of it can
    commit; a transactional file's own is begun again, empty, as the retry expects)."""
    if connection.info.transaction_status == IN_ERROR:
        with connection.cursor() as cursor:
            cursor.execute("ROLLBACK")
            if transactional:
                cursor.execute("BEGIN")
    detail = getattr(getattr(exc.cause, "diag", None), "message_detail", None) or ""
    ours = server_session.of(connection).pid  # (the server's, as the DETAIL names it)
    waits = {int(pid): (mode, what, int(by)) for pid, mode, what, by in _WAITS.findall(detail)}
    others = sorted(pid for pid in waits if pid != ours)
    if not others:
        return "a session the server did not name"
    with connection.cursor() as cursor:
        cursor.execute(_WHO, (others,))
        found = {h["pid"]: (h["user"], h["application_name"], h["state"]) for h in seen if h.get("state")}
        found.update({row[0]: row[1:] for row in cursor.fetchall()})
        return "; ".join(_one(cursor, pid, found.get(pid), waits[pid], waits.get(ours)) for pid in others)


def _one(cursor, pid: int, who, theirs, ours) -> str:
    user, app, state = who or (None, None, None)
    named = (f"pid {pid} (application_name {sessions.named(output.scrub(app or ''))}, user {output.role(user)}, "
             f"{state})" if user is not None else f"pid {pid} (ended since, or another role's session)")
    text = f"{named} waited for {_lock(cursor, theirs)}"
    if ours is not None:
        text += f" while this migration waited for {_lock(cursor, ours)}"
    return text


def _lock(cursor, wait) -> str:
    mode, what, _ = wait
    return f"{sessions.lock_mode(mode)} lock on {_relations(cursor, what)}"


def _relations(cursor, what: str) -> str:
    """The DETAIL's "relation 16390 of database 16384" as the table's name (the OID if it is gone)."""
    def name(match) -> str:
        cursor.execute("SELECT oid::regclass::text FROM pg_catalog.pg_class WHERE oid = %s", (int(match.group(1)),))
        found = (cursor.fetchone() or (None,))[0]
        return f"table {output.scrub(found)}" if found else match.group(0)

    if what.startswith("transaction "):  # a row lock: the server names the transaction holding the row
        return f"a row ({what}'s)"
    return _RELATION.sub(name, what)
