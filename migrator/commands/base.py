"""What every command is given, and what the commands share: resolving a target, the locked connection."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from migrator import output
from migrator.env import Env
from migrator.errors import USAGE, MigratorError
from migrator.limits import resolve_ddl_limits, resolve_rewrite_threshold
from migrator.settings import postgres_configured, resolve_mongo, resolve_postgres
from migrator.targets import DdlLimits, MongoOptions, MongoTarget, PostgresOptions, PostgresTarget

Sink = Callable[[str], None]
PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCK_TIMEOUT = 10.0  # seconds to wait for another runner's lock


@dataclass
class CommandSettings:
    """What one command was asked for, as given; the commands resolve it (so errors name their setting)."""

    env: Env = field(default_factory=Env.load)
    postgres: PostgresOptions = field(default_factory=PostgresOptions)
    mongo: MongoOptions = field(default_factory=MongoOptions)
    sql_dir: Path = PROJECT_ROOT / "sql"
    mongo_dir: Path = PROJECT_ROOT / "mongo"
    mongo_listed: bool = True  # False: another service's SQL folder and no Mongo folder given (options.py)
    lock_timeout: float = LOCK_TIMEOUT
    ddl_lock_timeout: str | None = None
    statement_timeout: str | None = None
    lock_retry_budget: str | None = None
    note: Sink = output.note  # context lines (stderr)
    echo: Sink = output.result  # progress lines as they happen (stdout)
    show: Callable[[object], None] = output.report  # a finished report (a part of one, e.g. migrate's SQL part)
    strict: bool = False  # refuse to migrate while the live schema drifted
    pinned: PostgresTarget | None = None  # one tenant's schema (commands/tenants.py): used as resolved
    fail_fast: bool = False  # over several schemas: stop at the first that fails
    parallel: int = 1  # over several schemas: how many at once
    mongo_off: bool = False  # a schema's part of a run: Mongo is the run's, done once
    progress: bool = True  # live progress of long statements (--quiet turns it off)
    show_blocker_query: bool = False  # a blocking session's query in progress lines (without literals)
    described: object = None  # a tenant's schema as read at the start of the run (tenants.run): drift's fast path
    local_mongo: MongoTarget | None = None  # the local FerretDB, once started for this command
    rewrite_threshold_rows: int | None = None  # --rewrite-threshold-rows (else REWRITE_THRESHOLD_ROWS, else 10,000)

    @property
    def patch_dir(self) -> Path | None:
        """The Mongo folder this run lists when Mongo is not configured (None: not this run's concern)."""
        return self.mongo_dir if self.mongo_listed else None

    def limits(self) -> DdlLimits:
        return resolve_ddl_limits(self.ddl_lock_timeout, self.statement_timeout, self.env, self.lock_retry_budget)

    def rewrite_threshold(self) -> int:
        return resolve_rewrite_threshold(self.rewrite_threshold_rows, self.env)

    def mongo_target(self, required: bool = False) -> MongoTarget | None:
        """The Mongo target (its notes said), or None when nothing is configured (an error if required)."""
        target = None if self.mongo_off else resolve_mongo(self.mongo, self.env)
        local = target is None and not self.mongo_off and not postgres_configured(self.postgres, self.env)
        if local:  # nothing configured at all: the local development database serves Mongo too (FerretDB)
            target = self._local_mongo()
            if target is None and not required:
                from migrator.ferretdb import NO_GO

                self.note(f"note: MongoDB is not configured and there is no local one: {NO_GO}")
        if target is None and required:
            from migrator.ferretdb import NO_GO

            raise MigratorError("MongoDB is not configured: set MONGO_URL (and MONGO_DB), or pass --secret-name"
                                + (f"; {NO_GO}" if local else ""), USAGE)
        for line in target.notes if target else ():
            self.note(line)
        return target

    def _local_mongo(self) -> MongoTarget | None:
        from migrator import devdb

        if self.local_mongo is not None:
            return self.local_mongo
        found = self.local_mongo = devdb.ensure_mongo(self.env, self.note)
        if found is not None:
            self.note(f"no MongoDB configured: using the local development Mongo (FerretDB) at {found.display_uri} "
                      f"(database {found.database}; set MONGO_URL to use another; `make db-stop` stops it)")
        return found

    def postgres_target(self) -> PostgresTarget:
        """Resolve and, when nothing is configured, start the local database, saying so loudly."""
        from migrator import postgres

        if self.pinned is not None:
            return self.pinned
        target = resolve_postgres(self.postgres, self.env)
        for line in target.notes:
            self.note(line)
        if target.local_dev:
            schemas, create = target.schemas, target.create_schemas
            target = postgres.resolve_target(target, self.env)
            target.schemas, target.create_schemas = schemas, create
            self.note(f"no database configured: using the local development database at {target.display_url} "
                      "(set DATABASE_URL or DB_HOST to use another; `make db-stop` stops it)")
        with contextlib.suppress(MigratorError):  # (a bad limit: said by the commands that run migrations)
            target.catalog_waits = self.limits()  # --ddl-lock-timeout, --lock-retry-budget too (settings.py)
        return with_history(target, self.sql_dir)


def with_history(target: PostgresTarget, sql_dir) -> PostgresTarget:
    """A Flyway folder's run locks its own history (SCHEMA_TABLE), so services sharing a schema never wait for each
    other; the runner's own folder, its schema's (pg_lock.lock_key)."""
    from migrator.postgres import flyway

    target.history = target.flyway_table if flyway.is_flyway_folder(sql_dir) else None
    return target


SCRATCH_ORIGIN = "--scratch-url (or SCRATCH_DATABASE_URL)"


def scratch_server(settings: CommandSettings, url: str | None, live_user: str | None = None) -> PostgresTarget:
    """Where schema checks build their scratch databases: --scratch-url, else the local development server.
    `live_user`: the live target's user, when the caller has resolved that target already (else resolved here)."""
    from migrator import devdb

    if url:  # its errors and notes name where it came from, not --database-url
        try:
            server = resolve_postgres(PostgresOptions(database_url=url), settings.env)
        except MigratorError as exc:
            raise MigratorError(str(exc).replace("--database-url", SCRATCH_ORIGIN), exc.exit_code) from exc
        server.sources = {key: value.replace("--database-url", SCRATCH_ORIGIN) for key, value in server.sources.items()}
        server.live_user = live_user
        if live_user is None:
            with contextlib.suppress(MigratorError):  # (a command without a live target: sql verify, adopt)
                server.live_user = resolve_postgres(settings.postgres, settings.env).user
        return server
    return devdb.ensure_running(settings.env)


@contextlib.contextmanager
def locked_backend(settings: CommandSettings, limits: DdlLimits | None = None,
                   migrating: bool = False, unconfirmed_ok: bool = False) -> Iterator[tuple]:
    """(backend, target) for a command that changes the database: connected, and holding the lock. `migrating`
    (migrate): the connection lost before its first migration began is one line, nothing applied.
    `unconfirmed_ok`: a history others could write is not refused (the command that confirms it). Who may plant
    objects where a migration's SQL resolves names is migrate's to check once a file will run (planted_later)."""
    from migrator import pg_lock, postgres

    pg_lock.bookkeeping_wait(settings.lock_timeout)  # (connecting may create the schema's shared bookkeeping)
    target = settings.postgres_target().one_schema("this command")
    settings.note(f"PostgreSQL: {target.display_url}" + (f" schema {target.schema}" if target.schema else ""))
    for text in limits.notes if limits is not None else ():  # (lock_timeout 0, or clamped below statement_timeout)
        output.note(f"note: {text}")
    with (postgres.connect(target, read_only=False, limits=limits, unconfirmed_ok=unconfirmed_ok,
                           planted_later=migrating) as backend,
          postgres.lost_before_migrations(backend, target) if migrating else contextlib.nullcontext(),
          postgres.locked(backend, target, settings.lock_timeout, settings.note)):
        yield backend, target


@contextlib.contextmanager
def watching(settings: CommandSettings, backend, target: PostgresTarget) -> Iterator[None]:
    """Live progress of each migration session `backend` opens, unless --quiet; SIGTERM cancels its statement."""
    from migrator.postgres import connection, watch

    with watch.Watcher(connection.watcher_params(target, watch.APPLICATION_NAME), show=settings.progress,
                       show_query=settings.show_blocker_query) as watcher:
        backend.watcher = watcher
        try:
            yield
        finally:
            backend.watcher = None
