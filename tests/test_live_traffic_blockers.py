"""Blockers no session can end (the third hostile pass on issue 24, items 4, 7, 8): an autovacuum worker, which
PostgreSQL cancels only after deadlock_timeout; a prepared transaction (two-phase commit: pg_blocking_pids says 0);
a lock wait at COMMIT (a deferred foreign key's check). The autovacuum tests run on a server of their own (a quick
autovacuum, naptime 1 s, server-wide, must not disturb the other tests); the prepared transactions on the suite's
server (started with max_prepared_transactions, conftest)."""

import json
import signal
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from conftest import SEED, Server, _new_database, add_migration, applied, embedded_server, one_error_line
from test_live_traffic import blocking, connect, seeded  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory) -> Server:
    server = embedded_server(tmp_path_factory.mktemp("own") / "pgdata", {"autovacuum_naptime": "1s", "fsync": "off"})
    info = server.get_postmaster_info()
    yield Server(host=str(info.socket_dir), port=info.port, user="postgres", password=None, enforces_passwords=False)
    server.cleanup()


def _migrated(server: Server, cli, sql_dir):
    database = _new_database(server)
    assert cli("migrate", "--sql-dir", sql_dir, env=database.db_env()).exit_code == 0
    yield database
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT gid FROM pg_prepared_xacts WHERE database = %s", (database.name,))
        for (gid,) in cur.fetchall():
            with server.connect(database.name) as other:
                other.cursor().execute(f"ROLLBACK PREPARED '{gid}'")
        cur.execute(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)")


@pytest.fixture
def own_db(own_pg, cli, sql_dir):
    """The seed migrated into a fresh database of the autovacuum tests' own server."""
    yield from _migrated(own_pg, cli, sql_dir)


@pytest.fixture
def prepared_db(pg, cli, sql_dir):
    """The seed migrated into a fresh database of the suite's server; prepared transactions left rolled back."""
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('max_prepared_transactions')::int")
        if cur.fetchone()[0] == 0:
            pytest.skip("the server (TEST_DATABASE_URL) runs with max_prepared_transactions = 0")
    yield from _migrated(pg, cli, sql_dir)


def _autovacuum_running(db, table: str, owner: str = "") -> int:
    """A real, slow autovacuum of `table` (cost delay 100 ms a page: a big table's, at default costs); its pid."""
    db.query((f"SET ROLE {owner}; " if owner else "") + f"CREATE TABLE {table} (id int PRIMARY KEY, n int) WITH (autovacuum_vacuum_cost_delay = 100, "
             "autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 1, autovacuum_vacuum_scale_factor = 0, "
             "autovacuum_analyze_threshold = 2000000000)")
    db.query(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, 30000) g")
    db.query(f"UPDATE {table} SET n = 1 WHERE id % 3 = 0")
    for _ in range(600):
        found = db.poll("SELECT pid FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND query LIKE %s",
                        (f"%{table}%",))
        if found:
            return found[0][0]
        time.sleep(0.1)
    pytest.fail("no autovacuum started on the table within 60 s")


def test_an_autovacuum_in_the_way_is_cancelled_within_a_try(cli, own_db, sql_dir):
    """Before: every 300 ms try gave up before the server's 1 s deadlock_timeout cancelled the autovacuum; the
    budget ran out, the blocker "application_name (none), user None"."""
    worker = _autovacuum_running(own_db, "t_vac")
    add_migration(sql_dir, "0002_add", "ALTER TABLE t_vac ADD COLUMN x int;\n")
    result = cli("migrate", "--lock-retry-budget", "4s", "--sql-dir", sql_dir, env=own_db.db_env())
    assert result.exit_code == 0, result.output
    assert applied(own_db) == [SEED, "0002_add"]
    assert not own_db.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND query LIKE '%%t_vac%%'", (worker,))


