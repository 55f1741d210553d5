"""ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY under live traffic (hostile pass on issue 24, reproL): its
wait for older transactions blocks no one, so lock_timeout does not end it; stopped in that wait (statement_timeout)
it leaves the partition pending detach, the message says so, and the rerun completes it with FINALIZE."""

import psycopg2
import pytest

from conftest import SEED, add_migration, applied, one_error_line
from test_live_traffic import blocking, connect, seeded  # noqa: F401 (a fixture)

DETACH = "-- transactional: false\nALTER TABLE ev DETACH PARTITION ev1 CONCURRENTLY;\n"
PARTITIONS = "SELECT inhrelid::regclass::text, inhdetachpending FROM pg_inherits WHERE inhparent = 'ev'::regclass " \
             "ORDER BY 1"


def partitioned(db):
    db.query("CREATE TABLE ev (id int, k int) PARTITION BY RANGE (id);"
             "CREATE TABLE ev1 PARTITION OF ev FOR VALUES FROM (0) TO (100);"
             "CREATE TABLE ev2 PARTITION OF ev FOR VALUES FROM (100) TO (200);"
             "INSERT INTO ev SELECT g, g FROM generate_series(0, 199) g")


def test_a_detach_waiting_for_an_older_reader_is_not_ended_by_lock_timeout(cli, db, sql_dir, seeded):
    """A report reading the parent in a 2 s transaction. Before: lock_timeout (300 ms) ended the wait, the
    partition was left pending, and the retry failed for good on "already pending detach"."""
    partitioned(db)
    add_migration(sql_dir, "0002_detach", DETACH)
    with blocking(db, table="ev", hold=2):
        result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    assert applied(db) == [SEED, "0002_detach"]
    assert db.query(PARTITIONS) == [("ev2", False)]


def test_a_detach_stopped_in_its_wait_says_it_is_pending_and_the_rerun_finalizes_it(cli, db, sql_dir, seeded):
    partitioned(db)
    add_migration(sql_dir, "0002_detach", DETACH)
    with blocking(db, table="ev"):  # open for the whole first run
        line = one_error_line(cli("migrate", "--statement-timeout", "1s", "--sql-dir", sql_dir, env=seeded))
    assert "0002_detach.sql:2: failed to apply" in line and "statement timeout" in line, line
    # before: "no statement of it committed; statement 1 failed" and nothing about the pending partition
    assert "the first of its two transactions COMMITTED: partition \"ev1\" is left pending detach" in line, line
    assert "run migrate again: it completes the detach (FINALIZE)" in line, line
    assert db.query(PARTITIONS) == [("ev1", True), ("ev2", False)]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output  # before: "already pending detach" on every rerun
    assert 'partition "ev1" is pending detach, left by an earlier try of this migration: completing it' \
        in rerun.stderr, rerun.stderr
    assert applied(db) == [SEED, "0002_detach"]
    assert db.query(PARTITIONS) == [("ev2", False)]


def test_a_pending_detach_no_earlier_try_explains_is_left_to_the_servers_error(cli, db, sql_dir, seeded):
    """Someone else's pending detach (a DBA's, stopped in its wait) is not finalized behind their back."""
    partitioned(db)
    dba = connect(db, application_name="dba")
    dba.autocommit = True
    try:
        dba.cursor().execute("SET statement_timeout = '500ms'")
        with blocking(db, table="ev"), pytest.raises(psycopg2.errors.QueryCanceled):
            dba.cursor().execute("ALTER TABLE ev DETACH PARTITION ev1 CONCURRENTLY")
    finally:
        dba.close()
    add_migration(sql_dir, "0002_detach", DETACH)
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    assert 'partition "ev1" already pending detach' in line and "completing it" not in line, line
    # before: "the first of its two transactions COMMITTED: partition ev1 is left pending detach" (the DBA's did)
    assert "COMMITTED" not in line and "left pending" not in line, line
    assert 'partition "ev1" was pending detach before this statement ran, not left by this migration' in line, line
    assert 'ALTER TABLE "ev" DETACH PARTITION "ev1" FINALIZE' in line, line
    assert db.query(PARTITIONS) == [("ev1", True), ("ev2", False)]


def test_a_detach_waiting_for_the_partitions_lock_is_bounded_and_the_retry_finalizes(cli, db, sql_dir, seeded):
    """A report reading the partition itself (not the parent) in a 2.5 s transaction: the detach's second
    transaction waits for ACCESS EXCLUSIVE on it, and every app query on the partition queues behind. Before:
    lock_timeout off, that wait lasted the report's life, unretried. Now the probe ends it as any DDL's lock wait,
    and the retry completes the detach the cancelled try left pending (FINALIZE)."""
    partitioned(db)
    add_migration(sql_dir, "0002_detach", DETACH)
    with blocking(db, table="ev1", hold=2.5) as pid:
        result = cli("migrate", "--ddl-lock-timeout", "200ms", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    retries = [line for line in result.stderr.splitlines() if "0002_detach.sql:2: locks not all granted" in line]
    assert retries and f"blocked by pid {pid}" in retries[0], result.stderr
    assert "ACCESS EXCLUSIVE lock on ev1" in retries[0], retries[0]
    assert 'partition "ev1" is pending detach, left by an earlier try of this migration: completing it' \
        in result.stderr, result.stderr
    assert applied(db) == [SEED, "0002_detach"]
    assert db.query(PARTITIONS) == [("ev2", False)]
