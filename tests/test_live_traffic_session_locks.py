"""attack24u 1, 3, 5: a session-level advisory lock a migration file takes (pg_advisory_lock) outlives its try's
ROLLBACK and each COMMIT, so the application waiting on it waited through every lock retry (a transactional file,
a file's own BEGIN block, a deadlocked CONCURRENTLY build) or every batch of a backfill that took it itself (blind).
Each application session here times its own wait for that lock; the runner's tries are not timed."""

import pytest

from conftest import add_migration, applied, one_error_line
from test_live_traffic import blocking, connect, seeded  # noqa: F401 (a fixture)
from test_live_traffic_blind_attack24q import APP_WAITS_FOR_THE_LOCK, app_deadlocking_a_build, backfill, backfill_run
from test_live_traffic_blind_attack24q import migrate_deadlocking_a_build
from test_live_traffic_held import App
from test_progress_attack import limited_role  # noqa: F401 (a fixture)

MIGRATION_HOLDS = ("SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' "
                   "AND l.objid = 4242 AND l.granted AND a.application_name LIKE 'hcm-db-migrations%'")


def waiter_of(db) -> App:
    """An application session that, once the migration's session holds advisory lock 4242, asks for it (shared, as a
    job's gate does) and times its own wait (`waited`; `error`)."""
    return App(db, ready=MIGRATION_HOLDS, query="SELECT pg_catalog.pg_advisory_lock_shared(4242)",
               settings="SET deadlock_timeout = '20s'; SET statement_timeout = '40s'")


TAKES_THEN_ALTERS = "SELECT pg_catalog.pg_advisory_lock(4242);\nALTER TABLE t_locked ADD COLUMN region text;\n"


@pytest.mark.parametrize("text,line", [
    (TAKES_THEN_ALTERS, 1),
    ("-- transactional: false\nBEGIN;\n" + TAKES_THEN_ALTERS + "COMMIT;\n", 3),
], ids=["transactional", "own-block"])
def test_a_try_whose_session_keeps_the_files_advisory_lock_is_not_retried(cli, db, sql_dir, seeded, text, line):
    """attack24u 3 (HIGH): the try's ROLLBACK keeps the session lock, so the runner retried for as long as the blocker
    lived while the application waited on that lock (app 7.4-13.5 s, exit 0), in a transactional file and in a
    non-transactional file's own BEGIN block alike: not retried, and the session closed, which releases it."""
    db.query("CREATE TABLE t_locked (id int)")
    add_migration(sql_dir, "0002_region", text)
    with blocking(db, table="t_locked", hold=8):
        waiter = waiter_of(db)
        result = cli("migrate", "--lock-retry-budget", "20s", "--sql-dir", sql_dir, env=seeded)
        waiter.join()
    line_ = one_error_line(result)
    assert result.exit_code == 1, result.output
    assert (f"not retried: the session still holds the advisory lock the file took at line {line}" in line_
            and "closed the migration's session at once" in line_), line_
    assert "try 2" not in result.stderr, result.stderr
    assert applied(db)[-1] != "0002_region"
    assert waiter.error is None and waiter.waited < 4, (waiter.error, waiter.waited)  # (the blocker lived 8 s)


def test_a_blind_backfill_whose_batches_take_a_session_lock_keeps_the_clock_running(cli, make_db, limited_role, sql_dir,
                                                                                 pg):
    """attack24u 1 (HIGH): a batch statement that takes the lock itself (a function it calls) restarted the blind clock
    each batch, so the batches ran on while the application waited on the lock (app 13 s, exit 0): after each batch
    the session is asked, and the clock runs from the first batch that left one held."""
    db, migrate = backfill_run(cli, make_db, limited_role, sql_dir, pg)
    db.query("CREATE FUNCTION take_mutex() RETURNS boolean LANGUAGE plpgsql AS "
             "$$ BEGIN PERFORM pg_catalog.pg_advisory_lock(4242); RETURN true; END $$")
    add_migration(sql_dir, "0002_bf", backfill(0.05).replace(" LIMIT 2);", " LIMIT 2) AND (SELECT take_mutex());")
                  + "SELECT pg_catalog.pg_advisory_unlock_all();\n")
    result = migrate("--lock-retry-budget", "4s")
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_bf.sql:3:" in line and "the lock probe was blind" in line, line
    assert "not retried: the session still holds an advisory lock the file took (by line 3, through a function" in line
    assert "try 2" not in result.stderr, result.stderr
    assert applied(db)[-1] != "0002_bf"
    assert db.query("SELECT count(*) FROM t_bf WHERE v IS NULL") != [(0,)]  # (the batches after the bound never ran)


def test_a_deadlocked_build_whose_session_keeps_the_files_advisory_lock_is_not_retried(cli, db, sql_dir, seeded):
    """attack24u 5 (MEDIUM): the application's transactions wait on the file's session lock while the build waits for
    them: a deadlock retried over the whole budget (37 tries, app 301 s): a retry can never succeed, so not retried."""
    db.query("CREATE TABLE t_dl (v int); INSERT INTO t_dl VALUES (1)")
    add_migration(sql_dir, "0002_idx", "-- transactional: false\nSELECT pg_catalog.pg_advisory_lock(4242);\n"
                                       + APP_WAITS_FOR_THE_LOCK + "CREATE INDEX CONCURRENTLY idx_dl ON t_dl (v);\n")
    result = migrate_deadlocking_a_build(cli, db, sql_dir, seeded, app=app_deadlocking_a_build, said=None)
    line = one_error_line(result)
    assert result.exit_code == 1, result.output
    # (ended by the deadlock, or first by the app's wait on the lock past the bound: not retried either way)
    assert "not retried" in line and "the session still holds the advisory lock the file took at line 2" in line, line
    assert "closed the migration's session at once" in line, line
    assert "try 2" not in result.stderr and "dropped INVALID index" not in result.stderr, result.stderr
    assert applied(db)[-1] != "0002_idx"


def test_a_build_while_the_file_holds_a_session_lock_the_app_waits_on_is_ended(cli, db, sql_dir, seeded):
    """attack24u 5 (MEDIUM): a CONCURRENTLY build's holdings were not watched (it blocks no query by itself), but the
    session's advisory lock, held around it, blocked the application for the build's whole wait for an older snapshot
    (a pg_dump-like reader): what the session holds is watched then, and its wait for older snapshots is no lock retry."""
    db.query("CREATE TABLE t_cic (v int); INSERT INTO t_cic SELECT pg_catalog.generate_series(1, 100)")
    add_migration(sql_dir, "0002_idx", "-- transactional: false\nSELECT pg_catalog.pg_advisory_lock(4242);\n"
                                       "CREATE INDEX CONCURRENTLY i_cic ON t_cic (v);\n"
                                       "SELECT pg_catalog.pg_advisory_unlock(4242);\n")
    reader = connect(db, application_name="pg_dump")
    try:
        reader.set_session(isolation_level="REPEATABLE READ")
        reader.cursor().execute("SELECT count(*) FROM t_cic")  # (its snapshot: held to the test's end)
        waiter = waiter_of(db)
        result = cli("migrate", "--lock-retry-budget", "20s", "--statement-timeout", "12s", "--sql-dir", sql_dir,
                     env=seeded)
        waiter.join()
    finally:
        reader.close()
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_idx.sql:3: failed to apply" in line, result.output
    assert "advisory lock" in line and "closed the migration's session at once" in line, line
    assert "try 2" not in result.stderr, result.stderr
    assert waiter.error is None and waiter.waited < 4, (waiter.error, waiter.waited)
