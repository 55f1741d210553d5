"""Throwaway databases on a server, and migrations applied to them through the runner's own path.

A scratch database is created from template0 (nothing an administrator added to template1), named
`hcm_scratch_<random>`, and dropped when the work is done, even after a failure. It is never the
database the target names: only that database's server is used.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

from migrator import postgres
from migrator.errors import MigratorError
from migrator.schema.describe import describe
from migrator.schema.model import Description
from migrator.targets import PostgresTarget

PREFIX = "hcm_scratch_"
DROP_WAIT = 10.0  # seconds a session the user may not end can keep it from dropping its scratch database
LOCK_SECONDS = 10.0  # nobody else knows the scratch database; the lock is the runner's path, taken at once


def _on_server(server: PostgresTarget, statements: list[str], what: str = "create") -> list[tuple]:
    """Each statement in turn, autocommit (CREATE DATABASE runs in no transaction), on one connection to the
    server; the last one's rows."""
    import psycopg2

    try:
        conn = psycopg2.connect(server.url, connect_timeout=10)
    except psycopg2.Error as exc:
        raise postgres.connection_error(exc, server)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    except psycopg2.Error as exc:
        said = (exc.pgerror or str(exc)).strip().splitlines()[0]
        if what == "drop":  # (its right to CREATE DATABASE was proven when it was made)
            raise MigratorError(f"cannot drop scratch database {statements[-1].split(chr(34))[1]} on {server.where} as "
                                f"{server.user or 'the default user'} ({said}); it is left behind: as its owner or a "
                                f"superuser run {statements[-1]}")
        raise MigratorError(f"cannot create or drop a scratch database on {server.where} as {server.user or 'the default user'} "
                            f"({said}); schema checks need a server "
                            "where that user may CREATE DATABASE (e.g. the local development one)")
    finally:
        conn.close()


# Nobody but the user (and superusers) may connect to a scratch database: a new database's CONNECT is PUBLIC's,
# and before PostgreSQL 15 so is CREATE on its public schema: a co-tenant of the server could plant there what
# the pending files then call as the user (a public.lower(varchar) beating pg_catalog's). Made closed, PUBLIC's
# rights taken, then opened; a session already in it (a superuser's, or a member of the user's role) refuses it.
OTHERS = ("SELECT pg_catalog.count(*), pg_catalog.string_agg(DISTINCT a.usename::pg_catalog.text, ', ') "
          "FROM pg_catalog.pg_stat_activity a WHERE a.datname OPERATOR(pg_catalog.=) %s "
          "AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()")


# The pending files under review run as the scratch user: a superuser's or a server-wide right would act on the
# scratch server's machine (COPY ... TO PROGRAM, pg_read_file, lo_export, ALTER SYSTEM) or on its other databases
# (DROP DATABASE). Read for the session user and every role it is a member of: a file may SET ROLE to any of them or
# RESET ROLE back, so a superuser's SET ROLE to a weaker role would protect nothing.
SERVER_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")
POWERS = ("SELECT r.rolname::pg_catalog.text, r.rolname OPERATOR(pg_catalog.=) session_user, r.rolsuper, "
          "r.rolcreaterole, r.rolreplication, (SELECT pg_catalog.string_agg(d.datname::pg_catalog.text, ', ' "
          "ORDER BY d.datname) FROM pg_catalog.pg_database d WHERE pg_catalog.pg_has_role(session_user, d.datdba, "
          "'MEMBER') AND d.datname::pg_catalog.text NOT LIKE 'hcm\\_scratch\\_%') FROM pg_catalog.pg_roles r "
          "WHERE r.rolname OPERATOR(pg_catalog.=) session_user OR pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER')")


# A role's own password and defaults are server-wide, and any role may change its own (ALTER ROLE CURRENT_USER): the
# live target's user, a member of it or a role it is a member of (read in pg_auth_members: a superuser is no member)
# must not run the files under review, on any server a role of that name is on (a host has many names). (attack23w 1)
LIVE = ("WITH RECURSIVE up(oid) AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) "
        "session_user UNION SELECT a.roleid FROM pg_catalog.pg_auth_members a JOIN up ON a.member OPERATOR("
        "pg_catalog.=) up.oid), down(oid) AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR("
        "pg_catalog.=) session_user UNION SELECT a.member FROM pg_catalog.pg_auth_members a JOIN down ON a.roleid "
        "OPERATOR(pg_catalog.=) down.oid) SELECT r.rolname OPERATOR(pg_catalog.=) session_user, EXISTS (SELECT FROM up "
        "WHERE up.oid OPERATOR(pg_catalog.=) r.oid), EXISTS (SELECT FROM down WHERE down.oid OPERATOR(pg_catalog.=) "
        "r.oid) FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) %s")


