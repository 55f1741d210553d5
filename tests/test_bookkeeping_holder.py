"""Another session holding a schema's shared bookkeeping lock (any role that can connect may: its key is no secret)
never leaves the record of the schema untrue (issue 23, attack 23d's mediums).

Before: the migration (or rollback) committed, then its record waited 60 s for the lock and failed with "run again";
the change was done but unrecorded, and status, doctor, plan and `migrate --strict` called the runner's own work
drift from then on. Now each change takes the lock before it can commit and records itself under it: a holder
stops the change uncommitted, in one line that says so and names the holder (unverified).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psycopg2
import pytest

from conftest import add_migration, ok, one_error_line
from test_planted_objects import low  # noqa: F401 (a fixture)

FORGED = "hcm-db-migrations ci-7:42, user postgres\nerror: forged"  # (the server escapes the line break itself)



@pytest.fixture(autouse=True)
def short_after_commit_wait(monkeypatch):
    """(Before the fix a record after a commit waited 60 s; 2 s shows the same failure sooner.)"""
    from migrator import bookkeeping_lock, pg_lock

    monkeypatch.setattr(pg_lock, "AFTER_COMMIT_WAIT", 2.0)
    monkeypatch.setattr(bookkeeping_lock, "AFTER_COMMIT_WAIT", 2.0)


def waits_for_holder(role: str, key: int) -> str:
    """A statement that waits until `role` holds or asks for `key` (the holder arrives while the file runs)."""
    return ("DO $$ BEGIN /* holder-wait */ WHILE NOT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a "
            f"USING (pid) WHERE l.locktype = 'advisory' AND a.usename = '{role}' AND l.objid = {key & 0xFFFF_FFFF}) "
            "LOOP PERFORM pg_sleep(0.05); END LOOP; END $$;\n")


@contextmanager
def arriving(db, role: str, schema: str):
    """`role` (CONNECT only) asks for the schema's bookkeeping lock once a file runs waits_for_holder, and holds
    it (calling itself FORGED) until the block ends. Yields its server pid."""
    from migrator.bookkeeping_lock import bookkeeping_key

    holder = psycopg2.connect(dbname=db.name, user=role, host=db.server.host, port=db.server.port,
                              application_name=FORGED)
    holder.autocommit = True

    def take():
        while not db.poll("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%holder' || '-wait%%'")[0][0]:
            time.sleep(0.05)
        holder.cursor().execute("SELECT pg_advisory_lock(%s)", (bookkeeping_key(schema),))

    taking = threading.Thread(target=take)
    taking.start()
    try:
        yield holder.get_backend_pid()
    finally:
        taking.join()
        holder.close()


def run(cli, db, sql_dir, *args):
    """(A holder stays to the end: a transactional file is retried for the lock retry budget, 1 s here.)"""
    return cli(*args, "--sql-dir", sql_dir, "--schema", "bh", "--lock-timeout", "1", "--lock-retry-budget", "1s",
               env=db.db_env())


def applied_in(db, schema: str) -> list[str]:
    return [r[0] for r in db.query(f"SELECT migration_id FROM {schema}._yoyo_migration ORDER BY 1")]


def no_drift(cli, db, sql_dir) -> None:
    status = ok(cli("status", "--sql-dir", sql_dir, "--schema", "bh", env=db.db_env()))
    assert "DRIFT" not in status.output, status.output
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", "--strict", env=db.db_env()))


def failed_line(result) -> str:
    """The schema's one FAILED line (a --schema run ends in its summary line)."""
    assert result.exit_code == 4 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("[bh] FAILED")]
    assert len(lines) == 1, result.output
    return lines[0]


def said_holder(line: str, pid: int, role: str) -> None:
    assert "shared bookkeeping lock of schema bh" in line and f"server pid {pid} (user {role}" in line, line
    assert "application_name 'hcm-db-migrations ci-7:42, user postgres\\\\x0aerror: forged' unverified" in line, line


SEED = "0001_create_hcm_report_metadata"


