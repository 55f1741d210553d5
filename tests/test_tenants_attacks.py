"""The hostile report on tenant schemas (issue 16), each finding replayed on the real PostgreSQL.

Runs go through the CLI, and where processes matter (two runners at once, SIGTERM) through real
runner subprocesses.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from conftest import PROJECT_ROOT, add_migration, applied, one_error_line
from test_tenants import history, relations, summary_rows

SEED = "0001_create_hcm_report_metadata"


def runner(db, *args, env: dict | None = None, cwd: Path) -> subprocess.Popen:
    full = {"PATH": os.environ["PATH"], "HOME": str(cwd), **db.db_env(), **(env or {})}
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), *map(str, args)], cwd=cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_sleeps(db, count: int = 1, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while db.poll("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%%' "
                  "AND state = 'active'")[0][0] < count:
        assert time.monotonic() < deadline, "the migrations never reached their pg_sleep"
        time.sleep(0.05)


# --- 1: a plain run never takes a tenant's history ----------------------------------------------


def test_a_plain_run_after_tenant_runs_keeps_its_own_history_in_public(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--schema", "b", "--create-schemas",
               env=db.db_env()).exit_code == 0
    add_migration(sql_dir, "0002_t4", "CREATE TABLE t4 (id int);\n")
    plain = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert plain.exit_code == 0, plain.output
    assert applied(db) == [SEED, "0002_t4"] and "t4" in relations(db, "public")
    assert history(db, "a") == history(db, "b") == [SEED], "the tenants' histories are untouched"
    again = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", env=db.db_env())
    assert again.exit_code == 0 and history(db, "a") == [SEED, "0002_t4"] and "t4" in relations(db, "a")
    # the plain run's connection knows the tenants (for the schema description to leave them out)
    from migrator import postgres
    from migrator.settings import resolve_postgres
    from migrator.env import Env
    from migrator.targets import PostgresOptions

    target = resolve_postgres(PostgresOptions(), Env(environ=db.db_env(), dotenv={}))
    with postgres.connect(target, read_only=False) as backend:
        assert backend.bookkeeping_schema == "public"
        assert backend.execute("SELECT current_setting('hcm.tenant_schemas')").fetchone()[0] == "a,b"
    # ... so the plain run's schema description leaves the tenants out: no drift, and --strict runs
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=db.db_env())
    assert status.exit_code == 0 and "schema: as recorded" in status.stdout, status.output
    add_migration(sql_dir, "0003_t5", "CREATE TABLE t5 (id int);\n")
    assert cli("migrate", "--strict", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0


# --- 2: a plain run and SCHEMA_NAME=public share one lock ----------------------------------------

COUNTED = "INSERT INTO counter VALUES (1);\nSELECT pg_sleep(2);\n"


def test_a_plain_run_and_schema_name_public_never_run_a_migration_twice(db, sql_dir, tmp_path):
    add_migration(sql_dir, "0002_counter", "CREATE TABLE counter (n int);\n")
    add_migration(sql_dir, "0003_counted", COUNTED)
    plain = runner(db, "migrate", "--lock-timeout", "30", "--sql-dir", sql_dir, cwd=tmp_path)
    wait_for_sleeps(db)
    public = runner(db, "migrate", "--lock-timeout", "30", "--sql-dir", sql_dir, env={"SCHEMA_NAME": "public"},
                    cwd=tmp_path)
    outputs = [p.communicate(timeout=60) for p in (plain, public)]
    assert [plain.returncode, public.returncode] == [0, 0], outputs
    assert db.query("SELECT count(*) FROM public.counter") == [(1,)]
    assert db.query("SELECT count(*) FROM public._yoyo_log WHERE migration_id = '0003_counted' "
                    "AND operation = 'apply'") == [(1,)]
    assert "cleared the migration lock" not in outputs[1][1]


def test_a_live_runners_yoyo_lock_row_is_waited_for_never_broken(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    alive = psycopg2.connect(db.url, application_name="hcm-db-migrations otherhost:4242")
    try:
        db.query("INSERT INTO public.yoyo_lock (locked, ctime, pid, runner) VALUES (1, now() AT TIME ZONE 'UTC', 4242, "
                 "'hcm-db-migrations otherhost:4242')")  # (as that runner writes it: its runner column its name)
        result = cli("migrate", "--sql-dir", sql_dir, "--lock-timeout", "1", env=db.db_env())
        line = one_error_line(result)
        assert "held by a live runner (pid 4242" in line and result.exit_code != 0
        assert db.query("SELECT pid FROM public.yoyo_lock") == [(4242,)]
    finally:
        alive.close()
    # a session of the same pid that connected after the row was written (another pod) is not its runner
    later = psycopg2.connect(db.url, application_name="hcm-db-migrations otherhost:4242")
    db.query("UPDATE public.yoyo_lock SET ctime = now() AT TIME ZONE 'UTC' - interval '1 minute'")
    try:
        freed = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    finally:
        later.close()
    assert freed.exit_code == 0 and "cleared the migration lock left by a runner that died (pid 4242" in freed.stderr


# --- 3, 4: a tenant's SQL that reaches outside its schema is refused before anything runs --------


@pytest.mark.parametrize("sql, line, complaint", [
    ("CREATE TABLE ok1 (id int);\nSET search_path TO b;\nCREATE TABLE t (id int);\n", 2, "sets search_path"),
    ("CREATE TABLE ok1 (id int);\n-- to public\nset local search_path = public;\n", 3, "sets search_path"),
    ("SELECT pg_catalog.set_config('search_path', 'b', false);\n", 1, "sets search_path"),
    ("DO $$ BEGIN PERFORM set_config( 'search_path', 'b', true); END $$;\n", 1, "sets search_path"),
    ("CREATE TABLE ok1 (id int);\nALTER TABLE ok1 SET SCHEMA public;\n", 2, "SET SCHEMA"),
    ("CREATE EXTENSION IF NOT EXISTS citext;\n", 1, "SCHEMA public"),
])
def test_a_tenant_migration_reaching_another_schema_is_refused_naming_file_and_line(cli, db, sql_dir, sql, line,
                                                                                    complaint):
    add_migration(sql_dir, "0002_elsewhere", sql)
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--schema", "b", "--create-schemas",
                 env=db.db_env())
    error = one_error_line(result)
    assert result.exit_code == 2 and f"0002_elsewhere.sql:{line}: " in error and complaint in error, error
    assert "nothing was run" in error
    assert not db.query("SELECT 1 FROM pg_namespace WHERE nspname IN ('a', 'b')"), "refused before any schema"
    assert "tenant-outside" in cli("sql", "lint", "--sql-dir", sql_dir, "--schema", "a").stdout


def test_an_extension_in_public_and_a_search_path_in_a_single_schema_run_are_fine(cli, db, sql_dir):
    add_migration(sql_dir, "0002_ext", "CREATE EXTENSION IF NOT EXISTS plpgsql SCHEMA pg_catalog;\n")
    tenants = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--create-schemas", env=db.db_env())
    assert tenants.exit_code == 0, tenants.output
    # Without schemas a file may set search_path (a pg_dump baseline does): it runs as it always did.
    add_migration(sql_dir, "0003_dumped", "SELECT pg_catalog.set_config('search_path', '', false);\n"
                                          "CREATE TABLE public.dumped (id int);\n")
    plain = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert plain.exit_code == 0, plain.output
    assert "dumped" in relations(db, "public")


# --- 7: SIGTERM over schemas -------------------------------------------------------------------

SLOW = "CREATE TABLE before_sleep (id int);\nSELECT pg_sleep(3);\nCREATE TABLE after_sleep (id int);\n"


@pytest.mark.parametrize("parallel", [1, 2])
def test_sigterm_stops_a_run_over_schemas_and_prints_the_summary(db, sql_dir, tmp_path, parallel):
    add_migration(sql_dir, "0002_slow", SLOW)
    proc = runner(db, "migrate", "--sql-dir", sql_dir, "--create-schemas", "--parallel", parallel,
                  env={"SCHEMA_NAME": "a,b,c,d"}, cwd=tmp_path)
    wait_for_sleeps(db, parallel)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    rows = summary_rows(stdout)
    assert list(rows) == ["a", "b", "c", "d"], stdout
    interrupted = ["a", "b"][:parallel]
    for schema in interrupted:
        assert rows[schema][2] == "FAILED" and "after_sleep" not in relations(db, schema)
        assert history(db, schema) == [SEED], "0002 rolled back in the interrupted schema"
    for schema in ("c", "d"):
        assert rows[schema][2:4] == ["not", "run"] and relations(db, schema) == set()
    last = stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: migrate interrupted by SIGTERM: stopped in " + ", ".join(interrupted)), last
    assert "not run: " in last and last.endswith("run migrate again")


# --- 5, 6, 8, 9, 16: the platform's settings ---------------------------------------------------


def _jdbc(db, query: str) -> str:
    return f"jdbc:postgresql:///{db.name}?host={db.server.host}&port={db.server.port}&{query}"


def test_jdbc_current_schema_is_one_schema_with_public_on_its_search_path(cli, db, sql_dir):
    result = cli("migrate", "--sql-dir", sql_dir, "--create-schemas", "--database-url",
                 _jdbc(db, "currentSchema=pb,public&user=postgres"), env={})
    assert result.exit_code == 0, result.output
    assert history(db, "pb") == [SEED] and relations(db, "public") == set()
    two = cli("config", "--database-url", _jdbc(db, "currentSchema=pb,mz"), env={})
    assert two.exit_code == 2 and "names schema pb and also mz" in one_error_line(two)
    assert "SCHEMA_NAME=a,b" in two.stderr


def test_a_yoyo_schema_parameter_is_refused(cli, db):
    result = cli("config", "--database-url", db.url + "&schema=pb", env={})
    assert result.exit_code == 2 and "sets schema=" in one_error_line(result) and "--schema" in result.stderr


def test_with_db_url_the_runners_own_credentials_come_before_flyways(cli, db, password_role, tmp_path):
    from conftest import SPECIAL_PASSWORD

    url = _jdbc(db, "connect_timeout=5")
    password_file = tmp_path / "pw"
    password_file.write_text(SPECIAL_PASSWORD + "\n")
    env = {"DB_URL": url, "DB_USER": password_role, "DB_PASSWORD_FILE": str(password_file),
           "FLYWAY_USER": "nobody", "FLYWAY_PASSWORD": "wrong"}
    config = cli("config", env=env)
    assert re.search(rf"user\s+{password_role}\s+DB_USER \(environment\)", config.stdout), config.stdout
    assert re.search(r"password\s+\*\*\*\s+DB_PASSWORD_FILE \(environment\)", config.stdout)
    assert cli("status", env=env).exit_code in (0, 1)  # connects as DB_USER (status exit 1: pending)
    bare = cli("config", env={"DB_URL": url})
    assert not re.search(r"user\s+None", bare.stdout) and re.search(r"user\s+\S+\s+.*libpq default", bare.stdout), bare.stdout


def test_pgjdbc_parameters_are_mapped_dropped_with_a_note_or_refused(cli, db, sql_dir):
    url = _jdbc(db, "user=postgres&stringtype=unspecified&ApplicationName=egov&loginTimeout=7&tcpKeepAlive=true")
    result = cli("status", "--sql-dir", sql_dir, "--database-url", url, env={})
    assert result.exit_code in (0, 1) and "invalid" not in result.output, result.output
    assert "JDBC-only parameter(s) stringtype not used by libpq" in result.stderr
    unknown = cli("config", "--database-url", _jdbc(db, "frobnicate=1&stringtype=x"), env={})
    line = one_error_line(unknown)
    assert unknown.exit_code == 2 and "sets frobnicate, which neither libpq" in line
    from migrator.settings import jdbc_params

    params = {"ssl": "true", "ApplicationName": "egov", "loginTimeout": "7", "tcpKeepAlive": "true", "sslmode": "x"}
    jdbc_params(params, "DB_URL")
    assert params == {"sslmode": "x", "application_name": "egov", "connect_timeout": "7", "keepalives": "1"}
    params = {"ssl": "true"}
    jdbc_params(params, "DB_URL")
    assert params == {"sslmode": "verify-full"}


def test_schema_index_must_be_ascii_digits(cli, db):
    result = cli("config", env={**db.db_env(), "SCHEMA_NAME": "a,b,c", "SCHEMA_COUNT": "3", "SCHEMA_INDEX": "²"})
    assert result.exit_code == 2 and "'²' is not an index of the 3 schemas" in one_error_line(result)
    count = cli("config", env={**db.db_env(), "SCHEMA_NAME": "a,b,c", "SCHEMA_COUNT": "³", "SCHEMA_INDEX": "0"})
    assert count.exit_code == 2 and "Traceback" not in count.output


# --- 10..15 ------------------------------------------------------------------------------------


def test_plan_over_schemas_fed_to_psql_lands_each_section_in_its_schema(cli, db, sql_dir):
    from conftest import _bin

    db.query("CREATE SCHEMA pa; CREATE SCHEMA pb")
    plan = cli("plan", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_NAME": "pa,pb"})
    assert plan.exit_code == 0, plan.output
    assert plan.stdout.count('SET search_path TO "pa", public;') == 1
    sql = "\n".join(line for line in plan.stdout.splitlines() if not line.startswith(("PostgreSQL:", "MongoDB:")))
    done = subprocess.run([_bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", db.url], input=sql,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "hcm_report_metadata" in relations(db, "pa") and "hcm_report_metadata" in relations(db, "pb")
    assert relations(db, "public") == set()


def test_lint_flags_public_relations_followed_by_a_parenthesis(cli, sql_dir):
    add_migration(sql_dir, "0002_q", 'CREATE TABLE public.t1(id int);\nINSERT INTO public.t2(id) VALUES (1);\n'
                                     'CREATE TABLE "public"."T3"(id int);\nCREATE INDEX i ON public.t2(x);\n'
                                     "SELECT public.uuid_generate_v4(), public.f (1);\n")
    result = cli("sql", "lint", "--sql-dir", sql_dir, "--schema", "pb")
    flagged = [line.split(": ")[0].rsplit(":", 1)[0].rsplit("/", 1)[1] for line in result.stdout.splitlines()
               if "tenant-schema" in line]
    assert flagged == ["0002_q.sql:1", "0002_q.sql:2", "0002_q.sql:3", "0002_q.sql:4"], result.stdout


def test_a_tenants_status_lists_only_its_own_invalid_indexes(cli, db, sql_dir):
    env = {**db.db_env(), "SCHEMA_NAME": "ia,ib"}
    assert cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env=env).exit_code == 0
    db.query("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ib.idx_hcm_report_name'::regclass")
    import json

    schemas = json.loads(cli("status", "--sql-dir", sql_dir, "--json", env=env).stdout)["schemas"]
    assert schemas["ia"]["invalid_indexes"] == [] and schemas["ib"]["invalid_indexes"] == ["ib.idx_hcm_report_name"]


def test_a_missing_schema_says_it_does_not_exist(cli, db, sql_dir):
    result = cli("sql", "accept-drift", "--sql-dir", sql_dir, "--schema", "gone", env=db.db_env())
    assert "accept-drift failed in 1 of 1 schema(s): gone" in one_error_line(result)
    line = next(line for line in result.stderr.splitlines() if line.startswith("[gone] FAILED: "))
    assert "schema gone does not exist" in line and "--create-schemas" in line and "GRANT" not in line


def test_the_summary_shows_what_committed_in_a_failed_schema(cli, db, sql_dir):
    add_migration(sql_dir, "0002_fine", "CREATE TABLE fine (id int);\n")
    add_migration(sql_dir, "0003_clash", "CREATE TABLE clash (id int);\n")
    db.query("CREATE SCHEMA fa; CREATE SCHEMA fb; CREATE TABLE fb.clash (id int)")
    result = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_NAME": "fa,fb"})
    assert result.exit_code == 1
    rows = summary_rows(result.stdout)
    assert rows["fa"][:2] == ["3", "0"] and rows["fb"][:3] == ["2", "1", "FAILED"], result.stdout
