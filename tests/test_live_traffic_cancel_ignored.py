"""Issue 24, attack24t 4, 6, 7: the bound holds when a cancel does not take, and whatever the session's statistics
settings. A DO block whose own loop catches query_canceled (a hand-written "retry on timeout") swallows the probe's
cancel while its ACCESS EXCLUSIVE lock stays held: the runner ends the migration's own session (pg_terminate_backend)
and fails the try in one line, not retried. A statement that ran while the application waited past the bound is
never a plain success, even the file's last, autocommitted. With track_activities off for the migration role
(pg_stat_activity: state 'disabled') the probe's cancels still reach the statement. The application's side is
asserted by its own statement_timeout (5 s), far below the file's loop (20 s); never a timing of the runner.
"""

from conftest import SEED, add_migration, applied, one_error_line
from test_live_traffic import connect, seeded  # noqa: F401 (a fixture)
from test_live_traffic_bound import migrate_one_try
from test_live_traffic_try import tables
from test_live_traffic_held import DO_HOLDING, HOLDING, App, app_table
from test_live_traffic_parse import blind_run
from test_progress_attack import limited_role  # noqa: F401 (a fixture)

# ALTER (its ACCESS EXCLUSIVE kept to the end), then a loop whose sub-block catches every cancel and goes on
SWALLOW = ("DO $$ DECLARE tries int := 0; BEGIN ALTER TABLE {table} ADD COLUMN region text; LOOP BEGIN "
           "PERFORM pg_catalog.pg_sleep(0.1); tries := tries + 1; EXIT WHEN tries >= {tenths}; EXCEPTION WHEN "
           "query_canceled THEN RAISE NOTICE 'timed out, retrying'; END; END LOOP; END $$;\n")
# the same, but the loop stops at the first cancel: the block ends at once, normally (its ALTER kept)
STOPS = ("DO $$ BEGIN ALTER TABLE t_app ADD COLUMN region text; LOOP BEGIN PERFORM pg_catalog.pg_sleep(0.1); "
         "EXCEPTION WHEN query_canceled THEN EXIT; END; END LOOP; END $$;\n")


def region(db, table="t_app") -> int:
    return db.query("SELECT count(*) FROM information_schema.columns WHERE table_name = %s AND column_name = "
                    "'region'", (table,))[0][0]


def beside_the_app(cli, db, sql_dir, env, name: str, body: str):
    """Migrate `name` (`body`) while an application session waits to read t_app (its statement_timeout 5 s, far
    below the file's run): its wait ended by the runner, not by that timeout. The run's result and error line."""
    app_table(db)
    add_migration(sql_dir, name, body)
    app = App(db)
    result = cli("migrate", "--sql-dir", sql_dir, env=env)
    app.join()
    assert app.error is None and app.rows == [(2,)]
    return result, one_error_line(result)


def test_a_block_swallowing_the_cancel_has_its_session_ended_and_is_not_retried(cli, db, sql_dir, seeded):
    """attack24t 4: the probe's cancels, each swallowed, stretched a 6 s loop to 107 s (the app waited all of it)."""
    result, line = beside_the_app(cli, db, sql_dir, seeded, "0002_region", SWALLOW.format(table="t_app", tenths=200))
    assert result.exit_code == 1 and "0002_region.sql:1: failed to apply" in line, result.output
    assert "did not end when the runner cancelled it" in line and "pg_terminate_backend" in line, line
    assert "nothing of it was applied: its transaction rolled back" in line, line
    assert "not retried" in line and "query_canceled" in line, line
    assert "try 2" not in result.stderr
    assert applied(db) == [SEED] and region(db) == 0


def test_a_non_transactional_block_swallowing_the_cancel_says_what_committed(cli, db, sql_dir, seeded):
    """attack24t 6: in a `-- transactional: false` file it committed with the lock held throughout, exit 0."""
    body = "-- transactional: false\nCREATE TABLE t_before (id int);\n" + SWALLOW.format(table="t_app", tenths=200)
    result, line = beside_the_app(cli, db, sql_dir, seeded, "0002_region", body)
    assert result.exit_code == 1 and "0002_region.sql:3: failed to apply" in line, result.output
    assert "did not end when the runner cancelled it" in line, line
    assert "statement 1 of 2 (line 2) COMMITTED" in line and "whether statement 2 took effect is unknown" in line
    assert "try 2" not in result.stderr
    assert applied(db) == [SEED] and "t_before" in db.tables() and region(db) == 0


