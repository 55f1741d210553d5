"""The migration lock's row: where a history's lives, whether its runner is alive, and who it proves holds the lock.

A runner holding the advisory lock writes its row (yoyo_lock's, or a Flyway history's in _hcm_history_lock) from
the same server session, in a table only the migration role may write: the row carries that session's server pid
and backend_start, which pg_locks and pg_stat_activity tie to the advisory lock's holder (issue 23, attack23r 3:
an application_name is any session's own to choose, and a dead runner's row named one). Rows of older runners
(no such columns) prove nothing; their layout is brought up to date by a user who owns the table (_proof_column).
"""

from __future__ import annotations

import re

from migrator import output
from migrator.bookkeeping_lock import LOCK_KEY, _hashed, lock_key, prepared
from migrator.targets import PostgresTarget


def run_key(backend, target: PostgresTarget) -> int:
    """The advisory key of the history `target`'s run migrates (see lock_key)."""
    return lock_key(target.schema or backend.bookkeeping_schema, target.history)


def lock_slot(history: str | None) -> int:
    """The history's row in the schema's yoyo_lock (whose key is its `locked` column): 1, yoyo's own, for the
    runner's own history (a bare `yoyo` CLI sees it); one per Flyway history, so services never share a row."""
    return 1 if not history else 2 + _hashed(f"hcmdbmig-row:{history}") % (2**31 - 3)


# The proof columns: the writing session's name (this runner's "host:pid", set by the runner), filled in by a column
# default so that yoyo's own INSERT writes it, and its server pid and backend_start, written by the runner's INSERT.
PROOF_COLUMN = "runner"
PROOF_COLUMNS = ("runner text DEFAULT pg_catalog.current_setting('application_name')", "backend_pid integer",
                 "backend_start timestamptz")
# The writing session's own server pid and backend_start, as the runner's INSERT gives them.
SESSION_VALUES = ("pg_catalog.pg_backend_pid(), (SELECT a.backend_start FROM pg_catalog.pg_stat_activity a "
                  "WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())")

# A Flyway history's lock row lives in a table of the runner's own, never in yoyo_lock: an older runner (before
# one lock per history) reads any yoyo_lock row as a runner's lock and its break-lock deletes them all. The
# runner's own history keeps yoyo_lock's row 1 (a bare `yoyo` CLI sees it). Columns as yoyo_lock's, with the proof.
HISTORY_LOCKS = "_hcm_history_lock"
CREATE_HISTORY_LOCKS = """
CREATE TABLE IF NOT EXISTS {schema}.{table} (
    locked INTEGER   PRIMARY KEY,
    ctime  TIMESTAMP,
    pid    INTEGER   NOT NULL,
    """ + ",\n    ".join(PROOF_COLUMNS) + "\n)"


def lock_table(backend, history: str | None, create: bool = False) -> str | None:
    """The table holding `history`'s lock row, quoted; None when a history's is not there (and not `create`)."""
    if not history:
        return backend.lock_table_quoted
    table = backend.qualified(HISTORY_LOCKS)
    if create:
        from migrator import checksums

        with backend.transaction(), backend.connection.cursor() as cursor:
            checksums.create_table(cursor, CREATE_HISTORY_LOCKS, backend.bookkeeping_schema, HISTORY_LOCKS)
    elif backend.execute("SELECT pg_catalog.to_regclass(:t) IS NULL", {"t": table}).fetchone()[0]:
        return None
    return table


