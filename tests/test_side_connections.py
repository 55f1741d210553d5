"""The runner's side connections (the lock probe's, the progress watcher's) on a path gone silent (attack24i 1): a
proxy that stops answering only those (StallProxy, triggered by their own queries) while the migration's session goes
on. Their reads are bounded as the run's own are (DB_READ_TIMEOUT), and the run never waits behind a thread stuck on
one (before: Probe.close() and the watcher's end waited for ever on psycopg2's lock, SIGTERM ignored). Then a silent
path between two lock tries says that nothing of a transactional file was running (attack24i, low)."""

import pytest

from conftest import SEED, add_migration, applied
from pg_wire import StallProxy
from test_live_traffic import blocking
from test_settings import _in_thread
from test_silent_network import migrate_through_silence, seeded, through  # noqa: F401 (a fixture)

PROBE_QUERY = b"unnest(pg_catalog.pg_blocking_pids"  # sessions.blockers: the probe's (and the watcher's on a wait)
WATCHER_QUERY = b"clock_timestamp() - query_start"  # watch._ACTIVITY
ALTER = "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n"


@pytest.fixture
def stalling(pg):
    made = []

    def make(trigger: bytes) -> StallProxy:
        made.append(StallProxy(pg.host, pg.port, trigger))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def columns(db) -> list[str]:
    return [c for (c,) in db.query("SELECT attname FROM pg_attribute WHERE attrelid = 'hcm_report_metadata'::regclass "
                                   "AND attnum > 0")]


@pytest.mark.parametrize("read_timeout", ["2", "0"])  # 0: no read bound at all; the run still never waits on it
def test_a_probe_stuck_on_a_silent_path_neither_blinds_the_run_nor_holds_its_end(cli, db, sql_dir, seeded, stalling,
                                                                                  read_timeout):
    proxy = stalling(PROBE_QUERY)
    add_migration(sql_dir, "0002_status", ALTER)
    env = {**through(seeded, proxy), "DB_READ_TIMEOUT": read_timeout}
    with blocking(db, hold=5):
        result = _in_thread(lambda: cli("migrate", "--sql-dir", sql_dir, env=env), limit=120)
    assert result is not None, "migrate hung behind the lock probe's stuck connection"
    assert proxy.stalled >= 1
    assert result.exit_code == 0, result.output
    assert applied(db) == [SEED, "0002_status"] and "status" in columns(db)
    blind = [line for line in result.stderr.splitlines() if "the lock probe cannot see the migration session" in line]
    if read_timeout == "2":  # its read bound ended the wait: the probe knew it was blind (and said it once)
        assert len(blind) == 1 and f"127.0.0.1:{proxy.port}: no answer within 2 s" in blind[0], result.stderr
    else:
        assert blind == [], result.stderr


@pytest.mark.parametrize("read_timeout", ["1", "0"])
def test_a_watcher_stuck_on_a_silent_path_never_holds_the_run(cli, db, sql_dir, seeded, stalling, read_timeout):
    """--ddl-lock-timeout 0: no probe; the watcher's poll stalls while the migration sleeps (before: the run's end
    waited for the watcher's lock for ever)."""
    proxy = stalling(WATCHER_QUERY)
    add_migration(sql_dir, "0002_sleep", "SELECT pg_catalog.pg_sleep(5);\n")
    env = {**through(seeded, proxy), "DB_READ_TIMEOUT": read_timeout}
    result = _in_thread(lambda: cli("migrate", "--sql-dir", sql_dir, "--ddl-lock-timeout", "0", env=env), limit=120)
    assert result is not None, "migrate hung behind the watcher's stuck connection"
    assert proxy.stalled == 1
    assert result.exit_code == 0, result.output
    assert applied(db) == [SEED, "0002_sleep"]
    stopped = [line for line in result.stderr.splitlines() if "live progress stopped" in line]
    if read_timeout == "1":
        assert len(stopped) == 1 and f"127.0.0.1:{proxy.port}: no answer within 1 s" in stopped[0], result.stderr
    else:
        assert stopped == [], result.stderr


def test_a_path_gone_silent_between_lock_tries_says_nothing_of_the_file_ran(cli, db, sql_dir, seeded, stalling,
                                                                            monkeypatch):
    """The retry's `SHOW lock_timeout` after the backoff gets no answer: the try was a fresh transaction with
    nothing done (before: "waiting for its COMMIT or its record; whether ... committed is unknown")."""
    proxy = stalling(b"SHOW lock_timeout")
    add_migration(sql_dir, "0002_status", ALTER)
    with blocking(db):
        line = migrate_through_silence(cli, sql_dir, seeded, proxy, monkeypatch, limit=120)
    assert "0002_status.sql: no answer from PostgreSQL at 127.0.0.1:" in line and "within 2 s" in line, line
    assert "between its lock tries (none of its statements was running)" in line, line
    assert "nothing of the file committed" in line and "COMMIT or its record" not in line, line
    assert "unknown" not in line, line
    assert applied(db) == [SEED] and "status" not in columns(db)


def test_a_concurrent_build_gone_silent_says_so_at_its_line(cli, db, sql_dir, seeded, stalling, monkeypatch):
    """Before: restoring its lock_timeout on the session cut off failed ("cursor already closed"), and that error,
    recorded on the run's own connection, stood in for the silent path's line (attack24i reproPH, sil/cic)."""
    proxy = stalling(b"rm_stall_idx")
    add_migration(sql_dir, "0002_cic", "-- transactional: false\n"
                  "CREATE INDEX CONCURRENTLY rm_stall_idx ON hcm_report_metadata (tenant_id);\n")
    line = migrate_through_silence(cli, sql_dir, seeded, proxy, monkeypatch, limit=120)
    assert "0002_cic.sql:2: no answer from PostgreSQL at 127.0.0.1:" in line and "within 2 s" in line, line
    assert "cursor already closed" not in line, line
    assert applied(db) == [SEED]
