"""A network path that goes silent in the middle of a migration (attack 23g, medium): a proxy that stops relaying
after the file's ALTER TABLE took ACCESS EXCLUSIVE, keeping TCP open. migrate ends with one line within its bound,
the server drops the session's lock by itself, and SIGTERM ends the runner. A real stalling proxy (pg_wire) in front
of the suite's PostgreSQL; the bounds are made short here (their values are the code's)."""

import os
import signal
import subprocess
import sys
import time

import psycopg2
import pytest

from conftest import PROJECT_ROOT, SEED, add_migration, applied, one_error_line
from pg_wire import StallProxy
from test_settings import _in_thread

STALLING = "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\nSELECT 'STALLME';\n"


@pytest.fixture
def proxy(pg):
    stall = StallProxy(pg.host, pg.port)
    yield stall
    stall.close()


@pytest.fixture
def seeded(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    return {**env, "DB_HOST": "127.0.0.1"}


def through(env, proxy) -> dict:
    return {**env, "DB_PORT": str(proxy.port)}


def app_can_read(db) -> bool:
    """An application's read of the table answers within 1 s (no ACCESS EXCLUSIVE held on it)."""
    conn = psycopg2.connect(dbname=db.name, user=db.server.user, host=db.server.host, port=db.server.port,
                            options="-c lock_timeout=1s")
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM hcm_report_metadata")
        return True
    except psycopg2.errors.LockNotAvailable:
        return False
    finally:
        conn.close()


def migrate_through_silence(cli, sql_dir, seeded, proxy, monkeypatch, limit: int = 60) -> str:
    """`migrate --statement-timeout 1s` through `proxy`, which goes silent once (answers bounded at 2 s): its one
    error line; it must neither hang nor miss the silence."""
    from migrator.postgres import failures

    monkeypatch.setattr(failures, "ANSWER_MARGIN", 1.0, raising=False)
    result = _in_thread(lambda: cli("migrate", "--sql-dir", sql_dir, "--statement-timeout", "1s",
                                    env=through(seeded, proxy)), limit=limit)
    assert result is not None, "migrate hung behind the silent path"
    assert proxy.stalled == 1
    return one_error_line(result)


def test_a_path_gone_silent_mid_file_ends_migrate_in_one_line(cli, db, sql_dir, seeded, proxy, monkeypatch):
    add_migration(sql_dir, "0002_stall", STALLING)
    line = migrate_through_silence(cli, sql_dir, seeded, proxy, monkeypatch)
    assert "0002_stall.sql:2: no answer from PostgreSQL at 127.0.0.1:" in line and "within 2 s" in line, line
    assert f"/{db.name} " in line and "nothing of the file committed" in line and "run the command again" in line
    # The runner ended its session on the server (which would hold ACCESS EXCLUSIVE until its 600 s idle bound).
    assert "the runner ended its session pid " in line and "transaction rolled back and its locks are released" in line
    assert app_can_read(db)
    assert applied(db) == [SEED]


def test_no_deadline_while_statement_timeout_is_off(cli, db, sql_dir, seeded, proxy, monkeypatch):
    """statement_timeout 0: the server never ends a statement, so the client never cuts one (a long build runs)."""
    from migrator.postgres import failures

    monkeypatch.setattr(failures, "ANSWER_MARGIN", 0.5, raising=False)
    add_migration(sql_dir, "0002_slow", "SELECT pg_sleep(2);\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--statement-timeout", "0", env=through(seeded, proxy))
    assert result.exit_code == 0, result.output
    assert applied(db) == [SEED, "0002_slow"]


def test_a_file_that_raises_its_statement_timeout_again_is_not_cut_at_its_stricter_one(cli, db, sql_dir, seeded,
                                                                                        proxy, monkeypatch):
    """The bound follows the session's statement_timeout as the file moves it (a file may only tighten the run's:
    statement_bound.py), here down to 1 s and back to the run's 3 s: the 2 s statement after is not cut."""
    from migrator.postgres import failures

    monkeypatch.setattr(failures, "ANSWER_MARGIN", 0.5, raising=False)
    add_migration(sql_dir, "0002_slow", "SET statement_timeout = '1s';\nSELECT 1;\nRESET statement_timeout;\n"
                  "SELECT pg_sleep(2);\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--statement-timeout", "3s", env=through(seeded, proxy))
    assert result.exit_code == 0 and "overridden" not in result.stderr, result.output


# A runner process whose server-side idle bound is short (its floor; --lock-timeout 0 makes the rest 2 x backoff).
LAUNCH = ("import sys; sys.argv[0] = 'runner.py'; from migrator.postgres import retry, session_options; "
          "session_options.IDLE_IN_TRANSACTION_FLOOR = 2; retry.MAX_DELAY = 1; import runner; runner.cli()")


CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "MONGO_"))}