# A lock row's runner is alive while the server session that wrote it is (its pid and backend_start, as the row has
# them) and still holds the run's advisory lock, which it took before writing the row: pg_locks shows every
# session's, where another role's backend_start is hidden (a dead runner's pid reused by an app's session was
# "alive", attack23t 8). An older runner's row (no
# such columns): while a session of it (this runner's application_name ends in host:pid, see postgres/connection.py)
# that connected before the row was written is still there (pods of an Indexed Job share pids: a later one is not
# it), of a role that could have written the row (INSERT on the lock table), named exactly as the row's runner
# column says where it has one. Such a row is waited for, never broken.
_ALIVE = """
SELECT count(*) FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND datname = current_database() AND CASE WHEN :bpid IS NOT NULL THEN
  pid = CAST(:bpid AS integer)
  AND (backend_start IS NULL OR backend_start = CAST(:bstart AS timestamptz))
  AND EXISTS (SELECT FROM pg_locks l WHERE l.pid = pg_stat_activity.pid AND l.locktype = 'advisory' AND l.granted
              AND l.objsubid = 1 AND l.classid = CAST(:high AS oid) AND l.objid = CAST(:low AS oid)
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
  ELSE application_name LIKE 'hcm-db-migrations %%:' || :pid
  AND application_name = coalesce(CAST(:runner AS text), application_name)
  AND has_table_privilege(usesysid, to_regclass(:table), 'INSERT')
  AND backend_start <= (CAST(:ctime AS timestamp) AT TIME ZONE 'UTC') + interval '2 seconds' END
"""


def row_of(backend, target: PostgresTarget):
    """(pid, ctime, runner or None, table, server pid or None, backend_start or None) of the lock row in this
    history's slot, or None. (The proof columns read as the row's JSON: a table without them answers NULL.)"""
    table = lock_table(backend, target.history)
    if table is None:
        return None
    row = backend.execute(f"SELECT pid, ctime, to_jsonb(l) ->> '{PROOF_COLUMN}', to_jsonb(l) ->> 'backend_pid', "
                          f"to_jsonb(l) ->> 'backend_start' FROM {table} l WHERE locked = :slot",
                          {"slot": lock_slot(target.history)}).fetchone()
    return (*row[:3], table, *row[3:]) if row else None


def alive(backend, row, target: PostgresTarget) -> bool:
    pid, ctime, runner, table, backend_pid, backend_start = row
    key = run_key(backend, target)
    return bool(backend.execute(_ALIVE, {"pid": str(pid), "ctime": ctime, "runner": runner, "table": table,
                                         "bpid": backend_pid, "bstart": backend_start, "high": key >> 32,
                                         "low": key & 0xFFFF_FFFF}).fetchone()[0])


def live_row(backend, target: PostgresTarget) -> str | None:
    """The lock row a run would wait for as a live runner's, in words (doctor: its advisory lock may be free); None
    when there is none, its runner is gone, or the user may not read the table."""
    table = lock_table(backend, target.history)
    if table is None or not backend.execute(  # (to_regclass refuses a schema without USAGE)
            "SELECT CASE WHEN has_schema_privilege(to_regnamespace(quote_ident(:s)), 'USAGE') THEN "
            "to_regclass(:t) IS NOT NULL AND has_table_privilege(to_regclass(:t), 'SELECT') END",
            {"s": backend.bookkeeping_schema, "t": table}).fetchone()[0]:
        return None
    row = row_of(backend, target)
    if not row or not alive(backend, row, target):
        return None
    runner = f", runner {output.quoted(row[2])}" if row[2] else ""
    return f"its lock row (pid {row[0]}, since {row[1]:%Y-%m-%d %H:%M:%S} UTC{runner}) names a runner still connected"


# Which proof columns the table has, and whether the user may add the others (it owns the table).
_HAS_PROOF = """
SELECT ARRAY(SELECT attname::text FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass(:t)::pg_catalog.oid
             AND attname IN ('runner', 'backend_pid', 'backend_start') AND NOT attisdropped),
       pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class
                               WHERE oid = pg_catalog.to_regclass(:t)::pg_catalog.oid), 'USAGE')
"""


