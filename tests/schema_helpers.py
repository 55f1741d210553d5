"""Shared by tests/test_schema_*.py: the suite's server as a runner target, migration folders, psql builds."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import PROJECT_ROOT, SCRATCH_USER, Database, Server, psql_file

from migrator.settings import PostgresTarget

KINDS = Path(__file__).resolve().parent / "schema_kinds.sql"
KINDS_ID = "0002_every_kind"


def server_target(pg: Server) -> PostgresTarget:
    """The suite's server as a scratch server: as a role that may CREATE DATABASE and nothing more."""
    pg.scratch_url()
    return PostgresTarget(host=pg.host, port=pg.port, dbname="postgres", user=SCRATCH_USER, password=SCRATCH_USER)


def db_target(db: Database) -> PostgresTarget:
    return PostgresTarget(host=db.server.host, port=db.server.port, dbname=db.name, user=db.server.user,
                          password=db.server.password)


def with_kinds(sql_dir: Path) -> Path:
    """sql_dir plus a migration creating every kind of object the description covers (and its rollback)."""
    shutil.copy(KINDS, sql_dir / f"{KINDS_ID}.sql")
    shutil.copy(KINDS.with_name("schema_kinds.rollback.sql"), sql_dir / f"{KINDS_ID}.rollback.sql")
    return sql_dir


def psql_all(db: Database, paths) -> None:
    for path in paths:
        result = psql_file(db, path)
        assert result.returncode == 0, result.stderr


def migration_files(sql_dir: Path) -> list[Path]:
    return sorted(p for p in sql_dir.glob("*.sql") if not p.name.endswith(".rollback.sql"))


def describe_db(db: Database):
    import psycopg2

    from migrator.schema.describe import describe

    conn = psycopg2.connect(db.url)
    try:
        return describe(conn)
    finally:
        conn.close()


REPO_SQL = PROJECT_ROOT / "sql"
