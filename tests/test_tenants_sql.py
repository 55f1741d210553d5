"""The `sql` maintenance commands over tenant schemas, on the real PostgreSQL: accept-changes, accept-drift,
break-lock, adopt and verify run per schema (one summary, failures isolated), and a function's own
`SET search_path` is refused in tenant files unless it keeps the tenant's own path.
"""

import json
import re
from pathlib import Path

import psycopg2
import pytest

from conftest import PASSWORD_USER, SEED, SPECIAL_PASSWORD, add_migration, one_error_line
from test_tenants import RICH, RICH_ROLLBACK, history, summary_rows

STATE = "0002_report_state"


@pytest.fixture
def tenant_sql(sql_dir: Path) -> Path:
    add_migration(sql_dir, STATE, RICH, RICH_ROLLBACK)
    return sql_dir


@pytest.fixture
def owned(make_db, password_role):
    """A database owned by a role with a password (which must never be printed), and its DB_* variables."""
    db = make_db(owner=password_role)
    env = {**db.db_env(), "DB_USER": password_role, "DB_PASSWORD": SPECIAL_PASSWORD}
    return db, env


def checksum_drift(cli, sql_dir, env, schema) -> bool:
    """Whether `status` in that schema reports an applied file whose content changed."""
    result = cli("status", "--sql-dir", sql_dir, "--schema", schema, "--json", env=env)
    return json.loads(result.stdout)["schemas"][schema]["changed"] != []


# --- 1. accept-changes, accept-drift, break-lock ------------------------------------------------------------


def test_accept_changes_per_schema_a_schema_without_the_id_fails_alone_with_the_single_schema_message(
        cli, owned, tenant_sql):
    db, env = owned
    assert cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", "--schema", "pb", "--schema", "ng",
               "--schema", "mz", env=env).exit_code == 0
    assert cli("sql", "rollback", "--sql-dir", tenant_sql, "--schema", "ng", env=env).exit_code == 0
    (tenant_sql / f"{STATE}.sql").write_text(RICH + "-- reviewed: a comment added after it was applied\n")
    assert checksum_drift(cli, tenant_sql, env, "pb") and checksum_drift(cli, tenant_sql, env, "mz")

    result = cli("sql", "accept-changes", STATE, "--sql-dir", tenant_sql, env={**env, "SCHEMA_NAME": "pb,ng,gone,mz"})
    error = one_error_line(result)
    assert result.exit_code == 1 and "accept-changes failed in 2 of 4 schema(s): ng, gone" in error
    assert f"[pb] accepted {STATE}: sha256" in result.stdout and f"[mz] accepted {STATE}: sha256" in result.stdout
    # ng's failure is the single-schema command's own line (as --schema ng alone says it), with its schema
    ng_line = re.search(r"^\[ng\] FAILED: .*$", result.stderr, re.M).group()
    assert re.fullmatch(rf"\[ng\] FAILED: {STATE} not applied on .+ schema ng: nothing to accept "
                        r"\(a pending file may change freely\)", ng_line), ng_line
    single = cli("sql", "accept-changes", STATE, "--sql-dir", tenant_sql, "--schema", "ng", env=env)
    assert single.exit_code == 2 and ng_line in single.stderr
    assert "[gone] FAILED: schema gone does not exist" in result.stderr
    rows = summary_rows(result.stdout)
    assert "FAILED" in rows["ng"] and "FAILED" in rows["gone"] and "FAILED" not in rows["pb"] + rows["mz"]
    assert not checksum_drift(cli, tenant_sql, env, "pb") and not checksum_drift(cli, tenant_sql, env, "mz")
    assert history(db, "ng") == [SEED]
    assert SPECIAL_PASSWORD not in result.output


def test_accept_changes_fail_fast_stops_before_the_next_schema(cli, db, tenant_sql):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", "--schema", "pb", env=env).exit_code == 0
    (tenant_sql / f"{STATE}.sql").write_text(RICH + "-- changed\n")
    result = cli("sql", "accept-changes", STATE, "--sql-dir", tenant_sql, "--fail-fast", "--schema", "gone",
                 "--schema", "pb", env=env)
    assert "not run (--fail-fast): pb" in one_error_line(result)
    assert checksum_drift(cli, tenant_sql, env, "pb"), "pb was not touched"


def _drift_by_hand(db, schema: str) -> None:
    db.query(f'CREATE TABLE "{schema}".made_by_hand (id int)')


