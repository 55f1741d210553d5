"""Drift detection: the sha256 of each applied file, so an edited applied file is noticed.

yoyo keys migrations by a hash of their id, not their content. Here each migration's step ends by
recording its file's sha256 (line endings normalised) in `_hcm_migration_checksum`, inside the
migration's own transaction: the checksum exists exactly when the migration committed. That also
repairs the one gap yoyo leaves: it marks a migration applied in a second transaction after the
migration's commit, so a runner killed in between leaves a committed migration unmarked; a checksum
without a mark means "committed: mark it".

The record is written in the migration's session, after the file's own SQL: it names its schema and
first undoes what the file may have set (role, timeouts, read-only default), so it works whatever
the file did. `_hcm_migration_failure` (created on the first non-transactional run) keeps what a
non-transactional file (or rollback) has committed so far, written on the run's own connection
before it starts and as each statement commits, so a failure, SIGTERM or SIGKILL at any point
leaves `status` able to say what is in the database.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from pathlib import Path

from migrator import source_files

TABLE = "_hcm_migration_checksum"
FAILURES = "_hcm_migration_failure"
ROLLBACK = "rollback: "  # how a failure record of a rollback (the migration stays applied) begins
CREATE = """
CREATE TABLE IF NOT EXISTS {schema}.{table} (
    migration_id VARCHAR(255) PRIMARY KEY,
    sha256       CHAR(64)     NOT NULL,
    recorded_at  TIMESTAMP    NOT NULL DEFAULT (pg_catalog.now() AT TIME ZONE 'utc')
)"""
UPSERT = ("INSERT INTO {schema}.{table} (migration_id, sha256) VALUES (%s, %s) ON CONFLICT (migration_id) "
          "DO UPDATE SET sha256 = EXCLUDED.sha256, recorded_at = pg_catalog.now() AT TIME ZONE 'utc'")
# OPERATOR(pg_catalog.=): this runs in the migration's session too, whose search_path may hold a schema another
# role can CREATE in (an `=` on varchar there would beat pg_catalog's text = text).
DELETE = "DELETE FROM {schema}.{table} WHERE migration_id::pg_catalog.text OPERATOR(pg_catalog.=) %s::pg_catalog.text"
# What a migration's SQL may have changed in its session that would stop the record being written.
# ROLE NONE, not RESET ROLE: RESET returns to a database or role default `role`, which may lack the rights.
RESET_SESSION = ("RESET SESSION AUTHORIZATION; SET ROLE NONE; RESET statement_timeout; RESET lock_timeout; "
                 "RESET default_transaction_read_only")
CREATE_FAILURES = """
CREATE TABLE IF NOT EXISTS {schema}.{table} (
    migration_id VARCHAR(255) PRIMARY KEY,
    failed_at    TIMESTAMP    NOT NULL DEFAULT (pg_catalog.now() AT TIME ZONE 'utc'),
    what         TEXT         NOT NULL
)"""
UPSERT_FAILURE = ("INSERT INTO {schema}.{table} (migration_id, what) VALUES (%s, %s) ON CONFLICT (migration_id) "
                  "DO UPDATE SET what = EXCLUDED.what, failed_at = pg_catalog.now() AT TIME ZONE 'utc'")


def _sql(template: str, schema: str, table: str = TABLE):
    from psycopg2 import sql

    return sql.SQL(template).format(schema=sql.Identifier(schema), table=sql.Identifier(table))


def file_sha256(path: Path) -> str:
    text = source_files.read_bytes(path).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return hashlib.sha256(text).hexdigest()


# A transactional file's session -> the token the runner SET LOCAL as its try began (running.mark_try): a file whose own
# text ended that transaction (ROLLBACK AND CHAIN, ROLLBACK; BEGIN, unseen by the text checks) left the session in
# another one, without it, which the record refuses (TransactionChanged) in the round trip it makes anyway.
TRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
TRY_SETTING = "hcm_migrator.try"


class TransactionChanged(Exception):
    """The migration's session is no longer in the transaction the runner opened for the file (nothing recorded)."""


class SearchPathChanged(Exception):
    """A tenant's migration left its session on another search_path than the runner set (nothing recorded)."""

    def __init__(self, found: str):
        super().__init__(found)
        self.found = found


