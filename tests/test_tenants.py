"""A DIGIT central instance: the same migrations per tenant schema, on the real PostgreSQL.

Each schema gets its own history (yoyo's tables, checksums, the schema record) and every migration's
session has search_path = the schema, then public. Also the platform's settings: JDBC URLs, DB_URL,
SCHEMA_NAME, SCHEMA_TABLE, FLYWAY_USER / FLYWAY_PASSWORD.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import SPECIAL_PASSWORD, _bin

# A second migration with what tenants' SQL holds: a type, a sequence, a function and a trigger that
# name the table unqualified, a view; and an extension's function (pg_catalog's) called qualified.
RICH = """\
CREATE TYPE report_state AS ENUM ('queued', 'done');
CREATE SEQUENCE report_batch_seq START 100;
ALTER TABLE hcm_report_metadata ADD COLUMN state report_state NOT NULL DEFAULT 'queued';
CREATE FUNCTION touch_report() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_at := pg_catalog.now();
    RETURN NEW;
END $$;
CREATE TRIGGER hcm_report_touch BEFORE UPDATE ON hcm_report_metadata FOR EACH ROW EXECUTE FUNCTION touch_report();
CREATE VIEW report_counts AS SELECT campaign_number, count(*) AS n FROM hcm_report_metadata GROUP BY 1;
"""
RICH_ROLLBACK = """\
DROP VIEW report_counts;
DROP TRIGGER hcm_report_touch ON hcm_report_metadata;
DROP FUNCTION touch_report();
ALTER TABLE hcm_report_metadata DROP COLUMN state;
DROP SEQUENCE report_batch_seq;
DROP TYPE report_state;
"""


@pytest.fixture
def tenant_sql(sql_dir: Path) -> Path:
    (sql_dir / "0002_report_state.sql").write_text(RICH)
    (sql_dir / "0002_report_state.rollback.sql").write_text(RICH_ROLLBACK)
    return sql_dir


def history(db, schema: str) -> list[str]:
    return [r[0] for r in db.query(f'SELECT migration_id FROM "{schema}"._yoyo_migration ORDER BY migration_id')]


def relations(db, schema: str) -> set[str]:
    return {r[0] for r in db.query("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                   "WHERE n.nspname = %s AND c.relkind IN ('r', 'v', 'S')", (schema,))}


def summary_rows(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows: schema -> its columns."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("schema "))
    rows = {}
    for line in lines[start + 1:]:
        if line.startswith("PostgreSQL:"):
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def test_three_schemas_each_get_their_own_history_and_a_second_run_is_a_no_op(cli, db, tenant_sql):
    env = {**db.db_env(), "SCHEMA_NAME": "pb,mz,ng"}
    first = cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", env=env)
    assert first.exit_code == 0, first.output
    for schema in ("pb", "mz", "ng"):
        assert history(db, schema) == ["0001_create_hcm_report_metadata", "0002_report_state"]
        assert {"hcm_report_metadata", "report_counts", "report_batch_seq", "_yoyo_migration",
                "_hcm_migration_checksum", "_hcm_schema_snapshot"} <= relations(db, schema)
        assert f"[{schema}] applied 0002_report_state" in first.stdout
    assert relations(db, "public") == set(), "nothing lands in public: no history, no tables"
    assert {k: v[:2] for k, v in summary_rows(first.stdout).items()} == {s: ["2", "0"] for s in ("pb", "mz", "ng")}

    again = cli("migrate", "--sql-dir", tenant_sql, env=env)
    assert again.exit_code == 0, again.output
    assert "applied 0" not in again.stdout and "DRIFT" not in again.output
    assert {k: v[:2] for k, v in summary_rows(again.stdout).items()} == {s: ["0", "0"] for s in ("pb", "mz", "ng")}
    assert again.stdout.count("up to date (2 of 2 migrations applied)") == 3
    # The trigger's function found the tenant's table through search_path, in the tenant's schema.
    db.query("INSERT INTO mz.hcm_report_metadata (dag_run_id, dag_name, campaign_number, report_name, "
             "trigger_frequency, trigger_date, filestore_id) VALUES ('r', 'd', 'c', 'n', 'daily', now(), 'f')")
    assert db.query("SELECT n FROM mz.report_counts") == [(1,)]
    assert db.query("SELECT count(*) FROM pb.report_counts") == [(0,)]


def test_a_failing_schema_leaves_the_others_migrated_and_the_run_fails_naming_it(cli, db, tenant_sql):
    db.query("CREATE SCHEMA pb; CREATE SCHEMA mz; CREATE SCHEMA ng; CREATE TABLE mz.report_counts (x int)")
    result = cli("migrate", "--sql-dir", tenant_sql, env={**db.db_env(), "SCHEMA_NAME": "pb,mz,ng"})
    assert result.exit_code == 1, result.output
    assert history(db, "pb") == history(db, "ng") == ["0001_create_hcm_report_metadata", "0002_report_state"]
    assert history(db, "mz") == ["0001_create_hcm_report_metadata"]  # 0002 rolled back in mz alone
    rows = summary_rows(result.stdout)
    assert rows["mz"][2] == "FAILED" and rows["pb"][:2] == rows["ng"][:2] == ["2", "0"]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: migrate failed in 1 of 3 schema(s): mz;"), error
    assert re.search(r"\[mz\] FAILED: .*0002_report_state.*report_counts", result.stderr), result.stderr
    assert "MongoDB: skipped: a schema failed" in result.stderr


def test_fail_fast_stops_at_the_first_failure_and_says_which_schemas_did_not_run(cli, db, tenant_sql):
    db.query("CREATE SCHEMA a1; CREATE SCHEMA a2; CREATE SCHEMA a3; CREATE TABLE a1.report_counts (x int)")
    result = cli("migrate", "--sql-dir", tenant_sql, "--fail-fast", env={**db.db_env(), "SCHEMA_NAME": "a1,a2,a3"})
    assert result.exit_code == 1
    assert relations(db, "a2") == relations(db, "a3") == set()
    assert "not run (--fail-fast): a2, a3" in result.stderr
    assert summary_rows(result.stdout)["a3"][2:4] == ["not", "run"]


def test_a_missing_schema_is_an_error_for_it_alone_unless_asked_to_create_it(cli, db, tenant_sql):
    db.query("CREATE SCHEMA here")
    result = cli("migrate", "--sql-dir", tenant_sql, "--schema", "here", "--schema", "gone", env=db.db_env())
    assert result.exit_code == 1
    assert history(db, "here") == ["0001_create_hcm_report_metadata", "0002_report_state"]
    assert "[gone] FAILED: schema gone does not exist on" in result.stderr
    assert "pass --create-schemas" in result.stderr
    assert not db.query("SELECT 1 FROM pg_namespace WHERE nspname = 'gone'")


def test_plan_status_and_rollback_per_schema(cli, db, tenant_sql):
    env = {**db.db_env(), "SCHEMA_NAME": "pb,mz"}
    assert cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", env=env).exit_code == 0
    rolled = cli("sql", "rollback", "--sql-dir", tenant_sql, "--schema", "mz", env=db.db_env())
    assert rolled.exit_code == 0, rolled.output
    assert history(db, "mz") == ["0001_create_hcm_report_metadata"] and "report_counts" not in relations(db, "mz")
    assert history(db, "pb") == ["0001_create_hcm_report_metadata", "0002_report_state"]

    status = cli("status", "--sql-dir", tenant_sql, "--json", env=env)
    assert status.exit_code == 0, status.output
    schemas = json.loads(status.stdout)["schemas"]
    assert {name: (s["applied"], s["pending"]) for name, s in schemas.items()} == {"pb": (2, 0), "mz": (1, 1)}
    assert not schemas["pb"]["schema"]["drifted"] and not schemas["mz"]["schema"]["drifted"]
    gate = cli("status", "--sql-dir", tenant_sql, "--exit-code", env=env)
    assert gate.exit_code == 1 and "== schema mz" in gate.stdout

    plan = cli("plan", "--sql-dir", tenant_sql, "--json", env=env)
    assert plan.exit_code == 0, plan.output
    pending = {name: [m["id"] for m in p["pending"]] for name, p in json.loads(plan.stdout)["schemas"].items()}
    assert pending == {"pb": [], "mz": ["0002_report_state"]}
    assert history(db, "mz") == ["0001_create_hcm_report_metadata"], "plan writes nothing"

    text = cli("plan", "--sql-dir", tenant_sql, env=env)
    assert "-- schema mz (for psql: PGOPTIONS='-c search_path=mz,public')" in text.stdout
    assert "CREATE TYPE report_state" in text.stdout.split("-- schema mz")[1]


def _dump(db, schema: str) -> list[str]:
    """The schema's objects from pg_dump, names unqualified, without bookkeeping and dump chatter."""
    done = subprocess.run([_bin("pg_dump"), "--schema-only", "--no-owner", "--restrict-key=fixed", "-n", schema,
                           "-T", "*._yoyo_*", "-T", "*.yoyo_lock", "-T", "*._hcm_*", "-d", db.url],
                          capture_output=True, text=True, check=True)
    lines = []
    for line in done.stdout.splitlines():
        if not line or line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\", "CREATE SCHEMA",
                                         "ALTER SCHEMA", "COMMENT ON SCHEMA")):
            continue
        lines.append(line.replace(f"{schema}.", "SCHEMA."))
    return lines


