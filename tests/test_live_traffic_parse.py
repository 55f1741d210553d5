"""Issue 24, fourth hostile pass: what the runner decides about a statement comes from PostgreSQL's own parse of
it, never from a word in its text (a comment, a literal, a quoted name saying "concurrently")."""

import threading
from contextlib import contextmanager

import pytest

from conftest import SEED, add_migration, applied, one_error_line
from test_live_traffic import blocking, connect, seeded  # noqa: F401 (a fixture)
from test_progress_attack import LIMITED_PASSWORD, limited_role  # noqa: F401 (a fixture)


@contextmanager
def writing(db, hold: float, table="hcm_report_metadata"):
    """An app session idle in transaction after a write (ROW EXCLUSIVE on `table`), closed after `hold` seconds."""
    conn = connect(db, application_name="app")
    try:
        conn.cursor().execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")
        threading.Timer(hold, conn.close).start()
        yield conn.info.backend_pid
    finally:
        conn.close()


@pytest.mark.parametrize("statement", [
    "CREATE INDEX t_idx ON hcm_report_metadata (tenant_id) /* small: no need for concurrently */;",
    "CREATE INDEX t_idx ON hcm_report_metadata (tenant_id) WHERE report_name <> 'concurrently';",
    "CREATE INDEX \"t concurrently\" ON hcm_report_metadata (tenant_id);",
])
def test_a_plain_index_build_saying_concurrently_keeps_its_lock_timeout(cli, db, sql_dir, seeded, statement):
    """Before: the regex took it for a CONCURRENTLY build: lock_timeout off, it queued the app's writes behind a
    reader for that reader's whole life, never retried."""
    add_migration(sql_dir, "0002_idx", f"-- transactional: false\n{statement}\n")
    with writing(db, hold=2.5):
        result = cli("migrate", "--ddl-lock-timeout", "200ms", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    assert "0002_idx.sql:2: lock not granted within 200 ms" in result.stderr, result.stderr
    assert applied(db) == [SEED, "0002_idx"]


# --- the blind probe (the role's CONNECTION LIMIT leaves it no slot) -----------------------------------------

# lock_timeout lifted by a function of the database's (a statement's own set_config is read back and overridden:
# attack24t 9; one called by a name that says nothing of setting is not): only the probe bounds the waits then.
LIFT = ("CREATE FUNCTION lift_wait() RETURNS text LANGUAGE sql "
        "AS $$ SELECT pg_catalog.set_config('lock_timeout', '0', false) $$")
LIFTED = "SELECT lift_wait();\n"
SLOW = ("CREATE FUNCTION slow_ok(int) RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_catalog.pg_sleep(1.2); RETURN true; END $$;\n")


def blind_run(cli, make_db, limited_role, sql_dir, pg, table="t_probe"):
    """A database the limited role owns (the run's session and the migration's take its two connections, the
    probe none), with `table`; returns (db, a migrate run's caller)."""
    db = make_db(owner=limited_role)
    url = pg.url(db.name, user=limited_role, password=LIMITED_PASSWORD)
    db.query(f"CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1); ALTER TABLE {table} OWNER TO {limited_role}; "
             + LIFT)
    assert cli("migrate", "--sql-dir", sql_dir, "--database-url", url).exit_code == 0
    return db, lambda *args: cli("migrate", *args, "--ddl-lock-timeout", "200ms", "--sql-dir", sql_dir,
                                 "--database-url", url)


@pytest.mark.parametrize("statement", [
    "DO $$ BEGIN ALTER TABLE t_probe ADD COLUMN note text; END $$;",
    "CREATE POLICY p_note ON t_probe USING (true);",
])
def test_a_blind_probe_bounds_every_statement_that_may_lock(cli, make_db, limited_role, sql_dir, pg, statement):
    """Before: only statements a regex took for DDL were bounded by the clock while blind: a DO block or a
    CREATE POLICY (ACCESS EXCLUSIVE) waited for the blocker's whole life."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    # not transactional: the lifted lock_timeout stays lifted (in a transaction TryBudget sets what is left of the
    # try again once the first statement took 10 ms: a loaded machine's failure), so only the clock bounds it
    add_migration(sql_dir, "0002_lock", "-- transactional: false\n" + LIFTED + statement + "\n")
    with blocking(db, table="t_probe", hold=8):
        line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0002_lock.sql:3: failed to apply" in line and "the lock probe was blind" in line, line
    # not "blocked by a session the runner could not see": maybe no one blocked it; and how to let the probe see
    assert "could not see" not in line and "could not tell a lock wait from work" in line, line
    assert "allow the migration role one more connection" in line, line
    assert LIMITED_PASSWORD not in line


def test_a_blind_probe_bounds_ddl_running_user_code_on_a_table_the_run_created(cli, make_db, limited_role, sql_dir, pg):
    """A CHECK whose every row takes 1.2 s, on a table the same run created (in an earlier file and in the same one).
    It was left alone while blind (nobody else uses the table); but the CHECK's function may lock any table
    (attack24o): only what is harmless by construction is, so it is bounded (clock_bound.py)."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_new", SLOW + "CREATE TABLE t_new (id int);\nINSERT INTO t_new VALUES (1);\n")
    add_migration(sql_dir, "0003_check", "CREATE TABLE t_same (id int);\nINSERT INTO t_same VALUES (1);\n"
                  "ALTER TABLE t_same ADD CONSTRAINT c_same CHECK (slow_ok(id));\n")
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0003_check.sql:3: failed to apply" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] == "0002_new"


