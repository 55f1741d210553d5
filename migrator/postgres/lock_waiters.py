"""The runtime stall bound: application sessions waiting on a table lock the migration session HOLDS (not one it
waits for: that is a lock retry). The static judge (risks*.py) refuses the rewrites it knows of before anything
runs; whatever it misses (a volatile operator, a cast, a DO block) still cannot hold the application's queries
longer than a try's lock bound: the lock probe asks who waits on the session's granted relation locks while a
statement that may hold such a lock runs, or runs after one in the same transaction (clock_bound.py), and ends
the statement once one of them waited past the bound. The run then fails in one line (HeldTooLong), never
retried: a retry would hold the lock as long again.
"""

from __future__ import annotations

from migrator import output
from migrator.durations import seconds_text
from migrator.postgres import sessions

# Each other client session waiting for a table lock that `pid` holds granted (and that pg_blocking_pids says `pid`
# blocks), for how long it has waited (waitstart on 14+, else since its state last changed) and on which table.
# The runner's own sessions (its lock probe, watcher, bookkeeping: application_name hcm-db-migrations ...) and
# autovacuum (not a client backend) are no application.
_WAITERS = """
SELECT DISTINCT ON (w.pid) w.pid, a.application_name, a.usename, a.state,
       extract(epoch FROM clock_timestamp() - {since}), n.nspname, c.relname
FROM pg_catalog.pg_locks h
JOIN pg_catalog.pg_locks w ON w.locktype = 'relation' AND NOT w.granted AND w.database = h.database
 AND w.relation = h.relation AND w.pid <> h.pid
JOIN pg_catalog.pg_stat_activity a ON a.pid = w.pid
JOIN pg_catalog.pg_class c ON c.oid = h.relation
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE h.pid = %(pid)s AND h.granted AND h.locktype = 'relation' AND a.backend_type = 'client backend'
  AND coalesce(a.application_name, '') NOT LIKE 'hcm-db-migrations%%'
  AND %(pid)s = ANY(pg_catalog.pg_blocking_pids(w.pid))
ORDER BY w.pid
"""


def waiters(cursor, pid: int, exempt=frozenset()) -> list[dict]:
    """The application sessions waiting on a table lock `pid` holds, longest wait first; `exempt`: the tables whose
    waits the run accepts (the file's `-- accept-rewrite:`), (schema, name), or (None, name) for any schema's."""
    since = "coalesce(w.waitstart, a.state_change)" if cursor.connection.server_version >= 140000 else "a.state_change"
    cursor.execute(_WAITERS.format(since=since), {"pid": pid})
    found = [{"pid": wpid, "application_name": output.scrub(app or ""), "user": user, "state": state,
              "waited_s": float(waited or 0), "table": f"{schema}.{table}"}
             for wpid, app, user, state, waited, schema, table in cursor.fetchall()
             if (schema, table) not in exempt and (None, table) not in exempt]
    return sorted(found, key=lambda w: -w["waited_s"])


# The probe's cancel of a statement that holds its locks too long: only our session, only while a statement runs
# and it is not itself waiting for a lock (that wait is lock_timeout's and the retries').
CANCEL_HOLDER = """SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity
WHERE pid = %s AND state = 'active' AND wait_event_type IS DISTINCT FROM 'Lock'"""


class HeldTooLong(RuntimeError):
    """The probe ended a statement because application sessions waited on a lock it held past the try's bound."""


def shown(text: str, width: int = 60) -> str:
    """A statement as the line names it: its start, on one line."""
    flat = output.visible(output.one_line(text)).rstrip(";").rstrip()
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def held_too_long(exc, seen, bound: float) -> None:
    """Turn the StatementFailed the probe's cancel caused (`seen`: lock_probe.Seen) into the one line the run fails
    with: not retried, a retry would hold the lock as long again."""
    waiter = seen.held
    table = output.visible(waiter["table"])
    held = (f"ran while its transaction held a lock on {table} that an earlier statement of the file took, and"
            if seen.held_earlier else f"held its lock on {table} while")
    exc.cause = HeldTooLong(
        f"{shown(exc.statement.text)} {held} application sessions waited {seconds_text(waiter['waited_s'])} "
        f"(pid {waiter['pid']}, application_name {sessions.named(waiter['application_name'])}, user "
        f"{output.role(waiter['user'])}), past the try's {seconds_text(bound)}: it works under a lock queries need "
        "(a table rewrite or scan), so the runner ended it")
    exc.todo = ("not retried (it would hold the lock as long again): rewrite it with the safe pattern "
                "(docs/safety-and-exit-codes.md, Rewrites refused at deploy time) or accept it with "
                f"`-- accept-rewrite: {table}` and deploy in a quiet window")
    if not exc.transactional and exc.done:  # a rerun starts the file over: what committed runs again
        exc.todo += "; a rerun runs the file from its first statement: make what COMMITTED safe to re-run first"
