"""Behind a transaction-mode pool that forwards `options` (attack 23k): every server session took the runner's
settings from its own startup packet, so the read-back passes, yet each later transaction of the run may run on
another client's server session. The pins and every take or release of a session-level advisory lock run only on
the session's own server session (its pid and start as first read), else do nothing, and the run refuses, letting go
of the locks it took there first. Where the pool has one server session for every client (attack 23l), the migration
lock is never taken twice on it, and no migration runs on a server session an earlier client SET its search_path in."""

import contextlib
import functools
import os
import subprocess
import sys
import time
from urllib.parse import parse_qsl, urlsplit

import psycopg2
import pytest

from conftest import PROJECT_ROOT, SEED, add_migration, applied, ok, one_error_line
from migrator import bookkeeping_lock, pg_lock, postgres, server_session
from migrator.env import Env
from migrator.errors import MigratorError
from migrator.postgres.connection import session_url
from migrator.settings import resolve_postgres
from migrator.targets import PostgresOptions
from pg_wire import TxPool
from test_pg_lock import target_of
from test_silent_network import CLEAN, seeded, through  # noqa: F401 (a fixture)
from test_tenants_history import home_path  # noqa: F401 (a fixture)

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
    assert len(left) == 2 and all(row[0] != "pg_catalog" and not row[1] and row[2] == "0" for row in left), left


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


# attack 23l: a pool holding ONE server session that every client's transactions share.
SHARED_LINE = "this run's server session already holds the migration lock"


@pytest.fixture
def txpool1(pg):
    pool = TxPool(pg.host, pg.port, size=1)
    yield pool
    pool.close()


def _pooled(db, pool):
    return resolve_postgres(PostgresOptions(), Env({**db.db_env(), "DB_HOST": "127.0.0.1", "DB_PORT": str(pool.port)}))


CARRIED_LINE = "this run's connection reached a server session another client used before"


def test_a_run_sharing_the_lock_holders_server_session_is_refused_and_clears_nothing(db, txpool1):
    """attack 23l txpool_size1: before, run 2's pg_try_advisory_lock succeeded on the server session holding run 1's
    lock (session locks are re-entrant), _ALIVE left out that only session and run 2 cleared run 1's row as a dead
    runner's ("note: cleared ..."), then applied the migration run 1 was running. Run 2 is refused when it connects
    (run 1's pins are on the session: attack23m); where the pool RESETs settings between clients but keeps
    session locks (RESET ALL as its reset query), at its lock take."""
    target, notes = _pooled(db, txpool1), []
    with postgres.connect(target, read_only=False) as first, pg_lock.held(first, target, 5, notes.append):
        with pytest.raises(MigratorError) as err:
            postgres.connect(target, read_only=False).__enter__()
        assert err.value.exit_code == 2 and CARRIED_LINE in str(err.value), err.value
        first.execute("RESET ALL")  # (the pool's reset query: settings go, session locks stay)
        with postgres.connect(target, read_only=False) as second:
            assert server_session.of(first.connection) == server_session.of(second.connection)  # (one server session)
            with pytest.raises(MigratorError) as err:
                with pg_lock.held(second, target, 1, notes.append):
                    pytest.fail("took the migration lock its own server session holds for another run")
            assert err.value.exit_code == 2 and SHARED_LINE in str(err.value), err.value
            assert "connect to PostgreSQL directly or through a session-mode pool" in str(err.value)
            assert second.connection.closed and notes == []
            assert db.query("SELECT pid FROM public.yoyo_lock") == [(os.getpid(),)]  # (run 1's row kept)
            assert _advisory_locks(db) == 2  # (run 1's two, not released by the refused run)
    assert _advisory_locks(db) == 0


def test_a_run_whose_server_session_carries_an_earlier_runs_settings_is_refused_before_reading_its_home(
        cli, db, sql_dir, txpool1, home_path):
    """attack23m txpool_recycled_home: the history in app, the role's search_path app first; after one run through a
    pool that keeps server sessions as they are, the next run got that session's search_path (pg_catalog), read no
    home schema and was refused "no migration history in schema public ... set search_path to app" (untrue), or
    took public's (finding 1). Now its first read sees the earlier run's marks (hcm.*) and says what is wrong."""
    home_path("app, public")  # (a plain history made under it: in app)
    db.query("CREATE SCHEMA app")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    env = through({**db.db_env(), "DB_HOST": "127.0.0.1"}, txpool1)
    for command in ("status", "migrate"):  # (each its own pooled session: their options differ)
        ok(cli(command, "--sql-dir", sql_dir, env=env))  # (an earlier client: its pins stay on the pool's session)
        result = cli(command, "--sql-dir", sql_dir, env=env)
        line = one_error_line(result)
        assert result.exit_code == 2 and CARRIED_LINE in line and "DISCARD ALL" in line, (command, result.output)
        assert "no migration history" not in line, line


