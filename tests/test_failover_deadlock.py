"""Issue 24, fifth hostile pass: a deadlock with the application's transactions is a try that lost (retried like a
lock timeout), and a failover between lock retries keeps the runner's own line (not the cleanup's error)."""

import threading
import time

import pytest

from conftest import SEED, add_migration, applied, one_error_line
from test_rewrites import FILL
from test_live_traffic import blocking, connect, seeded  # noqa: F401 (a fixture)

WAITING = ("SELECT pid FROM pg_locks WHERE NOT granted AND locktype = 'relation' "
           "AND relation = 'hcm_report_metadata'::regclass")


def cut_in_backoff(db, proxy, after: float) -> None:
    """Every session through `proxy` cut (a failover: no message, the sockets closed) `after` seconds once the
    migration's try timed out waiting for hcm_report_metadata (0: as its ROLLBACK runs; 0.1: in the backoff)."""
    deadline, waiter = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        rows = db.poll(WAITING)
        if rows:
            waiter = rows[0][0]
        elif waiter is not None:
            time.sleep(after)  # (the first backoff is 250-500 ms)
            proxy.cut()
            return
        time.sleep(0.005)
    raise AssertionError("the migration never waited")


@pytest.mark.parametrize("after", [0.1, 0.0])
def test_a_failover_between_lock_retries_says_nothing_was_applied_not_the_cleanups_error(cli, db, pg, sql_dir,
                                                                                        seeded, after):
    """Before: the lock row's cleanup (BEGIN on the dead run session) replaced the line with "unexpected
    OperationalError: server closed the connection unexpectedly"; cut as the try's ROLLBACK ran, yoyo's rollback
    said "connection already closed ... whether it committed is unknown"."""
    from pg_wire import CutProxy

    if not pg.host.startswith("/"):
        pytest.skip("the proxy relays to the suite's own server's Unix socket")
    add_migration(sql_dir, "0002_two", "CREATE TABLE t_one (id int);\nALTER TABLE hcm_report_metadata ADD COLUMN a int;\n")
    proxy = CutProxy(pg.host, pg.port)
    env = {**seeded, "DB_HOST": "127.0.0.1", "DB_PORT": str(proxy.port)}
    try:
        with blocking(db):
            cutter = threading.Thread(target=cut_in_backoff, args=(db, proxy, after), daemon=True)
            cutter.start()
            result = cli("migrate", "--sql-dir", sql_dir, env=env)
            cutter.join(timeout=30)
    finally:
        proxy.cut()
    line = one_error_line(result)
    assert "unexpected OperationalError" not in line, line
    # (0: the cut comes as the server ends the try; its error may reach the runner before the cut or be lost with
    # it, the statement then still running for the runner: either way nothing of the transaction committed)
    nothing_applied(cli, db, sql_dir, seeded, line, ("the session was lost between lock retries, while no statement "
                                                     "was running: " if after else "") + NOTHING)


NOTHING = "nothing of it was applied: its transaction rolled back"


def nothing_applied(cli, db, sql_dir, seeded, line: str, said: str) -> None:
    """0002_two's line says `said`, never "unknown"; nothing of it is there, and a rerun applies it."""
    assert "0002_two.sql:2: failed to apply" in line and said in line, line
    assert "unknown" not in line, line
    assert applied(db) == [SEED] and "t_one" not in db.tables()
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert applied(db) == [SEED, "0002_two"]


def test_a_failover_as_the_retry_sets_its_session_up_again_says_nothing_was_applied(cli, db, pg, sql_dir, seeded):
    """Before: cut as the second try lowered deadlock_timeout again (after its ROLLBACK and BEGIN), the driver's
    error went to yoyo's rollback: "connection already closed ... whether it committed is unknown" (CI's flake)."""
    from pg_wire import CutProxy

    if not pg.host.startswith("/"):
        pytest.skip("the proxy relays to the suite's own server's Unix socket")
    add_migration(sql_dir, "0002_two", "CREATE TABLE t_one (id int);\nALTER TABLE hcm_report_metadata ADD COLUMN a int;\n")
    proxy = CutProxy(pg.host, pg.port, trigger=b"SET deadlock_timeout", skip=1)  # (the first try's is relayed)
    try:
        with blocking(db):
            result = cli("migrate", "--sql-dir", sql_dir, env={**seeded, "DB_HOST": "127.0.0.1",
                                                                 "DB_PORT": str(proxy.port)})
    finally:
        proxy.cut()
    line = one_error_line(result)
    assert "0002_two.sql:2: failed to apply" in line and "the session was lost between lock retries, while no " \
        "statement was running: nothing of it was applied: its transaction rolled back" in line, line
    assert applied(db) == [SEED] and "t_one" not in db.tables()


