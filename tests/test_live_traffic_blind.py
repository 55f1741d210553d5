"""Issue 24, attack24m findings 3-4: the stall bound while the lock probe is blind (the role's CONNECTION LIMIT
leaves it no slot) holds for the try as a whole, from its first statement that may lock what the application uses
to its COMMIT, whatever runs between; and a backfill's batches are watched like any try."""

import threading

import pytest

from conftest import SEED, add_migration, applied, one_error_line
from test_live_traffic import connect, seeded  # noqa: F401 (a fixture)
from test_live_traffic_held import App
from test_live_traffic_held_try import ROW_LOCKED, UPDATE_ROW_1
from test_live_traffic_parse import blind_run
from test_progress_attack import LIMITED_PASSWORD, limited_role  # noqa: F401 (a fixture)

ADD = "ALTER TABLE t_probe ADD COLUMN note text;\n"
# each statement too short for a cancel to reach it: the runner ends the try between them
QUICK_INSERTS = "INSERT INTO t_log SELECT 1 FROM pg_catalog.pg_sleep(0.004);\n" * 400
RETYPE = ("CREATE FUNCTION retype() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
          "ALTER TABLE t_probe ALTER COLUMN id TYPE bigint; PERFORM pg_catalog.pg_sleep(1.5); END $$;\n")


def with_log(db, limited_role):
    db.query(f"CREATE TABLE t_log (id int); ALTER TABLE t_log OWNER TO {limited_role}")


def columns(db):
    return db.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 't_probe'")[0][0]


@pytest.mark.parametrize("body", [ADD + "SELECT pg_catalog.pg_sleep(1.5);\n", ADD + QUICK_INSERTS],
                         ids=["lock-then-sleep", "lock-then-quick-inserts"])
def test_a_blind_probe_bounds_the_whole_try_from_its_first_lock_to_its_commit(cli, make_db, limited_role, sql_dir,
                                                                              pg, body):
    """attack24m 3: blind, each statement was bounded on its own clock and only DDL/LOCK/DO/CALL: ADD COLUMN (ACCESS
    EXCLUSIVE kept to COMMIT) then a sleep or thousands of INSERTs stalled the app 0.5-3 s, exit 0."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    with_log(db, limited_role)
    add_migration(sql_dir, "0002_lock", body)
    result = migrate("--lock-retry-budget", "1s")
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_lock.sql:" in line and "failed to apply" in line, result.output
    assert "the lock probe was blind" in line and "allow the migration role one more connection" in line, line
    assert "cannot see the migration session" in result.stderr and "to its COMMIT" in result.stderr
    assert "try 2 in" in result.stderr  # a lock try: retried, the probe may see again
    assert LIMITED_PASSWORD not in result.output
    assert applied(db)[-1] != "0002_lock" and columns(db) == 1


def test_a_blind_probe_bounds_a_query_calling_a_function_that_locks(cli, make_db, limited_role, sql_dir, pg):
    """attack24m 3: `SELECT retype()` (its body an ALTER TYPE) was taken for a query: never bounded while blind."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_fn", RETYPE)
    add_migration(sql_dir, "0003_call", "SELECT retype();\n")
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0003_call.sql:1: failed to apply" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] == "0002_fn"
    assert db.query("SELECT data_type FROM information_schema.columns WHERE table_name = 't_probe'") == [("integer",)]


