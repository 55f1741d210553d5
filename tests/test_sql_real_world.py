"""Real-world SQL against the real PostgreSQL: every migration behaves as `psql -1 -f FILE` in a fresh
session, and every message tells the truth. One test per hazard seen in the field, plus the ones
a real user's SQL will bring next."""

from __future__ import annotations

import subprocess

import pytest
from conftest import (SEED, _bin, add_migration, applied, migrate, ok,
                      one_error_line, psql_file, schema_dump, table_schema)

# --- session state never leaks: from one file to the next, or into the bookkeeping ---------------------


@pytest.mark.parametrize("transactional", [True, False])
def test_a_pg_dump_style_empty_search_path_leaves_bookkeeping_and_the_next_file_working(cli, db, sql_dir, transactional):
    header = "" if transactional else "-- transactional: false\n"
    add_migration(sql_dir, "0002_dump", header + "SELECT pg_catalog.set_config('search_path', '', false);\n"
        "CREATE TABLE public.t_dump (id int);\n")
    add_migration(sql_dir, "0003_after", "CREATE TABLE t_after (id int);\n")
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED, "0002_dump", "0003_after"]
    assert table_schema(db, "t_after") == "public"
    assert db.query("SELECT count(*) FROM yoyo_lock") == [(0,)]
    status = ok(cli("status", "--sql-dir", sql_dir, env=db.db_env()))
    assert "0 pending" in status.stdout


def test_set_search_path_in_one_file_does_not_move_the_next_files_tables(cli, db, sql_dir):
    add_migration(sql_dir, "0002_app", "CREATE SCHEMA app;\nSET search_path TO app, public;\nCREATE TABLE t_in_app (id int);\n")
    add_migration(sql_dir, "0003_next", "CREATE TABLE t_next (id int);\n")
    ok(migrate(cli, db, sql_dir))
    assert (table_schema(db, "t_in_app"), table_schema(db, "t_next")) == ("app", "public")