def record(connection, schema: str, migration_id: str, sha: str | None, search_path: str | None = None) -> bool:
    """In the migration's session, after its SQL, in its transaction: the file's checksum (None: remove
    it, for a rollback). False when the file made its transaction read-only (SET TRANSACTION READ ONLY):
    then nothing could be written there, and the caller records it after the commit instead. With
    `search_path` (a tenant's run: the path the runner set), SearchPathChanged if the session's differs;
    TransactionChanged if the session is no longer in the transaction the try began in (TRIES)."""
    expected = TRIES.pop(connection, None)
    with connection.cursor() as cursor:
        cursor.execute(RESET_SESSION + "; SELECT pg_catalog.current_setting('transaction_read_only'), "
                                       "pg_catalog.current_setting('search_path'), "
                                       f"pg_catalog.current_setting('{TRY_SETTING}', true)")
        read_only, path, mark = cursor.fetchone()
        if expected is not None and mark != expected:
            raise TransactionChanged(mark)
        if search_path is not None and path != search_path:
            raise SearchPathChanged(path)
        # The file is done: what follows in its session (the record, a tenant's check of what it made) resolves
        # operators and functions in pg_catalog alone, whatever others planted in the migration's schemas.
        cursor.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog', false)")
        if read_only == "on":
            return False
        if sha is None:
            cursor.execute(_sql(DELETE, schema), (migration_id,))
        else:
            cursor.execute(_sql(UPSERT, schema), (migration_id, sha))
    return True


def record_after_commit(backend, migration_id: str, sha: str | None) -> None:
    """On the run's own connection, for a read-only migration (which could not record itself)."""
    if sha is not None:
        _upsert(backend, migration_id, sha)
        return
    with backend.connection.cursor() as cursor:
        cursor.execute(_sql(DELETE, backend.bookkeeping_schema), (migration_id,))


def ensure_table(backend) -> None:
    with backend.connection.cursor() as cursor:
        create_table(cursor, CREATE, backend.bookkeeping_schema, TABLE)


def create_table(cursor, template: str, schema: str, table: str) -> None:
    """A bookkeeping table, created when missing and verified before use (trust.py)."""
    from migrator import trust

    trust.ensure_table(cursor, schema, table, lambda: cursor.execute(_sql(template, schema, table)))


def _upsert(backend, migration_id: str, sha: str) -> None:
    with backend.connection.cursor() as cursor:
        cursor.execute(_sql(UPSERT, backend.bookkeeping_schema), (migration_id, sha))


def record_failure(backend, migration_id: str, what: str) -> None:
    """On the run's own connection (autocommit, so it stays whatever happens next): what a
    non-transactional migration or rollback has committed so far, or left committed when it failed."""
    with backend.connection.cursor() as cursor:
        if not backend.failures_table_ready:
            create_table(cursor, CREATE_FAILURES, backend.bookkeeping_schema, FAILURES)
            backend.failures_table_ready = True
        cursor.execute(_sql(UPSERT_FAILURE, backend.bookkeeping_schema, FAILURES), (migration_id, what))


def clear_failures(backend, ids: list[str]) -> None:
    from migrator import trust

    with backend.connection.cursor() as cursor:
        exists = trust.present(cursor, backend.bookkeeping_schema, FAILURES) if ids else False
    if exists:
        backend.failures_table_ready = True
        with backend.transaction(), backend.connection.cursor() as cursor:
            cursor.execute(_sql("DELETE FROM {schema}.{table} WHERE migration_id::pg_catalog.text "
                                "OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.text[])",
                                backend.bookkeeping_schema, FAILURES), (list(ids),))


@dataclass
class Drift:
    id: str
    path: Path
    recorded: str
    current: str


def drifted(migrations, applied: set[str], sums: dict[str, str]) -> list[Drift]:
    """Applied migrations whose file no longer matches what was applied."""
    found = []
    for migration in migrations:
        if migration.id in applied and migration.id in sums:
            current = file_sha256(Path(migration.path))
            if current != sums[migration.id]:
                found.append(Drift(migration.id, Path(migration.path), sums[migration.id], current))
    return found


def record_missing(backend, migrations, applied: set[str], sums: dict[str, str]) -> list[str]:
    """Checksums for migrations applied before drift detection existed (taken from today's files)."""
    missing = [m for m in migrations if m.id in applied and m.id not in sums]
    if missing:
        with backend.transaction():
            for migration in missing:
                _upsert(backend, migration.id, file_sha256(Path(migration.path)))
    return [m.id for m in missing]


def accept(backend, selected) -> list[Drift]:
    """Record the files' current content as applied (after a DBA reviewed the change)."""
    before = dict(backend.execute(f"SELECT migration_id, sha256 FROM {backend.qualified(TABLE)}").fetchall())
    changes = [Drift(m.id, Path(m.path), (before.get(m.id) or "").strip(), file_sha256(Path(m.path))) for m in selected]
    with backend.transaction():
        for change in changes:
            _upsert(backend, change.id, change.current)
    return changes
