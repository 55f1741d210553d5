"""attack24v's findings, against the real PostgreSQL with real runner processes and signals: SIGTERM while the rerun
drops an earlier try's INVALID index (2); a build on an unqualified table under the file's own search_path (3);
status's word on an interrupted pending DROP INDEX CONCURRENTLY (4).
"""

import signal
import threading
import time

import pytest

from conftest import SEED, add_migration, applied
from test_live_traffic import (BUILD, INDEX, blocking, index_state, seeded,  # noqa: F401 (a fixture)
                               sigterm_while_waiting_for_old_snapshots, snapshot_holder)
from test_reliability import runner_process


def wait_for_query(db, start: str, process, timeout=30):
    """Until a session runs a statement starting with `start` and waits (for a lock: an older transaction)."""
    deadline = time.monotonic() + timeout
    while not db.poll("SELECT 1 FROM pg_stat_activity WHERE query LIKE %s AND wait_event_type = 'Lock' "
                      "AND pid <> pg_backend_pid()", (start + "%",)):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)


def test_sigterm_while_the_rerun_drops_a_leftover_stops_at_once(cli, db, sql_dir, seeded):
    """attack24v 2: the rerun's DROP INDEX CONCURRENTLY of the first try's INVALID index waited for an old snapshot
    past SIGTERM (33 s; up to statement_timeout) and then dropped it. Now SIGTERM cancels the drop: the runner says
    so and exits 143 while the snapshot is still held, the index still INVALID; the next rerun finishes the work."""
    add_migration(sql_dir, "0002_tenant_index", BUILD)
    sigterm_while_waiting_for_old_snapshots(db, sql_dir, seeded)
    assert index_state(db) == [(False,)]
    holder = snapshot_holder(db)  # a pg_dump's: its snapshot, and ACCESS SHARE on the table the drop waits for
    holder.cursor().execute("SELECT count(*) FROM hcm_report_metadata")
    release = threading.Timer(30, holder.close)  # (before the fix the runner ended only with the snapshot)
    release.start()
    try:
        runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
        wait_for_query(db, "DROP INDEX CONCURRENTLY", runner)
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=90)
        still_held = not holder.closed
    finally:
        release.cancel()
        holder.close()
    assert runner.returncode == 143, err
    assert still_held, err  # it stopped while the old snapshot was there: its drop did not wait for it
    assert "interrupted by SIGTERM while it was running" in err and "dropped INVALID index" not in err, err
    assert "the next migrate drops it and builds it again" in err, err
    assert index_state(db) == [(False,)] and applied(db) == [SEED]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert index_state(db) == [(True,)] and applied(db) == [SEED, "0002_tenant_index"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0