def test_a_failover_while_a_transactional_files_statement_runs_says_nothing_was_applied(cli, db, pg, sql_dir,
                                                                                      seeded):
    """Cut as statement 2 is sent (it never reaches the server): the runner never sent its COMMIT, so the file's
    transaction cannot have committed. Before: "whether it committed is unknown: run `runner.py status`" (seen as
    test_a_failover_between_lock_retries...[0.0]'s flake: the try's lock timeout lost with the cut)."""
    from pg_wire import CutProxy

    if not pg.host.startswith("/"):
        pytest.skip("the proxy relays to the suite's own server's Unix socket")
    add_migration(sql_dir, "0002_two", "CREATE TABLE t_one (id int);\nALTER TABLE hcm_report_metadata ADD COLUMN a int;\n")
    proxy = CutProxy(pg.host, pg.port, trigger=b"ADD COLUMN a int")
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env={**seeded, "DB_HOST": "127.0.0.1", "DB_PORT": str(proxy.port)})
    finally:
        proxy.cut()
    nothing_applied(cli, db, sql_dir, seeded, one_error_line(result),
                    f"while its statement ran, before the runner's COMMIT: {NOTHING}); run again")


APP_WAITS_FIRST = ("SELECT 1 FROM pg_locks l WHERE NOT l.granted AND l.relation = 'hcm_report_metadata'::regclass "
                   "AND l.pid <> %s")