def test_set_role_does_not_break_the_bookkeeping(cli, db, sql_dir):
    role = f"r_{db.name}"
    db.query(f"CREATE ROLE {role}; GRANT CREATE, USAGE ON SCHEMA public TO {role}")
    try:
        add_migration(sql_dir, "0002_as_role", f"SET ROLE {role};\nCREATE TABLE t_owned (id int);\n")
        add_migration(sql_dir, "0003_next", "CREATE TABLE t_next2 (id int);\n")
        # (a table another role owns in the schema stops the run before the next file, attack23u 6's check run
        # again; the role accepted, the rerun goes on from there)
        stopped = migrate(cli, db, sql_dir)
        assert stopped.exit_code == 2 and f"table public.t_owned (owner {role})" in stopped.stderr, stopped.output
        assert applied(db) == [SEED, "0002_as_role"]
        ok(cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": role}))
        assert applied(db) == [SEED, "0002_as_role", "0003_next"]
        owners = dict(db.query("SELECT tablename, tableowner FROM pg_tables WHERE tablename IN ('t_owned', 't_next2')"))
        assert owners == {"t_owned": role, "t_next2": db.server.user}
    finally:
        db.query(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_settings_of_one_file_do_not_reach_the_next_and_the_runners_limits_apply_to_each(cli, db, sql_dir):
    add_migration(sql_dir, "0002_sets", "SET statement_timeout = '1h';\nSET check_function_bodies = off;\n"
        "SET standard_conforming_strings = off;\nCREATE TEMP TABLE t_temp (id int);\n")
    add_migration(sql_dir, "0003_sees", "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout, "
        "current_setting('statement_timeout') AS statement_timeout, current_setting('check_function_bodies') AS cfb, "
        "current_setting('standard_conforming_strings') AS scs, to_regclass('pg_temp.t_temp') IS NULL AS no_temp, "
        "'C:\\new' AS path;\n")
    ok(migrate(cli, db, sql_dir, "--ddl-lock-timeout", "3s", "--statement-timeout", "2min"))
    assert db.query("SELECT * FROM seen") == [("3s", "2min", "on", "on", True, "C:\\new")]


def test_a_file_may_tighten_its_own_statement_timeout_never_lift_it_nor_its_lock_timeout(cli, db, sql_dir):
    """(A file's lock_timeout would lift the bound on each try's lock waits: refused, test_live_traffic_bound; a
    looser statement_timeout is overridden with a note: test_live_traffic_lows.)"""
    add_migration(sql_dir, "0002_own", "SET statement_timeout = '2s';\n"
                  "CREATE TABLE own AS SELECT current_setting('statement_timeout') AS v;\n"
                  "SET statement_timeout = '7s';\nINSERT INTO own SELECT current_setting('statement_timeout');\n")
    ok(migrate(cli, db, sql_dir, "--statement-timeout", "3s"))
    assert db.query("SELECT v FROM own") == [("2s",), ("3s",)]


PG_DUMP_HEADER = ("SET statement_timeout = 0;\nSET lock_timeout = 0;\nSET idle_in_transaction_session_timeout = 0;\n"
                  "SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n"
                  "SELECT pg_catalog.set_config('search_path', '', false);\nSET check_function_bodies = false;\n"
                  "SET xmloption = content;\nSET client_min_messages = warning;\nSET row_security = off;\n")
BOUNDS = ("current_setting('idle_in_transaction_session_timeout') AS idle, "
          "current_setting('statement_timeout') AS statement_timeout")


def test_a_pg_dump_header_cannot_switch_off_the_sessions_idle_bound(cli, db, sql_dir):
    """attack24f: pg_dump's SET idle_in_transaction_session_timeout = 0 switched off the server-side bound that rolls
    a cut-off runner's transaction back (its locks held for good); now the run's bound is kept, with one note."""
    add_migration(sql_dir, "0002_plain", f"CREATE TABLE plain AS SELECT {BOUNDS};\n")
    path = add_migration(sql_dir, "0003_dump", PG_DUMP_HEADER + f"CREATE TABLE public.own AS SELECT {BOUNDS};\n")
    result = migrate(cli, db, sql_dir, "--statement-timeout", "2min")
    ok(result)
    ((run_idle, _),) = db.query("SELECT * FROM plain")
    assert run_idle != "0" and db.query("SELECT * FROM own") == [(run_idle, "2min")]
    assert f"{path}:3: the file's SET idle_in_transaction_session_timeout is overridden: the server still rolls back " \
           "a transaction left idle for " in result.stderr, result.stderr
    add_migration(sql_dir, "0004_stricter", "SET idle_in_transaction_session_timeout = '5min';\n"
                  f"CREATE TABLE stricter AS SELECT {BOUNDS};\n")
    ok(migrate(cli, db, sql_dir))
    # stricter than the session's, kept for it; the try's own bound (its lock bound + 3 s, to its transaction's
    # end: a frozen runner's locks) is stricter still while the file's transaction holds its locks
    assert db.query("SELECT idle FROM stricter") == [("3330ms",)]


def test_session_replication_role_replica_does_not_let_the_next_file_break_a_foreign_key(cli, db, sql_dir):
    add_migration(sql_dir, "0002_replica", "CREATE TABLE parent (id int PRIMARY KEY);\n"
        "CREATE TABLE child (parent_id int REFERENCES parent);\nSET session_replication_role = replica;\n")
    add_migration(sql_dir, "0003_orphan", "INSERT INTO child VALUES (42);\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "0003_orphan.sql:1: failed to apply" in line and "violates foreign key constraint" in line
    assert "DETAIL: Key (parent_id)=(42) is not present in table" in line
    assert db.query("SELECT count(*) FROM child") == [(0,)]


def test_alter_database_set_search_path_reaches_later_files_as_in_psql_but_not_the_bookkeeping(cli, db, sql_dir):
    add_migration(sql_dir, "0002_db_default", f"CREATE SCHEMA app;\nALTER DATABASE {db.name} SET search_path = app;\n")
    add_migration(sql_dir, "0003_in_app", "CREATE TABLE t_default (id int);\n")
    # The run stops before a file would run under a path its planted check never saw (attack23t 1b); run again, the
    # new path is checked, and a new session, as psql's, sees the database default.
    result = migrate(cli, db, sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 2
    assert "starts with search_path app, not" in line and "nothing of 0003_in_app ran" in line, line
    assert applied(db) == [SEED, "0002_db_default"] and "t_default" not in db.tables()
    ok(migrate(cli, db, sql_dir))
    assert table_schema(db, "t_default") == "app"
    assert table_schema(db, "_yoyo_migration") == "public"
    add_migration(sql_dir, "0004_more", "CREATE TABLE t_more (id int);\n")
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED, "0002_db_default", "0003_in_app", "0004_more"]
    assert ok(cli("status", "--sql-dir", sql_dir, env=db.db_env())).stdout.count("  applied") == 4


def test_a_rollback_that_changes_search_path_is_unmarked(cli, db, sql_dir):
    add_migration(sql_dir, "0002_t", "CREATE TABLE t_rb (id int);\n", "SET search_path TO pg_catalog;\nDROP TABLE public.t_rb;\n")
    ok(migrate(cli, db, sql_dir))
    ok(cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env()))
    assert applied(db) == [SEED] and "t_rb" not in db.tables()
    assert "applied 0002_t" in ok(migrate(cli, db, sql_dir)).stdout


# --- refusals before anything runs -------------------------------------------------------------------


def test_transaction_control_in_a_transactional_file_is_refused_before_anything_runs(cli, db, sql_dir):
    add_migration(sql_dir, "0002_own_tx", "CREATE TABLE t_a (id int);\nCOMMIT;\nCREATE TABLE t_b (id int);\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "0002_own_tx.sql:2: COMMIT controls the transaction" in line and "-- transactional: false" in line
    assert "nothing was run" in line
    assert "t_a" not in db.tables() and applied(db) == []  # refused before the first file ran


def test_a_non_transactional_file_may_hold_its_own_transactions(cli, db, sql_dir):
    add_migration(sql_dir, "0002_own_tx", "-- transactional: false\nBEGIN;\nCREATE TABLE t_a (id int);\nCOMMIT;\n")
    ok(migrate(cli, db, sql_dir))
    assert "t_a" in db.tables()


@pytest.mark.parametrize("statement", ["CREATE INDEX CONCURRENTLY i_c ON hcm_report_metadata (tenant_id)", "VACUUM"])
def test_statements_that_cannot_run_in_a_transaction_are_refused_with_the_fix(cli, db, sql_dir, statement):
    add_migration(sql_dir, "0002_outside", f"{statement};\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "0002_outside.sql:1:" in line and "cannot run inside a transaction block" in line
    assert "`-- transactional: false`" in line
    lint = cli("sql", "lint", "--sql-dir", sql_dir)
    assert lint.exit_code != 0 and "0002_outside.sql:1" in lint.output and "transactional: false" in lint.output


@pytest.mark.parametrize("body, line, words", [
    ("SELECT 1;\n\\i other.sql\n", 2, "psql meta-command \\i"),
    ("CREATE TABLE t (id int);\nCOPY t (id) FROM stdin;\n1\n\\.\n", 2, "COPY ... FROM stdin"),
    ("SELECT 1;\nSELECT 'never closed;\n", 2, "unterminated quoted string"),
    ("SELECT $body$ never closed;\n", 1, "unterminated dollar-quoted string"),
])
def test_what_cannot_run_through_a_driver_is_one_line_naming_file_and_line(cli, db, sql_dir, body, line, words):
    add_migration(sql_dir, "0002_psql_only", body)
    error = one_error_line(migrate(cli, db, sql_dir))
    assert f"0002_psql_only.sql:{line}: {words}" in error and "nothing was run" in error
    assert applied(db) == []


def test_file_names_are_checked_before_any_file_is_read(cli, db, sql_dir):
    (sql_dir / "0002_x\nDROP TABLE hcm_report_metadata;.sql").write_text("SELECT 1;\n")
    for command in ("plan", "migrate", "status"):
        line = one_error_line(cli(command, "--sql-dir", sql_dir, env=db.db_env()))
        assert "not a valid migration file name" in line and "NNNN_name.sql" in line
        assert "\\nDROP TABLE" in line and "\n" not in line.strip()
    assert "_yoyo_migration" not in db.tables()  # refused before connecting


# --- what psql accepts, the runner accepts ---------------------------------------------------------

HAZARDS = (
    "\ufeff-- transactional: true\n"  # a BOM before the directive
    "CREATE TABLE h (id int PRIMARY KEY, note text);\r\n"  # CRLF
    "/* a /* nested */ comment; with a semicolon */\n"
    "INSERT INTO h VALUES (1, 'it''s; fine'), (2, E'tab\\there; \\'quoted\\''), (3, $$dollar; $x$ $$),"
    " (4, $tag$ $$ ; $tag$), (5, U&'\\0041;');\n"
    "CREATE FUNCTION h_count() RETURNS bigint LANGUAGE sql\nBEGIN ATOMIC\n  SELECT count(*) FROM h;\nEND;\n"
    "CREATE FUNCTION h_touch() RETURNS trigger LANGUAGE plpgsql AS $fn$\nBEGIN\n  NEW.note := NEW.note || ';';\n"
    "  RETURN NEW;\nEND;\n$fn$;\n"
    "CREATE TRIGGER h_touch BEFORE INSERT ON h FOR EACH ROW EXECUTE FUNCTION h_touch();\n"
    "DO $$\nBEGIN\n  INSERT INTO h VALUES (6, 'from do');\nEND\n$$;\n"
    'CREATE TABLE "we;ird" ("a""b" int);\n'
    "INSERT INTO h VALUES (7, 'no final semicolon')\n"
    "-- a comment after the last statement\n"
)


def test_the_sql_people_really_write_gives_what_psql_gives(cli, db, make_db, sql_dir, tmp_path):
    add_migration(sql_dir, "0002_hazards", HAZARDS)
    ok(migrate(cli, db, sql_dir))
    twin = make_db()
    for path in sorted(sql_dir.glob("000?_*[!k].sql")):
        assert psql_file(twin, path).returncode == 0
    assert schema_dump(db) == schema_dump(twin)
    assert db.query("SELECT * FROM h ORDER BY id") == twin.query("SELECT * FROM h ORDER BY id")
    assert db.query("SELECT h_count()") == [(7,)]


def test_restrict_lines_of_recent_pg_dump_are_accepted(cli, db, sql_dir):
    add_migration(sql_dir, "0002_restricted", "\\restrict abc123XYZ\nCREATE TABLE t_r (id int);\n\\unrestrict abc123XYZ\n")
    ok(migrate(cli, db, sql_dir))
    assert "t_r" in db.tables()


def test_twenty_thousand_statements_apply_in_one_transaction(cli, db, sql_dir):
    rows = "".join(f"INSERT INTO big VALUES ({i}, '{'x' * 240}');\n" for i in range(20_000))
    add_migration(sql_dir, "0002_big", "CREATE TABLE big (id int PRIMARY KEY, pad text);\n" + rows)
    assert (sql_dir / "0002_big.sql").stat().st_size > 5_000_000
    ok(migrate(cli, db, sql_dir))
    assert db.query("SELECT count(*) FROM big") == [(20_000,)]
    # ...and in one transaction: all rows carry the same xmin.
    assert db.query("SELECT count(DISTINCT xmin::text) FROM big") == [(1,)]


def test_a_rollback_with_a_statement_of_2500_values(cli, db, sql_dir):
    values = ", ".join(f"({i})" for i in range(2500))
    add_migration(sql_dir, "0002_many", f"CREATE TABLE many (id int);\nINSERT INTO many VALUES {values};\n",
        f"DELETE FROM many WHERE id IN ({', '.join(str(i) for i in range(2500))});\nDROP TABLE many;\n")
    ok(migrate(cli, db, sql_dir))
    ok(cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env()))
    assert "many" not in db.tables()


# --- the truth, after a failure --------------------------------------------------------------------


def test_detail_hint_and_the_right_line_when_the_same_statement_appears_twice(cli, db, sql_dir):
    add_migration(sql_dir, "0002_dup", "CREATE TABLE u (id int PRIMARY KEY);\nINSERT INTO u VALUES (1);\n\n-- again\n"
        "INSERT INTO u VALUES (1);\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "0002_dup.sql:5: failed to apply" in line
    assert "DETAIL: Key (id)=(1) already exists." in line and "nothing of it was applied" in line
    add_migration(sql_dir, "0002_dup", "CREATE TABLE u (id int PRIMARY KEY);\nSELECT no_such_column FROM u;\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "0002_dup.sql:2:" in line and 'column "no_such_column" does not exist' in line
    add_migration(sql_dir, "0002_dup", "CREATE TABLE u (id int PRIMARY KEY);\nSELECT * FROM U2;\n")
    assert "0002_dup.sql:2:" in one_error_line(migrate(cli, db, sql_dir))
    add_migration(sql_dir, "0002_dup", "SELECT upper(1, 2);\n")
    assert "HINT: No function matches" in one_error_line(migrate(cli, db, sql_dir))


def test_a_half_done_non_transactional_file_says_what_committed_and_status_agrees(cli, db, sql_dir):
    add_migration(sql_dir, "0002_half", "-- transactional: false\nCREATE TABLE half_a (id int);\n"
        "CREATE TABLE half_b (id int);\nCREATE TABLE half_a (id int);\nCREATE TABLE half_c (id int);\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "0002_half.sql:4: failed to apply" in line
    assert "statements 1-2 of 4 (through the one at line 3) COMMITTED; statement 3 failed; the rest did not run" in line
    assert {"half_a", "half_b"} <= db.tables() and "half_c" not in db.tables()
    status = cli("status", "--sql-dir", sql_dir, env=db.db_env())
    assert "0002_half" in status.stdout and "PARTLY applied" in status.stdout
    assert "statements 1-2 of 4" in status.stdout
    add_migration(sql_dir, "0002_half", "-- transactional: false\nCREATE TABLE IF NOT EXISTS half_a (id int);\n"
        "CREATE TABLE IF NOT EXISTS half_b (id int);\nCREATE TABLE half_c (id int);\n")
    ok(migrate(cli, db, sql_dir))
    assert "PARTLY" not in ok(cli("status", "--sql-dir", sql_dir, env=db.db_env())).stdout


# --- order ---------------------------------------------------------------------------------------


def test_depends_order_is_the_same_in_plan_migrate_and_status(cli, db, sql_dir):
    add_migration(sql_dir, "0002_uses_view", "-- depends: 0003_base\nCREATE VIEW v_base AS SELECT * FROM base;\n")
    add_migration(sql_dir, "0003_base", "CREATE TABLE base (id int);\n")
    plan = ok(cli("plan", "--offline", "--sql-dir", sql_dir))
    assert plan.stdout.index("0003_base.sql") < plan.stdout.index("0002_uses_view.sql")
    twin_input = subprocess.run([_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", db.url],
                                input=plan.stdout, capture_output=True, text=True)
    assert twin_input.returncode == 0, twin_input.stderr
    db.query("DROP VIEW v_base; DROP TABLE base, hcm_report_metadata")
    result = ok(migrate(cli, db, sql_dir))
    assert result.stdout.index("applied 0003_base") < result.stdout.index("applied 0002_uses_view")
    status = ok(cli("status", "--sql-dir", sql_dir, env=db.db_env())).stdout
    assert status.index("0003_base") < status.index("0002_uses_view")


def test_plan_offline_piped_to_psql_gives_the_same_schema_as_migrate(cli, db, make_db, sql_dir):
    add_migration(sql_dir, "0002_no_final_semicolon", "CREATE TABLE t_nfs (id int)\n-- the end")
    ok(migrate(cli, db, sql_dir))
    plan = ok(cli("plan", "--offline", "--sql-dir", sql_dir))
    twin = make_db()
    done = subprocess.run([_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", twin.url],
                          input=plan.stdout, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert schema_dump(db) == schema_dump(twin)


# --- adopting a database: its pg_dump --schema-only as 0001_baseline.sql ---------------------------------

SOURCE_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE SCHEMA reporting;
CREATE SEQUENCE invoice_no START 1000 INCREMENT 5;
CREATE TABLE customer (id bigserial PRIMARY KEY, name text NOT NULL, mood mood DEFAULT 'ok',
                       created timestamptz DEFAULT now(), CHECK (name <> ''));
CREATE TABLE invoice (no int PRIMARY KEY DEFAULT nextval('invoice_no'), customer_id bigint NOT NULL
                      REFERENCES customer ON DELETE CASCADE, amount numeric(12, 2), note text DEFAULT E'a\\tb;c');
CREATE INDEX invoice_customer ON invoice (customer_id) WHERE amount > 0;
COMMENT ON TABLE customer IS 'who pays; and why';
COMMENT ON COLUMN invoice.amount IS 'in "euros"';
CREATE VIEW reporting.big_invoices AS SELECT i.no, c.name FROM invoice i JOIN customer c ON c.id = i.customer_id
    WHERE i.amount > 1000;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.created := now();
  RETURN NEW;
END;
$$;
CREATE TRIGGER customer_touch BEFORE UPDATE ON customer FOR EACH ROW EXECUTE FUNCTION touch();
CREATE FUNCTION invoice_total(c bigint) RETURNS numeric LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT coalesce(sum(amount), 0) FROM invoice WHERE customer_id = c;
END;
CREATE PROCEDURE bump(n int) LANGUAGE sql BEGIN ATOMIC UPDATE invoice SET amount = amount + n; END;
DO $$ BEGIN EXECUTE 'CREATE TABLE made_by_do (id int)'; END $$;
"""


def test_a_pg_dump_schema_only_baseline_applies_unchanged_and_equals_psql(cli, make_db, tmp_path):
    source = make_db()
    with source.server.connect(source.name) as conn, conn.cursor() as cur:
        cur.execute(SOURCE_SCHEMA)
    dump = subprocess.run([_bin("pg_dump"), "--schema-only", "-d", source.url], capture_output=True, text=True, check=True)
    sql_dir = tmp_path / "adopt"
    sql_dir.mkdir()
    baseline = sql_dir / "0001_baseline.sql"
    baseline.write_text(dump.stdout)
    assert "set_config('search_path', '', false)" in dump.stdout and "BEGIN ATOMIC" in dump.stdout

    ours, theirs = make_db(), make_db()
    result = cli("migrate", "--sql-dir", sql_dir, env=ours.db_env())
    assert result.exit_code == 0, result.output
    done = subprocess.run([_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(baseline), "-d", theirs.url],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert schema_dump(ours) == schema_dump(theirs)
    assert "CREATE VIEW reporting.big_invoices" in schema_dump(ours)

    # The next migration after the baseline runs in a normal session, and the history stays truthful.
    (sql_dir / "0002_after_baseline.sql").write_text("CREATE TABLE after_baseline (id int REFERENCES customer);\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=ours.db_env()).exit_code == 0
    assert table_schema(ours, "after_baseline") == "public"
    status = cli("status", "--sql-dir", sql_dir, "--exit-code", env=ours.db_env())
    assert status.exit_code == 0 and "2 applied, 0 pending" in status.stdout


def test_adopting_a_live_database_marks_the_baseline_without_running_it(cli, make_db, tmp_path):
    live = make_db()
    with live.server.connect(live.name) as conn, conn.cursor() as cur:
        cur.execute(SOURCE_SCHEMA)
    dump = subprocess.run([_bin("pg_dump"), "--schema-only", "-d", live.url], capture_output=True, text=True, check=True)
    sql_dir = tmp_path / "adopt"
    sql_dir.mkdir()
    (sql_dir / "0001_baseline.sql").write_text(dump.stdout)
    before = schema_dump(live)
    assert cli("sql", "mark", "--sql-dir", sql_dir, "0001_baseline", env=live.db_env()).exit_code == 0
    assert schema_dump(live) == before
    result = cli("migrate", "--sql-dir", sql_dir, env=live.db_env())
    assert result.exit_code == 0 and "up to date (1 of 1" in result.stdout


def test_the_runners_catalog_reads_inside_a_files_transaction_leave_its_set_local_path_as_psql_would(db):
    """A SET LOCAL search_path ends with its transaction, even when the runner read the catalog in between."""
    import psycopg2

    from migrator import pinned

    conn = psycopg2.connect(db.url)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW search_path")
            before = cursor.fetchone()[0]
            cursor.execute("SET LOCAL search_path = pg_temp")
            with pinned.catalog_path(cursor):
                cursor.execute("SHOW search_path")
                assert cursor.fetchone()[0] == pinned.CATALOG_ONLY
            cursor.execute("SHOW search_path")
            assert cursor.fetchone()[0] == "pg_temp"  # the file's own, for its later statements
            conn.commit()
            cursor.execute("SHOW search_path")
            assert cursor.fetchone()[0] == before
    finally:
        conn.close()
