"""attack23u 3 (a search_path set by a route the file's text does not spell), implicit code on the migration's own
tables another role may change after review (the pg_depend walk), status/plan on a login event trigger, and the
rollback loop's check before each file (fix23aj)."""

from __future__ import annotations

import pytest

from conftest import add_migration, ok
from migrator import lint, postgres
from test_schema_creators import doctor_line, low, plant, refusal  # noqa: F401 (low: a fixture)

_SPELLINGS = [
    "DO $$BEGIN EXECUTE 'SET search_path TO app, public'; END$$;",
    'SET U&"search\\005fpath" TO app, public;',
    "SELECT set_config('search' || '_path', 'app, public', false);",
    "SELECT set_config('search_path', (SELECT 'app, public'), false);",
]


def _planted_app(cli, db, sql_dir, low) -> None:
    """low's schema app (USAGE to all) with its `=` on varchar recording who runs it; the user's table a."""
    db.query(f"CREATE SCHEMA app AUTHORIZATION {low}; GRANT USAGE ON SCHEMA app TO PUBLIC")
    plant(db, "app", low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))


@pytest.mark.parametrize("transactional", [True, False])
@pytest.mark.parametrize("spelled", _SPELLINGS)
def test_a_search_path_set_by_a_route_the_text_does_not_spell_stops_the_file(cli, db, sql_dir, low, spelled,
                                                                               transactional):
    """attack23u 3: each spelling put low's schema app on the file's path unseen; its `=` ran as the migration user
    on the next statement, lint clean, exit 0. Now the text reader reads the DO block's literal EXECUTE (attack23w 2:
    held to the planted rule as a literal SET) and refuses a computed set_config while low's schema is within reach,
    before anything runs. Failed before: exit 0, low's operator ran."""
    _planted_app(cli, db, sql_dir, low)
    head = "" if transactional else "-- transactional: false\n"
    add_migration(sql_dir, "0003_data", f"{head}{spelled}\nUPDATE a SET name = 'x' WHERE name = 'y';\n")
    line = refusal(cli, db, sql_dir) if "U&" in spelled else None
    if line is None:
        result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
        assert result.exit_code == 2, result.output
        line = result.stderr
        assert f"0003_data.sql:{2 - transactional}" in line and "search_path" in line and "app" in line, line
        assert ("cannot be read before the run" if "set_config" in spelled else "puts schema app on its "
                "search_path") in line and f"roles {low} may CREATE in schema app" in line, line
        assert f"operator app.=(character varying,character varying) (owner {low})" in line, line
    assert "app" in line, line
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


@pytest.mark.parametrize("schemas", ["public", "mine, public"])
def test_a_dynamic_search_path_onto_clean_schemas_runs(cli, db, sql_dir, low, schemas):
    """The control: a DO block setting the path to the schemas the run checked, or to one no other role may plant in
    (checked when the path changes), is not refused."""
    _planted_app(cli, db, sql_dir, low)
    db.query("CREATE SCHEMA mine")
    add_migration(sql_dir, "0003_data", f"DO $$BEGIN EXECUTE 'SET search_path TO {schemas}'; END$$;\n"
                                        "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT name FROM a") == [("x",)]


@pytest.mark.parametrize("spelled, flagged", [
    *((s, True) for s in _SPELLINGS),
    ("DO $$BEGIN PERFORM set_config('search_path', 'app', true); END$$;", True),
    ("UPDATE pg_settings SET setting = 'app' WHERE name = 'search_path';", True),
    ("DO $$BEGIN EXECUTE format('CREATE TABLE %I (id int)', 'x'); END$$;", True),
    ("SET search_path TO app, public;", False),
    ("SELECT set_config('search_path', 'app, public', false);", False),
    ("DO $$BEGIN EXECUTE 'CREATE TABLE x (id int)'; END$$;", False),
    ("COMMENT ON TABLE hcm_report_metadata IS 'search_path';", False),
])
def test_a_dynamic_search_path_spelling_is_a_lint_finding(sql_dir, spelled, flagged):
    """attack23u 3: lint was clean for each dynamic spelling. Failed before: no finding."""
    path = add_migration(sql_dir, "0002_path", spelled + "\n")
    findings = [f for f in lint.lint(postgres.read_migrations(sql_dir)) if f.rule == lint.DYNAMIC_PATH]
    assert bool(findings) == flagged, findings
    if flagged:
        assert str(findings[0]).startswith(f"{path}:1:") and "checked" in str(findings[0]), findings


def test_plan_shows_the_dynamic_search_path_finding(cli, db, sql_dir):
    add_migration(sql_dir, "0002_path", _SPELLINGS[0] + "\n")
    result = cli("plan", "--sql-dir", sql_dir, env=db.db_env())
    assert f"0002_path.sql:1:1: {lint.DYNAMIC_PATH}: " in result.output, result.output


def _low_code(db, low) -> None:
    """low's schema app: app.ok(text) recording who runs it (volatile), app.imm(text) (immutable), domain app.email."""
    db.query(f"CREATE SCHEMA app AUTHORIZATION {low}; SET ROLE {low}; GRANT USAGE ON SCHEMA app TO PUBLIC; "
             "CREATE TABLE app.hits (who text); GRANT INSERT, SELECT ON app.hits TO PUBLIC; "
             "CREATE FUNCTION app.ok(text) RETURNS bool LANGUAGE plpgsql AS $$BEGIN INSERT INTO app.hits "
             "VALUES (current_user); RETURN true; END$$; "
             "CREATE FUNCTION app.imm(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT $1'; "
             "CREATE DOMAIN app.email AS text; RESET ROLE")


