"""PostgreSQL checks over one read-only connection made by the runner's own connect()."""

from __future__ import annotations

import contextlib
import socket
import time

from migrator import checksums, pg_lock
from migrator.doctor import FAIL, OK, WARN, Check, DoctorReport, failed
from migrator.errors import MigratorError
from migrator.targets import PostgresTarget

MIN_VERSION = 140000  # client_connection_check_interval (a dead runner's work is cancelled)
REACH_TIMEOUT = 10.0
PRIVILEGES = """
SELECT current_user, n.nspname IS NOT NULL,
       coalesce(has_schema_privilege(n.oid, 'USAGE'), false), coalesce(has_schema_privilege(n.oid, 'CREATE'), false),
       has_function_privilege('pg_catalog.pg_try_advisory_lock(bigint)', 'EXECUTE')
       AND has_function_privilege('pg_catalog.pg_advisory_unlock(bigint)', 'EXECUTE')
FROM (SELECT :schema AS name) s LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = s.name
"""
TABLE_RIGHTS = """
SELECT to_regclass(:t) IS NOT NULL,
       coalesce(has_table_privilege(to_regclass(:t), 'SELECT') AND has_table_privilege(to_regclass(:t), 'INSERT')
                AND has_table_privilege(to_regclass(:t), 'DELETE'), false)
"""


def check(report: DoctorReport, target: PostgresTarget, sql_dir) -> None:
    from migrator import postgres

    if not _reachable(report, target):
        return
    with contextlib.ExitStack() as stack:
        try:
            backend = stack.enter_context(postgres.connect(target, read_only=True))
        except MigratorError as exc:
            report.add(failed("postgres login", str(exc)))
            return
        _server(report, backend, target)
        _privileges(report, backend, target)
        _migrations(report, backend, target, sql_dir)


def _reachable(report: DoctorReport, target: PostgresTarget) -> bool:
    """A plain socket to host:port first, so 'unreachable' and 'refused the login' are told apart."""
    host = target.host or target.params.get("host") or "localhost"
    port = target.port or 5432
    started = time.monotonic()
    try:
        if host.startswith("/"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(REACH_TIMEOUT)
                sock.connect(f"{host}/.s.PGSQL.{port}")
        else:
            socket.create_connection((host, port), timeout=REACH_TIMEOUT).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or exc.__class__.__name__)
        report.add(Check("postgres reachable", FAIL, f"cannot reach {host}:{port} ({reason})",
                         "check the host and port, that the server runs, and the network or security group"))
        return False
    report.add(Check("postgres reachable", OK, f"{host}:{port} answers ({(time.monotonic() - started) * 1000:.0f} ms)"))
    return True


def _server(report: DoctorReport, backend, target: PostgresTarget) -> None:
    user, version, number, encrypted, protocol = backend.execute(
        "SELECT current_user, current_setting('server_version'), current_setting('server_version_num')::int, "
        "coalesce(s.ssl, false), s.version FROM (SELECT 1) one "
        "LEFT JOIN pg_catalog.pg_stat_ssl s ON s.pid = pg_catalog.pg_backend_pid()").fetchone()
    report.add(Check("postgres login", OK, f"logged in to {target.where} as {user}"))
    if number < MIN_VERSION:
        report.add(Check("postgres version", FAIL, f"PostgreSQL {version} is older than 14, which the runner needs",
                         "upgrade the server to PostgreSQL 14 or later"))
    else:
        report.add(Check("postgres version", OK, f"PostgreSQL {version} (14 or later: supported)"))
    session = f"session encrypted ({protocol})" if encrypted else "session not encrypted"
    if encrypted or not target.host or target.host.startswith("/") or "verify" in target.tls or "local" in target.tls:
        report.add(Check("postgres tls", OK, f"{target.tls}; {session}"))
    else:
        report.add(Check("postgres tls", WARN, f"{target.tls}; {session}", "set CA_BUNDLE for verify-full"))


