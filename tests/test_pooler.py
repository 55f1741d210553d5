"""Behind a connection pooler (attack 23i, findings 1 and 2): a pooler that drops the startup packet's `options`
(PgBouncer's ignore_startup_parameters=options) would run every migration without the runner's limits, silently;
and a pooler hands each client a BackendKeyData pid of its own, so a cancel or terminate by that pid hits no
session, or another one. A real relay (pg_wire.PoolerProxy) in front of the suite's PostgreSQL."""

import re
import signal
import subprocess
import sys
import threading
import time

import psycopg2
import pytest

from conftest import PROJECT_ROOT, SCRATCH_USER, SEED, add_migration, applied, one_error_line
from pg_wire import PoolerProxy
from test_settings import _in_thread
from test_silent_network import CLEAN, STALLING, app_can_read, seeded, through  # noqa: F401 (a fixture)


@pytest.fixture
def pooler(pg, request):
    proxy = PoolerProxy(pg.host, pg.port, **getattr(request, "param", {}))
    yield proxy
    proxy.close()


@pytest.fixture
def innocent(db):
    """An idle session of the migration's own role: the application sharing it (its pid stands for a pooler's)."""
    conn = psycopg2.connect(dbname=db.name, user=db.server.user, host=db.server.host, port=db.server.port,
                            application_name="innocent_app")
    conn.autocommit = True
    yield conn
    conn.close()


def alive(conn) -> bool:
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except psycopg2.Error:
        return False


@pytest.mark.parametrize("pooler", [{"strip": b""}], indirect=True)
def test_a_pooler_that_drops_options_is_refused_before_anything_runs(cli, db, sql_dir, seeded, pooler):
    """Before: applied, exit 0, the 3 s statement_timeout never set (the 12 s sleep of attack 23i ran to its end)."""
    add_migration(sql_dir, "0002_sleep", "SELECT pg_sleep(0.1);\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--statement-timeout", "3s", env=through(seeded, pooler))
    line = one_error_line(result)
    assert result.exit_code == 2 and pooler.stripped, result.output
    assert f"PostgreSQL at 127.0.0.1:{pooler.port}/{db.name} did not apply the session settings" in line, line
    assert "statement_timeout = 0 instead of 3s" in line and "lock_timeout = 0 instead of 300ms" in line, line
    assert "ignore_startup_parameters=options" in line and "connect to PostgreSQL directly" in line, line
    assert applied(db) == [SEED]
    # status (read-only by its options: default_transaction_read_only) and doctor say the same
    status = cli("status", "--sql-dir", sql_dir, env=through(seeded, pooler))
    assert status.exit_code == 2 and "default_transaction_read_only = off instead of on" in status.output
    doctor = cli("doctor", "--sql-dir", sql_dir, env=through(seeded, pooler))
    assert doctor.exit_code != 0 and "did not apply the session settings" in doctor.output, doctor.output


@pytest.mark.parametrize("pooler", [{"strip": b"search_path=tp,public"}], indirect=True)
def test_a_tenant_session_whose_search_path_was_dropped_names_the_setting_not_the_file(cli, db, sql_dir, pooler):
    """Only the migration's session loses its options here: its own check refuses, naming search_path. Before:
    the file's CREATE TABLE went to public and the containment check blamed the file ("a qualified name")."""
    add_migration(sql_dir, "0002_things", "CREATE TABLE things (id int);\n")
    env = {**db.db_env(), "DB_HOST": "127.0.0.1", "DB_PORT": str(pooler.port)}
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "tp", "--create-schemas", env=env)
    assert result.exit_code == 2 and pooler.stripped, result.output
    line = result.output.split("[tp] FAILED: ")[1].splitlines()[0]
    assert f"PostgreSQL at 127.0.0.1:{pooler.port}/{db.name} did not apply" in line, result.output
    assert 'search_path = "$user", public instead of tp,public' in line and "qualified" not in result.output, line
    assert not db.query("SELECT 1 FROM pg_class WHERE relname = 'things'")


@pytest.mark.parametrize("pooler", [{"strip": b""}], indirect=True)
def test_the_same_values_from_the_roles_settings_behind_such_a_pooler_are_refused_too(cli, db, sql_dir, seeded,
                                                                                        pooler):
    """attack 23j: a DBA answering the refusal with ALTER ROLE ... SET of each value it lists (or a pool's
    connect_query) made the values match: the run went on in a transaction-mode pool, its session-level pins and
    advisory locks landing on pooled server sessions of other clients. Only values the server took from this
    connection's own `options` count."""
    add_migration(sql_dir, "0002_sleep", "SELECT pg_sleep(0.1);\n")
    first = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=through(seeded, pooler)))
    wanted = re.findall(r"([a-z_.]+) (?:= \S+|unset) instead of ([^,;()]+?)(?=[,;] |\s\(a connection)", first)
    assert {"lock_timeout", "statement_timeout"} <= {name for name, _ in wanted}, first
    for name, value in wanted:
        db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} SET {name} = '{value}'")
    result = cli("migrate", "--sql-dir", sql_dir, env=through(seeded, pooler))
    line = one_error_line(result)
    assert result.exit_code == 2, result.output
    assert "not from this connection's `options`" in line and "lock_timeout (from the role's settings in " \
        "this database (ALTER ROLE ... IN DATABASE ... SET)" in line, line
    assert "instead of" not in line and applied(db) == [SEED], line
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0  # (directly: its options win)