@pytest.mark.parametrize("transactional", [True, False])
def test_a_holder_arriving_while_a_migration_runs_never_leaves_it_unrecorded(cli, db, sql_dir, low, transactional):
    """Transactional: the migration rolls back (it cannot be recorded). Not transactional: the run took the lock
    before the file's first statement; the holder waits for the record."""
    from migrator.bookkeeping_lock import bookkeeping_key

    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", "--create-schemas", env=db.db_env()))
    head = "" if transactional else "-- transactional: false\n"
    add_migration(sql_dir, "0002_a", f"{head}CREATE TABLE a (id int);\n{waits_for_holder(low, bookkeeping_key('bh'))}",
                  f"{head}DROP TABLE a;\n")
    add_migration(sql_dir, "0003_b", "CREATE TABLE b (id int);\n", "DROP TABLE b;\n")
    with arriving(db, low, "bh") as pid:
        result = run(cli, db, sql_dir, "migrate")
    if transactional:
        line = failed_line(result)
        said_holder(line, pid, low)
        assert "so 0002_a was not applied (its transaction rolled back)" in line and "Run migrate again" in line, line
        assert "not free before the COMMIT (gave up after " in line and "raise --lock-retry-budget" in line, line
        assert applied_in(db, "bh") == [SEED] and db.query("SELECT to_regclass('bh.a')") == [(None,)]
        add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n", "DROP TABLE a;\n")  # (no wait)
    else:
        ok(result)
    no_drift(cli, db, sql_dir)  # (and what is left lands on the next run, recorded)
    assert applied_in(db, "bh") == [SEED, "0002_a", "0003_b"]
    no_drift(cli, db, sql_dir)


def test_in_a_schema_services_share_each_migration_is_recorded_as_it_lands(cli, db, tmp_path, low):
    """Services sharing a schema (Flyway histories) each record per migration and let go, so another's run waits
    one record at most; a holder arriving during the second migration stops it, the first is committed and
    recorded."""
    from migrator.bookkeeping_lock import bookkeeping_key

    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "V1__a.sql").write_text("CREATE TABLE svc_a (id int);\n")
    waits = waits_for_holder(low, bookkeeping_key("public"))
    (folder / "V2__b.sql").write_text(f"CREATE TABLE svc_b (id int);\n{waits}")
    env = {**db.db_env(), "SCHEMA_TABLE": "svc_hist"}
    with arriving(db, low, "public") as pid:
        result = cli("migrate", "--sql-dir", folder, "--lock-timeout", "1", "--lock-retry-budget", "1s", env=env)
    line = one_error_line(result)
    assert result.exit_code == 4 and f"server pid {pid} (user {low}" in line, line
    assert "so V2__b was not applied (its transaction rolled back); those reported applied before it are " \
           "committed and recorded" in line, line
    assert db.query("SELECT to_regclass('svc_a')::text, to_regclass('svc_b')") == [("svc_a", None)]
    (folder / "V2__b.sql").write_text("CREATE TABLE svc_b (id int);\n")
    status = cli("status", "--sql-dir", folder, env=env)
    assert status.exit_code == 0 and "DRIFT" not in status.output, status.output
    ok(cli("migrate", "--sql-dir", folder, "--strict", env=env))


def test_a_holder_stops_a_rollback_uncommitted_and_never_invites_another_files_rollback(cli, db, sql_dir, low):
    from migrator.bookkeeping_lock import bookkeeping_key

    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n",
                  f"DROP TABLE a;\n{waits_for_holder(low, bookkeeping_key('bh'))}")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", "--create-schemas", env=db.db_env()))
    with arriving(db, low, "bh") as pid:
        result = run(cli, db, sql_dir, "sql", "rollback", "--count", "1")
    line = failed_line(result)
    said_holder(line, pid, low)
    assert "0002_a was not rolled back (its transaction rolled back): it is still applied" in line, line
    assert "`runner.py sql rollback --count 1` rolls back 0002_a alone" in line, line
    assert "rolled back 0002_a" not in result.output, result.output
    summary = result.stderr.strip().splitlines()[-1]  # (never "run rollback again": a --count 2 failing part-way
    assert "not the same --count again" in summary and "run rollback again" not in summary, summary  # took one)
    assert db.query("SELECT to_regclass('bh.a')::text") == [("bh.a",)]
    assert applied_in(db, "bh") == [SEED, "0002_a"]
    no_drift(cli, db, sql_dir)


@contextmanager
def holding(db, role: str, key: int, *pair: int):
    """`role` holds advisory lock `key` (or the two-int4 lock `pair`), calling itself FORGED. Yields its pid."""
    holder = psycopg2.connect(dbname=db.name, user=role, host=db.server.host, port=db.server.port,
                              application_name=FORGED)
    holder.autocommit = True
    holder.cursor().execute(f"SELECT pg_advisory_lock({'%s, %s' if pair else '%s'})", pair or (key,))
    try:
        yield holder.get_backend_pid()
    finally:
        holder.close()


