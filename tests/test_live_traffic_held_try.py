"""The runtime stall bound watches the whole try (attack24l findings 3, 4, 6): a lock taken early then many quick
statements, DDL run by a function or a trigger a data statement calls, and waits on the rows the migration changed
(not only on its table locks) end the try once an application session waited past its bound; the run fails in one
line naming the waiter, not retried, nothing recorded. As in test_live_traffic_held.py, the application's side is
asserted by its own statement_timeout (5 s), far below what the file's work takes (15-20 s): its query returns only
if the runner ended the try.
"""

from conftest import SEED, add_migration, applied, one_error_line
from test_live_traffic import seeded  # noqa: F401 (a fixture)
from test_live_traffic_held import App, app_table

QUICK = "SELECT pg_catalog.pg_sleep(0.005);\n" * 3000  # 3,000 statements of 5 ms: each under the probe's 10 ms look
# the migration has changed (so locked) row 1: the app's own look skips it
ROW_LOCKED = "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM t_app WHERE id = 1 FOR UPDATE SKIP LOCKED)"
UPDATE_ROW_1 = "UPDATE t_app SET id = id WHERE id = 1"


def no_column(db):
    return db.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 't_app'") == [(1,)]


def test_a_lock_taken_early_then_many_quick_statements_is_bounded(cli, db, sql_dir, seeded):
    """attack24l A2: ADD COLUMN (its ACCESS EXCLUSIVE kept to COMMIT), then hundreds of statements too short for the
    probe's per-statement look, the session 'idle in transaction' between them: the app waited 3-12 s, exit 0."""
    app_table(db)
    add_migration(sql_dir, "0002_seed", "ALTER TABLE t_app ADD COLUMN note text;\n" + QUICK)
    app = App(db)
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert app.error is None and app.rows == [(2,)]  # its wait ended long before the 3,000 statements could have
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_seed.sql:" in line and "failed to apply" in line, result.output
    assert "a lock on public.t_app" in line and "application sessions waited" in line, line
    assert f"(pid {app.pid}, application_name 'hcm-app'" in line and "past the try's 330 ms" in line, line
    assert "nothing of it was applied: its transaction rolled back" in line and "not retried" in line, line
    assert "try 2" not in result.stderr
    assert applied(db) == [SEED] and no_column(db)


def test_a_non_transactional_files_block_says_what_committed_before_it(cli, db, sql_dir, seeded):
    app_table(db)
    add_migration(sql_dir, "0002_seed", "-- transactional: false\nCREATE TABLE t_before (id int);\nBEGIN;\n"
                  "ALTER TABLE t_app ADD COLUMN note text;\n" + QUICK + "COMMIT;\n")
    app = App(db)
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert app.error is None and app.rows == [(2,)]
    line = one_error_line(result)
    assert result.exit_code == 1 and "a lock on public.t_app" in line, result.output
    assert "statement 1 of 3004 (line 2) COMMITTED" in line and "rolled back" in line, line
    assert "make what COMMITTED safe to re-run first" in line, line
    assert applied(db) == [SEED] and no_column(db) and "t_before" in db.tables()


def test_ddl_run_by_a_function_a_select_calls_is_bounded(cli, db, sql_dir, seeded):
    """attack24l I1: `SELECT f()` where f runs the DDL: a SELECT was never watched (app 1.4-2.2 s, exit 0)."""
    app_table(db)
    add_migration(sql_dir, "0002_fn", "CREATE FUNCTION hold_app() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
                  "LOCK TABLE t_app IN ACCESS EXCLUSIVE MODE; PERFORM pg_catalog.pg_sleep(20); END $$;\n"
                  "SELECT hold_app();\n")
    app = App(db)
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert app.error is None and app.rows == [(2,)]
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_fn.sql:2: failed to apply" in line, result.output
    assert "SELECT hold_app() ran while its transaction held a lock on public.t_app" in line, line
    assert "`-- accept-rewrite: public.t_app`" in line, line
    assert applied(db) == [SEED]


