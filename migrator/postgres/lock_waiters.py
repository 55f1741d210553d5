"""The runtime stall bound: application sessions waiting on a lock the migration session HOLDS (not one it waits
for: that is a lock retry), a table's or a row's. The static judge (risks*.py) refuses the rewrites it knows of
before anything runs; whatever it misses (a volatile operator, a cast, a DO block, DDL run by a function or a
trigger, a whole-table UPDATE) still cannot hold the application's queries longer than a try's lock bound: from
the try's first statement to its end (the transaction's COMMIT), whatever statements it runs, the lock probe asks
who waits on the session (lock_probe.py), ends a running statement once one of them waited past the bound, and
raises a flag the runner reads before sending the next statement (between statements nothing runs to cancel). The
run then fails in one line (HeldTooLong), never retried: a retry would hold the lock as long again.
"""

from __future__ import annotations

import re

from migrator import lazy_re, output
from migrator.durations import seconds_text
from migrator.postgres import sessions

# Each other client session that waits for a lock and whose pg_blocking_pids include `pid`, for how long it has waited
# (waitstart on 14+, else since its state last changed: other roles' states are hidden without pg_read_all_stats, so
# the net then sees only the role's own sessions), and on which table (an index's, a TOAST table's or its index's:
# its table's).
# pg_locks and pg_blocking_pids are read whatever the role (pg_stat_activity hides other roles' wait events without
# pg_read_all_stats: the net was blind to the application's role). With no one waiting, one pg_locks read; the rest
# only for the waiters the migration blocks, by pid. Not counted: the runner's own sessions (application_name
# hcm-db-migrations ...), autovacuum and other non-client processes (no user; or backend_type, where the role sees
# it), a virtualxid wait (CREATE INDEX CONCURRENTLY, REINDEX CONCURRENTLY elsewhere: they wait for the transaction to
# end, no query waits on them), and a transactionid wait unless the waiter holds a row's tuple lock or a lock on a
# table the migration holds one on (an UPDATE of a row it changed, a duplicate key: not a replication slot's
# creation). None while the migration session itself waits for a lock (a session queued behind its request waits on
# it too: that wait is lock_timeout's, and a lock retry's), but for older transactions (a CONCURRENTLY build's
# virtualxid wait: no one queues behind it, and the app may wait on the session's advisory lock meanwhile). Nor a table wait in SHARE UPDATE EXCLUSIVE (ANALYZE,
# VACUUM, another CREATE INDEX CONCURRENTLY, VALIDATE): no query or DML waits for it, nor queues behind it (its
# mode conflicts with none of theirs), so it stalls no application; every other mode either is a query's or
# conflicts with one (queries queue behind the waiter).
_WAITERS = """
WITH w AS MATERIALIZED (SELECT pid, locktype, relation, mode, {waitstart} AS waitstart FROM pg_catalog.pg_locks
                        WHERE NOT granted),
b AS MATERIALIZED (SELECT * FROM w WHERE pid <> %(pid)s AND locktype <> 'virtualxid'
                     AND NOT EXISTS (SELECT 1 FROM w m WHERE m.pid = %(pid)s AND m.locktype <> 'virtualxid')
                     AND NOT (locktype = 'relation' AND mode = 'ShareUpdateExclusiveLock')
                     AND %(pid)s = ANY(pg_catalog.pg_blocking_pids(pid)))
SELECT b.pid, a.application_name, pg_catalog.pg_get_userbyid(a.usesysid), a.state,
       extract(epoch FROM clock_timestamp() - {since}), n.nspname, c.relname, b.locktype, b.mode
FROM b
CROSS JOIN LATERAL pg_catalog.pg_stat_get_activity(b.pid) a
LEFT JOIN LATERAL (
  SELECT h.relation FROM pg_catalog.pg_locks h
  WHERE b.locktype = 'transactionid' AND h.pid = b.pid AND h.granted AND (h.locktype = 'tuple' OR
    h.locktype = 'relation' AND h.relation IN (
      SELECT m.relation FROM pg_catalog.pg_locks m WHERE m.pid = %(pid)s AND m.granted AND m.locktype = 'relation'))
  ORDER BY h.locktype = 'tuple' DESC LIMIT 1) r ON true
LEFT JOIN pg_catalog.pg_class k ON k.oid = coalesce(b.relation, r.relation)
LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = k.oid
LEFT JOIN pg_catalog.pg_class t ON t.oid = coalesce(i.indrelid, k.oid)
LEFT JOIN pg_catalog.pg_class c ON c.oid = coalesce((
  SELECT o.oid FROM pg_catalog.pg_class o WHERE t.relkind = 't' AND o.reltoastrelid = t.oid LIMIT 1), t.oid)
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE a.usesysid IS NOT NULL AND coalesce(a.backend_type, 'client backend') = 'client backend'
  AND coalesce(a.application_name, '') NOT LIKE 'hcm-db-migrations%%'
  AND (b.locktype <> 'transactionid' OR r.relation IS NOT NULL)
"""
ROW_LOCKS = ("transactionid", "tuple")  # a wait on a row the migration changed (or locked), not on a table
QUERY_MODES = ("ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE")  # what SELECT, SELECT FOR UPDATE, DML ask for
# ALTER TABLE ... VALIDATE CONSTRAINT (after comments): the safe pattern's second step, SHARE UPDATE EXCLUSIVE.
VALIDATES = lazy_re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/)*alter\s+table\b[^;]*\bvalidate\s+constraint\b",
                            re.IGNORECASE | re.DOTALL)