def test_a_last_statement_that_committed_while_the_app_waited_is_no_success(cli, db, sql_dir, seeded):
    """attack24t 6: `overheld` was read only before a next statement: a non-transactional file's last statement,
    autocommitted, escaped it (applied, exit 0, after the app waited past the bound)."""
    result, line = beside_the_app(cli, db, sql_dir, seeded, "0002_region", "-- transactional: false\n" + STOPS)
    assert result.exit_code == 1 and "0002_region.sql:2: failed to apply" in line, result.output
    assert "application sessions waited" in line and "its only statement (line 2) COMMITTED" in line, line
    assert "it COMMITTED" in line, line
    assert applied(db) == [SEED] and region(db) == 1


def test_a_blind_try_whose_cancel_was_swallowed_is_cut_off_and_not_retried(cli, make_db, limited_role, sql_dir, pg):
    """attack24t 4, blind: the clock's one cancel swallowed, the try ended after the loop and RETRIED for the
    whole budget (the app stalled ~3 s at each try). Now its connection is shut (the probe has none to end the
    session from) and the server ends the session: the app's read returns well before the loop's 20 s."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_region", SWALLOW.format(table="t_probe", tenths=200))
    app = App(db, ready=HOLDING.replace("t_app", "t_probe"), query="SELECT count(*) FROM t_probe")
    result = migrate("--lock-retry-budget", "20s")
    app.join()
    assert app.error is None and app.rows == [(1,)]
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_region.sql:1: failed to apply" in line, result.output
    assert "did not end when the runner cancelled it" in line and "not retried" in line, line
    assert "closed its connection" in line and "the lock probe was blind" in line, line
    assert "try 2" not in result.stderr
    assert "nothing of it was applied" in line and region(db, "t_probe") == 0


def test_the_bound_holds_with_track_activities_off_for_the_migration_role(cli, db, sql_dir, seeded):
    """attack24t 7: pg_stat_activity shows state 'disabled' for such a session; both cancels asked for 'active':
    nothing was ever cancelled (the app waited the statement's whole run)."""
    db.query(f'ALTER ROLE "{db.server.user}" IN DATABASE "{db.name}" SET track_activities = off')
    result, line = beside_the_app(cli, db, sql_dir, seeded, "0002_hold", DO_HOLDING.format(sleep=20))
    assert result.exit_code == 1 and "0002_hold.sql:1: failed to apply" in line, result.output
    assert "held its lock on public.t_app while application sessions waited" in line, line
    assert applied(db) == [SEED]


def test_a_lock_wait_past_the_try_is_ended_with_track_activities_off(cli, db, sql_dir, seeded):
    """attack24t 7, the probe's other cancel (lock waits: lock_probe._CANCEL asked for state 'active', a 'Lock' wait
    event and xact_start, none of which such a session shows): LOCK TABLE a, b waited the server's whole
    lock_timeout for b while holding a."""
    tables(db)
    db.query(f'ALTER ROLE "{db.server.user}" IN DATABASE "{db.name}" SET track_activities = off')
    add_migration(sql_dir, "0002_two", "LOCK TABLE t_one, t_two IN ACCESS EXCLUSIVE MODE;\n")
    first, second = connect(db), connect(db)
    first.cursor().execute("LOCK TABLE t_one IN ROW EXCLUSIVE MODE")
    second.cursor().execute("LOCK TABLE t_two IN ROW EXCLUSIVE MODE")
    pid = second.info.backend_pid
    line = one_error_line(migrate_one_try(cli, db, sql_dir, seeded, first, second))
    assert "0002_two.sql:" in line and "locks not all granted within the try's 1 s (ended by the runner" in line, line
    assert f"blocked by pid {pid}" in line
    assert applied(db) == [SEED]
