"""Sessions the server takes away mid-run (hostile pass on issue 24, reproE/E2/F/D): a DBA's idle_session_timeout
on the database, an admin's pg_terminate_backend, a role's CONNECTION LIMIT. The runner's sessions are immune to
the idle timeouts; the run's own one lost anyway is said exactly (nothing of a transactional file before its COMMIT;
which statements of a non-transactional one; a migration or rollback COMMITTED but unrecorded), and the next run does
what the line says; the lock probe comes back after it was killed, and while it cannot see, each try is still bounded and
one line says why it is blind. Asserted from the server and the runner's lines, never from timings.
"""

import threading
import time

from conftest import SEED, add_migration, applied, one_error_line
from migrator.postgres import retry
from test_live_traffic import blocking, connect, seeded  # noqa: F401 (a fixture)
from test_live_traffic_parse import LIFT
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


# --- the run's own session, ended by the migration itself -----------------------------------------------

# The run's own session (the one holding the migration's advisory lock, not the file's), ended from inside the
# file, as an admin's pg_terminate_backend would, once: while the table run_session_killer exists.
KILL_BOOKKEEPING = """SELECT pg_catalog.pg_terminate_backend(l.pid) FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_catalog.pg_backend_pid()
  AND a.application_name LIKE 'hcm-db-migrations %'
  AND pg_catalog.to_regclass('public.run_session_killer') IS NOT NULL;
"""
NONTX = "-- transactional: false\n"


def killing_once(db):
    db.query("CREATE TABLE payouts (id serial PRIMARY KEY, note text); CREATE TABLE run_session_killer ()")


def notes(db) -> list[str]:
    return [note for (note,) in db.query("SELECT note FROM payouts ORDER BY id")]


def test_a_run_session_lost_before_a_transactional_commit_commits_nothing_and_the_rerun_applies_it(
        cli, db, sql_dir, seeded):
    """The run takes the bookkeeping lock on its own session before the file's COMMIT: that session is gone, so the
    file's transaction rolls back. Before: "whether it committed is unknown"."""
    killing_once(db)
    add_migration(sql_dir, "0002_bonus", "INSERT INTO payouts (note) VALUES ('bonus');\n" + KILL_BOOKKEEPING)
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    assert f"0002_bonus.sql: the runner's own connection to socket {db.server.host} (port " in line, line
    assert f"database {db.name} was lost before 0002_bonus committed (" in line, line
    assert line.endswith(": nothing of this file committed (its transaction rolled back); run migrate again"), line
    assert notes(db) == [] and applied(db) == [SEED]
    db.query("DROP TABLE run_session_killer")
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert applied(db) == [SEED, "0002_bonus"] and notes(db) == ["bonus"]


def test_a_bookkeeping_session_lost_after_the_commit_is_said_and_not_applied_twice(cli, db, sql_dir, seeded):
    """0002 committed first, so the run holds the bookkeeping lock already: 0003 commits, then yoyo's mark of it on
    the lost session fails. Before: "unexpected InterfaceError" (the lock's release on the closed connection)."""
    killing_once(db)
    add_migration(sql_dir, "0002_first", "INSERT INTO payouts (note) VALUES ('first');\n")
    add_migration(sql_dir, "0003_bonus", "INSERT INTO payouts (note) VALUES ('bonus');\n" + KILL_BOOKKEEPING)
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    assert "0003_bonus.sql: 0003_bonus was applied and COMMITTED, but the runner's own connection to " in line, line
    assert "was lost before it recorded that" in line and "without running it again" in line, line
    assert notes(db) == ["first", "bonus"] and applied(db) == [SEED, "0002_first"]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)  # (the killer still armed: the file must not run)
    assert rerun.exit_code == 0, rerun.output
    assert "marked 0003_bonus applied: committed by a runner that died before marking it" in rerun.stderr
    assert applied(db) == [SEED, "0002_first", "0003_bonus"]
    assert notes(db) == ["first", "bonus"]  # not applied twice


