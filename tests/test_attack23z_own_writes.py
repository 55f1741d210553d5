"""attack23z 7, 8, 9: what the migration user's own code writes and runs is held to the planted rule. A table an own
body (a trigger function, a DEFAULT wrapper) or a pending DO block writes by its qualified name, wherever it lives,
has its implicit code checked as a table a pending file writes; a DO block inside an own body is read as a body."""

from __future__ import annotations

import pytest

from conftest import add_migration, ok
from test_attack23u_reach import _low_code
from test_schema_creators import doctor_line, low, refusal  # noqa: F401 (low: a fixture)

_AUDIT = "CREATE SCHEMA audit; CREATE TABLE audit.log (id serial, who text DEFAULT (app.ok('x'))::text, what text); "
_TRIGGER = ("CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO audit.log (what) "
            "VALUES (NEW.id::text); RETURN NEW; END$$; CREATE TABLE t (id int); "
            "CREATE TRIGGER t_audit AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION trg()")
_WRAP = "CREATE TABLE t (id int, v text DEFAULT wrap())"
_WRITTEN = [  # (the user's objects made earlier; a pending plain INSERT INTO t reaches low's code through them)
    # the audit-log layout: an own trigger function writes audit.log, whose DEFAULT calls low's function
    (_AUDIT + _TRIGGER, "function app.ok(text)"),
    # ... whose CHECK does
    ("CREATE SCHEMA audit; CREATE TABLE audit.log (what text CHECK (app.ok(what))); " + _TRIGGER,
     "function app.ok(text)"),
    # ... whose own trigger's function (the user's, read in turn) does
    ("CREATE SCHEMA audit; CREATE TABLE audit.log (what text); CREATE FUNCTION audit.stamp() RETURNS trigger "
     "LANGUAGE plpgsql AS $$BEGIN PERFORM app.ok('x'); RETURN NEW; END$$; CREATE TRIGGER log_stamp BEFORE INSERT "
     "ON audit.log FOR EACH ROW EXECUTE FUNCTION audit.stamp(); " + _TRIGGER, "function app.ok(text)"),
    # ... by an unqualified name on the function's own search_path, or on one its body sets
    (_AUDIT + _TRIGGER.replace("LANGUAGE plpgsql AS", "LANGUAGE plpgsql SET search_path = audit, public AS")
     .replace("audit.log", "log"), "function app.ok(text)"),
    (_AUDIT + _TRIGGER.replace("$$BEGIN ", "$$BEGIN SET LOCAL search_path = audit, public; ")
     .replace("audit.log", "log"), "function app.ok(text)"),
    # a DELETE whose foreign key's ON DELETE SET DEFAULT writes another own table, whose DEFAULT calls low's function
    ("CREATE SCHEMA audit; CREATE TABLE audit.log (id int PRIMARY KEY); INSERT INTO audit.log VALUES (0), (1); "
     "CREATE TABLE audit.ref (log int DEFAULT 0 REFERENCES audit.log ON DELETE SET DEFAULT, "
     "who text DEFAULT (app.ok('x'))::text); CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
     "DELETE FROM audit.log WHERE id = NEW.id; RETURN NEW; END$$; CREATE TABLE t (id int); CREATE TRIGGER t_audit "
     "AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION trg()", "function app.ok(text)"),
    # an own SQL DEFAULT wrapper that writes audit.log
    (_AUDIT + "CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS "
     "'INSERT INTO audit.log (what) VALUES (''x'') RETURNING what'; " + _WRAP, "function app.ok(text)"),
    # attack23z 9: a DO block inside an own SQL body, and a constant EXECUTE of one in a plpgsql body
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS $f$ DO $x$BEGIN PERFORM app.ok('x'); END$x$; "
     "SELECT 'x'::text $f$; " + _WRAP, "function app.ok(text)"),
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE plpgsql AS $f$BEGIN "
     "EXECUTE 'DO $x$BEGIN PERFORM app.ok(''x''); END$x$'; RETURN 'x'; END$f$; " + _WRAP, "function app.ok(text)"),
    # ... and such a DO block writing audit.log
    (_AUDIT + "CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS $f$ DO $x$BEGIN INSERT INTO audit.log (what) "
     "VALUES ('x'); END$x$; SELECT 'x'::text $f$; " + _WRAP, "function app.ok(text)"),
    # a DO block in a language the runner does not read: unread, refused as such
    ("CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS $f$ DO LANGUAGE plperl $x$ 1 $x$; "
     "SELECT 'x'::text $f$; " + _WRAP, "cannot be read"),
]


@pytest.mark.parametrize("made, named", _WRITTEN)
def test_a_table_an_own_body_writes_or_a_do_block_in_it_is_checked(cli, db, sql_dir, low, made, named):
    """attack23z 7 and 9: mig's own trigger function (or DEFAULT wrapper) wrote mig's own audit.log in another schema,
    whose DEFAULT / CHECK / trigger / cascade ran low's function; a DO block inside an own body was not read. A
    pending plain INSERT ran low's function as mig: doctor ready, exit 0. Failed before: so."""
    _low_code(db, low)
    db.query(made)
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and "public.t" in line and named in line, line
    line = refusal(cli, db, sql_dir)
    assert "public.t" in line and named in line, line
    assert db.query("SELECT * FROM t") == [] and db.query("SELECT who FROM app.hits") == []


