"""Issue 24, attack24p 1: the runtime net counts only waits that stall the application. VALIDATE CONSTRAINT (SHARE
UPDATE EXCLUSIVE, the documented safe pattern) scanning while an ANALYZE waits on it is not ended: no query waits
for that mode nor queues behind it. A DDL request that does queue the application behind it still ends it, and the
line never sends the author to "the safe pattern" VALIDATE already is. The scan is made slow by a CHECK that sleeps
per row; the other session's wait is asserted by what it got, never a timing of the runner.
"""

import json
import signal
import threading
import time

import psycopg2
import pytest

from conftest import SEED, add_migration, applied, one_error_line
from test_live_traffic import blocking, connect, seeded, snapshot_holder  # noqa: F401 (a fixture)
from test_live_traffic_held import App
from test_live_traffic_attack24r import wait_for
from test_reliability import runner_process

# The migration session holds SHARE UPDATE EXCLUSIVE on t_val: its VALIDATE runs.
VALIDATING = """SELECT 1 FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a USING (pid)
WHERE l.relation = 'public.t_val'::regclass AND l.granted AND l.mode = 'ShareUpdateExclusiveLock'
  AND a.application_name LIKE 'hcm-db-migrations%'"""


def slow_check(db, cli, sql_dir, env, rows=3):
    """t_val with `rows` rows and a CHECK NOT VALID whose function sleeps 1 s a row: its VALIDATE scans ~`rows` s."""
    db.query("CREATE FUNCTION slow_ok(int) RETURNS bool LANGUAGE plpgsql IMMUTABLE AS "
             "$$ BEGIN PERFORM pg_catalog.pg_sleep(1); RETURN true; END $$")
    db.query(f"CREATE TABLE t_val (id int); INSERT INTO t_val SELECT generate_series(1, {rows})")
    add_migration(sql_dir, "0002_check", "ALTER TABLE t_val ADD CONSTRAINT chk_slow CHECK (slow_ok(id)) NOT VALID;\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    add_migration(sql_dir, "0003_validate", "ALTER TABLE t_val VALIDATE CONSTRAINT chk_slow;\n")


def waiting_on_validate(db, statement, name="maintenance"):
    """Another client that, once the VALIDATE runs, sends `statement` (statement_timeout 5 s, longer than the
    VALIDATE's scan has left): its `error` what ended it."""
    return App(db, name, ready=VALIDATING, query=statement)


def test_validate_is_not_ended_by_an_analyze_waiting_on_it(cli, db, sql_dir, seeded):
    slow_check(db, cli, sql_dir, seeded)
    other = waiting_on_validate(db, "ANALYZE t_val")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    other.join()
    assert result.exit_code == 0, result.output
    assert other.error is None  # the ANALYZE waited, then ran
    assert applied(db) == [SEED, "0002_check", "0003_validate"]
    assert db.query("SELECT convalidated FROM pg_constraint WHERE conname = 'chk_slow'") == [(True,)]


def test_validate_is_not_ended_by_another_concurrent_index_build(cli, db, sql_dir, seeded):
    slow_check(db, cli, sql_dir, seeded)
    other = waiting_on_validate(db, "CREATE INDEX CONCURRENTLY t_val_other ON t_val (id)", name="other-service")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    other.join()
    assert result.exit_code == 0, result.output
    assert other.error is None
    assert applied(db) == [SEED, "0002_check", "0003_validate"]


def test_validate_ended_by_a_ddl_queueing_the_app_is_not_sent_to_the_safe_pattern(cli, db, sql_dir, seeded):
    """Another deploy's ALTER TABLE (ACCESS EXCLUSIVE) queued behind the VALIDATE queues every query of the table
    behind it: the net ends the VALIDATE, and says why and what to do instead of "rewrite it with the safe pattern"."""
    slow_check(db, cli, sql_dir, seeded)
    other = waiting_on_validate(db, "ALTER TABLE t_val ADD COLUMN note text", name="other-deploy")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    other.join()
    line = one_error_line(result)
    assert "0003_validate.sql:1: failed to apply" in line
    assert f"(pid {other.pid}, application_name 'other-deploy'" in line
    assert "asking for ACCESS EXCLUSIVE, which the application's queries queue behind" in line
    assert "VALIDATE CONSTRAINT takes SHARE UPDATE EXCLUSIVE, which no query waits for" in line
    assert "already the safe pattern" in line and f"SELECT pg_cancel_backend({other.pid})" in line
    assert "rewrite it with the safe pattern" not in line and "accept-rewrite" not in line
    assert applied(db) == [SEED, "0002_check"]


# --- attack24p 8: rotating application blockers ----------------------------------------------------------


class Traffic:
    """`clients` application connections (application_name hcm-api), each running transactions that read t_app and
    stay open 0.4-1.2 s, back to back: some transaction always holds the table, never the same one for long."""

    def __init__(self, db, clients=6):
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(db,), daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()
            time.sleep(0.15)  # (staggered: their transactions overlap)

    def _run(self, db):
        conn = connect(db, application_name="hcm-api")
        try:
            cur = conn.cursor()
            while not self.stop.is_set():
                cur.execute("SELECT count(*) FROM t_app")
                cur.execute("SELECT pg_catalog.pg_sleep(0.4 + random() * 0.8)")
                conn.commit()
        finally:
            conn.close()

    def end(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def test_rotating_application_blockers_are_not_to_be_terminated(cli, db, sql_dir, seeded):
    db.query("CREATE TABLE t_app (id int); INSERT INTO t_app VALUES (1)")
    add_migration(sql_dir, "0002_x", "ALTER TABLE t_app ADD COLUMN x int;\n")
    traffic = Traffic(db)
    try:
        result = cli("migrate", "--sql-dir", sql_dir, "--lock-retry-budget", "4s", env=seeded)
    finally:
        traffic.end()
    line = one_error_line(result)
    assert "0002_x.sql:1: failed to apply" in line and "gave up after" in line
    assert "blocked by the application's own short transactions: " in line
    assert "each ended and replaced by others" in line and "application_name 'hcm-api'" in line
    assert "ending them does not help" in line and "deploy when the traffic is lower" in line
    assert "pg_terminate_backend" not in line and "end those sessions" not in line
    assert applied(db) == [SEED]


def test_a_blocker_that_outlives_the_tries_is_still_named_to_be_ended(cli, db, sql_dir, seeded):
    db.query("CREATE TABLE t_app (id int); INSERT INTO t_app VALUES (1)")
    add_migration(sql_dir, "0002_x", "ALTER TABLE t_app ADD COLUMN x int;\n")
    conn = connect(db, application_name="report-job")
    try:
        conn.cursor().execute("SELECT count(*) FROM t_app")
        result = cli("migrate", "--sql-dir", sql_dir, "--lock-retry-budget", "2s", env=seeded)
        pid = conn.info.backend_pid
    finally:
        conn.close()
    line = one_error_line(result)
    assert f"SELECT pg_terminate_backend({pid})" in line and "own short transactions" not in line


# --- attack24p 9: a frozen runner ------------------------------------------------------------------------

# The migration session idle in transaction (between two statements of its try) holding ACCESS EXCLUSIVE on t_app.
# The file's INSERTs after its ALTER: enough for the poll to catch the try idle between two of them (at ~1-5 ms a
# statement under the lock, seconds of them), few enough that the rerun, which applies them all, takes seconds: 20,000
# made the thawed test's rerun ~100 s at load 8.
ROWS = 3000
IDLE_HOLDING = """SELECT a.pid FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a USING (pid)
WHERE l.relation = 'public.t_app'::regclass AND l.granted AND l.mode = 'AccessExclusiveLock'
  AND a.state = 'idle in transaction' AND a.application_name LIKE 'hcm-db-migrations%'"""


def _frozen_idle_holding(db, sql_dir, seeded):
    """A runner SIGSTOPped while its try is idle in transaction between two statements, holding ACCESS EXCLUSIVE on
    t_app; the application's query on t_app (its own statement_timeout 20 s) gets its rows. Returns (runner, the
    migration session's pid)."""
    db.query("CREATE TABLE t_app (id int); INSERT INTO t_app VALUES (1), (2); CREATE TABLE region2 (id int)")
    inserts = "".join(f"INSERT INTO region2 VALUES ({i});\n" for i in range(ROWS))
    add_migration(sql_dir, "0002_x", "ALTER TABLE t_app ADD COLUMN x int;\n" + inserts)
    runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
    try:
        deadline = time.monotonic() + 60
        while not db.poll(IDLE_HOLDING):
            assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()
        runner.send_signal(signal.SIGSTOP)
        while not (rows := db.poll(IDLE_HOLDING)):  # (frozen between two statements: none runs to be cancelled)
            assert time.monotonic() < deadline
        app = connect(db, application_name="hcm-app")
        try:
            cur = app.cursor()
            cur.execute("SET statement_timeout = '20s'")
            cur.execute("SELECT count(*) FROM t_app")
            assert cur.fetchall() == [(2,)]
        finally:
            app.close()
    except BaseException:
        runner.send_signal(signal.SIGKILL)
        runner.communicate(timeout=30)
        raise
    return runner, rows[0][0]


# (attack24p 9, a runner frozen mid-try loses its locks within seconds: asserted by
# test_a_runner_frozen_between_statements_and_thawed_says_the_server_ended_its_try, whose frozen runner is then thawed.)


def test_the_migration_session_has_server_side_keepalives(db, sql_dir, seeded):
    """tcp_keepalives_* and tcp_user_timeout set for the migration's session (read while its file runs)."""
    add_migration(sql_dir, "0002_x", "CREATE TABLE seen AS SELECT name, setting FROM pg_catalog.pg_settings "
                  "WHERE name IN ('tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count', "
                  "'tcp_user_timeout') AND source = 'client';\n")
    runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
    assert runner.wait(timeout=60) == 0, runner.communicate()
    assert sorted(n for n, _ in db.query("SELECT name, setting FROM seen")) == [
        "tcp_keepalives_count", "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_user_timeout"]


# --- attack24p 10, 15: a per-try lock timeout of 0, or not below statement_timeout ----------------------


def test_a_lock_timeout_of_zero_is_said_in_config_and_migrate(cli, db, sql_dir, seeded):
    shown = cli("config", env={**seeded, "DB_LOCK_TIMEOUT": "0"})
    assert shown.exit_code == 0, shown.output
    assert "note: lock_timeout 0 (DB_LOCK_TIMEOUT (environment)): each try waits for its locks with no bound" \
        in shown.output, shown.output
    add_migration(sql_dir, "0002_x", "CREATE TABLE t_x (id int);\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--ddl-lock-timeout", "0", env=seeded)
    assert result.exit_code == 0, result.output
    assert "note: lock_timeout 0 (--ddl-lock-timeout): each try waits for its locks with no bound, and the " \
           "application's queries on the table queue behind that wait" in result.stderr, result.stderr


def test_a_lock_timeout_over_statement_timeout_is_clamped_so_the_wait_is_retried(cli, db, sql_dir, seeded):
    """--ddl-lock-timeout 5s --statement-timeout 2s and a report holding the table 3 s: before, the lock wait was
    ended by statement_timeout, not retried ("make the migration cheaper"); now each try waits 1 s, is retried,
    and the file applies once the report ends."""
    add_migration(sql_dir, "0002_x", "ALTER TABLE hcm_report_metadata ADD COLUMN x int;\n")
    with blocking(db, hold=3) as pid:
        result = cli("migrate", "--sql-dir", sql_dir, "--ddl-lock-timeout", "5s", "--statement-timeout", "2s",
                     env=seeded)
    assert result.exit_code == 0, result.output
    assert "note: lock_timeout 5s (--ddl-lock-timeout) is not below statement_timeout 2s (--statement-timeout): " \
           "each try waits at most 1000ms for its locks instead" in result.stderr, result.stderr
    assert f"blocked by pid {pid}" in result.stderr and "try 2" in result.stderr
    assert applied(db) == [SEED, "0002_x"]
    shown = cli("config", "--ddl-lock-timeout", "5s", "--statement-timeout", "2s", env=seeded)
    assert "note: lock_timeout 5s (--ddl-lock-timeout) is not below statement_timeout 2s" in shown.output


# --- attack24p 12: a blocker itself waiting; a blocker in another database ------------------------------


def test_a_blocker_itself_waiting_says_for_whom(cli, db, sql_dir, seeded):
    """b2 holds ROW EXCLUSIVE on the table and waits for advisory lock 77, held by b3: the lines say so, and how to
    free b2 by ending b3."""
    add_migration(sql_dir, "0002_x", "ALTER TABLE hcm_report_metadata ADD COLUMN x int;\n")
    b3 = connect(db, application_name="b3-holder")
    b2 = connect(db, application_name="b2-waiting")
    try:
        b3.cursor().execute("SELECT pg_advisory_lock(77)")
        b2.cursor().execute("UPDATE hcm_report_metadata SET report_name = report_name WHERE false")
        waiting = threading.Thread(target=lambda: b2.cursor().execute("SELECT pg_advisory_lock(77)"), daemon=True)
        waiting.start()
        while not db.poll(f"SELECT 1 FROM pg_locks WHERE pid = {b2.info.backend_pid} AND NOT granted"):
            time.sleep(0.01)
        result = cli("migrate", "--sql-dir", sql_dir, "--lock-retry-budget", "1s", env=seeded)
        b3_pid, b2_pid = b3.info.backend_pid, b2.info.backend_pid
    finally:
        b3.close()
        waiting.join(timeout=10)
        b2.close()
    line = one_error_line(result)
    assert f"pid {b2_pid} (application_name 'b2-waiting'" in line
    assert f"itself waiting for a lock held by pid {b3_pid} (application_name 'b3-holder')" in line
    assert f"or free it: SELECT pg_terminate_backend({b3_pid})" in line


def test_a_blocker_in_another_database_and_the_object_are_named(cli, db, sql_dir, seeded):
    """COMMENT ON DATABASE waits for a session connected to database postgres that commented on it first."""
    add_migration(sql_dir, "0002_x", f"COMMENT ON DATABASE {db.name} IS 'hcm';\n")
    server = db.server
    other = psycopg2.connect(dbname="postgres", user=server.user, password=server.password, host=server.host,
                             port=server.port, application_name="otherdb")
    try:
        other.cursor().execute(f"COMMENT ON DATABASE {db.name} IS 'other'")
        result = cli("migrate", "--sql-dir", sql_dir, "--lock-retry-budget", "1s", env=seeded)
        pid = other.info.backend_pid
    finally:
        other.close()
    line = one_error_line(result)
    assert f"lock on database {db.name}" in line, line
    assert f"pid {pid} (application_name 'otherdb', user " in line and ", in database postgres, " in line


# --- attack24p 16: the JSON log's final failure ----------------------------------------------------------


@pytest.mark.parametrize("budget", ["0", "1s"])
def test_the_final_failure_events_carry_the_retry_fields(cli, db, sql_dir, seeded, budget):
    """With --lock-retry-budget 0 no lock_retry event comes: the final ones are a log pipeline's only record."""
    add_migration(sql_dir, "0002_x", "ALTER TABLE hcm_report_metadata ADD COLUMN x int;\n")
    with blocking(db) as pid:
        result = cli("--log-format", "json", "migrate", "--sql-dir", sql_dir, "--lock-retry-budget", budget,
                     env=seeded)
    assert result.exit_code == 1
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    finals = [e for e in events if e["event"] in ("migration_failed", "error")]
    assert [e["event"] for e in finals] == ["migration_failed", "error"]
    for event in finals:
        assert event["lock_timeout_s"] == 0.3 and event["budget_s"] == float(budget.rstrip("s"))
        assert event["tries"] >= 1 and event["waiting_for"].startswith("ACCESS EXCLUSIVE lock on hcm_report_metadata")
        assert [b["pid"] for b in event["blocked_by"]] == [pid]
        assert event["blocked_by"][0]["application_name"] == "report-job"


# --- attack24p 11: statement_timeout ending a wait names what it waited for ---------------------------


# (under 3 s the watcher has not looked yet: the lock probe's view names it; before, "make the migration cheaper")
@pytest.mark.parametrize("timeout,waited,holder_words", [
    ("6s", "waiting for old snapshots", "now the transaction of pid {pid} (application_name 'nightly-dump'"),
    ("1s", "waiting for SHARE lock on virtualxid", "held by pid {pid} (application_name 'nightly-dump'"),
], ids=["watcher", "under-3s"])
def test_a_concurrent_build_timed_out_waiting_for_an_old_snapshot_names_its_holder(cli, db, sql_dir, seeded, timeout,
                                                                                  waited, holder_words):
    add_migration(sql_dir, "0002_idx", "-- transactional: false\n"
                  "CREATE INDEX CONCURRENTLY idx_waits ON hcm_report_metadata (dag_name);\n")
    holder = snapshot_holder(db)
    try:
        result = cli("migrate", "--sql-dir", sql_dir, "--statement-timeout", timeout, env=seeded)
        pid = holder.info.backend_pid
    finally:
        holder.close()
    line = one_error_line(result)
    assert "canceling statement due to statement timeout" in line
    assert f"it ran out of statement_timeout while {waited}" in line, line
    assert holder_words.format(pid=pid) in line, line
    assert "make the migration cheaper" not in line


@pytest.mark.parametrize("timeout", ["5s", "4s"])
def test_a_lock_wait_ended_by_statement_timeout_names_the_holder(cli, db, sql_dir, seeded, timeout):
    """--ddl-lock-timeout 0 (no per-try bound, no retry, no lock probe): statement_timeout ends the wait; the
    watcher's look from 3 s in names the holder. Before, its first look came on its 1 s tick, up to 4 s in: under 4 s
    it came as the wait ended or after ("make the migration cheaper"; 4/5 runs), under 5 s so in loaded runs."""
    add_migration(sql_dir, "0002_x", "ALTER TABLE hcm_report_metadata ADD COLUMN x int;\n")
    with blocking(db) as pid:
        result = cli("migrate", "--sql-dir", sql_dir, "--ddl-lock-timeout", "0", "--statement-timeout", timeout,
                     env=seeded)
    line = one_error_line(result)
    assert "it ran out of statement_timeout while waiting for ACCESS EXCLUSIVE lock on hcm_report_metadata, held " \
           f"by pid {pid} (application_name 'report-job'" in line, line
    assert "make the migration cheaper" not in line



def test_a_runner_frozen_between_statements_and_thawed_says_the_server_ended_its_try(cli, db, sql_dir, seeded):
    """fix24ap 2 and attack24p 9: SIGSTOP (a VM pause, a partition: no FIN reaches the server) while the try's
    transaction is idle between two statements holding ACCESS EXCLUSIVE (the probe thread frozen with it): the server
    ends the session (its try's idle_in_transaction_session_timeout), so the application's query ends within the try's
    idle bound (its own statement_timeout of 20 s is far below the session's 600 s floor), then SIGCONT: the runner's
    line says the server ended the session and that nothing of the file was applied; the rerun applies it whole."""
    runner, pid = _frozen_idle_holding(db, sql_dir, seeded)
    try:
        # (the frozen try lost its locks within seconds: no migration session is left idle in transaction)
        settings = db.query("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'hcm-db-migrations%' "
                            "AND state = 'idle in transaction'")
        assert settings == [(0,)]  # the frozen try's session is gone
        wait_for(db, "SELECT 1 WHERE NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)", (pid,))
    finally:
        runner.send_signal(signal.SIGCONT)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 1, err
    assert "0002_x.sql:" in err and "nothing of it was applied" in err, err
    assert "idle_in_transaction_session_timeout" in err and "frozen" in err, err
    assert "whether it committed is unknown" not in err, err  # (a killed statement reads alike to the client)
    assert applied(db) == [SEED] and db.query("SELECT count(*) FROM region2") == [(0,)]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert applied(db) == [SEED, "0002_x"] and db.query("SELECT count(*) FROM region2") == [(ROWS,)]
