"""What a tenant's migration file may not do, on the real PostgreSQL: any mention of search_path is refused
before anything runs (however it is spelled), what no text check can see is stopped as it runs (its
transaction rolled back, or exactly what committed said), a function's own clause is judged by what it names,
string literals are not code, and `sql lint --schema` tells an alias's column from a schema's table.
"""

import pytest

from conftest import SEED, add_migration, one_error_line
from test_tenants import history, relations


@pytest.fixture
def three(db):
    """Schemas a, b and c; the runs below go over a and c only, so b is another tenant, not even in the run."""
    db.query("CREATE SCHEMA a; CREATE SCHEMA b; CREATE SCHEMA c")
    return db


def migrate_a_c(cli, db, sql_dir):
    return cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--schema", "c", env=db.db_env())


def failed_line(result, schema: str) -> str:
    """The run's one error line checked, then the schema's own FAILED line."""
    one_error_line(result)
    return next(line for line in result.stderr.splitlines() if line.startswith(f"[{schema}] FAILED"))


def leaked(db) -> list[str]:
    return sorted(s for s in ("a", "b", "c", "public") if "leak" in relations(db, s))


# --- 6. the static refusal: any mention of search_path, however spelled --------------------------------------

BYPASSES = [  # (SQL, line of the mention within it)
    ("DO $$ BEGIN SET search_path TO b; END $$;", 1),
    ("DO $$ BEGIN EXECUTE 'SET search_path TO b'; END $$;", 1),
    ("DO $body$\nBEGIN\n  EXECUTE format('SET %s TO b', E'search\\x5Fpath');\nEND $body$;", 3),
    ('SET "search_path" TO b;', 1),
    ("SELECT set_config(E'search_path', 'b', false);", 1),
    ("SELECT set_config(E'search\\137path', 'b', false);", 1),
    ("SELECT set_config(U&'search\\005Fpath', 'b', false);", 1),
    ("SELECT set_config(U&'search!005Fpath' UESCAPE '!', 'b', false);", 1),
    ("SELECT\n  set_config('search'\n'_path', 'b', false);", 2),  # adjacent literals: PostgreSQL joins them
    ("UPDATE pg_settings SET setting = 'b' WHERE name = 'search_path';", 1),
    ("ALTER ROLE CURRENT_USER SET search_path = b;", 1),
]


@pytest.mark.parametrize("sql, line", BYPASSES)
def test_every_spelling_of_a_search_path_change_is_refused_before_any_schema_runs(cli, three, sql_dir, sql, line):
    add_migration(sql_dir, "0002_x", "-- moves the tenant\nCREATE TABLE ok1 (id int);\n" + sql
                  + "\nCREATE TABLE IF NOT EXISTS leak (id int);\n")
    result = migrate_a_c(cli, three, sql_dir)
    error = one_error_line(result)
    assert result.exit_code == 2, result.output
    mention_line = 2 + line
    assert f"0002_x.sql:{mention_line}: sets search_path (or may: it names it)" in error, error
    assert "remove it and write names unqualified" in error and "(tenant schemas; nothing was run)" in error
    assert leaked(three) == [] and not three.query("SELECT 1 FROM pg_class WHERE relname IN ('ok1', '_yoyo_migration')")
    lint = cli("sql", "lint", "--sql-dir", sql_dir, "--schema", "a")
    assert lint.exit_code == 1 and f"0002_x.sql:{mention_line}:1: tenant-outside: sets search_path" in lint.stdout


def test_a_column_named_schema_is_not_set_schema(cli, three, sql_dir):
    """attack16c 2: `UPDATE t SET schema = ...` in a DO or function body is a column's assignment."""
    add_migration(sql_dir, "0002_x", "CREATE TABLE t1 (id int PRIMARY KEY, schema text);\n"
                  "INSERT INTO t1 VALUES (1, 'x');\n"
                  "DO $$ BEGIN UPDATE t1 SET schema = 'y' WHERE id = 1; END $$;\n"
                  "CREATE FUNCTION up(i int) RETURNS void LANGUAGE sql AS $$ INSERT INTO t1 VALUES (i, 'x') "
                  "ON CONFLICT (id) DO UPDATE SET schema = 'z' $$;\n"
                  "SELECT up(1);\n")
    result = migrate_a_c(cli, three, sql_dir)
    assert result.exit_code == 0, result.output
    assert three.query("SELECT schema FROM a.t1") == three.query("SELECT schema FROM c.t1") == [("z",)]


