"""attack24w's findings on a frozen runner (SIGSTOP, a VM pause), against the real PostgreSQL: a non-transactional
data load frozen while its session holds a session advisory lock (1), a transactional try frozen mid-statement (4),
a RESET ALL the runner's text check misses (2).
"""

import signal
import time

import pytest

from conftest import SEED, add_migration, applied
from test_live_traffic import seeded  # noqa: F401 (a fixture)
from test_live_traffic_attack24r import wait_for
from test_live_traffic_parse import blind_run
from test_progress_attack import LIMITED_PASSWORD, limited_role  # noqa: F401 (a fixture)
from test_reliability import runner_process

LOAD = ("-- transactional: false\nCREATE TABLE load_target (id int PRIMARY KEY, v text);\n"
        "SELECT pg_advisory_lock(4242);\n"
        + "".join(f"INSERT INTO load_target VALUES ({i}, repeat('x', 200));\n" for i in range(1, 3001))
        + "SELECT pg_advisory_unlock(4242);\n")
BACKFILL = ("-- transactional: false\nCREATE TABLE fill_t AS SELECT g AS id, NULL::text AS region "
            "FROM generate_series(1, 20000) g;\nALTER TABLE fill_t ADD PRIMARY KEY (id);\n"
            "SELECT pg_advisory_lock(4242);\n-- backfill: batch\nUPDATE fill_t SET "
            "region = 'eu' WHERE id IN (SELECT id FROM fill_t WHERE region IS NULL LIMIT 20);\n"
            "SELECT pg_advisory_unlock(4242);\n")
BACKFILLING = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'UPDATE fill_t%%' "
               "AND pid <> pg_backend_pid()")
LOADING = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'INSERT INTO "
           "load_target%%' AND pid <> pg_backend_pid()")


