"""attack23y 5 and 1: the migration user's own functions, read at the connect check, are held to the planted rule by
every schema-qualified reference in their bodies (types, domains, relations, a literal EXECUTE; a body that cannot be
read is refused) and by every literal search_path they set (their SET clause, SET / set_config in the body)."""

from __future__ import annotations

import pytest

from conftest import add_migration, ok
from test_attack23u_reach import _low_code
from test_schema_creators import doctor_line, low, plant, refusal  # noqa: F401 (low: a fixture)
from test_planted_objects import writable_by

_WRAP = "CREATE TABLE t (id int, v text DEFAULT wrap())"
_REACHED = [  # (the user's objects, the pending file's INSERT reaches low's code through this, which is named)
    # a cast to low's domain, whose CHECK calls low's function
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS 'SELECT (''x''::app.d)::text'; " + _WRAP, "domain app.d"),
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$BEGIN RETURN CAST('x' AS app.d)::text; END$$; "
     + _WRAP, "domain app.d"),
    # a read of low's view, whose query calls low's function as the reader
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS 'SELECT n::text FROM app.v LIMIT 1'; " + _WRAP,
     "view app.v"),
    # an EXECUTE of a constant string
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$DECLARE r text; BEGIN "
     "EXECUTE 'SELECT app.ok(''x'')::text' INTO r; RETURN r; END$$; " + _WRAP, "function app.ok(text)"),
    # a VARIADIC signature (pglast's plpgsql parser refuses it as written): read all the same
    ("CREATE FUNCTION wrap(VARIADIC k text[]) RETURNS text LANGUAGE plpgsql AS $$BEGIN RETURN app.ok('x')::text; "
     "END$$; CREATE TABLE t (id int, v text DEFAULT wrap('a'))", "function app.ok(text)"),
    # a DECLARE of low's domain (pglast's plpgsql parser looks up public's and pg_catalog's types only), with a
    # default calling low's function, and a variable of a type of low's table's column
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$DECLARE r app.d; BEGIN r := 'x'; RETURN r; END$$; "
     + _WRAP, "domain app.d"),
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$DECLARE q text; r text := app.ok('x')::text; "
     "BEGIN RETURN r; END$$; " + _WRAP, "function app.ok(text)"),
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$DECLARE r app.hits.who%TYPE; BEGIN RETURN 'x'; "
     "END$$; " + _WRAP, "table app.hits"),
    # a body the parser here cannot read: what it reaches is unknown, refused as such
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$DECLARE r app.hits.who%TYPE[]; BEGIN "
     "RETURN app.ok('x')::text; END$$; " + _WRAP, "cannot be read"),
    # an assignment's target is read too: its subscript runs low's function (fix23as's reader, shared)
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$DECLARE a int[] := '{0}'; BEGIN "
     "a[pg_catalog.length(app.ok('x')::text)] := 1; RETURN 'x'; END$$; " + _WRAP, "function app.ok(text)"),
    # `#option dump` is never given to the parser (it would print the compiled body on the runner's stdout)
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$#option dump\nBEGIN RETURN app.ok('x')::text; "
     "END$$; " + _WRAP, "cannot be read"),
    # the user's own domain whose CHECK calls low's function
    ("CREATE DOMAIN mine AS text CHECK (app.ok(VALUE)); CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS "
     "'SELECT (''x''::public.mine)::text'; " + _WRAP, "function app.ok(text)"),
]


def _low_domain_and_view(db, low) -> None:
    _low_code(db, low)
    db.query(f"SET ROLE {low}; CREATE DOMAIN app.d AS text CHECK (app.ok(VALUE)); "
             "CREATE VIEW app.v AS SELECT app.ok('A') AS n; GRANT SELECT ON app.v TO PUBLIC; RESET ROLE")


@pytest.mark.parametrize("made, named", _REACHED)
def test_an_own_wrapper_reaching_another_roles_code_by_a_type_relation_or_execute_is_refused(
        cli, db, sql_dir, low, made, named):
    """attack23y 5: mig's own string-bodied DEFAULT wrapper casting to low's domain, reading low's view, EXECUTing a
    constant string, or with a body pglast could not parse ran low's function as mig on a pending plain INSERT;
    doctor ready, exit 0. Failed before: so."""
    _low_domain_and_view(db, low)
    db.query(made)
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and "public.t" in line and "function public.wrap(" in line, line
    assert named in line, line
    line = refusal(cli, db, sql_dir)
    assert "function public.wrap(" in line and named in line, line
    assert db.query("SELECT * FROM t") == [] and db.query("SELECT who FROM app.hits") == []