def _privileges(report: DoctorReport, backend, target: PostgresTarget) -> None:
    schema = backend.bookkeeping_schema
    user, exists, usage, create, advisory = backend.execute(PRIVILEGES, {"schema": schema}).fetchone()
    grant = f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {user}, or connect as the schema's owner"
    if not exists:
        report.add(Check("postgres schema", FAIL, f"schema {schema} does not exist in {target.where}",
                         f"CREATE SCHEMA {schema} AUTHORIZATION {user}, or fix the search_path"))
    elif not (usage and create):
        missing = " and ".join(p for p, held in (("USAGE", usage), ("CREATE", create)) if not held)
        report.add(Check("postgres schema", FAIL, f"user {user} lacks {missing} on schema {schema} on {target.where} "
                         "(bookkeeping and migrations create tables there; PostgreSQL 15+ no longer grants it on public)",
                         grant))
    else:
        report.add(Check("postgres schema", OK, f"user {user} can create in schema {schema}"))
    _bookkeeping(report, backend, schema, user, create)
    held = pg_lock.holder(backend)
    if not advisory:
        report.add(Check("postgres locks", FAIL, f"user {user} cannot call pg_try_advisory_lock (the migration lock)",
                         f"GRANT EXECUTE ON FUNCTION pg_try_advisory_lock(bigint), pg_advisory_unlock(bigint) TO {user}"))
    elif held.startswith("held by"):
        report.add(Check("postgres locks", WARN, f"advisory locks allowed; the migration lock is {held}",
                         "a runner is migrating now: a run would wait for it (--lock-timeout)"))
    else:
        report.add(Check("postgres locks", OK, "advisory locks allowed; the migration lock is free"))


def _bookkeeping(report: DoctorReport, backend, schema: str, user: str, create: bool) -> None:
    tables = (backend.migration_table, backend.log_table, backend.lock_table, backend.version_table,
              checksums.TABLE, checksums.FAILURES)
    present, denied = [], []
    for table in tables:
        found, rights = backend.execute(TABLE_RIGHTS, {"t": f'"{schema}"."{table}"'}).fetchone()
        if found:
            present.append(table)
            if not rights:
                denied.append(table)
    absent = [t for t in tables if t not in present]
    if denied:
        report.add(Check("postgres bookkeeping", FAIL, f"user {user} cannot write {', '.join(denied)} in schema {schema}",
                         f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(denied)} TO {user}"))
    elif absent and not create:
        report.add(Check("postgres bookkeeping", FAIL, f"{', '.join(absent)} missing in schema {schema} and cannot be created",
                         f"GRANT CREATE ON SCHEMA {schema} TO {user}"))
    elif absent:
        report.add(Check("postgres bookkeeping", OK, f"{len(present)} of {len(tables)} tables present in {schema}; "
                         "the rest are created by the first migrate"))
    else:
        report.add(Check("postgres bookkeeping", OK, f"all {len(tables)} tables present in {schema}, writable"))


def _migrations(report: DoctorReport, backend, target: PostgresTarget, sql_dir) -> None:
    from migrator import postgres

    try:
        migrations = postgres.read_migrations(sql_dir)
        states = postgres.status(backend, migrations)
        todo = postgres.pending(backend, migrations)  # loads the pending files: their refusals show here
    except MigratorError as exc:
        report.add(failed("migrations", str(exc)))
        return
    applied = sum(1 for s in states if s.applied_at)
    report.add(Check("migrations", OK, f"{applied} applied, {len(todo)} pending ({sql_dir})"))
    drift = [s for s in states if s.changed]
    if drift:
        report.add(failed("drift", str(postgres.drift_error(drift, target, "migrate would refuse to run"))))
    else:
        report.add(Check("drift", OK, "no applied migration changed since applied"))
    for schema, index, table in postgres.invalid_indexes(backend):
        report.add(Check("invalid index", WARN, f"{schema}.{index} on {table} is INVALID (a failed CREATE INDEX CONCURRENTLY)",
                         f"DROP INDEX CONCURRENTLY {schema}.{index}; then run migrate again"))