def test_a_run_session_lost_mid_file_says_what_committed_and_the_rerun_starts_over(cli, db, sql_dir, seeded):
    """Non-transactional: statements 1-2 committed, the progress record of statement 2 meets the lost session.
    Before: "unexpected InterfaceError"."""
    killing_once(db)
    add_migration(sql_dir, "0002_bonus", NONTX + "INSERT INTO payouts (note) VALUES ('bonus');\n" + KILL_BOOKKEEPING
                  + "INSERT INTO payouts (note) VALUES ('more');\n")
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    assert "0002_bonus.sql: not transactional: statements 1-2 of 3 (through the one at line 3) COMMITTED, but the " \
           "runner's own connection to " in line, line
    assert line.endswith("; the next migrate runs this file again from its first statement: make it safe to re-run "
                         "(IF NOT EXISTS) or undo what committed, then run migrate again"), line
    assert notes(db) == ["bonus"] and applied(db) == [SEED]
    db.query("DROP TABLE run_session_killer")
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert applied(db) == [SEED, "0002_bonus"] and notes(db) == ["bonus", "bonus", "more"]  # as said: from statement 1


def test_a_statement_failing_after_the_run_session_was_lost_is_said_as_it_failed(cli, db, sql_dir, seeded):
    """Its failure cannot be recorded on the lost session: the line says the failure and what committed. Before:
    "unexpected OperationalError" (the failure's record on the closed connection)."""
    killing_once(db)
    kill = KILL_BOOKKEEPING.replace("SELECT pg_catalog", "PERFORM pg_catalog").rstrip().rstrip(";")
    add_migration(sql_dir, "0002_bonus", NONTX + "INSERT INTO payouts (note) VALUES ('bonus');\n"
                  f"DO $$ BEGIN {kill}; RAISE EXCEPTION 'boom'; END $$;\n")
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    assert "0002_bonus.sql:3: failed to apply on " in line and ": boom; " in line, line
    assert "(not transactional: statement 1 of 2 (line 2) COMMITTED; statement 2 failed; the rest did not run)" in line
    assert notes(db) == ["bonus"] and applied(db) == [SEED]
    status = cli("status", "--sql-dir", sql_dir, env=seeded)  # the progress record written before the loss
    assert "statement 1 of 2 (line 2) COMMITTED; interrupted in statement 2 (line 3)" in status.output, status.output


def test_a_run_session_lost_after_a_whole_non_transactional_file_says_mark_it(cli, db, sql_dir, seeded):
    killing_once(db)
    add_migration(sql_dir, "0002_bonus", NONTX + "INSERT INTO payouts (note) VALUES ('bonus');\n" + KILL_BOOKKEEPING)
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    assert "0002_bonus.sql: not transactional: statements 1-2 of 2 (through the one at line 3) COMMITTED, but " in line
    assert line.endswith("; the next migrate would run it all again, so run `runner.py sql mark 0002_bonus` (it must "
                         "not run twice), then migrate again"), line
    assert cli("sql", "mark", "0002_bonus", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)  # (the killer still armed: the file must not run)
    assert rerun.exit_code == 0, rerun.output
    assert applied(db) == [SEED, "0002_bonus"] and notes(db) == ["bonus"]