def test_doctor_warns_of_a_session_holding_the_bookkeeping_lock(cli, db, sql_dir, low):
    from migrator.bookkeeping_lock import bookkeeping_key

    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", "--create-schemas", env=db.db_env()))
    doctor = cli("doctor", "--sql-dir", sql_dir, "--schema", "bh", env=db.db_env())
    assert "bookkeeping lock" not in doctor.output, doctor.output
    with holding(db, low, bookkeeping_key("bh")) as pid:
        doctor = cli("doctor", "--sql-dir", sql_dir, "--schema", "bh", env=db.db_env())
    lines = [line for line in doctor.output.splitlines() if "bookkeeping lock" in line]
    assert len(lines) == 1 and lines[0].startswith("warn "), doctor.output
    said_holder(lines[0], pid, low)
    assert "connected " in lines[0] and "pg_terminate_backend" in doctor.output, doctor.output


def test_the_holder_named_is_the_bigint_locks_never_a_two_int4_lock_with_the_same_halves(db, low):
    """pg_locks shows advisory(int4, int4) with the same classid and objid as advisory(bigint): objsubid tells them."""
    from migrator.bookkeeping_lock import bookkeeping_key, holder

    key = bookkeeping_key("bh")
    high, low32 = key >> 32, key & 0xFFFF_FFFF
    with holding(db, low, key, high, low32 - (1 << 32) if low32 >= 1 << 31 else low32):
        with db.server.connect(db.name) as conn, conn.cursor() as cursor:
            assert holder(cursor, key) is None
            cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            assert cursor.fetchone() == (True,)  # (a different lock: the bookkeeping one is free)


GATE = 4242  # an advisory lock the holder takes once it holds the bookkeeping lock (pg_locks: no snapshot)


@contextmanager
def holding_while_app_waits(db, role: str, schema: str, table: str, seen: dict, timeout_ms: int = 0):
    """`role` takes the schema's bookkeeping lock once a file runs its gate (files_gate), then waits until the
    runner's transaction holds ACCESS EXCLUSIVE on `table` and an application query (as `role`) is queued behind
    it; it lets go only once that query has returned. `seen`: its pid, and whether the query returned while the
    lock was still held. `timeout_ms`: the query carries that statement_timeout and, cancelled, is asked again
    after 0.1 s (an API's guard and backoff); `seen["cancelled"]` counts the cancels."""
    from migrator.bookkeeping_lock import bookkeeping_key

    holder = psycopg2.connect(dbname=db.name, user=role, host=db.server.host, port=db.server.port,
                              application_name=FORGED)
    holder.autocommit = True
    app = psycopg2.connect(dbname=db.name, user=role, host=db.server.host, port=db.server.port)
    app.autocommit = True
    seen["pid"] = holder.get_backend_pid()
    ended = threading.Event()  # (the run ended: stop waiting)

    def hold():
        while not db.poll("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%gate' || '-wait%%'")[0][0]:
            if ended.wait(0.05):
                return
        cursor = holder.cursor()
        cursor.execute("SELECT pg_advisory_lock(%s)", (bookkeeping_key(schema),))
        cursor.execute("SELECT pg_advisory_lock(%s)", (GATE,))  # (the file goes on)
        with db.server.connect(db.name) as watch, watch.cursor() as looking:
            while not ended.is_set():
                looking.execute("SELECT count(*) FROM pg_locks WHERE relation = to_regclass(%s) AND granted "
                                "AND mode = 'AccessExclusiveLock'", (table,))
                if looking.fetchone()[0]:
                    break
            else:
                return
        try:
            asking = app.cursor()
            asking.execute(f"SET statement_timeout = {timeout_ms}")
            seen["cancelled"] = 0
            while not ended.is_set():
                try:
                    asking.execute(f"SELECT count(*) FROM {table}")  # queued behind the migration's ALTER TABLE
                    break
                except psycopg2.errors.QueryCanceled:
                    seen["cancelled"] += 1
                    time.sleep(0.1)
            cursor.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND objid = %s",
                           (bookkeeping_key(schema) & 0xFFFF_FFFF,))
            seen["returned while held"] = cursor.fetchone() == (1,)
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", (bookkeeping_key(schema),))

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        yield seen
    finally:
        ended.set()
        thread.join()
        app.close()
        holder.close()


def files_gate() -> str:
    """A statement that waits until the holder has the bookkeeping lock (and so the GATE lock)."""
    return ("DO $$ BEGIN /* gate-wait */ WHILE NOT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND "
            f"granted AND objid = {GATE} AND objsubid = 1) LOOP PERFORM pg_sleep(0.05); END LOOP; END $$;\n")


