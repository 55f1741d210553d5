"""Connections: the run's own (locks, yoyo's bookkeeping) and a fresh one per migration.

yoyo runs each migration on `backend.copy()`, a new connection: every migration (and rollback) starts
in the state of a fresh session, as `psql -f` does, whatever the previous file did to search_path,
role, timeouts, session_replication_role or temp tables. The runner's limits are connection options
(`-c lock_timeout=...`), so they apply to each file until the file sets its own.

The run's own connection never runs a migration's SQL. Its search_path is `pg_catalog` alone and every bookkeeping
table is named with its schema (yoyo's `*_quoted` names included): an operator or function another role planted in a
schema it may CREATE in (`pb.=` on varchar beats pg_catalog's text = text, which needs a cast) is never even
considered, and a migration's `ALTER DATABASE ... SET search_path` changes nothing. The checksum step, which runs in
the migration's own session, names that schema explicitly and moves that session to `pg_catalog` first. The
bookkeeping tables themselves are verified before use (trust.py): another role's table, trigger, rule or policy
there is refused. Its commits (yoyo's marks and log) skip the wait for the WAL flush: a mark lost in a server crash
is restored by the next run from the migration's own checksum, which commits durably with the migration.

A tenant's schema (target.schema) changes two things, as Flyway's currentSchema does: every migration's session
starts with search_path = that schema, then public (a connection option, so `RESET search_path` returns there), and
the bookkeeping is pinned to that schema instead of found. The schema travels in the URL as yoyo's own `schema`
parameter (yoyo pops it before connecting); yoyo's own use of it (an unquoted SET search_path) is PIN_TENANT's.
"""

from __future__ import annotations

import functools
import socket
import uuid
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

from migrator import history_trust, output, pg_lock, pinned, server_session, trust, whoami
from migrator.errors import USAGE, MigratorError
from migrator.postgres import cancel, failures, liveness, tenant_mark
from migrator.postgres.failures import READ_TIMEOUT_ARG, connection_error, guard_reads, guard_session, opened
from migrator.postgres.tenant_mark import TENANT_MARK
from migrator.tables import MIGRATION_TABLE
from migrator.targets import DdlLimits, PostgresTarget, where_name

from migrator.postgres.session_options import (CATALOG_ONLY, CLIENT_CHECK, CONNECT_PARAMS, NO_IDLE_TIMEOUTS,  # noqa: F401
                                                READ_ONLY, SERVER_KEEPALIVES, migration_idle_bound)

# The run's own connection first returns to the user it logged in as (a database or role default
# `SET role = ...` would otherwise apply), then pins search_path to where the runner's tables are.
# A plain run's history is in its home schema (`home`, else the session's current schema) or public:
# the one holding yoyo's tables together with yoyo_lock and the checksums (a stray `_yoyo_migration`
# must not take over), else a new one in the home schema. A history anywhere else (the runner's
# tables: `_yoyo_migration`, yoyo_lock, the checksums) is another history: a tenant's (its yoyo_lock
# carries TENANT_MARK), or one this run would only find by guessing (a tenant whose mark a dump
# without comments lost, a plain history made under another search_path). hcm.tenant_schemas lists
# them all, so the schema description leaves them out; `foreign` names the unmarked ones when the
# plain run has no history of its own, and the run refuses instead of starting a second one. `twin` names the home
# schema when it and public both hold a complete unmarked history (a tenant's whose mark was lost, put first on the
# role's search_path): the run refuses rather than switch from public's to it and apply its files again.
# The home schema is read first (HOME: one qualified call, no operator), then search_path is pinned to
# pg_catalog before the rest runs: under the role's own search_path (one may list pg_catalog after a schema
# others create in) a planted = on name, or string_agg(name, text), would run as the migration role.
# The home schema is the first one of the role's search_path that exists and is no system schema (a search_path of
# '' or of pg_catalog first, a hardening, must never make pg_catalog the bookkeeping's home): else public. Read with
# it, as a migration's fresh session has them: the schema an unqualified CREATE goes to, and the path (doctor).
HOME = ("SET ROLE NONE; SELECT (SELECT s FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) WITH ORDINALITY "
        "AS t(s, o) WHERE NOT pg_catalog.starts_with(s::pg_catalog.text, 'pg_') "
        "AND s OPERATOR(pg_catalog.<>) 'information_schema' ORDER BY o LIMIT 1), pg_catalog.current_schema(), "
        "pg_catalog.current_setting('search_path')")
