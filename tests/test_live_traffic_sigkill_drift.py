"""A SIGKILLed run's own work is never drift (issue 24, attack24x 1 and 2), against the real PostgreSQL with real
runner processes and a real SIGKILL (an evicted pod, an OOM kill): the INVALID index its interrupted CONCURRENTLY
build left (1) and the files it applied before it died (2) are the migrations' work for `status --exit-code` and
`migrate --strict`, before and after the rerun.
"""

import signal

import pytest

from conftest import SEED, add_migration, applied
from test_live_traffic import (BUILD, INDEX, index_state, seeded, snapshot_holder,  # noqa: F401 (a fixture)
                               stopped_mid_build, writer_holder)
from test_live_traffic_attack24r import wait_for
from test_reliability import runner_process

COLUMN = "ALTER TABLE hcm_report_metadata ADD COLUMN region text;\n"


@pytest.mark.parametrize("phase,hold", [("waiting for old snapshots", snapshot_holder),
                                        ("waiting for writers before build", writer_holder)],
                         ids=["snapshots", "writers"])
def test_the_invalid_index_a_sigkilled_build_left_is_not_drift_and_strict_reruns_it(cli, db, sql_dir, seeded, phase,
                                                                                     hold):
    """attack24x 1: status said both "left by an earlier try ... migrate drops it" and "DRIFT ... made outside
    migrations", and `migrate --strict` refused the rerun (exit 5): a human was needed."""
    add_migration(sql_dir, "0002_tenant_index", BUILD)
    stopped_mid_build(db, sql_dir, seeded, hold, phase)
    assert index_state(db) == [(False,)] and applied(db) == [SEED]
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    assert status.exit_code not in (0, 5), status.output  # the INVALID index is reported, not as drift
    assert "left by an earlier try of pending 0002_tenant_index" in status.output
    assert "DRIFT" not in status.output and "outside migrations" not in status.output

    rerun = cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert f"dropped INVALID index public.{INDEX}, left by an earlier try of this migration" in rerun.stderr
    assert index_state(db) == [(True,)] and applied(db) == [SEED, "0002_tenant_index"]
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    assert status.exit_code == 0, status.output
    assert cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded).exit_code == 0


def test_a_file_applied_before_the_run_was_sigkilled_is_not_drift(cli, db, sql_dir, seeded):
    """attack24x 2: 0002 applied (in yoyo's history), then SIGKILL during 0003: 0002's column was drift "made outside
    migrations" for ever (status --exit-code 5, every migrate --strict 5), even after the rerun completed 0003."""
    add_migration(sql_dir, "0002_col", COLUMN, "ALTER TABLE hcm_report_metadata DROP COLUMN region;\n")
    add_migration(sql_dir, "0003_tenant_index", BUILD)
    out = stopped_mid_build(db, sql_dir, seeded, snapshot_holder, "waiting for old snapshots")
    assert "applied 0002_col" in out and applied(db) == [SEED, "0002_col"]
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    assert "DRIFT" not in status.output and "region" not in status.output, status.output
    assert status.exit_code not in (0, 5), status.output  # (0003's INVALID index is still reported)

    rerun = cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert applied(db) == [SEED, "0002_col", "0003_tenant_index"] and index_state(db) == [(True,)]
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    assert status.exit_code == 0, status.output
    assert cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    # a change made by hand since is still drift
    db.query("CREATE INDEX by_hand ON hcm_report_metadata (region)")
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    assert status.exit_code == 5 and "index by_hand ON hcm_report_metadata added" in status.output, status.output


def test_a_rollback_sigkilled_in_its_second_file_leaves_the_first_recorded(cli, db, sql_dir, seeded):
    """attack24x 2, for `sql rollback --count 2`: 0003's rollback committed, then SIGKILL during 0002's: the table
    0003's rollback dropped was drift for status (and refused the next --strict migrate)."""
    add_migration(sql_dir, "0002_col", COLUMN,
                  "SELECT pg_sleep(60);\nALTER TABLE hcm_report_metadata DROP COLUMN region;\n")
    add_migration(sql_dir, "0003_table", "CREATE TABLE t3 (id int);\n", "DROP TABLE t3;\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    runner = runner_process(["sql", "rollback", "--count", "2", "--sql-dir", sql_dir], seeded)
    try:
        ((pid,),) = wait_for(db, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND query LIKE 'SELECT pg_sleep(60)%%'")
        runner.send_signal(signal.SIGKILL)
        out, _ = runner.communicate(timeout=30)
    finally:
        runner.kill()
    db.query("SELECT pg_terminate_backend(%s)", (pid,))  # (its transaction rolled back: 0002 stays applied)
    assert "rolled back 0003_table" in out and applied(db) == [SEED, "0002_col"]
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    assert status.exit_code == 1 and "DRIFT" not in status.output, status.output  # (0003 pending again)
    assert cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0
