"""attack23z 4, 5, 6: the bodies of the routines the runner trusts as the migration user are read as the server reads
them (their own SET standard_conforming_strings), at any depth (past the reader's limit: refused, never "ready"), for
every role the user is (a group role it is a member of owns the common layout's objects)."""

from __future__ import annotations

import pytest

from conftest import add_migration, ok
from test_attack23u_reach import _low_code
from test_attack23y_own_code import path_refused
from test_schema_creators import doctor_line, low, plant, refusal  # noqa: F401 (low: a fixture)
from test_planted_objects import login_role, writable_by

_WRAP = "CREATE TABLE t (id int, v text DEFAULT wrap())"
# (to the server, with the setting off, 'a\' || ' is one literal and app.ok runs; pglast reads two literals)


def _refused(cli, db, sql_dir, *named: str) -> None:
    """A pending plain INSERT into t: doctor FAILs and migrate refuses (exit 2) naming all of `named`; nothing ran."""
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and all(n in line for n in named), line
    line = refusal(cli, db, sql_dir)
    assert all(n in line for n in named), line
    assert db.query("SELECT * FROM t") == [] and db.query("SELECT who FROM app.hits") == []


_HIDDEN = [
    "CREATE FUNCTION wrap() RETURNS text LANGUAGE sql SET standard_conforming_strings = off AS "
    "$f$SELECT 'a\\' || ' || app.ok(pg_catalog.version())::text --'$f$; " + _WRAP,
    "CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql SET standard_conforming_strings = off AS "
    "$f$BEGIN RETURN 'a\\' || ' || app.ok(pg_catalog.version())::text --'\n; END$f$; " + _WRAP,
]
_SAID = ["standard_conforming_strings = off"] * 2


@pytest.mark.parametrize("made, said", [*zip(_HIDDEN, _SAID), (  # (a body turning it off for the body it calls next)
    "CREATE FUNCTION w2() RETURNS text LANGUAGE sql AS $f$SELECT 'a\\' || ' || app.ok(pg_catalog.version())::text "
    "--'$f$; CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $f$BEGIN SET LOCAL standard_conforming_strings "
    "= off; RETURN public.w2(); END$f$; " + _WRAP, "names standard_conforming_strings")])
def test_an_own_body_read_otherwise_under_its_own_conforming_strings_setting_is_refused(
        cli, db, sql_dir, low, made, said):
    """attack23z 4: mig's own DEFAULT wrapper with `SET standard_conforming_strings = off` (or turning it off before
    it calls another own function, parsed then): the server calls low's function where the reader saw a literal; a
    pending plain INSERT ran it as mig, doctor ready, exit 0. Failed before: so."""
    _low_code(db, low)
    db.query(made)
    _refused(cli, db, sql_dir, "function public.wrap()", said)


def test_own_bodies_read_alike_either_way_migrate(cli, db, sql_dir, low):
    """The control: a SET clause keeping the setting on, a backslash inside E'...' (and a regex in a plain literal
    without a SET clause: read as the run's session, which has it on)."""
    _low_code(db, low)
    db.query("CREATE FUNCTION w2() RETURNS text LANGUAGE sql AS $f$SELECT pg_catalog.regexp_replace('a b', '\\s', "
             "'')$f$; CREATE FUNCTION wrap() RETURNS text LANGUAGE sql SET standard_conforming_strings = on "
             "AS $f$SELECT 'a\\' || E'\\\\' || public.w2()$f$; " + _WRAP)
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    assert doctor_line(cli, db, sql_dir).startswith("ok")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT v FROM t") == [("a\\\\ab",)]


_PENDING = [  # (a pending file making and using a routine read otherwise under its own setting)
    _HIDDEN[0] + ";\nINSERT INTO t (id) VALUES (1);\n",
    "CREATE FUNCTION public.fix() RETURNS void LANGUAGE sql SET standard_conforming_strings = off AS $f$\n"
    "SELECT 'a\\' || ' || pg_catalog.set_config($q$search_path$q$, $q$app2, public$q$, true); --';\n"
    "UPDATE public.a SET name = 'x' WHERE name = 'y';\n"
    "SELECT pg_catalog.set_config('search_path', 'public', true);\n$f$;\nSELECT public.fix();\n",
    "ALTER FUNCTION wrap2() SET standard_conforming_strings = off;\nINSERT INTO t2 (id) VALUES (1);\n",
    "SET standard_conforming_strings = off;\nINSERT INTO t2 (id) VALUES (1);\n",
]