# The run's own names (a Flyway folder's history table, its history), read by its SQL: set by the pins, once the
# session's settings were read back as asked (a refused session sets nothing).
OURS = ("pg_catalog.set_config('hcm.flyway_table', %(flyway_table)s, false), "
        "pg_catalog.set_config('hcm.history', %(history)s, false)")
PIN_BOOKKEEPING = """
SELECT pg_catalog.set_config('search_path', 'pg_catalog', false);
WITH histories AS (
    SELECT n.oid, n.nspname,
        EXISTS (SELECT FROM pg_catalog.pg_class l WHERE l.relnamespace = n.oid AND l.relname = 'yoyo_lock'
                AND pg_catalog.obj_description(l.oid, 'pg_class') = %(mark)s) AS tenant,
        EXISTS (SELECT FROM pg_catalog.pg_class l WHERE l.relnamespace = n.oid AND l.relname = 'yoyo_lock') AS locked,
        EXISTS (SELECT FROM pg_catalog.pg_class s WHERE s.relnamespace = n.oid
                AND s.relname = '_hcm_migration_checksum') AS checked
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = '_yoyo_migration' AND c.relkind IN ('r', 'p')
), home AS (
    SELECT coalesce(%(home)s, 'public') AS name
), own AS (
    SELECT h.nspname FROM histories h, home
    WHERE NOT h.tenant AND h.nspname IN (home.name, 'public')
    ORDER BY h.locked DESC, h.checked DESC, h.nspname = home.name DESC, h.oid LIMIT 1
), chosen AS (
    SELECT coalesce((SELECT nspname FROM own), home.name) AS schema FROM home
), others AS (
    SELECT h.nspname, h.tenant FROM histories h, chosen
    WHERE h.nspname <> chosen.schema AND (h.tenant OR (h.locked AND h.checked))
)
SELECT schema,
       CASE WHEN NOT EXISTS (SELECT FROM own) THEN
           (SELECT pg_catalog.string_agg(nspname::pg_catalog.text, ','::pg_catalog.text ORDER BY nspname)
            FROM others WHERE NOT tenant) END,
       pg_catalog.set_config('search_path', 'pg_catalog', false),
       pg_catalog.set_config('hcm.tenant_schema', '', false),
       pg_catalog.set_config('hcm.tenant_schemas', coalesce(
           (SELECT pg_catalog.string_agg(nspname::pg_catalog.text, ','::pg_catalog.text ORDER BY nspname)
            FROM others), ''), false),
       pg_catalog.set_config('synchronous_commit', 'off', false), """ + OURS + """,
       (SELECT home.name FROM home WHERE (SELECT pg_catalog.count(*) FROM histories h WHERE NOT h.tenant
            AND h.locked AND h.checked AND h.nspname IN (home.name, 'public')) = 2)
FROM chosen
"""


# A tenant's run: its bookkeeping in its schema, nowhere else; describe() reads hcm.tenant_schema
# to describe that schema alone.
PIN_TENANT = """
SET ROLE NONE;
SELECT pg_catalog.set_config('search_path', 'pg_catalog', false),
       pg_catalog.set_config('hcm.tenant_schema', %(schema)s, false),
       pg_catalog.set_config('hcm.tenant_schemas', '', false),
       pg_catalog.set_config('synchronous_commit', 'off', false), """ + OURS + "\n"


def resolve_target(target: PostgresTarget, env) -> PostgresTarget:
    """The concrete target: starts the local development database when nothing is configured."""
    if target.local_dev:
        from migrator import devdb

        return devdb.ensure_running(env)
    return target


def watcher_params(target: PostgresTarget, application_name: str) -> dict:
    """failures.side_connection() keywords of a read-only side connection (the progress watcher, the lock-retry
    probe), without limits but the read timeout; its functions and operators resolve in pg_catalog alone from its
    first statement."""
    params = {**CONNECT_PARAMS, **target.params, "application_name": application_name}
    params["options"] = " ".join(s for s in (params.get("options", ""), NO_IDLE_TIMEOUTS, READ_ONLY, CATALOG_ONLY) if s)
    if target.read_timeout:  # its reads bounded as the run's own (failures.side_connection)
        params[READ_TIMEOUT_ARG] = f"{target.read_timeout:g}"
    fields = {"host": target.host, "port": target.port, "dbname": target.dbname, "user": target.user,
              "password": target.password}
    return {**{k: v for k, v in fields.items() if v}, **params}


