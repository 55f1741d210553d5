"""The hostile DBA's findings against schema truth (issue 13's attack report), each reproduced on the real server."""

from __future__ import annotations

import threading
import time

import psycopg2
import psycopg2.extensions
import pytest
from conftest import psql_file
from schema_helpers import db_target, describe_db

from migrator import postgres
from migrator.errors import MigratorError
from migrator.schema import snapshot
from migrator.schema.describe import describe
from migrator.schema.diff import diff
from migrator.schema.generate import stale_summary

T = "hcm_report_metadata"
EVIL = "x\nDROP TABLE a CASCADE; SELECT 'pwned' AS "


# --- 1: a name holding a newline never starts a line of its own ------------------------------------

def test_a_newline_in_a_name_is_escaped_in_the_description_the_diff_and_plan_piped_to_psql(cli, db, sql_dir, workdir):
    env = db.db_env()
    db.query("CREATE TABLE a (id int)")
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    db.query(f'CREATE TABLE "{EVIL}" ("col\rumn" int); CREATE INDEX "i\ndx" ON "{EVIL}" ("col\rumn")')
    text = describe_db(db).text
    assert "\nDROP TABLE a" not in text and "\r" not in text
    assert 'CREATE TABLE public.U&"x\\000ADROP TABLE a CASCADE; SELECT \'pwned\' AS " (' in text
    status = cli("status", "--sql-dir", sql_dir, env=env)
    assert 'table U&"x\\000ADROP TABLE a CASCADE' in status.stdout
    assert not any(line.startswith("DROP TABLE") for line in status.stdout.splitlines())

    plan = cli("plan", "--sql-dir", sql_dir, env=env)
    (workdir / "plan.sql").write_text(plan.stdout)
    assert psql_file(db, workdir / "plan.sql").returncode == 0
    assert "a" in db.tables()  # the plan ran nothing hidden in a name


def test_diff_lines_never_hold_a_control_character(db):
    before = describe_db(db)
    db.query('CREATE TABLE t ("a\tb" int); COMMENT ON TABLE t IS E\'one\\rtwo\'')
    lines = diff(before, describe_db(db))
    assert lines and all(ch not in line for line in lines for ch in "\n\r\t")


# --- 2: other sessions' DDL while the catalog is read ----------------------------------------------

def _dropping_cursor(url: str, trigger: str, statement: str):
    """A cursor that runs `statement` on another session just before the query containing `trigger`, once."""
    fired = []

    class Cursor(psycopg2.extensions.cursor):
        def execute(self, query, params=None):
            if trigger in str(query) and not fired:
                fired.append(True)
                other = psycopg2.connect(url)
                other.autocommit = True
                other.cursor().execute(statement)
                other.close()
            return super().execute(query, params)

    return Cursor, fired


@pytest.mark.parametrize("trigger, statement", [
    ("pg_get_indexdef", "DROP INDEX idx_gone"),  # dropped after the snapshot: pg_get_indexdef gives NULL
    ("pg_get_viewdef", "DROP VIEW v_gone"),
    ("pg_get_triggerdef", "DROP TABLE t_gone"),
])
def test_an_object_dropped_between_the_catalog_queries_is_read_again(db, trigger, statement):
    db.query("CREATE TABLE t_gone (id int); CREATE INDEX idx_gone ON t_gone (id); CREATE VIEW v_gone AS SELECT 1 AS x;"
             "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
             "CREATE TRIGGER trg BEFORE INSERT ON t_gone FOR EACH ROW EXECUTE FUNCTION f()")
    for autocommit in (True, False):  # yoyo's idle autocommit connection, and a caller's open transaction
        conn = psycopg2.connect(db.url)
        conn.autocommit = autocommit
        factory, fired = _dropping_cursor(db.url, trigger, statement)
        whole = describe_db(db).text
        conn.cursor_factory = factory
        try:
            described = describe(conn)
            conn.cursor_factory = psycopg2.extensions.cursor
            # Consistent: the schema as it was before the drop (one snapshot) or as it is after it.
            assert fired and described.text in (whole, describe(conn).text)
            assert "t_gone" in whole and "idx_gone" in whole
            conn.rollback()
        finally:
            conn.close()
        db.query("CREATE TABLE IF NOT EXISTS t_gone (id int); CREATE INDEX IF NOT EXISTS idx_gone ON t_gone (id);"
                 "CREATE OR REPLACE VIEW v_gone AS SELECT 1 AS x;"
                 "CREATE OR REPLACE TRIGGER trg BEFORE INSERT ON t_gone FOR EACH ROW EXECUTE FUNCTION f()")


