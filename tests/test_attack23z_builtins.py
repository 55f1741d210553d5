"""attack23z 10 and 11.

10: built-ins that run a query string (ts_stat, ts_rewrite, query_to_xml and friends) are an EXECUTE: a pending DO
block set the path through ts_stat unseen by body_paths, and an own DEFAULT wrapper called low's function through one
unseen by planted_bodies; exit 0 both. Now a constant query there is read as SQL, any other argument is unread.
11: a DEFAULT (CHECK, index expression, ...) on the runner's own lock table calling low's function ran as the migration
user in the run's first write (the lock row), before the refusal. Now the bookkeeping tables' implicit code is
verified before any bookkeeping row is written."""

from __future__ import annotations

import base64

import pytest

from conftest import add_migration, ok
from test_attack23u_reach import _low_code, _planted_app
from test_attack23w_body_paths import _UPDATE, _refused
from test_attack23y_own_code import (  # (not collected again here: a name not starting with test_)
    test_an_own_wrapper_reaching_another_roles_code_by_a_type_relation_or_execute_is_refused as _own_wrapper_refused)
from test_schema_creators import doctor_line, low, refusal  # noqa: F401 (low: a fixture)

_SET = "pg_catalog.set_config(''search_path'', ''app, public'', true)"
_HIDDEN = base64.b64encode(b"SELECT pg_catalog.to_tsvector(pg_catalog.set_config('search_path', 'app, public', "
                           b"false))").decode()
_PENDING = {
    "tsstat": f"PERFORM * FROM pg_catalog.ts_stat('SELECT pg_catalog.to_tsvector({_SET})');",
    "tsstat2": f"PERFORM * FROM ts_stat('SELECT pg_catalog.to_tsvector({_SET})', 'a');",
    "tsrewrite": f"PERFORM pg_catalog.ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, "
                 f"pg_catalog.plainto_tsquery({_SET})');",
    "qxml": f"PERFORM pg_catalog.query_to_xml('SELECT {_SET}', false, false, '');",
    "qxmlschema": f"PERFORM pg_catalog.query_to_xml_and_xmlschema('SELECT {_SET}', false, false, '');",
    # a query built at run time: unread
    "built": "PERFORM * FROM pg_catalog.ts_stat(pg_catalog.convert_from(pg_catalog.decode("
             f"'{_HIDDEN}', 'base64'), 'UTF8'));",
}
_BUILT = ("built",)


@pytest.mark.parametrize("variant", list(_PENDING))
def test_a_path_set_through_a_builtin_running_a_query_is_refused_before_the_run(cli, db, sql_dir, low, variant):
    """Failed before (tsstat: exit 0, low's `=` ran as the migration user; the others alike, or failed at run time
    only after the runner let them run: query_to_xml without libxml)."""
    _planted_app(cli, db, sql_dir, low)
    add_migration(sql_dir, "0003_data", f"DO $$BEGIN {_PENDING[variant]} {_UPDATE} "
                  "PERFORM pg_catalog.set_config('search_path', 'public', true); END$$;\n")
    line = _refused(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()), low, "concat" if variant in _BUILT else "")
    assert variant not in _BUILT or "ts_stat" in line, line
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


def test_a_top_level_builtin_with_a_built_query_is_read_as_unread(cli, db, sql_dir, low):
    """A statement spelling neither search_path nor set_config nor a body: its ts_stat query is still not read as
    nothing (failed before: the statement was not even parsed, and its path stayed set for the UPDATE)."""
    _planted_app(cli, db, sql_dir, low)
    add_migration(sql_dir, "0003_data", "SELECT count(*) FROM pg_catalog.ts_stat(pg_catalog.convert_from("
                  f"pg_catalog.decode('{_HIDDEN}', 'base64'), 'UTF8'));\n{_UPDATE}\n")
    line = _refused(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()), low, "concat")
    assert "ts_stat" in line, line
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