@pytest.mark.parametrize("sql, line", [
    ("SET SCHEMA 'b';", 1),
    ("SET /* the tenant's? */ SESSION\n  SCHEMA 'b';", 1),
    ("SET LOCAL SCHEMA E'b';", 1),
    ("DO $$\nBEGIN\n  SET SCHEMA 'b';\nEND $$;", 3),
])
def test_set_schema_the_other_spelling_of_set_search_path_is_refused_too(cli, three, sql_dir, sql, line):
    add_migration(sql_dir, "0002_x", "-- moves the tenant\nCREATE TABLE ok1 (id int);\n" + sql
                  + "\nCREATE TABLE IF NOT EXISTS leak (id int);\n")
    result = migrate_a_c(cli, three, sql_dir)
    error = one_error_line(result)
    assert result.exit_code == 2, result.output
    assert f"0002_x.sql:{2 + line}: sets search_path (SET SCHEMA 'x' is PostgreSQL's other spelling" in error, error
    assert leaked(three) == [] and not three.query("SELECT 1 FROM pg_class WHERE relname = 'ok1'")
    lint = cli("sql", "lint", "--sql-dir", sql_dir, "--schema", "a")
    assert lint.exit_code == 1 and f"0002_x.sql:{2 + line}:" in lint.stdout


@pytest.mark.parametrize("sql", [
    "-- SET search_path TO b in a comment is not code\nCREATE TABLE fine (id int);\n",
    "CREATE TABLE fine (id int); /* set_config('search_path', 'b', false) */\n",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  -- search_path is left alone here\n"
    "  RETURN 1;\nEND $$;\nCREATE TABLE fine (id int);\n",
])
def test_search_path_in_a_comment_is_not_a_mention(cli, three, sql_dir, sql):
    add_migration(sql_dir, "0002_x", sql)
    result = migrate_a_c(cli, three, sql_dir)
    assert result.exit_code == 0, result.output
    assert "fine" in relations(three, "a") and "fine" in relations(three, "c") and "fine" not in relations(three, "b")


# --- 6. the runtime guard: what no text check can see ----------------------------------------------------------

OBFUSCATED = "SELECT pg_catalog.set_config('search' || '_path', 'b', false)"


def test_a_search_path_built_at_run_time_stops_the_file_and_nothing_of_it_commits(cli, three, sql_dir):
    from migrator.postgres import files

    path = add_migration(sql_dir, "0002_x", f"CREATE TABLE ok1 (id int);\n{OBFUSCATED};\n"
                                            "CREATE TABLE IF NOT EXISTS leak (id int);\n")
    assert files.tenant_problems(path) == [], "the static check cannot see this one"
    result = migrate_a_c(cli, three, sql_dir)
    error = one_error_line(result)
    assert result.exit_code == 1 and "migrate failed in 2 of 2 schema(s): a, c" in error, result.output
    for schema in ("a", "c"):
        line = failed_line(result, schema)
        assert "0002_x.sql:2: failed to apply" in line and "this statement changed search_path to 'b'" in line, line
        assert "(nothing of it was committed: its transaction rolled back)" in line, line
        assert f"a tenant's migration runs with '{schema},public'" in line
        assert history(three, schema) == [SEED] and "ok1" not in relations(three, schema)
    assert leaked(three) == [], "the leak into b (a schema not even in the run) was rolled back"


def as_older_server(monkeypatch) -> None:
    """PostgreSQL before 18 does not report search_path to the client: the guard then asks the server
    (emulated here by not reading the report; the server is still the real one)."""
    from migrator.postgres import file_step

    def older_server(self, connection):
        self.connection, self.reported = connection, False
        self.expected = self._ask()

    monkeypatch.setattr(file_step.SearchPathGuard, "__init__", older_server)


