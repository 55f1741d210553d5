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
from conftest import PROJECT_ROOT, _bin, one_error_line, psql_file, schema_dump
from test_sql_real_world import SEED, add, applied, migrate, ok, table_schema


def status_of(cli, db, sql_dir) -> str:
    return ok(cli("status", "--sql-dir", sql_dir, env=db.db_env())).stdout


def same_as_psql(cli, db, make_db, sql_dir, name: str, sql: bytes | str):
    """Apply one file through the runner and through `psql -1 -f`; both schemas must be equal."""
    path = add(sql_dir, name, sql)
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
    add(sql_dir, "0003_cr_err", b"SELECT 1; -- one\rSELECT 2; -- two\rSELECT nope;\r")
    assert "0003_cr_err.sql:3: failed to apply" in one_error_line(migrate(cli, db, sql_dir))


def test_begin_atomic_after_a_comment_between_words_is_one_function(cli, db, make_db, sql_dir):
    same_as_psql(cli, db, make_db, sql_dir, "0002_atomic",
                 "CREATE /* c */ FUNCTION f2(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\n"
                 "CREATE OR -- why\n REPLACE PROCEDURE p2() LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n")
    assert db.query("SELECT f2(1)") == [(2,)]


def test_a_files_own_standard_conforming_strings_off_is_followed(cli, db, make_db, sql_dir):
    twin = same_as_psql(cli, db, make_db, sql_dir, "0002_scs",
                        "CREATE TABLE s (v text);\nSET standard_conforming_strings = off;\n"
                        "INSERT INTO s VALUES ('it\\'s; tricky');\nRESET standard_conforming_strings;\n"
                        "INSERT INTO s VALUES ('C:\\new');\n")
    assert db.query("SELECT v FROM s ORDER BY v") == twin.query("SELECT v FROM s ORDER BY v") == [
        ("C:\\new",), ("it's; tricky",)]


def test_a_dollar_quote_tag_outside_the_bmp(cli, db, make_db, sql_dir):
    same_as_psql(cli, db, make_db, sql_dir, "0002_emoji", "CREATE TABLE e AS SELECT $😀$a;b$😀$ AS v;\n")
    assert db.query("SELECT v FROM e") == [("a;b",)]


def test_a_nul_byte_is_refused_with_its_line_before_anything_runs(cli, db, sql_dir):
    add(sql_dir, "0002_nul", b"CREATE TABLE n1(id int);\nSELECT 1;\x00\nCREATE TABLE n2(id int);\n")
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
    add(sql_dir, "10_ten", "CREATE TABLE ten (id int REFERENCES nine);\n")
    add(sql_dir, "9_nine", "CREATE TABLE nine (id int PRIMARY KEY);\n")
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == sorted([SEED, "9_nine", "10_ten"])
    status = status_of(cli, db, sql_dir)
    assert status.index("9_nine") < status.index("10_ten")
    add(sql_dir, "1_b", "SELECT 1;\n")
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "share the number 1" in line and SEED in line


# --- 2, 3: the run's own connection whatever the database defaults say -------------------------------


@pytest.mark.parametrize("transactional", [True, False])
def test_a_database_default_role_does_not_lock_the_runner_out(cli, db, sql_dir, transactional):
    role = f"o_{db.name}"
    db.query(f"CREATE ROLE {role}; GRANT CREATE, USAGE ON SCHEMA public TO {role}; GRANT {role} TO CURRENT_USER")
    try:
        header = "" if transactional else "-- transactional: false\n"
        add(sql_dir, "0002_default_role", f"{header}ALTER DATABASE {db.name} SET role = {role};\n")
        add(sql_dir, "0003_as_default", "CREATE TABLE t_by_default (id int);\n")
        ok(migrate(cli, db, sql_dir))
        assert db.query("SET ROLE NONE; SELECT count(*) FROM _yoyo_migration") == [(3,)]
        # a fresh session, as psql's, runs as the database's default role
        assert db.query("SELECT tableowner FROM pg_tables WHERE tablename = 't_by_default'") == [(role,)]
        assert "0 pending" in status_of(cli, db, sql_dir)
        add(sql_dir, "0004_more", "SELECT 1;\n")
        ok(migrate(cli, db, sql_dir))
    finally:
        db.query(f"SET ROLE NONE; ALTER DATABASE {db.name} RESET role")
        db.query(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_a_stray_yoyo_table_on_the_search_path_does_not_take_over_the_bookkeeping(cli, db, sql_dir):
    ok(migrate(cli, db, sql_dir))
    db.query("CREATE SCHEMA app; CREATE TABLE app._yoyo_migration (x int)")
    db.query(f"ALTER DATABASE {db.name} SET search_path = app, public")
    assert "0 pending" in status_of(cli, db, sql_dir)
    add(sql_dir, "0002_next", "CREATE TABLE public.t_next (id int);\n")
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED, "0002_next"]