def test_each_schema_gets_exactly_what_a_single_schema_run_gives_public(cli, make_db, tenant_sql):
    single, tenants = make_db(), make_db()
    assert cli("migrate", "--sql-dir", tenant_sql, env=single.db_env()).exit_code == 0
    done = cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", env={**tenants.db_env(), "SCHEMA_NAME": "t_a,t_b"})
    assert done.exit_code == 0, done.output
    expected = _dump(single, "public")
    assert any("CREATE TRIGGER hcm_report_touch" in line for line in expected)
    assert _dump(tenants, "t_a") == expected
    assert _dump(tenants, "t_b") == expected


def test_parallel_over_twenty_schemas_matches_sequential_without_lock_errors(cli, make_db, tenant_sql):
    names = ",".join(f"s{i:02d}" for i in range(20))
    sequential, parallel = make_db(), make_db()
    one = cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", env={**sequential.db_env(), "SCHEMA_NAME": names})
    four = cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", "--parallel", "4",
               env={**parallel.db_env(), "SCHEMA_NAME": names})
    assert one.exit_code == 0 and four.exit_code == 0, four.output
    assert "lock" not in four.output.lower()
    for i in range(20):
        schema = f"s{i:02d}"
        assert history(parallel, schema) == history(sequential, schema) == ["0001_create_hcm_report_metadata",
                                                                             "0002_report_state"]
    # One pg_dump of the twenty schemas per database (qualified names, in pg_dump's order), not forty.
    dumped = _dump(parallel, "s[0-9][0-9]")
    assert dumped == _dump(sequential, "s[0-9][0-9]")
    assert all(f"CREATE TABLE s{i:02d}.hcm_report_metadata (" in dumped for i in range(20)), dumped[:20]
    assert list(summary_rows(four.stdout)) == [f"s{i:02d}" for i in range(20)]  # the table in the schemas' order