def test_own_bodies_writing_the_users_own_clean_tables_migrate(cli, db, sql_dir, low):
    """The control: an own trigger function writing an own audit table whose DEFAULT is a built-in, and an own
    wrapper running a DO block that calls the user's own code, migrate while low's schema app exists."""
    _low_code(db, low)
    db.query("CREATE SCHEMA audit; CREATE TABLE audit.log (id serial, who text DEFAULT CURRENT_USER, what text); "
             "CREATE FUNCTION audit.note() RETURNS void LANGUAGE sql AS 'SELECT'; "
             "CREATE FUNCTION wrap() RETURNS text LANGUAGE sql AS $f$ DO $x$BEGIN PERFORM audit.note(); END$x$; "
             "SELECT 'x'::text $f$; " + _TRIGGER + "; ALTER TABLE t ADD COLUMN v text DEFAULT wrap()")
    add_migration(sql_dir, "0002_seed", "INSERT INTO t (id) VALUES (1);\n")
    assert doctor_line(cli, db, sql_dir).startswith("ok")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT what FROM audit.log") == [("1",)] and db.query("SELECT v FROM t") == [("x",)]


_WRITES = "0002_data.sql:1 writes table audit.log"
# A DO block the parser here cannot read (pglast: a `%TYPE[]` variable) may write any table the user can write, or set
# any path: refused by body_paths' rule for a path change it cannot read (which held before too)
_UNREAD = "DO $$DECLARE r audit.log.what%TYPE[]; BEGIN INSERT INTO audit.log (what) VALUES ('x'); END$$;"
_PENDING = [  # (attack23z 8: a pending file writing audit.log, whose DEFAULT calls low's function, not by a statement)
    "DO $$BEGIN INSERT INTO audit.log (what) VALUES ('x'); END$$;",
    "DO $$BEGIN EXECUTE 'INSERT INTO audit.log (what) VALUES (''x'')'; END$$;",
    "DO $$BEGIN EXECUTE 'DO $x$BEGIN UPDATE audit.log SET what = ''y''; END$x$'; END$$;",
    "CREATE FUNCTION fix() RETURNS void LANGUAGE plpgsql AS $$BEGIN INSERT INTO audit.log (what) VALUES ('x'); "
    "END$$;\nSELECT fix();",
    "CREATE FUNCTION fix() RETURNS void LANGUAGE sql AS $$INSERT INTO audit.log (what) VALUES ('x')$$;\nSELECT fix();",
    _UNREAD,
]


@pytest.mark.parametrize("pending", _PENDING)
def test_a_table_a_pending_body_writes_is_checked_as_a_statement_writing_it(cli, db, sql_dir, low, pending):
    """attack23z 8: the same INSERT INTO audit.log as a top-level statement was refused naming the table's DEFAULT;
    inside a DO block (or a constant EXECUTE in one, or a routine the file makes and calls) it ran low's function as
    mig, exit 0. Failed before: so."""
    _low_code(db, low)
    db.query(_AUDIT + "INSERT INTO audit.log (what) VALUES ('0')")
    db.query("DELETE FROM app.hits")
    add_migration(sql_dir, "0002_data", pending + "\n")
    line = refusal(cli, db, sql_dir)
    said = "0002_data.sql:1 may set search_path by a DO block, which" if pending == _UNREAD else _WRITES
    assert said in line and "function app.ok(text)" in line, line
    assert db.query("SELECT what FROM audit.log") == [("0",)] and db.query("SELECT who FROM app.hits") == []


def test_a_pending_do_block_writing_the_users_own_clean_table_migrates(cli, db, sql_dir, low):
    """The control: a DO block writing an own table off the path whose DEFAULT is a built-in."""
    _low_code(db, low)
    db.query("CREATE SCHEMA audit; CREATE TABLE audit.log (who text DEFAULT CURRENT_USER, what text)")
    add_migration(sql_dir, "0002_data", "DO $$BEGIN INSERT INTO audit.log (what) VALUES ('x'); "
                  "EXECUTE 'UPDATE audit.log SET what = ''y'''; END$$;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT what FROM audit.log") == [("y",)]



def test_a_pending_body_the_runner_cannot_read_runs_where_no_writable_table_runs_others_code(cli, db, sql_dir):
    """The control: the same DO block where every table the user can write is its own, with its own code."""
    db.query("CREATE SCHEMA audit; CREATE TABLE audit.log (who text DEFAULT CURRENT_USER, what text)")
    add_migration(sql_dir, "0002_data", _UNREAD + "\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT what FROM audit.log") == [("x",)]
