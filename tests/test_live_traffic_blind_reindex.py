"""Issue 24 (fix24ap 1): a blind REINDEX ... CONCURRENTLY. Its own waits block no application query (PostgreSQL's
REINDEX page: SHARE UPDATE EXCLUSIVE, which no SELECT or DML conflicts with; its waits for older transactions are
on their virtual xids, not a queued request on the table); the index's own code does (an expression, a predicate,
an operator class of the database's own runs per row, as in CREATE INDEX CONCURRENTLY): that one is on the clock."""

import threading

import pytest

from conftest import add_migration, applied, one_error_line
from migrator.postgres.clock_bound import Judge
from test_live_traffic import connect
from test_live_traffic_blind_attack24q import SLOW, conn  # noqa: F401 (a fixture)
from test_live_traffic_attack24r import wait_for
from test_live_traffic_parse import blind_run
from test_progress_attack import limited_role  # noqa: F401 (a fixture)


@pytest.mark.parametrize("setup,reindex,bounded", [
    ("CREATE INDEX i ON t (v)", "REINDEX INDEX CONCURRENTLY i", False),
    ("CREATE INDEX i ON t (abs(v)) WHERE lower(w) LIKE 'a%'", "REINDEX INDEX CONCURRENTLY i", False),
    ("CREATE INDEX i ON t (v)", "REINDEX TABLE CONCURRENTLY t", False),
    (SLOW + "; CREATE INDEX i ON t (slow(v))", "REINDEX INDEX CONCURRENTLY i", True),
    (SLOW + "; CREATE INDEX i ON t (v) WHERE slow(v) > 0", "REINDEX INDEX CONCURRENTLY i", True),
    (SLOW + "; CREATE INDEX i ON t (slow(v))", "REINDEX (CONCURRENTLY) TABLE t", True),
    (SLOW + "; CREATE INDEX i ON t (v); CREATE INDEX j ON t (slow(v))", "REINDEX TABLE CONCURRENTLY t", True),
    ("CREATE INDEX i ON t (v)", "REINDEX SCHEMA CONCURRENTLY public", True),  # (not judged: every table's)
    (SLOW + "; CREATE TABLE pt (v int) PARTITION BY RANGE (v); CREATE TABLE pt1 PARTITION OF pt FOR VALUES FROM (0) "
     "TO (10); CREATE INDEX j ON pt1 (slow(v))", "REINDEX TABLE CONCURRENTLY pt", True),  # (a partition's index)
    ("CREATE TABLE pt (v int) PARTITION BY RANGE (v); CREATE TABLE pt1 PARTITION OF pt FOR VALUES FROM (0) TO (10); "
     "CREATE INDEX j ON pt (v)", "REINDEX INDEX CONCURRENTLY j", False),
], ids=["plain", "builtin-expression", "table-plain", "user-expression", "user-predicate", "table-option-spelling",
        "table-one-of-two", "schema", "partition-user-expression", "partitioned-plain"])
def test_the_blind_judge_bounds_a_reindex_concurrently_running_code_not_built_in(conn, setup, reindex, bounded):
    """Before: every REINDEX ... CONCURRENTLY was off the clock, though a CREATE INDEX CONCURRENTLY of the same
    index was on it (attack24q 6)."""
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("CREATE TABLE t (v int, w text)")
        cursor.execute(setup)
    assert Judge(conn, {}).bounded(reindex) is bounded


def test_a_blind_probe_ends_a_reindex_concurrently_running_user_code(cli, make_db, limited_role, sql_dir, pg):
    """Before: a blind REINDEX CONCURRENTLY of an index on a slow function ran to its end, off the clock."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    db.query(SLOW + "; INSERT INTO t_probe SELECT g FROM generate_series(2, 20) g; "
                    "CREATE INDEX i_slow ON t_probe (id) WHERE slow(id) > 0")
    add_migration(sql_dir, "0002_idx", "-- transactional: false\nREINDEX INDEX CONCURRENTLY i_slow;\n")
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0002_idx.sql:2: failed to apply" in line and "the lock probe was blind" in line, line
    assert "the INVALID index its last try left was dropped" in line and "status` shows" not in line, line
    assert applied(db)[-1] != "0002_idx"
    # each try's INVALID copy (i_slow_ccnew, i_slow_ccnew1, ...) dropped before the next, the last one's too
    assert db.query("SELECT indexrelid::regclass::text, indisvalid FROM pg_index WHERE indrelid = 't_probe'::regclass") \
        == [("i_slow", True)]


def test_a_reindex_concurrently_waiting_for_a_reader_blocks_no_application_query(pg, db):
    """Why a plain one stays off the clock: waiting (its last phases) for a transaction that read the table, it
    queues no SELECT or write of the application's behind it (bounded by lock_timeout here so that a regression
    fails instead of hanging)."""
    db.query("CREATE TABLE t (v int); INSERT INTO t VALUES (1); CREATE INDEX i ON t (v)")
    reader, builder, app = (connect(db, application_name=name) for name in ("reader", "builder", "app"))
    try:
        reader.cursor().execute("SELECT count(*) FROM t")  # (its transaction stays open: ACCESS SHARE held)
        builder.autocommit = app.autocommit = True
        failed: list = []

        def build():
            try:
                builder.cursor().execute("REINDEX INDEX CONCURRENTLY i")
            except Exception as exc:  # (said below)
                failed.append(exc)

        thread = threading.Thread(target=build, daemon=True)
        thread.start()
        wait_for(db, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'builder' AND wait_event_type = 'Lock'")
        cursor = app.cursor()
        cursor.execute("SET lock_timeout = '5s'")
        cursor.execute("INSERT INTO t VALUES (2)")
        cursor.execute("UPDATE t SET v = 3 WHERE v = 1")
        cursor.execute("SELECT count(*) FROM t")
        assert cursor.fetchall() == [(2,)]
        assert db.query("SELECT wait_event FROM pg_stat_activity WHERE application_name = 'builder'") == [
            ("virtualxid",)]  # (still waiting for the reader, not for a lock on the table)
        reader.rollback()
        thread.join(timeout=30)
        assert not failed and not thread.is_alive()
    finally:
        for connection in (reader, builder, app):
            connection.close()