def test_describing_while_other_sessions_churn_ddl_never_crashes(db):
    stop = threading.Event()

    def churn():
        conn = psycopg2.connect(db.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            n = 0
            while not stop.is_set():
                n += 1
                cur.execute(f"CREATE TABLE churn{n % 5} (id int DEFAULT {n}); CREATE INDEX ON churn{n % 5} (id);"
                            f"CREATE VIEW vchurn{n % 5} AS SELECT id FROM churn{n % 5}")
                cur.execute(f"DROP TABLE churn{n % 5} CASCADE")
                time.sleep(0.005)  # (a deploy's DDL, not a tight loop: a quiet machine's loop left describe no gap)
        conn.close()

    thread = threading.Thread(target=churn)
    thread.start()
    conn = psycopg2.connect(db.url)
    conn.autocommit = True
    described = 0
    try:
        deadline = time.monotonic() + 8  # a loaded CI machine describes slowly: count, not speed, matters
        while described < 10 and time.monotonic() < deadline:
            try:
                text = describe(conn).text
            except MigratorError as exc:  # the designed give-up after its retries: one clear line, not a crash
                assert "objects kept changing while the catalog was read" in str(exc), exc
                continue
            assert "CREATE TABLE public.hcm_report_metadata" in text or "hcm_report_metadata" not in db.tables()
            described += 1
    finally:
        stop.set()
        thread.join()
        conn.close()
    assert described >= 3


# --- 3: the recorded description advances by the runner's own change, drift kept --------------------

def test_advance_takes_the_runners_change_and_keeps_the_drift(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    db.query(f"CREATE INDEX idx_emergency ON {T} (tenant_id)")  # a DBA's, outside migrations
    target = db_target(db)
    with postgres.connect(target, read_only=False) as backend:
        schema = backend.bookkeeping_schema
        before = describe(backend.connection, schema)
        with backend.connection.cursor() as cursor:  # what a migration does (this session's search_path is pg_catalog)
            cursor.execute(f"CREATE TABLE public.more_reports (id int); ALTER TABLE public.{T} ADD COLUMN region text")
        recorded = snapshot.advance(backend.connection, schema, before, "migrate")
        report = snapshot.live_drift(backend.connection, schema)
    assert recorded.reason == "migrate"
    assert report.changes == [f"index idx_emergency ON {T} added"]  # the runner's changes are not drift

    with postgres.connect(target, read_only=False) as backend:  # a rollback that drops them again
        before = describe(backend.connection, schema)
        with backend.connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE public.more_reports; ALTER TABLE public.{T} DROP COLUMN region")
        snapshot.advance(backend.connection, schema, before, "rollback")
        assert snapshot.live_drift(backend.connection, schema).changes == [f"index idx_emergency ON {T} added"]


def test_advance_with_nothing_recorded_records_the_live_schema(db):
    target = db_target(db)
    with postgres.connect(target, read_only=False) as backend:
        before = describe(backend.connection, backend.bookkeeping_schema)
        with backend.connection.cursor() as cursor:
            cursor.execute("CREATE TABLE public.t (id int)")
        snapshot.advance(backend.connection, backend.bookkeeping_schema, before, "migrate")
        report = snapshot.live_drift(backend.connection, backend.bookkeeping_schema)
    assert report.recorded.reason == "migrate" and not report.drifted


# --- 11: only the bookkeeping tables, by exact name, in their schema, are left out ----------------

def test_user_objects_with_bookkeeping_like_names_are_described(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    db.query("CREATE TABLE _hcm_payroll (id int); CREATE SCHEMA billing; CREATE TABLE billing.yoyo_lock (id int);"
             "CREATE TABLE billing._yoyo_migration (id int); CREATE VIEW _yoyo_everything AS SELECT 1 AS x")
    text = describe_db(db).text
    for name in ("public._hcm_payroll", "billing.yoyo_lock", "billing._yoyo_migration", "public._yoyo_everything"):
        assert name in text, name
    for name in ("public._yoyo_migration", "public.yoyo_lock", "public._hcm_migration_checksum",
                 "public._hcm_schema_snapshot", "public._yoyo_log"):
        assert name not in text, name


# --- 10: structured table options, not substrings -------------------------------------------------

def test_unlogged_in_a_name_does_not_make_a_table_unlogged_and_set_unlogged_is_named(db):
    db.query('CREATE TABLE "x_UNLOGGED_y" (id int)')
    before = describe_db(db)
    assert 'CREATE TABLE public."x_UNLOGGED_y" (' in before.text
    db.query('ALTER TABLE "x_UNLOGGED_y" SET UNLOGGED')
    after = describe_db(db)
    assert 'CREATE UNLOGGED TABLE public."x_UNLOGGED_y" (' in after.text
    assert diff(before, after) == ['table "x_UNLOGGED_y": (nothing) -> UNLOGGED']


# --- 13: rendering ---------------------------------------------------------------------------------

def test_rendering_of_odd_names_revokes_triggers_and_rls(db):
    db.query('CREATE TABLE t ("my col" int, id int); ALTER TABLE t ENABLE ROW LEVEL SECURITY;'
             "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
             "CREATE CONSTRAINT TRIGGER ctr AFTER INSERT ON t DEFERRABLE FOR EACH ROW EXECUTE FUNCTION f()")
    before = describe_db(db)
    text = before.text
    assert "CONSTRAINT ctr" not in text.split("CREATE TABLE public.t", 1)[1].split(";", 1)[0]  # not inside CREATE TABLE
    assert 'CREATE TABLE public.t (\n    "my col" integer,\n    id integer\n);\nALTER TABLE public.t ENABLE ROW LEVEL SECURITY;' in text
    db.query('ALTER TABLE t ALTER "my col" TYPE bigint; REVOKE EXECUTE ON FUNCTION f() FROM PUBLIC;'
             "ALTER TABLE t DISABLE TRIGGER ctr")
    assert diff(before, describe_db(db)) == [
        'column t."my col": integer -> bigint', "revoke on function f() FROM PUBLIC added", "trigger ctr ON t disabled"]


def test_a_blank_line_in_a_function_body_is_not_a_block_of_its_own():
    body = "CREATE OR REPLACE FUNCTION public.f()\n RETURNS int\nAS $$\nSELECT 1;\n\nSELECT 2\n$$;"
    old = f"-- header\n\n{body}\n\nCREATE TABLE public.t ();\n"
    new = f"-- header\n\n{body.replace('SELECT 2', 'SELECT 3')}\n\nCREATE TABLE public.t ();\n"
    assert stale_summary(old, new) == "schema.sql is out of date: function public.f() changed; run `make schema` and commit it"


# --- 6: a re-application that fails after the rollback is a verify finding -------------------------

def test_verify_reports_a_reapply_that_fails_after_a_rollback_that_left_something(pg, sql_dir):
    from schema_helpers import server_target

    from migrator.schema import verify

    (sql_dir / "0002_ok.sql").write_text("CREATE TABLE ok (id int);")
    (sql_dir / "0002_ok.rollback.sql").write_text("DROP TABLE ok;")
    # The rollback leaves an object the description does not cover (a publication): only re-applying shows it.
    (sql_dir / "0003_seq.sql").write_text("CREATE TABLE s (id int);\nCREATE PUBLICATION pub_s;")
    (sql_dir / "0003_seq.rollback.sql").write_text("DROP TABLE s;")
    report = verify.verify(server_target(pg), postgres.read_migrations(sql_dir))
    assert report.failure.id == "0003_seq" and report.failure.outcome == "re-apply fails"
    assert "0003_seq.sql:2" in report.failure.changes[0] and "already exists" in report.failure.changes[0]
    lines = report.lines()
    assert "  0002_ok: up, down, up: ok" in lines  # the earlier steps are reported
    assert any("applied again after its rollback, it fails" in line for line in lines)
    assert lines[-1] == "verify: FAILED at 0003_seq"


# --- 7, 8, 9: adopt refuses what it cannot prove --------------------------------------------------

def _adopt(pg, db, sql_dir):
    from schema_helpers import server_target

    from migrator.schema import adopt

    with postgres.connect(db_target(db), read_only=True) as backend:
        return adopt.adopt(backend, server_target(pg), postgres.read_migrations(sql_dir))


def test_adopt_refuses_when_a_later_migration_is_marked_but_missing(cli, pg, db, sql_dir):
    (sql_dir / "0002_more.sql").write_text("CREATE TABLE more_reports (id int);")
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    db.query("DROP TABLE more_reports")  # 0002 marked applied, its table gone
    report = _adopt(pg, db, sql_dir)
    assert report.matched is None and report.newest_match == "0001_create_hcm_report_metadata"
    assert report.to_mark == []
    assert report.lines() == ["adopt: 0002_more is marked applied but the database does not have its schema (it "
                              "matches up to 0001_create_hcm_report_metadata); check them (`runner.py sql rollback` "
                              "or re-create what they made); nothing marked"]


def test_adopt_on_an_empty_database_matches_the_empty_history(pg, db, sql_dir):
    report = _adopt(pg, db, sql_dir)
    assert report.matched == "(no migration)" and report.to_mark == []
    assert report.lines() == ["adopt: the database matches no migration (the empty history): nothing to mark"]


def test_adopt_refuses_an_ambiguous_match_and_accepts_schema_neutral_ones(pg, db, sql_dir):
    (sql_dir / "0002_add.sql").write_text("CREATE TABLE tmp (id int);")
    (sql_dir / "0003_drop.sql").write_text("DROP TABLE tmp;")  # prefixes 1 and 3 (and 4) have the same schema
    (sql_dir / "0004_data.sql").write_text("SELECT 1;")
    psql_file(db, sql_dir / "0001_create_hcm_report_metadata.sql")
    report = _adopt(pg, db, sql_dir)
    assert report.matched is None and report.ambiguous == [
        "0001_create_hcm_report_metadata", "0003_drop", "0004_data"]
    assert report.lines()[0].startswith("adopt: the match is ambiguous: the database equals the history up to each of")

    (sql_dir / "0002_add.sql").write_text("SELECT 2;")  # now 0002..0004 change no schema: contiguous, allowed
    (sql_dir / "0003_drop.sql").write_text("SELECT 3;")
    report = _adopt(pg, db, sql_dir)
    assert report.matched == "0004_data" and report.to_mark[-1] == "0004_data"
    assert report.same_schema == ["0001_create_hcm_report_metadata", "0002_add", "0003_drop"]
