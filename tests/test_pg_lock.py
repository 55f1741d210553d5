"""migrator.pg_lock on its own: one holder per database, named when another waits, gone with its session."""

import contextlib
import time

import psycopg2
import pytest

from migrator import pg_lock, postgres
from migrator.errors import LOCKED, MigratorError
from migrator.settings import resolve_postgres
from migrator.env import Env
from migrator.targets import PostgresOptions
from conftest import ok
from test_doctor import ROLE_PASSWORD, role  # noqa: F401 (a fixture)


def target_of(db):
    return resolve_postgres(PostgresOptions(database_url=db.url), Env({}))


def test_a_second_runner_waits_then_fails_naming_the_holder(db):
    target = target_of(db)
    notes = []
    with postgres.connect(target, read_only=False) as first, postgres.connect(target, read_only=False) as second:
        with pg_lock.held(first, target, 1, notes.append):
            started = time.monotonic()
            with pytest.raises(MigratorError) as err:
                with pg_lock.held(second, target, 0.5, notes.append):
                    pass
            assert 0.4 < time.monotonic() - started < 5
            assert err.value.exit_code == LOCKED
            assert "another runner holds the migration lock on" in str(err.value)
            assert "held by host " in str(err.value) and "raise --lock-timeout" in str(err.value)
            assert pg_lock.holder(second).startswith("held by host ")
        with pg_lock.held(second, target, 1, notes.append):  # released on exit: the next one gets it at once
            pass
    with postgres.connect(target, read_only=True) as reader:
        assert pg_lock.holder(reader) == "holder unknown"


def test_a_dead_runners_yoyo_row_is_cleared_with_a_note(db):
    target = target_of(db)
    with postgres.connect(target, read_only=False) as backend:  # creates yoyo's lock table
        db.query("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 4242)")  # a dead runner's row
        notes = []
        with pg_lock.held(backend, target, 1, notes.append):
            pass
    assert any("cleared the migration lock left by a runner that died (pid 4242" in n for n in notes)
    assert db.query("SELECT count(*) FROM yoyo_lock") == [(0,)]


def _session(db, user: str, password: str | None, name: str):
    return contextlib.closing(psycopg2.connect(host=db.server.host, port=db.server.port, dbname=db.name, user=user,
                                               password=password, application_name=name))


def test_a_dead_runners_row_is_not_kept_live_by_a_session_that_only_calls_itself_its_runner(db, role):
    """attack23m row_alive_forged: a role that may not write the lock table kept one idle session named
    'hcm-db-migrations x:4242'; a row a dead runner of pid 4242 left then blocked migrate ("held by a live runner",
    exit 4) and break-lock ("still connected") for as long as that session lived. Only a session of a role that could
    have written the row counts, named exactly as the row's runner column says."""
    target, notes = target_of(db), []
    with postgres.connect(target, read_only=False) as backend, \
            _session(db, role(), ROLE_PASSWORD, "hcm-db-migrations x:4242"), \
            _session(db, db.server.user, db.server.password, "hcm-db-migrations y:4242"):  # (the row names x's)
        pg_lock._proof_column(backend)  # (the runner column, as a run adds it)
        db.query("INSERT INTO yoyo_lock (locked, ctime, pid, runner) VALUES (1, now(), 4242, "
                 "'hcm-db-migrations x:4242')")
        assert pg_lock.break_dead(backend, target)
        db.query("INSERT INTO yoyo_lock (locked, ctime, pid, runner) VALUES (1, now(), 4242, "
                 "'hcm-db-migrations x:4242')")
        with pg_lock.held(backend, target, 1, notes.append):
            pass
    assert any("cleared the migration lock left by a runner that died (pid 4242" in n for n in notes), notes
    assert db.query("SELECT count(*) FROM yoyo_lock") == [(0,)]


def test_a_live_runners_row_is_still_kept_by_its_own_session_and_doctor_names_it(cli, db, sql_dir):
    """The other side: the session of the role that wrote the row, named as the row says, keeps it live; doctor,
    which said "ready" (the advisory lock free), warns naming it."""
    target = target_of(db)
    with postgres.connect(target, read_only=False) as backend, \
            _session(db, db.server.user, db.server.password, "hcm-db-migrations x:4242"):
        pg_lock._proof_column(backend)
        db.query("INSERT INTO yoyo_lock (locked, ctime, pid, runner) VALUES (1, now(), 4242, "
                 "'hcm-db-migrations x:4242')")
        with pytest.raises(MigratorError) as err:
            pg_lock.break_dead(backend, target)
        assert err.value.exit_code == LOCKED and "held by a live runner (pid 4242" in str(err.value)
        doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env())
        [line] = [line for line in doctor.stdout.splitlines() if line.lower().startswith("warn  postgres locks")]
        assert "the migration lock is free, but its lock row (pid 4242" in line, doctor.stdout
        assert "runner 'hcm-db-migrations x:4242') names a runner still connected" in line, line


def test_the_lock_goes_with_its_session(db):
    target = target_of(db)
    with postgres.connect(target, read_only=False) as first, postgres.connect(target, read_only=False) as second:
        assert first.execute("SELECT pg_try_advisory_lock(:key)", {"key": pg_lock.LOCK_KEY}).fetchone()[0]
        with pytest.raises(MigratorError):
            with pg_lock.held(second, target, 0.3, lambda _: None):
                pass
        first.connection.close()  # the holder's session dies (as with SIGKILL): the server drops its lock
        with pg_lock.held(second, target, 5, lambda _: None):
            pass