@pytest.mark.parametrize("pending", _PENDING)
def test_a_pending_routine_read_otherwise_under_its_own_setting_is_refused(cli, db, sql_dir, low, pending):
    """attack23z 4 (and 4b): a pending file's routine with `SET standard_conforming_strings = off` hid a call of low's
    function (or a set_config of a path low may create in) in what the checks read as a literal: migrate exit 0, low's
    code ran as mig. Failed before: so. (An ALTER FUNCTION or the file's SET turning it off for an applied body, which
    the server parses when the INSERT calls it: the same.)"""
    _low_code(db, low)
    db.query("CREATE SCHEMA app2; CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y'); "
             "CREATE FUNCTION wrap2() RETURNS text LANGUAGE sql AS $f$SELECT 'a\\' || ' || app.ok(pg_catalog.version())::text --'$f$; "
             "CREATE TABLE t2 (id int, v text DEFAULT wrap2())")
    writable_by(db, "app2", low)
    plant(db, "app2", low)
    add_migration(sql_dir, "0002_data", pending)
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2, result.output
    assert "standard_conforming_strings" in result.output and "0002_data.sql" in result.output, result.output
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT who FROM app2.hits") == []
    assert db.query("SELECT name FROM a") == [("y",)] and db.query("SELECT * FROM t2") == []


def _chain(n: int, last: str) -> str:
    made = [f"CREATE FUNCTION w{n}() RETURNS text LANGUAGE sql AS 'SELECT {last}'"]
    made += [f"CREATE FUNCTION w{i}() RETURNS text LANGUAGE sql AS 'SELECT public.w{i + 1}()'"
             for i in range(n - 1, 0, -1)]
    return "; ".join(made) + "; CREATE TABLE t (id int, v text DEFAULT w1())"


def test_a_chain_of_own_wrappers_deeper_than_the_reader_goes_is_refused(cli, db, sql_dir, low):
    """attack23z 5: a DEFAULT reaching low's function through 40 own LANGUAGE sql wrappers: the reading stopped after
    32 levels without a word, doctor ready, a pending plain INSERT ran low's function as mig, exit 0. Failed before:
    so."""
    _low_code(db, low)
    db.query(_chain(40, "app.ok(''x'')::text"))
    _refused(cli, db, sql_dir, "function public.w1()", "deeper than the 32 functions", "cannot be read here")


def test_a_chain_of_own_wrappers_within_the_reach_migrates(cli, db, sql_dir, low):
    """The control: 30 own wrappers ending in pg_catalog's code are read to the end."""
    _low_code(db, low)
    db.query(_chain(30, "pg_catalog.upper(''x'')"))
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    assert doctor_line(cli, db, sql_dir).startswith("ok")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT v FROM t") == [("X",)]


@pytest.fixture
def group(db):
    """A NOLOGIN role the migration user is a member of (the owner-role layout), which may create in public."""
    with login_role(db, "own_", "NOLOGIN") as name:
        db.query(f"GRANT {name} TO CURRENT_USER; GRANT CREATE ON SCHEMA public TO {name}")
        yield name


def test_a_group_owned_wrapper_calling_another_roles_code_is_refused(cli, db, sql_dir, low, group):
    """attack23z 6: the DEFAULT wrapper owned by a group role mig is a member of was trusted as mig's own but its body
    never read: low's function ran as mig on a pending plain INSERT, doctor ready, exit 0. Failed before: so."""
    _low_code(db, low)
    db.query(f"SET ROLE {group}; CREATE FUNCTION public.wrap() RETURNS text LANGUAGE sql AS "
             f"'SELECT app.ok(''x'')::text'; RESET ROLE; " + _WRAP)
    _refused(cli, db, sql_dir, "function public.wrap()", "function app.ok(text)")


_GROUP_PATHS = [  # (made as the group role while app2 was empty; the pending file)
    ("CREATE FUNCTION public.fix() RETURNS trigger LANGUAGE plpgsql SET search_path = app2, public AS $$BEGIN "
     "IF NEW.name = 'y'::varchar THEN NEW.name := 'z'; END IF; RETURN NEW; END$$; RESET ROLE; "
     "CREATE TRIGGER a_trg BEFORE INSERT ON a FOR EACH ROW EXECUTE FUNCTION fix()", "INSERT INTO a VALUES (2, 'y');"),
    ("CREATE FUNCTION public.fix() RETURNS void LANGUAGE plpgsql SET search_path = app2, public AS "
     "$$BEGIN UPDATE public.a SET name = 'x' WHERE name = 'y'; END$$; RESET ROLE", "SELECT public.fix();"),
    ("CREATE FUNCTION public.fix() RETURNS void LANGUAGE plpgsql AS $$BEGIN SET LOCAL search_path = app2, public; "
     "UPDATE public.a SET name = 'x' WHERE name = 'y'; END$$; RESET ROLE", "SELECT public.fix();"),
]


