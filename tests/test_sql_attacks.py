"""A hostile DBA's findings against the SQL side, each a test against the real PostgreSQL the suite
starts (psql parity where the finding is about what psql does)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (PROJECT_ROOT, SEED, _bin, add_migration, applied, migrate,
                      ok, one_error_line, psql_file, schema_dump, table_schema)


def status_of(cli, db, sql_dir) -> str:
    return ok(cli("status", "--sql-dir", sql_dir, env=db.db_env())).stdout


def same_as_psql(cli, db, make_db, sql_dir, name: str, sql: bytes | str):
    """Apply one file through the runner and through `psql -1 -f`; both schemas must be equal."""
    path = add_migration(sql_dir, name, sql)
    ok(migrate(cli, db, sql_dir))
    twin = make_db()
    for seed in sorted(sql_dir.glob("*.sql")):
        if seed != path and not seed.name.endswith(".rollback.sql"):
            assert psql_file(twin, seed).returncode == 0
    done = subprocess.run([_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", twin.url, "-f", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert schema_dump(db) == schema_dump(twin)
    return twin


# --- 1, 12, 13, 14: the splitter splits where psql does --------------------------------------------------


def test_cr_only_line_ends_lose_no_statement_and_lines_count_as_psql(cli, db, make_db, sql_dir):
    sql = b"CREATE TABLE a(id int); -- first\rCREATE TABLE b(id int); -- second\rCREATE TABLE c(id int);\r"
    same_as_psql(cli, db, make_db, sql_dir, "0002_cr", sql)
    assert {"a", "b", "c"} <= db.tables()
    add_migration(sql_dir, "0003_cr_err", b"SELECT 1; -- one\rSELECT 2; -- two\rSELECT nope;\r")
    result = migrate(cli, db, sql_dir)
    assert "0003_cr_err.sql:3:8: failed to apply" in one_error_line(result)  # (column 8 of line 3, as psql's caret)
    assert result.stderr.splitlines()[-3:-1] == ["LINE 3: SELECT nope;", "               ^"]


@pytest.mark.parametrize("gap", ["\n", "  -- a note\n  \n\t", "\r\n"], ids=["newline", "comment-between", "crlf"])
def test_a_string_continued_on_the_next_line_keeps_its_e_reading(cli, db, make_db, sql_dir, gap):
    """attack24s 2: after E'x', a quote on the next line continues the same E string (scan.l's quotecontinue), so
    its \\' is a quote; the splitter read the continuation as a plain literal running on into a comment, one
    SELECT, while the server ran the statement hidden after it. Failed before: one statement, no `hidden` table."""
    from migrator.postgres.splitter import split

    sql = (f"SELECT E'x'{gap}'\\''; CREATE TABLE hidden (id int); SELECT 1 -- '\n;\n"
           "SELECT 'a'\n'b' AS plain_continued;\n")
    assert [s.text.split()[0] for s in split(sql)] == ["SELECT", "CREATE", "SELECT", "SELECT"]
    same_as_psql(cli, db, make_db, sql_dir, "0002_continued", sql)
    assert "hidden" in db.tables()


def test_a_rewrite_hidden_after_a_continued_e_string_is_refused(cli, db, sql_dir):
    """attack24s 2: the ALTER COLUMN TYPE after `E'x'<newline>'\\''` was no statement of the splitter's: not
    judged, applied with exit 0 (the table rewritten). Failed before: exit 0, id bigint."""
    from test_rewrites import SMALL, seeded

    seeded(cli, db, sql_dir)
    path = add_migration(sql_dir, "0002_cont", "SELECT E'x'\n'\\''; ALTER TABLE hcm_report_metadata ALTER COLUMN id "
                                               "TYPE bigint; SELECT 1 -- '\n;\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"error: {path}:2: ALTER COLUMN id TYPE bigint rewrites" in result.stderr, \
        result.output
    assert db.query("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                    "'hcm_report_metadata'::regclass AND attname = 'id'") == [("integer",)]


def test_begin_atomic_after_a_comment_between_words_is_one_function(cli, db, make_db, sql_dir):
    same_as_psql(cli, db, make_db, sql_dir, "0002_atomic",
                 "CREATE /* c */ FUNCTION f2(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\n"
                 "CREATE OR -- why\n REPLACE PROCEDURE p2() LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n")
    assert db.query("SELECT f2(1)") == [(2,)]


def test_a_string_whose_end_depends_on_standard_conforming_strings_is_refused(cli, db, make_db, sql_dir):
    """A file's own SET standard_conforming_strings used to be followed; a file can change it unseen (issue 23,
    tests/test_plan_psql_safety.py), so a '...' that ends elsewhere when it is off is refused, and the same
    value written so that it reads one way (E'...') runs as in psql."""
    add_migration(sql_dir, "0002_scs", "CREATE TABLE s (v text);\nSET standard_conforming_strings = off;\n"
                  "INSERT INTO s VALUES ('it\\'s; tricky');\nRESET standard_conforming_strings;\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "0002_scs.sql:3:" in line and "standard_conforming_strings" in line and "E'...'" in line
    assert "s" not in db.tables()
    (sql_dir / "0002_scs.sql").unlink()
    twin = same_as_psql(cli, db, make_db, sql_dir, "0002_scs",
                        "CREATE TABLE s (v text);\nSET standard_conforming_strings = off;\n"
                        "INSERT INTO s VALUES (E'it\\'s; tricky');\nRESET standard_conforming_strings;\n"
                        "INSERT INTO s VALUES ('C:\\new');\n")
    assert db.query("SELECT v FROM s ORDER BY v") == twin.query("SELECT v FROM s ORDER BY v") == [
        ("C:\\new",), ("it's; tricky",)]


def test_a_dollar_quote_tag_outside_the_bmp(cli, db, make_db, sql_dir):
    same_as_psql(cli, db, make_db, sql_dir, "0002_emoji", "CREATE TABLE e AS SELECT $😀$a;b$😀$ AS v;\n")
    assert db.query("SELECT v FROM e") == [("a;b",)]


def test_a_nul_byte_is_refused_with_its_line_before_anything_runs(cli, db, sql_dir):
    add_migration(sql_dir, "0002_nul", b"CREATE TABLE n1(id int);\nSELECT 1;\x00\nCREATE TABLE n2(id int);\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "0002_nul.sql:2:" in line and "NUL byte" in line and "nothing was run" in line
    assert "n1" not in db.tables()


# --- 4, 5: file names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["0002_B.SQL", "0003_c.sql ", "0004_d.sql.orig", "0005_e.Sql"])
def test_other_spellings_of_a_migration_name_are_refused(cli, db, sql_dir, name):
    (sql_dir / name).write_text("CREATE TABLE x (id int);\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "not a valid migration file name" in line and name.strip() in line
    assert "x" not in db.tables()


def test_an_orphan_rollback_file_is_refused(cli, db, sql_dir):
    (sql_dir / "0009_x.rollback.sql").write_text("DROP TABLE x;\n")
    assert "0009_x.rollback.sql: a rollback without its migration" in one_error_line(migrate(cli, db, sql_dir))


def test_numbers_order_and_collide_as_integers(cli, db, sql_dir):
    add_migration(sql_dir, "10_ten", "CREATE TABLE ten (id int REFERENCES nine);\n")
    add_migration(sql_dir, "9_nine", "CREATE TABLE nine (id int PRIMARY KEY);\n")
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == sorted([SEED, "9_nine", "10_ten"])
    status = status_of(cli, db, sql_dir)
    assert status.index("9_nine") < status.index("10_ten")
    add_migration(sql_dir, "1_b", "SELECT 1;\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "share the number 1" in line and SEED in line


# --- 2, 3: the run's own connection whatever the database defaults say -------------------------------


@pytest.mark.parametrize("transactional", [True, False])
def test_a_database_default_role_does_not_lock_the_runner_out(cli, db, sql_dir, transactional):
    role = f"o_{db.name}"
    db.query(f"CREATE ROLE {role}; GRANT CREATE, USAGE ON SCHEMA public TO {role}; GRANT {role} TO CURRENT_USER")
    try:
        header = "" if transactional else "-- transactional: false\n"
        add_migration(sql_dir, "0002_default_role", f"{header}ALTER DATABASE {db.name} SET role = {role};\n")
        add_migration(sql_dir, "0003_as_default", "CREATE TABLE t_by_default (id int);\n")
        ok(migrate(cli, db, sql_dir))
        assert db.query("SET ROLE NONE; SELECT count(*) FROM _yoyo_migration") == [(3,)]
        # a fresh session, as psql's, runs as the database's default role
        assert db.query("SELECT tableowner FROM pg_tables WHERE tablename = 't_by_default'") == [(role,)]
        assert "0 pending" in status_of(cli, db, sql_dir)
        add_migration(sql_dir, "0004_more", "SELECT 1;\n")
        ok(migrate(cli, db, sql_dir))
    finally:
        db.query(f"SET ROLE NONE; ALTER DATABASE {db.name} RESET role")
        db.query(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_a_stray_yoyo_table_on_the_search_path_does_not_take_over_the_bookkeeping(cli, db, sql_dir):
    ok(migrate(cli, db, sql_dir))
    db.query("CREATE SCHEMA app; CREATE TABLE app._yoyo_migration (x int)")
    db.query(f"ALTER DATABASE {db.name} SET search_path = app, public")
    assert "0 pending" in status_of(cli, db, sql_dir)
    add_migration(sql_dir, "0002_next", "CREATE TABLE public.t_next (id int);\n")
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED, "0002_next"]


# --- 7, 8, 10: a non-transactional file (or rollback) says exactly what committed, whatever stops it ------


def test_a_non_transactional_file_that_opens_its_own_transaction_is_not_reported_committed(cli, db, sql_dir):
    add_migration(sql_dir, "0002_own_tx", "-- transactional: false\nCREATE TABLE nt0 (id int);\nBEGIN;\nCREATE TABLE nt1 (id int);\n"
        "CREATE TABLE nt2 (id int);\nSELECT 1/0;\nCOMMIT;\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "0002_own_tx.sql:6: failed to apply" in line and "division by zero" in line
    assert "statement 1 of 6 (line 2) COMMITTED" in line
    assert "statements 2-5 ran inside the transaction the file opened at line 3, which rolled back" in line
    assert {"nt0"} == {t for t in db.tables() if t.startswith("nt")}
    status = status_of(cli, db, sql_dir)
    assert "pending, PARTLY applied" in status and "statement 1 of 6 (line 2)" in status


def runner_process(db, sql_dir: Path, tmp_path: Path, *args) -> subprocess.Popen:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **db.db_env()}
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), "migrate", "--sql-dir", str(sql_dir), *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_sleep(db, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not db.poll("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%%' AND state = 'active'"):
        assert time.monotonic() < deadline, "the migration never reached its pg_sleep"
        time.sleep(0.05)


SLOW_NON_TRANSACTIONAL = "-- transactional: false\nCREATE TABLE k1 (id int);\nSELECT pg_sleep(4);\nCREATE TABLE k2 (id int);\n"


def test_sigkill_in_a_non_transactional_file_leaves_a_truthful_status(cli, db, sql_dir, tmp_path):
    add_migration(sql_dir, "0002_slow", SLOW_NON_TRANSACTIONAL)
    proc = runner_process(db, sql_dir, tmp_path)
    wait_for_sleep(db)
    proc.kill()
    proc.wait()
    status = status_of(cli, db, sql_dir)
    assert "0002_slow" in status and "pending, PARTLY applied" in status
    assert "statement 1 of 3 (line 2) COMMITTED; interrupted in statement 2 (line 3)" in status
    # the next run fails on k1 (as psql would) and says what an earlier run left, not "nothing committed"
    line = one_error_line(migrate(cli, db, sql_dir))
    assert 'relation "k1" already exists' in line and "COMMITTED" not in line.split("(", 1)[0]
    assert "pending, PARTLY applied" in status_of(cli, db, sql_dir)


def test_sigterm_stops_the_run_in_order_with_one_line_saying_what_committed(cli, db, sql_dir, tmp_path):
    add_migration(sql_dir, "0002_slow", SLOW_NON_TRANSACTIONAL)
    add_migration(sql_dir, "0003_after", "CREATE TABLE k3 (id int);\n")
    proc = runner_process(db, sql_dir, tmp_path)
    wait_for_sleep(db)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    errors = [line for line in stderr.splitlines() if not line.startswith(("note:", "PostgreSQL:"))
              and " 0002_slow: running for " not in line]  # the live progress of the slow statement
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert "0002_slow.sql: interrupted by SIGTERM while it was running" in errors[0]
    # the signal is taken when the running statement returns: its fate is not guessed
    assert "statement 1 of 3 (line 2) COMMITTED; interrupted in statement 2 (line 3)" in errors[0]
    assert "k3" not in db.tables() and "k2" not in db.tables()
    status = status_of(cli, db, sql_dir)
    assert "pending, PARTLY applied" in status and "statement 1 of 3 (line 2)" in status


def test_sigterm_in_a_transactional_file_rolls_it_back_and_says_so(cli, db, sql_dir, tmp_path):
    add_migration(sql_dir, "0002_slow_tx", "CREATE TABLE t1 (id int);\nSELECT pg_sleep(3);\nCREATE TABLE t2 (id int);\n")
    proc = runner_process(db, sql_dir, tmp_path)
    wait_for_sleep(db)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "0002_slow_tx.sql: interrupted by SIGTERM" in stderr and "nothing of it was applied" in stderr
    assert "t1" not in db.tables() and "0002_slow_tx" not in applied(db)


def test_a_committed_non_transactional_file_whose_mark_is_lost_is_marked_not_rerun(cli, db, sql_dir):
    add_migration(sql_dir, "0002_cic", "-- transactional: false\nCREATE INDEX CONCURRENTLY i_seed ON hcm_report_metadata (id);\n")
    ok(migrate(cli, db, sql_dir))
    db.query("DELETE FROM _yoyo_migration WHERE migration_id = '0002_cic'")
    result = ok(migrate(cli, db, sql_dir))
    assert "marked 0002_cic applied" in result.output
    assert applied(db) == [SEED, "0002_cic"]


def test_a_rollback_files_own_transactional_false_is_used(cli, db, sql_dir):
    add_migration(sql_dir, "0002_idx", "CREATE INDEX i_own ON hcm_report_metadata (id);\n",
        "-- transactional: false\nDROP INDEX CONCURRENTLY i_own;\n")
    ok(migrate(cli, db, sql_dir))
    ok(cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT to_regclass('i_own')") == [(None,)]
    assert applied(db) == [SEED]


def test_a_rollback_that_fails_halfway_is_recorded_and_worded_for_a_rollback(cli, db, sql_dir):
    add_migration(sql_dir, "0002_idx", "-- transactional: false\nCREATE INDEX CONCURRENTLY i_a ON hcm_report_metadata (id);\n"
        "CREATE INDEX CONCURRENTLY i_b ON hcm_report_metadata (id);\n",
        "-- transactional: false\nDROP INDEX CONCURRENTLY i_a;\nDROP INDEX CONCURRENTLY i_missing;\n"
        "DROP INDEX CONCURRENTLY i_b;\n")
    ok(migrate(cli, db, sql_dir))
    line = one_error_line(cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env()))
    assert "0002_idx.rollback.sql:3: failed to roll back" in line
    assert "statement 1 of 3 (line 2) COMMITTED" in line
    assert "IF EXISTS" in line and "IF NOT EXISTS" not in line and "INVALID" not in line
    status = status_of(cli, db, sql_dir)
    assert "applied, PARTLY rolled back" in status and "rollback: " in status and "statement 1 of 3 (line 2)" in status
    ok(migrate(cli, db, sql_dir))  # migrate does not forget a partial rollback
    assert "applied, PARTLY rolled back" in status_of(cli, db, sql_dir)


# --- 11: a file that makes its transaction read-only --------------------------------------------------


def test_set_transaction_read_only_applies_as_in_psql_and_is_recorded(cli, db, sql_dir):
    add_migration(sql_dir, "0002_ro", "SET TRANSACTION READ ONLY;\nSELECT count(*) FROM hcm_report_metadata;\n")
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED, "0002_ro"]
    assert db.query("SELECT count(*) FROM _hcm_migration_checksum WHERE migration_id = '0002_ro'") == [(1,)]
    assert "0 pending" in status_of(cli, db, sql_dir)


# --- 6: plan | psql gives migrate's schema, session state included ------------------------------------


def test_plan_piped_to_psql_starts_each_file_in_a_fresh_session_as_migrate_does(cli, db, make_db, sql_dir):
    add_migration(sql_dir, "0002_baseline", "SELECT pg_catalog.set_config('search_path', '', false);\n"
        "CREATE TABLE public.base (id int);\nSET statement_timeout = '1ms';\n")
    add_migration(sql_dir, "0003_next", "-- transactional: false\nCREATE TABLE after_base (id int);\nSELECT pg_sleep(0.05);\n")
    ok(migrate(cli, db, sql_dir))
    plan = ok(cli("plan", "--offline", "--sql-dir", sql_dir)).stdout
    assert plan.count("\\connect -reuse-previous=on\n") == 3
    twin = make_db()
    done = subprocess.run([_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", twin.url],
                          input=plan, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert schema_dump(db) == schema_dump(twin)
    assert table_schema(twin, "after_base") == "public"


def test_a_stray_empty_statement_runs_as_in_psql_and_a_driver_refusal_is_no_lost_connection(cli, db, make_db,
                                                                                             sql_dir):
    """`;;` or a lone `;` ran fine in psql and failed migrate as "the connection was lost" (attack 22)."""
    same_as_psql(cli, db, make_db, sql_dir, "0002_semi",
                 "CREATE TABLE a (id int);;\n;\n/* c */ ;\nCREATE TABLE b (id int);\n")
    assert {"a", "b"} <= db.tables()
    # A statement the driver itself refuses (no SQLSTATE: the server never saw it) is not a lost connection.
    import psycopg2

    from migrator.postgres.errors import StatementFailed, migration_error
    from migrator.postgres.splitter import split

    path = add_migration(sql_dir, "0003_x", "SELECT 1;\n")
    conn = psycopg2.connect(db.url)
    try:
        with pytest.raises(psycopg2.ProgrammingError) as refused:
            conn.cursor().execute("")
    finally:
        conn.close()
    failed = StatementFailed(refused.value, path, split("SELECT 1;\n"), 0, transactional=True)
    line = str(migration_error(failed, object(), "the database", "apply", path))
    assert "connection was lost" not in line and "nothing of it was applied" in line, line
