"""attack24v's findings, against the real PostgreSQL with real runner processes and signals: SIGTERM while the rerun
drops an earlier try's INVALID index (2); a build on an unqualified table under the file's own search_path (3);
status's word on an interrupted pending DROP INDEX CONCURRENTLY (4).
"""

import signal
import threading
import time

import pytest

from conftest import SEED, add_migration, applied
from test_live_traffic import (BUILD, INDEX, blocking, index_state, kill_mid_build_and_let_the_server_finish_it,
                               seeded, sigterm_while_waiting_for_old_snapshots, snapshot_holder)  # noqa: F401
from test_reliability import runner_process


def wait_for_query(db, start: str, process, timeout=30):
    """Until a session runs a statement starting with `start` and waits (for a lock: an older transaction)."""
    deadline = time.monotonic() + timeout
    while not db.poll("SELECT 1 FROM pg_stat_activity WHERE query LIKE %s AND wait_event_type = 'Lock' "
                      "AND pid <> pg_backend_pid()", (start + "%",)):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)


INVALID_INDEXES = ("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE NOT i.indisvalid "
                   "ORDER BY 1")


@pytest.mark.parametrize("reindex", [False, True], ids=["build", "reindex"])
def test_sigterm_while_the_rerun_drops_a_leftover_stops_at_once(cli, db, sql_dir, seeded, reindex):
    """attack24v 2: the rerun's DROP INDEX CONCURRENTLY of the first try's INVALID index (a build's, or a REINDEX's
    _ccnew copy) waited for an old snapshot past SIGTERM (33 s; up to statement_timeout) and then dropped it. Now
    SIGTERM cancels the drop: the runner says so and exits 143 while the snapshot is still held, the leftover still
    INVALID; the next rerun finishes the work."""
    add_migration(sql_dir, "0002_tenant_index", BUILD)
    migration = "0002_tenant_index"
    if reindex:
        assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
        migration = "0003_reindex"
        add_migration(sql_dir, migration, f"-- transactional: false\nREINDEX INDEX CONCURRENTLY {INDEX};\n")
    before = applied(db)
    sigterm_while_waiting_for_old_snapshots(db, sql_dir, seeded)
    (left,) = db.query(INVALID_INDEXES)
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
    assert db.query(INVALID_INDEXES) == [left] and applied(db) == before
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert index_state(db) == [(True,)] and applied(db) == [*before, migration]
    assert db.query(INVALID_INDEXES) == []
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0


REP = ("CREATE SCHEMA reports;\nCREATE TABLE reports.rep (id int, name text);\n"
       "INSERT INTO reports.rep SELECT g, 'n' || g FROM generate_series(1, 100) g;\n"
       "CREATE INDEX rep_name_idx ON reports.rep (name);\n")
PATH_SET = "-- transactional: false\nSET search_path = reports, public;\n"
REP_INDEXES = ("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
               "WHERE i.indrelid = 'reports.rep'::regclass ORDER BY 1")


@pytest.mark.parametrize("statement, left, status_says", [
    ("CREATE INDEX CONCURRENTLY idx_rep_name ON rep (name, id);", "idx_rep_name",
     "(left by an earlier try of pending 0003_rep_idx's CONCURRENTLY build): `runner.py migrate` drops it"),
    ("CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_rep_name ON rep (name, id);", "idx_rep_name",
     "(left by an earlier try of pending 0003_rep_idx's CONCURRENTLY build): `runner.py migrate` drops it"),
    ("REINDEX INDEX CONCURRENTLY rep_name_idx;", "rep_name_idx_ccnew", "run migrate again")],
    ids=["named", "if-not-exists", "reindex"])
