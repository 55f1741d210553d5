"""Reads that cannot change within a run are made once (issue 22: round trips per everyday command).

Counted, never timed: bench/statements.py wraps psycopg2.connect and counts what every connection sends."""

from __future__ import annotations

from bench.statements import counting
from conftest import add_migration, migrate, ok

# pinned.catalog_path's statements: the file's path read and pg_catalog set, then the path set back.
CATALOG_PATH = ("SELECT pg_catalog.current_setting('search_path'), pg_catalog.set_config('search_path',",
                "SELECT pg_catalog.set_config('search_path', %s, %s)")


def test_the_runs_own_connection_reads_the_catalog_without_changing_its_pinned_path(cli, db, sql_dir):
    add_migration(sql_dir, "0100_t", "CREATE TABLE t (id int PRIMARY KEY);", "DROP TABLE t;")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    with counting() as counts:
        ok(migrate(cli, db, sql_dir, "--quiet"))  # a no-op: every bookkeeping look-up on the run's own connection
    looked_up = sum(n for text, n in counts.by_text.items() if text.startswith("WITH me AS"))
    assert looked_up >= 4  # (trust.present's look-ups ran: the count below is of something that happened)
    assert [text for text in counts.by_text if text.startswith(CATALOG_PATH)] == []


def test_a_session_not_pinned_still_reads_under_pg_catalog_and_gets_its_own_path_back(db):
    # A migration's session (its path is the file's): the read runs under pg_catalog, the file's path set back.
    import psycopg2

    from migrator import pinned

    with counting() as counts:
        connection = psycopg2.connect(db.url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SET search_path TO public")
            with pinned.catalog_path(cursor):
                cursor.execute("SELECT pg_catalog.current_setting('search_path')")
                assert cursor.fetchone() == ("pg_catalog, pg_temp",)
            cursor.execute("SELECT pg_catalog.current_setting('search_path')")
            assert cursor.fetchone() == ("public",)
            pinned.pin(connection)  # (only the run's own connection is: its path is pg_catalog for good)
            cursor.execute("SET search_path TO pg_catalog")
            sent = counts.total
            with pinned.catalog_path(cursor):
                pass
            assert counts.total == sent
    finally:
        connection.close()


def test_yoyos_tables_are_verified_once_per_connection_when_yoyo_changes_nothing(cli, db, sql_dir, monkeypatch):
    from migrator import trust

    add_migration(sql_dir, "0100_t", "CREATE TABLE t (id int PRIMARY KEY);", "DROP TABLE t;")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    verified, created = [], trust.created
    monkeypatch.setattr(trust, "created", lambda connection, schema, tables: (
        verified.append((id(connection), tuple(tables))), created(connection, schema, tables))[1])
    ok(migrate(cli, db, sql_dir, "--quiet"))
    yoyos = [seen for seen in verified if "_yoyo_migration" in seen[1]]
    assert yoyos and len(yoyos) == len(set(yoyos))


def test_each_files_ddl_targets_are_parsed_once_and_an_edited_file_afresh(tmp_path, monkeypatch):
    import pglast

    from migrator.schema import targets

    parsed = []
    parse = pglast.parse_sql
    monkeypatch.setattr(pglast, "parse_sql", lambda text: (parsed.append(text), parse(text))[1])
    path = tmp_path / "0001_t.sql"
    path.write_text("CREATE TABLE round_trip_a (id int);")
    assert targets.named([path]) == {"round_trip_a"}
    assert targets.named([path]) == {"round_trip_a"}
    assert len(parsed) == 1
    path.write_text("CREATE TABLE round_trip_b (id int);")
    assert targets.named([path]) == {"round_trip_b"}
    assert len(parsed) == 2
