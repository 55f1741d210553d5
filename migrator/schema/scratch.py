"""Throwaway databases on a server, and migrations applied to them through the runner's own path.

A scratch database is created from template0 (nothing an administrator added to template1), named
`hcm_scratch_<random>`, and dropped when the work is done, even after a failure. It is never the
database the target names: only that database's server is used.
"""

from __future__ import annotations

import dataclasses
import uuid
from contextlib import contextmanager
from typing import Iterator

from migrator import postgres
from migrator.errors import MigratorError
from migrator.schema.describe import describe
from migrator.schema.model import Description
from migrator.targets import PostgresTarget

PREFIX = "hcm_scratch_"
LOCK_SECONDS = 10.0  # nobody else knows the scratch database; the lock is the runner's path, taken at once


def _on_server(server: PostgresTarget, statement: str) -> None:
    import psycopg2

    try:
        conn = psycopg2.connect(server.url, connect_timeout=10)
    except psycopg2.Error as exc:
        raise postgres.connection_error(exc, server)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(statement)
    except psycopg2.Error as exc:
        raise MigratorError(f"cannot create or drop a scratch database on {server.where} as {server.user or 'the default user'} "
                            f"({(exc.pgerror or str(exc)).strip().splitlines()[0]}); schema checks need a server "
                            "where that user may CREATE DATABASE (e.g. the local development one)")
    finally:
        conn.close()


@contextmanager
def scratch_database(server: PostgresTarget) -> Iterator[PostgresTarget]:
    """A new, empty database on `server`'s server; yields its target; dropped on exit."""
    name = PREFIX + uuid.uuid4().hex[:12]
    _on_server(server, f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield dataclasses.replace(server, dbname=name, notes=[])
    finally:
        _on_server(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclasses.dataclass
class Scratch:
    """A scratch database with a runner's backend on it: apply, roll back, describe."""

    backend: object
    target: PostgresTarget

    def apply(self, migration) -> None:
        from yoyo.migrations import MigrationList

        for _ in postgres.apply(self.backend, self.target, MigrationList([migration])):
            pass

    def rollback(self, migration) -> None:
        migration.load()
        migration.rollback_statements()  # a missing rollback file: one clear line
        for _ in postgres.rollback(self.backend, self.target, [migration]):
            pass

    def describe(self) -> Description:
        return describe(self.backend.connection, self.backend.bookkeeping_schema)


@contextmanager
def scratch(server: PostgresTarget, schema: str | None = None) -> Iterator[Scratch]:
    """A scratch database, connected and locked as `migrate` does it; with `schema`, as a tenant run
    does it: that schema created there, search_path = it, public, the bookkeeping in it, and only it
    (with the database-wide extensions) described."""
    with scratch_database(server) as target:
        if schema:
            postgres.missing_schemas(target, [schema], create=True)
            target = target.for_schema(schema)
        with (postgres.connect(target, read_only=False) as backend,
              postgres.locked(backend, target, LOCK_SECONDS, lambda _line: None)):
            yield Scratch(backend, target)


def build(server: PostgresTarget, migrations) -> Description:
    """The description of every migration applied, in order, to a scratch database."""
    with scratch(server) as db:
        for migration in postgres.ordered(migrations):
            db.apply(migration)
        return db.describe()