def test_a_build_under_the_files_own_search_path_is_finished_by_the_rerun(cli, db, sql_dir, seeded, statement, left,
                                                                          status_says):
    """attack24v 3: a file that sets its own search_path, then builds (or reindexes) CONCURRENTLY on an unqualified
    table: the interrupted try's INVALID leftover was looked for on the session's first path, never found; every
    rerun failed ("already exists", or the IF NOT EXISTS "run migrate again" that never helped). Now it is looked
    for where the file's SET put the table: dropped and built again, status rc 0."""
    add_migration(sql_dir, "0002_reports", REP)
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    add_migration(sql_dir, "0003_rep_idx", PATH_SET + statement + "\n")
    sigterm_while_waiting_for_old_snapshots(db, sql_dir, seeded)
    invalid = [name for name, valid in db.query(REP_INDEXES) if not valid]
    assert [name.rstrip("0123456789") for name in invalid] == [left] and applied(db) == [SEED, "0002_reports"]
    status = cli("status", "--sql-dir", sql_dir, env=seeded)
    (line,) = [line for line in status.stdout.splitlines() if f"INVALID index reports.{invalid[0]}" in line]
    assert status_says in line, line
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert f"dropped INVALID index reports.{invalid[0]}" in rerun.stderr, rerun.stderr
    assert all(valid for _, valid in db.query(REP_INDEXES)) and applied(db) == [SEED, "0002_reports", "0003_rep_idx"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0


def test_a_build_under_the_files_own_search_path_finished_by_the_server_is_its_work(cli, db, sql_dir, seeded):
    """attack24v 3, SIGKILL: the server finished the build after the runner died; status called it drift made outside
    migrations (rc 5), every rerun failed "already exists". Now it is that migration's work, counted as done."""
    add_migration(sql_dir, "0002_reports", REP)
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    add_migration(sql_dir, "0003_rep_idx", PATH_SET + "CREATE INDEX CONCURRENTLY idx_rep_name ON rep (name, id);\n")
    kill_mid_build_and_let_the_server_finish_it(db, sql_dir, seeded)
    assert ("idx_rep_name", True) in db.query(REP_INDEXES)
    status = cli("status", "--sql-dir", sql_dir, env=seeded)
    assert "made outside migrations" not in status.output, status.output
    rerun = cli("migrate", "--strict", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert "index reports.idx_rep_name is already built and valid" in rerun.stderr, rerun.stderr
    assert applied(db) == [SEED, "0002_reports", "0003_rep_idx"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0


def test_a_detach_under_the_files_own_search_path_is_finalized_by_the_rerun(cli, db, sql_dir, seeded):
    """attack24v 3, DETACH ... CONCURRENTLY after the file's SET search_path, stopped in its wait: the partition left
    pending was called "not left by this migration" on every rerun. Now the rerun completes it (FINALIZE)."""
    db.query("CREATE SCHEMA reports; CREATE TABLE reports.ev (id int) PARTITION BY RANGE (id); CREATE TABLE "
             "reports.ev1 PARTITION OF reports.ev FOR VALUES FROM (0) TO (100); CREATE TABLE reports.ev2 PARTITION "
             "OF reports.ev FOR VALUES FROM (100) TO (200)")
    add_migration(sql_dir, "0002_detach", PATH_SET + "ALTER TABLE ev DETACH PARTITION ev1 CONCURRENTLY;\n")
    with blocking(db, table="reports.ev"):
        assert cli("migrate", "--statement-timeout", "1s", "--sql-dir", sql_dir, env=seeded).exit_code != 0
    pending = ("SELECT inhrelid::regclass::text, inhdetachpending FROM pg_inherits "
               "WHERE inhparent = 'reports.ev'::regclass")
    assert ("reports.ev1", True) in db.query(pending)
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert 'partition "ev1" is pending detach, left by an earlier try of this migration' in rerun.stderr
    assert db.query(pending) == [("reports.ev2", False)] and applied(db) == [SEED, "0002_detach"]


def test_status_says_the_rerun_finishes_an_interrupted_drop_index_concurrently(cli, db, sql_dir, seeded):
    """attack24v 4: status told the user to drop the index by hand after a pending DROP INDEX CONCURRENTLY stopped
    part-way, though the rerun finishes it (as it says for a build's leftover). Its rerun does: tested here."""
    db.query(f"CREATE INDEX {INDEX} ON hcm_report_metadata (tenant_id)")
    add_migration(sql_dir, "0002_drop_index", f"-- transactional: false\nDROP INDEX CONCURRENTLY {INDEX};\n")
    with blocking(db):
        assert cli("migrate", "--statement-timeout", "1s", "--sql-dir", sql_dir, env=seeded).exit_code != 0
    assert index_state(db) == [(False,)]
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    (line,) = [line for line in status.stdout.splitlines() if f"INVALID index public.{INDEX}" in line]
    assert status.exit_code != 0
    assert "(left by pending 0002_drop_index's interrupted DROP INDEX CONCURRENTLY): `runner.py migrate` finishes " \
           "the drop" in line and "DROP INDEX CONCURRENTLY public" not in line, line
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert index_state(db) == [] and applied(db) == [SEED, "0002_drop_index"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0