def test_a_run_session_lost_before_a_rollback_commits_leaves_it_applied(cli, db, sql_dir, seeded):
    killing_once(db)
    add_migration(sql_dir, "0002_bonus", "INSERT INTO payouts (note) VALUES ('bonus');\n",
                  rollback="DELETE FROM payouts WHERE note = 'bonus';\n" + KILL_BOOKKEEPING)
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    line = one_error_line(cli("sql", "rollback", "--count", "1", "--sql-dir", sql_dir, env=seeded))
    assert "0002_bonus.rollback.sql: the runner's own connection to " in line, line
    assert " was lost before the rollback of 0002_bonus committed (" in line, line
    assert line.endswith(": nothing of this file committed (its transaction rolled back); 0002_bonus is still "
                         "applied; run the same `runner.py sql rollback` again"), line
    assert notes(db) == ["bonus"] and applied(db) == [SEED, "0002_bonus"]
    db.query("DROP TABLE run_session_killer")
    assert cli("sql", "rollback", "--count", "1", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    assert notes(db) == [] and applied(db) == [SEED]


def test_a_run_session_lost_mid_rollback_file_says_what_committed(cli, db, sql_dir, seeded):
    killing_once(db)
    add_migration(sql_dir, "0002_bonus", "INSERT INTO payouts (note) VALUES ('bonus'), ('more');\n",
                  rollback=NONTX + "DELETE FROM payouts WHERE note = 'bonus';\n" + KILL_BOOKKEEPING
                  + "DELETE FROM payouts WHERE note = 'more';\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    line = one_error_line(cli("sql", "rollback", "--count", "1", "--sql-dir", sql_dir, env=seeded))
    assert "0002_bonus.rollback.sql: not transactional: statements 1-2 of 3 (through the one at line 3) COMMITTED, " \
           "but the runner's own connection to " in line, line
    assert line.endswith("; the next sql rollback runs this file again from its first statement: make it safe to "
                         "re-run (IF EXISTS) or undo what committed, then run sql rollback again"), line
    assert notes(db) == ["more"] and applied(db) == [SEED, "0002_bonus"]
    db.query("DROP TABLE run_session_killer")
    assert cli("sql", "rollback", "--count", "1", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    assert notes(db) == [] and applied(db) == [SEED]


def test_a_run_session_lost_after_a_whole_non_transactional_rollback_says_how_to_unmark_it(cli, db, sql_dir, seeded):
    """Its checksum row stays too (the file's end removes it): left there, migrate would mark it applied unrun."""
    killing_once(db)
    add_migration(sql_dir, "0002_bonus", "INSERT INTO payouts (note) VALUES ('bonus');\n",
                  rollback=NONTX + "DELETE FROM payouts WHERE note = 'bonus';\n" + KILL_BOOKKEEPING)
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    line = one_error_line(cli("sql", "rollback", "--count", "1", "--sql-dir", sql_dir, env=seeded))
    assert "0002_bonus.rollback.sql: not transactional: statements 1-2 of 2 (through the one at line 3) COMMITTED, " \
           "but the runner's own connection to " in line, line
    assert line.endswith("delete its rows (migration_id '0002_bonus') from _yoyo_migration and "
                         "_hcm_migration_checksum so that migrate applies it again, rather than rolling it back twice")
    db.query("DROP TABLE run_session_killer; DELETE FROM public._yoyo_migration WHERE migration_id = '0002_bonus'; "
             "DELETE FROM public._hcm_migration_checksum WHERE migration_id = '0002_bonus'")
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert applied(db) == [SEED, "0002_bonus"] and notes(db) == ["bonus"]
    assert "PARTLY" not in cli("status", "--sql-dir", sql_dir, env=seeded).output


def test_a_run_session_lost_after_a_rollback_committed_says_how_to_unmark_it(cli, db, sql_dir, seeded):
    """0003's rollback committed first (the lock is held): 0002's rollback commits, yoyo's unmark meets the lost
    session. Its advice, followed, lets migrate apply 0002 again."""
    killing_once(db)
    add_migration(sql_dir, "0002_bonus", "INSERT INTO payouts (note) VALUES ('bonus');\n",
                  rollback="DELETE FROM payouts WHERE note = 'bonus';\n" + KILL_BOOKKEEPING)
    add_migration(sql_dir, "0003_more", "INSERT INTO payouts (note) VALUES ('more');\n",
                  rollback="DELETE FROM payouts WHERE note = 'more';\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    line = one_error_line(cli("sql", "rollback", "--count", "2", "--sql-dir", sql_dir, env=seeded))
    assert "0002_bonus.rollback.sql: the rollback of 0002_bonus COMMITTED, but the runner's own connection to " in line
    assert line.endswith("delete its row (migration_id '0002_bonus') from _yoyo_migration so that migrate applies "
                         "it again, rather than rolling it back twice"), line
    assert notes(db) == [] and applied(db) == [SEED, "0002_bonus"]
    db.query("DROP TABLE run_session_killer; DELETE FROM public._yoyo_migration WHERE migration_id = '0002_bonus'")
    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert applied(db) == [SEED, "0002_bonus", "0003_more"] and notes(db) == ["bonus", "more"]


# --- the lock probe, blind or killed ----------------------------------------------------------------------

# lock_timeout lifted by a function of the database's (no statement for the runner to read back): only the probe
# bounds the ALTER's wait.
LIFTED = "SELECT lift_wait();\nALTER TABLE t_probe ADD COLUMN note text;\n"


def test_a_probe_refused_by_the_connection_limit_still_bounds_each_try(cli, make_db, limited_role, sql_dir, pg):
    """The role may open two connections: the run's own and the migration's; the probe (and the watcher) are
    refused. Before: the probe thread died at once, silently; the ALTER waited for the blocker's whole life."""
    db = make_db(owner=limited_role)
    url = pg.url(db.name, user=limited_role, password=LIMITED_PASSWORD)
    db.query(f"CREATE TABLE t_probe (id int); ALTER TABLE t_probe OWNER TO {limited_role}; {LIFT}")
    assert cli("migrate", "--sql-dir", sql_dir, "--database-url", url).exit_code == 0
    # not transactional: the lifted lock_timeout stays lifted (in a transaction TryBudget sets what is left of the try
    # again once the first statement took 10 ms: a loaded CI machine's failure), so only the clock bounds it
    add_migration(sql_dir, "0002_lifted", "-- transactional: false\n" + LIFTED)
    with blocking(db, table="t_probe", hold=12):
        result = cli("migrate", "--lock-retry-budget", "1s", "--sql-dir", sql_dir, "--database-url", url)
    line = one_error_line(result)
    assert "0002_lifted.sql:3: failed to apply" in line, line
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
    db.query("CREATE TABLE t_probe (id int); " + LIFT)
    add_migration(sql_dir, "0002_lifted", LIFTED)
    with blocking(db, table="t_probe", hold=15) as pid:
        killer = kill_the_probe_once(db)
        result = cli("migrate", "--lock-retry-budget", "2s", "--sql-dir", sql_dir, env=seeded)
        killer.join(timeout=10)
    line = one_error_line(result)
    assert "0002_lifted.sql:2: failed to apply" in line, line
    assert f"blocked by pid {pid} (application_name 'report-job'" in line, line  # seen again after the kill
    # (the kill lands on its open connection, or on its next one while it logs in: "connection to server ... failed:
    # FATAL: terminating connection ...")
    notes = [n for n in result.stderr.splitlines() if "the lock probe cannot see the migration session (" in n]
    assert any("terminating connection" in n or "server closed the connection" in n for n in notes), result.stderr
    assert applied(db) == [SEED]


def test_a_migration_session_refused_at_connect_says_nothing_was_sent(cli, make_db, limited_role, sql_dir, pg):
    """attack23h conn_limit: the role's last slot taken between the run's own connect and the migration's. Before:
    "the connection was lost ..., so whether it committed is unknown" though nothing was sent."""
    import psycopg2

    db = make_db(owner=limited_role)
    url = pg.url(db.name, user=limited_role, password=LIMITED_PASSWORD)
    assert cli("migrate", "--sql-dir", sql_dir, "--database-url", url).exit_code == 0
    add_migration(sql_dir, "0002_orders", "CREATE TABLE orders (id int);\n")
    other = psycopg2.connect(url)  # one of its two slots: the run's own connection takes the other
    try:
        result = cli("migrate", "--sql-dir", sql_dir, "--database-url", url)
    finally:
        other.close()
    line = one_error_line(result)
    assert "0002_orders.sql: failed to apply" in line and "too many connections" in line, line
    assert "could not connect: nothing of it was sent, nothing applied" in line, line
    assert "whether it committed is unknown" not in line, line
    assert "0002_orders" not in applied(db)


def test_a_slot_freed_within_moments_lets_the_migration_session_in(cli, make_db, limited_role, sql_dir, pg):
    """A session the run just closed leaves the server a moment later (its backend exits after the client): under a
    CONNECTION LIMIT the next session was refused meanwhile (a suite failure under load). Here another session
    holds the last slot for 1 s: the migration's connect waits for it rather than failing the file."""
    import threading

    import psycopg2

    db = make_db(owner=limited_role)
    url = pg.url(db.name, user=limited_role, password=LIMITED_PASSWORD)
    assert cli("migrate", "--sql-dir", sql_dir, "--database-url", url).exit_code == 0
    add_migration(sql_dir, "0002_orders", "CREATE TABLE orders (id int);\n")
    other = psycopg2.connect(url)
    threading.Timer(1.0, other.close).start()
    result = cli("migrate", "--sql-dir", sql_dir, "--database-url", url)
    assert result.exit_code == 0, result.output
    assert "0002_orders" in applied(db)