@pytest.mark.parametrize("made, pending", _GROUP_PATHS)
def test_a_group_owned_routine_setting_a_path_others_may_create_in_is_refused(
        cli, db, sql_dir, low, group, made, pending):
    """attack23z 6b: attack23y 1's routines (their own SET search_path, a SET LOCAL in the body) owned by a group
    role mig is a member of: a pending call (or a write firing the trigger) ran low's `=` as mig, doctor ready,
    exit 0. Failed before: so."""
    db.query(f"CREATE SCHEMA app2; GRANT USAGE ON SCHEMA app2 TO {group}; CREATE TABLE a (id int, name varchar(20)); "
             f"INSERT INTO a VALUES (1, 'y'); ALTER TABLE a OWNER TO {group}; SET ROLE {group}; " + made)
    path_refused(cli, db, sql_dir, low, pending)


def test_group_owned_wrappers_calling_the_users_own_code_migrate(cli, db, sql_dir, low, group):
    """The control: the group's wrapper calling the user's own and the group's own code is read and accepted."""
    _low_code(db, low)
    db.query(f"CREATE SCHEMA lib; GRANT USAGE, CREATE ON SCHEMA lib TO {group}; "
             "CREATE FUNCTION lib.mine() RETURNS text LANGUAGE sql AS 'SELECT ''m'''; "
             f"SET ROLE {group}; CREATE FUNCTION lib.theirs() RETURNS text LANGUAGE sql AS 'SELECT lib.mine()'; "
             "CREATE FUNCTION public.wrap() RETURNS text LANGUAGE sql AS 'SELECT lib.theirs()'; RESET ROLE; " + _WRAP)
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    assert doctor_line(cli, db, sql_dir).startswith("ok")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT v FROM t") == [("m",)]


def test_an_own_routine_setting_a_path_in_a_body_the_reader_cannot_read_is_refused(cli, db, sql_dir, low):
    """The audit (the same kind as attack23z 4-6): an own routine whose body mentions the path but cannot be read here
    (`#option dump` is never given to the parser) was taken as setting no path; called by name, it ran low's `=` as
    mig: doctor ready, exit 0. Failed before: so."""
    db.query("CREATE SCHEMA app2; CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y'); "
             "CREATE FUNCTION fix() RETURNS void LANGUAGE plpgsql AS $$#option dump\nBEGIN SET LOCAL search_path = "
             "app2, public; UPDATE public.a SET name = 'x' WHERE name = 'y'; END$$")
    writable_by(db, "app2", low)
    plant(db, "app2", low)
    add_migration(sql_dir, "0002_data", "SELECT public.fix();\n")
    line = doctor_line(cli, db, sql_dir)
    unread = "function public.fix() may set search_path by the body of function public.fix, which holds #option dump"
    assert line.startswith("FAIL") and unread in line and "cannot be read before the run" in line, line
    line = refusal(cli, db, sql_dir)
    assert unread in line and "cannot be read before the run" in line, line
    assert db.query("SELECT who FROM app2.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


def test_a_group_owned_table_a_cascade_writes_is_followed_as_the_users(cli, db, sql_dir, low, group):
    """The audit (attack23z 6's kind, planted_code.closure): a table in another schema owned by the group role, whose
    foreign key's ON DELETE CASCADE a pending DELETE reaches, was not followed (only the user's own were), so low's
    trigger function on it ran as the group role the user is a member of: doctor ready, exit 0. Failed before: so."""
    _low_code(db, low)
    db.query(f"CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1); GRANT REFERENCES ON t TO {group}; "
             f"CREATE SCHEMA arch; GRANT USAGE, CREATE ON SCHEMA arch TO {group}; SET ROLE {group}; "
             "CREATE TABLE arch.c (id int REFERENCES public.t ON DELETE CASCADE); INSERT INTO arch.c VALUES (1); "
             f"RESET ROLE; SET ROLE {low}; CREATE FUNCTION app.trg() RETURNS trigger LANGUAGE plpgsql AS "
             "$$BEGIN PERFORM app.ok('x'); RETURN OLD; END$$; RESET ROLE; "
             "CREATE TRIGGER c_trg BEFORE DELETE ON arch.c FOR EACH ROW EXECUTE FUNCTION app.trg()")
    add_migration(sql_dir, "0002_data", "DELETE FROM t;\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and "arch.c" in line and "app.trg()" in line, line
    line = refusal(cli, db, sql_dir)
    assert "arch.c" in line and "app.trg()" in line, line
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT id FROM t") == [(1,)]
