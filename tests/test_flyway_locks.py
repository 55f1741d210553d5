"""Services sharing one database and schema, each with its own Flyway history (SCHEMA_TABLE): one runner lock per
history, so they migrate at the same time, while one service run twice still waits for itself; everything that
names or breaks a lock addresses the history in question. Proven with real runner processes where runs overlap (the
paused holder, services starting together); a run on its own, or beside a paused process, runs in-process (here)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import PROJECT_ROOT, one_error_line, ok
from migrator.errors import LOCKED

GATE = 4711  # an advisory lock the test holds: a migration waiting for it is paused inside its transaction


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql)


def runner(db, folder: Path, table: str, *args: str) -> subprocess.Popen:
    """A real runner process migrating `folder` into the history `table` (started, not waited for)."""
    command = [sys.executable, str(PROJECT_ROOT / "runner.py"), *args, "--sql-dir", str(folder)]
    env = {"PATH": "/usr/bin:/bin", **db.db_env(), "SCHEMA_TABLE": table}
    return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def here(cli, db, folder: Path, table: str, *args: str):
    """The runner in-process (the suite's CLI fixture) migrating `folder` into the history `table`."""
    return cli(*args, "--sql-dir", folder, env={**db.db_env(), "SCHEMA_TABLE": table})


@contextmanager
def paused(db, folder: Path, table: str):
    """A runner migrating `folder` (its newest file waits for GATE), yielded once it waits inside that migration,
    so it holds its history's lock; let go and finished (exit 0) on leaving."""
    with db.server.connect(db.name) as gate, gate.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        process = runner(db, folder, table, "migrate", "--lock-timeout", "60")
        try:
            deadline = time.monotonic() + 60
            while not db.poll("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                              "AND classid = 0 AND objid = %s", (GATE,))[0][0]:
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()
                time.sleep(0.1)
            yield process
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out + err


@contextmanager
def two_services(cli, db, tmp_path: Path):
    """plan and census in one schema, each migrated once; plan's next file paused (its runner holds its lock)."""
    plan, census = tmp_path / "plan", tmp_path / "census"
    write(plan, "V1__init.sql", "CREATE TABLE plan (id INT);\n")
    write(census, "V1__init.sql", "CREATE TABLE census (id INT);\n")
    for folder, table in ((plan, "plan_history"), (census, "census_history")):
        done = here(cli, db, folder, table, "migrate")
        assert done.exit_code == 0, done.output
    write(plan, "V2__slow.sql", f"SELECT pg_advisory_xact_lock({GATE});\nCREATE TABLE plan_two (id INT);\n")
    write(census, "V2__census_two.sql", "CREATE TABLE census_two (id INT);\n")
    with paused(db, plan, "plan_history") as process:
        yield plan, census, process
    assert "plan_two" in db.tables()


def test_two_services_in_one_schema_migrate_at_once_but_one_service_twice_waits(cli, db, tmp_path):
    with two_services(cli, db, tmp_path) as (plan, census, first):
        other = here(cli, db, census, "census_history", "migrate", "--lock-timeout", "10")
        assert other.exit_code == 0, other.output  # census did not wait for plan's runner
        assert "census_two" in db.tables() and "plan_two" not in db.tables()
        again = here(cli, db, plan, "plan_history", "migrate", "--lock-timeout", "1")
        assert again.exit_code == LOCKED, again.output
        line = again.stderr.strip().splitlines()[-1]
        assert line.startswith("error: another runner holds the migration lock on ") and \
            "for the history public.plan_history" in line, line
        assert f"held by host {socket.gethostname()} pid {first.pid}" in line, line


def test_break_lock_doctor_and_the_holder_address_the_history_in_question(cli, db, tmp_path):
    with two_services(cli, db, tmp_path) as (plan, census, first):
        census_env, plan_env = ({**db.db_env(), "SCHEMA_TABLE": t} for t in ("census_history", "plan_history"))
        free = ok(cli("sql", "break-lock", "--sql-dir", census, env=census_env))
        assert "no migration lock to remove on" in free.stdout and "for the history public.census_history" in free.stdout
        refused = one_error_line(cli("sql", "break-lock", "--sql-dir", plan, env=plan_env))
        assert "a live runner holds the migration lock on" in refused and "public.plan_history" in refused
        assert f"pid {first.pid}" in refused, refused
        free_lines = [line for line in cli("doctor", "--sql-dir", census, env=census_env).stdout.splitlines()
                      if "postgres locks" in line]
        assert len(free_lines) == 1 and free_lines[0].startswith("ok"), free_lines
        assert "the migration lock for the history public.census_history is free" in free_lines[0], free_lines
        held = [line for line in cli("doctor", "--sql-dir", plan, env=plan_env).stdout.splitlines()
                if "postgres locks" in line]
        assert len(held) == 1 and held[0].startswith("warn"), held
        assert (f"the migration lock for the history public.plan_history is held by host {socket.gethostname()} "
                f"pid {first.pid}") in held[0], held
        # the lock rows: one per history, in the runner's own table; yoyo_lock (where an older runner reads any
        # row as its lock, and its break-lock deletes them all) left to the runner's own NNNN history
        assert db.query("SELECT count(*) FROM yoyo_lock") == [(0,)]
        assert db.query("SELECT pid FROM _hcm_history_lock") == [(first.pid,)]


def test_the_runners_own_history_keeps_its_historic_lock_key():
    from migrator import pg_lock

    assert pg_lock.lock_key("public") == pg_lock.lock_key(None) == pg_lock.LOCK_KEY
    assert len({pg_lock.LOCK_KEY, pg_lock.lock_key("public", "plan_history"), pg_lock.lock_key("public", "census_history"),
                pg_lock.lock_key("a", "plan_history")}) == 4


def test_services_first_runs_at_once_on_a_fresh_database_share_its_bookkeeping(cli, make_db, tmp_path):
    """Three services' init containers starting together on a new database, each under its own history's lock: the
    schema's shared bookkeeping (yoyo's tables, the checksum and snapshot tables) is created once, not raced on
    (a duplicate CREATE TABLE failed a run), and no run loses another's update of the schema's record (drift)."""
    for round_ in range(5):  # (each round a new database: the creation is what races)
        db = make_db()
        folders = {}
        for service in ("plan", "census", "excel"):
            folders[service] = tmp_path / f"{round_}{service}"
            write(folders[service], "V1__init.sql", f"CREATE TABLE {service} (id INT);\n")
            write(folders[service], f"V2__{service}_name.sql", f"ALTER TABLE {service} ADD COLUMN name TEXT;\n")
        runs = [runner(db, folder, f"{service}_history", "migrate") for service, folder in folders.items()]
        for run in runs:
            out, err = run.communicate(timeout=120)
            assert run.returncode == 0, err
        for service, folder in folders.items():
            env = {**db.db_env(), "SCHEMA_TABLE": f"{service}_history"}
            status = cli("status", "--exit-code", "--sql-dir", folder, env=env)
            assert status.exit_code == 0 and "2 applied, 0 pending" in status.stdout, status.output
