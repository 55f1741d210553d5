"""attack24r's findings on CONCURRENTLY builds and a frozen runner, against the real PostgreSQL: a role without the
TEMPORARY privilege (7), --strict over the runner's own interrupted build (8), a runner frozen while its try holds a
lock (10), a DBA's old REINDEX leftover beside a migration's REINDEX (11).
"""

import signal
import threading
import time

import pytest

from conftest import SEED, SPECIAL_PASSWORD, add_migration, applied
from test_live_traffic import (BUILD, INDEX, TENANT_INDEXES, UNNAMED, connect, index_state,
                               kill_mid_build_and_let_the_server_finish_it, seeded,  # noqa: F401 (a fixture)
                               sigterm_while_waiting_for_old_snapshots)
from test_reliability import runner_process


@pytest.fixture
def no_temp(cli, make_db, password_role, sql_dir, pg):
    """A database whose migration role (a plain role, its owner) may not create temporary tables (REVOKE TEMPORARY
    ... FROM PUBLIC: a CIS hardening step): yields (db, the runner's env)."""
    db = make_db(owner=password_role)
    db.query(f"REVOKE TEMPORARY ON DATABASE {db.name} FROM PUBLIC, {password_role}")
    env = {"DATABASE_URL": pg.url(db.name, user=password_role, password=SPECIAL_PASSWORD)}
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    assert db.query(f"SELECT has_database_privilege('{password_role}', current_database(), 'TEMP')") == [(False,)]
    return db, env


@pytest.mark.parametrize("interrupt, left, said", [
    (sigterm_while_waiting_for_old_snapshots, False, "dropped INVALID index public.{}, left by an earlier try"),
    (kill_mid_build_and_let_the_server_finish_it, True, "index public.{} is already built and valid")],
    ids=["invalid", "valid"])