def test_a_session_naming_itself_as_a_dead_runner_is_not_proven_by_that_runners_row(cli, db, sql_dir, role):
    """attack23r 3: another role's session, connected before a runner that then died, takes the advisory lock and
    calls itself that runner; the dead runner's row (pid and runner as the session's name says) "proved" it: migrate
    said "another runner holds ... held by host vm pid 4242" and break-lock refused "a live runner holds" (failed
    before). Only a row written by the holder's own server session (its pid and backend_start) proves it now, and
    break-lock removes the dead row, naming the unverified session."""
    target = target_of(db)
    with postgres.connect(target, read_only=False) as backend:
        with pg_lock.held(backend, target, 1, lambda _: None):  # (the lock row's layout, as a run brings it)
            pass
    with _session(db, role(), ROLE_PASSWORD, "hcm-db-migrations vm:4242") as squatter:
        squatter.autocommit = True
        db.query("INSERT INTO yoyo_lock (locked, ctime, pid, runner) VALUES (1, now() AT TIME ZONE 'UTC', 4242, "
                 "'hcm-db-migrations vm:4242')")  # (the dead runner's row, written after the squatter connected)
        squatter.cursor().execute("SELECT pg_advisory_lock(%s)", (pg_lock.LOCK_KEY,))
        with postgres.connect(target, read_only=False) as backend:
            who = pg_lock.holder(backend)
        assert who.startswith(f"held by an unverified session (server pid {squatter.get_backend_pid()}"), who
        migrate = cli("migrate", "--sql-dir", sql_dir, "--lock-timeout", "1", env=db.db_env())
        assert migrate.exit_code == LOCKED and "another runner" not in migrate.stderr, migrate.stderr
        assert "unverified session" in migrate.stderr and "host vm pid 4242" not in migrate.stderr
        broken = cli("sql", "break-lock", "--sql-dir", sql_dir, env=db.db_env())
        assert broken.exit_code == LOCKED and "a live runner" not in broken.stderr, broken.stderr
        assert "unverified session" in broken.stderr and "removed the lock row of a dead runner" in broken.stderr
    assert db.query("SELECT count(*) FROM yoyo_lock") == [(0,)]


def test_a_runner_holding_the_lock_is_proven_by_its_own_sessions_row(db):
    """The other side: the row a run writes carries its server session (pid, backend_start): named as a runner."""
    target = target_of(db)
    with postgres.connect(target, read_only=False) as first, postgres.connect(target, read_only=False) as second:
        with pg_lock.held(first, target, 1, lambda _: None):
            assert db.query("SELECT backend_pid FROM yoyo_lock") == [(first.connection.get_backend_pid(),)]
            assert pg_lock.holder(second).startswith("held by host ")


def test_a_dead_runners_row_whose_server_pid_another_roles_session_got_is_dead(cli, db, sql_dir, role):
    """attack23t 8: a runner SIGKILLed left its row (server pid P, backend_start S); the server gave P to another
    role's session, whose backend_start the migration user cannot see. Failed before: migrate exit 4 "held by a live
    runner ... (an older version?)", break-lock "still connected", doctor warned. The runner's session held the run's
    advisory lock; a session holding no such lock is no runner, whatever its pid."""
    from test_doctor import as_role

    mig, app = role(), role()
    db.query(f"GRANT USAGE, CREATE ON SCHEMA public TO {mig}")
    ok(cli("migrate", "--sql-dir", sql_dir, env=as_role(db, mig)))  # (the lock table and its proof columns, mig's)
    with _session(db, app, ROLE_PASSWORD, "app") as pooled:
        row = ("INSERT INTO yoyo_lock (locked, ctime, pid, runner, backend_pid, backend_start) VALUES (1, "
               f"now() AT TIME ZONE 'UTC', 4242, 'hcm-db-migrations vm:4242', {pooled.get_backend_pid()}, "
               "now() - interval '1 day')")
        db.query(row)
        broken = cli("sql", "break-lock", "--sql-dir", sql_dir, env=as_role(db, mig))
        assert ok(broken) and "removed the migration lock" in broken.output, broken.output
        db.query(row)
        doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=as_role(db, mig))
        assert "names a runner still connected" not in doctor.output, doctor.output
        migrate = cli("migrate", "--sql-dir", sql_dir, "--lock-timeout", "1", env=as_role(db, mig))
        assert ok(migrate) and "cleared the migration lock left by a runner that died (pid 4242" in migrate.output
    assert db.query("SELECT count(*) FROM yoyo_lock") == [(0,)]


def test_a_live_runners_row_stays_live_while_its_session_holds_the_lock(db):
    """The other side of attack23t 8: the session that wrote the row and holds the advisory lock is alive."""
    target = target_of(db)
    with postgres.connect(target, read_only=False) as first, postgres.connect(target, read_only=False) as second:
        with pg_lock.held(first, target, 1, lambda _: None):
            row = pg_lock.row_of(second, target)
            assert row is not None and pg_lock.alive(second, row, target)
            first.execute("SELECT pg_advisory_unlock(:key)", {"key": pg_lock.run_key(first, target)})
            assert not pg_lock.alive(second, row, target)  # (its lock gone, its row no longer proves a runner)
            first.execute("SELECT pg_advisory_lock(:key)", {"key": pg_lock.run_key(first, target)})