def session_url(target: PostgresTarget, read_only: bool, limits: DdlLimits | None) -> str:
    params = {**CONNECT_PARAMS, **target.params}
    settings = [params.get("options", ""), CLIENT_CHECK, NO_IDLE_TIMEOUTS, SERVER_KEEPALIVES]
    if read_only:
        settings.append(READ_ONLY)
    if target.read_timeout:  # the run's own statements (bookkeeping, catalogs); never a migration's (connect)
        params[READ_TIMEOUT_ARG] = f"{target.read_timeout:g}"
    if limits:
        settings.append(f"-c lock_timeout={limits.lock_timeout} -c statement_timeout={limits.statement_timeout} "
                        f"-c hcm.lock_retry_budget={limits.lock_retry_budget}")  # (schema/describe_locks.py)
    elif target.catalog_waits:  # no migration session's: only the schema description's waits are bounded
        settings.append(f"-c hcm.describe_lock_timeout={target.catalog_waits.lock_timeout} "
                        f"-c hcm.lock_retry_budget={target.catalog_waits.lock_retry_budget}")
    if target.schema and target.schema != "public":  # a checked lower-case identifier: nothing to quote
        settings.append(f"-c search_path={target.schema},public")
    if target.schema:  # (SCHEMA_NAME=public keeps the session's search_path, as the plain run it is)
        params["schema"] = target.schema
    params["options"] = " ".join(s for s in settings if s)
    return PostgresTarget(
        host=target.host, port=target.port, dbname=target.dbname, user=target.user,
        password=target.password, params=params,
    ).url


