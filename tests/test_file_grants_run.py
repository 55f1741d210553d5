"""fix23am: a grant a non-transactional file makes at run time (a DO block's EXECUTE, a function call), which the
text reader (file_grants.refuse) cannot see, used by another role before the same file's next statement."""

from __future__ import annotations

import threading

import psycopg2
import pytest

from conftest import add_migration, ok, one_error_line
from test_schema_creators import OPERATOR, low  # noqa: F401 (low: a fixture)

# Waits (bounded) until low's `=` on varchar exists in public: the file goes on only once low planted it.
_GATE = ("DO $$BEGIN FOR i IN 1..400 LOOP EXIT WHEN EXISTS (SELECT FROM pg_catalog.pg_operator WHERE oprname = '=' "
         "AND oprnamespace = 'public'::regnamespace); PERFORM pg_catalog.pg_sleep(0.05); END LOOP; END$$;\n")


def _planter(db, low, ended: threading.Event) -> threading.Thread:
    """low's own session: as soon as it may CREATE in public, it plants `=` on varchar there."""
    def plant():
        conn = psycopg2.connect(dbname=db.name, user=low, host=db.server.host, port=db.server.port)
        conn.autocommit = True
        try:
            cursor = conn.cursor()
            while not ended.wait(0.02):
                cursor.execute("SELECT pg_catalog.has_schema_privilege('public', 'CREATE')")
                if cursor.fetchone()[0]:
                    cursor.execute("CREATE TABLE public.hits (who text); GRANT INSERT, SELECT ON public.hits TO PUBLIC; "
                                   + OPERATOR.format(s="public"))
                    return
        finally:
            conn.close()

    thread = threading.Thread(target=plant)
    thread.start()
    return thread


@pytest.mark.parametrize("grant", [
    "DO $$BEGIN EXECUTE 'GRANT CREATE ON SCHEMA public TO {low}'; END$$;",
    "CREATE FUNCTION opens() RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE 'GRANT CREATE ON SCHEMA public TO "
    "{low}'; END$$;\nSELECT opens();",
    "BEGIN;\nDO $$BEGIN EXECUTE 'GRANT CREATE ON SCHEMA public TO {low}'; END$$;\nCOMMIT;",
])
def test_a_grant_made_at_run_time_stops_the_file_before_its_next_statement(cli, db, sql_dir, low, grant):
    """attack23v 5's DO variant: the DO block's GRANT committed at once, low planted `=` on varchar in public, and the
    file's next UPDATE ran it as the migration user (exit 0). Now the planted check runs again after a statement that
    may run SQL its text does not show. Failed before: exit 0, public.hits held the migration user."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query("CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y')")
    add_migration(sql_dir, "0002_data", "-- transactional: false\n" + grant.format(low=low) + "\n" + _GATE
                  + "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    ended = threading.Event()
    thread = _planter(db, low, ended)
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    finally:
        ended.set()
        thread.join()
    hits = db.query("SELECT who FROM public.hits") if db.query("SELECT to_regclass('public.hits')")[0][0] else []
    assert hits == [] and db.query("SELECT name FROM a") == [("y",)], (hits, result.output)
    error = one_error_line(result)
    line = grant.count("\n") + 2
    assert result.exit_code == 2 and f"0002_data.sql:{line}" in error, error
    assert f"roles {low} may CREATE in schema public" in error and "DO block" in error, error
    assert f"the statement at line {line - ('COMMIT' in grant)} may run SQL" in error, error  # (its BEGIN: at COMMIT)


def test_plain_statements_of_a_non_transactional_file_run_without_the_check(cli, db, sql_dir, low):
    """The other side: a plain statement (no DO, call or EXECUTE) is not followed by the check, and a DO block
    granting nothing the rule refuses runs."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_data", "-- transactional: false\nCREATE TABLE a (id int, name varchar(20));\n"
                  "INSERT INTO a VALUES (1, 'y'), (2, NULL);\nDO $$BEGIN EXECUTE 'CREATE TABLE b (id int)'; END$$;\n"
                  "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT name FROM a ORDER BY id") == [("x",), (None,)]


@pytest.mark.parametrize("text, code", [
    ("INSERT INTO a VALUES (1, 'y'), (2, NULL);", False),
    ("INSERT INTO public.a (id, name) VALUES (1, 'it''s (x)');", False),
    ("CREATE TABLE a (id int PRIMARY KEY, name varchar(20) DEFAULT now()::text);", False),
    ("UPDATE a SET name = lower(name) WHERE id = 1;", False),
    ("CREATE INDEX a_name ON a (name);", False),
    ("DO $$BEGIN NULL; END$$;", True),
    ("SELECT opens();", True),
    ("CALL opens();", True),
    ("EXECUTE prepared;", True),
    ("INSERT INTO a VALUES (1, E'\\'' || opens()::text);", True),
    ("SELECT pg_catalog.query_to_xml('SELECT 1', true, true, '');", True),
    ("COPY a FROM PROGRAM 'true';", True),
])
def test_which_statements_may_run_sql_their_text_does_not_show(text, code):
    from migrator.postgres import file_grants

    assert file_grants.may_run_code(text) == code