def app_in_the_other_order(db, first: str, then: str, ready: threading.Event, outcome: list) -> None:
    """An application transaction writing `first`, then (once the migration holds `then` and waits for `first`)
    `then`: a lock-order deadlock. Its own deadlock_timeout is long, so the migration's check (100 ms) finds it."""
    conn = connect(db, application_name="hcm-app")
    try:
        cur = conn.cursor()
        cur.execute("SET deadlock_timeout = '20s'")
        cur.execute(f"LOCK TABLE {first} IN ROW EXCLUSIVE MODE")
        outcome.append(conn.info.backend_pid)
        ready.set()
        deadline = time.monotonic() + 30
        while not db.poll(APP_WAITS_FIRST.replace("hcm_report_metadata", first) % conn.info.backend_pid):
            if time.monotonic() > deadline:
                raise AssertionError("the migration never waited for the app's table")
            time.sleep(0.005)
        cur.execute(f"LOCK TABLE {then} IN ROW EXCLUSIVE MODE")
        conn.commit()
        outcome.append("committed")
    except Exception as exc:  # (the app's side ended instead: the test says so)
        outcome.append(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def test_a_deadlock_with_the_application_is_retried_with_the_other_session_named(cli, db, sql_dir, seeded):
    """Before: "deadlock detected ... fix the file and run again", exit 1, the other side given as OIDs."""
    add_migration(sql_dir, "0002_dl", "ALTER TABLE hcm_tenant ADD COLUMN label text;\n"
                  "ALTER TABLE hcm_report_metadata ADD COLUMN label text;\n")
    with connect(db) as made:
        made.cursor().execute("CREATE TABLE hcm_tenant (id int)")
    made.close()
    ready, outcome = threading.Event(), []
    app = threading.Thread(target=app_in_the_other_order,
                           args=(db, "hcm_report_metadata", "hcm_tenant", ready, outcome), daemon=True)
    app.start()
    assert ready.wait(10)
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join(timeout=30)
    assert outcome[1:] == ["committed"], outcome  # the application's transaction went on
    assert result.exit_code == 0, result.output
    assert "fix the file" not in result.output, result.output
    retried = [line for line in result.stderr.splitlines() if "0002_dl.sql:2: deadlock:" in line]
    assert len(retried) == 1, result.stderr
    assert (f"pid {outcome[0]} (application_name 'hcm-app', user " in retried[0]
            and "waited for ROW EXCLUSIVE lock on table hcm_tenant while this migration waited for ACCESS "
                "EXCLUSIVE lock on table hcm_report_metadata" in retried[0] and "try 2 in" in retried[0]), retried[0]
    assert applied(db) == [SEED, "0002_dl"]


RUNNER_WAITS_FOR_A_ROW = ("SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted "
                          "AND l.locktype IN ('transactionid', 'tuple') AND a.query LIKE 'UPDATE hcm_report_metadata SET ref%'")


def app_rows_in_the_other_order(db, ready: threading.Event, outcome: list) -> None:
    """An application transaction updating row 7 (in the backfill's first batch), then the batch's other rows once
    the batch, holding some, waits for row 7: a row-order deadlock, as app transactions updating two rows make."""
    conn = connect(db, application_name="hcm-app")
    try:
        cur = conn.cursor()
        cur.execute("SET deadlock_timeout = '20s'")
        cur.execute("UPDATE hcm_report_metadata SET report_name = 'app' WHERE id = 7")
        outcome.append(conn.info.backend_pid)
        ready.set()
        deadline = time.monotonic() + 30
        while not db.poll(RUNNER_WAITS_FOR_A_ROW):
            if time.monotonic() > deadline:
                raise AssertionError("the backfill never waited for the app's row")
            time.sleep(0.005)
        # (the batch locks its rows in its plan's order, not by id: the others of its batch, some held by it)
        cur.execute("UPDATE hcm_report_metadata SET report_name = 'app' WHERE id <= 10 AND id <> 7")
        conn.commit()
        outcome.append("committed")
    except Exception as exc:  # (the app's side ended instead: the test says so)
        outcome.append(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def test_a_backfill_batch_deadlocked_with_the_application_is_retried_from_that_batch(cli, db, sql_dir, seeded):
    """Before: the docs' `-- backfill: batch` under app transactions updating two rows each failed the deploy
    ("deadlock detected ... fix the file"), exit 1."""
    db.query(FILL.format(table="hcm_report_metadata", rows=30) + "; ALTER TABLE hcm_report_metadata ADD COLUMN ref uuid")
    add_migration(sql_dir, "0002_bf", "-- transactional: false\n"
                  "-- backfill: batch every 1\n"
                  "UPDATE hcm_report_metadata SET ref = gen_random_uuid()\n"
                  "WHERE id IN (SELECT id FROM hcm_report_metadata WHERE ref IS NULL ORDER BY id LIMIT 10);\n")
    ready, outcome = threading.Event(), []
    app = threading.Thread(target=app_rows_in_the_other_order, args=(db, ready, outcome), daemon=True)
    app.start()
    assert ready.wait(10)
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join(timeout=30)
    assert outcome[1:] == ["committed"], outcome
    assert result.exit_code == 0, result.output
    assert "fix the file" not in result.output, result.output
    retried = [line for line in result.stderr.splitlines() if "0002_bf.sql:3: deadlock:" in line]
    assert len(retried) == 1 and f"pid {outcome[0]} (application_name 'hcm-app'" in retried[0], result.stderr
    assert applied(db) == [SEED, "0002_bf"]
    assert db.query("SELECT count(*) FROM hcm_report_metadata WHERE ref IS NULL") == [(0,)]


def test_a_backfill_cut_by_a_failover_says_how_many_batches_committed_and_the_rerun_continues(cli, db, pg, sql_dir,
                                                                                              seeded):
    """Before: "the connection was lost ..., so whether it committed is unknown" though batches had committed."""
    from pg_wire import CutProxy

    if not pg.host.startswith("/"):
        pytest.skip("the proxy relays to the suite's own server's Unix socket")
    db.query(FILL.format(table="hcm_report_metadata", rows=40) + "; ALTER TABLE hcm_report_metadata ADD COLUMN ref uuid;"
             "CREATE TABLE batches (at timestamptz DEFAULT clock_timestamp());"
             "CREATE FUNCTION slow_batch() RETURNS trigger LANGUAGE plpgsql AS "
             "$$ BEGIN INSERT INTO batches DEFAULT VALUES; PERFORM pg_sleep(0.3); RETURN NULL; END $$;"
             "CREATE TRIGGER slow_batch AFTER UPDATE ON hcm_report_metadata FOR EACH STATEMENT "
             "EXECUTE FUNCTION slow_batch()")
    add_migration(sql_dir, "0002_bf", "-- transactional: false\n-- backfill: batch every 1\n"
                  "UPDATE hcm_report_metadata SET ref = gen_random_uuid()\n"
                  "WHERE id IN (SELECT id FROM hcm_report_metadata WHERE ref IS NULL ORDER BY id LIMIT 10);\n")
    proxy = CutProxy(pg.host, pg.port)

    def cut_in_the_third_batch():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and db.poll("SELECT count(*) FROM batches")[0][0] < 2:
            time.sleep(0.01)
        time.sleep(0.1)  # (inside the third batch's sleep)
        proxy.cut()

    cutter = threading.Thread(target=cut_in_the_third_batch, daemon=True)
    cutter.start()
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env={**seeded, "DB_HOST": "127.0.0.1", "DB_PORT": str(proxy.port)})
        cutter.join(timeout=30)
    finally:
        proxy.cut()
    line = one_error_line(result)
    assert "0002_bf.sql:3: failed to apply" in line, line
    assert "whether it committed is unknown" not in line, line
    assert "the backfill at line 3 COMMITTED 20 row(s) in 2 batch(es)" in line, line
    assert "whether the batch running then committed is unknown" in line and "the rerun continues the backfill" in line
    assert db.query("SELECT count(*) FROM hcm_report_metadata WHERE ref IS NOT NULL") == [(20,)]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert db.query("SELECT count(*) FROM hcm_report_metadata WHERE ref IS NULL") == [(0,)]



def test_a_failover_while_the_bookkeeping_is_set_up_says_nothing_was_applied(cli, db, pg, sql_dir):
    """attack24f reproRS b: a cut as yoyo creates its tables (inside the bookkeeping lock, before any migration)
    came out as "unexpected OperationalError / InterfaceError" (the lock's release sent on the lost connection)."""
    from pg_wire import CutProxy

    if not pg.host.startswith("/"):
        pytest.skip("the proxy relays to the suite's own server's Unix socket")
    proxy = CutProxy(pg.host, pg.port, trigger=b"INT NOT NULL PRIMARY KEY")
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "DB_HOST": "127.0.0.1",
                                                           "DB_PORT": str(proxy.port)})
    finally:
        proxy.cut()
    line = one_error_line(result)
    assert "error: unexpected" not in line, line  # (the server's own words end it: "... unexpectedly")
    assert f"the connection to 127.0.0.1:{proxy.port}/{db.name} was lost while the run set up its bookkeeping, " \
           "before any migration: nothing was applied; run again" in line, line
    assert "_yoyo_version" not in db.tables()
    rerun = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert rerun.exit_code == 0, rerun.output
    assert applied(db) == [SEED]


