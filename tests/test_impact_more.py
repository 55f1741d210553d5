"""`plan --impact`, the hostile report's rest: non-transactional files measured in transactions of their own,
unseen sessions, wording, Markdown; against the real server."""

from __future__ import annotations

import json
import os

from test_impact import TABLE
from test_progress import add
from test_schema_proof import scratch_databases
from migrator.targets import server_name


def plan_impact(cli, db, pg, sql_dir, *more, env=None):
    return cli("plan", "--impact", *more, "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(),
               env={**db.db_env(), **(env or {})})


def test_non_transactional_file_measures_each_statement_in_its_own_transaction(cli, db, pg, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    add(sql_dir, "0002_outside", "-- transactional: false\n"
        f"ALTER TABLE {TABLE} ADD COLUMN score double precision DEFAULT random();\n"
        f"ALTER TABLE {TABLE} ALTER COLUMN report_name TYPE text;\n"
        f"VACUUM {TABLE};\n"
        f"CREATE INDEX CONCURRENTLY idx_score ON {TABLE} (score);\n"
        f"ALTER TABLE {TABLE} ADD CONSTRAINT positive_score CHECK (score >= 0) NOT VALID;\n")
    result = plan_impact(cli, db, pg, sql_dir, "--json")
    assert result.exit_code == 0, result.output
    assert scratch_databases(pg) == []
    (migration,) = json.loads(result.stdout)["migrations"]
    volatile, retype, vacuum, index, check = migration["statements"]
    assert migration["transactional"] is False
    # Each committed alone: every statement's own locks, not "already held" by an earlier one.
    for statement in (volatile, retype, check):
        assert {lock["relation"]: lock["mode"] for lock in statement["locks"]}[TABLE] == "ACCESS EXCLUSIVE", statement
        assert statement["measured"] == "in a transaction"
    assert TABLE in volatile["rewrites"] and retype["rewrites"] == []  # varchar -> text: binary coercible
    assert (vacuum["measured"], index["measured"]) == ("observed while it waited",) * 2
    assert index["waits_for"][0].startswith("every transaction older than it")
    text = plan_impact(cli, db, pg, sql_dir).stdout
    assert "rewrites " + TABLE in text
    vacuum_line = next(line for line in text.splitlines() if line.startswith("  line 4: VACUUM"))
    assert "cannot run in a transaction: observed while it waited" in vacuum_line


def test_sessions_this_role_cannot_see_are_not_called_no_open_transaction(cli, make_db, password_role, pg, sql_dir):
    import psycopg2

    from conftest import SPECIAL_PASSWORD

    db = make_db(owner=password_role)
    url = pg.url(db.name, user=password_role, password=SPECIAL_PASSWORD)
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", "--database-url", url).exit_code == 0
    add(sql_dir, "0002_index", f"-- transactional: false\nCREATE INDEX CONCURRENTLY idx_tenant ON {TABLE} (tenant_id);\n")
    holder = psycopg2.connect(db.url)  # the superuser's open transaction: hidden from an ordinary role
    try:
        with holder.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {TABLE}")
        result = cli("plan", "--impact", "--json", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(),
                     "--database-url", url)
    finally:
        holder.close()
    assert result.exit_code == 0, result.output
    (statement,) = json.loads(result.stdout)["migrations"][0]["statements"]
    now = statement["waits_for"][1]
    assert "no other open transaction" not in now
    assert "1 session(s) of other roles this role cannot see" in now and "pg_read_all_stats" in now


def test_an_open_transactions_forged_application_name_is_quoted(cli, db, pg, sql_dir):
    """attack 23f (impact_appname): the application_name of a session with a transaction open, its own to
    choose, was printed raw: it read as more fields of the line (a user, another session). Now quoted."""
    import psycopg2

    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    add(sql_dir, "0002_index", f"-- transactional: false\nCREATE INDEX CONCURRENTLY idx_tenant ON {TABLE} (tenant_id);\n")
    holder = psycopg2.connect(db.url, application_name="job, user postgres\nforged")
    pid = holder.get_backend_pid()
    try:
        with holder.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {TABLE}")
        result = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    finally:
        holder.close()
    assert result.exit_code == 0, result.output
    assert f"pid {pid} ('job, user postgres\\\\x0aforged', user " in result.output, result.output


def _seeded(cli, db, sql_dir, rows: int = 2000) -> None:
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    db.query(f"INSERT INTO {TABLE} (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, "
             "trigger_date, filestore_id, tenant_id) SELECT 'run-' || g, 'dag', 'C-1', 'r', 'Daily', now(), "
             f"'f-' || g, '1' FROM generate_series(1, {rows}) g")
    db.query(f"ANALYZE {TABLE}")


def test_sequence_restart_and_truncate_are_not_called_rewrites_that_grow(cli, db, pg, sql_dir):
    _seeded(cli, db, sql_dir)
    add(sql_dir, "0002_restart", f"ALTER SEQUENCE {TABLE}_id_seq RESTART WITH 5000;\n")
    add(sql_dir, "0003_truncate", f"TRUNCATE {TABLE};\n")
    result = plan_impact(cli, db, pg, sql_dir)
    assert result.exit_code == 0, result.output
    text = result.stdout
    restart = next(line for line in text.splitlines() if line.startswith("  line 1: ALTER SEQUENCE"))
    assert "index" not in restart and "grows" not in restart, restart
    assert f"    restarts sequence {TABLE}_id_seq: instant" in text
    truncate = next(line for line in text.splitlines() if line.startswith("  line 1: TRUNCATE"))
    assert "grows" not in truncate and f"empties {TABLE}: instant, but removes their live rows" in truncate, truncate
    assert f"    empties table {TABLE} (~2.0 k rows, " in text
    assert "instant whatever its size, but removes its ~2.0 k live rows" in text
    (statement,) = json.loads(plan_impact(cli, db, pg, sql_dir, "--json").stdout)["migrations"][1]["statements"]
    assert statement["command"] == "TRUNCATE TABLE"


def test_markdown_code_spans_hold_backticks(cli, db, pg, sql_dir):
    import re

    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    add(sql_dir, "0002_comment", f"COMMENT ON TABLE {TABLE} IS 'see `runner.py` and ``docs``';\n")
    result = plan_impact(cli, db, pg, sql_dir, "--markdown")
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| 1 |")]
    span = row.split(" | ")[1]
    fence = re.match("`+", span).group(0)
    assert len(fence) == 3 and span == f"{fence} COMMENT ON TABLE {TABLE} IS 'see `runner.py` and ``docs``'; {fence}"


def test_scratch_server_errors_name_scratch_url_and_the_report_names_the_server(cli, db, pg, sql_dir, password_role):
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    add(sql_dir, "0002_add_note", f"ALTER TABLE {TABLE} ADD COLUMN note text;\n")
    bad = pg.url("postgres", user=password_role, password="not-the-password")
    result = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", bad, env=db.db_env())
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()[-1:]
    assert line.startswith("error: cannot connect to PostgreSQL at ") and "authentication failed" in line, line
    assert "--scratch-url" in line and "--database-url" not in line, line
    text = plan_impact(cli, db, pg, sql_dir)
    assert text.exit_code == 0, text.output
    assert f"measured on a scratch database on server {server_name(pg.host, pg.port)} (rolled back" in text.stdout.splitlines()[0]
    assert json.loads(plan_impact(cli, db, pg, sql_dir, "--json").stdout)["measured_on"] == f"server {server_name(pg.host, pg.port)}"


def test_an_applied_files_notes_are_not_the_plans(cli, db, pg, sql_dir):
    """attack24g finding 9: an applied file replayed on the scratch copy said "the file's SET
    idle_in_transaction_session_timeout is overridden": notes belong to the files the plan is about. (A process of
    its own: the migrate before it, in this one, said that note already, and says each once.)"""
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    header = "SET idle_in_transaction_session_timeout = 0;\nSET lock_timeout = 0;\n"
    add(sql_dir, "0002_dump", header + "CREATE TABLE dumped (id int);\n")
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    add(sql_dir, "0003_pending", header + f"ALTER TABLE {TABLE} ADD COLUMN note text;\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "MONGO_"))}
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner.py"), "plan", "--impact", "--sql-dir",
                             str(sql_dir), "--scratch-url", pg.scratch_url()], env={**clean, **db.db_env()},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "0002_dump" not in result.stderr, result.stderr
    assert "0003_pending.sql:1: the file's SET idle_in_transaction_session_timeout is overridden" in result.stderr, \
        result.stderr
