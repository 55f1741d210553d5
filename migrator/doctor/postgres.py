"""PostgreSQL checks over one read-only connection made by the runner's own connect().

Over several tenant schemas (--schema, SCHEMA_NAME, currentSchema) the server's checks run once and
each schema's checks (privileges, bookkeeping, its lock, migrations, drift, its INVALID indexes) run
in the order given, each line stamped with its schema.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time

from migrator import bookkeeping_lock, checksums, lock_row, output, pg_lock, server_session, trust
from migrator.doctor import FAIL, OK, WARN, Check, DoctorReport, SchemaChecks, failed, one_line
from migrator.doctor.grants import bookkeeping_grants, bookkeeping_locks, schema_creators
from migrator.errors import MigratorError
from migrator.postgres import tenant_mark
from migrator.reports.postgres import PARTITIONED_INVALID
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
# By the catalogs, not to_regclass: naming a table in a schema without USAGE is an error, not an answer.
TABLE_RIGHTS = """
SELECT t.name, c.oid IS NOT NULL,
       array_remove(ARRAY[CASE WHEN NOT has_table_privilege(c.oid, 'SELECT') THEN 'SELECT' END,
                          CASE WHEN NOT has_table_privilege(c.oid, 'INSERT') THEN 'INSERT' END,
                          CASE WHEN NOT has_table_privilege(c.oid, 'UPDATE') THEN 'UPDATE' END,
                          CASE WHEN NOT has_table_privilege(c.oid, 'DELETE') THEN 'DELETE' END], NULL)
FROM unnest(CAST(:tables AS text[])) WITH ORDINALITY t(name, i)
LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = :schema
LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.name
ORDER BY t.i
"""
RIGHTS = "SELECT, INSERT, UPDATE, DELETE"  # yoyo's marks and log, the checksums' and snapshot's upserts
# doctor's own session is read-only by its options, so the server's defaults are read where they are set:
# a standby, the database's or the role's ALTER ... SET, and the server's files when the user may read them.
READ_ONLY = """
WITH settings AS (
  SELECT CASE WHEN s.setrole = 0 THEN 'database ' || current_database()
              WHEN s.setdatabase = 0 THEN 'role ' || current_user
              ELSE 'role ' || current_user || ' in database ' || current_database() END AS what
  FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
  WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))
    AND s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user))
    AND lower(split_part(c, '=', 1)) = 'default_transaction_read_only'
    AND lower(split_part(c, '=', 2)) IN ('on', 'true', 'yes', '1', 't', 'y'))
SELECT pg_catalog.pg_is_in_recovery(), (SELECT string_agg(what, ', ') FROM settings),
       has_function_privilege('pg_catalog.pg_show_all_file_settings()', 'EXECUTE')
