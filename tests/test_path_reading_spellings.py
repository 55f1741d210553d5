"""The reading of a stored body's search_path fails closed, checked against the server (attack23z 1-3): generated
spellings of SET / SET SCHEMA / set_config (names, casts, COLLATE, quoting, U&, named arguments, CTE / VALUES /
subquery / FROM, EXECUTE) in LANGUAGE sql and plpgsql routines, each created and called on a real PostgreSQL; the
schemas the call leaves on the path (current_schemas, returned at its end: the server's own splitting, folding and
cutting of names) must be either read positively (own_paths.read: each among the schemas the body names) or the body
counted unread, never read as setting nothing. The same for the pending files' reader (body_paths.read of the
CREATE FUNCTION statement that made it)."""

from __future__ import annotations

import itertools
import random
import re

from migrator import body_paths, own_paths

_LONG = "zz_" + "l" * 70  # (cut to 63 bytes by the server)
_TARGETS = ["zz_app", "ZZ_APP", "\u00a0zz_app", _LONG[:63]]  # (the schemas made: what a path may reach)

_NAMES = ["search_path", "SEARCH_PATH", '"search_path"', '"Search_Path"', 'U&"search\\005Fpath"',
          'U&"\\0073earch_path"', "search_path/**/"]
_VALUES = ["zz_app", "'zz_app'", '"zz_app"', "zz_app, public", "'zz_app', public", "E'zz\\137app'", "$v$zz_app$v$",
           "U&'zz\\005Fapp'", "\"ZZ_APP\"", "ZZ_APP", '"\u00a0zz_app"', _LONG, "'public,\u00a0zz_app'"]
_SETS = ([f"SET {scope}{name} {op} {value}" for scope, name, op, value in
          itertools.product(("", "LOCAL ", "SESSION "), _NAMES, ("=", "TO"), _VALUES)]
         + [f"SET {scope}SCHEMA {value}" for scope in ("", "LOCAL ") for value in
            ("'zz_app'", "E'zz\\137app'", "$v$zz_app$v$", "U&'zz\\005Fapp'")])
_FUNCTIONS = ["set_config", "SET_CONFIG", "pg_catalog.set_config", '"set_config"', 'pg_catalog."set_config"',
              'U&"set\\005Fconfig"', "PG_CATALOG.Set_Config"]
_SETTING_ARGS = ["'search_path'", "'SEARCH_PATH'", "'search_path'::text", "CAST('search_path' AS varchar)",
                 "'search_path' COLLATE \"C\"", "('search_path')", "E'search\\137path'", "'search_' || 'path'",
                 "$n$search_path$n$", "pg_catalog.lower('SEARCH_PATH')", "'search_path'::name",
                 "'search_pathxx'::varchar(11)", "text 'search_path'", "U&'search\\005Fpath'"]
_VALUE_ARGS = ["'zz_app, public'", "'zz_app'::text", "'public, zz_appx'::varchar(14)", "'zz_' || 'app'",
               "pg_catalog.concat('zz_app', '')", "'\"zz_app\"'", "(SELECT 'zz_app')", "'zz_app' COLLATE \"C\"",
               "U&'zz\\005Fapp'", "'ZZ_APP'", "CAST('zz_app' AS pg_catalog.text)", "'zz_app'::pg_catalog.bpchar",
               "'public,\u00a0zz_app'", "U&'public,\\00A0zz_app'", "E'public,zz\\013app'", "'\"ZZ_APP\"'", f"'{_LONG}'",
               "'public, \"zz_app'"]
_SQL_CONTEXTS = ["SELECT {c}", "SELECT * FROM {c}", "WITH w AS (SELECT {c} AS x) SELECT x FROM w",
                 "SELECT * FROM (VALUES ({c})) v", "SELECT (SELECT {c})", "SELECT 1 WHERE {c} IS NOT NULL"]
_PLPGSQL_CONTEXTS = ["PERFORM {c}", "x := {c}", "SELECT {c} INTO x", "x := (SELECT {c})",
                     "EXECUTE $e$SELECT {c}$e$", "EXECUTE 'SELECT ' || $e${c}$e$", "IF {c} IS NOT NULL THEN NULL; END IF",
                     "RAISE DEBUG '%', {c}", "ASSERT {c} IS NOT NULL", "FOR x IN SELECT {c} LOOP NULL; END LOOP",
                     "CASE WHEN {c} IS NULL THEN NULL; ELSE NULL; END CASE", "EXECUTE 'SELECT $1' USING {c}",
                     "DO $d$BEGIN PERFORM {c}; END$d$"]