_IMPLICIT = [
    ("CREATE TABLE t (id int, v text DEFAULT (app.ok('x'))::text)", "function app.ok(text)"),
    ("CREATE TABLE t (id int, v text CHECK (app.ok(v)))", "function app.ok(text)"),
    ("CREATE TABLE t (id int, v text); CREATE INDEX t_v ON t ((app.imm(v)))", "function app.imm(text)"),
    ("CREATE TABLE t (id int, v text, g text GENERATED ALWAYS AS (app.imm(v)) STORED)", "function app.imm(text)"),
    ("CREATE TYPE pair AS (e app.email, n int); CREATE TABLE t (id int, v pair)", "domain app.email"),
    ("CREATE DOMAIN mine AS text CHECK (app.ok(VALUE)); CREATE TABLE t (id int, v mine)", "function app.ok(text)"),
    ("CREATE TABLE t (id int, v text); CREATE FUNCTION tf() RETURNS trigger LANGUAGE plpgsql AS "
     "$$BEGIN RETURN NEW; END$$; CREATE TRIGGER tt BEFORE INSERT ON t FOR EACH ROW WHEN (app.ok(NEW.v)) "
     "EXECUTE FUNCTION tf()", "function app.ok(text)"),
    ("CREATE TABLE t (id int, v text); CREATE STATISTICS t_st ON (app.imm(v)) FROM t", "function app.imm(text)"),
]


@pytest.mark.parametrize("made, reached", _IMPLICIT)
def test_implicit_code_another_role_owns_on_the_users_own_table_is_refused(cli, db, sql_dir, low, made, reached):
    """fix23aj 2: the user's own table t whose default, CHECK, index expression, generated column, composite type's
    attribute, domain CHECK, trigger condition or extended statistics' expression reaches low's function or type: low
    may CREATE OR REPLACE it (ALTER DOMAIN ADD CONSTRAINT) after any review, and a pending plain INSERT (or ANALYZE)
    runs it as the migration user. Failed before: exit 0 (only a column typed directly by low's domain was seen; the
    statistics case until fix23an, attack23w 5)."""
    _low_code(db, low)
    db.query(made)
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and "public.t" in line and reached in line and f"owner {low}" in line, line
    db.query("DELETE FROM app.hits")
    line = refusal(cli, db, sql_dir)
    assert "public.t" in line and reached in line and f"(owner {low})" in line, line
    assert "OWNER TO" in line and f"SCHEMA_CREATORS_TRUSTED={low}" in line, line
    assert db.query("SELECT * FROM t") == [] and db.query("SELECT who FROM app.hits") == []


def test_implicit_code_on_a_written_table_off_the_path_is_refused(cli, db, sql_dir, low):
    """fix23aj 2, a table a pending file writes by its qualified name: its default calls low's function."""
    _low_code(db, low)
    db.query("CREATE SCHEMA data; CREATE TABLE data.t (id int, v text DEFAULT (app.ok('x'))::text)")
    add_migration(sql_dir, "0002_seed", "INSERT INTO data.t (id) VALUES (1);\n")
    line = refusal(cli, db, sql_dir)
    assert "0002_seed.sql:1 writes table data.t" in line and "function app.ok(text)" in line, line
    assert f"owner {low}" in line and 'ALTER ROUTINE app.ok(text) OWNER TO' in line, line
    assert db.query("SELECT * FROM data.t") == [] and db.query("SELECT who FROM app.hits") == []


def _login_trigger(db, low) -> None:
    db.query(f"CREATE SCHEMA lowfn AUTHORIZATION {low}; SET ROLE {low}; GRANT USAGE ON SCHEMA lowfn TO PUBLIC; "
             "CREATE FUNCTION lowfn.on_login() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN NULL; END$$; "
             "RESET ROLE; CREATE EVENT TRIGGER login_audit ON login EXECUTE FUNCTION lowfn.on_login()")


@pytest.mark.parametrize("command", ["status", "plan"])
def test_status_and_plan_say_a_login_event_trigger_of_another_role_ran(cli, db, sql_dir, low, command):
    """attack23u 11: the run refuses it and doctor FAILs, but status and plan (whose connections ran it too) said
    nothing. Failed before: no such line."""
    _login_trigger(db, low)
    try:
        result = cli(command, "--sql-dir", sql_dir, env=db.db_env())
        [line] = [line for line in result.output.splitlines() if "login event trigger login_audit" in line] or [
            result.output]
        assert (f"the login event trigger's function already ran as user {db.server.user} on this connection") in line
        assert "DROP EVENT TRIGGER login_audit" in line and f"(owner {low})" in line, line
    finally:
        db.query("DROP EVENT TRIGGER IF EXISTS login_audit")


def test_the_rollback_loop_checks_the_planted_rule_before_each_file(cli, db, sql_dir, low):
    """fix23aj 3: migrate checks again before each file after the first (attack23u 6); sql rollback did not: a
    rollback file granting low CREATE on public let the next rollback file run low's `=`. Failed before: exit 0,
    table a dropped."""
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y');\n",
                  "DELETE FROM a WHERE name = 'y';\nDROP TABLE a;\n")
    # (a DO block's grant: a plain one is refused before anything runs since fix23ak, file_grants.py)
    add_migration(sql_dir, "0003_b", "SELECT 1;\n",
                  f"DO $$BEGIN EXECUTE 'GRANT USAGE, CREATE ON SCHEMA public TO {low}'; END$$;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    result = cli("sql", "rollback", "--count", "2", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and f"roles {low} may CREATE in schema public" in result.stderr, result.output
    assert "before 0002_a (nothing of it ran" in result.stderr, result.output
    assert db.query("SELECT name FROM a") == [("y",)]