def waiters(cursor, pid: int, exempt=frozenset()) -> list[dict]:
    """The application sessions waiting on a lock `pid` holds (a table's or a row's), longest wait first; `exempt`:
    the tables whose waits the run accepts (the file's `-- accept-rewrite:`), (schema, name), or (None, name) for any
    schema's (an index's or a TOAST table's wait is its table's). A wait whose table is not known is counted."""
    new = cursor.connection.server_version >= 140000
    cursor.execute(_WAITERS.format(since="coalesce(b.waitstart, a.state_change)" if new else "a.state_change",
                                   waitstart="waitstart" if new else "NULL::timestamptz"), {"pid": pid})
    found = [{"pid": wpid, "application_name": output.scrub(app or ""), "user": user, "state": state,
              "waited_s": float(waited or 0), "table": f"{schema}.{table}" if table else None,
              "rows": locktype in ROW_LOCKS, "mode": sessions.lock_mode(mode) if locktype == "relation" else None,
              "advisory": locktype == "advisory"}
             for wpid, app, user, state, waited, schema, table, locktype, mode in cursor.fetchall()
             if table is None or ((schema, table) not in exempt and (None, table) not in exempt)]
    return sorted(found, key=lambda w: -w["waited_s"])


# The probe's cancel of a statement that holds its locks too long: only our session, only while a statement runs
# and it is not itself waiting for a lock (that wait is lock_timeout's and the retries'; a build's wait for older
# transactions is not one). Its wait read from pg_locks,
# its state 'disabled' taken as running: with track_activities off pg_stat_activity shows neither (attack24t 7);
# the probe's `_sending` lock pins the statement, and the server drops a cancel reaching an idle session.
CANCEL_HOLDER = """SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity a
WHERE pid = %s AND state IN ('active', 'disabled')
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_locks l WHERE l.pid = a.pid AND NOT l.granted AND l.locktype <> 'virtualxid')"""


class HeldTooLong(RuntimeError):
    """The probe ended a statement because application sessions waited on a lock it held past the try's bound;
    raised by the runner itself (`pgcode` None: a failure of the file's) when it was seen between statements."""
    pgcode = None