def test_without_temp_an_interrupted_builds_index_is_recognised(cli, no_temp, sql_dir, interrupt, left, said):
    """attack24r 7: the definition was read by building the index on a temporary copy; without TEMP the INVALID
    leftover was "not this migration's leftover (another definition)", rc 2, while status said the rerun drops it;
    the VALID one (the server finished it after a SIGKILL) failed "already exists"."""
    db, env = no_temp
    add_migration(sql_dir, "0002_tenant_index", BUILD)
    interrupt(db, sql_dir, env)
    assert index_state(db) == [(left,)] and applied(db) == [SEED]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert rerun.exit_code == 0, rerun.output
    assert said.format(INDEX) in rerun.stderr
    assert index_state(db) == [(True,)] and applied(db) == [SEED, "0002_tenant_index"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 0


def test_without_temp_an_invalid_index_of_another_definition_is_still_not_dropped(cli, no_temp, sql_dir):
    db, env = no_temp
    db.query(f"CREATE INDEX {INDEX} ON hcm_report_metadata (report_name); "
             f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{INDEX}'::regclass")  # someone else's
    add_migration(sql_dir, "0002_tenant_index", BUILD.replace("CONCURRENTLY", "CONCURRENTLY IF NOT EXISTS"))
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code != 0
    rerun = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert rerun.exit_code != 0 and f"an INVALID index public.{INDEX} is in the way" in rerun.stderr, rerun.output
    assert index_state(db) == [(False,)] and applied(db) == [SEED]


def test_without_temp_an_unnamed_build_the_server_finished_is_not_built_twice(cli, no_temp, sql_dir):
    """attack24r 7, unnamed: the server's name for the index was read off the temporary copy too."""
    db, env = no_temp
    add_migration(sql_dir, "0002_tenant_index", UNNAMED)
    kill_mid_build_and_let_the_server_finish_it(db, sql_dir, env)
    rerun = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert rerun.exit_code == 0, rerun.output
    assert "index public.hcm_report_metadata_tenant_id_idx is already built and valid" in rerun.stderr
    assert db.query(TENANT_INDEXES) == [("hcm_report_metadata_tenant_id_idx", True)]  # no _idx1 twin


@pytest.mark.parametrize("build, name", [(BUILD, INDEX), (UNNAMED, "hcm_report_metadata_tenant_id_idx")],
                         ids=["named", "unnamed"])
def test_strict_completes_the_runners_own_build_the_server_finished(cli, db, sql_dir, seeded, build, name):
    """attack24r 8: the index the pending, interrupted migration's build made (its name and definition) was drift
    "made outside migrations": status said so and `migrate --strict` refused the rerun (exit 5). attack24s 6: so
    still for an unnamed build (its server-given name: nothing in the text to match)."""
    add_migration(sql_dir, "0002_tenant_index", build)
    kill_mid_build_and_let_the_server_finish_it(db, sql_dir, seeded)
    assert db.query(TENANT_INDEXES) == [(name, True)] and applied(db) == [SEED]
    status = cli("status", "--sql-dir", sql_dir, env=seeded)
    assert "DRIFT" not in status.output and "made outside migrations" not in status.output, status.output
    rerun = cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert "DRIFT" not in rerun.stderr and f"index public.{name} is already built and valid" in rerun.stderr
    assert applied(db) == [SEED, "0002_tenant_index"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0


@pytest.mark.parametrize("build, name", [(BUILD, INDEX), (UNNAMED, "hcm_report_metadata_tenant_id_idx")],
                         ids=["named", "unnamed"])
def test_an_index_of_another_definition_under_a_pending_builds_name_is_still_drift(cli, db, sql_dir, seeded, build,
                                                                                     name):
    add_migration(sql_dir, "0002_tenant_index", build)
    kill_mid_build_and_let_the_server_finish_it(db, sql_dir, seeded)
    db.query(f"DROP INDEX {name}; CREATE INDEX {name} ON hcm_report_metadata (report_name)")  # someone else's
    rerun = cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 5 and "changed outside migrations" in rerun.stderr, rerun.output


# --- a runner frozen mid-try (attack24r 10) ----------------------------------------------------------

FROZEN = "ALTER TABLE hcm_report_metadata ADD COLUMN x int;\nSELECT pg_catalog.pg_sleep(4);\n"
SLEEPING = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
            "AND query LIKE '%%pg_sleep(4)%%' AND pid <> pg_backend_pid()")


def wait_for(db, sql, params=None, timeout=30):
    deadline = time.monotonic() + timeout
    while not (rows := db.poll(sql, params)):
        assert time.monotonic() < deadline, sql
        time.sleep(0.02)
    return rows


def test_a_runner_frozen_while_its_try_holds_the_lock_does_not_commit_that_try(cli, db, sql_dir, seeded):
    """attack24r 10: SIGSTOP while the try's last statement runs under ACCESS EXCLUSIVE, an application query
    queued behind it, SIGCONT just after the statement ended (before the server's idle bound): the frozen probe
    ended nothing, the runner COMMITted at once (exit 0, the app stalled for the whole freeze)."""
    add_migration(sql_dir, "0002_x", FROZEN)
    runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
    app = None
    try:
        ((pid,),) = wait_for(db, SLEEPING)
        runner.send_signal(signal.SIGSTOP)
        app = connect(db, application_name="hcm-app")
        app.autocommit = True
        waiting = threading.Thread(target=lambda: app.cursor().execute("SELECT count(*) FROM hcm_report_metadata"),
                                   daemon=True)
        waiting.start()
        wait_for(db, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'idle in transaction'", (pid,))
    finally:
        runner.send_signal(signal.SIGCONT)
    out, err = runner.communicate(timeout=60)
    waiting.join(timeout=30)
    app.close()
    assert runner.returncode != 0, err
    assert "0002_x.sql:2: " in err, err
    assert "pg_sleep(4) ran while its transaction held a lock on public.hcm_report_metadata" in err, err
    assert "application sessions waited" in err and "nothing of it was applied" in err, err
    assert applied(db) == [SEED]
    assert db.query("SELECT count(*) FROM pg_attribute WHERE attrelid = 'hcm_report_metadata'::regclass "
                    "AND attname = 'x'") == [(0,)]


# --- a DBA's old REINDEX leftover (attack24r 11) -----------------------------------------------------

def test_a_dbas_reindex_leftover_of_another_index_is_not_the_migrations_reindexs(cli, db, sql_dir, seeded):
    """attack24r 11: an INVALID idx_hcm_report_name_ccnew (a DBA's interrupted REINDEX) failed a migration's
    REINDEX of idx_hcm_report_campaign after it committed ("is INVALID"), and the rerun dropped it as "left by an
    earlier try of this migration's REINDEX"."""
    db.query("CREATE INDEX idx_hcm_report_name_ccnew ON hcm_report_metadata (report_name); UPDATE pg_index SET "
             "indisvalid = false WHERE indexrelid = 'idx_hcm_report_name_ccnew'::regclass")
    add_migration(sql_dir, "0002_reindex",
                  "-- transactional: false\nREINDEX INDEX CONCURRENTLY idx_hcm_report_campaign;\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    assert "idx_hcm_report_name_ccnew" not in result.stderr
    assert applied(db) == [SEED, "0002_reindex"]
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('idx_hcm_report_name_ccnew')") \
        == [(False,)]  # the DBA's, left for status to list


def test_a_try_the_server_ended_by_its_idle_bound_while_the_runner_was_frozen_says_so(cli, db, sql_dir, seeded):
    """attack24r 10, the 2 s case: frozen past the statement's end plus the try's idle bound, the server ended the
    session (the try's own SET LOCAL idle_in_transaction_session_timeout: rolled back); the line said the connection
    was lost and whether it committed is unknown."""
    add_migration(sql_dir, "0002_x", FROZEN)
    runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
    try:
        ((pid,),) = wait_for(db, SLEEPING)
        runner.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while db.poll("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        runner.send_signal(signal.SIGCONT)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode != 0, err
    assert "the session was lost before the runner sent its COMMIT: nothing of it was applied" in err, err
    assert "past its idle_in_transaction_session_timeout of 3.3 s" in err and "frozen" in err, err
    assert "whether it committed is unknown" not in err and applied(db) == [SEED]


def test_an_invalid_index_the_rerun_will_not_drop_is_not_promised_dropped(cli, no_temp, sql_dir):
    """attack24x 3: an INVALID index under an IF NOT EXISTS build's name, which this role cannot compare with the build
    (an expression: no TEMPORARY for the copy) and no earlier try of the migration made: the rerun will not drop it,
    so the error says "drop it yourself: DROP INDEX CONCURRENTLY ...", not "run migrate again: it drops ..."."""
    db, env = no_temp
    build = f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON hcm_report_metadata (lower(tenant_id))"
    db.query(build.replace(" CONCURRENTLY IF NOT EXISTS", "") + "; "
             f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{INDEX}'::regclass")  # a DBA's old try
    add_migration(sql_dir, "0002_tenant_index", f"-- transactional: false\n{build};\n")
    first = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert first.exit_code != 0 and f"index public.{INDEX} is INVALID" in first.stderr, first.output
    assert f"drop it yourself: DROP INDEX CONCURRENTLY public.{INDEX}; then run migrate again" in first.stderr, \
        first.stderr
    assert "it drops the INVALID index" not in first.stderr, first.stderr
    rerun = cli("migrate", "--sql-dir", sql_dir, env=env)  # (it does not drop it: the promise would have been false)
    assert rerun.exit_code != 0 and index_state(db) == [(False,)] and applied(db) == [SEED], rerun.output
    db.query(f"DROP INDEX {INDEX}")
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0 and index_state(db) == [(True,)]
