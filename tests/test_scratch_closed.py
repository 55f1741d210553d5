"""Scratch databases (plan --impact, sql verify, sql adopt) are the user's alone (sixth review, #2 and #3).

A new database's CONNECT is PUBLIC's, and before PostgreSQL 15 so is CREATE on its public schema: a co-tenant
polling pg_database could connect to the scratch database and plant a public.lower(varchar) the pending files
then call as the migration role. The runner here is a CREATEDB role, not a superuser (the steps must be its own).
"""

from __future__ import annotations

import dataclasses
import threading
import uuid

import psycopg2
import pytest

from conftest import add_migration, one_error_line
from test_planted_objects import low  # noqa: F401 (a fixture)
from test_schema_proof import scratch_databases


@pytest.fixture
def creator(pg):
    """A login role that may CREATE DATABASE and nothing more."""
    name = "scr_" + uuid.uuid4().hex[:8]
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN CREATEDB")
    yield name
    with pg.connect() as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(f"DROP ROLE {name}")


@pytest.fixture
def template0_before_15(pg):
    """template0 as PostgreSQL 14 ships it: PUBLIC may CREATE on its public schema (as the review simulated it)."""
    def in_template0(statement):
        with pg.connect() as conn, conn.cursor() as cur:
            cur.execute("UPDATE pg_database SET datallowconn = true WHERE datname = 'template0'")
        conn.close()
        try:
            with psycopg2.connect(dbname="template0", user=pg.user, host=pg.host, port=pg.port) as conn, \
                    conn.cursor() as cur:
                cur.execute(statement)
            conn.close()
        finally:
            with pg.connect() as conn, conn.cursor() as cur:
                cur.execute("UPDATE pg_database SET datallowconn = false WHERE datname = 'template0'")
            conn.close()

    in_template0("GRANT CREATE ON SCHEMA public TO PUBLIC")
    yield
    in_template0("REVOKE CREATE ON SCHEMA public FROM PUBLIC")


def lower_file(sql_dir) -> None:
    add_migration(sql_dir, "0002_items", "CREATE TABLE items (id int PRIMARY KEY, name varchar(20));\n"
                  "INSERT INTO items VALUES (1, 'A');\nUPDATE items SET name = lower(name);\n", "DROP TABLE items;\n")


def test_a_co_tenant_polling_for_scratch_databases_cannot_connect_to_one(cli, pg, sql_dir, low, creator,
                                                                         template0_before_15):
    lower_file(sql_dir)
    seen: list[str] = []  # each try's outcome
    done = threading.Event()

    def planter():  # the review's scratch_planter.py: connect to each new scratch database, plant lower(varchar)
        main = psycopg2.connect(dbname="postgres", user=low, host=pg.host, port=pg.port)
        main.autocommit = True
        while not done.is_set():
            with main.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'hcm\\_scratch\\_%'")
                names = [row[0] for row in cur.fetchall()]
            for name in names:
                try:
                    conn = psycopg2.connect(dbname=name, user=low, host=pg.host, port=pg.port)
                except psycopg2.Error as exc:
                    seen.append(" ".join(str(exc).split()))
                    continue
                seen.append("connected")
                try:
                    conn.autocommit = True
                    conn.cursor().execute("CREATE FUNCTION public.lower(x varchar) RETURNS text LANGUAGE sql "
                                          "AS 'SELECT pg_catalog.upper(x::text)'")
                    seen.append("planted")
                except psycopg2.Error:
                    pass
                finally:
                    conn.close()
        main.close()

    thread = threading.Thread(target=planter)
    thread.start()
    try:
        result = cli("sql", "verify", "--sql-dir", sql_dir, "--scratch-url", pg.url("postgres", user=creator))
    finally:
        done.set()
        thread.join()
    assert result.exit_code == 0, result.output
    assert "connected" not in seen and "planted" not in seen, seen
    assert [what for what in seen if "permission denied for database" in what], seen
    assert scratch_databases(pg) == []


def sitting_in_scratch(monkeypatch, pg, user):
    """A session of `user` connects to each scratch database the moment it opens (before the runner's check)."""
    from migrator.schema import scratch

    real, sitters = scratch._on_server, []

    def on_server(server, statements, what="create"):
        if statements[0].startswith("REVOKE"):
            real(server, statements[:2], what)
            sitters.append(psycopg2.connect(dbname=statements[0].split('"')[1], user=user, host=pg.host, port=pg.port))
            statements = statements[2:]
        return real(server, statements, what)

    monkeypatch.setattr(scratch, "_on_server", on_server)
    return sitters


def test_a_session_already_in_the_scratch_database_refuses_it(cli, pg, sql_dir, creator, monkeypatch):
    sitters = sitting_in_scratch(monkeypatch, pg, creator)  # (a member of the user's role may connect)
    lower_file(sql_dir)
    line = one_error_line(cli("sql", "verify", "--sql-dir", sql_dir, "--scratch-url", pg.url("postgres", user=creator)))
    assert "refusing scratch database hcm_scratch_" in line and f"1 other session(s) of user(s) {creator}" in line, line
    assert scratch_databases(pg) == [], "dropped (WITH (FORCE) ends the user's own session)"
    for conn in sitters:
        conn.close()


def test_a_scratch_database_left_behind_is_said_truthfully(cli, pg, sql_dir, creator, monkeypatch):
    """A superuser's session in it: the user cannot end it, the drop fails; the line says so, not CREATEDB."""
    sitters = sitting_in_scratch(monkeypatch, pg, pg.user)
    try:
        line = one_error_line(cli("sql", "verify", "--sql-dir", sql_dir,
                                  "--scratch-url", pg.url("postgres", user=creator)))
        [name] = scratch_databases(pg)
        assert f"cannot drop scratch database {name}" in line and "it is left behind" in line, line
        assert f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' in line and "may CREATE DATABASE" not in line, line
    finally:
        for conn in sitters:
            conn.close()
        with pg.connect() as conn, conn.cursor() as cur:
            conn.autocommit = True
            for name in scratch_databases(pg):
                cur.execute(f'DROP DATABASE "{name}"')


def test_a_session_the_user_cannot_end_is_waited_out_before_the_scratch_database_is_dropped(pg, creator):
    """DROP DATABASE ... WITH (FORCE) cannot end a backend of a role the user is not a member of: a co-tenant's
    refused login still starting up (a load race seen in the suite), here a member of the user's role that got
    in. The drop is retried while such a session lasts, not failed at once leaving the database behind."""
    from schema_helpers import server_target
    from migrator.schema.scratch import scratch_database

    member = "scrm_" + uuid.uuid4().hex[:8]
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {member} LOGIN IN ROLE {creator}")
    try:
        target = dataclasses.replace(server_target(pg), user=creator)
        with scratch_database(target) as scratch:
            inside = psycopg2.connect(dbname=scratch.dbname, user=member, host=pg.host, port=pg.port,
                                      password=pg.password)
            threading.Timer(1.0, inside.close).start()
        assert scratch_databases(pg) == []
    finally:
        with pg.connect() as conn, conn.cursor() as cur:
            conn.autocommit = True
            cur.execute(f"DROP ROLE {member}")