def shown(text: str, width: int = 60) -> str:
    """A statement as the line names it: its start, on one line."""
    flat = output.visible(output.one_line(text)).rstrip(";").rstrip()
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def held_too_long(exc, seen, bound: float) -> None:
    """Turn the StatementFailed the probe's cancel (or its flag) caused (`seen`: lock_probe.Seen) into the one line
    the run fails with: not retried, a retry would hold the lock as long again."""
    waiter = seen.held
    table = output.visible(waiter["table"]) if waiter["table"] else None
    what = (f"row locks on {table}" if table else "row locks") if waiter["rows"] else (
        f"a lock on {table}" if table else "a lock")
    between = isinstance(exc.cause, HeldTooLong) and not getattr(exc.cause, "ran", False)  # this one never sent
    if between:
        held = f"was not run: the file's transaction held {what}, taken by its earlier statements, while"
    elif seen.held_earlier:
        held = f"ran while its transaction held {what} (this statement's or an earlier one's), and"
    else:
        held = f"held {what} while" if waiter["rows"] or not table else f"held its lock on {table} while"
    queues = waiter.get("mode") not in (None, *QUERY_MODES)  # a DDL or maintenance request the app queues behind
    asks = f", asking for {waiter['mode']}, which the application's queries queue behind" if queues else ""
    if waiter.get("advisory"):  # (a session-level one: the file's pg_advisory_lock, attack24u 5)
        held = f"{'was not run: its session held' if between else 'ran while its session held'} an advisory lock, on which"
    validating = VALIDATES.match(exc.statement.text) is not None and not (between or seen.held_earlier)
    locked_by_code = validating and waiter["rows"]  # (a VALIDATE changes no row: its check locked them)
    why = ("a session-level advisory lock (pg_advisory_lock) is kept across statements, COMMITs and tries, to its "
           "pg_advisory_unlock or the session's end" if waiter.get("advisory") else
           f"it locks rows of {table or 'a table'} as it validates, to its COMMIT (a foreign key PostgreSQL checks "
           "row by row, FOR KEY SHARE, when the migration user lacks SELECT on either table or row security is on; "
           "or a CHECK calling a function that locks rows)" if locked_by_code else
           "VALIDATE CONSTRAINT takes SHARE UPDATE EXCLUSIVE, which no query waits for, but that session's request "
           "conflicts with it and queues the application's queries" if validating else
           "it keeps the rows it changed locked to its COMMIT" if waiter["rows"] else
           "its transaction keeps that lock to its COMMIT while the file's later statements run"
           if between or seen.held_earlier else "it works under a lock queries need (a table rewrite or scan)")
    exc.cause = HeldTooLong(
        f"{shown(exc.statement.text)} {held} application sessions waited {seconds_text(waiter['waited_s'])} "
        f"(pid {waiter['pid']}, application_name {sessions.named(waiter['application_name'])}, user "
        f"{output.role(waiter['user'])}{_on_rows(waiter, locked_by_code)}{asks}), past the try's "
        f"{seconds_text(bound)}: {why}, " + ("and it COMMITTED (autocommit) before the runner could end it"
                                            if getattr(exc.cause, "committed", False) else
                                            f"so the runner ended {'the try' if between else 'it'}"))
    accept = f"accept it with `-- accept-rewrite: {table or 'the table'}` and deploy in a quiet window"
    if waiter.get("advisory"):
        exc.todo = ("not retried (a retry would keep the lock): take it with pg_advisory_xact_lock in the transaction "
                    "that needs it, or release it before the long statement")
    elif locked_by_code:
        exc.todo = ("not retried (it would hold the rows as long again): for a foreign key, grant the migration user "
                    "SELECT on both tables (PostgreSQL then checks it in one query, locking no row); for a CHECK, take "
                    "the row locks out of its function; or validate in a quiet window")
    elif validating:  # (already the safe pattern: its own file, a lock no query takes)
        exc.todo = (f"not retried (ended again while that request waits): VALIDATE CONSTRAINT in its own file is "
                    f"already the safe pattern; let pid {waiter['pid']}'s request (another deploy's DDL, a "
                    f"maintenance job) finish first, or end it (SELECT pg_cancel_backend({waiter['pid']})), then run "
                    "again")
    elif waiter["rows"]:
        exc.todo = ("not retried (it would hold the rows as long again): change many rows of a live table in "
                    "committed batches, `-- backfill: batch` before a bounded UPDATE/DELETE in a "
                    "`-- transactional: false` file (docs/migration-files.md), or deploy in a quiet window")
    elif between or seen.held_earlier:
        exc.todo = ("not retried (it would hold the lock as long again): take that lock in a file of its own (a short "
                    "transaction) and do the long work (a data load, a slow statement) in another, or " + accept)
    else:
        exc.todo = ("not retried (it would hold the lock as long again): rewrite it with the safe pattern "
                    "(docs/safety-and-exit-codes.md, Rewrites refused at deploy time) or " + accept)
    if not exc.transactional and exc.done:  # a rerun starts the file over: what committed runs again
        exc.todo += "; a rerun runs the file from its first statement: make what COMMITTED safe to re-run first"


def _on_rows(waiter: dict, locked_by_code: bool) -> str:
    if not waiter["rows"]:
        return ""
    return ", on rows it locked" if locked_by_code else ", on rows it changed"