def test_on_a_server_that_does_not_report_search_path_the_checksum_step_catches_it_before_commit(
        cli, three, sql_dir, monkeypatch):
    as_older_server(monkeypatch)  # a transactional file is then checked once, with the checksum, before commit
    add_migration(sql_dir, "0002_x", f"{OBFUSCATED};\nCREATE TABLE IF NOT EXISTS leak (id int);\n"
                                     "SELECT 1;\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", env=three.db_env())
    error = failed_line(result, "a")
    assert "0002_x.sql:3: failed to apply" in error and "by its end the file changed search_path to 'b'" in error
    assert "nothing of it was committed" in error
    assert leaked(three) == [] and history(three, "a") == [SEED]


NOT_TRANSACTIONAL = f"""-- transactional: false
CREATE TABLE ok1 (id int);
{OBFUSCATED};
CREATE TABLE leak (id int);
"""


@pytest.mark.parametrize("older", [False, True])
def test_a_non_transactional_file_stops_at_the_statement_and_says_exactly_what_committed(
        cli, three, sql_dir, monkeypatch, older):
    if older:  # asked after each statement instead of read from the server's report
        as_older_server(monkeypatch)
    add_migration(sql_dir, "0002_x", NOT_TRANSACTIONAL)
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", env=three.db_env())
    error = failed_line(result, "a")
    assert "0002_x.sql:3: failed to apply" in error and "changed search_path to 'b'" in error, error
    committed = ("not transactional: statements 1-2 of 3 (through the one at line 3) COMMITTED; "
                 "the rest did not run")
    assert committed in error
    assert "ok1" in relations(three, "a") and leaked(three) == [] and history(three, "a") == [SEED]
    status = cli("status", "--sql-dir", sql_dir, "--schema", "a", env=three.db_env())
    assert committed in status.stdout, status.stdout


def test_a_search_path_change_inside_the_files_own_transaction_rolls_that_transaction_back(cli, three, sql_dir):
    add_migration(sql_dir, "0002_x", f"-- transactional: false\nCREATE TABLE ok1 (id int);\nBEGIN;\n"
                                     f"CREATE TABLE in_block (id int);\n{OBFUSCATED};\nCREATE TABLE leak (id int);\n"
                                     "COMMIT;\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", env=three.db_env())
    error = failed_line(result, "a")
    assert "0002_x.sql:5: failed to apply" in error
    assert ("statement 1 of 6 (line 2) COMMITTED; statements 2-4 ran inside the transaction "
            "the file opened at line 3, which rolled back; the rest did not run") in error, error
    assert relations(three, "a") >= {"ok1"} and "in_block" not in relations(three, "a") and leaked(three) == []


def test_rollback_files_are_guarded_too(cli, three, sql_dir):
    add_migration(sql_dir, "0002_x", "CREATE TABLE t2 (id int);\n",
                  f"DROP TABLE t2;\n{OBFUSCATED};\nCREATE TABLE leak (id int);\n")
    assert migrate_a_c(cli, three, sql_dir).exit_code == 0
    result = cli("sql", "rollback", "--sql-dir", sql_dir, "--schema", "a", env=three.db_env())
    error = failed_line(result, "a")
    assert "0002_x.rollback.sql:2: failed to roll back" in error and "changed search_path to 'b'" in error, error
    assert "t2" in relations(three, "a") and history(three, "a") == [SEED, "0002_x"] and leaked(three) == []