@functools.cache
def backend_class():
    """yoyo's PostgreSQL backend, extended where yoyo leaves room for it (init_connection, copy)."""
    from yoyo.backends.core.postgresql import PostgresqlBackend

    class Backend(PostgresqlBackend):
        bookkeeping_schema = "public"
        pinned = False
        verified: tuple = ()  # trust.bookkeeping_state of its schema, read once at connect
        distrusted: dict = {}  # its history's tables others could write until a run took it (history_trust)
        failures_table_ready = False
        watcher = None  # a postgres.watch.Watcher following each migration session, when progress is on
        started: bool | str = False  # a migration (or rollback) began (its id): a lost connection is then its error
        limits: DdlLimits | None = None  # the run's DDL limits (each try's lock_timeout, the lock retry budget)

        flyway_table = "flyway_schema_history"  # a Flyway folder's history (SCHEMA_TABLE)
        history: str | None = None  # set for a Flyway folder's run: its drift is its own objects' (history.py)
        out_of_order = True
        foreign: list[str] = []  # a plain run's: unmarked histories elsewhere, when it has none of its own
        twin: str | None = None  # a plain run's: its home schema, when it and public both hold a complete history
        revoke_before_commit: list[str] = []  # a creation step's tables (trust.revoking_at_commit)
        creates_in: tuple = ()  # a plain run's: (the schema an unqualified CREATE uses or None, the search_path)
        tenant_schemas = ""  # hcm.tenant_schemas as pinned: the other histories (tenants') a plain run leaves alone
        guarded = True  # the run's own statements answer within the read timeout; a migration's: guard_session's

        def connect(self, dburi):
            args = dict(dburi.args)
            seconds, checked = args.pop(READ_TIMEOUT_ARG, None), server_session.checked(args)  # (both popped)
            if not self.guarded:  # a migration's session: the server ends its transaction once left idle too long
                from migrator.postgres.retry import MAX_DELAY  # (the running machinery: a no-op never loads it)

                args["options"] = migration_idle_bound(args.get("options", ""), pg_lock.BOOKKEEPING_WAIT["seconds"],
                                                       MAX_DELAY)
            connection = opened(super().connect, dburi._replace(args=args))
            where = where_name(dburi.hostname or args.get("host") or "localhost", dburi.port, dburi.database)
            self.relied, self.where = server_session.wanted(args.get("options", "")), where  # (checked on first use)
            if not self.guarded:  # (a long wait's statement also looked at from a new connection: liveness.py)
                first = functools.partial(server_session.first_read, connection, self.relied, where, checked)
                guard_session(connection, where, first, liveness.watcher(dburi, args, connection, where))
            elif seconds:  # (cut off, it ends its own server session, which holds the migration lock: cancel.py)
                guard_reads(connection, where, float(seconds), cancel.own_session_ender(dburi, args, connection, where))
            return connection

        def init_connection(self, connection):
            # Called by yoyo on connect and after each rollback (which would undo the pin).
            with connection.cursor() as cursor:
                # The read-back sets nothing: a session refused behind a transaction-mode pool must leave nothing
                # of the runner's on the server session the pool hands on. The pins (set only once it passed)
                # carry hcm.flyway_table and hcm.history too, in the statement they send anyway.
                select, names = server_session.query(connection, self.relied)
                if select:
                    cursor.execute("SELECT " + select.removeprefix(", "), names)
                    server_session.check(connection, cursor.fetchone(), self.relied, self.where, migration=False)
                ours = {"flyway_table": self.flyway_table, "history": self.history or ""}
                execute = functools.partial(self._on_own_session, connection, cursor)
                if self.schema and self.schema != "public":
                    execute(PIN_TENANT, {"schema": self.schema, **ours})
                    self.bookkeeping_schema, self.foreign, self.tenant_schemas, self.twin = self.schema, [], "", None
                    return
                # SCHEMA_NAME=public (DIGIT's value outside a central instance) is the plain run: its
                # history, lock, schema description and its migrations' search_path (the session's). Once
                # pinned (a re-pin after a rollback), the session's current schema is pg_catalog: keep the pin
                # (public's, where doctor's one connection pins tenants first).
                home = "public" if self.schema == "public" else self.bookkeeping_schema if self.pinned else None
                execute(HOME)
                first, *creates_in = cursor.fetchone()
                home, self.creates_in = home or first, self.creates_in or tuple(creates_in)  # (a re-pin's: pg_catalog)
                execute(PIN_BOOKKEEPING, {"mark": TENANT_MARK, "home": home, **ours})
                row = cursor.fetchone()
                self.bookkeeping_schema, foreign, self.tenant_schemas, self.twin = row[0], row[1], row[4], row[-1]
                self.foreign, self.pinned = (foreign.split(",") if foreign else []), True

        def _on_own_session(self, connection, cursor, sql: str, params: dict | None = None) -> None:
            """A pin, each its own transaction (autocommit): done only on the session's own server session (a
            transaction-mode pool may hand it another client's), else nothing and the run refuses."""
            import psycopg2

            try:
                cursor.execute(server_session.guard(connection) + sql, params)
            except psycopg2.DataError as exc:
                if server_session.is_elsewhere(exc):
                    raise server_session.elsewhere(connection, self.where) from None
                raise

        def qualified(self, table: str) -> str:
            """A bookkeeping table's name with its schema, quoted (the session's search_path is pg_catalog)."""
            return f"{self.quote_identifier(self.bookkeeping_schema)}.{self.quote_identifier(table)}"

        # yoyo builds its SQL from these (`{0.migration_table_quoted}`, ...): every table it names is qualified.
        migration_table_quoted = property(lambda self: self.qualified(self.migration_table))
        log_table_quoted = property(lambda self: self.qualified(self.log_table))
        lock_table_quoted = property(lambda self: self.qualified(self.lock_table))
        version_table_quoted = property(lambda self: self.qualified(self.version_table))

        def list_tables(self, **kwargs) -> list[str]:
            # yoyo's reads current_schema, which is pg_catalog here
            return [row[0] for row in self.execute(
                "SELECT relname FROM pg_catalog.pg_class WHERE relnamespace = "
                "pg_catalog.to_regnamespace(pg_catalog.quote_ident(:schema)) AND relkind IN ('r', 'p')",
                {"schema": self.bookkeeping_schema}).fetchall()]

        def ensure_internal_schema_updated(self):
            # yoyo reads its version table unqualified; read it here, and let yoyo upgrade only a history
            # older than its current layout (a new one, or yoyo < 6's): its tables, made or changed, verified again.
            if self._internal_schema_updated:
                return
            tables = [self.migration_table, self.log_table, self.version_table]
            if self.trusted_at_connect(tables):  # nothing to make, no lock to wait for
                self._internal_schema_updated = self._current_layout(True)
                if self._internal_schema_updated:
                    return
            with pg_lock.creating_bookkeeping(self.connection, self.bookkeeping_schema, setup=True):  # (histories)
                trust.created(self.connection, self.bookkeeping_schema, tables)  # (another role's since connect)
                present = set(self.list_tables())
                if self.migration_table in present:  # (a layout other than yoyo's current one: refused)
                    self._internal_schema_updated = self._current_layout(self.version_table in present)
                if not self._internal_schema_updated:
                    with trust.revoking_at_commit(self, tables):
                        super().ensure_internal_schema_updated()
                    trust.created(self.connection, self.bookkeeping_schema, tables)  # (likewise, made by another)
                    if self.migration_table not in present:  # (its COMMIT done: rows only others wrote)
                        history_trust.own_rows_only(self.connection, self.bookkeeping_schema, [self.migration_table])

        def first_write(self):  # (pg_lock's first write guard, from this package: its imports run one way)
            from migrator.postgres import first_write
            return first_write

        def commit(self):  # (yoyo's creation steps commit here: others' rights on their tables are taken first)
            trust.before_commit(self)
            super().commit()

        def trusted_at_connect(self, tables: list[str]) -> bool:
            """Whether these bookkeeping tables were all present, and none planted, when connecting (trust.verify):
            nothing to make, nothing to verify again (only their trusted owners, or the schema's, may replace them)."""
            present, planted = (self.verified[7], self.verified[6]) if self.verified else ((), ())
            return set(tables) <= set(present) and not set(tables) & set(planted)

        def _current_layout(self, has_version_table: bool) -> bool:
            from migrator.postgres import layout
            return layout.current(self, has_version_table)

        def copy(self):
            session = MigrationSession(server_session.checking(self.uri, self.creates_in, self.started),
                                       self.migration_table)
            session.bookkeeping_schema, session.flyway_table = self.bookkeeping_schema, self.flyway_table
            session.parent = self  # where a non-transactional file's progress is recorded
            if self.watcher is not None:
                self.watcher.follow(session.connection)
            return session

        # A Flyway folder's migrations are yoyo's per history (SCHEMA_TABLE): services sharing a schema keep
        # their own marks even where their file names agree (the same version in several services).
        def _per_history(self, migrations):
            from migrator.postgres import flyway

            for migration in migrations:
                if flyway.parse(migration.id + ".sql"):
                    migration.hash = flyway.history_hash(self.flyway_table, migration.id)
            return migrations

        def to_apply(self, migrations):
            return super().to_apply(self._per_history(migrations))

        def to_rollback(self, migrations):
            return super().to_rollback(self._per_history(migrations))

        def mark_one(self, migration, log=True):
            super().mark_one(self._per_history([migration])[0], log)

        def unmark_one(self, migration, log=True):
            super().unmark_one(self._per_history([migration])[0], log)

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

    class MigrationSession(Backend):
        """One migration's connection: left exactly as the server starts a session. No read timeout: a migration's
        statement may rightly run for hours; guard_session's bound follows its statement_timeout instead."""

        guarded = False

        def init_connection(self, connection):
            pass

        def __exit__(self, *_exc):  # (another thread's cancel or shut of it done first: failures.close)
            failures.close(self.connection)

    return Backend


