"""Sessions the server takes away mid-run (hostile pass on issue 24, reproE/E2/F/D): a DBA's idle_session_timeout
on the database, an admin's pg_terminate_backend, a role's CONNECTION LIMIT. The runner's sessions are immune to
the idle timeouts; one lost anyway after a migration committed is said exactly, and the next run does not apply
it twice; the lock probe comes back after it was killed, and while it cannot see, each try is still bounded and
one line says why it is blind. Asserted from the server and the runner's lines, never from timings.
"""

from conftest import SEED, add_migration, applied, one_error_line
from test_live_traffic import blocking, seeded  # noqa: F401 (a fixture)


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
