"""Live progress under attack: a terminal, a role with few connections, passwords in other sessions,
a killed or SIGTERMed migration session; each with the runner as a subprocess, as it really runs (a test's setup
migrate, before anything is attacked, runs in-process: the CLI fixture)."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

import psycopg2
import pytest

from conftest import PROJECT_ROOT, ok
from test_progress import add, read_until, runner

VERBOSE = tuple(os.environ.get("T_VERBOSE", "").split())
LIMITED_USER, LIMITED_PASSWORD = "limited_conn", "few-Slots-9"


@pytest.fixture(scope="module")
def limited_role(pg):
    """A role without pg_read_all_stats, allowed two connections."""
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (LIMITED_USER,))
        if not cur.fetchone():
            cur.execute(f"CREATE ROLE {LIMITED_USER} LOGIN CONNECTION LIMIT 2 PASSWORD %s", (LIMITED_PASSWORD,))
    return LIMITED_USER


def test_progress_on_a_terminal_is_one_live_line_without_a_traceback(db, sql_dir):
    add(sql_dir, "0002_sleep", "SELECT pg_sleep(4.5);\n")
    master, slave = pty.openpty()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_", "MONGO", "LOG_FORMAT"))}
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), "migrate", "--sql-dir", str(sql_dir),
                             "--database-url", db.url], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=slave,
                            text=True, env={**base, "COLUMNS": "100"})
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "AttributeError" not in text, text
    assert "\r\x1b[K0002_sleep: running for " in text, text  # the line rewritten in place
    assert "applied 0002_sleep" in out


def test_the_watcher_never_takes_a_connection_the_migration_needs(make_db, limited_role, sql_dir, pg):
    db = make_db(owner=limited_role)
    url = pg.url(db.name, user=limited_role, password=LIMITED_PASSWORD)
    add(sql_dir, "0002_sleep", "SELECT pg_sleep(4.5);\n")
    add(sql_dir, "0003_more", "CREATE TABLE after_sleep (id int);\n")
    # A third slot, the lock probe's (taken at the statement's start): a blind probe would bound the SELECT by the
    # clock (clock_bound.py); the watcher, 3 s in, finds none left.
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute(f"ALTER ROLE {limited_role} CONNECTION LIMIT 3")
    try:
        proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", url)
        out, err = proc.communicate(timeout=90)
    finally:
        with pg.connect() as conn, conn.cursor() as cur:
            cur.execute(f"ALTER ROLE {limited_role} CONNECTION LIMIT 2")
    assert proc.returncode == 0, err  # the run's own connection and the migration's: the watcher gave way
    assert "applied 0002_sleep" in out and "applied 0003_more" in out
    notes = [line for line in err.splitlines() if "no live progress" in line]
    assert len(notes) == 1 and "too many connections" in notes[0], err
    assert LIMITED_PASSWORD not in out + err


def test_a_lock_holder_quoting_a_password_is_scrubbed_in_both_formats(cli, make_db, password_role, sql_dir, pg):
    from conftest import SPECIAL_PASSWORD

    db = make_db(owner=password_role)
    url = pg.url(db.name, user=password_role, password=SPECIAL_PASSWORD)
    ok(cli("migrate", "--sql-dir", sql_dir, "--database-url", url))
    holder = psycopg2.connect(url, application_name=f"job {SPECIAL_PASSWORD}")  # the same role: visible
    try:
        for number, log_format in ((2, "human"), (3, "json")):
            add(sql_dir, f"000{number}_add_{log_format}", f"ALTER TABLE hcm_report_metadata ADD COLUMN {log_format} text;\n")
            with holder.cursor() as cur:
                cur.execute(f"SELECT count(*), '{SPECIAL_PASSWORD}' FROM hcm_report_metadata")
            proc = runner("--log-format", log_format, "migrate", "--sql-dir", sql_dir, "--database-url", url,
                          "--ddl-lock-timeout", "120s")
            lines = read_until(proc, lambda line: "pg_terminate_backend" in line or "lock_wait" in line, timeout=60)
            holder.rollback()
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, "".join(lines) + err
            text = "".join(lines) + out + err
            assert any("lock_wait" in line or "pg_terminate_backend" in line for line in lines), text
            assert SPECIAL_PASSWORD not in text, text
            assert "job ***" in text, text.splitlines()[1]
    finally:
        holder.close()


def test_a_holder_this_role_cannot_see_is_said_as_such(cli, make_db, password_role, sql_dir, pg):
    from conftest import SPECIAL_PASSWORD

    db = make_db(owner=password_role)
    url = pg.url(db.name, user=password_role, password=SPECIAL_PASSWORD)
    ok(cli("migrate", "--sql-dir", sql_dir, "--database-url", url))
    add(sql_dir, "0002_add_note", "ALTER TABLE hcm_report_metadata ADD COLUMN note text;\n")
    holder = psycopg2.connect(db.url)  # the superuser: its session is hidden from an ordinary role
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            holder_pid = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM hcm_report_metadata")
        proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", url, "--ddl-lock-timeout", "120s")
        lines = read_until(proc, lambda line: "pg_terminate_backend" in line, timeout=60)
        holder.rollback()
        proc.communicate(timeout=60)
    finally:
        holder.close()
    line = next(line for line in lines if "pg_terminate_backend" in line)
    assert f"pid {holder_pid} (another role's session: this role cannot see" in line and "pg_read_all_stats" in line
    assert "None" not in line and "insufficient privilege" not in line


def test_a_row_lock_wait_names_the_transaction_holding_it(cli, db, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--database-url", db.url))
    db.query("INSERT INTO hcm_report_metadata (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, "
             "trigger_date, filestore_id, tenant_id) VALUES ('r', 'd', 'c', 'n', 'Daily', now(), 'f', 't')")
    add(sql_dir, "0002_touch", "UPDATE hcm_report_metadata SET dag_name = 'x';\n")
    holder = psycopg2.connect(db.url)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            holder_pid = cur.fetchone()[0]
            cur.execute("UPDATE hcm_report_metadata SET dag_name = 'held'")
        proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", db.url, "--ddl-lock-timeout", "120s")
        lines = read_until(proc, lambda line: "pg_terminate_backend" in line, timeout=60)
        holder.rollback()
        proc.communicate(timeout=60)
    finally:
        holder.close()
    line = next(line for line in lines if "pg_terminate_backend" in line)
    assert f"waiting for a row lock held by the transaction of pid {holder_pid}" in line
    assert "transactionid" not in line


def _session_of(db, application_like: str, query_like: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = db.poll("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE %s "
                       "AND application_name LIKE %s AND state = 'active'", (query_like, application_like))
        if rows:
            return rows[0][0]
        time.sleep(0.1)
    raise AssertionError(f"no session running {query_like}")


def test_a_killed_migration_session_is_one_line_saying_the_connection_was_lost(cli, db, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--database-url", db.url))
    add(sql_dir, "0002_sleep", "SELECT pg_sleep(30);\n")
    proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", db.url, *VERBOSE)
    pid = _session_of(db, "hcm-db-migrations %", "SELECT pg_sleep(30)%")
    time.sleep(4)  # the watcher is following it
    db.query("SELECT pg_terminate_backend(%s)", (pid,))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "InterfaceError" not in err and "Traceback" not in err, err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "0002_sleep" in error[0] and "connection" in error[0], err
    # (a transactional file: the runner's COMMIT never went, so the server rolled it back; flake24a 2)
    assert "before the runner's COMMIT: nothing of it was applied: its transaction rolled back" in error[0], err
    assert "whether it committed is unknown" not in error[0], err
    assert "fix the file" not in error[0]


@pytest.mark.parametrize("quiet", [(), ("--quiet",)])
def test_sigterm_cancels_the_running_statement_and_stops_in_order(cli, db, sql_dir, quiet):
    ok(cli("migrate", "--sql-dir", sql_dir, "--database-url", db.url))
    add(sql_dir, "0002_sleep", "CREATE TABLE before_sleep (id int);\nSELECT pg_sleep(60);\n")
    proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", db.url, *quiet)
    _session_of(db, "hcm-db-migrations %", "SELECT pg_sleep(60)%")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert time.monotonic() - sent < 10, err  # not after the minute of pg_sleep
    assert proc.returncode == 128 + signal.SIGTERM, err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "interrupted by SIGTERM while it was running" in error[0], err
    assert "nothing of it was applied: its transaction rolled back" in error[0]  # (no silent path: no session ended)
    assert db.query("SELECT to_regclass('before_sleep')") == [(None,)]
    assert db.query("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'") == [(0,)]
