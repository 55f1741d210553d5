"""Sessions the server takes away mid-run (hostile pass on issue 24, reproE/E2/F/D): a DBA's idle_session_timeout
on the database, an admin's pg_terminate_backend, a role's CONNECTION LIMIT. The runner's sessions are immune to
the idle timeouts; one lost anyway after a migration committed is said exactly, and the next run does not apply
it twice; the lock probe comes back after it was killed, and while it cannot see, each try is still bounded and
one line says why it is blind. Asserted from the server and the runner's lines, never from timings.
"""

import threading
import time

from conftest import SEED, add_migration, applied, one_error_line
from migrator.postgres import retry
from test_live_traffic import blocking, connect, seeded  # noqa: F401 (a fixture)
from test_progress_attack import LIMITED_PASSWORD, limited_role  # noqa: F401 (a fixture)


def test_idle_session_timeout_does_not_close_the_runners_sessions(cli, db, sql_dir, seeded):
    """The database's idle_session_timeout (1 s) is shorter than the migration: the run's own connection idles
    meanwhile. Before: closed by the server, "unexpected InterfaceError", the migration committed unrecorded."""
    db.query("CREATE TABLE payouts (id serial PRIMARY KEY, note text)")
    db.query(f"ALTER DATABASE {db.name} SET idle_session_timeout = '1s'")
    db.query(f"ALTER DATABASE {db.name} SET idle_in_transaction_session_timeout = '1s'")
    add_migration(sql_dir, "0002_bonus", "INSERT INTO payouts (note) VALUES ('bonus');\nSELECT pg_sleep(2.5);\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    assert applied(db) == [SEED, "0002_bonus"]
    assert db.query("SELECT count(*) FROM payouts") == [(1,)]


# The migration itself ends the run's own session (the one holding the migration's advisory lock, not its own):
# the file commits, then the runner's record of it fails on a connection the server closed.
KILL_BOOKKEEPING = """SELECT pg_catalog.pg_terminate_backend(l.pid) FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_catalog.pg_backend_pid()
  AND a.application_name LIKE 'hcm-db-migrations %';
"""


def test_a_bookkeeping_session_lost_after_the_commit_is_said_and_not_applied_twice(cli, db, sql_dir, seeded):
    db.query("CREATE TABLE payouts (id serial PRIMARY KEY, note text)")
    add_migration(sql_dir, "0002_bonus", "INSERT INTO payouts (note) VALUES ('bonus');\n" + KILL_BOOKKEEPING)
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    # before: "error: unexpected InterfaceError: connection already closed"
    assert "0002_bonus.sql: 0002_bonus was applied and COMMITTED, but the runner's own connection to " in line, line
    assert "was lost before it recorded that" in line and "without running it again" in line, line
    assert db.query("SELECT count(*) FROM payouts") == [(1,)]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert "marked 0002_bonus applied: committed by a runner that died before marking it" in rerun.stderr
    assert applied(db) == [SEED, "0002_bonus"]
    assert db.query("SELECT count(*) FROM payouts") == [(1,)]  # not applied twice


# --- the lock probe, blind or killed ----------------------------------------------------------------------

# lock_timeout lifted by set_config (no SET for the runner to override): only the probe bounds the ALTER's wait.
LIFTED = ("SELECT pg_catalog.set_config('lock_timeout', '0', false);\n"
          "ALTER TABLE t_probe ADD COLUMN note text;\n")


def test_a_probe_refused_by_the_connection_limit_still_bounds_each_try(cli, make_db, limited_role, sql_dir, pg):
    """The role may open two connections: the run's own and the migration's; the probe (and the watcher) are
    refused. Before: the probe thread died at once, silently; the ALTER waited for the blocker's whole life."""
    db = make_db(owner=limited_role)
    url = pg.url(db.name, user=limited_role, password=LIMITED_PASSWORD)
    db.query(f"CREATE TABLE t_probe (id int); ALTER TABLE t_probe OWNER TO {limited_role}")
    assert cli("migrate", "--sql-dir", sql_dir, "--database-url", url).exit_code == 0
    add_migration(sql_dir, "0002_lifted", LIFTED)
    with blocking(db, table="t_probe", hold=12):
        result = cli("migrate", "--lock-retry-budget", "1s", "--sql-dir", sql_dir, "--database-url", url)
    line = one_error_line(result)
    assert "0002_lifted.sql:2: failed to apply" in line, line
    assert "ended by the runner after" in line and "the lock probe was blind" in line, line
    assert "the lock probe cannot connect" in line and "too many connections" in line, line
    blind = [note for note in result.stderr.splitlines() if "the lock probe cannot see the migration session" in note]
    assert len(blind) == 1 and "too many connections" in blind[0], result.stderr
    assert LIMITED_PASSWORD not in result.output
    assert "note" not in [c for (c,) in db.query("SELECT attname FROM pg_attribute WHERE attrelid = 't_probe'::regclass")]


def kill_the_probe_once(db) -> threading.Thread:
    """pg_terminate_backend of the lock probe's session, the first time it appears (an admin's, a pooler's)."""
    def watch():
        conn = connect(db, application_name="test-admin")
        conn.autocommit = True
        try:
            cur = conn.cursor()
            for _ in range(2000):
                cur.execute("SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                            "WHERE application_name = %s", (retry.PROBE_NAME,))
                if cur.fetchall():
                    return
                time.sleep(0.005)
        finally:
            conn.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_killed_probe_connects_again_and_goes_on_bounding_and_naming(cli, db, sql_dir, seeded):
    """Before: the probe thread ended on the error for good; the ALTER (lock_timeout lifted) then waited for the
    blocker's whole life, nothing said."""
    db.query("CREATE TABLE t_probe (id int)")
    add_migration(sql_dir, "0002_lifted", LIFTED)
    with blocking(db, table="t_probe", hold=15) as pid:
        killer = kill_the_probe_once(db)
        result = cli("migrate", "--lock-retry-budget", "2s", "--sql-dir", sql_dir, env=seeded)
        killer.join(timeout=10)
    line = one_error_line(result)
    assert "0002_lifted.sql:2: failed to apply" in line, line
    assert f"blocked by pid {pid} (application_name 'report-job'" in line, line  # seen again after the kill
    assert "the lock probe cannot see the migration session (terminating connection" in result.stderr \
        or "the lock probe cannot see the migration session (server closed the connection" in result.stderr, \
        result.stderr
    assert applied(db) == [SEED]
