"""A run over many tenants reads every tenant's schema in one pass (schema.describe_tenants) and answers each
schema's drift check from it: the same answer as describing the schema on its own connection, drift still
found, and nothing changed by hand ever absorbed into a tenant's recorded schema."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg2
import pytest

from conftest import PROJECT_ROOT, add_migration
from migrator.errors import SCHEMA_DRIFT

TENANTS = ("pb", "mz", "ng_2")
# Every kind a tenant's history holds, made in each tenant (a tenant session's search_path puts them there).
KINDS = """
CREATE TYPE run_state AS ENUM ('queued', 'done');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE SEQUENCE batch_seq START 7;
CREATE TABLE run (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, report_id integer REFERENCES hcm_report_metadata (id),
                  state run_state NOT NULL DEFAULT 'queued', tries positive_int, label text COLLATE "C");
CREATE INDEX run_state_idx ON run (state) WHERE state <> 'done';
CREATE TABLE part (day date NOT NULL, n int) PARTITION BY RANGE (day);
CREATE TABLE part_2026 PARTITION OF part FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER run_touch BEFORE UPDATE ON run FOR EACH ROW EXECUTE FUNCTION touch();
CREATE VIEW run_counts AS SELECT state, count(*) FROM run GROUP BY state;
CREATE MATERIALIZED VIEW run_totals AS SELECT count(*) AS n FROM run;
CREATE POLICY run_mine ON run USING (true);
CREATE RULE run_no_delete AS ON DELETE TO run_counts DO INSTEAD NOTHING;
CREATE STATISTICS run_stats ON state, tries FROM run;
COMMENT ON TABLE run IS 'one run';
GRANT SELECT ON run TO PUBLIC;
"""


def tenant_connection(db, schema: str):
    """A connection pinned to one tenant as the runner's own is (search_path and hcm.tenant_schema)."""
    conn = psycopg2.connect(db.url)
    conn.autocommit = True
    conn.cursor().execute("SELECT set_config('search_path', quote_ident(%s), false), "
                          "set_config('hcm.tenant_schema', %s, false)", (schema, schema))
    return conn


@pytest.fixture
def tenants(cli, db, sql_dir):
    add_migration(sql_dir, "0002_kinds", KINDS)
    result = cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env={**db.db_env(), "SCHEMA_NAME": ",".join(TENANTS)})
    assert result.exit_code == 0, result.output
    # Around the tenants: what must never reach a tenant's description.
    db.query("CREATE TABLE public.shared (id int); CREATE SCHEMA other; CREATE TABLE other.t (id int)")
    return sql_dir


def test_one_pass_gives_each_tenant_exactly_its_own_description(db, tenants):
    from migrator.schema.describe import describe, describe_tenants

    db.query("CREATE EXTENSION hstore SCHEMA public")  # database-wide: in no tenant's description
    with psycopg2.connect(db.url) as conn:
        many = describe_tenants(conn, [*TENANTS, "absent"])
    assert set(many) == {*TENANTS, "absent"}
    for schema in TENANTS:
        conn = tenant_connection(db, schema)
        try:
            alone = describe(conn, schema)
        finally:
            conn.close()
        assert many[schema].items == alone.items
        assert many[schema].text == alone.text and many[schema].sha256 == alone.sha256
        names = " ".join(name for _, name in alone.items)
        assert "run_totals" in names and "part_2026" in names
        assert "shared" not in names and "other." not in names and "_yoyo" not in names
        assert "extension" not in {kind for kind, _ in alone.items}, "database-wide: no one tenant's"
    assert many["pb"].sha256 != many["mz"].sha256, "each tenant's names are its own"
    assert many["absent"].items == {}


def test_a_no_op_over_tenants_records_nothing_and_hand_drift_is_still_found_in_its_schema(cli, db, tenants):
    env = {**db.db_env(), "SCHEMA_NAME": ",".join(TENANTS)}
    recorded = lambda: {s: db.query(f'SELECT recorded_at, sha256 FROM "{s}"._hcm_schema_snapshot')[0]  # noqa: E731
                        for s in TENANTS}
    before = recorded()
    db.query('CREATE INDEX hand_made ON mz.run (label)')
    result = cli("migrate", "--sql-dir", tenants, env=env)
    assert result.exit_code == 0, result.output
    assert recorded() == before, "a no-op writes no schema record"
    drift_lines = [line for line in result.stderr.splitlines() if "DRIFT" in line]
    assert len(drift_lines) == 1 and drift_lines[0].startswith("[mz]"), result.stderr
    strict = cli("migrate", "--sql-dir", tenants, "--strict", env=env)
    assert strict.exit_code != 0 and "mz" in strict.stderr.splitlines()[-1]
    status = cli("status", "--json", "--exit-code", env=env)
    schemas = json.loads(status.stdout)["schemas"]
    assert {s: schemas[s]["schema"]["drifted"] for s in TENANTS} == {"pb": False, "mz": True, "ng_2": False}
    assert status.exit_code == SCHEMA_DRIFT