def test_a_clean_session_through_the_pooler_migrates(cli, db, sql_dir, seeded, pooler):
    add_migration(sql_dir, "0002_sleep", "SELECT pg_sleep(0.1);\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=through(seeded, pooler)).exit_code == 0
    assert applied(db) == [SEED, "0002_sleep"]


@pytest.fixture
def faked(pg, innocent):
    """A pooler handing every client the innocent session's pid as its own."""
    proxy = PoolerProxy(pg.host, pg.port, fake_pid=innocent.info.backend_pid)
    yield proxy
    proxy.close()


def test_a_session_cut_off_behind_a_pooler_is_ended_by_its_server_pid(cli, db, sql_dir, seeded, faked, innocent,
                                                                      monkeypatch):
    """Before: the runner terminated the session of the pid the pooler showed (here the innocent one), said its own
    was ended, and its own kept ACCESS EXCLUSIVE until the server's 600 s idle bound."""
    from migrator.postgres import failures

    monkeypatch.setattr(failures, "ANSWER_MARGIN", 1.0, raising=False)
    add_migration(sql_dir, "0002_stall", STALLING)
    result = _in_thread(lambda: cli("migrate", "--sql-dir", sql_dir, "--statement-timeout", "1s",
                                    env=through(seeded, faked)), limit=60)
    line = one_error_line(result)
    assert faked.stalled == 1, line
    real = faked.stalled_pids[0]
    assert f"the runner ended its session pid {real} on the server" in line, line
    assert alive(innocent)
    assert app_can_read(db)
    assert applied(db) == [SEED]


def test_sigterm_behind_a_pooler_cancels_the_runners_statement_not_the_pid_it_was_shown(db, sql_dir, seeded,
                                                                                          faked, innocent, pg):
    """Before: SIGTERM's pg_cancel_backend went to the pooler's pid: the innocent session's query was cancelled."""
    add_migration(sql_dir, "0002_sleep", "SELECT pg_sleep(60);\n")
    cancelled = []

    def sleep() -> None:
        try:
            with innocent.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(30)")
        except psycopg2.Error as exc:
            cancelled.append(exc)

    runner = subprocess.Popen([sys.executable, "runner.py", "migrate", "--sql-dir", str(sql_dir)], cwd=PROJECT_ROOT,
                              env={**CLEAN, **through(seeded, faked)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    sleeper = threading.Thread(target=sleep, daemon=True)
    try:
        sleeper.start()
        deadline = time.monotonic() + 60
        while not db.poll("SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60);' AND "
                          "state = 'active'"):
            assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
            time.sleep(0.1)
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=60)
    finally:
        runner.kill()
    assert runner.returncode == 128 + signal.SIGTERM, err
    assert not cancelled and db.query("SELECT state FROM pg_stat_activity WHERE pid = %s",
                                      (innocent.info.backend_pid,)) == [("active",)], cancelled
    db.query("SELECT pg_cancel_backend(%s)", (innocent.info.backend_pid,))
    sleeper.join(timeout=10)
    assert applied(db) == [SEED]


def test_end_session_ends_the_session_of_its_pid_and_start_and_says_so_only_then(db, innocent):
    """A session of the same pid but another start (a pid reused) is left alone, and the line says what is known."""
    from datetime import timedelta

    from migrator.postgres import cancel
    from migrator import server_session

    params = {"host": db.server.host, "port": db.server.port, "dbname": db.name, "user": db.server.user}
    own = server_session.of(innocent)
    assert own.pid == innocent.info.backend_pid and own.started is not None
    earlier = server_session.ServerSession(own.pid, own.started - timedelta(seconds=1))
    said = cancel.end_session(params, earlier, "here", True)
    assert alive(innocent) and "ended" not in said and f"session pid {own.pid} had already left the server" in said
    said = cancel.end_session(params, own, "here", True)
    assert said.startswith(f"the runner ended its session pid {own.pid} on the server: its transaction rolled back")
    assert not alive(innocent)


def test_plan_impact_through_a_pooler_reads_the_locks_of_its_own_session(cli, db, sql_dir, seeded, faked):
    """Before: the scratch session's locks were read by the pid the pooler showed (another session's): the ALTER
    TABLE's ACCESS EXCLUSIVE went unreported."""
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    add_migration(sql_dir, "0002_column", "ALTER TABLE hcm_report_metadata ADD COLUMN x int;\n")
    db.server.scratch_url()  # (the role the runner accepts as scratch: CREATEDB and nothing more)
    scratch = f"postgresql://{SCRATCH_USER}:{SCRATCH_USER}@127.0.0.1:{faked.port}/postgres"
    result = cli("plan", "--impact", "--json", "--sql-dir", sql_dir, "--scratch-url", scratch, env=db.db_env())
    assert result.exit_code == 0, result.output
    assert "ACCESS EXCLUSIVE" in result.stdout and "hcm_report_metadata" in result.stdout, result.stdout