def test_ddl_run_by_a_trigger_an_insert_fires_is_bounded(cli, db, sql_dir, seeded):
    """attack24l I2: an INSERT into a table the file creates fires a trigger that locks the live table."""
    app_table(db)
    add_migration(sql_dir, "0002_trigger", "-- transactional: false\nCREATE TABLE job_queue (id int);\n"
                  "CREATE FUNCTION job_hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "LOCK TABLE t_app IN ACCESS EXCLUSIVE MODE; PERFORM pg_catalog.pg_sleep(20); RETURN NEW; END $$;\n"
                  "CREATE TRIGGER job_hold AFTER INSERT ON job_queue FOR EACH ROW EXECUTE FUNCTION job_hold();\n"
                  "INSERT INTO job_queue VALUES (1);\n")
    app = App(db)
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert app.error is None and app.rows == [(2,)]
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_trigger.sql:5: failed to apply" in line, result.output
    assert "INSERT INTO job_queue VALUES (1) held its lock on public.t_app while application sessions waited" in line
    assert "statements 1-3 of 4" in line and "COMMITTED" in line, line
    assert applied(db) == [SEED] and db.query("SELECT count(*) FROM job_queue") == [(0,)]


def test_a_whole_table_update_the_app_waits_on_the_rows_of_is_bounded_and_pointed_to_batches(cli, db, sql_dir,
                                                                                              seeded):
    """attack24l C2 (and finding 6): the app's UPDATE of a row the migration's UPDATE changed waits on its
    transactionid, not on a table lock: never counted (app 0.3-7 s, exit 0). Here the migration's UPDATE takes row
    1, then works 20 s on row 2."""
    app_table(db)
    db.query("CREATE FUNCTION slow_row(i int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
             "IF i = 2 THEN PERFORM pg_catalog.pg_sleep(20); END IF; RETURN true; END $$")
    add_migration(sql_dir, "0002_update", "UPDATE t_app SET id = id WHERE slow_row(id);\n")
    app = App(db, ready=ROW_LOCKED, query=UPDATE_ROW_1)
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert app.error is None and app.rows == 1  # its UPDATE went through long before row 2's 20 s
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_update.sql:1: failed to apply" in line, result.output
    assert "UPDATE t_app SET id = id WHERE slow_row(id) held row locks on public.t_app while application" in line
    assert f"(pid {app.pid}, application_name 'hcm-app'" in line and "on rows it changed" in line, line
    assert "`-- backfill: batch`" in line and "docs/migration-files.md" in line and "accept-rewrite" not in line
    assert applied(db) == [SEED]


def test_row_locks_an_earlier_statement_took_are_bounded_too(cli, db, sql_dir, seeded):
    """attack24l C1's shape: the UPDATE is quick, a later statement long; its row locks stay to COMMIT."""
    app_table(db)
    add_migration(sql_dir, "0002_update", UPDATE_ROW_1 + ";\nSELECT pg_catalog.pg_sleep(20);\n")
    app = App(db, ready=ROW_LOCKED, query=UPDATE_ROW_1)
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert app.error is None and app.rows == 1
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_update.sql:2: failed to apply" in line, result.output
    assert "ran while its transaction held row locks on public.t_app" in line and "`-- backfill: batch`" in line
    assert applied(db) == [SEED]


def test_a_data_file_the_app_reads_beside_is_applied(cli, db, sql_dir, seeded):
    """No false failure: a seed file (many quick INSERTs, an UPDATE of the live table) while the app reads that table
    all along: reads wait on no lock the migration holds."""
    app_table(db)
    add_migration(sql_dir, "0002_data", "CREATE TABLE region (id int);\n"
                  + "".join(f"INSERT INTO region VALUES ({i});\n" for i in range(2000))
                  + "UPDATE t_app SET id = id;\n" + "SELECT pg_catalog.pg_sleep(0.005);\n" * 200)
    app = App(db, ready="SELECT 1 FROM pg_catalog.pg_stat_activity WHERE application_name LIKE "
              "'hcm-db-migrations%' AND query LIKE 'INSERT INTO region%'", query="SELECT count(*) FROM t_app")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert result.exit_code == 0, result.output
    assert app.error is None and app.rows == [(2,)]
    assert applied(db) == [SEED, "0002_data"]
