"""A PREPAREd transaction holding one of the runner's advisory locks (attack 23e, prepared_holder): its lock has no
session (pg_locks pid NULL) and outlives disconnects and restarts. Before: "held by released meanwhile" (the
bookkeeping lock), "another runner holds the migration lock (holder unknown)", and doctor said "free", "ready".
Now both name the prepared transaction (gid, owner, when) and how to end it; doctor tries the locks and FAILs.
(The suite's server runs with max_prepared_transactions > 0, conftest.)
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import psycopg2
import pytest

from conftest import ok
from test_planted_objects import low  # noqa: F401 (a fixture)

GID = "evil's hold"  # (a quote: the advice must still be SQL that runs)


@contextmanager
def prepared_lock(db, role: str, key: int):
    """`role` (CONNECT only) takes advisory lock `key` in a transaction it PREPAREs, then disconnects."""
    if db.query("SELECT current_setting('max_prepared_transactions')::int")[0][0] == 0:
        pytest.skip("the server (TEST_DATABASE_URL) runs with max_prepared_transactions = 0: no prepared transaction")
    holder = psycopg2.connect(dbname=db.name, user=role, host=db.server.host, port=db.server.port)
    with holder.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        cursor.execute("PREPARE TRANSACTION %s", (GID,))
    holder.close()
    try:
        yield
    finally:  # (a prepared transaction would keep the database from being dropped)
        db.query("SELECT count(*) FROM pg_prepared_xacts")  # (noop: the advice may have ended it)
        if db.query("SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (GID,))[0][0]:
            db.query("ROLLBACK PREPARED %s", (GID,))


def named(text: str, role: str) -> str:
    """The prepared transaction named in `text`, with its advice: returns the advice (SQL)."""
    assert f"the prepared transaction 'evil\\'s hold' (owner {role}, prepared " in text, text
    assert "as its owner or a superuser" in text, text
    return re.search(r"until `(ROLLBACK PREPARED [^`]+)`", text)[1]


def lines(result, *words) -> list[str]:
    return [line for line in result.output.splitlines() if all(word in line for word in words)]


@pytest.mark.parametrize("which", ["bookkeeping", "migration"])
def test_a_lock_a_prepared_transaction_holds_is_named_with_how_to_end_it(cli, db, sql_dir, low, which):
    from migrator.bookkeeping_lock import bookkeeping_key, lock_key

    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "ph", "--create-schemas", env=db.db_env()))
    (sql_dir / "0002_a.sql").write_text("CREATE TABLE a (id int);\n")
    (sql_dir / "0002_a.rollback.sql").write_text("DROP TABLE a;\n")
    key = bookkeeping_key("ph") if which == "bookkeeping" else lock_key("ph")
    with prepared_lock(db, low, key):
        result = cli("migrate", "--sql-dir", sql_dir, "--schema", "ph", "--lock-timeout", "1",
                     "--lock-retry-budget", "1s", env=db.db_env())
        failed = lines(result, "[ph] FAILED")
        assert result.exit_code == 4 and len(failed) == 1, result.output
        assert "released meanwhile" not in failed[0] and "holder unknown" not in failed[0], failed[0]
        if which == "migration":
            assert "a prepared transaction, not a runner, holds the migration lock" in failed[0], failed[0]
        advice = named(failed[0], low)
        doctor = cli("doctor", "--sql-dir", sql_dir, "--schema", "ph", env=db.db_env())
        check = lines(doctor, "FAIL ", "bookkeeping lock" if which == "bookkeeping" else "the migration lock")
        assert doctor.exit_code != 0 and len(check) == 1 and "ready" not in doctor.output.splitlines()[-1], \
            doctor.output
        assert named(check[0], low) == advice
        assert db.query("SELECT to_regclass('ph.a')") == [(None,)]
        db.query(advice)  # the advice, as said, ends it
        assert db.query("SELECT count(*) FROM pg_prepared_xacts") == [(0,)]
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "ph", env=db.db_env()))
    doctor = cli("doctor", "--sql-dir", sql_dir, "--schema", "ph", env=db.db_env())
    assert not lines(doctor, "held by") and doctor.exit_code == 0, doctor.output


def test_a_shared_lock_held_by_a_session_and_a_prepared_transaction_names_both_in_one_line(cli, db, sql_dir, low):
    """(attack 23f prepared_and_session: doctor and migrate named the session only; once it was ended, the next run
    named the prepared transaction: two rounds.)"""
    from migrator.bookkeeping_lock import bookkeeping_key

    if db.query("SELECT current_setting('max_prepared_transactions')::int")[0][0] == 0:
        pytest.skip("the server (TEST_DATABASE_URL) runs with max_prepared_transactions = 0: no prepared transaction")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "ps", "--create-schemas", env=db.db_env()))
    (sql_dir / "0002_a.sql").write_text("CREATE TABLE a (id int);\n")
    key = bookkeeping_key("ps")
    prepared = psycopg2.connect(dbname=db.name, user=low, host=db.server.host, port=db.server.port)
    prepared.cursor().execute("SELECT pg_advisory_xact_lock_shared(%s); PREPARE TRANSACTION %s", (key, GID))
    prepared.close()
    session = psycopg2.connect(dbname=db.name, user=low, host=db.server.host, port=db.server.port)
    session.autocommit = True
    session.cursor().execute("SELECT pg_advisory_lock_shared(%s)", (key,))
    pid = session.info.backend_pid
    try:
        result = cli("migrate", "--sql-dir", sql_dir, "--schema", "ps", "--lock-timeout", "1",
                     "--lock-retry-budget", "0", env=db.db_env())
        doctor = cli("doctor", "--sql-dir", sql_dir, "--schema", "ps", env=db.db_env())
    finally:
        session.close()
        db.query("ROLLBACK PREPARED %s", (GID,))
    failed = lines(result, "[ps] FAILED")
    assert result.exit_code == 4 and len(failed) == 1, result.output
    check = lines(doctor, "FAIL ", "bookkeeping lock")
    assert len(check) == 1 and doctor.exit_code != 0, doctor.output
    for line in (failed[0], check[0]):
        assert f"held by server pid {pid} (user {low}, no application_name, connected " in line, line
        assert " s ago) and the prepared transaction " in line, line
        assert named(line, low) == "ROLLBACK PREPARED 'evil''s hold'"
    assert "and the sessions named with it" in check[0], check[0]