def _socket_jdbc(db, query: str) -> str:
    server = db.server
    return f"jdbc:postgresql:///{db.name}?host={server.host}&port={server.port}&{query}"


def test_a_jdbc_url_with_current_schema_and_credentials_works_and_is_masked(cli, make_db, password_role, tenant_sql):
    db = make_db(owner=password_role)
    from urllib.parse import quote

    url = _socket_jdbc(db, f"currentSchema=tenant_x&user={password_role}&password={quote(SPECIAL_PASSWORD, safe='')}")
    result = cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", "--database-url", url, env={})
    assert result.exit_code == 0, result.output
    assert history(db, "tenant_x") == ["0001_create_hcm_report_metadata", "0002_report_state"]
    assert db.query("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'tenant_x'") == [(password_role,)]
    config = cli("config", "--database-url", url, env={})
    for output in (result.output, config.output):
        assert SPECIAL_PASSWORD not in output and quote(SPECIAL_PASSWORD, safe="") not in output
    assert re.search(r"schemas\s+tenant_x\s+--database-url \(currentSchema\)", config.stdout), config.stdout
    assert re.search(rf"user\s+{password_role}\s", config.stdout)
    assert re.search(r"password\s+\*\*\*", config.stdout)


def test_the_platforms_variables_db_url_schema_name_and_flyway_credentials(cli, make_db, password_role, tenant_sql):
    db = make_db(owner=password_role)
    env = {"DB_URL": _socket_jdbc(db, "connect_timeout=5"), "SCHEMA_NAME": "pb, mz", "SCHEMA_TABLE": "egov_flyway",
           "FLYWAY_USER": password_role, "FLYWAY_PASSWORD": SPECIAL_PASSWORD,
           "FLYWAY_LOCATIONS": "filesystem:/flyway/migration/main"}  # as DIGIT's chart sets them
    result = cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", env=env)
    assert result.exit_code == 0, result.output
    assert history(db, "pb") == history(db, "mz") == ["0001_create_hcm_report_metadata", "0002_report_state"]
    config = cli("config", env=env)
    assert re.search(r"user\s+hcm_app\s+FLYWAY_USER \(environment\)", config.stdout), config.stdout
    assert re.search(r"password\s+\*\*\*\s+FLYWAY_PASSWORD \(environment\)", config.stdout)
    assert re.search(r"database\s+\S+\s+DB_URL \(environment\)", config.stdout)
    assert re.search(r"schemas\s+pb,mz\s+SCHEMA_NAME \(environment\)", config.stdout)
    assert "is not used" not in config.stdout  # SCHEMA_TABLE names a Flyway folder's history (test_flyway.py)
    assert re.search(r"sql dir\s+/flyway/migration/main\n", config.stdout)  # FLYWAY_LOCATIONS, as --sql-dir
    assert SPECIAL_PASSWORD not in result.output + config.output
    # The runner's own settings win over the platform's.
    own = cli("config", env={**env, "SCHEMA_NAME": "pb"}, )
    assert "schemas   pb " in own.stdout
    with_option = cli("config", "--schema", "ng", env=env)
    assert re.search(r"schemas\s+ng\s+--schema", with_option.stdout)