def test_a_hand_change_after_the_one_pass_read_is_never_absorbed_by_the_next_migration(cli, db, tenants):
    """The pre-read says "as recorded"; a DBA's index lands before the tenant's lock; a migration then runs.
    The migration is measured against a description taken under the lock, so the index stays drift."""
    from migrator.commands.base import CommandSettings
    from migrator.commands.deploy import migrate_sql
    from migrator import postgres
    from migrator.schema.describe import describe_tenants
    from migrator.env import Env
    from migrator.settings import resolve_postgres
    from migrator.targets import PostgresOptions

    with psycopg2.connect(db.url) as conn:
        pre_read = describe_tenants(conn, ["pb"])["pb"]
    db.query("CREATE INDEX dba_index ON pb.run (label)")  # after the read, before the run
    add_migration(tenants, "0003_more", "ALTER TABLE run ADD COLUMN note text;")
    target = resolve_postgres(PostgresOptions(database_url=db.url), Env({})).for_schema("pb")
    settings = CommandSettings(sql_dir=tenants, pinned=target, described=pre_read,
                               note=lambda line: None, echo=lambda line: None)
    report = migrate_sql(settings, postgres.read_migrations(tenants))
    assert report.applied == ["0003_more"]
    conn = tenant_connection(db, "pb")
    try:
        from migrator.schema import snapshot

        drift = snapshot.live_drift(conn, "pb")
    finally:
        conn.close()
    assert any("dba_index" in change for change in drift.changes), drift.changes
    assert not any("note" in change for change in drift.changes), "the migration's own column is recorded"


def _while_a_is_locked(db, args: list[str], change_b: str) -> subprocess.CompletedProcess:
    """Run the runner over a,b while another session holds a's migration lock; once the runner is waiting for it
    (its session polls pg_try_advisory_lock), change b by hand, then free a. The change is made after the run began."""
    from migrator.pg_lock import lock_key

    with psycopg2.connect(db.url) as holder:
        holder.autocommit = True
        holder.cursor().execute("SELECT pg_advisory_lock(%s)", (lock_key("a"),))
        runner = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), *args, "--lock-timeout", "30"],
                                  cwd=PROJECT_ROOT, env={"PATH": "/usr/bin:/bin", **db.db_env(), "SCHEMA_NAME": "a,b"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not db.poll("SELECT 1 FROM pg_stat_activity WHERE query LIKE '%%pg_try_advisory_lock(%%' "
                          "AND pid <> pg_backend_pid()"):
            assert time.monotonic() < deadline and runner.poll() is None, "the runner never waited for a's lock"
            time.sleep(0.05)
        db.query(change_b)
        holder.cursor().execute("SELECT pg_advisory_unlock_all()")
        out, err = runner.communicate(timeout=60)
    return subprocess.CompletedProcess(runner.args, runner.returncode, out, err)


def test_mark_over_tenants_never_records_a_hand_change_made_after_the_run_began(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env={**db.db_env(), "SCHEMA_NAME": "a,b"}).exit_code == 0
    add_migration(sql_dir, "0002_marked", "CREATE TABLE marked_by_hand (id int);\n")
    done = _while_a_is_locked(db, ["sql", "mark", "0002_marked", "--sql-dir", str(sql_dir)],
                              "CREATE INDEX dba_index ON b.hcm_report_metadata (id)")
    assert done.returncode == 0, done.stderr
    assert "[b] note: schema: DRIFT" in done.stderr and "dba_index" in done.stderr
    status = cli("status", "--sql-dir", sql_dir, "--schema", "b", "--json", env=db.db_env())
    assert any("dba_index" in change for change in json.loads(status.stdout)["schemas"]["b"]["schema"]["changes"])


def test_migrate_strict_over_tenants_refuses_a_schema_changed_by_hand_after_the_run_began(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env={**db.db_env(), "SCHEMA_NAME": "a,b"}).exit_code == 0
    add_migration(sql_dir, "0002_next", "CREATE TABLE next_one (id int);\n")
    done = _while_a_is_locked(db, ["migrate", "--strict", "--sql-dir", str(sql_dir)],
                              "CREATE INDEX dba_index ON b.hcm_report_metadata (id)")
    assert done.returncode == SCHEMA_DRIFT, done.stdout + done.stderr
    assert "[a] applied 0002_next" in done.stdout and "[b] applied" not in done.stdout
    assert "[b] FAILED: --strict" in done.stderr


# --- what is shared is no one tenant's drift ---------------------------------------------------------------


def test_an_extension_one_tenants_migration_creates_is_no_tenants_drift(cli, db, sql_dir):
    """The README's recipe: CREATE EXTENSION IF NOT EXISTS ... SCHEMA public in a tenant migration. The first
    tenant creates it; for the others it is a no-op. No tenant reads it as drift, --strict passes, and a
    tenant's rollback that leaves the shared extension in place is proven by verify."""
    env = {**db.db_env(), "SCHEMA_NAME": "a,b,c"}
    assert cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env=env).exit_code == 0
    add_migration(sql_dir, "0002_citext", "CREATE EXTENSION IF NOT EXISTS citext SCHEMA public;\n"
                  "ALTER TABLE hcm_report_metadata ADD COLUMN email citext;\n",
                  rollback="ALTER TABLE hcm_report_metadata DROP COLUMN email;\n")
    add_migration(sql_dir, "0003_defaults", "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC;\n",
                  rollback="ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM PUBLIC;\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    status = cli("status", "--sql-dir", sql_dir, "--json", "--exit-code", env=env)
    assert status.exit_code == 0, status.stdout
    assert {s: v["schema"]["drifted"] for s, v in json.loads(status.stdout)["schemas"].items()} == dict.fromkeys("abc", False)
    assert cli("migrate", "--strict", "--sql-dir", sql_dir, env=env).exit_code == 0
    proof = cli("sql", "verify", "--sql-dir", sql_dir, "--schema", "a", env=env)
    assert proof.exit_code == 0, proof.output


def test_default_privileges_in_one_tenants_schema_are_that_tenants_alone(cli, db, sql_dir):
    env = {**db.db_env(), "SCHEMA_NAME": "a,b"}
    assert cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env=env).exit_code == 0
    db.query("ALTER DEFAULT PRIVILEGES IN SCHEMA a GRANT SELECT ON TABLES TO PUBLIC")  # a DBA, by hand, in a
    schemas = json.loads(cli("status", "--sql-dir", sql_dir, "--json", env=env).stdout)["schemas"]
    assert schemas["a"]["schema"]["changes"] == ["default privileges FOR ROLE postgres IN SCHEMA a ON TABLES added"]
    assert schemas["b"]["schema"]["drifted"] is False


