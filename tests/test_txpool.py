"""Behind a transaction-mode pool that forwards `options` (attack 23k): every server session took the runner's
settings from its own startup packet, so the read-back passes, yet each later transaction of the run may run on
another client's server session. The pins and every take or release of a session-level advisory lock run only on
the session's own server session (its pid and start as first read), else do nothing, and the run refuses."""

import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT, SEED, add_migration, applied, one_error_line
from migrator import bookkeeping_lock, pg_lock, postgres, server_session
from migrator.errors import MigratorError
from pg_wire import TxPool
from test_pg_lock import target_of
from test_silent_network import CLEAN, seeded, through  # noqa: F401 (a fixture)

POOL_LINE = "each transaction reached another server session (a transaction-mode pool?)"
LEFT = ("SELECT pg_catalog.current_setting('search_path'), pg_catalog.current_setting('hcm.history', true), "
        "(SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())")


@pytest.fixture
def txpool(pg):
    pool = TxPool(pg.host, pg.port)
    yield pool
    pool.close()


def test_a_run_through_a_transaction_mode_pool_that_forwards_options_is_refused_leaving_nothing(cli, db, sql_dir,
                                                                                                seeded, txpool):
    """Before: its pins went to the pool's other server session (search_path pg_catalog, hcm.history there for the
    next client) and the run went on across sessions."""
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=through(seeded, txpool))
    line = one_error_line(result)
    assert result.exit_code == 2, result.output
    assert f"PostgreSQL at 127.0.0.1:{txpool.port}/{db.name}: {POOL_LINE}" in line, line
    assert "connect to PostgreSQL directly or through a session-mode pool" in line, line
    assert applied(db) == [SEED]
    left = txpool.on_each(LEFT)
    assert len(left) == 2 and all(row[0] != "pg_catalog" and row[1] is None and row[2] == "0" for row in left), left


def test_two_runs_through_such_a_pool_never_apply_a_migration_twice(cli, db, sql_dir, seeded, txpool):
    """attack 23k txpool_double: a non-transactional migration pending, two runs at once (there, run 2's lock take
    landed on run 1's server session, re-entrant, and both ran the file; in this model, before, one applied and the
    other said "up to date"). A lock one took on its own server session before the other's turn refused it may stay
    on that pooled session (the refused run sends nothing more): not asserted here."""
    db.query("CREATE TABLE hits (n int)")
    add_migration(sql_dir, "0002_hits", "-- transactional: false\nINSERT INTO hits VALUES (1);\n"
                  "SELECT pg_sleep(1);\nINSERT INTO hits VALUES (2);\n")
    runs = [subprocess.Popen([sys.executable, "runner.py", "migrate", "--sql-dir", str(sql_dir)], cwd=PROJECT_ROOT,
                             env={**CLEAN, **through(seeded, txpool)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert db.query("SELECT count(*) FROM hits")[0][0] in (0, 2), outputs  # (at most once, whole)
    assert any(POOL_LINE in err for _, err in outputs), outputs


def _elsewhere(backend) -> None:
    """The run's connection as if its first read had seen another server session (a pool's)."""
    own = server_session.of(backend.connection)
    server_session._known[backend.connection] = server_session.ServerSession(own.pid + 1, own.started)


def _advisory_locks(db) -> int:
    return db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())")[0][0]


def test_the_migration_lock_is_taken_only_on_the_runs_own_server_session(db):
    target = target_of(db)
    with postgres.connect(target, read_only=False) as backend:
        _elsewhere(backend)
        with pytest.raises(MigratorError) as err:
            with pg_lock.held(backend, target, 1, lambda _: None):
                pass
        assert err.value.exit_code == 2 and POOL_LINE in str(err.value)
        assert backend.connection.closed  # (nothing more is sent on it)
    assert _advisory_locks(db) == 0


def test_the_bookkeeping_lock_is_taken_only_on_the_sessions_own_server_session(db):
    target = target_of(db)
    with postgres.connect(target, read_only=False) as backend:
        _elsewhere(backend)
        with pytest.raises(MigratorError) as err:
            bookkeeping_lock.Recording(backend.connection, backend.bookkeeping_schema).before_commit("")
        assert POOL_LINE in str(err.value)
    assert _advisory_locks(db) == 0


def test_on_its_own_server_session_the_guards_change_nothing(db):
    target = target_of(db)
    with postgres.connect(target, read_only=False) as backend:
        with pg_lock.held(backend, target, 1, lambda _: None):
            assert _advisory_locks(db) >= 1
        backend.rollback()  # yoyo's: the pins again, guarded
        assert backend.execute("SELECT current_setting('search_path')").fetchone()[0] == "pg_catalog"
    assert _advisory_locks(db) == 0