@pytest.mark.parametrize("names, complaint", [
    ("pb,Mz", "'Mz' is not a tenant schema name"),
    ("pb;drop", "'pb;drop' is not a tenant schema name"),
    ("pg_x", "'pg_x' is not a tenant schema name"),
    ("pb,pb", "names schema pb more than once"),
    (" , ", "names no schema"),
])
def test_bad_schema_names_are_one_usage_line(cli, db, names, complaint):
    from conftest import one_error_line

    result = cli("status", env={**db.db_env(), "SCHEMA_NAME": names})
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "SCHEMA_NAME (environment)" in line and complaint in line


def test_lint_flags_names_qualified_with_public_or_a_tenant_only_when_schemas_are_in_use(cli, sql_dir):
    (sql_dir / "0002_qualified.sql").write_text(
        "-- public.commented_out is fine\n"
        "CREATE TABLE public.audit (id int);\n"
        "INSERT INTO audit SELECT 1 WHERE 'public.in_a_string' <> '';\n"
        "CREATE INDEX audit_id ON \"mz\".audit (id);\n"
        "SELECT pg_catalog.now(), public.uuid_generate_v4(), ext.thing;\n")
    (sql_dir / "0002_qualified.rollback.sql").write_text("DROP TABLE public.audit;\n")
    plain = cli("sql", "lint", "--sql-dir", sql_dir)
    assert "tenant-schema" not in plain.output
    result = cli("sql", "lint", "--sql-dir", sql_dir, env={"SCHEMA_NAME": "pb,mz"})
    assert result.exit_code == 1
    flagged = sorted(line.split(": ")[0].rsplit("/", 1)[1] for line in result.stdout.splitlines() if "tenant-schema" in line)
    assert flagged == ["0002_qualified.rollback.sql:1:12", "0002_qualified.sql:2:14", "0002_qualified.sql:4:26"]
    assert "public.audit names schema public, bypassing each tenant's schema" in result.stdout
    assert cli("sql", "lint", "--sql-dir", sql_dir, "--schema", "x").stdout.count("tenant-schema") == 2