def test_schemas_made_before_they_became_tenants_are_not_the_plain_historys_drift(cli, db, sql_dir):
    """DIGIT pre-creates the tenants' schemas; a plain run (make migrate) records them as its own until a tenant
    run marks them. After that they are the tenants': not 'dropped' from the plain history."""
    db.query("CREATE SCHEMA a; CREATE SCHEMA b; CREATE TABLE b.made_early (id int)")
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    assert cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_NAME": "a,b"}).exit_code == 0
    plain = cli("status", "--sql-dir", sql_dir, "--exit-code", env=db.db_env())
    assert plain.exit_code == 0, plain.stdout
    assert cli("migrate", "--strict", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    db.query("CREATE TABLE public.by_hand (id int)")  # the plain history's own drift is still seen
    assert "table by_hand added" in cli("status", "--sql-dir", sql_dir, env=db.db_env()).stdout


@pytest.mark.parametrize("query", ["user={user}", "dbname={db}", "port={port}&user={user}"])
def test_a_url_whose_query_repeats_connection_fields_works_over_tenants(cli, db, sql_dir, query):
    """libpq takes host, port, user, dbname in a URL's query too; the one-pass read passed them twice (TypeError)."""
    server = db.server
    url = (f"postgresql://{server.user}@:{server.port}/{db.name}?host={server.host}&"
           + query.format(user=server.user, db=db.name, port=server.port))
    result = cli("migrate", "--database-url", url, "--sql-dir", sql_dir, "--create-schemas", env={"SCHEMA_NAME": "a,b"})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "unexpected" not in result.stderr
    assert cli("status", "--database-url", url, "--sql-dir", sql_dir, "--exit-code", env={"SCHEMA_NAME": "a,b"}).exit_code == 0


def test_parallel_tenants_creating_the_same_extension_never_collide(cli, make_db, sql_dir):
    """attack16c 6: PostgreSQL does not serialise two sessions' CREATE EXTENSION IF NOT EXISTS; the README's own
    recipe, run by 6 tenants at once on a new database, failed in one of them. The runner serialises such files."""
    add_migration(sql_dir, "0002_citext", "CREATE EXTENSION IF NOT EXISTS citext SCHEMA public;\n"
                  "CREATE TABLE people (email citext PRIMARY KEY);\n")
    names = ",".join(f"t{i}" for i in range(6))
    for _ in range(3):  # fresh databases: the race is on the first creation
        db = make_db()
        result = cli("migrate", "--sql-dir", sql_dir, "--create-schemas", "--parallel", "6",
                     env={**db.db_env(), "SCHEMA_NAME": names})
        assert result.exit_code == 0, result.output
        assert db.query("SELECT count(*) FROM pg_class WHERE relname = 'people'") == [(6,)]
