"""attack23w 2 (2b, 2c, 2d): a search_path set inside ONE statement (a DO block, a function's body, the routine's own
SET clause) was never seen by CheckedPath, which looks at the session after each statement: a body that set the
path, used it and put it back ran low's `=` as the migration user (exit 0), and even a path left set had been used by
the statement that set it (2c, committed in a non-transactional file). Now the bodies are read before anything
runs: a literal path there is held to the planted rule as a top-level SET is, and a change that cannot be read (an
EXECUTE of a string built at run time, set_config with a computed name or value) is refused while the migration user
can reach a schema others may create in or own."""

from __future__ import annotations

import pytest

from conftest import add_migration, ok
from migrator import lint, postgres
from test_attack23u_reach import _planted_app
from test_schema_creators import low, plant  # noqa: F401 (low: a fixture)

_UPDATE = "UPDATE public.a SET name = 'x' WHERE name = 'y';"
VARIANTS = {
    "plain": f"DO $$BEGIN SET search_path TO app, public; {_UPDATE} RESET search_path; END$$;",
    "exec": f"DO $$BEGIN EXECUTE 'SET search_path TO app, public'; {_UPDATE} "
            "EXECUTE 'SET search_path TO public'; END$$;",
    "func": "CREATE FUNCTION public.f() RETURNS void LANGUAGE plpgsql AS $$BEGIN PERFORM pg_catalog.set_config("
            f"'search_path', 'app, public', true); {_UPDATE} PERFORM pg_catalog.set_config('search_path', 'public', "
            "true); END$$;\nSELECT public.f();",
    "concat": "DO $$BEGIN PERFORM pg_catalog.set_config('search' || '_path', 'app, public', false); "
              f"{_UPDATE} PERFORM pg_catalog.set_config('search' || '_path', 'public', false); END$$;",
    "format": f"DO $$BEGIN EXECUTE format('SET %I TO app, public', 'search_path'); {_UPDATE} RESET search_path; END$$;",
    "sqlbody": "CREATE FUNCTION public.f() RETURNS void LANGUAGE sql AS $b$SELECT pg_catalog.set_config('search_path', "
               f"'app, public', true); {_UPDATE} SELECT pg_catalog.set_config('search_path', 'public', true)$b$;\n"
               "SELECT public.f();",
    "clause": "CREATE FUNCTION public.f() RETURNS void LANGUAGE plpgsql SET search_path = app, public AS "
              f"$$BEGIN {_UPDATE} END$$;\nSELECT public.f();",
    "leftset": f"-- transactional: false\nDO $$BEGIN EXECUTE 'SET search_path TO app, public'; {_UPDATE} END$$;",
}
_UNREAD = ("concat", "format")


def _refused(result, low, variant: str) -> str:
    [line] = [x for x in result.output.splitlines() if "refusing to" in x] or [result.output]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "0003_data" in line and "search_path" in line and "app" in line, line
    assert f"roles {low} may CREATE in schema app" in line or f"(owner {low})" in line, line
    if variant in _UNREAD:
        assert "cannot be read before the run" in line, line
    return line


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_path_set_inside_one_statement_is_refused_before_anything_runs(cli, db, sql_dir, low, variant):
    """Failed before (plain, exec, func, concat, format, sqlbody): exit 0, low's `=` ran as the migration user;
    leftset (2c): refused after the DO block had run low's `=` and committed its UPDATE. (clause: the routine's own
    SET clause was read already, kept as the control.)"""
    _planted_app(cli, db, sql_dir, low)
    add_migration(sql_dir, "0003_data", VARIANTS[variant] + "\n")
    _refused(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()), low, variant)
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


@pytest.mark.parametrize("variant", ["plain", "concat"])
def test_a_rollback_files_body_path_is_refused_before_it_runs(cli, db, sql_dir, low, variant):
    """2b: `sql rollback` ran a rollback file's DO block that set and reset the path: exit 0, low's `=` ran."""
    _planted_app(cli, db, sql_dir, low)
    add_migration(sql_dir, "0003_data", "SELECT 1;\n", rollback=VARIANTS[variant] + "\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    _refused(cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env()), low, variant)
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


def test_a_tenants_path_built_at_run_time_is_refused_before_it_runs(cli, db, sql_dir, low):
    """2d: a tenant run refuses a statement spelling search_path; a name built at run time ran low's `=`: exit 0."""
    db.query(f"CREATE SCHEMA app AUTHORIZATION {low}; GRANT USAGE ON SCHEMA app TO PUBLIC; CREATE SCHEMA pb")
    plant(db, "app", low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env()))
    add_migration(sql_dir, "0003_data", "DO $$BEGIN PERFORM pg_catalog.set_config('search' || '_path', 'app, pb', "
                  "false); UPDATE a SET name = 'x' WHERE name = 'y'; PERFORM pg_catalog.set_config('search' || "
                  "'_path', 'pb,public', false); END$$;\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env())
    line = _refused(result, low, "concat")
    assert "[pb]" in line, line
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT name FROM pb.a") == [("y",)]


_FORMAT = "DO $$BEGIN EXECUTE format('ALTER TABLE %I ADD COLUMN note text', 'a'); END$$;\n"


def test_an_execute_of_a_built_string_runs_where_no_other_role_may_plant(cli, db, sql_dir):
    """The common real migration: EXECUTE format(...) in a DO block, on a database where no schema the user can
    reach is another role's to create in or own, runs as before."""
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20));\n")
    add_migration(sql_dir, "0003_data", _FORMAT)
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'a' AND column_name = "
                    "'note'") == [(1,)]