def freeze_until_the_session_ends(db, runner, running=LOADING, ready=None):
    """SIGSTOP once the load's INSERTs run (and `ready(db)` holds); SIGCONT once the server ended the migration's
    session (at most 20 s)."""
    try:
        ((pid,),) = wait_for(db, running)
        started = time.monotonic()
        while ready is not None and not ready(db):
            assert time.monotonic() - started < 20, "the load never got ready to be frozen"
            time.sleep(0.01)
        runner.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        while db.poll("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)):
            assert time.monotonic() - started < 20, "the frozen runner's session still holds its advisory lock"
            time.sleep(0.05)
        assert db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242") == [(0,)]
    finally:
        runner.send_signal(signal.SIGCONT)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode != 0, err
    return err


def test_a_runner_frozen_between_autocommit_statements_holding_a_session_lock_loses_it_within_the_bound(
        cli, db, sql_dir, seeded):
    """attack24w 1: idle between autocommit statements (idle_session_timeout 0 on every session), the frozen
    runner's session kept its advisory lock, and the application waited, for the whole freeze."""
    add_migration(sql_dir, "0002_load", LOAD)
    err = freeze_until_the_session_ends(db, runner_process(["migrate", "--sql-dir", sql_dir], seeded))
    (loaded,) = db.query("SELECT count(*) FROM load_target")[0]
    assert 0 < loaded < 3000
    assert f"statements 1-{loaded + 2} of 3003" in err and "COMMITTED" in err, err
    assert "idle_session_timeout of 3.3 s" in err and "frozen" in err, err
    assert "whether it committed is unknown" not in err and "did not run" in err, err
    assert applied(db) == [SEED]


def test_a_runner_frozen_between_a_backfills_batches_holding_a_session_lock_loses_it_within_the_bound(
        cli, db, sql_dir, seeded):
    """attack24w 1, the documented safe pattern: a `-- backfill: batch` UPDATE after the session lock, frozen between
    (or during) its batches: the application waited for the whole freeze."""
    add_migration(sql_dir, "0002_fill", BACKFILL)
    err = freeze_until_the_session_ends(  # (frozen once a batch committed: frozen in the first, nothing committed)
        db, runner_process(["migrate", "--sql-dir", sql_dir], seeded), BACKFILLING,
        lambda db: db.query("SELECT count(*) FROM fill_t WHERE region = 'eu'") != [(0,)])
    (filled,) = db.query("SELECT count(*) FROM fill_t WHERE region = 'eu'")[0]
    assert 0 < filled < 20000 and "idle_session_timeout of 3.3 s" in err and "frozen" in err, err
    assert "statements 1-3 of 5" in err and f"COMMITTED {filled} row(s)" in err, err
    assert "did not run; the rest" not in err, err
    assert applied(db) == [SEED]


def test_a_blind_load_holding_a_session_lock_ended_at_the_bound_says_it_truly(cli, make_db, limited_role, sql_dir, pg):
    """attack24w 1, blind (frozen or not: the blind clock ends the load at the try's bound, its cancel sent as an
    INSERT ended): the line blamed the statement's own code for swallowing the cancel ("catches query_canceled") and
    said both "statements 1-21 COMMITTED" and "whether statement 21 took effect is unknown"."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_load", LOAD)
    result = migrate()
    (loaded,) = db.query("SELECT count(*) FROM load_target")[0]
    assert result.exit_code != 0 and loaded < 3000, result.output
    assert "catches query_canceled" not in result.stderr and "unknown" not in result.stderr, result.stderr
    assert f"statements 1-{loaded + 2} of 3003" in result.stderr and "COMMITTED" in result.stderr, result.stderr
    assert db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242") == [(0,)]


def test_a_blind_try_frozen_while_its_long_statement_ran_is_not_said_lost_between_retries(
        cli, make_db, limited_role, sql_dir, pg):
    """attack24w 4, blind: a transactional try frozen while its long INSERT ran (after an ALTER of a table the app
    uses), ended by the server's idle bound; the thawed runner said the session was lost "between lock retries"
    though no retry had happened (the first try, ended while frozen)."""
    db, _ = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_x", "CREATE TABLE load_big (id int);\nALTER TABLE t_probe ADD COLUMN region text;\n"
                  "INSERT INTO load_big SELECT g FROM generate_series(1, 3000000) g;\n")
    url = pg.url(db.name, user=limited_role, password=LIMITED_PASSWORD)
    runner = runner_process(["migrate", "--sql-dir", sql_dir, "--database-url", url, "--ddl-lock-timeout", "2s"], {})
    try:
        ((pid,),) = wait_for(db, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = "
                                 "'active' AND query LIKE 'INSERT INTO load_big%%' AND pid <> pg_backend_pid()")
        runner.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        while db.poll("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)):
            assert time.monotonic() - started < 40
            time.sleep(0.05)
    finally:
        runner.send_signal(signal.SIGCONT)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode != 0, err
    assert "between lock retries" not in err, err
    # (the thawed runner reads the statement's end or the blind clock's cancel first: a race; both lines are true)
    assert "before any retry" in err or "before the runner sent its COMMIT" in err, err
    assert "nothing of it was applied" in err, err
    assert applied(db) == [SEED] and db.query("SELECT to_regclass('load_big')") == [(None,)]


@pytest.mark.parametrize("reset", ["RESET/**/ALL;", "RESET\n-- all of them\nALL;"])
def test_a_reset_all_spelled_around_the_text_check_is_applied(cli, db, sql_dir, seeded, reset):
    """attack24w 2: a RESET ALL the runner's regex missed cleared its mark of the try: the file (no transaction
    control at all) was refused, blamed on a hidden COMMIT / ROLLBACK AND CHAIN."""
    add_migration(sql_dir, "0002_x", f"CREATE TABLE t_before_reset (id int);\n{reset}\n"
                  "CREATE TABLE t_after_reset (id int);\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    assert applied(db) == [SEED, "0002_x"]


def test_a_reset_all_built_at_run_time_is_named_among_the_causes(cli, db, sql_dir, seeded):
    """attack24w 2: EXECUTE 'RES' || 'ET ALL' in a DO block (no text check can see it): refused unrecorded, and the
    line names the reset, not only transaction control the file does not have."""
    add_migration(sql_dir, "0002_x", "CREATE TABLE t_before_reset (id int);\n"
                  "DO $$ BEGIN EXECUTE 'RES' || 'ET ALL'; END $$;\nCREATE TABLE t_after_reset (id int);\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code != 0
    assert "reset the runner's settings (a RESET ALL / DISCARD ALL" in result.stderr, result.stderr
    assert applied(db) == [SEED] and db.query("SELECT to_regclass('t_before_reset')") == [(None,)]