def test_an_autovacuum_this_role_cannot_get_cancelled_is_named_with_what_to_do(cli, own_pg, own_db, sql_dir):
    """A role that may not lower deadlock_timeout: every try gives up; the line names the autovacuum worker and
    says why the server does not cancel it and what does."""
    with own_pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'vac_app'")
        if not cur.fetchone():
            cur.execute("CREATE ROLE vac_app LOGIN IN ROLE pg_read_all_stats")
        cur.execute(f"GRANT ALL ON DATABASE {own_db.name} TO vac_app")
    own_db.query("GRANT ALL ON SCHEMA public TO vac_app; GRANT ALL ON ALL TABLES IN SCHEMA public TO vac_app; "
                 "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO vac_app")
    worker = _autovacuum_running(own_db, "t_vac2", owner="vac_app")  # its table: the ALTER needs that
    add_migration(sql_dir, "0002_add", "ALTER TABLE t_vac2 ADD COLUMN x int;\n")
    result = cli("migrate", "--lock-retry-budget", "1500ms", "--sql-dir", sql_dir,
                 env={**own_db.db_env(), "DB_USER": "vac_app"})
    line = one_error_line(result)
    if not own_db.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (worker,)):
        pytest.skip("the autovacuum finished before the run")
    assert f"blocked by pid {worker} (autovacuum worker: an autovacuum, which PostgreSQL cancels" in line, line
    assert f"to end it: SELECT pg_cancel_backend({worker})" in line, line
    assert "only after deadlock_timeout (1 s), longer than each try's 300 ms" in line, line
    assert "GRANT SET ON PARAMETER deadlock_timeout" in line and "user None" not in line, line