def test_a_plain_run_is_not_guarded(cli, db, sql_dir):
    """Without schemas a file's search_path is its own business (a pg_dump baseline sets it)."""
    to_public = OBFUSCATED.replace("'b'", "'public'")
    add_migration(sql_dir, "0002_x", f"{to_public};\nCREATE TABLE t2 (id int);\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    assert "t2" in relations(db, "public")


# --- 7, 8. a function's own clause, and literals -------------------------------------------------------------


@pytest.mark.parametrize("clause", ["SET search_path TO DEFAULT", "SET search_path = default",
                                    "SET search_path TO pg_catalog, DEFAULT"])
def test_a_functions_own_search_path_default_is_refused_like_public(cli, three, sql_dir, clause):
    three.query("CREATE TABLE public.t1 (id int); INSERT INTO public.t1 SELECT generate_series(1, 5)")
    add_migration(sql_dir, "0002_x", "CREATE TABLE t1 (id int);\nCREATE FUNCTION f() RETURNS int LANGUAGE sql\n"
                                     f"    {clause}\n    AS $$ SELECT count(*)::int FROM t1 $$;\n")
    result = migrate_a_c(cli, three, sql_dir)
    error = one_error_line(result)
    assert result.exit_code == 2
    assert '0002_x.sql:3: gives a function its own SET search_path naming DEFAULT ("$user", public), so every' in error
    assert not three.query("SELECT 1 FROM pg_proc WHERE proname = 'f'")


def test_a_functions_empty_search_path_is_the_safe_form_and_runs_in_every_tenant(cli, three, sql_dir):
    add_migration(sql_dir, "0002_x", "CREATE FUNCTION add_one(i int) RETURNS int LANGUAGE sql IMMUTABLE\n"
                                     "    SET search_path = '' AS 'SELECT i OPERATOR(pg_catalog.+) 1';\n"
                                     "ALTER FUNCTION add_one(int) SET search_path TO '';\n"
                                     "CREATE TABLE one AS SELECT add_one(0) AS n;  -- its own path, only while it runs\n")
    result = migrate_a_c(cli, three, sql_dir)
    assert result.exit_code == 0, result.output
    assert three.query("SELECT a.add_one(1), c.add_one(2), (SELECT n FROM a.one), (SELECT n FROM c.one)") == [(2, 3, 1, 1)]
    assert three.query("SELECT proconfig FROM pg_proc WHERE proname = 'add_one'") == [(['search_path=""'],)] * 2
    assert "tenant-outside" not in cli("sql", "lint", "--sql-dir", sql_dir, "--schema", "a").stdout


def test_set_schema_and_create_extension_inside_literals_or_comments_are_not_code(cli, three, sql_dir):
    add_migration(sql_dir, "0002_x", "CREATE TABLE t1 (id int, name text);\n"
                                     "ALTER TABLE t1 ALTER COLUMN name SET DEFAULT 'set schema';\n"
                                     "COMMENT ON TABLE t1 IS $$alter table t1 set schema public$$;\n"
                                     "ALTER TABLE t1 /* no SET SCHEMA here */ ADD COLUMN note text;\n")
    result = migrate_a_c(cli, three, sql_dir)
    assert result.exit_code == 0, result.output
    assert three.query("SELECT column_default FROM information_schema.columns WHERE table_schema = 'c' "
                       "AND table_name = 't1' AND column_name = 'name'") == [("'set schema'::text",)]
    # a SCHEMA only in a comment is no SCHEMA: the extension would land in the first tenant
    add_migration(sql_dir, "0003_ext", "CREATE EXTENSION IF NOT EXISTS pgcrypto /* SCHEMA public */;\n")
    error = one_error_line(migrate_a_c(cli, three, sql_dir))
    assert "0003_ext.sql:1: creates an extension without SCHEMA" in error


def test_a_function_body_restoring_search_path_is_refused_saying_why_and_what_to_write(cli, three, sql_dir):
    add_migration(sql_dir, "0002_x", "CREATE FUNCTION keep() RETURNS void LANGUAGE plpgsql AS $$\nBEGIN\n"
                                     "    PERFORM set_config('search_path', current_setting('search_path'), true);\n"
                                     "END $$;\n")
    error = one_error_line(migrate_a_c(cli, three, sql_dir))
    assert "0002_x.sql:3: names search_path in a function's body: a body that sets search_path when called" in error
    assert "changes the calling session's path too" in error
    assert "give the function SET search_path FROM CURRENT instead" in error


# --- 13. lint: an alias named like a tenant is not that tenant's schema -------------------------------------------

ALIASES = """CREATE TABLE t1 (id int PRIMARY KEY, name text);
CREATE VIEW v AS SELECT pb.id, pb.name FROM t1 pb;
UPDATE t1 SET name = 'y' FROM t1 pb WHERE pb.id = t1.id;
SELECT mz.id FROM t1 AS mz JOIN t1 pb ON pb.id = mz.id WHERE pb.name IS DISTINCT FROM mz.name GROUP BY mz.id, pb.id;
SELECT extract(year FROM pb.at), count(*) FROM (SELECT now() AS at) pb GROUP BY 1;
"""

TRUE_POSITIVES = """SELECT * FROM pb.t1;
CREATE TABLE t2 (id int REFERENCES public.t1 (id));
SELECT x.id FROM t1 x JOIN mz.t1 y ON y.id = x.id;
SELECT pb.t1.id FROM t1;
SELECT 1 FROM t1 a, pb.t2 b;
UPDATE pb.t1 SET name = 'x';
INSERT INTO public.t1 (id) VALUES (1);
CREATE INDEX i ON mz.t1 (id);
DROP TABLE IF EXISTS t3, pb.t4;
"""


def test_lint_does_not_flag_an_alias_named_like_a_tenant_but_keeps_real_schema_names(cli, sql_dir):
    add_migration(sql_dir, "0002_alias", ALIASES)
    result = cli("sql", "lint", "--sql-dir", sql_dir, "--schema", "pb", "--schema", "mz")
    assert "tenant-schema" not in result.stdout, result.stdout
    add_migration(sql_dir, "0003_named", TRUE_POSITIVES)
    result = cli("sql", "lint", "--sql-dir", sql_dir, "--schema", "pb", "--schema", "mz")
    flagged = [line.split(": ")[0].rsplit("/", 1)[1] for line in result.stdout.splitlines() if "tenant-schema" in line]
    assert flagged == ["0003_named.sql:1:15", "0003_named.sql:2:36", "0003_named.sql:3:28", "0003_named.sql:4:8",
                       "0003_named.sql:5:21", "0003_named.sql:6:8", "0003_named.sql:7:13", "0003_named.sql:8:19",
                       "0003_named.sql:9:26"], result.stdout
    assert result.exit_code == 1


@pytest.mark.parametrize("sql", [
    "DO $$ DECLARE p text := current_setting('search'||'_path'); BEGIN PERFORM set_config('search'||'_path', 'b', true);"
    " CREATE TABLE IF NOT EXISTS leak (id int); PERFORM set_config('search'||'_path', p, true); END $$;",
    "DO $$ BEGIN EXECUTE format('CREATE TABLE IF NOT EXISTS %I.leak (id int)', 'b'); END $$;",
    "CREATE TABLE IF NOT EXISTS public.leak (id int);",
    "DO $$ BEGIN BEGIN EXECUTE format('CREATE TABLE %I.leak (id int)', 'b'); EXCEPTION WHEN others THEN RAISE; END; END $$;",
])
def test_objects_made_outside_the_tenant_by_any_spelling_roll_the_migration_back(cli, three, sql_dir, sql):
    """attack16c 1: what no text check sees (a path set and restored inside one statement, a name built at run
    time, a qualified name, a subtransaction) is caught before commit by what the transaction wrote."""
    add_migration(sql_dir, "0002_x", "CREATE TABLE own (id int);\n" + sql + "\n")
    result = migrate_a_c(cli, three, sql_dir)
    assert result.exit_code == 1, result.output
    line = failed_line(result, "a")
    assert "leak" in line and "outside tenant a's schema" in line and "nothing of it was committed" in line, line
    assert leaked(three) == [] and "own" not in relations(three, "a")


def test_an_extension_and_the_tenants_own_objects_are_not_outside(cli, three, sql_dir):
    add_migration(sql_dir, "0002_x", "CREATE EXTENSION IF NOT EXISTS citext SCHEMA public;\n"
                  "CREATE TABLE people (email public.citext);\nCREATE INDEX ON people (email);\n"
                  "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\nCREATE TYPE mood AS ENUM ('ok');\n")
    result = migrate_a_c(cli, three, sql_dir)
    assert result.exit_code == 0, result.output
    assert "people" in relations(three, "a") and "people" in relations(three, "c")