_WRAP = "CREATE TABLE t (id int, v text DEFAULT wrap())"
_OWN = [  # (the user's own DEFAULT wrapper, which calls low's code through a built-in running a query; named)
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS $f$ SELECT (SELECT word FROM pg_catalog.ts_stat("
     "'SELECT pg_catalog.to_tsvector(app.ok(''x'')::text)') LIMIT 1) $f$; " + _WRAP, "function app.ok(text)"),
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $f$BEGIN RETURN pg_catalog.query_to_xml("
     "'SELECT app.ok(''x'')', false, false, '')::text; END$f$; " + _WRAP, "function app.ok(text)"),
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS $f$ SELECT pg_catalog.ts_rewrite('a'::tsquery, "
     "'SELECT ''a''::tsquery, pg_catalog.plainto_tsquery(app.ok(''x'')::text)')::text $f$; " + _WRAP,
     "function app.ok(text)"),
    # a relation read whole: low's view runs its function
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS $f$ SELECT pg_catalog.table_to_xml('app.v', false, "
     "false, '')::text $f$; " + _WRAP, "view app.v"),
    # what cannot be read: a built query, a cursor's, a schema's tables
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS $f$ SELECT (SELECT word FROM pg_catalog.ts_stat("
     "pg_catalog.concat('SELECT pg_catalog.to_tsvector(app.', 'ok(''x'')::text)')) LIMIT 1) $f$; " + _WRAP,
     "cannot be read"),
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS $f$ SELECT pg_catalog.schema_to_xml('app', false, "
     "false, '')::text $f$; " + _WRAP, "cannot be read"),
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $f$DECLARE c refcursor := 'c'; BEGIN "
     "RETURN pg_catalog.cursor_to_xml(c, 1, false, false, '')::text; END$f$; " + _WRAP, "cannot be read"),
]


@pytest.mark.parametrize("made, named", _OWN)
def test_an_own_wrapper_reaching_another_roles_code_through_a_query_builtin_is_refused(cli, db, sql_dir, low, made,
                                                                                         named):
    """Failed before (ts_stat): doctor ready, a pending plain INSERT ran low's function as the migration user. (The
    same steps as attack23y 5's: low's app.ok, domain app.d, view app.v calling app.ok.)"""
    _own_wrapper_refused(cli, db, sql_dir, low, made, named)


def test_an_own_wrapper_using_ts_stat_over_the_users_own_table_migrates(cli, db, sql_dir, low):
    """The control: ts_stat over the user's own table, its constant query read and found the user's own."""
    _low_code(db, low)
    db.query("CREATE TABLE docs (body text); INSERT INTO docs VALUES ('alpha'); "
             "CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS $f$ SELECT (SELECT word FROM pg_catalog.ts_stat("
             "'SELECT pg_catalog.to_tsvector(body) FROM public.docs') LIMIT 1) $f$; " + _WRAP)
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT v FROM t") == [("alpha",)]


_LOCK_CODE = [  # (what an applied migration added to the runner's lock table; the part named)
    ("ALTER TABLE public.yoyo_lock ALTER COLUMN runner SET DEFAULT (app.ok('x'))::text",
     "default value for column runner"),
    ("ALTER TABLE public.yoyo_lock ADD CHECK (app.ok(runner))", "constraint yoyo_lock_runner_check"),
    ("CREATE INDEX yoyo_lock_x ON public.yoyo_lock ((app.imm(runner)))", "index public.yoyo_lock_x"),
    ("CREATE DOMAIN lk AS text CHECK (app.ok(VALUE)); ALTER TABLE public.yoyo_lock ADD COLUMN k lk DEFAULT 'k'",
     "column k"),
]


@pytest.mark.parametrize("made, part", _LOCK_CODE)
def test_implicit_code_on_the_bookkeeping_is_refused_before_the_first_write(cli, db, sql_dir, low, made, part):
    """attack23z 11. Failed before (the DEFAULT): migrate refused (exit 2) but only after its lock row's INSERT had
    run low's function as the migration user."""
    _low_code(db, low)
    add_migration(sql_dir, "0002_t", "CREATE TABLE t (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query(made)
    db.query("DELETE FROM app.hits")
    add_migration(sql_dir, "0003_seed", "INSERT INTO t (id) VALUES (1);\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    [line] = [x for x in result.output.splitlines() if "refusing" in x] or [result.output]
    assert "yoyo_lock" in line and part in line and ("app.ok(text)" in line or "app.imm(text)" in line
                                                     or "lk" in line), line
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT * FROM t") == []
    result = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env())
    [line] = [x for x in result.stdout.splitlines() if "postgres bookkeeping" in x] or [result.stdout]
    assert line.startswith("FAIL") and "yoyo_lock" in line and part in line, line
    assert db.query("SELECT who FROM app.hits") == []


def test_the_builtins_read_as_executes_are_the_servers_own(db):
    """Each core name and argument count query_builtins reads is a pg_catalog function of the server (a rename or a
    new form shows here), and no other pg_catalog function runs one of their C entry points."""
    from migrator import query_builtins

    core = [name for name in query_builtins.NAMES if name.endswith(("xml", "xmlschema")) or name.startswith("ts_")]
    rows = db.query("SELECT proname::text, pronargs, prosrc FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace "
                    "AND proname = ANY(%s)", (core,))
    assert {name for name, _, _ in rows} == set(core), rows
    forms = {(name, count) for name, count, _ in rows}
    for name, counts in {**query_builtins._QUERIES, **query_builtins._TABLES}.items():
        assert {(name, count) for count in counts} <= forms, (name, forms)
    entry = {src for name, count, src in rows if name != "ts_rewrite" or count == 2}
    others = db.query("SELECT proname::text FROM pg_proc WHERE prosrc = ANY(%s) AND NOT proname = ANY(%s)",
                      (sorted(entry), core))
    assert others == [], others