def test_a_blind_probe_still_bounds_a_new_tables_foreign_key_to_an_app_table(cli, make_db, limited_role, sql_dir, pg):
    """The new table is nobody's, but its foreign key locks the table it references (SHARE ROW EXCLUSIVE: the
    app's writes there queue behind it): still bounded by the clock."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    db.query("ALTER TABLE t_probe ADD PRIMARY KEY (id)")
    add_migration(sql_dir, "0002_fk", LIFTED + "CREATE TABLE t_new (id int);\n"
                  "ALTER TABLE t_new ADD FOREIGN KEY (id) REFERENCES t_probe (id);\n")
    with writing(db, hold=8, table="t_probe"):
        line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0002_fk.sql:3: failed to apply" in line and "gave up after" in line, line
    # bounded either way, never the blocker's 8 s: by the clock (the probe blind), or, once the file's first two
    # statements took a step of the try (a loaded machine), by the lock_timeout of what was left that TryBudget
    # sets again over the file's lifted one (a CI run's failure); both say the probe could not see
    assert ("the lock probe was blind" in line or "a session the runner could not see (the lock probe cannot "
            "connect" in line), line


def test_a_blind_probe_bounds_an_accepted_rewrite_too(cli, make_db, limited_role, sql_dir, pg):
    """The marker accepts the stall of its table, which the seeing probe tells from others'; blind, the runner cannot
    tell what else the statement locks (the CHECK's function may lock any table: attack24o), so it is bounded."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_slow", SLOW)
    add_migration(sql_dir, "0003_acc", "-- accept-rewrite: public.t_probe\n"
                  "ALTER TABLE t_probe ADD CONSTRAINT c_ok CHECK (slow_ok(id));\n")
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0003_acc.sql:2: failed to apply" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] == "0002_slow"


# --- SIGTERM while the schema description waits -----------------------------------------------------------------

def test_sigterm_while_the_schema_description_waits_is_one_line_and_frees_the_lock(cli, db, sql_dir, seeded):
    """A maintenance job's ACCESS EXCLUSIVE on a table the description reads: SIGTERM during its retries. Before:
    exit 143 with no line, the migration lock row left for the next run to clear."""
    import signal
    import time

    from test_reliability import runner_process

    db.query("CREATE TABLE hcm_audit (id int, at timestamptz DEFAULT now())")
    add_migration(sql_dir, "0002_x", "ALTER TABLE hcm_report_metadata ADD COLUMN x int;\n")
    holder = connect(db, application_name="maintenance")
    try:
        holder.cursor().execute("LOCK TABLE hcm_audit IN ACCESS EXCLUSIVE MODE")
        runner = runner_process(["migrate", "--sql-dir", sql_dir], seeded)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not db.poll(
                "SELECT 1 FROM pg_locks WHERE NOT granted AND relation = 'hcm_audit'::regclass"):
            time.sleep(0.02)
        time.sleep(0.5)  # (in its retries)
        runner.send_signal(signal.SIGTERM)
        out, err = runner.communicate(timeout=30)
    finally:
        holder.close()
    assert runner.returncode == 143, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted by SIGTERM while reading the schema's catalog" in errors[0], err
    assert applied(db) == [SEED]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0 and "cleared the migration lock" not in rerun.output, rerun.output


# --- the migration's session lost during a lock retry's backoff -------------------------------------------------

WAITING = ("SELECT pid FROM pg_locks WHERE NOT granted AND locktype = 'relation' "
           "AND relation = 'hcm_report_metadata'::regclass")
# Its try over and no statement running for a while: in the backoff (0.25 s at least), not still ending the failed
# try (a kill there is a session lost mid-statement: the test failed so under load).
IN_BACKOFF = ("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state LIKE 'idle%%' "
              "AND clock_timestamp() - state_change > interval '100 milliseconds'")


def kill_in_backoff(db) -> None:
    """pg_terminate_backend of the session that waited for hcm_report_metadata's lock, once its try timed out
    (between tries: no statement running)."""
    import time

    deadline, waiter = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        rows = db.poll(WAITING)
        if rows:
            waiter = rows[0][0]
        elif waiter is not None and db.poll(IN_BACKOFF, (waiter,)):
            db.query(f"SELECT pg_terminate_backend({waiter})")
            return
        time.sleep(0.005)
    raise AssertionError("the migration never waited")


@pytest.mark.parametrize("transactional", [True, False])
def test_a_session_lost_in_the_backoff_says_no_statement_was_running(cli, db, sql_dir, seeded, transactional):
    """Before: "the connection was lost ..., so whether it committed is unknown" though no statement ran."""
    head = "" if transactional else "-- transactional: false\n"
    add_migration(sql_dir, "0002_two", f"{head}CREATE TABLE t_one (id int);\n"
                  "ALTER TABLE hcm_report_metadata ADD COLUMN a int;\n")
    with blocking(db):
        killer = threading.Thread(target=kill_in_backoff, args=(db,), daemon=True)
        killer.start()
        line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
        killer.join(timeout=30)
    at = 2 if transactional else 3
    assert f"0002_two.sql:{at}: failed to apply" in line, line
    assert "whether it committed is unknown" not in line, line
    assert "the session was lost between lock retries, while no statement was running" in line, line
    if transactional:
        assert "nothing of it was applied: its transaction rolled back" in line and "t_one" not in db.tables(), line
    else:
        assert "statement 1 of 2 (line 2) COMMITTED" in line and "t_one" in db.tables(), line
        assert "a rerun runs the file from its first statement" in line, line
    assert applied(db) == [SEED]
