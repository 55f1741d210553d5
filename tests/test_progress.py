"""Live progress of a running migration and the JSON run log, with the runner as a subprocess (as the Job runs it)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

from conftest import PROJECT_ROOT, ok


def runner(*args, env: dict | None = None) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_", "MONGO", "LOG_FORMAT"))}
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), *map(str, args)], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**base, **(env or {})})


def read_until(proc: subprocess.Popen, wanted, timeout: float) -> list[str]:
    """stderr lines until one satisfies `wanted` (or the process ends, or time runs out)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if wanted(line):
                break
    return lines


def add(sql_dir: Path, name: str, text: str) -> None:
    (sql_dir / f"{name}.sql").write_text(text)
    (sql_dir / f"{name}.rollback.sql").write_text("SELECT 1;\n")


def test_a_migration_waiting_on_a_lock_names_the_session_holding_it(cli, db, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--database-url", db.url))  # (setup: in-process)
    add(sql_dir, "0002_add_note", "ALTER TABLE hcm_report_metadata ADD COLUMN note text;\n")
    holder = psycopg2.connect(db.url, application_name="dba-console-7")
    try:
        with holder.cursor() as cur:  # an open transaction that read the table: "idle in transaction"
            cur.execute("SELECT pg_backend_pid()")
            holder_pid = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM hcm_report_metadata")
        proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", db.url, "--ddl-lock-timeout", "120s")
        lines = read_until(proc, lambda line: "pg_terminate_backend" in line, timeout=60)
        holder.rollback()  # let it through
        out, err = proc.communicate(timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 0, "".join(lines) + err
    found = [line for line in lines if "pg_terminate_backend" in line]
    assert found, "".join(lines) + err
    line = found[0]
    assert f"pid {holder_pid}" in line
    assert "application_name 'dba-console-7'" in line
    assert "idle in transaction for" in line
    assert "ACCESS EXCLUSIVE lock on hcm_report_metadata" in line
    assert "holds ACCESS SHARE" in line  # what it holds, never what it runs (issue 23: its text may hold secrets)
    assert "SELECT count(*)" not in line
    assert line[:8].count(":") == 2  # a log (no terminal) gets timestamped lines
    assert "applied 0002_add_note" in out


def test_quiet_prints_no_progress(db, sql_dir):
    add(sql_dir, "0002_sleep", "SELECT pg_sleep(4.5);\n")
    proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", db.url, "--quiet")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "running for" not in err and "applied 0002_sleep" in out


def test_an_index_build_that_takes_seconds_shows_its_phase(db, sql_dir):
    with psycopg2.connect(db.url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE big (id bigint, a text, b text)")
        cur.execute("INSERT INTO big SELECT g, md5(g::text), md5((g * 7)::text) FROM generate_series(1, 80) g")
        # An index over an expression that waits 0.1 s a row: 8 s of building on any machine, without burning the
        # CPU the other test workers share (it used to compute 12 million md5s).
        cur.execute("CREATE FUNCTION slow_key(text) RETURNS text IMMUTABLE LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_sleep(0.1); RETURN $1; END $$")
    conn.close()
    add(sql_dir, "0002_big_index", "-- transactional: false\n"
        "CREATE INDEX CONCURRENTLY big_digest ON big (slow_key(a));\n")
    proc = runner("--log-format", "json", "migrate", "--sql-dir", sql_dir, "--database-url", db.url,
                  "--statement-timeout", "0")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines()]
    progress = [e for e in events if e["event"] == "progress" and e.get("phase")]
    assert progress, err
    assert progress[0]["migration"] == "0002_big_index"
    assert progress[0]["command"].startswith("CREATE INDEX CONCURRENTLY on big")
    phases = {"initializing", "waiting for writers before build", "building index", "waiting for writers before validation",
              "index validation: scanning index", "index validation: sorting tuples", "index validation: scanning table",
              "waiting for old snapshots"}  # pg_stat_progress_create_index's phases (building has sub-phases)
    assert progress[0]["phase"].split(":")[0] in phases | {"index validation"}, progress[0]
    assert progress[0]["elapsed_s"] >= 3


def test_json_log_of_a_failing_run_is_one_event_per_line_with_the_password_masked(make_db, password_role, sql_dir):
    from conftest import SPECIAL_PASSWORD

    db = make_db(owner=password_role)
    url = db.server.url(db.name, user=password_role, password=SPECIAL_PASSWORD)
    add(sql_dir, "0002_broken", "ALTER TABLE hcm_report_metadata ADD COLUMN note text;\nSELECT * FROM no_such_table;\n")
    proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", url, "-v", env={"LOG_FORMAT": "json"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert SPECIAL_PASSWORD not in out + err
    events = [json.loads(line) for line in (out + err).splitlines()]  # every line is one JSON object
    kinds = [(e["event"], e.get("migration")) for e in events if e["event"].startswith("migration_")]
    assert kinds == [("migration_started", "0001_create_hcm_report_metadata"),
                     ("migration_applied", "0001_create_hcm_report_metadata"),
                     ("migration_started", "0002_broken"), ("migration_failed", "0002_broken")]
    failed = next(e for e in events if e["event"] == "migration_failed")
    assert "0002_broken.sql:2" in failed["error"] and "no_such_table" in failed["error"]
    assert isinstance(failed["duration_ms"], int)
    assert any(e["event"] == "traceback" for e in events)  # -v: the traceback is an event too
    error = events[-1]
    assert error["event"] == "error" and error["exit_code"] == 1 and "0002_broken" in error["message"]
    assert "postgresql://hcm_app:***@" in next(e["message"] for e in events if e["event"] == "note")
    assert not any(e["event"] == "result" and "applied 0002" in e["message"] for e in events)


def test_json_log_of_a_good_run_reports_each_migration_and_the_summary(db, sql_dir):
    proc = runner("--log-format", "json", "migrate", "--sql-dir", sql_dir, "--database-url", db.url)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stdout = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in stdout] == ["result", "report", "report"]
    assert stdout[0]["message"].startswith("  applied 0001_create_hcm_report_metadata (")
    assert stdout[1]["lines"] == ["PostgreSQL: applied 1; 1 of 1 migrations applied"]
    applied = [json.loads(line) for line in err.splitlines() if '"migration_applied"' in line]
    assert applied[0]["migration"] == "0001_create_hcm_report_metadata"