def test_own_wrappers_naming_the_users_own_types_and_views_migrate(cli, db, sql_dir, low):
    """The control: casts to the user's own domain, reads of its own view, a literal EXECUTE of its own code."""
    _low_domain_and_view(db, low)
    db.query("CREATE SCHEMA lib; CREATE DOMAIN lib.d AS text CHECK (pg_catalog.length(VALUE) > 0); "
             "CREATE VIEW lib.v AS SELECT pg_catalog.upper('a') AS n; "
             "CREATE FUNCTION lib.w2() RETURNS text LANGUAGE sql AS 'SELECT (''x''::lib.d)::text || n FROM lib.v'; "
             "CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $$DECLARE r text; d lib.d := 'y'; BEGIN "
             "EXECUTE 'SELECT lib.w2()' INTO r; RETURN r; END$$; " + _WRAP)
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT v FROM t") == [("xA",)]


_SETS_PATH = [  # (the user's routine, made while schema app2 was its own and empty; the pending file)
    ("CREATE FUNCTION fix() RETURNS void LANGUAGE plpgsql SET search_path = app2, public AS "
     "$$BEGIN UPDATE public.a SET name = 'x' WHERE name = 'y'; END$$", "SELECT public.fix();"),
    ("CREATE PROCEDURE fix() LANGUAGE plpgsql SET search_path = app2, public AS "
     "$$BEGIN UPDATE public.a SET name = 'x' WHERE name = 'y'; END$$", "CALL public.fix();"),
    ("CREATE FUNCTION fix() RETURNS void LANGUAGE plpgsql AS $$BEGIN SET LOCAL search_path = app2, public; "
     "UPDATE public.a SET name = 'x' WHERE name = 'y'; SET LOCAL search_path = public; END$$", "SELECT public.fix();"),
    ("CREATE FUNCTION fix() RETURNS void LANGUAGE plpgsql AS $$BEGIN "
     "PERFORM pg_catalog.set_config('search_path', 'app2, public', true); "
     "UPDATE public.a SET name = 'x' WHERE name = 'y'; END$$", "SELECT public.fix();"),
    ("CREATE FUNCTION fix() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN SET LOCAL search_path = app2, public; "
     "IF NEW.name = 'y'::varchar THEN NEW.name := 'z'; END IF; SET LOCAL search_path = public; RETURN NEW; END$$; "
     "CREATE TRIGGER a_trg BEFORE INSERT ON a FOR EACH ROW EXECUTE FUNCTION fix()", "INSERT INTO a VALUES (2, 'y');"),
]


@pytest.mark.parametrize("made, pending", _SETS_PATH)
def test_an_own_routine_setting_a_path_others_may_create_in_is_refused(cli, db, sql_dir, low, made, pending):
    """attack23y 1: mig's own routine made earlier sets the path (its SET clause, SET LOCAL or a literal set_config in
    its body) to a schema low may now create in; a pending call of it (or a write firing it as a trigger) ran low's `=`
    as mig: doctor ready, exit 0. Failed before: so (only a trigger's SET clause was refused)."""
    db.query("CREATE SCHEMA app2; CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y'); " + made)
    path_refused(cli, db, sql_dir, low, pending)


def path_refused(cli, db, sql_dir, low, pending: str) -> None:
    """low may now create in app2 and plants `=` there: `pending` (calling public.fix(), which sets a path naming app2)
    is refused by doctor and migrate, and nothing of low's ran."""
    writable_by(db, "app2", low)
    plant(db, "app2", low)
    add_migration(sql_dir, "0002_data", pending + "\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and "public.fix()" in line and "app2" in line and low in line, line
    line = refusal(cli, db, sql_dir)
    assert "public.fix()" in line and "app2" in line, line
    assert db.query("SELECT who FROM app2.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


def test_own_routines_setting_paths_of_the_users_own_schemas_migrate(cli, db, sql_dir, low):
    """The control: literal paths over the user's own schemas and pg_catalog / pg_temp, while low may create in
    schema app2, which none of them names. (A computed set_config is refused since attack23z: the reading fails
    closed, test_attack23z_path_reading.)"""
    db.query("CREATE SCHEMA lib; CREATE SCHEMA app2; CREATE TABLE a (id int, name varchar(20)); "
             "INSERT INTO a VALUES (1, 'y'); "
             "CREATE FUNCTION f1() RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS 'SELECT 1'; "
             "CREATE FUNCTION f0() RETURNS void LANGUAGE sql SET search_path = '' AS 'SELECT 1'; "
             "CREATE FUNCTION f2() RETURNS void LANGUAGE plpgsql SET search_path = lib, public AS $$BEGIN "
             "SET LOCAL search_path = \"$user\", public; PERFORM pg_catalog.set_config('search_path', 'lib', true); "
             "UPDATE public.a SET name = 'x' WHERE name = 'y'; END$$")
    writable_by(db, "app2", low)
    plant(db, "app2", low)
    # (no path above names a schema that is not there, which a right to CREATE on the database could make)
    db.query(f"CREATE SCHEMA IF NOT EXISTS \"$user\"".replace("$user", db.query("SELECT current_user")[0][0])
             + f"; GRANT CREATE ON DATABASE {db.name} TO {low}")
    add_migration(sql_dir, "0002_data", "SELECT public.f1(); SELECT public.f2();\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("ok"), line
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT name FROM a") == [("x",)]