def test_accept_drift_per_schema_each_under_its_own_lock_in_parallel(cli, db, tenant_sql):
    env = {**db.db_env(), "SCHEMA_NAME": "pb,mz,ng"}
    assert cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", env=env).exit_code == 0
    for schema in ("pb", "mz", "ng"):
        _drift_by_hand(db, schema)
    from migrator.pg_lock import lock_key

    holder = psycopg2.connect(db.url)  # another runner busy in mz: mz waits for its lock, then fails alone
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (lock_key("mz"),))
        result = cli("sql", "accept-drift", "--sql-dir", tenant_sql, "--parallel", "3", "--lock-timeout", "1", env=env)
    finally:
        holder.close()
    error = one_error_line(result)
    assert result.exit_code == 4 and "accept-drift failed in 1 of 3 schema(s): mz" in error, result.output
    assert "[mz] FAILED: a session holds the migration lock on" in result.stderr
    for schema in ("pb", "ng"):
        accepted = [line for line in result.stdout.splitlines() if line.startswith(f"[{schema}] accepted:")]
        assert accepted == [f"[{schema}] accepted: column {schema}.made_by_hand.id added",
                            f"[{schema}] accepted: table {schema}.made_by_hand added"], "its own schema's only"
        assert f"[{schema}] schema: recorded as it is now" in result.stdout
    status = cli("status", "--sql-dir", tenant_sql, "--json", env=env)
    drift = {s: v["schema"]["drifted"] for s, v in json.loads(status.stdout)["schemas"].items()}
    assert not drift["pb"] and not drift["ng"] and drift["mz"], drift
    assert cli("sql", "accept-drift", "--sql-dir", tenant_sql, "--schema", "mz", env=env).exit_code == 0


def test_break_lock_per_schema_removes_each_schemas_row_and_fails_alone_where_missing(cli, owned, tenant_sql):
    db, env = owned
    assert cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", "--schema", "pb", "--schema", "mz",
               env=env).exit_code == 0
    for schema in ("pb", "mz"):
        db.query(f'INSERT INTO "{schema}".yoyo_lock (locked, ctime, pid) VALUES (1, now(), 4242)')
    result = cli("sql", "break-lock", "--sql-dir", tenant_sql, env={**env, "SCHEMA_NAME": "pb,gone,mz"})
    assert "break-lock failed in 1 of 3 schema(s): gone" in one_error_line(result)
    for schema in ("pb", "mz"):
        assert re.search(rf"\[{schema}\] removed the migration lock on .+ schema {schema}", result.stdout)
        assert db.query(f'SELECT count(*) FROM "{schema}".yoyo_lock') == [(0,)]
    assert SPECIAL_PASSWORD not in result.output


def test_plan_impact_still_refuses_several_schemas(cli, db, tenant_sql):
    result = cli("plan", "--impact", "--sql-dir", tenant_sql, env={**db.db_env(), "SCHEMA_NAME": "pb,mz"})
    assert result.exit_code == 2 and "works on one schema at a time" in one_error_line(result)
    assert "pass --schema NAME" in result.stderr


# --- 2. adopt per tenant ---------------------------------------------------------------------------------------


def _build_by_hand(db, schema: str, *files: Path) -> None:
    """What a tenant's schema holds when another tool (Flyway's loop) built it: the files run with its search_path."""
    db.query(f'CREATE SCHEMA "{schema}" AUTHORIZATION {PASSWORD_USER}')
    for path in files:
        db.query(f'SET ROLE {PASSWORD_USER}; SET search_path TO "{schema}", public;\n' + path.read_text())