PER_SCHEMA_JOB = Path(__file__).resolve().parents[1] / "k8s" / "job-per-schema.yaml"


def test_the_per_schema_job_validates_and_gives_each_pod_its_schema_by_index(cli, db, tenant_sql):
    import sys

    import yaml

    done = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k", "1.30.0",
                           str(PER_SCHEMA_JOB)], capture_output=True, text=True)
    assert done.returncode == 0 and "passed for resource job/hcm-db-migrations-per-schema" in done.stdout, done.stdout
    job = yaml.safe_load(PER_SCHEMA_JOB.read_text())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert job["spec"]["completionMode"] == "Indexed"
    assert env["SCHEMA_COUNT"]["value"] == str(job["spec"]["completions"])
    assert env["SCHEMA_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["SCHEMA_NAME"]["valueFrom"]["configMapKeyRef"]["key"] == "db-schema-names"  # DIGIT chart's key
    assert container["command"] == ["python3", "runner.py", "migrate"]  # the runner's exit codes (test_deploy)

    # Each pod as the Job starts it: the same settings but for its index.
    pods = {"SCHEMA_NAME": "pb,mz,ng", "SCHEMA_COUNT": "3", **db.db_env()}
    for index in (2, 0):
        pod = cli("migrate", "--sql-dir", tenant_sql, "--create-schemas", env={**pods, "SCHEMA_INDEX": str(index)})
        assert pod.exit_code == 0, pod.output
    assert relations(db, "mz") == set() and history(db, "ng") == history(db, "pb") == [
        "0001_create_hcm_report_metadata", "0002_report_state"]
    assert re.search(r"schemas\s+mz\s+SCHEMA_NAME \(environment\), item 1 \(SCHEMA_INDEX",
                     cli("config", env={**pods, "SCHEMA_INDEX": "1"}).stdout)
    # completions that do not match the schemas would leave one without a pod: refused, exit 2 (FailJob).
    short = cli("migrate", "--sql-dir", tenant_sql, env={**pods, "SCHEMA_COUNT": "2", "SCHEMA_INDEX": "0"})
    assert short.exit_code == 2 and "so that every schema gets a pod" in short.stderr
    past = cli("migrate", "--sql-dir", tenant_sql, env={**pods, "SCHEMA_INDEX": "3"})
    assert past.exit_code == 2 and "'3' is not an index of the 3 schemas" in past.stderr


def test_schema_name_public_as_digits_chart_sets_it_outside_a_central_instance_is_the_plain_history(cli, db, tenant_sql):
    """DIGIT's common chart sets SCHEMA_NAME=public when the service is not a central instance: the same
    history as a run without schemas, in either order, never a second one."""
    plain = cli("migrate", "--sql-dir", tenant_sql, env=db.db_env())
    assert plain.exit_code == 0, plain.output
    public = cli("migrate", "--sql-dir", tenant_sql, env={**db.db_env(), "SCHEMA_NAME": "public"})
    assert public.exit_code == 0, public.output
    assert summary_rows(public.stdout)["public"][:2] == ["0", "0"], "nothing re-applied"
    add_more = tenant_sql / "0003_more.sql"
    add_more.write_text("ALTER TABLE hcm_report_metadata ADD COLUMN note text;\n")
    assert cli("migrate", "--sql-dir", tenant_sql, env={**db.db_env(), "SCHEMA_NAME": "public"}).exit_code == 0
    status = cli("status", "--sql-dir", tenant_sql, "--exit-code", env=db.db_env())
    assert status.exit_code == 0, status.output  # the plain run sees 0003 applied and no drift
    assert history(db, "public") == ["0001_create_hcm_report_metadata", "0002_report_state", "0003_more"]
    assert db.query("SELECT count(*) FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                    "AND nspname NOT IN ('information_schema', 'public')") == [(0,)]
