"""The SQL side: `sql/*.sql` files applied through yoyo-migrations, used as a library.

yoyo does the ordering, the transactions, the bookkeeping (`_yoyo_migration`) and the lock.
This module adds what a DBA and an operator need around it: files checked before anything
runs, read-only connections for `plan` and `status` (yoyo's `get_backend` creates its lock
table, so they never call it), and every driver error turned into one line that names the
file or the server and says what to do.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from migrator import checksums, pg_lock, whoami
from migrator.errors import DRIFT, USAGE, MigratorError
from migrator.settings import DdlLimits, Env, PostgresTarget

MIGRATION_TABLE = "_yoyo_migration"
FILE_NAME = re.compile(r"^(?P<number>\d+)_(?P<name>[a-z0-9_]+)$")
# application_name names this runner (host:pid), so a lock timeout can say who holds the lock.
CONNECT_PARAMS = {"connect_timeout": "10", "application_name": f"hcm-db-migrations {socket.gethostname()}:{os.getpid()}"[:63]}
READ_ONLY = "-c default_transaction_read_only=on"
# A migration whose client died (SIGKILL) is cancelled within seconds, releasing its locks (PostgreSQL 14+).
CLIENT_CHECK = "-c client_connection_check_interval=2s"


@dataclass
class MigrationState:
    id: str
    path: Path | None
    applied_at: datetime | None
    changed: bool = False  # applied, and the file differs from what was applied

    @property
    def state(self) -> str:
        if self.path is None:
            return "applied, file missing"
        if self.changed:
            return "applied, CHANGED since"
        return "applied" if self.applied_at else "pending"


# --- the files ---------------------------------------------------------------------------


def read_migrations(sql_dir: Path, *, load: bool = True):
    """yoyo's MigrationList for `sql_dir`, after checking every file can be run as it is.

    With load=False the files are checked for encoding and numbering but not parsed (status
    needs no more); `load()` parses the ones a command will run.
    """
    from yoyo import read_migrations as yoyo_read
    from yoyo.exceptions import MigrationConflict

    if not sql_dir.is_dir():
        raise MigratorError(f"migrations folder {sql_dir} not found; run from the project root or pass --sql-dir", USAGE)
    files = sorted(p for p in sql_dir.glob("*.sql") if not p.name.endswith(".rollback.sql"))
    numbers: dict[str, Path] = {}
    for path in files:
        _read_text(path)
        match = FILE_NAME.match(path.stem)
        if match:
            number = match.group("number")
            if number in numbers:
                raise MigratorError(
                    f"{numbers[number]} and {path} share the number {number}; "
                    "renumber one (`runner.py sql new` picks the next free number)",
                    USAGE,
                )
            numbers[number] = path
    try:
        migrations = yoyo_read(str(sql_dir))
    except MigrationConflict as exc:
        raise MigratorError(f"two migrations in {sql_dir} have the id {exc}; rename one", USAGE)
    if load:
        load_migrations(migrations)
    return migrations


def load_migrations(migrations) -> None:
    """Parse (yoyo's load), refuse files without a statement, and add the checksum step; once each."""
    from yoyo.exceptions import BadMigration

    for migration in migrations:
        if getattr(migration, "hcm_ready", False):
            continue
        try:
            migration.load()
        except BadMigration as exc:
            raise MigratorError(f"{migration.path}: {exc}", USAGE)
        if not migration.steps:
            raise MigratorError(f"{migration.path} holds no SQL statement; add its SQL or delete the file", USAGE)
        checksums.add_step(migration)
        migration.hcm_ready = True


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise MigratorError(f"{path} cannot be read ({exc.strerror or exc}); fix the file or its permissions", USAGE)
    except UnicodeDecodeError as exc:
        raise MigratorError(
            f"{path} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8", USAGE
        )


def _statements(text: str) -> list[str]:
    import sqlparse

    return [s for s in sqlparse.split(sqlparse.format(text, strip_comments=True)) if s.strip()]


def rollback_path(migration) -> Path:
    return Path(migration.path).with_suffix(".rollback.sql")


def is_transactional(migration) -> bool:
    return migration.use_transactions


# --- connections -------------------------------------------------------------------------


def resolve_target(target: PostgresTarget, env: Env) -> PostgresTarget:
    """The concrete target: starts the local development database when nothing is configured."""
    if target.local_dev:
        from migrator import devdb

        return devdb.ensure_running(env)
    return target


def _connection_url(target: PostgresTarget, read_only: bool, limits: DdlLimits | None) -> str:
    params = {**CONNECT_PARAMS, **target.params}
    settings = [params.get("options", ""), CLIENT_CHECK]
    if read_only:
        settings.append(READ_ONLY)
    if limits:
        settings.append(f"-c lock_timeout={limits.lock_timeout} -c statement_timeout={limits.statement_timeout}")
    params["options"] = " ".join(s for s in settings if s)
    return PostgresTarget(
        host=target.host, port=target.port, dbname=target.dbname, user=target.user,
        password=target.password, params=params,
    ).url


@functools.cache
def _backend_class():
    """yoyo's PostgreSQL backend, with one connection per run instead of one more per migration.

    yoyo's apply_one/rollback_one run each migration on `self.copy()`, a new connection (about a
    quarter of its time per migration here). Overriding `copy` to lend the run's own connection
    keeps yoyo's code path, its transactions and its bookkeeping unchanged. Each migration still
    runs in its own transaction, and the session-level advisory lock stays on the one connection.
    """
    from yoyo.backends.core.postgresql import PostgresqlBackend

    class OneConnectionBackend(PostgresqlBackend):
        def copy(self):
            borrowed = object.__new__(_Borrowed)
            borrowed.__dict__.update(self.__dict__)
            borrowed._in_transaction = False
            return borrowed

        def get_log_data(self, migration=None, operation="apply"):
            # yoyo's own version calls getpass.getuser(), which fails where the Job runs (a uid
            # without a passwd entry) after the migration has committed; the rest is yoyo's.
            from datetime import datetime, timezone

            return {
                "id": str(uuid.uuid1()),
                "migration_hash": migration.hash if migration else None,
                "migration_id": migration.id if migration else None,
                "operation": operation,
                "username": whoami.user(),
                "hostname": _fqdn(),
                "created_at_utc": datetime.now(timezone.utc).replace(tzinfo=None),
            }

    class _Borrowed(OneConnectionBackend):
        def __exit__(self, exc_type, exc_value, traceback):
            pass  # the connection belongs to the backend it was lent by

    return OneConnectionBackend


@functools.cache
def _fqdn() -> str:
    return socket.getfqdn()


@contextmanager
def connect(target: PostgresTarget, *, read_only: bool, limits: DdlLimits | None = None) -> Iterator:
    """A yoyo backend. Read-only ones skip yoyo's init (it creates tables) and are read-only
    on the server too, so `plan` and `status` cannot write even by mistake. `limits` are set on
    the run's one connection, so every migration runs under them."""
    import psycopg2
    from yoyo.connections import parse_uri

    url = _connection_url(target, read_only, limits)
    try:
        backend = _backend_class()(parse_uri(url), MIGRATION_TABLE)
        if not read_only:
            backend.init_database()  # what yoyo's get_backend does: its lock table, a DDL probe
    except psycopg2.Error as exc:  # OperationalError, or ProgrammingError for a bad DSN option
        raise connection_error(exc, target)
    try:
        if not read_only:
            _check_bookkeeping(backend, target)
        yield backend
    finally:
        backend.connection.close()


def _check_bookkeeping(backend, target: PostgresTarget) -> None:
    """yoyo ignores a failure to create its lock table and later fails obscurely; say why instead."""
    exists = backend.execute("SELECT to_regclass(:t) IS NOT NULL, current_schema(), current_user", {"t": backend.lock_table})
    has_table, schema, user = exists.fetchone()
    if not has_table:
        raise MigratorError(
            f"user {user} cannot create tables in schema {schema} on {target.where} (yoyo's bookkeeping needs it); "
            f"run GRANT CREATE ON SCHEMA {schema} TO {user}, or connect as the schema's owner"
        )


def connection_error(exc: Exception, target: PostgresTarget) -> MigratorError:
    text = str(exc).strip()
    where = target.where
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        what = f"authentication failed for user {target.user}; check the user and password ({_origin(target)})"
    elif "does not exist" in lowered and "database" in lowered:
        what = f"database {target.dbname} does not exist; create it (createdb {target.dbname}) or fix the database name ({_origin(target)})"
    elif "could not translate host name" in lowered or "name or service not known" in lowered:
        what = f"host {target.host} cannot be resolved; check the host name ({_origin(target)})"
    elif "connection refused" in lowered or "no such file or directory" in lowered:
        what = f"connection refused; is the server running, and are host and port right? ({_origin(target)})"
    elif "unrecognized configuration parameter" in lowered and "client_connection_check_interval" in lowered:
        what = "the server is older than PostgreSQL 14, which the runner needs (it cancels a dead runner's work)"
    elif "timeout expired" in lowered:
        what = "no answer within 10 s; check the host, port, firewall or security group"
    elif "root certificate file" in lowered or "certificate verify failed" in lowered:
        what = f"TLS verification failed ({text.splitlines()[-1].strip()}); check the CA bundle"
    else:
        what = text.splitlines()[-1].strip() if text else exc.__class__.__name__
    return MigratorError(f"cannot connect to PostgreSQL at {where}: {what}")


def _origin(target: PostgresTarget) -> str:
    origins = sorted(set(target.sources.values()) - {"default"})
    return "settings from " + (", ".join(origins) if origins else "defaults")


def _pg_message(exc) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return primary or str(exc).strip().splitlines()[0]


# --- reading the state, without writing ---------------------------------------------------


def bookkeeping(backend) -> tuple[dict[str, datetime], dict[str, str]]:
    """(id -> applied_at, id -> recorded sha256) in one query, read-only (yoyo's own reader may
    create its tables). A checksum without an applied_at is a migration committed but not marked."""
    has_marks, has_sums = backend.execute(
        "SELECT to_regclass(:marks) IS NOT NULL, to_regclass(:sums) IS NOT NULL",
        {"marks": MIGRATION_TABLE, "sums": checksums.TABLE},
    ).fetchone()
    if has_marks and has_sums:
        sql = (f'SELECT coalesce(m.migration_id, c.migration_id), m.applied_at_utc, c.sha256 FROM "{MIGRATION_TABLE}" m '
               f"FULL JOIN {checksums.TABLE} c ON c.migration_id = m.migration_id ORDER BY m.applied_at_utc")
    elif has_marks:
        sql = f'SELECT migration_id, applied_at_utc, NULL FROM "{MIGRATION_TABLE}" ORDER BY applied_at_utc'
    elif has_sums:
        sql = f"SELECT migration_id, NULL, sha256 FROM {checksums.TABLE}"
    else:
        return {}, {}
    rows = backend.execute(sql).fetchall()
    return ({i: at for i, at, _ in rows if at is not None}, {i: sha.strip() for i, _, sha in rows if sha is not None})


def applied_ids(backend) -> dict[str, datetime]:
    return bookkeeping(backend)[0]


def status(backend, migrations) -> list[MigrationState]:
    applied, sums = bookkeeping(backend)
    changed = {d.id for d in checksums.drifted(migrations, set(applied), sums)}
    states = [MigrationState(m.id, Path(m.path), applied.get(m.id), m.id in changed) for m in migrations]
    on_disk = {m.id for m in migrations}
    states += [MigrationState(id_, None, at) for id_, at in applied.items() if id_ not in on_disk]
    return states


def pending(backend, migrations):
    applied = applied_ids(backend)
    todo = [m for m in migrations if m.id not in applied]
    load_migrations(todo)
    return todo


def plan_text(migration) -> str:
    """The SQL of one migration exactly as psql would run it inside the runner's transaction."""
    body = Path(migration.path).read_text(encoding="utf-8").rstrip("\n")
    header = f"-- {migration.path}"
    if not is_transactional(migration):
        return f"{header} (not transactional)\n{body}\n"
    return f"{header}\nBEGIN;\n{body}\nCOMMIT;\n"


# --- changing the database ---------------------------------------------------------------


@contextmanager
def locked(backend, target: PostgresTarget, timeout: float, notify) -> Iterator[None]:
    """The crash-safe migration lock (pg_lock), with the checksum table ready under it."""
    with pg_lock.held(backend, target, timeout, notify):
        checksums.ensure_table(backend)
        yield


def reconcile(backend, migrations, notify) -> list:
    """Under the lock, before migrating: repair and record what earlier runs left, return the drift.

    A checksum without yoyo's mark is a migration that committed before its runner died: mark it.
    Applied migrations without a checksum predate drift detection: record today's files.
    """
    from yoyo.migrations import MigrationList

    marks, sums = bookkeeping(backend)
    applied = set(marks)
    committed = [m for m in migrations if m.id in sums and m.id not in applied and is_transactional(m)]
    if committed:
        backend.mark_migrations(MigrationList(committed))
        applied |= {m.id for m in committed}
        notify(f"note: marked {', '.join(m.id for m in committed)} applied: committed by a runner that died before marking it")
    recorded_now = checksums.record_missing(backend, migrations, applied, sums)
    if recorded_now:
        notify(f"note: recorded the checksums of {len(recorded_now)} migration(s) applied before drift detection")
    return checksums.drifted(migrations, applied, sums)


def drift_error(drift: list, target: PostgresTarget, verb: str = "migrate refuses to run") -> MigratorError:
    files = ", ".join(str(d.path) for d in drift)
    ids = " ".join(d.id for d in drift)
    return MigratorError(
        f"{verb}: {files} changed since applied to {target.where}; restore the applied version, or after review "
        f"run `runner.py sql accept-changes {ids}` (new changes belong in a new migration)",
        DRIFT,
    )


def invalid_indexes(backend) -> list[tuple[str, str, str]]:
    """(schema, index, table) of indexes left INVALID, e.g. by a failed CREATE INDEX CONCURRENTLY."""
    return backend.execute(
        """
        SELECT n.nspname, c.relname, t.relname FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        ORDER BY 1, 2
        """
    ).fetchall()


def apply(backend, target: PostgresTarget, migrations) -> Iterator[tuple[object, float]]:
    """Apply each pending migration in its own transaction; yield (migration, seconds) as each lands."""
    from yoyo.migrations import MigrationList

    for migration in backend.to_apply(migrations):
        started = time.perf_counter()
        try:
            backend.apply_migrations(MigrationList([migration]))
        except backend.DatabaseError as exc:
            raise _migration_error(exc, migration, target, "apply")
        yield migration, time.perf_counter() - started


def select_rollback(backend, migrations, *, count: int | None, to: str | None, all_: bool) -> list:
    """The applied migrations to roll back, newest first; checks their rollback files first."""
    load_migrations(migrations)
    applied = list(backend.to_rollback(migrations))
    if to is not None:
        ids = [m.id for m in applied]
        if to not in ids:
            known = ", ".join(reversed(ids)) or "none"
            raise MigratorError(f"--to {to}: no applied migration has that id (applied: {known})", USAGE)
        selected = applied[: ids.index(to)]
    elif all_:
        selected = applied
    else:
        selected = applied[: count if count is not None else 1]
    for migration in selected:
        path = rollback_path(migration)
        if not path.is_file():
            raise MigratorError(
                f"{path} not found: {migration.id} cannot be rolled back; write its rollback file first (nothing was rolled back)"
            )
        if not _statements(_read_text(path)):
            raise MigratorError(f"{path} holds no SQL statement; write the rollback first (nothing was rolled back)")
    return selected


def rollback(backend, target: PostgresTarget, selected) -> Iterator[tuple[object, float]]:
    from yoyo.migrations import MigrationList

    for migration in selected:
        started = time.perf_counter()
        try:
            backend.rollback_migrations(MigrationList([migration]))
        except backend.DatabaseError as exc:
            raise _migration_error(exc, migration, target, "roll back", rollback_path(migration))
        yield migration, time.perf_counter() - started


def select_by_id(migrations, ids: list[str]) -> list:
    by_id = {m.id: m for m in migrations}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise MigratorError(f"unknown migration id {', '.join(unknown)}; `runner.py status` lists the ids", USAGE)
    return [by_id[i] for i in ids]


def mark(backend, selected) -> None:
    from yoyo.migrations import MigrationList

    backend.mark_migrations(MigrationList(selected))
    checksums.accept(backend, selected)


def _migration_error(exc, migration, target: PostgresTarget, verb: str, path: Path | None = None) -> MigratorError:
    path = path or Path(migration.path)
    line = _error_line(exc, path)
    at = f"{path}:{line}" if line else str(path)
    undone = ("nothing of it was applied" if is_transactional(migration)
              else "it is not transactional: `runner.py status` shows what it left, e.g. an INVALID index")
    todo = TIMEOUT_HINTS.get(getattr(exc, "pgcode", None), "fix the file and run again")
    return MigratorError(f"{at}: failed to {verb} on {target.where}: {_pg_message(exc)} ({undone}); {todo}")


TIMEOUT_HINTS = {
    "55P03": "it waited longer than lock_timeout for a lock that other sessions hold: "
             "run it when traffic is lower, or raise --ddl-lock-timeout",
    "57014": "it ran longer than statement_timeout: raise --statement-timeout, or make the migration cheaper",
}


def _error_line(exc, path: Path) -> int | None:
    """The file's line of the failing statement (and of the error position inside it)."""
    query = getattr(getattr(exc, "cursor", None), "query", None)
    if not query:
        return None
    statement = query.decode("utf-8", "replace").strip() if isinstance(query, bytes) else str(query).strip()
    text = path.read_text(encoding="utf-8")
    start = text.find(statement)
    if start < 0:
        return None
    position = getattr(getattr(exc, "diag", None), "statement_position", None)
    offset = start + (int(position) - 1 if position else 0)
    return text.count("\n", 0, offset) + 1


def break_lock(backend) -> None:
    backend.break_lock()


# --- new files ---------------------------------------------------------------------------

NEW_TEMPLATE = """\
-- {id}
--
-- What this migration does and why, for the DBA who reviews it.
-- Runs in one transaction; for CREATE INDEX CONCURRENTLY add the directive
-- `-- transactional: false` as the first line.
-- Rolled back by {id}.rollback.sql.

"""

NEW_ROLLBACK_TEMPLATE = """\
-- Rollback of {id}: undoes it exactly, newest change first.

"""


def new(sql_dir: Path, name: str) -> tuple[Path, Path]:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise MigratorError(f"migration name {name!r} has no letters or digits; e.g. `make new NAME=add_report_status`", USAGE)
    if not sql_dir.is_dir():
        raise MigratorError(f"migrations folder {sql_dir} not found; run from the project root", USAGE)
    numbers = [int(m.group("number")) for p in sql_dir.glob("*.sql") if (m := FILE_NAME.match(p.name.split(".")[0]))]
    migration_id = f"{max(numbers, default=0) + 1:04d}_{slug}"
    path = sql_dir / f"{migration_id}.sql"
    rollback = sql_dir / f"{migration_id}.rollback.sql"
    path.write_text(NEW_TEMPLATE.format(id=migration_id), encoding="utf-8")
    rollback.write_text(NEW_ROLLBACK_TEMPLATE.format(id=migration_id), encoding="utf-8")
    return path, rollback