def test_an_execute_of_a_built_string_is_refused_where_another_role_may_plant(cli, db, sql_dir, low):
    _planted_app(cli, db, sql_dir, low)
    add_migration(sql_dir, "0003_data", _FORMAT)
    line = _refused(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()), low, "format")
    assert "SCHEMA_CREATORS_TRUSTED" in line, line
    ok(cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": low}))


@pytest.mark.parametrize("variant, flagged", [("func", True), ("sqlbody", True), ("clause", False),
                                              ("concat", True)])
def test_a_function_bodys_path_is_a_lint_finding(sql_dir, variant, flagged):
    """lint read DO bodies only: a function body setting the path was `clean`. (The routine's own SET clause is
    a literal SET, read and checked as one.)"""
    add_migration(sql_dir, "0002_path", VARIANTS[variant].replace("DO $$", "CREATE FUNCTION g() RETURNS void "
                                                                  "LANGUAGE plpgsql AS $$") + "\n")
    findings = [f for f in lint.lint(postgres.read_migrations(sql_dir)) if f.rule == lint.DYNAMIC_PATH]
    assert bool(findings) == flagged, findings
    if variant == "concat":
        assert "cannot be read" in str(findings[0]), findings


def test_a_path_left_set_by_a_live_functions_body_still_stops_the_file(cli, db, sql_dir, low):
    """The backstop (CheckedPath) for code no pending file holds: a function already in the database (the user's own)
    leaves low's schema on the path; the file stops before its next statement resolves `=` there. (In a schema the
    connect check does not read, util: an own routine of the checked schemas that sets the path, computed or not, is
    refused before the run since attack23y 1 / attack23z.)"""
    _planted_app(cli, db, sql_dir, low)
    db.query("CREATE SCHEMA util; CREATE FUNCTION util.setpath() RETURNS void LANGUAGE plpgsql AS $$BEGIN PERFORM "
             "pg_catalog.set_config('search_path', 'app' || ', public', false); END$$")
    add_migration(sql_dir, "0003_data", f"SELECT util.setpath();\n{_UPDATE.replace('public.a', 'a')}\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and "0003_data.sql:1" in result.stderr, result.output
    assert "a function already in the database" in result.stderr and f"roles {low} may CREATE in schema app" in \
        result.stderr, result.output
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


@pytest.mark.parametrize("text, schemas, unread", [
    ("DO $$DECLARE c CURSOR FOR SELECT set_config('search_path', 'k1', false); BEGIN NULL; END$$", ["k1"], False),
    ("DO $$DECLARE v text := set_config('search_path', 'k2', false); BEGIN NULL; END$$", ["k2"], False),
    ("DO $$BEGIN NULL; EXCEPTION WHEN others THEN SET search_path TO k3; END$$", ["k3"], False),
    ("-- lead\n/* c */ DO $o$BEGIN EXECUTE $x$DO $$BEGIN EXECUTE 'SET search_path TO k4'; END$$$x$; END$o$",
     ["k4"], False),
    ("DO $$BEGIN EXECUTE E'SET search\\137path TO k5'; END$$", ["k5"], False),
    ("CREATE /* c */ OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN PERFORM set_config('search_path', "
     "'k6', true); COMMIT; END$$", ["k6"], False),
    ("CREATE FUNCTION g() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('search_path', 'k7', true); END",
     ["k7"], False),
    ("DO $$BEGIN FOR r IN EXECUTE 'SELECT 1' || '' LOOP NULL; END LOOP; END$$", [], True),
    ("DO $$BEGIN PERFORM set_config(current_setting('x.name'), 'k8', false); END$$", [], True),
    ("CREATE FUNCTION g() RETURNS int LANGUAGE plperl AS 'return 1'", [], True),
    ("UPDATE pg_settings SET setting = 'k9' WHERE name = 'search_path'", [], True),
    ("DO $$BEGIN EXECUTE 'CREATE TABLE x (id int)'; EXECUTE 'SELECT 1' USING 1; END$$", [], False),
    ("INSERT INTO notes VALUES ('to do: create a function that sets things')", [], False),
])
def test_the_body_reader_finds_each_route(text, schemas, unread):
    """body_paths.read, without a server: the places a PL/pgSQL body holds SQL (a cursor's query, a variable's
    default, an exception handler, nested EXECUTEs of literals, E'' escapes), routines of each kind, and what it
    cannot read."""
    from migrator import body_paths

    found = body_paths.read(text)
    assert found.schemas == schemas and bool(found.unread) == unread, found