@functools.cache
def _fqdn() -> str:
    return socket.getfqdn()


@contextmanager
def connect(target: PostgresTarget, *, read_only: bool, limits: DdlLimits | None = None,
            refuse_foreign: bool = True, unconfirmed_ok: bool = False, planted_later: bool = False) -> Iterator:
    """A yoyo backend. Read-only ones skip yoyo's init (it creates tables) and are read-only on the server too, so
    `plan` and `status` cannot write even by mistake. A plain run that finds no history of its own but another one
    elsewhere is refused, and so is a history holding objects other roles planted (trust.py) (doctor, with
    `refuse_foreign=False`, says both), and, to write, an unconfirmed history (history_trust.py; `unconfirmed_ok`:
    the commands that confirm it or clear a lock). `planted_later`: trust.verify's (migrate's)."""
    import psycopg2
    from yoyo.connections import parse_uri

    url = session_url(target, read_only, limits)
    try:
        backend = backend_class()(parse_uri(url), MIGRATION_TABLE)
        backend.limits, backend.flyway_table, backend.out_of_order = limits, target.flyway_table, target.out_of_order
        if backend.flyway_table != backend_class().flyway_table:
            backend.init_connection(backend.connection)  # the pins again, with SCHEMA_TABLE's name
        pinned.pin(backend.connection)  # (init_connection set its path to pg_catalog, committed: see pinned.py)
        if refuse_foreign and (backend.foreign or backend.twin) and (target.schema or not target.schemas):
            server_session.leave(backend.connection)  # (its pins RESET: a pool's next client reads its own path)
            raise MigratorError((tenant_mark.foreign_history if backend.foreign else tenant_mark.twin_histories)(
                backend, target), USAGE)
        try:  # before anything touches those tables (doctor reports it instead)
            state = backend.verified = trust.verify(
                backend, target.schema or backend.bookkeeping_schema, replace(target, schema=None).where, read_only,
                refuse=refuse_foreign, unconfirmed_ok=unconfirmed_ok, target=target, planted_later=planted_later,
                options=f" --schema {target.schema}" if target.schema else "")
            # What yoyo's get_backend does (init_database), less what a run does not need: its lock table made
            # only when missing, and no DDL probe (a table created and dropped on every connect): the probe's
            # answer (has_transactional_ddl, PostgreSQL's True unless it could not create the table) is read only
            # when a migration's later step fails, to undo its earlier steps, and every migration here is one step.
            if not read_only and not backend.trusted_at_connect([backend.lock_table]):
                with pg_lock.creating_bookkeeping(backend.connection, backend.bookkeeping_schema), \
                        trust.revoking_at_commit(backend, [backend.lock_table]):
                    backend.create_lock_table()
                    # (one another role made meanwhile commits nothing of ours: verified here, before its first use)
                    trust.created(backend.connection, backend.bookkeeping_schema, [backend.lock_table])
        except MigratorError:
            server_session.leave(backend.connection)
            raise
    except psycopg2.Error as exc:  # OperationalError, or ProgrammingError for a bad DSN option
        raise connection_error(exc, target)
    try:
        if not read_only:
            _check_bookkeeping(backend, target, state)
        yield backend
    finally:
        backend.connection.close()


