"""attack23w 3 and 6: the migration user's own views and materialized views, and its own functions whose body is a
string (LANGUAGE sql AS '...', plpgsql), reached from implicit code, are held to the rule implicit code is held to:
what another role owns and may replace must not run as the migration user (fix23ap)."""

from __future__ import annotations

import pytest

from conftest import add_migration, ok
from test_attack23u_reach import _low_code
from test_schema_creators import doctor_line, low, refusal  # noqa: F401 (low: a fixture)

_VIEWS = [  # (the user's objects, the pending file, what is named)
    ("CREATE TABLE t (id int, v text); CREATE MATERIALIZED VIEW mv AS SELECT id, app.ok(v) AS n FROM t",
     "INSERT INTO t VALUES (1, 'A'); REFRESH MATERIALIZED VIEW mv;", "materialized view public.mv"),
    ("CREATE TABLE t (id int, v text); CREATE VIEW vw AS SELECT id, app.ok(v) AS n FROM t; "
     "CREATE TABLE t2 (id int, n bool)", "INSERT INTO t VALUES (1, 'A'); INSERT INTO t2 SELECT id, n FROM vw;",
     "view public.vw"),
]


@pytest.mark.parametrize("made, pending, named", _VIEWS)
def test_the_users_own_view_calling_another_roles_function_is_refused(cli, db, sql_dir, low, made, pending, named):
    """attack23w 6: mig's own (materialized) view whose query calls low's function: a pending REFRESH, or a read of
    the view in a write, ran it as the migration user; doctor ready, exit 0. Failed before: so."""
    _low_code(db, low)
    db.query(made)
    add_migration(sql_dir, "0002_seed", pending + "\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and named in line and "function app.ok(text)" in line, line
    assert f"owner {low}" in line, line
    line = refusal(cli, db, sql_dir)
    assert named in line and "function app.ok(text) (owner " in line and "OWNER TO" in line, line
    assert db.query("SELECT * FROM t") == [] and db.query("SELECT who FROM app.hits") == []


_WRAP = "CREATE TABLE t (id int, v text DEFAULT wrap())"
_WRAPPERS = [  # (the user's objects, the function named as the way to low's, low's object named)
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS 'SELECT app.ok(''x'')::text'; " + _WRAP,
     "function public.wrap()", "function app.ok(text)"),
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$BEGIN RETURN app.ok('x')::text; END$$; " + _WRAP,
     "function public.wrap()", "function app.ok(text)"),
    ("CREATE FUNCTION okw(text) RETURNS bool LANGUAGE sql AS 'SELECT app.ok($1)'; "
     "CREATE TABLE t (id int, v text CHECK (okw(v)))", "function public.okw(text)", "function app.ok(text)"),
    # two of the user's own, the second called by its qualified name, then unqualified
    ("CREATE FUNCTION inner_w() RETURNS text LANGUAGE plpgsql AS $$DECLARE r text; BEGIN r := app.ok('x')::text; "
     "RETURN r; END$$; CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS 'SELECT public.inner_w()'; " + _WRAP,
     "function public.inner_w()", "function app.ok(text)"),
    ("CREATE FUNCTION inner_w() RETURNS text LANGUAGE sql AS 'SELECT app.ok(''x'')::text'; "
     "CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$BEGIN RETURN inner_w(); END$$; " + _WRAP,
     "function public.inner_w()", "function app.ok(text)"),
    # the user's own trigger function
    ("CREATE TABLE t (id int, v text); CREATE FUNCTION tf() RETURNS trigger LANGUAGE plpgsql AS "
     "$$BEGIN PERFORM app.ok(NEW.v); RETURN NEW; END$$; "
     "CREATE TRIGGER tt BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION tf()", "function public.tf()",
     "function app.ok(text)"),
    # an operator of low's, called by its qualified name
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS 'SELECT (''a'' OPERATOR(app.===) ''b'')::text'; " + _WRAP,
     "function public.wrap()", "operator app.===(text,text)"),
]
_OPERATOR = ("CREATE FUNCTION app.eqx(a text, b text) RETURNS bool LANGUAGE plpgsql AS $$BEGIN INSERT INTO app.hits "
             "VALUES (current_user); RETURN true; END$$; CREATE OPERATOR app.=== (LEFTARG = text, RIGHTARG = text, "
             "FUNCTION = app.eqx)")


