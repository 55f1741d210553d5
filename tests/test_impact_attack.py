"""`plan --impact` under attack: SIGTERM, failures on the scratch database, schemas, nothing pending, drift;
against the real server, the runner as a subprocess where signals matter."""

from __future__ import annotations

import json
import signal
import time

from conftest import ok
from test_impact import TABLE
from test_progress import add, runner
from test_schema_proof import scratch_databases


def test_sigterm_during_plan_impact_drops_the_scratch_database(cli, db, pg, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--database-url", db.url))  # (setup: in-process)
    add(sql_dir, "0002_slow", "SELECT pg_sleep(60);\n")
    proc = runner("plan", "--impact", "--sql-dir", sql_dir, "--database-url", db.url, "--scratch-url", pg.scratch_url())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _running(pg, "SELECT pg_sleep(60)%"):
        time.sleep(0.1)
    assert scratch_databases(pg), "the scratch database exists while it measures"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "interrupted by SIGTERM" in error[0] and "scratch database" in error[0] and "dropped" in error[0]
    assert "Traceback" not in err
    assert scratch_databases(pg) == []
    assert not _running(pg, "SELECT pg_sleep(60)%")


def _running(pg, query_like: str) -> bool:
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()", (query_like,))
        found = cur.fetchone() is not None
    conn.close()
    return found


def test_no_pending_migration_creates_no_scratch_database(cli, db, pg, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    with pg.connect() as conn, conn.cursor() as cur:  # a scratch database would be a new database on the server
        cur.execute("SELECT count(*) FROM pg_database")
        before = cur.fetchone()[0]
        cur.execute("SELECT max(oid) FROM pg_database")
        newest = cur.fetchone()[0]
    result = cli("plan", "--impact", "--json", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["migrations"] == [] and report["measured_on"] == ""
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), max(oid) FROM pg_database")
        assert cur.fetchone() == (before, newest)  # not even created and dropped: no new oid was taken
    text = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert text.stdout.splitlines()[0].startswith("no pending migration on ")


def test_history_that_does_not_rebuild_on_scratch_is_said_as_such(cli, db, pg, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    first = sql_dir / "0001_create_hcm_report_metadata.sql"
    first.write_text(first.read_text() + "\nALTER TABLE no_such_table ADD COLUMN x int;\n")  # edited after it ran
    add(sql_dir, "0002_next", f"ALTER TABLE {TABLE} ADD COLUMN note text;\n")
    result = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert result.exit_code == 1, result.output
    assert "applied migrations changed since they ran: 0001_create_hcm_report_metadata" in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.stderr
    assert error[0].startswith("error: the applied migrations do not rebuild the live schema on the scratch database")
    assert "no_such_table" in error[0] and "nothing was measured" in error[0]
    assert scratch_databases(pg) == []


def test_several_schemas_are_refused_and_an_unknown_one_too(cli, db, pg, sql_dir):
    add(sql_dir, "0002_next", f"ALTER TABLE {TABLE} ADD COLUMN note text;\n")
    several = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(),
                  env={**db.db_env(), "SCHEMA_NAME": "tenant_a,tenant_b"})
    assert several.exit_code == 2, several.output
    assert "plan --impact works on one schema at a time" in several.stderr and "--schema NAME" in several.stderr
    unknown = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), "--schema", "tenant_x",
                  env=db.db_env())
    assert unknown.exit_code == 2, unknown.output
    assert "--schema tenant_x: no such schema" in unknown.stderr
    assert scratch_databases(pg) == []


def test_a_named_schema_is_the_one_measured(cli, db, pg, sql_dir):
    db.query("CREATE SCHEMA tenant_a")
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", "--schema", "tenant_a", env=db.db_env()).exit_code == 0
    db.query(f"INSERT INTO tenant_a.{TABLE} (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, "
             "trigger_date, filestore_id, tenant_id) SELECT 'run-' || g, 'dag', 'C', 'r', 'Daily', now(), 'f-' || g, 't' "
             "FROM generate_series(1, 2000) g")
    db.query(f"ANALYZE tenant_a.{TABLE}")
    add(sql_dir, "0002_retype", f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(10);\n")
    result = cli("plan", "--impact", "--json", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(),
                 "--schema", "tenant_a", env=db.db_env())
    assert result.exit_code == 0, result.output
    (migration,) = json.loads(result.stdout)["migrations"]
    (statement,) = migration["statements"]
    table = next(lock for lock in statement["locks"] if lock["kind"] == "table")
    assert table["mode"] == "ACCESS EXCLUSIVE" and table["relation"].endswith(TABLE)
    assert table["live_rows"] == 2000  # the tenant's table on the live database, not public's (absent)
    assert db.query("SELECT to_regclass('public.hcm_report_metadata')") == [(None,)]
    assert scratch_databases(pg) == []