def test_adopt_per_tenant_compares_each_schema_with_the_history_built_as_a_tenant_and_marks_with_yes(
        cli, owned, tenant_sql):
    db, env = owned
    seed, state = tenant_sql / f"{SEED}.sql", tenant_sql / f"{STATE}.sql"
    _build_by_hand(db, "pb", seed)
    _build_by_hand(db, "mz", seed, state)
    _build_by_hand(db, "ng", seed)
    db.query("ALTER TABLE ng.hcm_report_metadata DROP COLUMN tenant_id")  # matches no prefix
    env = {**env, "SCHEMA_NAME": "pb,mz,ng,gone"}

    shown = cli("sql", "adopt", "--sql-dir", tenant_sql, "--json", env=env)
    assert "adopt failed in 2 of 4 schema(s): ng, gone" in one_error_line(shown)
    schemas = json.loads(shown.stdout)["schemas"]
    assert schemas["pb"]["report"]["matched"] == SEED and schemas["pb"]["report"]["to_mark"] == [SEED]
    assert schemas["mz"]["report"]["matched"] == STATE and schemas["mz"]["report"]["to_mark"] == [SEED, STATE]
    assert schemas["ng"]["state"] == "FAILED" and schemas["ng"]["report"]["closest"] == SEED
    assert schemas["ng"]["report"]["changes"] == ["column ng.hcm_report_metadata.tenant_id dropped",
                                                  "comment on column ng.hcm_report_metadata.tenant_id dropped"]
    assert "schema gone does not exist" in schemas["gone"]["error"]
    assert not db.query("SELECT 1 FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid "
                        "WHERE c.relname = '_yoyo_migration'"), "without --yes nothing is written"

    marked = cli("sql", "adopt", "--sql-dir", tenant_sql, "--yes", "--parallel", "2",
                 env={**env, "SCHEMA_NAME": "pb,mz"})
    assert marked.exit_code == 0, marked.output
    assert f"[pb] adopt: marked {SEED} applied" in marked.stdout
    assert f"[mz] adopt: marked {SEED}, {STATE} applied" in marked.stdout
    assert history(db, "pb") == [SEED] and history(db, "mz") == [SEED, STATE]
    assert SPECIAL_PASSWORD not in shown.output + marked.output
    # each tenant now migrates on from where it was: pb gets 0002 only, mz nothing; no drift recorded
    migrated = cli("migrate", "--sql-dir", tenant_sql, env={**env, "SCHEMA_NAME": "pb,mz"})
    assert migrated.exit_code == 0, migrated.output
    assert f"[pb] applied {STATE}" in migrated.stdout and "[mz] applied" not in migrated.stdout
    status = json.loads(cli("status", "--sql-dir", tenant_sql, "--json", env={**env, "SCHEMA_NAME": "pb,mz"}).stdout)
    assert [s["schema"]["drifted"] for s in status["schemas"].values()] == [False, False]


def test_adopt_per_tenant_refuses_files_reaching_outside_the_tenant_before_any_scratch(cli, db, tenant_sql):
    add_migration(tenant_sql, "0003_elsewhere", "SET search_path TO public;\n")
    result = cli("sql", "adopt", "--sql-dir", tenant_sql, "--schema", "pb", env=db.db_env())
    assert result.exit_code == 2 and "0003_elsewhere.sql:1: sets search_path" in one_error_line(result)


# --- 3. verify as a tenant's run ---------------------------------------------------------------------------

# Runs only where a tenant's run runs it: in a schema other than public, found first on the search_path.
TENANT_ONLY = """\
DO $$ BEGIN
    IF pg_catalog.current_schema() = 'public' THEN
        RAISE EXCEPTION 'not in a tenant schema (current_schema %)', pg_catalog.current_schema();
    END IF;
END $$;
CREATE TABLE per_tenant (schema_name text DEFAULT pg_catalog.current_schema());
"""


def test_verify_with_schemas_runs_the_proof_once_in_a_tenant_named_schema(cli, sql_dir):
    add_migration(sql_dir, "0002_tenant_only", TENANT_ONLY, "DROP TABLE per_tenant;\n")
    plain = cli("sql", "verify", "--sql-dir", sql_dir)
    assert plain.exit_code == 1 and "not in a tenant schema (current_schema public)" in one_error_line(plain)
    result = cli("sql", "verify", "--sql-dir", sql_dir, "--json", env={"SCHEMA_NAME": "pb,mz"})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == "pb" and report["ok"] and [s["outcome"] for s in report["steps"]] == ["ok", "ok"]
    text = cli("sql", "verify", "--sql-dir", sql_dir, "--schema", "ng", "--schema", "pb")
    assert text.exit_code == 0 and "in schema ng as a tenant's run (search_path = ng, public" in text.stdout


def test_verify_with_schemas_refuses_a_rollback_reaching_outside_the_tenant(cli, sql_dir):
    add_migration(sql_dir, "0002_fine", "CREATE TABLE fine (id int);\n",
                  "-- undo\nALTER TABLE fine SET SCHEMA public;\nDROP TABLE public.fine;\n")
    result = cli("sql", "verify", "--sql-dir", sql_dir, "--schema", "pb")
    error = one_error_line(result)
    assert result.exit_code == 2 and "0002_fine.rollback.sql:2: moves an object with SET SCHEMA" in error
    assert "nothing was run" in error
    assert cli("sql", "verify", "--sql-dir", sql_dir).exit_code == 0, "without schemas it is a single-schema file"