def stalled_runner(sql_dir, env, proxy, launch=LAUNCH, extra=()) -> subprocess.Popen:
    runner = subprocess.Popen([sys.executable, "-c", launch, "migrate", "--sql-dir", str(sql_dir),
                               "--statement-timeout", "0", "--lock-timeout", "0", *extra], cwd=PROJECT_ROOT,
                              env={**CLEAN, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 60
    while not proxy.stalled:
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
        time.sleep(0.1)
    return runner


def test_the_server_drops_the_lock_of_a_runner_cut_off(db, sql_dir, seeded, proxy):
    add_migration(sql_dir, "0002_stall", STALLING)
    runner = stalled_runner(sql_dir, through(seeded, proxy), proxy)
    try:
        deadline = time.monotonic() + 60
        while not app_can_read(db):  # the server rolls the idle transaction back once past its bound
            assert time.monotonic() < deadline, "the application stayed locked out"
        assert runner.poll() is None  # (statement_timeout 0: the client still waits; the server ended it)
    finally:
        runner.kill()
        runner.communicate()
    assert applied(db) == [SEED]


def test_sigterm_ends_a_runner_waiting_on_a_silent_path(db, sql_dir, seeded, proxy):
    add_migration(sql_dir, "0002_stall", STALLING)
    runner = stalled_runner(sql_dir, through(seeded, proxy), proxy)
    runner.send_signal(signal.SIGTERM)
    try:
        _, err = runner.communicate(timeout=60)
    finally:
        runner.kill()
    assert runner.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "interrupted by SIGTERM" in err.splitlines()[-1], err


def sigtermed_in_the_stall(sql_dir, seeded, proxy) -> str:
    """A real runner (the try's idle bound 33 s: --ddl-lock-timeout 30s) SIGTERMed once `proxy` stalled: its stderr,
    once it exited 143."""
    add_migration(sql_dir, "0002_stall", STALLING)
    runner = stalled_runner(sql_dir, through(seeded, proxy), proxy,
                            launch="import sys; sys.argv[0] = 'runner.py'; import runner; runner.cli()",
                            extra=("--ddl-lock-timeout", "30s"))
    runner.send_signal(signal.SIGTERM)
    try:
        _, err = runner.communicate(timeout=60)
    finally:
        runner.kill()
    assert runner.returncode == 128 + signal.SIGTERM, err
    return err


def test_sigterm_on_a_silent_path_ends_the_session_and_its_lock(db, sql_dir, seeded, proxy):
    """The cancel reaches a session idle in its transaction (its answer lost on the path): it would hold ACCESS
    EXCLUSIVE until the server's idle bound (a try's: its lock bound + 3 s, made 33 s here so that the runner's own
    end is what is seen); the runner ends it from its side connection and says so."""
    err = sigtermed_in_the_stall(sql_dir, seeded, proxy)
    line = err.splitlines()[-1]
    assert "nothing of it was applied: the runner ended its session pid " in line, err
    assert "its transaction rolled back and its locks are released" in line, err
    assert app_can_read(db)
    assert applied(db) == [SEED]


def idle_bound_seen(db) -> list[tuple]:
    """The idle_in_transaction_session_timeout a migration's session ran with, in ms (recorded by the file itself:
    the session's, not its try's own short one, which is LOCAL to the try's transaction)."""
    return db.query("SELECT v FROM idle_seen")


IDLE_SEEN = ("CREATE TABLE idle_seen AS SELECT reset_val AS v FROM pg_catalog.pg_settings "
             "WHERE name = 'idle_in_transaction_session_timeout';\n")


def test_a_huge_lock_timeout_clamps_the_idle_bound_to_postgresqls_int(cli, db, sql_dir, seeded):
    """Before: 3 x 716000 s in ms overflowed the server's int and every migration session failed to connect."""
    add_migration(sql_dir, "0002_idle", IDLE_SEEN)
    result = cli("migrate", "--sql-dir", sql_dir, "--lock-timeout", "716000", env=db.db_env())
    assert result.exit_code == 0, result.output
    assert idle_bound_seen(db) == [("2147483647",)]


def test_url_options_naming_the_idle_bound_are_left_as_written(cli, db, sql_dir, seeded):
    """Before: the bound was set by rewriting the options' text: '=0s' became '=600000mss', refused at connect."""
    add_migration(sql_dir, "0002_idle", IDLE_SEEN)
    url = db.url + ("&" if "?" in db.url else "?") + "options=-c%20idle_in_transaction_session_timeout%3D0s"
    result = cli("migrate", "--sql-dir", sql_dir, env={"DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert idle_bound_seen(db) == [("600000",)]


def advisory_locks(db) -> list[tuple]:
    return db.query("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")


def cut_at_the_log_row(cli, sql_dir, seeded, stall) -> str:
    """migrate (DB_READ_TIMEOUT 2 s) through `stall`, which stalls at yoyo's log row: its one error line."""
    add_migration(sql_dir, "0002_b", "CREATE TABLE silent_b (id int);\n")
    result = _in_thread(lambda: cli("migrate", "--sql-dir", sql_dir, env={**through(seeded, stall),
                                                                          "DB_READ_TIMEOUT": "2"}), limit=60)
    assert result is not None, "migrate hung behind the silent path"
    return one_error_line(result)


def test_a_silent_path_on_the_runs_own_session_ends_it_and_frees_the_migration_lock(cli, db, sql_dir, seeded, pg):
    """attack23r 8: the run's own session (it holds the advisory migration lock, with no idle bound: it idles while
    migrations run) cut off by a silent path, here at yoyo's log row after the file committed. Before: the line named
    neither its session nor the lock, and the server kept the lock for as long as the proxy kept TCP open (every
    later migrate waited on it, break-lock called the runner gone "a live runner")."""
    stall = StallProxy(pg.host, pg.port, trigger=b'INSERT INTO "public"."_yoyo_log"')
    try:
        line = cut_at_the_log_row(cli, sql_dir, seeded, stall)
        assert stall.stalled == 1
        assert f"PostgreSQL at 127.0.0.1:{stall.port}/{db.name}: no answer within 2 s" in line, line
        assert "it held the migration lock: the runner ended its session pid " in line, line
        assert "its locks are released" in line, line
        assert advisory_locks(db) == []  # (the proxy still keeps that session's TCP connection open)
    finally:
        stall.close()
    again = cli("migrate", "--sql-dir", sql_dir, "--lock-timeout", "2", env=db.db_env())
    assert again.exit_code == 0, again.output
    assert applied(db) == [SEED, "0002_b"]


class SilentFromThen(StallProxy):
    """A StallProxy whose every connection after the stall is silent from the start (the whole path gone)."""

    def _handle(self, client) -> None:
        if not self.stalled:
            return super()._handle(client)
        self._held.append(client)
        while client.recv(65536):
            pass


def test_a_silent_path_that_swallows_the_ending_too_names_the_pid_and_the_statement(cli, db, sql_dir, seeded, pg):
    """Where the runner cannot reach the server at all any more (every new connection silent too), its line names
    its own session's pid and the statement that frees the migration lock, to run from elsewhere."""
    stall = SilentFromThen(pg.host, pg.port, trigger=b'INSERT INTO "public"."_yoyo_log"')
    try:
        line = cut_at_the_log_row(cli, sql_dir, seeded, stall)
        (pid,) = advisory_locks(db)[0]  # (held: the proxy keeps its TCP connection open)
        assert f"it held the migration lock: the runner could not end its session pid {pid} " in line, line
        ending = line.split("end it now with `")[1].split("`")[0]
        assert ending.startswith(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = {pid} AND "), line
        db.query(ending)  # run from elsewhere, it frees the lock
        deadline = time.monotonic() + 30
        while advisory_locks(db):
            assert time.monotonic() < deadline, "the migration lock stayed held"
            time.sleep(0.1)
    finally:
        stall.close()


def test_a_path_gone_silent_mid_file_ends_migrate_within_seconds_whatever_its_statement_timeout(cli, db, sql_dir,
                                                                                                 seeded, proxy):
    """attack23r 5: with the default statement_timeout (10 min) the client's only bound was 10 min + 30 s, while the
    server had ended the try (its idle bound) within seconds. Now a new connection asks the server whether the session
    still runs the statement: it does not, so the answer was lost, and migrate ends in one line within seconds."""
    add_migration(sql_dir, "0002_stall", STALLING)
    result = _in_thread(lambda: cli("migrate", "--sql-dir", sql_dir, env=through(seeded, proxy)), limit=60)
    assert result is not None, "migrate waited on the silent path (its bound: statement_timeout + 30 s)"
    assert proxy.stalled == 1
    line = one_error_line(result)
    assert "0002_stall.sql:2: no answer from PostgreSQL at 127.0.0.1:" in line and "went silent" in line, line
    assert "although the server had " in line and "nothing of the file committed" in line, line
    assert app_can_read(db)
    assert applied(db) == [SEED]


def test_sigterm_ends_a_runner_whose_whole_path_went_silent(db, sql_dir, seeded, pg):
    """The cancel (a new connection) cannot reach the server either: libpq's wait is cut on the client side and the
    run ends in its interrupted line, naming the session to end from elsewhere."""
    stall = SilentFromThen(pg.host, pg.port)
    try:
        err = sigtermed_in_the_stall(sql_dir, seeded, stall)
    finally:
        stall.close()
    line = err.splitlines()[-1]
    assert "Traceback" not in err and "interrupted by SIGTERM" in line, err
    assert "nothing of it was applied" in line and "end it now with `SELECT pg_terminate_backend(pid)" in line, err
    assert applied(db) == [SEED]