def test_an_anti_wraparound_autovacuum_is_named_as_one_and_waited_for(cli, own_db, sql_dir):
    """PostgreSQL never cancels an anti-wraparound autovacuum for a lock request: the runner says so and that it
    ends on its own (not "end that session"), and does not claim a cancel it cannot get."""
    own_db.query("CREATE TABLE t_wrap (id int PRIMARY KEY, n int) WITH (autovacuum_freeze_max_age = 100000, "
                 "autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1, autovacuum_enabled = false)")
    own_db.query("INSERT INTO t_wrap SELECT g, 0 FROM generate_series(1, 30000) g")
    # its age past its freeze_max_age: the server starts a VACUUM (to prevent wraparound), autovacuum off or not
    own_db.query("DO $$ BEGIN FOR i IN 1..100100 LOOP PERFORM pg_catalog.pg_current_xact_id(); COMMIT; END LOOP; "
                 "END $$")
    for _ in range(600):
        found = own_db.poll("SELECT pid FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                            "AND query LIKE '%t_wrap (to prevent wraparound)'")
        if found:
            break
        time.sleep(0.1)
    else:
        pytest.fail("no anti-wraparound autovacuum within 60 s")
    add_migration(sql_dir, "0002_add", "ALTER TABLE t_wrap ADD COLUMN x int;\n")
    line = one_error_line(cli("migrate", "--lock-retry-budget", "1500ms", "--sql-dir", sql_dir, env=own_db.db_env()))
    worker = found[0][0]
    assert (f"blocked by pid {worker} (autovacuum worker: an anti-wraparound autovacuum, which PostgreSQL never "
            "cancels") in line, line
    assert "it ends once the table is frozen" in line and "never cancelled by PostgreSQL and must finish" in line
    assert "pg_terminate_backend" not in line and "end that session" not in line, line
    own_db.query(f"SELECT pg_cancel_backend({worker})")


def _prepared(db, gid: str, how: str) -> None:
    conn = connect(db, application_name="xa-manager")
    conn.autocommit = True
    conn.cursor().execute(f"BEGIN; {how}; PREPARE TRANSACTION '{gid}'")
    conn.close()  # its session gone: the transaction stays, holding its locks


@pytest.mark.parametrize("how", ["SELECT * FROM hcm_report_metadata FOR UPDATE",
                                 "LOCK TABLE hcm_report_metadata IN ACCESS SHARE MODE"])
def test_a_prepared_transaction_in_the_way_is_named_with_commit_or_rollback_prepared(cli, prepared_db, sql_dir, how):
    """Before: "blocked by a session not seen in time", and "end that session" (it has none)."""
    prepared_db.query("INSERT INTO hcm_report_metadata (dag_run_id, dag_name, campaign_number, report_name, "
                      "trigger_frequency, trigger_date, filestore_id) VALUES ('r', 'd', 'c', 'n', 'daily', now(), 'f')")
    _prepared(prepared_db, "pt_report_1", how)
    add_migration(sql_dir, "0002_add", "ALTER TABLE hcm_report_metadata ADD COLUMN x int;\n")
    result = cli("migrate", "--lock-retry-budget", "1500ms", "--sql-dir", sql_dir, env=prepared_db.db_env())
    line = one_error_line(result)
    retries = [r for r in result.stderr.splitlines() if "0002_add.sql:1: lock not granted" in r]
    assert retries and all("prepared transaction 'pt_report_1' (two-phase commit" in r for r in retries), result.stderr
    assert "blocked by prepared transaction 'pt_report_1' (two-phase commit: no session" in line, line
    assert f"database {prepared_db.name}" in line and "owner postgres" in line, line
    assert "COMMIT PREPARED 'pt_report_1' or ROLLBACK PREPARED 'pt_report_1'" in line, line
    assert "commit or roll back the prepared transaction, then run again" in line, line
    assert "not seen in time" not in line and "end that session" not in line, line
    assert applied(prepared_db) == [SEED]


def test_a_lock_wait_at_commit_is_retried_and_its_blocker_named(cli, db, sql_dir, seeded):
    """A deferred foreign key checks at COMMIT: the parent row is locked by an app transaction for 2 s. Before: the
    transactional file failed on the first 300 ms timeout at COMMIT, not retried, nobody named. (A file's own
    BEGIN ... COMMIT block: test_live_traffic_bound.)"""
    db.query("CREATE TABLE t_parent (id int PRIMARY KEY); INSERT INTO t_parent VALUES (1); "
             "CREATE TABLE t_child (id int, parent int REFERENCES t_parent DEFERRABLE INITIALLY DEFERRED)")
    add_migration(sql_dir, "0002_child", "INSERT INTO t_child VALUES (1, 1);\n")
    app = connect(db, application_name="payroll-app")
    app.cursor().execute("SELECT 1 FROM t_parent WHERE id = 1 FOR UPDATE")
    pid = app.info.backend_pid
    threading.Timer(2, app.rollback).start()
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    finally:
        time.sleep(0.1)
        app.close()
    assert result.exit_code == 0, result.output
    retries = [r for r in result.stderr.splitlines() if "0002_child.sql" in r and "lock not granted" in r]
    assert retries, result.stderr
    assert f"blocked by pid {pid} (application_name 'payroll-app'" in retries[0], retries[0]
    assert f"waiting for a row lock held by the transaction of pid {pid}" in retries[0], retries[0]
    assert "0002_child.sql:1: at COMMIT (the file's deferred constraint checks), lock not granted" in retries[0]
    assert applied(db)[-1] == "0002_child" and db.query("SELECT count(*) FROM t_child") == [(1,)]


def test_a_violation_at_commit_is_still_the_files_error(cli, db, sql_dir, seeded):
    db.query("CREATE TABLE t_parent (id int PRIMARY KEY); "
             "CREATE TABLE t_child (id int, parent int REFERENCES t_parent DEFERRABLE INITIALLY DEFERRED)")
    add_migration(sql_dir, "0002_child", "INSERT INTO t_child VALUES (1, 1);\n")
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    assert "0002_child.sql: failed to apply" in line and "violates foreign key constraint" in line, line
    assert "nothing of it was applied" in line and "lock" not in line, line


def test_a_concurrent_build_waiting_on_a_prepared_transaction_names_it(cli, prepared_db, sql_dir):
    """Before: the progress lines named nothing (its locker is "pid 0") and the error said "raise
    --statement-timeout", which cannot help: the prepared transaction never ends by itself."""
    _prepared(prepared_db, "pt_writer", "INSERT INTO hcm_report_metadata (dag_run_id, dag_name, campaign_number, "
              "report_name, trigger_frequency, trigger_date, filestore_id) VALUES ('r', 'd', 'c', 'n', 'daily', "
              "now(), 'f')")
    add_migration(sql_dir, "0002_idx", "-- transactional: false\n"
                  "CREATE INDEX CONCURRENTLY idx_t_dag ON hcm_report_metadata (dag_name);\n")
    result = cli("migrate", "--statement-timeout", "5s", "--sql-dir", sql_dir, env=prepared_db.db_env())
    line = one_error_line(result)
    waits = [r for r in result.stderr.splitlines() if "0002_idx: running for" in r and "waiting for" in r]
    assert waits and "prepared transaction 'pt_writer' (two-phase commit" in waits[-1], result.stderr
    assert "COMMIT PREPARED 'pt_writer' or ROLLBACK PREPARED 'pt_writer'" in waits[-1], waits[-1]
    assert "0002_idx.sql:2: failed to apply" in line and "statement timeout" in line, line
    assert "it most likely waited for prepared transaction 'pt_writer'" in line, line
    assert "ROLLBACK PREPARED 'pt_writer'" in line and "raise --statement-timeout" not in line, line


def test_a_non_transactional_file_giving_up_after_a_commit_says_what_the_rerun_does(cli, db, sql_dir, seeded):
    """Statement 1 committed, statement 2 outlasted the budget. Before: "run again once it has ended", and the rerun
    started over at statement 1 ("column a already exists")."""
    db.query("CREATE TABLE t_other (id int)")
    add_migration(sql_dir, "0002_two", "-- transactional: false\nALTER TABLE hcm_report_metadata ADD COLUMN a int;\n"
                  "ALTER TABLE t_other ADD COLUMN b int;\n")
    with blocking(db, table="t_other") as pid:
        line = one_error_line(cli("migrate", "--lock-retry-budget", "1s", "--sql-dir", sql_dir, env=seeded))
    assert "0002_two.sql:3: failed to apply" in line and f"blocked by pid {pid}" in line, line
    assert "statement 1 of 2 (line 2) COMMITTED; statement 2 failed" in line, line
    assert ("a rerun runs the file from its first statement, so statement 1, which COMMITTED, runs again: make the "
            "file safe to re-run (IF NOT EXISTS) before that") in line, line


def test_show_blocker_query_leaves_out_a_nested_comment_whole(cli, db, sql_dir, seeded):
    """PostgreSQL's /* comments nest. Before: "leak 4111 */" was shown, read as after the comment's end."""
    add_migration(sql_dir, "0002_add", "ALTER TABLE hcm_report_metadata ADD COLUMN status int;\n")
    conn = connect(db)
    conn.cursor().execute("SELECT count(*) FROM hcm_report_metadata /* a /* inner */ leak card 4111 */ WHERE true")
    threading.Timer(1.5, conn.close).start()
    result = cli("--log-format", "json", "migrate", "--show-blocker-query", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    retries = [json.loads(r) for r in result.stderr.splitlines() if '"lock_retry"' in r]
    assert retries and retries[0]["blocked_by"][0]["query"].split() == [
        "SELECT", "count(*)", "FROM", "hcm_report_metadata", "WHERE", "true"], retries[0]
    assert "4111" not in result.output and "leak" not in result.output


def test_many_blockers_are_counted_after_the_first_three(cli, db, sql_dir, seeded):
    """Before: 40 idle holders made each line 8 KB, and the advice said "end that session"."""
    add_migration(sql_dir, "0002_add", "ALTER TABLE hcm_report_metadata ADD COLUMN status int;\n")
    holders = [connect(db, application_name=f"report-{n}") for n in range(5)]
    named = sorted(conn.info.backend_pid for conn in holders)
    try:
        for conn in holders:
            conn.cursor().execute("SELECT 1 FROM hcm_report_metadata LIMIT 1")
        line = one_error_line(cli("migrate", "--lock-retry-budget", "1s", "--sql-dir", sql_dir, env=seeded))
    finally:
        for conn in holders:
            conn.close()
    assert line.count("-- to end it: SELECT pg_terminate_backend(") == 3, line
    assert all(f"pg_terminate_backend({pid})" in line for pid in named[:3]), line
    assert "; and 2 more sessions (pg_blocking_pids lists them)" in line, line
    assert "end those sessions, or run again once they have ended" in line and "end that session" not in line, line


def test_a_lock_retry_budget_in_bare_seconds_is_the_runners(cli, db, seeded):
    """The budget is the runner's, in seconds: 0.5 is half a second. Before: refused, "rounds to 0 ms on the
    server, which means no limit"."""
    result = cli("config", "--lock-retry-budget", "0.5", env=seeded)
    assert result.exit_code == 0, result.output
    assert "lock retry        0.5s" in result.stdout, result.stdout
    env = cli("config", env={**seeded, "DB_LOCK_RETRY_BUDGET": "0.5"})
    assert env.exit_code == 0 and "lock retry        0.5s" in env.stdout, env.output
    assert cli("config", "--ddl-lock-timeout", "0.5", env=seeded).exit_code == 2  # lock_timeout: the server's ms


def _sigterm_at_old_snapshots(db, sql_dir, env) -> str:
    from test_live_traffic import snapshot_holder, wait_for_phase
    from test_reliability import runner_process

    holder = snapshot_holder(db)
    try:
        runner = runner_process(["migrate", "--sql-dir", sql_dir], env)
        wait_for_phase(db, "waiting for old snapshots", runner)
        runner.send_signal(signal.SIGTERM)
        return runner.communicate(timeout=30)[1]
    finally:
        holder.close()


def test_sigterm_in_a_rerun_build_says_what_this_run_did(cli, db, sql_dir, seeded):
    """The first run's build was stopped; the rerun drops its INVALID index, builds again, and is stopped too.
    Before: the rerun's line repeated the first run's record as if it were its own."""
    from test_live_traffic import BUILD

    add_migration(sql_dir, "0002_tenant_index", BUILD)
    first = _sigterm_at_old_snapshots(db, sql_dir, seeded)
    assert "interrupted by SIGTERM" in first, first
    err = _sigterm_at_old_snapshots(db, sql_dir, seeded)
    line = [r for r in err.splitlines() if r.startswith("error:")][-1]
    assert "interrupted by SIGTERM while it was running" in line, line
    assert "this run committed none of its statements; an earlier run left: not transactional:" in line, line
    assert "a CONCURRENTLY build stopped part-way leaves its index INVALID: the next migrate drops it" in line, line


def test_status_says_migrate_rebuilds_the_pending_migrations_own_invalid_index(cli, db, sql_dir, seeded):
    """Before: "DROP INDEX CONCURRENTLY ...; then run migrate again", a person's job, though migrate drops it."""
    from test_live_traffic import BUILD, INDEX

    add_migration(sql_dir, "0002_tenant_index", BUILD)
    _sigterm_at_old_snapshots(db, sql_dir, seeded)
    status = cli("status", "--sql-dir", sql_dir, env=seeded)
    assert (f"INVALID index public.{INDEX} on hcm_report_metadata (left by an earlier try of pending "
            "0002_tenant_index's CONCURRENTLY build): `runner.py migrate` drops it and builds it again") in status.stdout
    assert "DROP INDEX CONCURRENTLY" not in status.stdout, status.stdout
    db.query("CREATE INDEX CONCURRENTLY idx_other ON hcm_report_metadata (report_name)")
    db.query("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'idx_other'::regclass")  # no migration's
    status = cli("status", "--sql-dir", sql_dir, env=seeded)
    assert "INVALID index public.idx_other on hcm_report_metadata (a failed CREATE INDEX CONCURRENTLY" in status.stdout
    assert "DROP INDEX CONCURRENTLY public.idx_other; then run migrate again" in status.stdout


def test_a_prepared_transactions_forged_owner_is_quoted(cli, prepared_db, sql_dir):
    """attack 23f (prepared_owner_forge): the owner of a prepared transaction in the way (a role's name: anyone
    with CREATEROLE chooses it) was printed raw: it read as more fields (another database). Now quoted."""
    owner = "xa-manager, database postgres"
    prepared_db.query(f"CREATE ROLE \"{owner}\" LOGIN; GRANT SELECT ON hcm_report_metadata TO \"{owner}\"")
    server = prepared_db.server
    conn = psycopg2.connect(dbname=prepared_db.name, user=owner, host=server.host, port=server.port)
    conn.autocommit = True
    conn.cursor().execute("BEGIN; LOCK TABLE hcm_report_metadata IN ACCESS SHARE MODE; PREPARE TRANSACTION 'pt_x'")
    conn.close()
    add_migration(sql_dir, "0002_add", "ALTER TABLE hcm_report_metadata ADD COLUMN x int;\n")
    try:
        line = one_error_line(cli("migrate", "--lock-retry-budget", "1s", "--sql-dir", sql_dir,
                                  env=prepared_db.db_env()))
    finally:
        prepared_db.query("ROLLBACK PREPARED 'pt_x'")
        prepared_db.query(f"DROP OWNED BY \"{owner}\"; DROP ROLE \"{owner}\"")
    assert "blocked by prepared transaction 'pt_x' (two-phase commit" in line, line
    assert "owner 'xa-manager, database postgres', database " in line, line
    assert applied(prepared_db) == [SEED]