# --- 4. a function's own SET search_path in tenant files ---------------------------------------------------

# FROM CURRENT captures the creating session's search_path: each tenant's copy reads its own table.
OWN_PATH = """\
CREATE TABLE tenant_name (name text);
INSERT INTO tenant_name SELECT pg_catalog.current_schema();
CREATE FUNCTION whose_table() RETURNS text LANGUAGE sql STABLE
    -- never SET search_path = public here
    SET "search_path" FROM CURRENT
    AS $$ SELECT name FROM tenant_name $$;
CREATE FUNCTION add_one(i int) RETURNS int LANGUAGE sql IMMUTABLE
    SET search_path = PG_Catalog, 'pg_temp' AS 'SELECT i OPERATOR(pg_catalog.+) 1';
CREATE PROCEDURE touch() LANGUAGE sql AS $$ UPDATE tenant_name SET name = name $$;
ALTER PROCEDURE touch() SET search_path FROM CURRENT;
CREATE FUNCTION body_only() RETURNS void LANGUAGE plpgsql AS $😀tag$
BEGIN
    -- SET search_path = public in a comment of the body is no mention (a statement would be: test_tenants_files)
END $😀tag$;
"""


def test_a_function_with_search_path_from_current_reads_each_tenants_own_table(cli, db, sql_dir):
    add_migration(sql_dir, "0002_own_path", OWN_PATH)
    result = cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env={**db.db_env(), "SCHEMA_NAME": "pb,mz"})
    assert result.exit_code == 0, result.output
    # called from a session whose search_path is neither tenant's
    assert db.query("SELECT pb.whose_table(), mz.whose_table(), pb.add_one(41)") == [("pb", "mz", 42)]
    assert db.query("SELECT proconfig FROM pg_proc WHERE proname = 'whose_table' ORDER BY 1") == [
        (["search_path=mz,public"],), (["search_path=pb,public"],)]
    assert cli("sql", "lint", "--sql-dir", sql_dir, "--schema", "pb").stdout.count("tenant-outside") == 0


@pytest.mark.parametrize("sql, line, names", [
    ("CREATE TABLE t (id int);\nCREATE FUNCTION f() RETURNS int LANGUAGE sql\n    SET search_path = public\n"
     "    AS $$ SELECT count(*)::int FROM t $$;\n", 3, "public"),
    ("create or replace function f() returns int language sql as 'select 1'\n"
     "set search_path to pg_catalog, public, pg_temp;\n", 2, "public"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $f$ SELECT 1 $f$ SET /* c */ search_path = 'public';\n", 1,
     "public"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n"
     "ALTER FUNCTION f() SET search_path = \"$user\", public;\n", 2, "$user, public"),
    ("CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$;\nALTER ROUTINE p() SET search_path TO mz;\n", 2, "mz"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = \"PG_CATALOG\" AS $$ SELECT 1 $$;\n", 1,
     "PG_CATALOG"),
])
def test_a_function_whose_own_search_path_names_another_schema_is_refused_before_any_schema_runs(
        cli, db, sql_dir, sql, line, names):
    env = {**db.db_env(), "SCHEMA_NAME": "pb,mz"}
    assert cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env=env).exit_code == 0
    add_migration(sql_dir, "0002_own_path", sql)
    result = cli("migrate", "--sql-dir", sql_dir, env=env)
    error = one_error_line(result)
    assert result.exit_code == 2, result.output
    assert f"0002_own_path.sql:{line}: gives a function its own SET search_path naming {names}," in error
    assert "SET search_path FROM CURRENT (it captures the tenant's search_path" in error and "nothing was run" in error
    assert history(db, "pb") == history(db, "mz") == [SEED]
    assert not db.query("SELECT 1 FROM pg_proc WHERE proname IN ('f', 'p')")
    lint = cli("sql", "lint", "--sql-dir", sql_dir, "--schema", "pb")
    assert lint.exit_code == 1 and f"0002_own_path.sql:{line}:1: tenant-outside: gives a function" in lint.stdout
    # without schemas the same file is a single-schema run's business: it runs
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