_OTHER = ["PERFORM pg_catalog.set_config(setting_name => 'search_path', new_value => 'zz_app', is_local => false)",
          "UPDATE pg_catalog.pg_settings SET setting = 'zz_app' WHERE name = 'search_path'",
          "EXECUTE 'SET search_' || 'path = zz_app'", "EXECUTE format('SET %I = zz_app', 'search_path')",
          "EXECUTE 'SET SCHEMA ''zz_app'''", "EXECUTE 'SET search_path = zz_app'::text",
          "EXECUTE 'SET search_path = zz_app' COLLATE \"C\"",
          "DO $d$BEGIN PERFORM pg_catalog.set_config('search' || '_path', 'zz_app', false); END$d$"]


def _bodies(count: int) -> list[tuple[str, str]]:
    """(language, statement) spellings: every SET, and a seeded sample of the set_config products (each part used)."""
    calls = [f"{f}({n}, {v}, false)" for f, n, v in itertools.product(_FUNCTIONS, _SETTING_ARGS, _VALUE_ARGS)]
    sample = random.Random(23).sample(calls, count)
    sample += [f"{f}({n}, {v}, false)" for f, n, v in zip(itertools.cycle(_FUNCTIONS), _SETTING_ARGS * 2, _VALUE_ARGS * 2)]
    found = [("sql", s) for s in _SETS[::2]] + [("plpgsql", s) for s in _SETS[1::2]]
    for i, call in enumerate(sample):
        found.append(("sql", _SQL_CONTEXTS[i % len(_SQL_CONTEXTS)].format(c=call)))
        found.append(("plpgsql", _PLPGSQL_CONTEXTS[i % len(_PLPGSQL_CONTEXTS)].format(c=call)))
    return found + [("plpgsql", s) for s in _OTHER]


def _definition(name: str, language: str, statement: str) -> str:
    if language == "sql":
        return (f"CREATE FUNCTION public.{name}() RETURNS text[] LANGUAGE sql AS $b${statement}; "
                "SELECT CAST(pg_catalog.current_schemas(false) AS text[])$b$")
    return (f"CREATE FUNCTION public.{name}() RETURNS text[] LANGUAGE plpgsql AS $b$DECLARE x text; BEGIN {statement}; "
            "RETURN CAST(pg_catalog.current_schemas(false) AS text[]); END$b$")


class _Backend:
    """own_paths' backend.execute over one psycopg2 session (:name parameters)."""

    def __init__(self, connection):
        self.connection = connection

    def execute(self, sql: str, params=None):
        cursor = self.connection.cursor()
        cursor.execute(re.sub(r"(?<![:\w]):(s|names|roots)\b", r"%(\1)s", sql), params)
        return cursor


def test_every_generated_spelling_is_read_or_unread_as_the_server_sets_it(db):
    for target in _TARGETS:
        db.query('CREATE SCHEMA "{}"'.format(target.replace('"', '""')))
    bodies = _bodies(260)
    with db.server.connect(db.name) as connection:
        connection.autocommit = True
        start = db.query("SELECT CAST(pg_catalog.current_schemas(false) AS text[])")[0][0]
        made: dict[str, tuple[str, str]] = {}
        with connection.cursor() as cursor:
            for i, (language, statement) in enumerate(bodies):
                try:
                    cursor.execute(_definition(f"f{i}", language, statement))
                    made[f"f{i}"] = (language, statement)
                except Exception:  # (a spelling the server refuses at CREATE sets nothing)
                    pass
            results = {}
            for name in made:
                try:
                    cursor.execute(f"SELECT public.{name}()")
                    results[name] = cursor.fetchone()[0]
                except Exception:
                    pass
                cursor.execute("RESET search_path")
        read = {what.split()[1].removesuffix("()"): (schemas, unread)
                for what, _, schemas, unread in own_paths.read(_Backend(connection), "public")}
    setting = {name: path for name, path in results.items() if set(path) - set(start)}
    assert len(setting) > 400 and {s for path in setting.values() for s in path} >= set(_TARGETS), len(setting)  # (most spellings do set the path)
    missed = [(made[name], path, read.get(name)) for name, path in setting.items()
              if name not in read or not read[name][1] and set(path) - set(start) - set(read[name][0])]
    assert not missed, missed[:5]
    pending = {name: body_paths.read(_definition(name, *made[name])) for name in setting}
    missed = [(made[name], path, pending[name]) for name, path in setting.items()
              if not pending[name].unread and set(path) - set(start) - set(pending[name].schemas)]
    assert not missed, missed[:5]
    positive = [name for name in setting if name in read and not read[name][1]]
    assert len(positive) > 200, len(positive)  # (the plain spellings are read, not merely refused)