def powers(server: PostgresTarget) -> list[str]:
    """What `server`'s user may do beyond its own scratch databases; empty when nothing."""
    from psycopg2.extensions import QuotedString

    rows = _on_server(server, [POWERS])
    if any(me and superuser for _, me, superuser, *_ in rows):
        return ["is a superuser"]
    live = server.live_user
    related = _on_server(server, [LIVE.replace("%s", QuotedString(live).getquoted().decode())]) if live else []
    said_live = [f"is the live target's user {live}" if me else f"is a member of the live target's user {live}"
                 if up else f"has the live target's user {live} as a member" for me, up, down in related
                 if me or up or down]
    said = [f"may SET ROLE to superuser {name}" for name, _, superuser, *_ in rows if superuser]
    said += [f"has CREATEROLE{'' if me else ' through ' + name}" for name, me, _, create, *_ in rows if create]
    said += [f"has REPLICATION{'' if me else ' through ' + name}" for name, me, *_, repl, _ in rows if repl]
    said += [f"is a member of {name}" for name, *_ in rows if name in SERVER_ROLES]
    owned = rows[0][-1] if rows else None
    return said + ([f"owns database(s) {owned}"] if owned else []) + said_live


def runs_as(server: PostgresTarget) -> PostgresTarget:
    """Who the files run as on `server`: on the local development server its role without rights (devdb), else the
    scratch URL's user; refused in one line when that user has more rights than its scratch databases need."""
    from migrator import devdb

    user = devdb.scratch_role(server) if server.local_dev else server
    said = "; ".join(powers(user))
    if not said:
        return user
    why = ("the pending files under review would run there with those rights (COPY ... TO PROGRAM runs a shell "
           "command on that machine, DROP DATABASE drops a database)")
    if "live target's user" in said:
        why += ("; and could change that role on the live server (ALTER ROLE CURRENT_USER PASSWORD ..., SET ...): "
                "a role's password and defaults are server-wide")
    if server.local_dev:
        raise MigratorError(f"refusing scratch role {user.user} on the local development server {server.where}: it "
                            f"{said}; {why}: as postgres there, revoke that from {user.user} (or drop the role: the "
                            "runner makes it again)")
    raise MigratorError(f"refusing scratch server {server.where} as user {user.user or 'the default user'}: it {said}; "
                        f"{why}: set --scratch-url (or SCRATCH_DATABASE_URL) to a role that may CREATE DATABASE and "
                        "nothing more (CREATE ROLE hcm_scratch LOGIN CREATEDB), or unset it to use the local "
                        "development server")


@contextmanager
def scratch_database(server: PostgresTarget) -> Iterator[PostgresTarget]:
    """A new, empty database on `server`'s server, which only the user the files run as (runs_as) may connect to;
    yields its target; dropped on exit."""
    from psycopg2.extensions import QuotedString

    user = runs_as(server)
    owner = f' OWNER "{user.user}"' if user is not server else ""
    name = PREFIX + uuid.uuid4().hex[:12]
    _on_server(server, [f'CREATE DATABASE "{name}" TEMPLATE template0 ALLOW_CONNECTIONS false{owner}'])
    try:
        [(others, who)] = _on_server(server, [f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC',
                                              f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true',
                                              OTHERS.replace("%s", QuotedString(name).getquoted().decode())])
        if others:
            raise MigratorError(f"refusing scratch database {name} on {server.where}: {others} other session(s) of "
                                f"user(s) {who} connected to it as soon as it was made; what they ran there would run "
                                "as the migration role: find who (pg_stat_activity) and stop it, then run again")
        # (no other role may connect: PUBLIC's CREATE on public, template0's before PostgreSQL 15, reaches no one)
        yield dataclasses.replace(user, dbname=name, notes=[], creators_trusted=(*server.creators_trusted, "PUBLIC"))
    finally:
        _drop(server, name)


def _drop(server: PostgresTarget, name: str) -> None:
    """Closed to new sessions, then dropped; retried while a session the user may not end is in it (a co-tenant's
    refused login still starting up), for at most DROP_WAIT seconds."""
    deadline = time.monotonic() + DROP_WAIT
    while True:
        try:
            _on_server(server, [f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
                                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], "drop")
            return
        except MigratorError as exc:
            if "permission denied to terminate" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@dataclasses.dataclass
class Scratch:
    """A scratch database with a runner's backend on it: apply, roll back, describe."""

    backend: object
    target: PostgresTarget

    def apply(self, migration) -> None:
        from yoyo.migrations import MigrationList

        for _ in postgres.apply(self.backend, self.target, MigrationList([migration])):
            pass

    def replay(self, migration) -> None:
        """An applied migration rebuilt, as apply, without its notes (said when it was applied)."""
        from migrator.postgres import statement_bound

        with statement_bound.replaying():
            self.apply(migration)

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