def _check_bookkeeping(backend, target: PostgresTarget, state) -> None:
    """yoyo ignores a failure to create its lock table and later fails obscurely; say why instead.
    A tenant's lock table is marked as a tenant's (TENANT_MARK); where the user may not write it (COMMENT
    needs the owner), the run goes on and says who can: a plain run refuses an unmarked history elsewhere."""
    schema = target.schema or backend.bookkeeping_schema
    exists, usage, user = state[:3]
    if target.schema and not exists:
        raise MigratorError(f"schema {target.schema} does not exist on {target.where}; create it, or pass "
                            "--create-schemas to `migrate`")
    plain = not target.schema or target.schema == "public"
    if plain and usage and backend.trusted_at_connect([backend.lock_table]):
        return  # (its lock table there and the schema usable: a plain run has no mark to read)
    state = tenant_mark.state(backend.connection, schema)
    if (state is None or not usage) and backend.execute("SELECT pg_catalog.current_setting('transaction_read_only') "
                                                        "OPERATOR(pg_catalog.=) 'on'").fetchone()[0]:
        raise server_session.read_only(replace(target, schema=None).where)  # (no GRANT would help)
    if state is None or not usage:
        lacks, grant = ("cannot create tables in", "CREATE") if usage else ("has no USAGE on", "USAGE, CREATE")
        raise MigratorError(output.visible(  # (a home schema may be named anything: one line)
            f"user {user} {lacks} schema {schema} on {replace(target, schema=None).where} (yoyo's bookkeeping "
            f"needs it); run GRANT {grant} ON SCHEMA {schema} TO {user}, or connect as the schema's owner"))
    marked, may_mark, owner = state
    if plain or marked:
        return
    if may_mark:
        with backend.transaction():
            backend.execute(f"COMMENT ON TABLE {backend.lock_table_quoted} IS :mark", {"mark": TENANT_MARK})
    else:
        output.note(f"note: schema {schema}'s history lacks the tenant mark (a plain run refuses it rather than take "
                    f"it); user {user} may not write it; run as its owner ({owner}): {tenant_mark.mark_statement(schema)}")
