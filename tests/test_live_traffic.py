"""Deploying under live traffic, against the real PostgreSQL: lock retries (a blocker that ends during the
retries, one that outlasts the budget, a non-transactional file resumed, tenants retrying per schema) and
CONCURRENTLY builds (not cancelled by lock_timeout, an interrupted build finished by the rerun with no human,
the IF NOT EXISTS trap). Timings are not asserted here: the figures are in bench/ (make bench).
"""

import re
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import psycopg2
import pytest

from conftest import SEED, add_migration, applied, one_error_line
from test_reliability import runner_process

SECRET_QUERY = "SELECT count(*) FROM hcm_report_metadata /* card 4111-1111 */"


def connect(db, application_name="report-job", user=None, **kwargs):
    server = db.server
    return psycopg2.connect(dbname=db.name, user=user or server.user, password=server.password, host=server.host,
                            port=server.port, application_name=application_name, **kwargs)


@contextmanager
def blocking(db, table="hcm_report_metadata", hold=None) -> Iterator[int]:
    """A session holding ACCESS SHARE on `table` in an open transaction (an idle-in-transaction report) while the
    block runs, closed after `hold` seconds when given (else at the block's end). Yields its pid."""
    conn = connect(db)
    release = None
    try:
        conn.cursor().execute(SECRET_QUERY.replace("hcm_report_metadata", table))
        pid = conn.info.backend_pid  # (read before the timer may close it: never beside a close in another thread)
        if hold is not None:
            release = threading.Timer(hold, conn.close)
            release.start()
        yield pid
    finally:
        if release is not None:  # its close done, or never to come, before this one (and nothing left after the test)
            release.cancel()
            release.join()
        conn.close()