def _low_operator(db, low) -> None:
    db.query(f"SET ROLE {low}; {_OPERATOR}; RESET ROLE")


@pytest.mark.parametrize("made, through, reached", _WRAPPERS)
def test_the_users_own_string_bodied_wrapper_reaching_another_roles_code_is_refused(
        cli, db, sql_dir, low, made, through, reached):
    """attack23w 3: mig's own wrapper function with a string body (PostgreSQL records no pg_depend for it) in a
    DEFAULT / CHECK / trigger on mig's table called low's function: a pending plain INSERT ran low's replaced
    function as the migration user; doctor ready, exit 0. Failed before: so (a BEGIN ATOMIC wrapper was refused)."""
    _low_code(db, low)
    _low_operator(db, low)
    db.query(made)
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id, v) VALUES (1, 'A');\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and "public.t" in line and f"through {through}" in line, line
    assert f"uses {reached} (owner {low})" in line, line
    line = refusal(cli, db, sql_dir)
    assert f"through {through}" in line and f"{reached} (owner {low})" in line and "OWNER TO" in line, line
    assert db.query("SELECT * FROM t") == [] and db.query("SELECT who FROM app.hits") == []


def test_the_users_own_function_with_its_own_search_path_is_held_to_that_path(cli, db, sql_dir, low):
    """attack23w 3: an own wrapper's unqualified call resolves by its own SET search_path (proconfig), not the
    session's: a schema there that low may create in, or owns objects in, is refused as one on the session path."""
    _low_code(db, low)
    db.query("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql SET search_path = app, pg_catalog "
             "AS 'SELECT ok(''x'')::text'; " + _WRAP)
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id, v) VALUES (1, 'A');\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and "function public.wrap()" in line and "search_path" in line, line
    assert "function app.ok(text)" in line and f"owner {low}" in line, line
    line = refusal(cli, db, sql_dir)
    assert "function public.wrap()" in line and "app" in line and low in line, line
    assert db.query("SELECT * FROM t") == [] and db.query("SELECT who FROM app.hits") == []


def test_the_users_own_wrappers_views_and_trigger_functions_over_its_own_code_migrate(cli, db, sql_dir, low):
    """The control: the same shapes calling only the user's own and pg_catalog's functions migrate (an own
    function's body naming itself ends: a visited set), and low's schema app exists beside them."""
    _low_code(db, low)
    db.query("CREATE SCHEMA lib; CREATE FUNCTION lib.up(text) RETURNS text LANGUAGE sql AS 'SELECT pg_catalog.upper($1)'; "
             "CREATE FUNCTION fact(n int) RETURNS int LANGUAGE plpgsql AS "
             "$$BEGIN IF n <= 1 THEN RETURN 1; END IF; RETURN n * public.fact(n - 1); END$$; "
             "CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql SET search_path = lib, pg_catalog AS "
             "$$BEGIN EXECUTE 'SELECT 1'; RETURN lib.up('x') || up('y') || public.fact(3)::text; END$$; "
             "CREATE TABLE t (id int, v text DEFAULT wrap()); "
             "CREATE MATERIALIZED VIEW mv AS SELECT id, lib.up(v) AS n FROM t; "
             "CREATE FUNCTION tf() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.v := lib.up(NEW.v); RETURN NEW; "
             "END$$; CREATE TRIGGER tt BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION tf()")
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1); REFRESH MATERIALIZED VIEW mv;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT n FROM mv") == [("XY6",)]


def test_a_tenant_schemas_own_wrapper_reaching_another_roles_code_is_refused(cli, db, sql_dir, low):
    """The same in a tenant run: the schema's table's DEFAULT calls the user's own pb.wrap(), whose body calls low's
    app.ok(text)."""
    _low_code(db, low)
    db.query("CREATE SCHEMA pb; CREATE FUNCTION pb.wrap() RETURNS text LANGUAGE sql AS 'SELECT app.ok(''x'')::text'; "
             "CREATE TABLE pb.t (id int, v text DEFAULT pb.wrap())")
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env())
    [line] = [line for line in result.output.splitlines() if "FAILED: refusing to migrate schema pb" in line]
    assert result.exit_code == 2 and "through function pb.wrap() uses function app.ok(text)" in line, line
    assert db.query("SELECT * FROM pb.t") == [] and db.query("SELECT who FROM app.hits") == []