"""
SERVER_FILE_READ_ONLY = """
SELECT lower(setting) IN ('on', 'true', 'yes', '1') FROM pg_catalog.pg_file_settings
WHERE name = 'default_transaction_read_only' AND applied ORDER BY seqno DESC LIMIT 1
"""
INSUFFICIENT_PRIVILEGE = "42501"
DATABASE_CREATE = "SELECT current_database(), has_database_privilege(current_database(), 'CREATE')"


def check(report: DoctorReport, target: PostgresTarget, sql_dir) -> None:
    from migrator import postgres

    if not _reachable(report, target):
        return
    with contextlib.ExitStack() as stack:
        try:
            backend = stack.enter_context(postgres.connect(target, read_only=True, refuse_foreign=False))
        except MigratorError as exc:
            report.add(failed("postgres login", str(exc)))
            return
        _server(report, backend, target)
        _guarded(report, backend, "postgres writable", _writable, target)
        if len(target.schemas) > 1 and not target.schema:
            _each_schema(report, backend, target, sql_dir)
        else:
            _schema_checks(report, backend, target, sql_dir)


def _schema_checks(report: DoctorReport, backend, target: PostgresTarget, sql_dir, described=None) -> None:
    if (backend.foreign or backend.twin) and target.schema in (None, "public"):  # the plain run would refuse
        said = tenant_mark.foreign_history if backend.foreign else tenant_mark.twin_histories  # (connection.connect)
        report.add(failed("postgres history", said(backend, target)))
        return
    if target.schema in (None, "public"):
        _creation_schema(report, backend, target)
    readable = _guarded(report, backend, "postgres schema", _privileges, target)
    if readable:
        _guarded(report, backend, "migrations", _migrations, target, sql_dir, described)


def _creation_schema(report: DoctorReport, backend, target: PostgresTarget) -> None:
    """A plain run's migrations run under the role's own search_path, as psql's would: where it names no schema that
    exists (or pg_catalog first, a hardening), every unqualified CREATE fails; with pg_temp first, CREATE TABLE makes
    a temporary table. A file naming its schemas still runs, so a warning: the setting and its fix (the bookkeeping
    stays in public either way)."""
    schema, path = backend.creates_in or (None, "")
    if schema and not schema.startswith("pg_") and schema != "information_schema":
        return
    user, database = backend.execute("SELECT current_user, current_database()").fetchone()
    said = ("names no schema that exists: an unqualified CREATE in a migration fails" if not schema else
            "puts pg_temp first: an unqualified CREATE TABLE in a migration makes a temporary table, gone when its "
            "session ends (recorded as applied all the same)" if schema.startswith("pg_temp") else
            f"puts {schema} first: an unqualified CREATE in a migration fails")
    report.add(Check("postgres search_path", WARN, f"user {user}'s search_path ({path}) {said}, as in psql",
                     f"ALTER ROLE {user} IN DATABASE {database} SET search_path = public (your schema first, then "
                     "public), or name the schema in each file"))


def _each_schema(report: DoctorReport, backend, target: PostgresTarget, sql_dir) -> None:
    """Schema by schema on the one connection, pinned to each as a tenant's run pins its own (the
    backend's init_connection, PIN_TENANT; public as the plain run): one login for all, so many tenants stay
    fast on a remote server; and one catalog read of all the schemas, which answers each drift check that
    finds nothing (as migrate's)."""
    from migrator.schema.describe import describe_tenants

    # public's (SCHEMA_NAME=public) is the plain run's description, read by its own check
    described = describe_tenants(backend.connection, [schema for schema in target.schemas if schema != "public"])
    for schema in target.schemas:
        backend.schema = schema
        backend.init_connection(backend.connection)
        # (its own bookkeeping's state: planted objects, others' rights, an unconfirmed history; one query)
        backend.verified = trust.verify(backend, schema, target.where, read_only=True, refuse=False, target=target)
        _schema_checks(SchemaChecks(report, schema), backend, target.for_schema(schema), sql_dir, described.get(schema))


def _guarded(report: DoctorReport, backend, name: str, step, *args):
    """A step whose SQL the server refuses (a privilege the catalogs did not show) is one FAIL line, and
    the other checks still run: the aborted transaction is rolled back (yoyo's rollback re-pins the schema)."""
    import psycopg2

    try:
        return step(report, backend, *args)
    except psycopg2.Error as exc:
        backend.rollback()
        message = one_line(getattr(exc.diag, "message_primary", None) or exc)
        remedy = ("grant it to the user (GRANT ...), or connect as the owner" if exc.pgcode == INSUFFICIENT_PRIVILEGE
                  else "fix what the server says, then run doctor again")
        report.add(Check(name, FAIL, f"{message} (as {target_user(backend)})", remedy))
        return None


def target_user(backend) -> str:
    return backend.execute("SELECT current_user").fetchone()[0]


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
        if host.startswith("/"):  # a socket: no network or security group between
            said = (f"no server socket {host}/.s.PGSQL.{port}" if isinstance(exc, FileNotFoundError)
                    else f"cannot reach {target.server} ({reason})")
            report.add(Check("postgres reachable", FAIL, said, "check that the server runs, and that the socket "
                             "folder and port are its unix_socket_directories and port"))
            return False
        report.add(Check("postgres reachable", FAIL, f"cannot reach {target.server} ({reason})",
                         "check the host and port, that the server runs, and the network or security group"))
        return False
    report.add(Check("postgres reachable", OK, f"{target.server} answers ({(time.monotonic() - started) * 1000:.0f} ms)"))
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


def _writable(report: DoctorReport, backend, target: PostgresTarget) -> None:
    standby, defaults, files_readable = backend.execute(READ_ONLY).fetchone()
    server_file = files_readable and (backend.execute(SERVER_FILE_READ_ONLY).fetchone() or [False])[0]
    writer = "point DB_HOST (or the secret) at the writer endpoint: the primary, or an Aurora cluster's writer, not a reader or replica"
    if standby:
        report.add(Check("postgres writable", FAIL, f"{target.where} is a read-only standby (pg_is_in_recovery)", writer))
    elif defaults:
        report.add(Check("postgres writable", FAIL, f"{target.where} makes transactions read-only by default "
                         f"(default_transaction_read_only set on {defaults}): every migration would fail",
                         f"{writer}; or ALTER DATABASE/ROLE ... RESET default_transaction_read_only"))
    elif server_session.asks_read_only(target.params.get("options", "")):
        report.add(Check("postgres writable", FAIL, f"{target.where} is connected with default_transaction_read_only "
                         "on in the URL's options: every migration would fail", f"{writer}; or drop it from the URL"))
    elif server_file:
        report.add(Check("postgres writable", FAIL, f"{target.where} makes transactions read-only by default "
                         "(default_transaction_read_only in the server's configuration)",
                         f"{writer}; or turn default_transaction_read_only off in the parameter group"))
    else:
        report.add(Check("postgres writable", OK, "the primary, transactions read-write by default"))


def _privileges(report: DoctorReport, backend, target: PostgresTarget) -> bool:
    """Schema, bookkeeping and lock privileges; True when the bookkeeping can be read (the migrations checks need it)."""
    schema, server = backend.bookkeeping_schema, dataclasses.replace(target, schema=None).where
    user, exists, usage, create, advisory = backend.execute(PRIVILEGES, {"schema": schema}).fetchone()
    grant = f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {user}, or connect as the schema's owner"
    if not exists and target.schema:
        _missing_schema(report, backend, target, user)
        return False
    if not exists:
        report.add(Check("postgres schema", FAIL, f"schema {schema} does not exist in {server}",
                         f"CREATE SCHEMA {schema} AUTHORIZATION {user}, or fix the search_path"))
    elif not (usage and create):
        missing = " and ".join(p for p, held in (("USAGE", usage), ("CREATE", create)) if not held)
        report.add(Check("postgres schema", FAIL, f"user {user} lacks {missing} on schema {schema} on {server} "
                         "(bookkeeping and migrations create tables there; PostgreSQL 15+ no longer grants it on public)",
                         grant))
    else:
        report.add(Check("postgres schema", OK, f"user {user} can create in schema {schema}"))
    unreadable = _bookkeeping(report, backend, schema, user, usage, create)
    bookkeeping_grants(report, backend, schema, user, target.creators_trusted)
    if exists and usage:
        schema_creators(report, backend, schema, target.creators_trusted)
        bookkeeping_locks(report, backend, schema)
    if usage and target.schema not in (None, "public"):
        _tenant_mark(report, backend, schema, user)
    _lock(report, backend, target, user, advisory)
    if backend.verified[5] or (usage and backend.verified[3]):  # said above; reading it may run what was planted
        report.add(Check("migrations", WARN, "not checked: the bookkeeping is refused (see above)"))
        return False
    if not (exists and usage) or unreadable:
        what = f"schema {schema}" if not (exists and usage) else ", ".join(unreadable)
        report.add(Check("migrations", FAIL, f"not checked: user {user} cannot read {what} (applied, pending and drift unknown)",
                         "grant the privileges above, then run doctor again"))
        return False
    return True


def _missing_schema(report: DoctorReport, backend, target: PostgresTarget, user: str) -> None:
    """A tenant schema that is not there: migrate fails on it, unless --create-schemas and the user may create it."""
    schema, server = target.schema, dataclasses.replace(target, schema=None).where
    create = f"CREATE SCHEMA {schema} AUTHORIZATION {user}"
    if not target.create_schemas:
        report.add(Check("postgres schema", FAIL, f"schema {schema} does not exist on {server}",
                         f"create it ({create}), or run `migrate --create-schemas`"))
        return
    database, may_create = backend.execute(DATABASE_CREATE).fetchone()
    if may_create:
        report.add(Check("postgres schema", OK, f"schema {schema} does not exist on {server}: migrate will create it "
                         f"(--create-schemas; user {user} may CREATE on database {database})"))
    else:
        report.add(Check("postgres schema", FAIL, f"schema {schema} does not exist on {server}, and user {user} lacks "
                         f"CREATE on database {database}: migrate --create-schemas cannot create it",
                         f"GRANT CREATE ON DATABASE {database} TO {user}, or create it as its owner ({create})"))


def bookkeeping_tables(backend) -> list[str]:
    """Every table a run writes, named by the modules that own them."""
    from migrator.schema import snapshot

    return [backend.migration_table, backend.log_table, backend.lock_table, backend.version_table,
            checksums.TABLE, checksums.FAILURES, snapshot.TABLE] + ([pg_lock.HISTORY_LOCKS] if backend.history else [])


def _bookkeeping(report: DoctorReport, backend, schema: str, user: str, usage: bool, create: bool) -> list[str]:
    """The check line; returns the present tables the user cannot SELECT."""
    tables = bookkeeping_tables(backend)
    rows = backend.execute(TABLE_RIGHTS, {"tables": tables, "schema": schema}).fetchall()
    present = [name for name, found, _ in rows if found]
    denied = {name: lacks for name, found, lacks in rows if found and lacks}
    absent = [name for name, found, _ in rows if not found]
    planted = backend.verified[3] if usage else []  # read by connect(), which leaves refusing to this report
    if backend.verified[5]:  # the schema's owner may drop or replace the runner's tables
        owner = output.role(backend.verified[5])
        report.add(Check("postgres bookkeeping", FAIL, f"schema {schema} is owned by role {owner}, not "
                         f"user {user} itself or a superuser", f"as {owner} or a superuser: ALTER "
                         f"SCHEMA {schema} OWNER TO {user}"))
    elif planted:  # what migrate refuses: objects others made that would run as this user
        report.add(Check("postgres bookkeeping", FAIL, f"in schema {schema}: {trust.planted_list(schema, planted)}; "
                         f"it would run as user {user} (another role with CREATE on {schema} made it?)",
                         trust.planted_fix(schema, user, backend.verified[6])))
    elif denied:
        lacking = "; ".join(f"{', '.join(lacks)} on {name}" for name, lacks in denied.items())
        report.add(Check("postgres bookkeeping", FAIL, f"user {user} lacks {lacking} in schema {schema}",
                         f"GRANT {RIGHTS} ON {', '.join(f'{schema}.{t}' for t in denied)} TO {user}"))
    elif absent and not (usage and create):
        report.add(Check("postgres bookkeeping", FAIL, f"{', '.join(absent)} missing in schema {schema} and cannot be created",
                         f"GRANT {'CREATE' if usage else 'USAGE, CREATE'} ON SCHEMA {schema} TO {user}"))
    elif absent:
        report.add(Check("postgres bookkeeping", OK, f"{len(present)} of {len(tables)} tables present in {schema}; "
                         "the rest are created by the first migrate"))
    else:
        report.add(Check("postgres bookkeeping", OK, f"all {len(tables)} tables present in {schema}, writable"))
    return [name for name, lacks in denied.items() if "SELECT" in lacks]


def _tenant_mark(report: DoctorReport, backend, schema: str, user: str) -> None:
    """A tenant's history whose mark is lost (a restore without comments): a plain run refuses rather than take
    it; the tenant's next migrate writes the mark if its user owns the lock table, else its owner must."""
    state = tenant_mark.state(backend.connection, schema)
    if state is None or state[0]:
        return  # no history yet (the first migrate marks it), or marked
    _, may_mark, owner = state
    if may_mark:
        report.add(Check("tenant mark", OK, f"the history in {schema} lacks the tenant mark: the next migrate writes it"))
    else:
        report.add(Check("tenant mark", WARN, f"the history in {schema} lacks the tenant mark and user {user} may not "
                         f"write it (the owner of {schema}.yoyo_lock is {owner}): migrate works, but a plain run "
                         "refuses while public holds no history", f"as {owner}: {tenant_mark.mark_statement(schema)}"))


def _lock(report: DoctorReport, backend, target: PostgresTarget, user: str, advisory: bool) -> None:
    key = pg_lock.run_key(backend, target)
    held = pg_lock.holder(backend, key)
    # a Flyway folder's lock is its history's (services sharing the schema have their own)
    lock = f"the migration lock for the history {backend.bookkeeping_schema}.{target.history}" if target.history \
        else "the migration lock"
    books_key = bookkeeping_lock.bookkeeping_key(backend.bookkeeping_schema)
    with backend.connection.cursor() as cursor:  # (any role that can connect may take them: their keys are no secret)
        stuck = bookkeeping_lock.prepared(cursor, key)
        books = bookkeeping_lock.holder(cursor, books_key)
        books_stuck = bookkeeping_lock.prepared(cursor, books_key) if books is not None else None
        free = advisory and not held.startswith("held by") and _free(cursor, key)
        books_free = books is None and advisory and _free(cursor, books_key)
    if not advisory:
        report.add(Check("postgres locks", FAIL, f"user {user} cannot call pg_try_advisory_lock (the migration lock)",
                         f"GRANT EXECUTE ON FUNCTION pg_try_advisory_lock(bigint), pg_advisory_unlock(bigint) TO {user}"))
    elif stuck:
        report.add(Check("postgres locks", FAIL, f"advisory locks allowed; {lock} is held by {stuck}",
                         "every run waits for it, then stops (exit 4): end that prepared transaction as said"))
    elif held.startswith("held by"):
        report.add(Check("postgres locks", WARN, f"advisory locks allowed; {lock} is {held}", lock_row.advice(held)))
    elif not free:
        report.add(Check("postgres locks", WARN, f"advisory locks allowed; {lock} is held (holder unknown: doctor's "
                         "try to take it failed, and no session it can see holds it)", "a run would wait for it "
                         "(--lock-timeout); pg_locks names the holder to a superuser"))
    elif (row := pg_lock.live_row(backend, target)) is not None:
        report.add(Check("postgres locks", WARN, f"advisory locks allowed; {lock} is free, but {row}", "a run waits "
                         "for that runner, then stops (exit 4); if it is no runner, end that session"))
    else:
        report.add(Check("postgres locks", OK, f"advisory locks allowed; {lock} is free"))
    where = f"the shared bookkeeping lock of schema {backend.bookkeeping_schema}"
    if books_stuck:
        report.add(Check("bookkeeping lock", FAIL, f"{where} is held by {books}", "every write command stops after "
                         "--lock-timeout (exit 4) with nothing committed: end that prepared transaction as said"
                         + (" (and the sessions named with it, if not a runner's)" if books != books_stuck else "")))
    elif books:
        report.add(Check("bookkeeping lock", WARN, f"{where} is held by {books}", "a runner holds it for a moment "
                         "while it records a change; held longer, every write command stops after --lock-timeout "
                         "(exit 4) with nothing committed: if it is not a runner's, end that session "
                         "(pg_terminate_backend)"))
    elif advisory and not books_free:
        report.add(Check("bookkeeping lock", WARN, f"{where} is held (holder unknown: doctor's try to take it failed)",
                         "held longer than a moment, every write command stops after --lock-timeout (exit 4)"))


def _free(cursor, key: int) -> bool:
    """Whether advisory lock `key` is free now: tried (and let go at once), never inferred from pg_locks. In one
    statement, on doctor's own server session (a transaction-mode pool could release another client's)."""
    return bookkeeping_lock.on_own_session(cursor.connection, cursor, "CASE WHEN pg_catalog.pg_try_advisory_lock("
                                           "%(key)s) THEN pg_catalog.pg_advisory_unlock(%(key)s) ELSE false END", key)


def _flyway_history(report: DoctorReport, backend, migrations, todo) -> None:
    """A Flyway folder: the Flyway history found (the history of record) and what the next migrate does with it."""
    from migrator import postgres
    from migrator.postgres import flyway, history

    if not flyway.is_flyway(migrations):
        return
    found = postgres.bookkeeping(backend, migrations).flyway
    where = f"{backend.bookkeeping_schema}.{history.table_name(backend)}"
    other, untrusted = history.other_history(backend, migrations) if found is None else (None, [])
    if untrusted:
        report.add(Check("flyway history", WARN, history.unread_note(backend.bookkeeping_schema, untrusted)
                         .removeprefix("note: ")))
    if other is not None:
        report.add(Check("flyway history", FAIL, f"no {where}, but {other[0]} records {other[1]} of this folder "
                                                 "applied: the next migrate refuses (SCHEMA_TABLE most likely names "
                                                 "the wrong history)", f"set SCHEMA_TABLE={other[0]}"))
    elif found is None:
        report.add(Check("flyway history", OK, f"no {where} yet: the next migrate creates it in Flyway 10's format and "
                                               f"records each of the {len(todo)} migration(s) it applies there"))
    elif found.failed:
        row = next(iter(found.failed.values()))
        report.add(Check("flyway history", FAIL, f"{where} records {row.script} as FAILED (installed_rank {row.rank}): "
                                                 "the next migrate refuses",
                         "finish or undo it by hand, then `runner.py sql mark` it (or `runner.py sql repair`)"))
    else:
        newest = max((r.version for r in found.rows if r.version and r.success), key=flyway.version_key, default="-")
        report.add(Check("flyway history", OK, f"{where}: {len(found.rows)} row(s), newest version {newest}; the next "
                                               f"migrate takes them as applied (nothing re-applied) and applies "
                                               f"{len(todo)} pending, recording each there"))


def _migrations(report: DoctorReport, backend, target: PostgresTarget, sql_dir, described=None) -> None:
    from migrator import postgres
    from migrator.schema import snapshot

    try:
        migrations = postgres.read_migrations(sql_dir)
        states = postgres.status(backend, migrations)
        todo = postgres.pending(backend, migrations)  # loads the pending files: their refusals show here
    except MigratorError as exc:
        report.add(failed("migrations", str(exc)))
        return
    applied = sum(1 for s in states if s.applied_at)
    report.add(Check("migrations", OK, f"{applied} applied, {len(todo)} pending ({sql_dir})"))
    _flyway_history(report, backend, migrations, todo)
    drift = [s for s in states if s.changed]
    if drift:
        report.add(failed("drift", str(postgres.drift_error(drift, target, "migrate would refuse to run"))))
    else:
        report.add(Check("drift", OK, "no applied migration changed since applied"))
    live = snapshot.live_drift(backend.connection, backend.bookkeeping_schema, described)
    if live.drifted:
        report.add(Check("schema drift", WARN, live.to_json()["summary"],
                         "`runner.py status` lists it; migrate --strict would refuse: keep it in a migration, undo it, "
                         "or after review `runner.py sql accept-drift`"))
    elif live.recorded is None:
        report.add(Check("schema drift", OK, "no schema description recorded yet (the next migrate records one)"))
    else:
        report.add(Check("schema drift", OK, "the live schema is as recorded"))
    for item in postgres.invalid_indexes(backend):
        schema, index, table = item
        if target.schema and schema != target.schema:
            continue  # a tenant's are its own (as `status` shows them), not the other tenants'
        report.add(Check("invalid index", WARN, f"{schema}.{index} on {table} is INVALID" + (
            "" if item.partitioned else " (a failed CREATE INDEX CONCURRENTLY)"), PARTITIONED_INVALID.format(
                f"{schema}.{index}") if item.partitioned else f"DROP INDEX CONCURRENTLY {schema}.{index}; then run "
            "migrate again"))