HOLD = ("CREATE FUNCTION hold() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "ALTER TABLE t_probe ALTER COLUMN id TYPE bigint; PERFORM pg_catalog.pg_sleep(1.5); RETURN 1; END $$;\n")


@pytest.mark.parametrize("call", ["INSERT INTO t_log SELECT hold();\n", "CREATE TABLE t_made AS SELECT hold() AS v;\n"],
                         ids=["insert-select", "create-table-as"])
def test_a_blind_probe_bounds_a_data_statement_calling_a_function_that_locks(cli, make_db, limited_role, sql_dir,
                                                                               pg, call):
    """attack24n 1: only a bare SELECT was checked for the database's own functions: `INSERT ... SELECT f()` and
    `CREATE TABLE ... AS SELECT f()` (f an ALTER TYPE) stalled the app for f's whole run, exit 0."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    with_log(db, limited_role)
    add_migration(sql_dir, "0002_fn", HOLD)
    add_migration(sql_dir, "0003_call", call)
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0003_call.sql:1: failed to apply" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] == "0002_fn"
    assert db.query("SELECT data_type FROM information_schema.columns WHERE table_name = 't_probe'") == [("integer",)]


@pytest.mark.parametrize("rows", ["UPDATE t_probe SET id = id WHERE id <= 10;\n", "DELETE FROM t_probe WHERE id < 0;\n",
                                  "SELECT id FROM t_probe FOR UPDATE;\n"], ids=["update", "delete", "for-update"])
def test_a_blind_probe_bounds_a_try_holding_an_existing_tables_row_locks(cli, make_db, limited_role, sql_dir, pg,
                                                                          rows):
    """attack24n 2: blind, row locks on an existing table (the application's writes of those rows wait on them to the
    COMMIT) were not bounded: an UPDATE then a 3 s statement stalled the app's UPDATE of a row 3 s, exit 0."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_rows", rows + "SELECT pg_catalog.pg_sleep(1.5);\n")
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0002_rows.sql:2: failed to apply" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] != "0002_rows"


def test_a_blind_probe_bounds_a_long_try_of_queries_and_inserts_into_an_existing_table(cli, make_db, limited_role,
                                                                                     sql_dir, pg):
    """It was left alone (no DDL, built-in functions only); but an INSERT into an existing table may fire its
    triggers, and a query may run user code by a dozen spellings (attack24o): only what is harmless by construction
    is left alone now (test_live_traffic_blind_whitelist.py), this is bounded."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    with_log(db, limited_role)
    add_migration(sql_dir, "0002_data", "SELECT pg_catalog.pg_sleep(0.8);\n" + QUICK_INSERTS)
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0002_data.sql:1: failed to apply" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] != "0002_data"


# --- a backfill's batches (the probe sees) ------------------------------------------------------------------------

SLOW_ROW_4 = ("CREATE FUNCTION slow_val(i int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
              "IF i = 4 THEN PERFORM pg_catalog.pg_sleep(20); END IF; RETURN i; END $$")
BATCHED = ("-- transactional: false\n-- backfill: batch\n"
           "UPDATE t_fill SET v = slow_val(id) WHERE id IN (SELECT id FROM t_fill WHERE v IS NULL ORDER BY id LIMIT 2);\n")


def test_a_backfill_batch_the_app_waits_on_the_rows_of_is_ended_and_its_earlier_batches_stay(cli, db, sql_dir,
                                                                                              seeded):
    """attack24m 4: a batch's try was not watched (a LIMIT the runner accepts stalled the app's UPDATEs of its rows
    0.6-1.0 s, exit 0). Here the first batch (rows 1-2) commits; the second locks row 3, then works 20 s on row 4."""
    db.query("CREATE TABLE t_fill (id int PRIMARY KEY, v int); INSERT INTO t_fill (id) VALUES (1), (2), (3), (4);"
             + SLOW_ROW_4)
    add_migration(sql_dir, "0002_fill", BATCHED)
    app = App(db, ready="SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM t_fill WHERE id = 3 FOR UPDATE SKIP LOCKED)",
              query="UPDATE t_fill SET v = v WHERE id = 3")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert app.error is None and app.rows == 1  # its UPDATE went through long before the batch's 20 s
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_fill.sql:3: failed to apply" in line, result.output
    assert "held row locks on public.t_fill while application sessions waited" in line, line
    assert f"(pid {app.pid}, application_name 'hcm-app'" in line, line
    assert "COMMITTED 2 row(s) in 1 batch(es)" in line and "smaller LIMIT" in line and "the batches committed stay" in line, line
    assert "try 2" not in result.stderr  # not a lock retry
    assert applied(db) == [SEED]
    assert db.query("SELECT id, v FROM t_fill ORDER BY id") == [(1, 1), (2, 2), (3, None), (4, None)]


# --- the runner's own record before the COMMIT ----------------------------------------------------------------------

def test_the_lock_the_files_record_needs_is_taken_inside_the_try(cli, db, sql_dir, seeded):
    """attack24m 5: after the file's last statement nothing was watched: a co-tenant's SHARE on the checksum table
    made the record wait its lock_timeout while the file's ACCESS EXCLUSIVE queued the app (0.3 s past the bound),
    then the run failed (exit 4). Now that lock is the try's last one: bounded with it, its holder named, retried."""
    db.query("CREATE TABLE t_app (id int)")
    add_migration(sql_dir, "0002_add", "ALTER TABLE t_app ADD COLUMN note text;\n")
    holder = connect(db, application_name="co-tenant")
    try:
        holder.cursor().execute("LOCK TABLE _hcm_migration_checksum IN SHARE MODE")
        threading.Timer(1.5, holder.close).start()
        result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    finally:
        holder.close()
    assert result.exit_code == 0, result.output
    assert applied(db) == [SEED, "0002_add"]
    retries = [line for line in result.stderr.splitlines() if "try 2 in" in line]
    assert retries and "0002_add.sql:1: before COMMIT (the lock on " in retries[0], result.stderr
    assert "_hcm_migration_checksum" in retries[0] and "'co-tenant'" in retries[0], retries[0]
