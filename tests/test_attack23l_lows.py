"""Attack 23l's lows: names from the catalogs (the home schema, an INVALID index) forging output lines in doctor and
status; doctor saying "ready" while the role's search_path leaves an unqualified CREATE nowhere to go."""

from __future__ import annotations

import json

import psycopg2
import pytest

from conftest import SEED, ok, one_error_line
from test_planted_objects import low  # noqa: F401 (the fixture: a login role owning nothing)
from test_tenants_history import home_path  # noqa: F401 (the fixture: the role's search_path in this database)

# A schema or index name anyone with CREATE may choose: its line break would start a line of the runner's own.
FORGED = "line\nerror: forged\r0002_b  applied\u202ex"
ESCAPED = "line\\nerror: forged\\r0002_b  applied\\u202ex"


def _forged_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("error: forged", "0002_b"))]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_a_home_schema_named_with_a_line_break_is_escaped_in_every_doctor_line(cli, db, sql_dir, home_path):
    """attack23l home_names: doctor printed the home schema raw in three lines (privileges, bookkeeping, and the
    locks'), so a line break in its name started an `error:` line of its own."""
    db.query(f"CREATE SCHEMA {_quoted(FORGED)} AUTHORIZATION {db.server.user}")
    home_path(f"{_quoted(FORGED)}, public")
    for run in range(2):  # before the first migrate (tables to create) and after it (all present)
        doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env())
        assert doctor.exit_code == 0, doctor.output
        assert _forged_lines(doctor.output) == [] and "\r" not in doctor.output and "\u202e" not in doctor.output
        named = [line for line in doctor.stdout.splitlines() if ESCAPED in line]
        assert any(line.startswith("ok    postgres schema") for line in named), doctor.stdout
        assert any(line.startswith("ok    postgres bookkeeping") for line in named), doctor.stdout
        if not run:
            ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    # JSON keeps the name as it is: its encoding escapes the line break
    report = json.loads(cli("doctor", "--json", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env()).stdout)
    assert any(FORGED in check["detail"] for check in report["checks"]), report
    assert db.query(f"SELECT migration_id FROM {_quoted(FORGED)}._yoyo_migration") == [(SEED,)]


def test_an_invalid_index_named_with_a_line_break_is_one_escaped_status_line(cli, db, sql_dir):
    """status lists INVALID indexes of every schema: the index's name is whoever made it."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query("CREATE TABLE dup (id int); INSERT INTO dup VALUES (1), (1)")
    with pytest.raises(psycopg2.Error), db.server.connect(db.name) as conn:  # (leaves the index INVALID)
        conn.autocommit = True
        conn.cursor().execute(f"CREATE UNIQUE INDEX CONCURRENTLY {_quoted(FORGED)} ON dup (id)")
    status = cli("status", "--sql-dir", sql_dir, env=db.db_env())
    assert _forged_lines(status.output) == [] and "\r" not in status.stdout, status.stdout
    [line] = [line for line in status.stdout.splitlines() if "INVALID index" in line]
    assert f"public.{ESCAPED} on dup" in line and f"DROP INDEX CONCURRENTLY public.{ESCAPED}" in line, line


def test_a_home_schema_named_with_a_line_break_and_owned_by_another_role_is_refused_in_one_line(
        cli, db, sql_dir, low, home_path):
    """The refusal quotes the schema: its line break made a second (indented) line of the error."""
    db.query(f"CREATE SCHEMA {_quoted(FORGED)} AUTHORIZATION {low}")
    home_path(f"{_quoted(FORGED)}, public")
    for command in ("migrate", "status"):
        result = cli(command, "--sql-dir", sql_dir, env=db.db_env())
        line = one_error_line(result)
        assert result.exit_code == 2 and f"schema {ESCAPED} is owned by role {low}" in line, result.output
        assert _forged_lines(result.output) == [] and "\r" not in result.output, result.output


@pytest.mark.parametrize("path, said", [("''", '("") names no schema that exists'),
                                        ("nosuch", "(nosuch) names no schema that exists"),
                                        ("pg_catalog, public", "(pg_catalog, public) puts pg_catalog first"),
                                        ("pg_temp, public", "(pg_temp, public) puts pg_temp first: an unqualified "
                                                            "CREATE TABLE in a migration makes a temporary table")])
def test_doctor_warns_when_the_roles_search_path_leaves_an_unqualified_create_nowhere(cli, db, sql_dir, home_path,
                                                                                       path, said):
    """attack23l: doctor said "ready" while every unqualified CREATE (the seed's) fails under the role's search_path.
    A warning, not a FAIL: a file that names its schema runs, as it would in psql."""
    home_path(path)
    report = json.loads(cli("doctor", "--json", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env()).stdout)
    [check] = [c for c in report["checks"] if c["name"] == "postgres search_path"]
    assert check["status"] == "warn" and said in check["detail"] and "unqualified CREATE" in check["detail"], check
    assert f"ALTER ROLE {db.server.user} IN DATABASE {db.name} SET search_path = public" in check["remedy"], check
    assert report["ok"] is True
    # what the warning says: the seed's unqualified CREATE TABLE lands nowhere lasting (the bookkeeping in public)
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == (0 if path.startswith("pg_temp") else 1), result.output
    assert db.query("SELECT count(*) FROM pg_tables WHERE tablename = 'hcm_report_metadata'") == [(0,)]


def test_doctor_says_nothing_of_a_search_path_that_creates_in_a_schema(cli, db, sql_dir, home_path):
    db.query(f"CREATE SCHEMA app AUTHORIZATION {db.server.user}")
    for path in (None, "app, public", '"$user", public'):
        if path:
            home_path(path)
        doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env())
        assert doctor.exit_code == 0 and "search_path" not in doctor.stdout, (path, doctor.stdout)
