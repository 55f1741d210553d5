"""attack23z 1, 2, 3: the reading of a body's search_path fails closed. An own routine made earlier (or a pending
DO / function body) setting the path by a spelling the reader did not know (`SET LOCAL SCHEMA 'app'`, set_config with
casts around its literals, `SET LOCAL "Search_Path"`, ...) counted as setting nothing: a pending call ran low's `=` as
the migration user, doctor "ready", exit 0. Now a setting is either read positively (its literal path held to the
planted rule) or counted unread, refused while the user can reach a schema others may create in or own."""

from __future__ import annotations

import pytest

from conftest import add_migration, ok
from test_planted_objects import writable_by
from test_schema_creators import doctor_line, low, plant, refusal  # noqa: F401 (low: a fixture)

_UPDATE = "UPDATE public.a SET name = 'x' WHERE name = 'y'"
# how an own routine's body sets the path to `app2, public` (attack23z 1-3 and the other spellings of the audit)
_SPELLINGS = {
    "set-schema": "SET LOCAL SCHEMA 'app2'",
    "cast-config": "PERFORM pg_catalog.set_config('search_path'::text, 'app2, public'::text, true)",
    "quoted-name": 'SET LOCAL "Search_Path" = app2, public',
    "collate": "PERFORM pg_catalog.set_config('search_path' COLLATE \"C\", 'app2, public', true)",
    "named-args": "PERFORM pg_catalog.set_config(setting_name => 'search_path', new_value => 'app2, public', "
                  "is_local => true)",
    "computed": "PERFORM pg_catalog.set_config('search_path', 'app' || '2, public', true)",
    "unicode-name": 'SET LOCAL U&"search\\005Fpath" = app2, public',
    "upper-function": "PERFORM PG_CATALOG.SET_CONFIG('SEARCH_PATH', 'app2, public', true)",
    "in-cte": "PERFORM x FROM (WITH c AS (SELECT pg_catalog.set_config('search_path', 'app2, public', true) AS x) "
              "SELECT x FROM c) s",
    "in-values": "PERFORM * FROM (VALUES (pg_catalog.set_config('search_path', 'app2, public', true))) v",
    "truncating-cast": "PERFORM pg_catalog.set_config('search_path', 'public, app2x'::varchar(12), true)",
    "pg-settings": "UPDATE pg_catalog.pg_settings SET setting = 'app2, public' WHERE name = 'search_path'",
    "built-execute": "EXECUTE 'SET LOCAL search_' || 'path = app2, public'",
}
_FIX = ("CREATE FUNCTION fix() RETURNS void LANGUAGE plpgsql AS $$BEGIN {set}; " + _UPDATE
        + "; SET LOCAL SCHEMA 'public'; END$$")
_TRIGGER = ("CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN {set}; IF NEW.name = 'y'::varchar "
            "THEN NEW.name := 'z'; END IF; SET LOCAL SCHEMA 'public'; RETURN NEW; END$$; "
            "CREATE TRIGGER a_trg BEFORE INSERT ON a FOR EACH ROW EXECUTE FUNCTION trg()")


def _made(db, low, made: str) -> None:
    """`made` while schema app2 is the user's own and empty; then low may create there and plants `=`."""
    db.query("CREATE SCHEMA app2; CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y'); " + made)
    writable_by(db, "app2", low)
    plant(db, "app2", low)


@pytest.mark.parametrize("spelling", list(_SPELLINGS))
@pytest.mark.parametrize("form", ["call", "trigger", "util-trigger"])
def test_an_own_routine_setting_the_path_by_any_spelling_is_refused(cli, db, sql_dir, low, spelling, form):
    """attack23z 1 (set-schema), 2 (cast-config), 3 (quoted-name) and the audit's other spellings: failed before
    (doctor ready, exit 0, low's `=` ran as the migration user; the SET-clause-free trigger forms too; util-trigger: a
    trigger's function in a schema the connect check does not read as such, reached from the table: cast-config
    failed before this fix's reading of what the tables' implicit code reaches)."""
    setting = _SPELLINGS[spelling]
    made = (_FIX if form == "call" else _TRIGGER).format(set=setting)
    if form == "util-trigger":
        made = "CREATE SCHEMA util; " + made.replace("FUNCTION trg()", "FUNCTION util.trg()")
    _made(db, low, made)
    add_migration(sql_dir, "0002_data", "SELECT public.fix();\n" if form == "call" else "INSERT INTO a VALUES (2, 'y');\n")
    line = doctor_line(cli, db, sql_dir)
    routine = {"call": "public.fix()", "trigger": "public.trg()", "util-trigger": "util.trg()"}[form]
    assert line.startswith("FAIL") and routine in line and "app2" in line and low in line, line
    line = refusal(cli, db, sql_dir)
    assert routine in line and "app2" in line, line
    assert db.query("SELECT who FROM app2.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


def test_own_routines_setting_paths_of_the_users_own_schemas_by_any_spelling_migrate(cli, db, sql_dir, low):
    """The control: the same spellings naming the user's own schema lib (read positively, held, clean), while low
    may create in app2, which none names."""
    # (unicode-name: a U& escape may spell standard_conforming_strings too, so body_lexing refuses it, fail closed)
    literal = [name for name in _SPELLINGS if name not in ("computed", "built-execute", "collate", "named-args",
                                                             "pg-settings", "truncating-cast", "unicode-name")]
    made = "; ".join(_FIX.replace("fix()", f"f{i}()").format(set=_SPELLINGS[name].replace("app2", "lib"))
                     for i, name in enumerate(literal))
    _made(db, low, "CREATE SCHEMA lib; " + made)
    add_migration(sql_dir, "0002_data", "".join(f"SELECT public.f{i}();\n" for i in range(len(literal))))
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("ok"), line
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT name FROM a") == [("x",)] and db.query("SELECT who FROM app2.hits") == []


_PENDING = {  # (a pending file setting the path to app2 by a route the reader of pending bodies missed)
    # a cast that cuts: 'public, app2x' read, the server sets 'public, app2'
    "truncating-cast": "DO $$BEGIN PERFORM pg_catalog.set_config('search_path', 'public, app2x'::varchar(12), true); "
                       f"{_UPDATE}; PERFORM pg_catalog.set_config('search_path', 'public', true); END$$;",
    # a DO block inside a LANGUAGE sql body, not at its start: the body was not parsed at all
    "sql-body-do": "CREATE FUNCTION public.g() RETURNS void LANGUAGE sql AS $b$SELECT 1; DO $d$BEGIN EXECUTE "
                   f"'SET LOCAL search_' || 'path = app2, public'; {_UPDATE}; END$d$$b$;\nSELECT public.g();",
}


@pytest.mark.parametrize("variant", list(_PENDING))
def test_a_pending_body_setting_the_path_by_a_route_not_read_is_refused(cli, db, sql_dir, low, variant):
    """attack23z's audit, the pending side (body_paths.read): failed before (exit 0, low's `=` ran as the migration
    user): the cast was read through, the sql body's DO never parsed."""
    _made(db, low, "")
    add_migration(sql_dir, "0002_data", _PENDING[variant] + "\n")
    line = refusal(cli, db, sql_dir)
    assert "0002_data.sql:1" in line and "cannot be read before the run" in line and "app2" in line, line
    assert db.query("SELECT who FROM app2.hits") == [] and db.query("SELECT name FROM a") == [("y",)]