def test_a_held_bookkeeping_lock_never_keeps_the_files_table_locks_past_the_try(cli, db, sql_dir, low):
    """attack 23e (app_stall): the bookkeeping lock is asked for before the COMMIT, while the file's ALTER TABLE
    holds ACCESS EXCLUSIVE. Before: the runner polled for it --lock-timeout long (10 s by default), the
    application queued behind the table all along, then the run failed. Now it is one more lock of the try:
    not free once a session has queued behind the file's locks for the try's lock_timeout, the transaction rolls
    back (the application's query returns while the holder still holds it) and the whole file is tried again
    after a backoff, which then commits."""
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", "--create-schemas", env=db.db_env()))
    add_migration(sql_dir, "0002_hot", f"CREATE TABLE hot (id int);\nGRANT USAGE ON SCHEMA bh TO {low};\n"
                  f"GRANT SELECT ON hot TO {low};\n", "DROP TABLE hot;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", env=db.db_env()))  # (a run holds the lock from its
    # first commit to its end: 0003 is the first file of the run below)
    add_migration(sql_dir, "0003_note", f"{files_gate()}ALTER TABLE hot ADD COLUMN note text;\n",
                  "ALTER TABLE hot DROP COLUMN note;\n")
    with holding_while_app_waits(db, low, "bh", "bh.hot", {}) as seen:
        result = cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", "--lock-timeout", "5", env=db.db_env())
    ok(result)
    assert seen["returned while held"], seen
    retries = [line for line in result.stderr.splitlines() if "not free before the COMMIT (sessions queued" in line]
    assert retries and f"server pid {seen['pid']} (user {low}" in retries[0], result.output
    assert "0003_note.sql:2: the shared bookkeeping lock of schema bh" in retries[0], retries[0]
    assert applied_in(db, "bh") == [SEED, "0002_hot", "0003_note"]
    assert db.query("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'bh' "
                    "AND table_name = 'hot' AND column_name = 'note'") == [(1,)]
    no_drift(cli, db, sql_dir)


def test_a_failed_transactional_migration_never_waits_for_the_lock_to_record_nothing(cli, db, sql_dir, low):
    """attack 23e (low): a transactional file that failed (nothing committed) still recorded the schema under the
    bookkeeping lock, waiting max(--lock-timeout, 60 s) for a holder, then noted that it could not. Nothing
    committed since the last record: nothing to record, no wait."""
    from migrator.bookkeeping_lock import bookkeeping_key

    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", "--create-schemas", env=db.db_env()))
    add_migration(sql_dir, "0002_a", f"{waits_for_holder(low, bookkeeping_key('bh'))}SELECT 1 / 0;\n",
                  "SELECT 1;\n")
    with arriving(db, low, "bh"):
        result = run(cli, db, sql_dir, "migrate")
    lines = [line for line in result.stderr.splitlines() if line.startswith("[bh] FAILED")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "0002_a.sql:2" in lines[0] and "division by zero" in lines[0], lines[0]
    assert "could not be recorded" not in result.output, result.output
    assert applied_in(db, "bh") == [SEED]


def test_an_application_whose_queries_time_out_sooner_than_the_try_still_gets_the_table_back(cli, db, sql_dir, low):
    """attack 23f (flap_stall): the queue check gave up the bookkeeping-lock wait only once a session had queued
    behind the file's locks for the try's lock_timeout (300 ms) without a break; one poll that saw no waiter reset
    it. An application whose statement_timeout (200 ms) is shorter, retrying after each cancel, never queued that
    long: the run held the table for the whole --lock-timeout and every query failed. Now the try is given up
    lock_timeout after a session was first seen queued: the query gets through within a few retries."""
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", "--create-schemas", env=db.db_env()))
    add_migration(sql_dir, "0002_hot", f"CREATE TABLE hot (id int);\nGRANT USAGE ON SCHEMA bh TO {low};\n"
                  f"GRANT SELECT ON hot TO {low};\n", "DROP TABLE hot;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", env=db.db_env()))
    add_migration(sql_dir, "0003_note", f"{files_gate()}ALTER TABLE hot ADD COLUMN note text;\n",
                  "ALTER TABLE hot DROP COLUMN note;\n")
    with holding_while_app_waits(db, low, "bh", "bh.hot", {}, timeout_ms=200) as seen:
        result = cli("migrate", "--sql-dir", sql_dir, "--schema", "bh", "--lock-timeout", "10", env=db.db_env())
    ok(result)
    assert seen["returned while held"], seen
    assert seen["cancelled"] < 15, seen  # (before: cancelled all --lock-timeout long, some 30 times)
    retries = [line for line in result.stderr.splitlines() if "not free before the COMMIT (sessions queued" in line]
    assert retries and f"server pid {seen['pid']} (user {low}" in retries[0], result.output
    assert applied_in(db, "bh") == [SEED, "0002_hot", "0003_note"]
    no_drift(cli, db, sql_dir)
