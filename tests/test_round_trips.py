"""Reads that cannot change within a run are made once (issue 22: round trips per everyday command), and a no-op
imports only what it runs.

Counted, never timed: bench/statements.py wraps psycopg2.connect and counts what every connection sends."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.statements import counting
from conftest import PROJECT_ROOT, add_migration, applied, migrate, ok

# pinned.catalog_path's statements: the file's path read and pg_catalog set, then the path set back.
CATALOG_PATH = ("SELECT pg_catalog.current_setting('search_path'), pg_catalog.set_config('search_path',",
                "SELECT pg_catalog.set_config('search_path', %s, %s)")


class _Forgetful(dict):
    """trust._VERIFIED that keeps nothing: every trust.present look-up then asks the server."""

    def __setitem__(self, key, value) -> None:
        pass


# trust.bookkeeping_state's one query: a writing run's reads the search_path first (planted.with_creators)
BOOKKEEPING_LOOKUP = ("WITH me AS", "WITH path(w) AS")


def test_the_runs_own_connection_reads_the_catalog_without_changing_its_pinned_path(cli, db, sql_dir, monkeypatch):
    from migrator import trust

    add_migration(sql_dir, "0100_t", "CREATE TABLE t (id int PRIMARY KEY);", "DROP TABLE t;")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    monkeypatch.setattr(trust, "_VERIFIED", _Forgetful())  # (else the tables verified at connect are not looked up)
    with counting() as counts:
        ok(migrate(cli, db, sql_dir, "--quiet"))  # a no-op: every bookkeeping look-up on the run's own connection
    looked_up = sum(n for text, n in counts.by_text.items() if text.startswith(BOOKKEEPING_LOOKUP))
    assert looked_up >= 3  # (verify, then trust.present's for the checksums and the snapshot: the count below is
    # of something that happened)
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
    verified, created, checked = [], trust.created, []
    monkeypatch.setattr(trust, "created", lambda connection, schema, tables: (
        verified.append((id(connection), tuple(tables))), created(connection, schema, tables))[1])
    verify = trust.verify
    monkeypatch.setattr(trust, "verify", lambda backend, *args, **kwargs: (
        checked.append(id(backend.connection)), verify(backend, *args, **kwargs))[1])
    with counting() as counts:
        ok(migrate(cli, db, sql_dir, "--quiet"))
    # Present at connect, they were verified there, with every bookkeeping table (one look-up): not again
    assert len(checked) == 1 and verified == []
    assert sum(n for text, n in counts.by_text.items() if text.startswith(BOOKKEEPING_LOOKUP)) == 1


def test_a_no_op_migrate_makes_no_table_and_sends_no_failing_statement(cli, db, sql_dir):
    # yoyo's connect tries CREATE TABLE yoyo_lock (failing when it is there: an ERROR in the server's log each run)
    # and probes DDL with a table created and dropped (its DROP fails too); a no-op needs neither
    add_migration(sql_dir, "0100_t", "CREATE TABLE t (id int PRIMARY KEY);", "DROP TABLE t;")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    with counting() as counts:
        ok(migrate(cli, db, sql_dir, "--quiet"))
    ddl = [text for text in counts.by_text if text.startswith(("CREATE", "DROP", "ALTER"))]
    assert ddl == [] and counts.by_text["ROLLBACK"] == 0
    assert counts.total <= 25  # (bench/statements.py's no-op: 63, then 29, before this)


def test_who_may_plant_in_the_schema_is_read_by_a_migrate_that_runs_a_file_and_doctor_only(cli, db, sql_dir,
                                                                                          monkeypatch):
    """planted.py's columns cost ~7 ms of server time in a new session; only migrate's refusal and doctor read them,
    migrate once a file will run (issue 22: the no-op read them at connect, failed before). A no-op's connect check
    asks whether there is anything the runner's own statements meet (an enabled event trigger, a view over its
    bookkeeping: planted.RUNNERS_OWN_ANY), and reads what only when there is (test_bookkeeping_views)."""
    from bench import statements

    add_migration(sql_dir, "0100_t", "CREATE TABLE t (id int PRIMARY KEY);", "DROP TABLE t;")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    sent: list[str] = []
    monkeypatch.setattr(statements.Counts, "add", lambda self, text: sent.append(str(text)))
    reads_creators = "pg_catalog.has_schema_privilege(r.oid, ns.oid, 'CREATE')"  # (planted.COLUMNS)
    for args, reads in ((("status",), 0), (("plan",), 0), (("migrate", "--quiet"), 0), (("doctor",), 1)):
        sent.clear()
        with counting():
            result = cli(*args, "--sql-dir", sql_dir, env=db.db_env())
        assert result.exit_code == 0 or args == ("doctor",), result.output  # (doctor judges this machine too)
        assert sum(reads_creators in text for text in sent) == reads, args
        if args == ("migrate", "--quiet"):
            assert sum("pg_catalog.pg_event_trigger e WHERE e.evtenabled" in text for text in sent) == 1
            assert not any("WITH RECURSIVE over(v, t, table_oid)" in text for text in sent)
    add_migration(sql_dir, "0101_u", "CREATE TABLE u (id int PRIMARY KEY);", "DROP TABLE u;")
    sent.clear()
    with counting():
        ok(migrate(cli, db, sql_dir, "--quiet"))
    assert sum(reads_creators in text for text in sent) == 1  # (once, before its one file)


BOOKKEEPING_READ = "SELECT migration_id, sha256 FROM"  # (state.bookkeeping's checksums: once per read of it)


def _up_to_date(sql_dir) -> str:
    files = len([p for p in sql_dir.glob("*.sql") if not p.name.endswith(".rollback.sql")])
    return f"PostgreSQL: up to date ({files} of {files} migrations applied)"


def test_a_no_op_migrate_reads_the_bookkeeping_once_and_reports_from_it(cli, db, sql_dir):
    add_migration(sql_dir, "0100_t", "CREATE TABLE t (id int PRIMARY KEY);", "DROP TABLE t;")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    with counting() as counts:
        result = ok(migrate(cli, db, sql_dir))
    assert sum(n for text, n in counts.by_text.items() if text.startswith(BOOKKEEPING_READ)) == 1
    assert _up_to_date(sql_dir) in result.stdout


def test_the_drift_check_reads_the_runs_history_with_the_recorded_schema(cli, db, sql_dir):
    # hcm.history (a Flyway folder's history among several in a schema) comes back with the record, not in a read
    # of its own (what it scopes: test_flyway_owned.py)
    add_migration(sql_dir, "0100_t", "CREATE TABLE t (id int PRIMARY KEY);", "DROP TABLE t;")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    with counting() as counts:
        ok(migrate(cli, db, sql_dir, "--quiet"))
    assert [text for text in counts.by_text if "current_setting(%s" in text] == []


def test_a_migrate_that_repaired_the_bookkeeping_reports_what_it_holds_after_the_repair(cli, db, sql_dir):
    # A mark lost (a runner killed between the migration's commit and yoyo's mark): the run marks it, runs nothing,
    # and its summary counts it applied (the bookkeeping read again, not the read from before the repair).
    add_migration(sql_dir, "0100_t", "CREATE TABLE t (id int PRIMARY KEY);", "DROP TABLE t;")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    marked = applied(db)
    db.query("DELETE FROM public._yoyo_migration WHERE migration_id = '0100_t'")
    with counting() as counts:
        result = ok(migrate(cli, db, sql_dir))
    assert "marked 0100_t applied" in result.stderr and applied(db) == marked
    assert _up_to_date(sql_dir) in result.stdout
    assert sum(n for text, n in counts.by_text.items() if text.startswith(BOOKKEEPING_READ)) == 2


def test_a_lock_table_gone_since_the_last_run_is_made_again_and_verified(cli, db, sql_dir):
    add_migration(sql_dir, "0100_t", "CREATE TABLE t (id int PRIMARY KEY);", "DROP TABLE t;")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    db.query("DROP TABLE public.yoyo_lock")
    add_migration(sql_dir, "0101_u", "CREATE TABLE u (id int PRIMARY KEY);", "DROP TABLE u;")
    with counting() as counts:
        ok(migrate(cli, db, sql_dir, "--quiet"))
    assert "yoyo_lock" in db.tables() and applied(db)[-2:] == ["0100_t", "0101_u"]
    assert any(text.startswith('CREATE TABLE "public"."yoyo_lock"') for text in counts.by_text)


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


# What a no-op migrate (all applied, Mongo not configured) never runs, so never imports: a file's reading, running
# and judging, a failure's words, a Flyway folder's history, Mongo's patches, doctor, the reports of other commands,
# the describing code (the catalog's fingerprint answers the drift check); the other command families' CLI and
# commands (sql, mongo, devdb, doctor, help: cli.app.Runner.lazy) and plan --impact's.
NOT_FOR_A_NO_OP = ("migrator.postgres.file_step", "migrator.postgres.running", "migrator.postgres.rewrites",
                   "migrator.postgres.concurrently", "migrator.postgres.history", "migrator.postgres.backfill",
                   "migrator.postgres.splitter", "migrator.mongo.patches", "migrator.doctor", "migrator.reports.tenants",
                   "migrator.reports.impact", "migrator.schema.describe", "migrator.schema.diff", "migrator.schema.model",
                   "migrator.cli.sql", "migrator.cli.mongo", "migrator.cli.devdb", "migrator.cli.doctor",
                   "migrator.commands.mongo", "migrator.commands.plan_impact")
NO_OP_PROBE = """
import sys
from migrator.cli import cli
try:
    cli(sys.argv[1:], prog_name="runner.py")
except SystemExit as exit:
    code = exit.code
print("IMPORTED", ",".join(m for m in {modules!r} if m in sys.modules))
raise SystemExit(code)
"""


def test_a_no_op_migrate_imports_none_of_what_it_does_not_run(db, sql_dir, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "MONGO_", "AWS_"))},
           **db.db_env(), "PYTHONPATH": str(PROJECT_ROOT)}
    args = [sys.executable, "-c", NO_OP_PROBE.format(modules=NOT_FOR_A_NO_OP), "migrate", "--sql-dir", str(sql_dir)]
    first = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0 and "applied 0001" in first.stdout, first.stderr  # (a file ran: some are loaded)
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr
    assert again.stdout.splitlines()[-1] == "IMPORTED "  # none of them