def test_two_runs_through_a_one_session_pool_never_apply_a_migration_twice(cli, db, sql_dir, seeded, txpool1):
    """attack 23l txpool_size1 end to end: run 2 starts while run 1's non-transactional file runs; the pool's
    session for the runs' own connections was opened by an earlier client (its application_name is not run 1's).
    Before: run 2 took the lock again there and cleared run 1's lock row as a dead runner's (the attack's pool: and
    ran the file again; this one names its migration sessions after run 1, so run 2 waited out --lock-timeout and
    called run 1 an older version, exit 4)."""
    env = through(seeded, txpool1)
    db.query("CREATE TABLE hits (n int)")
    options = dict(parse_qsl(urlsplit(session_url(_pooled(db, txpool1), False, None)).query))["options"]
    with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=txpool1.port, dbname=db.name, options=options,
                                             user=db.server.user, password=db.server.password)) as opener:
        opener.cursor().execute("SELECT 1")  # (opens the pool's session for the runs' own connections)
    add_migration(sql_dir, "0003_hits", "-- transactional: false\nINSERT INTO hits VALUES (1);\n"
                  "SELECT pg_sleep(3);\nINSERT INTO hits VALUES (2);\n")
    run = functools.partial(subprocess.Popen, [sys.executable, "runner.py", "migrate", "--sql-dir", str(sql_dir),
                                               "--lock-timeout", "5"],
                            cwd=PROJECT_ROOT, env={**CLEAN, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = run()
    deadline = time.monotonic() + 60
    while db.query("SELECT count(*) FROM hits")[0][0] == 0:  # (run 1 holds the lock, its file running)
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = run()
    (out1, err1), (out2, err2) = first.communicate(timeout=120), second.communicate(timeout=120)
    assert db.query("SELECT n FROM hits ORDER BY n") == [(1,), (2,)], (err1, err2)
    assert db.query("SELECT count(*) FROM public._yoyo_log WHERE migration_id = '0003_hits'")[0][0] == 1
    assert first.returncode == 0, err1
    last = err2.strip().splitlines()[-1]  # (run 1's pins on that session: refused as it connects, attack23m)
    assert second.returncode == 2 and (CARRIED_LINE in last or SHARED_LINE in last), err2
    assert "cleared the migration lock" not in err2


def test_a_run_refused_after_it_took_the_lock_leaves_no_lock_on_its_pooled_session(db, txpool):
    """attack 23l txpool_lockleft: a run whose later statement reached another server session refused, leaving its
    session advisory locks on its own pooled server session (idle) for as long as the pool kept it: every later
    migrate, direct ones too, waited and failed. Now the refusal lets them go there first (a guarded release), and
    deletes its lock row there (attack23m txpool_lockrow: the row read as a live runner's while the pool kept a
    session named after the run, and a later migrate stopped, exit 4, "held by a live runner")."""
    target = _pooled(db, txpool)
    options = dict(parse_qsl(urlsplit(session_url(target, False, None)).query))["options"]
    raw = functools.partial(psycopg2.connect, host="127.0.0.1", port=txpool.port, dbname=db.name,
                            user=db.server.user, password=db.server.password, options=options)
    with contextlib.closing(raw()) as x, contextlib.closing(raw()) as y:
        x.cursor().execute("SELECT 1")  # (x's transaction keeps one server session: the run's are all the other)
        with postgres.connect(target, read_only=False) as run, pg_lock.held(run, target, 5, lambda _: None):
            assert _advisory_locks(db) == 2  # (the run's lock and Flyway's on its history, on its own session)
            y.cursor().execute("SELECT 1")  # y's transaction on the run's server session, then both end:
            x.commit(), y.commit()  # the run's next transaction reaches x's session, the one after its own
            with pytest.raises(MigratorError) as err:
                bookkeeping_lock.Recording(run.connection, run.bookkeeping_schema).before_commit("")
            assert POOL_LINE in str(err.value) and run.connection.closed
            assert _advisory_locks(db) == 0
            assert db.query("SELECT count(*) FROM public.yoyo_lock") == [(0,)]  # (attack23m: its row deleted too)


def test_a_migration_reaching_a_session_another_client_set_its_search_path_in_is_refused_not_blamed(cli, db, sql_dir,
                                                                                                    seeded, txpool1):
    """attack 23l txpool_fwd: the first file's record pins its session's search_path to pg_catalog (as the run's own
    are); the pool hands that server session to the next file's connection, whose CREATE TABLE then failed
    "permission denied for schema pg_catalog ... fix the file" (a correct file). Now its first read refuses."""
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
    add_migration(sql_dir, "0003_b", "CREATE TABLE b (id int);\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=through(seeded, txpool1))
    line = one_error_line(result)
    assert result.exit_code == 2, result.output
    assert "a migration's new connection reached a server session another client used before" in line, line
    assert "fix the file" not in line and "connect to PostgreSQL directly" in line, line
    assert applied(db) == [SEED, "0002_a"] and "b" not in db.tables()


TWIN_LINE = "schemas app and public both hold a migration history without the tenant mark"


def test_a_refused_run_resets_its_pins_so_the_next_run_through_the_pool_is_refused_too(cli, db, sql_dir, seeded,
                                                                                       txpool1, tmp_path, home_path):
    """attack23m txpool_recycled_twin: the role's search_path app, public; app and public both hold a complete
    history. Run 1 through a pool that keeps server sessions as they are was refused (two histories), leaving its
    pins (search_path pg_catalog, hcm.*) on the pooled session; run 2 got it, read no home schema from that path,
    took public's history and applied the pending file (exit 0). Now the refusal RESETs its pins there first."""
    tenant = tmp_path / "tenant"
    tenant.mkdir()
    add_migration(tenant, "0001_t", "CREATE TABLE t (id int);\n")
    ok(cli("migrate", "--sql-dir", tenant, "--schema", "app", "--create-schemas", env=db.db_env()))
    db.query("COMMENT ON TABLE app.yoyo_lock IS NULL")  # (a restore without comments)
    home_path("app, public")
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    for run in (1, 2):
        result = cli("migrate", "--sql-dir", sql_dir, env=through(seeded, txpool1))
        assert result.exit_code == 2 and TWIN_LINE in one_error_line(result), (run, result.output)
    assert applied(db) == [SEED] and "more_rows" not in db.tables()
    assert [row[:2] for row in txpool1.on_each(LEFT)] == [["app, public", ""]]


def test_a_login_trigger_that_sets_search_path_does_not_refuse_a_direct_run(cli, db, sql_dir):
    """attack23m login_trigger: a PostgreSQL 17+ login event trigger SETs search_path in every new session (source
    'session'); every migration's first read took that for an earlier client's and refused "connect to PostgreSQL
    directly" on a direct connection. The runner's own marks (hcm.*) tell an earlier run from it."""
    db.query("CREATE FUNCTION public.login_path() RETURNS event_trigger LANGUAGE plpgsql AS "
             "$$ BEGIN PERFORM pg_catalog.set_config('search_path', 'public', false); END $$")
    db.query("CREATE EVENT TRIGGER login_path ON login EXECUTE FUNCTION public.login_path()")
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert applied(db) == [SEED, "0002_a"] and "a" in db.tables()


def test_a_failed_files_server_session_is_marked_so_a_pools_next_client_of_it_refuses(cli, db, sql_dir, seeded,
                                                                                       txpool1):
    """attack23n txpool_failed_file2: a non-transactional file SET search_path = other, public and failed; only a
    file that ran marked its session (hcm.done), so the pool's next client of that server session (the fixed file's
    migration, once the run's own marked sessions were gone) passed its first read and created its table in
    `other`, exit 0. Now every session is marked by its first read, whatever its file then does."""
    db.query("CREATE SCHEMA other")
    add_migration(sql_dir, "0002_b", "-- transactional: false\nSET search_path = other, public;\nSELECT 1/0;\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=through(seeded, txpool1))
    assert result.exit_code == 1 and "division by zero" in one_error_line(result), result.output
    left = txpool1.on_each("SELECT pg_catalog.current_setting('search_path'), "
                           "pg_catalog.current_setting('hcm.done', true)")
    assert ["other, public", "on"] in left, left  # (the file's SET kept there, and the session marked)


@pytest.mark.parametrize("preset, reset", [
    ("ALTER DATABASE {db} SET hcm.history = 'x'", 'hcm.history (ALTER DATABASE "{db}" RESET hcm.history)'),
    ("ALTER ROLE {role} IN DATABASE {db} SET hcm.tenant_schema = 'evil'",
     'hcm.tenant_schema (ALTER ROLE "{role}" IN DATABASE "{db}" RESET hcm.tenant_schema)'),
])
def test_a_mark_every_new_session_gets_from_a_role_or_database_default_is_named_with_its_reset(cli, db, sql_dir,
                                                                                               preset, reset):
    """attack23n marks_forged: the runner's own marks set by ALTER DATABASE / ROLE ... SET come with every fresh
    direct session; the refusal said another client used the session before and to connect directly (it was)."""
    role = db.query("SELECT current_user")[0][0]
    names = {"db": db.name, "role": role}
    db.query(preset.format(**names))
    try:
        result = cli("status", "--sql-dir", sql_dir, env=db.db_env())
        line = one_error_line(result)
        assert result.exit_code == 2, result.output
        assert "every new session there comes with the runner's own setting(s) " + reset.format(**names) in line, line
        assert "connect to PostgreSQL directly" not in line, line
    finally:
        db.query(f"ALTER DATABASE {db.name} RESET ALL")
        db.query(f"ALTER ROLE {role} IN DATABASE {db.name} RESET ALL")
