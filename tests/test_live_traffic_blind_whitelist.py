"""Issue 24, attack24o: while the lock probe is blind (the role's CONNECTION LIMIT leaves it no slot), every try is
bounded by the clock from its first statement unless each statement is harmless by construction (clock_bound.py):
a blacklist of kinds was fooled by whatever runs user code or takes row locks without looking like it."""

import pytest

from conftest import add_migration, applied, one_error_line
from test_live_traffic_parse import blind_run
from test_progress_attack import LIMITED_PASSWORD, limited_role  # noqa: F401 (a fixture)

# Locks the application's table, then works 1.5 s: the stall a blind try must not cause past its bound.
LOCKER = ("CREATE FUNCTION public.locker() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
          "LOCK TABLE public.t_probe IN ACCESS EXCLUSIVE MODE; PERFORM pg_catalog.pg_sleep(1.5); RETURN 1; END $$;")
SLEEP = "SELECT pg_catalog.pg_sleep(1.5);\n"

# (what the database holds before the run, the migration): each ran unbounded while blind before, exit 0. (SQL text
# run by a pg_catalog function: ts_stat here; query_to_xml the same, but this server is built without libxml)
CASES = {
    "trigger": ("CREATE TABLE t_trig (id int); CREATE FUNCTION trig() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM public.locker(); RETURN NEW; END $$; CREATE TRIGGER tr BEFORE INSERT ON t_trig "
                "FOR EACH ROW EXECUTE FUNCTION trig();", "INSERT INTO t_trig VALUES (1);\n"),
    "default-of-a-table-made-in-the-run": ("", "CREATE TABLE t_new (id int, v int DEFAULT public.locker());\n"
                                               "INSERT INTO t_new (id) VALUES (1);\n"),
    "view": ("CREATE VIEW v_lock AS SELECT public.locker() AS x;", "SELECT * FROM v_lock;\n"),
    "view-check-option": ("CREATE TABLE t_log (id int); CREATE VIEW v_ins AS SELECT id FROM t_log "
                          "WHERE public.locker() > 0 WITH CHECK OPTION;", "INSERT INTO v_ins VALUES (1);\n"),
    "rule": ("CREATE TABLE t_rule (id int); CREATE RULE r_lock AS ON INSERT TO t_rule DO ALSO SELECT public.locker();",
             "INSERT INTO t_rule VALUES (1);\n"),
    "qualified-operator": ("CREATE FUNCTION lock_eq(int, int) RETURNS boolean LANGUAGE sql AS "
                           "'SELECT public.locker() > 0'; CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, "
                           "FUNCTION = lock_eq);", "SELECT 1 OPERATOR(public.===) 2;\n"),
    "operator": ("CREATE FUNCTION lock_eq(int, int) RETURNS boolean LANGUAGE sql AS 'SELECT public.locker() > 0'; "
                 "CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = lock_eq);",
                 "SELECT 1 === 2;\n"),
    "functional-notation": ("CREATE FUNCTION lockf(t_probe) RETURNS int LANGUAGE sql AS 'SELECT public.locker()';",
                            "SELECT t.lockf FROM t_probe t;\n"),
    "shadowed-builtin-overload": ("CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE sql AS "
                                  "'SELECT public.locker()';", "SELECT lower(1);\n"),
    "shadowed-builtin-search-path": ("CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS "
                                     "'SELECT public.locker()::text';",
                                     "SET search_path = public, pg_catalog;\nSELECT lower('x');\n"),
    "ts-stat": ("CREATE FUNCTION lock_tsv() RETURNS tsvector LANGUAGE sql AS "
                "'SELECT pg_catalog.to_tsvector(public.locker()::text)';",
                "SELECT * FROM pg_catalog.ts_stat('SELECT public.lock_tsv()');\n"),
    "update-in-with": ("", "WITH x AS (UPDATE t_probe SET id = id RETURNING id) SELECT pg_catalog.pg_sleep(1.5) "
                           "FROM x;\n"),
    "for-update-in-a-subquery": ("", "SELECT pg_catalog.pg_sleep(1.5) FROM (SELECT id FROM t_probe FOR UPDATE) s;\n"),
    "insert-on-conflict-update": ("ALTER TABLE t_probe ADD PRIMARY KEY (id);",
                                  "INSERT INTO t_probe VALUES (1) ON CONFLICT (id) DO UPDATE SET id = excluded.id;\n"
                                  + SLEEP),
    "event-trigger": ("RESET ROLE; CREATE FUNCTION evt() RETURNS event_trigger LANGUAGE plpgsql AS "
                      "$$ BEGIN PERFORM public.locker(); END $$; CREATE EVENT TRIGGER e_lock ON ddl_command_end "
                      "WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION evt();", "CREATE TABLE t_new (id int);\n"),
    "same-name-in-another-schema": ("CREATE SCHEMA staging;", "CREATE TABLE staging.t_probe (id int);\n"
                                                              "ALTER TABLE t_probe ADD COLUMN note text;\n" + SLEEP),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_blind_probe_bounds_a_try_running_user_code_or_row_locks_that_do_not_look_so(cli, make_db, limited_role,
                                                                                       sql_dir, pg, case):
    """attack24o 1-9: a trigger, a column DEFAULT, a view or rule, an operator, functional notation, a shadowed
    built-in, pg_catalog functions running SQL text, nested row locks, and a table of the same name created in
    another schema (and a superuser's event trigger on a plain CREATE TABLE): each locked t_probe (or its rows) for
    1.5 s while the blind probe left the try alone, exit 0."""
    setup, body = CASES[case]
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    db.query(f"SET ROLE {limited_role}; {LOCKER} {setup}")
    add_migration(sql_dir, "0002_x", body)
    result = migrate("--lock-retry-budget", "1s")
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_x.sql:" in line and "failed to apply" in line, result.output
    assert "the lock probe was blind" in line, line
    assert LIMITED_PASSWORD not in result.output
    assert applied(db)[-1] != "0002_x"


ROWS = 30000  # (rows a try inserts, 1,000 a statement: several times the 200 ms bound)


def inserts(table: str, note: bool = True) -> str:
    """INSERT ... VALUES of constants, 1,000 rows a statement (id, and a note)."""
    row = "({i}, 'row {i}')" if note else "({i})"
    return "".join(f"INSERT INTO {table} {'(id, note)' if note else '(id)'} VALUES "
                   + ", ".join(row.format(i=i) for i in range(start, start + 1000)) + ";\n"
                   for start in range(0, ROWS, 1000))


def test_a_blind_probe_leaves_a_long_try_of_inserts_into_a_table_the_run_made_alone(cli, make_db, limited_role,
                                                                                   sql_dir, pg):
    """The whitelist's free case: a plain table made by the same transaction (serial, constant defaults, a primary
    key), filled with INSERT ... VALUES of constants: nobody else can use it, and nothing user-defined runs. Longer
    than the bound, it is left alone. (One an earlier file made and committed is the application's: attack24s 1.)"""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_made", "SELECT 1;\n")
    add_migration(sql_dir, "0003_fill", "SET search_path = public;\nCREATE TABLE t_made (id int PRIMARY KEY, note "
                  "text DEFAULT 'none', n serial, at timestamptz DEFAULT now());\n" + inserts("t_made")
                  + "CREATE TABLE \"T Same\" (id bigint NOT NULL, note varchar(20));\n" + inserts('"T Same"')
                  + "INSERT INTO public.t_made (id) VALUES ('-1'::pg_catalog.int4), (-2);\n")
    result = migrate("--lock-retry-budget", "1s")
    assert result.exit_code == 0, result.output
    assert "ended by the runner" not in result.stderr and "try 2" not in result.stderr, result.stderr
    assert applied(db)[-2:] == ["0002_made", "0003_fill"]
    assert db.query('SELECT count(*) FROM t_made')[0][0] == ROWS + 2
    assert db.query('SELECT count(*) FROM "T Same"')[0][0] == ROWS


@pytest.mark.parametrize("fill", [
    "INSERT INTO t_made (id) VALUES (pg_catalog.length('x'));\n",  # a function call
    "INSERT INTO t_made (id) SELECT 1;\n",  # a query
    "INSERT INTO t_made (id) VALUES (1) ON CONFLICT DO NOTHING;\n",
    "CREATE INDEX ON t_made (id);\n",  # DDL on it
], ids=["function", "select", "on-conflict", "ddl"])
def test_a_blind_probe_bounds_anything_else_on_a_table_the_run_made(cli, make_db, limited_role, sql_dir, pg, fill):
    """Only constants go in unbounded: anything else starts the clock (here it then runs longer than the bound)."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_made", "CREATE TABLE t_made (id int);\n")
    add_migration(sql_dir, "0003_fill", fill + inserts("t_made", note=False))
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0003_fill.sql:" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] == "0002_made"


@pytest.mark.parametrize("made", [
    "CREATE TABLE t_made (id int PRIMARY KEY, v int CHECK (v > 0));\n",
    "CREATE TABLE t_made (id int PRIMARY KEY);\nCREATE FUNCTION t_trig() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RETURN NEW; END $$;\nCREATE TRIGGER tr BEFORE INSERT ON t_made FOR EACH ROW EXECUTE FUNCTION t_trig();\n",
    "CREATE TABLE t_made (id int PRIMARY KEY);\nDO $$ BEGIN EXECUTE 'CREATE RULE r AS ON INSERT TO t_made DO ALSO "
    "NOTIFY x'; END $$;\n",
], ids=["check", "trigger", "rule-made-by-a-do-block"])
def test_a_blind_probe_bounds_inserts_into_a_table_the_run_made_that_runs_code(cli, make_db, limited_role, sql_dir,
                                                                               pg, made):
    """A table the run made that has a CHECK, a trigger or a rule (whatever made it: the catalog says) is no longer
    known harmless: its inserts start the clock."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_made", made)
    add_migration(sql_dir, "0003_fill", inserts("t_made", note=False))
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0003_fill.sql:" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] == "0002_made"