@pytest.fixture
def seeded(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    return env


# --- lock retries ---------------------------------------------------------------------------------


def test_a_transactional_file_is_retried_whole_until_the_blocker_ends(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_add_status", "CREATE TABLE t_before (id int);\n"
                  "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n")
    with blocking(db, hold=2.5) as pid:
        result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    # (within 300 ms less what the try's CREATE TABLE took: the try's lock waits are bounded as a whole)
    retries = [line for line in result.stderr.splitlines() if re.search(r"lock not granted within [0-9]+ ms", line)]
    assert retries, result.stderr
    assert "0002_add_status.sql:2: lock not granted" in retries[0]
    assert f"blocked by pid {pid} (application_name 'report-job', user {db.server.user}, from " in retries[0]
    assert "idle in transaction for" in retries[0] and "holds ACCESS SHARE" in retries[0]
    assert f"to end it: SELECT pg_terminate_backend({pid})" in retries[0]
    assert "ACCESS EXCLUSIVE lock on hcm_report_metadata" in retries[0]
    assert "4111" not in result.output  # the blocker's query text is never shown
    assert applied(db) == [SEED, "0002_add_status"]
    assert "t_before" in db.tables()  # its earlier statement ran again in the new transaction, once


def test_a_blocker_outlasting_the_budget_ends_in_one_line_naming_it(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n")
    with blocking(db) as pid:
        result = cli("migrate", "--lock-retry-budget", "2s", "--ddl-lock-timeout", "200ms", "--sql-dir", sql_dir,
                     env=seeded)
    line = one_error_line(result)
    assert "0002_add_status.sql:1: failed to apply" in line and "lock timeout" in line
    assert "nothing of it was applied: its transaction rolled back" in line
    assert "lock retry budget 2 s, each try waiting 200 ms" in line
    assert f"blocked by pid {pid} (application_name 'report-job'" in line
    assert f"SELECT pg_terminate_backend({pid})" in line and "run again once it has ended" in line
    assert "4111" not in result.output
    assert applied(db) == [SEED]
    assert "status" not in {r[0] for r in db.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'hcm_report_metadata'")}


def test_retries_are_json_events_and_the_limits_are_in_config(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n")
    with blocking(db, hold=1.5) as pid:
        result = cli("--log-format", "json", "migrate", "--sql-dir", sql_dir, env=seeded)
    import json

    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    retries = [e for e in events if e["event"] == "lock_retry"]
    assert retries and retries[0]["blocked_by"][0]["pid"] == pid
    assert retries[0]["lock_timeout_s"] == 0.3 and retries[0]["budget_s"] == 300
    config = cli("config", "--lock-retry-budget", "90s", env={**seeded, "DB_LOCK_TIMEOUT": "250ms"})
    assert "lock_timeout      250ms" in config.stdout and "DB_LOCK_TIMEOUT (environment)" in config.stdout
    assert "lock retry        90s" in config.stdout and "--lock-retry-budget" in config.stdout


def test_show_blocker_query_applies_to_the_retry_lines_too(cli, db, sql_dir, seeded):
    """The retry lines describe a blocker as the progress lines do (one description): its query only when asked,
    and then without its literals and comments."""
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n")
    with blocking(db, hold=1.5) as pid:
        result = cli("--log-format", "json", "migrate", "--show-blocker-query", "--sql-dir", sql_dir, env=seeded)
    import json

    assert result.exit_code == 0, result.output
    retries = [json.loads(line) for line in result.stderr.splitlines() if '"lock_retry"' in line]
    assert retries, result.stderr
    (held,) = retries[0]["blocked_by"]
    assert held["pid"] == pid and held["holds"] == ["ACCESS SHARE"] and held["state"] == "idle in transaction"
    assert held["query"].strip() == "SELECT count(*) FROM hcm_report_metadata"
    assert retries[0]["waiting_for"] == "ACCESS EXCLUSIVE lock on hcm_report_metadata"
    assert ": SELECT count(*) FROM hcm_report_metadata" in retries[0]["message"]
    assert "4111" not in result.output


def test_a_non_transactional_file_resumes_at_the_statement_that_failed(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_steps", "-- transactional: false\nCREATE TABLE t_one (id int);\n"
                  "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\nCREATE TABLE t_two (id int);\n")
    with blocking(db, hold=2) as pid:
        result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    # had it started over, CREATE TABLE t_one would have failed: it exists (committed before the retry)
    assert result.exit_code == 0, result.output
    assert "0002_steps.sql:3: lock not granted" in result.stderr and f"blocked by pid {pid}" in result.stderr
    assert {"t_one", "t_two"} <= db.tables() and applied(db) == [SEED, "0002_steps"]


def test_sigterm_during_the_backoff_stops_at_once(db, sql_dir, cli, seeded):
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n")
    with blocking(db) as pid:
        runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
        deadline = time.monotonic() + 30
        line = ""
        while "lock not granted" not in line:  # the first retry line: it is in its backoff now
            line = runner.stderr.readline()
            assert line and time.monotonic() < deadline, runner.communicate()
        runner.send_signal(signal.SIGTERM)
        out, err = runner.communicate(timeout=15)
    assert runner.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "nothing of it was applied" in err
    assert applied(db) == [SEED]


def test_tenant_schemas_retry_each_on_its_own(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--schema", "ta", "--schema", "tb", "--create-schemas", "--sql-dir", sql_dir,
               env=env).exit_code == 0
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n")
    with blocking(db, table="tb.hcm_report_metadata", hold=2) as pid:
        result = cli("migrate", "--schema", "ta", "--schema", "tb", "--parallel", "2", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 0, result.output
    retries = [line for line in result.stderr.splitlines() if "lock not granted" in line]
    assert retries and all("[tb] " in line and f"blocked by pid {pid}" in line for line in retries), result.stderr
    for schema in ("ta", "tb"):
        assert db.query(f"SELECT count(*) FROM information_schema.columns WHERE table_schema = '{schema}' "
                        "AND table_name = 'hcm_report_metadata' AND column_name = 'status'") == [(1,)]


# --- CONCURRENTLY ---------------------------------------------------------------------------------

INDEX = "idx_hcm_report_tenant"
BUILD = f"-- transactional: false\nCREATE INDEX CONCURRENTLY {INDEX} ON hcm_report_metadata (tenant_id);\n"


def index_state(db):
    return db.query(f"SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('{INDEX}')")


def snapshot_holder(db):
    """A REPEATABLE READ transaction that has taken its snapshot (a pg_dump, a long report)."""
    conn = connect(db, application_name="nightly-dump")
    conn.set_session(isolation_level="REPEATABLE READ")
    conn.cursor().execute("SELECT count(*) FROM pg_class /* card 4111-1111 */")
    return conn


def writer_holder(db):
    """A transaction that wrote to the table and has not committed (ROW EXCLUSIVE held)."""
    conn = connect(db, application_name="app-writer")
    conn.cursor().execute("INSERT INTO hcm_report_metadata (dag_run_id, dag_name, campaign_number, report_name, "
                          "trigger_frequency, trigger_date, filestore_id) VALUES ('r', 'd', 'c', 'n', 'f', now(), 'x')")
    return conn


def slow_rows(db):
    """Rows whose key takes 0.5 s each to compute, so the build's table scan lasts seconds (nothing held)."""
    db.query("INSERT INTO hcm_report_metadata (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, "
             "trigger_date, filestore_id, tenant_id) SELECT 'r', 'd', 'c', 'n', 'f', now(), 'x' || g, 't' || g "
             "FROM generate_series(1, 6) g")
    return connect(db, application_name="idle")


# The scan phase's build: an index on a key that is slow to compute (the function from a migration of its own).
SLOW_KEY = ("CREATE FUNCTION slow_key(text) RETURNS text IMMUTABLE LANGUAGE plpgsql "
            "AS $$BEGIN PERFORM pg_sleep(0.5); RETURN $1; END$$;\n")
SLOW_BUILD = BUILD.replace("(tenant_id)", "(slow_key(tenant_id))")


def wait_for_phase(db, phase, process=None, timeout=30):
    deadline = time.monotonic() + timeout
    while not db.poll("SELECT 1 FROM pg_stat_progress_create_index WHERE datname = current_database() "
                      "AND phase = %s", (phase,)):
        assert time.monotonic() < deadline and (process is None or process.poll() is None), \
            process.communicate() if process else phase
        time.sleep(0.05)


def test_a_concurrent_build_waiting_for_an_old_snapshot_is_not_cancelled_by_lock_timeout(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_tenant_index", BUILD)
    holder = snapshot_holder(db)
    pid = holder.info.backend_pid
    threading.Timer(5, holder.commit).start()
    try:
        result = cli("migrate", "--ddl-lock-timeout", "200ms", "--sql-dir", sql_dir, env=seeded)
    finally:
        holder.close()
    assert result.exit_code == 0, result.output
    assert index_state(db) == [(True,)] and applied(db) == [SEED, "0002_tenant_index"]
    # the progress line names the phase and whose transaction the build waits for (never its SQL)
    assert "CREATE INDEX CONCURRENTLY on hcm_report_metadata waiting for old snapshots" in result.stderr
    assert f"now the transaction of pid {pid} (application_name 'nightly-dump'" in result.stderr
    assert "4111" not in result.output
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0


def stopped_mid_build(db, sql_dir, env, hold, phase, signum=signal.SIGKILL) -> str:
    """A migrate stopped by `signum` while its CONCURRENTLY build is in `phase` (the `hold`er makes it wait), which
    then ends: the server ends the build of a stopped client (INVALID). Returns the runner's stdout."""
    holder = hold(db)
    try:
        runner = runner_process(["migrate", "--sql-dir", sql_dir], env)
        wait_for_phase(db, phase, runner)
        runner.send_signal(signum)
        out, _ = runner.communicate(timeout=30)
        deadline = time.monotonic() + 15  # a SIGKILLed client's build is cancelled by the server (2 s check)
        while db.poll("SELECT 1 FROM pg_stat_progress_create_index WHERE datname = current_database()"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        holder.rollback()
        holder.close()
    return out


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("phase,hold,build", [("waiting for writers before build", writer_holder, BUILD),
                                              ("building index: scanning table", slow_rows, SLOW_BUILD),
                                              ("waiting for old snapshots", snapshot_holder, BUILD)],
                         ids=["writers", "scan", "snapshots"])
def test_a_runner_stopped_during_a_concurrent_build_is_finished_by_the_rerun(cli, db, sql_dir, seeded, signum,
                                                                              phase, hold, build):
    if build is SLOW_BUILD:
        add_migration(sql_dir, "0002_slow_key", SLOW_KEY)
        assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    before = applied(db)
    add_migration(sql_dir, "0003_tenant_index", build)
    stopped_mid_build(db, sql_dir, seeded, hold, phase, signum)
    assert index_state(db) == [(False,)] and applied(db) == before  # the interrupted try's leftover
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code != 0

    rerun = cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded)  # (a SIGKILL's leftover: not drift either)
    assert rerun.exit_code == 0, rerun.output
    assert f"dropped INVALID index public.{INDEX}, left by an earlier try of this migration" in rerun.stderr
    assert index_state(db) == [(True,)] and applied(db) == [*before, "0003_tenant_index"]
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    assert status.exit_code == 0, status.output  # no INVALID index, and the index is not drift
    assert cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded).exit_code == 0


def kill_mid_build_and_let_the_server_finish_it(db, sql_dir, seeded):
    """A runner SIGKILLed while its CONCURRENTLY build waits for an old snapshot, which then ends: the server
    finishes the build on its own (it notices the client is gone only when it answers)."""
    holder = snapshot_holder(db)
    try:
        runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
        wait_for_phase(db, "waiting for old snapshots", runner)
        (building,) = db.query("SELECT pid FROM pg_stat_progress_create_index WHERE datname = current_database()")
        runner.send_signal(signal.SIGKILL)
        runner.communicate(timeout=30)
        holder.commit()
        # Until the build's session is gone: its progress row ends before its last transaction (the one that marks
        # the index valid) commits, so an empty progress view left a window where the index still read invalid.
        deadline = time.monotonic() + 30
        while db.poll("SELECT 1 FROM pg_stat_activity WHERE pid = %s", building):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        holder.close()


def test_a_build_the_server_finished_after_the_runner_died_counts_as_done(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_tenant_index", BUILD)
    kill_mid_build_and_let_the_server_finish_it(db, sql_dir, seeded)
    assert index_state(db) == [(True,)] and applied(db) == [SEED]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)  # without IF NOT EXISTS: "already exists" before
    assert rerun.exit_code == 0, rerun.output
    assert f"index public.{INDEX} is already built and valid" in rerun.stderr
    assert applied(db) == [SEED, "0002_tenant_index"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    assert cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded).exit_code == 0


UNNAMED = "-- transactional: false\nCREATE INDEX CONCURRENTLY ON hcm_report_metadata (tenant_id);\n"
TENANT_INDEXES = ("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE "
                  "i.indrelid = 'hcm_report_metadata'::regclass AND pg_get_indexdef(i.indexrelid) LIKE '%(tenant_id)' "
                  "ORDER BY 1")


def test_an_unnamed_build_the_server_finished_after_the_runner_died_is_not_built_twice(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_tenant_index", UNNAMED)
    kill_mid_build_and_let_the_server_finish_it(db, sql_dir, seeded)
    assert db.query(TENANT_INDEXES) == [("hcm_report_metadata_tenant_id_idx", True)] and applied(db) == [SEED]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert "index public.hcm_report_metadata_tenant_id_idx is already built and valid" in rerun.stderr
    assert db.query(TENANT_INDEXES) == [("hcm_report_metadata_tenant_id_idx", True)]  # no _idx1 twin
    assert applied(db) == [SEED, "0002_tenant_index"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    assert cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded).exit_code == 0


def test_an_unnamed_twin_made_before_the_migration_ran_is_not_taken_for_its_work(cli, db, sql_dir, seeded):
    """Someone made the same index by hand before the migration's first try (which then failed on an earlier
    statement): the rerun builds the file's index as written, it does not count the other one as its own."""
    db.query("CREATE INDEX ON hcm_report_metadata (tenant_id); CREATE TABLE in_the_way (id int)")
    add_migration(sql_dir, "0002_tenant_index", UNNAMED.replace("CREATE INDEX", "CREATE TABLE in_the_way (id int);\n"
                                                                "CREATE INDEX"))
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code != 0  # "in_the_way" already exists
    db.query("DROP TABLE in_the_way")
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert "already built" not in rerun.stderr
    assert db.query(TENANT_INDEXES) == [("hcm_report_metadata_tenant_id_idx", True),
                                        ("hcm_report_metadata_tenant_id_idx1", True)]


def test_drop_index_concurrently_waits_for_old_transactions_without_lock_timeout(cli, db, sql_dir, seeded):
    """It waits for the transactions using the table (blocking no one): not timed out, not retried until the
    budget is spent; in a rollback file (the README's rollback of a concurrent build) likewise."""
    add_migration(sql_dir, "0002_tenant_index", BUILD, rollback=f"-- transactional: false\nDROP INDEX CONCURRENTLY "
                                                                f"{INDEX};\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0 and index_state(db) == [(True,)]
    with blocking(db, hold=3):
        result = cli("sql", "rollback", "--lock-retry-budget", "1s", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    assert "lock not granted" not in result.stderr
    assert index_state(db) == [] and applied(db) == [SEED]
    add_migration(sql_dir, "0003_drop_index", f"-- transactional: false\nDROP INDEX CONCURRENTLY {INDEX};\n")
    db.query(f"CREATE INDEX {INDEX} ON hcm_report_metadata (tenant_id)")
    (sql_dir / "0002_tenant_index.sql").write_text("SELECT 1;\n")
    (sql_dir / "0002_tenant_index.rollback.sql").unlink()
    with blocking(db, hold=3):
        result = cli("migrate", "--lock-retry-budget", "1s", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    assert "lock not granted" not in result.stderr
    assert index_state(db) == [] and applied(db) == [SEED, "0002_tenant_index", "0003_drop_index"]


def test_an_interrupted_drop_index_concurrently_says_so_and_the_rerun_finishes_it(cli, db, sql_dir, seeded):
    db.query(f"CREATE INDEX {INDEX} ON hcm_report_metadata (tenant_id)")
    add_migration(sql_dir, "0002_drop_index", f"-- transactional: false\nDROP INDEX CONCURRENTLY {INDEX};\n")
    with blocking(db):
        failed = cli("migrate", "--statement-timeout", "1s", "--sql-dir", sql_dir, env=seeded)
    line = one_error_line(failed)
    assert "0002_drop_index.sql:2: failed to apply" in line and "statement timeout" in line
    assert "a DROP INDEX CONCURRENTLY stopped part-way may have left its index INVALID" in line
    assert "run migrate again to finish the drop" in line and "CREATE INDEX" not in line
    assert index_state(db) == [(False,)] and applied(db) == [SEED]
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    assert status.exit_code != 0 and "interrupted DROP INDEX CONCURRENTLY" in status.output
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert index_state(db) == [] and applied(db) == [SEED, "0002_drop_index"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0


def test_if_not_exists_over_an_invalid_index_is_not_recorded_as_applied(cli, db, sql_dir, seeded):
    # an INVALID index of that name, as an earlier failed build leaves it
    db.query(f"CREATE INDEX {INDEX} ON hcm_report_metadata (tenant_id); "
             f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{INDEX}'::regclass")
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code != 0  # unexplained: reported
    add_migration(sql_dir, "0002_tenant_index", BUILD.replace("CONCURRENTLY", "CONCURRENTLY IF NOT EXISTS"))
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    line = one_error_line(result)
    assert "0002_tenant_index.sql:2: failed to apply" in line
    assert f"index public.{INDEX} is INVALID" in line and "not recorded as applied" in line
    assert "run migrate again: it drops the INVALID index" in line
    assert applied(db) == [SEED] and index_state(db) == [(False,)]

    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert index_state(db) == [(True,)] and applied(db) == [SEED, "0002_tenant_index"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0


def test_a_block_the_file_opens_itself_is_retried_from_its_begin(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_steps", "-- transactional: false\nCREATE TABLE t_one (id int);\nBEGIN;\n"
                  "CREATE TABLE t_in_block (id int);\nALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n"
                  "COMMIT;\n")
    with blocking(db, hold=2) as pid:
        result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    # the block's CREATE TABLE rolled back with it and ran again: had it not, the retry would fail on it
    assert result.exit_code == 0, result.output
    assert "0002_steps.sql:5: lock not granted" in result.stderr
    assert {"t_one", "t_in_block"} <= db.tables() and applied(db) == [SEED, "0002_steps"]


@pytest.mark.parametrize("taken,instead", [
    ("CREATE TABLE hcm_audit (id int, tenant_id text); CREATE INDEX {i} ON hcm_audit (tenant_id)",
     "the name is taken in that schema by index public.{i}: CREATE INDEX {i} ON public.hcm_audit USING btree "
     "(tenant_id) (index names are per schema), so no index was built on \"public\".\"hcm_report_metadata\""),
    ("CREATE INDEX {i} ON hcm_report_metadata (dag_name)",
     "index public.{i} already exists on \"public\".\"hcm_report_metadata\" with another definition "
     "(USING btree (dag_name))")],
    ids=["other-table", "other-definition"])
def test_if_not_exists_over_a_name_taken_by_another_index_is_not_recorded_as_applied(cli, db, sql_dir, seeded, taken,
                                                                                       instead):
    db.query(taken.format(i=INDEX))
    add_migration(sql_dir, "0002_tenant_index", BUILD.replace("CONCURRENTLY", "CONCURRENTLY IF NOT EXISTS"))
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    line = one_error_line(result)
    assert "0002_tenant_index.sql:2: failed to apply" in line and instead.format(i=INDEX) in line, line
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS built nothing" in line and "not recorded as applied" in line
    assert "give the index another name in the file" in line
    assert applied(db) == [SEED]
    add_migration(sql_dir, "0002_tenant_index", BUILD.replace(INDEX, "idx_report_tenant"))
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0 and applied(db) == [SEED, "0002_tenant_index"]


def sigterm_while_waiting_for_old_snapshots(db, sql_dir, seeded):
    """A runner stopped by SIGTERM while its concurrent build or REINDEX waits for an old snapshot."""
    holder = snapshot_holder(db)
    try:
        runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
        wait_for_phase(db, "waiting for old snapshots", runner)
        runner.send_signal(signal.SIGTERM)
        runner.communicate(timeout=30)
    finally:
        holder.close()


def test_an_interrupted_reindex_concurrently_leaves_nothing_after_the_rerun(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_tenant_index", BUILD)
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    add_migration(sql_dir, "0003_reindex", f"-- transactional: false\nREINDEX INDEX CONCURRENTLY {INDEX};\n")
    sigterm_while_waiting_for_old_snapshots(db, sql_dir, seeded)
    leftovers = db.query("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                         "WHERE NOT i.indisvalid")
    assert leftovers and leftovers[0][0].startswith(f"{INDEX}_ccnew")  # the interrupted REINDEX's copy
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code != 0

    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert f"dropped INVALID index public.{leftovers[0][0]}" in rerun.stderr
    assert db.query("SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]
    assert index_state(db) == [(True,)] and applied(db)[-1] == "0003_reindex"
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0


def duplicate_dag_names(db):
    db.query("INSERT INTO hcm_report_metadata (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, "
             "trigger_date, filestore_id) SELECT 'r', 'same', 'c', 'n', 'f', now(), 'dup' || g FROM generate_series(1, 2) g")


def invalid_indexes(db):
    return db.query("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE NOT i.indisvalid")


@pytest.mark.parametrize("build", [
    "CREATE UNIQUE INDEX CONCURRENTLY ON hcm_report_metadata (dag_name);",
    "CREATE /* reviewed */ UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_dag ON hcm_report_metadata (dag_name);"],
    ids=["unnamed", "comment-if-not-exists"])
def test_a_failed_unique_build_unnamed_or_commented_is_rebuilt_by_the_rerun(cli, db, sql_dir, seeded, build):
    duplicate_dag_names(db)
    add_migration(sql_dir, "0002_unique_dag", f"-- transactional: false\n{build}\n")
    failed = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert failed.exit_code != 0 and len(invalid_indexes(db)) == 1 and applied(db) == [SEED]
    db.query("DELETE FROM hcm_report_metadata WHERE filestore_id = 'dup2'")

    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert "dropped INVALID index public." in rerun.stderr
    assert invalid_indexes(db) == [] and applied(db) == [SEED, "0002_unique_dag"]
    assert db.query("SELECT count(*) FROM pg_index WHERE indrelid = 'hcm_report_metadata'::regclass "
                    "AND indisunique AND indisvalid AND pg_get_indexdef(indexrelid) LIKE '%(dag_name)'") == [(1,)]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0


@pytest.mark.parametrize("reindex", ["REINDEX TABLE CONCURRENTLY hcm_report_metadata",
                                     "REINDEX (CONCURRENTLY) SCHEMA public"], ids=["table", "schema"])
def test_an_interrupted_reindex_table_or_schema_is_finished_by_the_rerun_and_never_drift(cli, db, sql_dir, seeded,
                                                                                         reindex):
    add_migration(sql_dir, "0002_reindex", f"-- transactional: false\n{reindex};\n")
    sigterm_while_waiting_for_old_snapshots(db, sql_dir, seeded)
    leftovers = [name for (name,) in invalid_indexes(db)]
    assert leftovers and all("_ccnew" in name or "_ccold" in name for name in leftovers)
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    assert status.exit_code != 0 and "outside migrations" not in status.output, status.output
    assert "interrupted REINDEX ... CONCURRENTLY" in status.output

    rerun = cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert f"dropped INVALID index public.{leftovers[0]}" in rerun.stderr or "dropped INVALID index" in rerun.stderr
    assert invalid_indexes(db) == [] and applied(db) == [SEED, "0002_reindex"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0


def test_an_access_exclusive_holder_on_an_unrelated_table_does_not_break_the_run(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_unrelated", "CREATE TABLE unrelated (id serial PRIMARY KEY, n int DEFAULT 1 CHECK "
                  "(n > 0), t text);\nCREATE INDEX unrelated_t ON unrelated (lower(t));\n"
                  "CREATE VIEW unrelated_v AS SELECT * FROM unrelated;\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    add_migration(sql_dir, "0003_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n")
    holder = connect(db, application_name="maintenance")
    holder.cursor().execute("LOCK TABLE unrelated IN ACCESS EXCLUSIVE MODE")
    threading.Timer(2, holder.close).start()
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env=seeded)  # the drift check reads the catalog before and after
    finally:
        holder.close()
    assert result.exit_code == 0, result.output
    assert "unexpected" not in result.output
    assert applied(db) == [SEED, "0002_unrelated", "0003_add_status"]


def test_a_do_block_that_commits_inside_is_not_retried(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_log", "CREATE TABLE run_log (at timestamptz);\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    add_migration(sql_dir, "0003_do", "-- transactional: false\nDO $$ BEGIN INSERT INTO run_log VALUES (now()); COMMIT; "
                  "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20); END $$;\n")
    with blocking(db, hold=3) as pid:
        result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    line = one_error_line(result)
    assert "0003_do.sql:2: failed to apply" in line and f"blocked by pid {pid}" in line, line
    assert "not retried: a DO block or CALL may have committed part of its work" in line, line
    assert db.query("SELECT count(*) FROM run_log") == [(1,)]  # its INSERT committed once, never run again


def test_sigterm_in_the_backoff_of_a_non_transactional_file_is_not_called_partly_applied(db, sql_dir, cli, seeded):
    add_migration(sql_dir, "0002_add_status", "-- transactional: false\n"
                  "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n")
    with blocking(db):
        runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
        deadline = time.monotonic() + 30
        line = ""
        while "lock not granted" not in line:
            line = runner.stderr.readline()
            assert line and time.monotonic() < deadline, runner.communicate()
        runner.send_signal(signal.SIGTERM)
        runner.communicate(timeout=15)
    status = cli("status", "--sql-dir", sql_dir, env=seeded)
    row = next(entry for entry in status.stdout.splitlines() if "0002_add_status" in entry)
    assert "PARTLY" not in row and "pending" in row, status.stdout
    assert "no statement of it committed" in status.stdout


def test_a_rerun_failing_after_an_earlier_run_committed_part_says_so(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_steps", "-- transactional: false\nCREATE TABLE t_one (id int);\nSELECT pg_sleep(30);\n")
    runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
    deadline = time.monotonic() + 30
    # (in statement 2: once statement 1's commit is recorded, not merely once its table shows)
    while db.query("SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active' "
                   "AND query LIKE 'SELECT pg_sleep(30)%'") != [(1,)]:
        assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()
        time.sleep(0.1)
    runner.send_signal(signal.SIGTERM)
    runner.communicate(timeout=30)
    status = cli("status", "--sql-dir", sql_dir, env=seeded)
    assert "statement 1 of 2 (line" in status.stdout and "COMMITTED" in status.stdout, status.stdout
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))  # it starts over: t_one exists
    assert "0002_steps.sql:2: failed to apply" in line and "already exists" in line
    assert "no statement of it committed" not in line, line
    assert "an earlier run left: not transactional: statement 1 of 2 (line" in line, line
    assert "a rerun starts from its first statement" in line and "IF NOT EXISTS" in line, line


def test_an_invalid_index_of_the_same_name_but_another_definition_is_not_dropped(cli, db, sql_dir, seeded):
    db.query(f"CREATE INDEX {INDEX} ON hcm_report_metadata (report_name); "
             f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{INDEX}'::regclass")  # someone else's
    add_migration(sql_dir, "0002_tenant_index", BUILD.replace("CONCURRENTLY", "CONCURRENTLY IF NOT EXISTS"))
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code != 0  # not recorded: the index is INVALID
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    assert f"0002_tenant_index.sql:2: an INVALID index public.{INDEX} is in the way" in line, line
    assert "not dropped" in line
    assert index_state(db) == [(False,)] and applied(db) == [SEED]
    assert db.query(f"SELECT pg_get_indexdef('{INDEX}'::regclass) LIKE '%(report_name)'") == [(True,)]