def proof_column(backend, table: str | None = None) -> bool:
    """The lock table's proof columns, added when missing and the user owns the table (an older runner's layout);
    whether they are all there (else the row is written without them: unproven)."""
    table = table or backend.lock_table_quoted
    present, owner = backend.execute(_HAS_PROOF, {"t": table}).fetchone()
    missing = [column for column in PROOF_COLUMNS if column.split()[0] not in present]
    if missing and owner:
        with backend.transaction():
            backend.execute(f"ALTER TABLE {table} " + ", ".join(f"ADD COLUMN IF NOT EXISTS {c}" for c in missing))
        return True
    return not missing


def holder(backend, key: int = LOCK_KEY) -> str:
    """Who holds the advisory lock. Any role that can connect may take it and call itself a runner (its
    application_name is its own to choose), so host and pid are named only when proven: a runner holding it
    writes its lock row from the same server session (its pid and backend_start, as pg_locks and pg_stat_activity
    have them for the holder), in a table only the migration role can write, and the holder's role may write it;
    the host and pid named are the row's. Else the session is named as the server knows it, unverified."""
    row = backend.execute(
        """
        SELECT a.application_name, a.pid, a.usename, a.client_addr::text, a.backend_start, a.usesysid
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.classid = :high AND l.objid = :low
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        {"high": key >> 32, "low": key & 0xFFFF_FFFF},
    ).fetchone()
    if row is None:
        with backend.connection.cursor() as cursor:
            held = prepared(cursor, key)
        return f"held by {held}" if held else "holder unknown"
    app, backend_pid, user, client, since, role_id = row
    when = f"since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip() if since else "(since unknown)"
    proof = _proven(backend, backend_pid, since, role_id)
    proven = re.match(r"hcm-db-migrations (?P<host>\S+):(?P<pid>\d+)", proof or "")
    if proven:  # host and pid as the proof row has them (the session's own name is not evidence)
        return f"held by host {proven['host']} pid {proven['pid']} {when}"
    if since is None:  # pg_stat_activity hides another role's session (NULLs) from a user who is not a superuser
        return f"held by a session of another role (server pid {backend_pid}, user {output.role(user)}; unverified) {when}"
    said = f", calling itself {output.quoted(app)}" if app else ""
    return (f"held by an unverified session (server pid {backend_pid}, user {output.role(user)}, from "
            f"{client or 'local'}{said}: no runner's lock row proves it) {when}")


def advice(held: str) -> str:
    """What to do about the holder `holder` named: a runner its lock row proves is migrating; a session named by
    its server pid is not proven one (any role that can connect may take the lock)."""
    pid = re.search(r"server pid (\d+)", held)
    if pid:
        return (f"not proven a runner's: a run would wait for it (--lock-timeout); if it is not a runner's, end it: "
                f"SELECT pg_terminate_backend({pid[1]})")
    return "a runner is migrating now: a run would wait for it (--lock-timeout)"


def _proven(backend, backend_pid: int, since, role_id) -> str | None:
    """The runner named by a lock row written by the server session `backend_pid` that started at `since` (the
    advisory lock's holder), when that session's role may write the table; else None."""
    if since is None:
        return None
    for table in (backend.lock_table_quoted, backend.qualified(HISTORY_LOCKS)):
        readable = backend.execute("SELECT CASE WHEN to_regclass(:t) IS NULL THEN false ELSE "
                                   "has_table_privilege(to_regclass(:t), 'SELECT') END", {"t": table}).fetchone()[0]
        if not readable or len(backend.execute(_HAS_PROOF, {"t": table}).fetchone()[0]) < len(PROOF_COLUMNS):
            continue
        row = backend.execute(
            f"SELECT {PROOF_COLUMN} FROM {table} WHERE backend_pid = :pid AND backend_start = CAST(:since AS timestamptz) "
            "AND has_table_privilege(CAST(:role AS oid), to_regclass(:t), 'INSERT')",
            {"pid": backend_pid, "since": since, "role": role_id, "t": table}).fetchone()
        if row:
            return row[0]
    return None