@pytest.mark.parametrize("trigger", [b"hcm.tenant_schemas', true)", b"(t.xmin", b"WITH ORDINALITY t(s, o)",
                                     b"REPEATABLE READ READ ONLY", b"INSERT INTO \"public\".\"yoyo_lock\""],
                         ids=["other-histories", "drift-check", "rewrite-judge", "describe", "migration-lock"])
def test_a_failover_after_set_up_before_the_first_migration_says_nothing_was_applied(cli, db, pg, sql_dir, seeded,
                                                                                    trigger):
    """attack24g finding 3 (reproRS b): a restart landing in a read between the run's set-up and its first migration
    (the migration lock's row, the drift check, the rewrite judge, the schema's description) said "unexpected
    OperationalError: server closed the connection unexpectedly ... rerun with -v"."""
    from pg_wire import CutProxy

    if not pg.host.startswith("/"):
        pytest.skip("the proxy relays to the suite's own server's Unix socket")
    add_migration(sql_dir, "0002_two", "CREATE TABLE t_one (id int);\nALTER TABLE hcm_report_metadata ADD COLUMN a int;")
    proxy = CutProxy(pg.host, pg.port, trigger=trigger)
    try:
        result = cli("migrate", "--sql-dir", sql_dir,
                     env={**seeded, "DB_HOST": "127.0.0.1", "DB_PORT": str(proxy.port)})
    finally:
        proxy.cut()
    line = one_error_line(result)
    assert "error: unexpected" not in line, line  # (the server's own words end it: "... unexpectedly")
    where = f"the connection to 127.0.0.1:{proxy.port}/{db.name} was lost"
    if trigger == b"REPEATABLE READ READ ONLY" and "after this run's migrations began" in line:
        # The fingerprint answered for the "before" (snapshot.live_description): the first description is the
        # one recording what 0002 changed, after it committed; the line says so, and the file is applied.
        assert f"{where} after this run's migrations began, outside any of them (as the run recorded what they " \
               "changed): what `status` lists as applied is committed; run again for the rest (server closed" in line
        assert applied(db) == [SEED, "0002_two"] and "t_one" in db.tables()
    else:
        assert f"{where} before the first migration: nothing was applied; run again (server closed the connection " \
               "unexpectedly" in line, line
        assert applied(db) == [SEED] and "t_one" not in db.tables()
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert applied(db) == [SEED, "0002_two"]
