"""The flow of a run over tenant schemas (hostile report 16a: 9, 10, 11, 15, 16, 17), on the real PostgreSQL.

What the final line tells the user to do next, a schema that cannot be created or used, counts with a
file gone, SIGTERM while a schema waits for its lock, break-lock over a live runner, the summary's
columns, the progress lines' prefix and what a non-transactional file reports after SIGTERM. Where
processes matter (a lock held by another session, signals) through real runner subprocesses.
"""

from __future__ import annotations

import signal
import time

import psycopg2
import pytest

from conftest import SEED, add_migration, ok, one_error_line
from test_tenants import history, relations, summary_rows
from test_tenants_attacks import runner, wait_for_sleeps

APP = "flow_app"  # a login role without privileges of its own (the local server trusts it)


@pytest.fixture
def app_role(pg):
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP,))
        if not cur.fetchone():
            cur.execute(f"CREATE ROLE {APP} LOGIN")
    return APP


def as_app(db) -> dict[str, str]:
    return {**db.db_env(), "DB_USER": APP}


def chain(sql_dir, *names: str) -> None:
    for name in names:
        add_migration(sql_dir, name, f"CREATE TABLE {name[5:]} (id int);\n", f"DROP TABLE {name[5:]};\n")


# --- 9: after a failed rollback over schemas, the final line never says "run again" over the done ones --------


def test_a_failed_rollback_over_schemas_says_to_rerun_only_the_failed_ones(cli, db, sql_dir):
    chain(sql_dir, "0002_t2", "0003_t3")
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--schema", "b", "--create-schemas",
               env=db.db_env()).exit_code == 0
    result = cli("sql", "rollback", "--sql-dir", sql_dir, "--schema", "a", "--schema", "zz", "--schema", "b",
                 env=db.db_env())
    line = one_error_line(result)
    assert "no-op" not in line and "--schema zz" in line and "--to" in line, line
    assert "a, b" in line  # what was done is named
    assert history(db, "a") == history(db, "b") == [SEED, "0002_t2"]
    # following the advice rolls back nothing more in the done schemas
    again = cli("sql", "rollback", "--sql-dir", sql_dir, "--schema", "zz", env=db.db_env())
    assert again.exit_code == 1 and history(db, "a") == [SEED, "0002_t2"]
    # --fail-fast: the schemas it did not reach are named too
    stopped = cli("sql", "rollback", "--sql-dir", sql_dir, "--schema", "a", "--schema", "zz", "--schema", "b",
                  "--fail-fast", env=db.db_env())
    line = one_error_line(stopped)
    assert "--schema zz --schema b" in line and "no-op" not in line, line
    assert history(db, "a") == [SEED] and history(db, "b") == [SEED, "0002_t2"]
    # migrate's line may say it: there it is true
    add_migration(sql_dir, "0004_clash", "CREATE TABLE clash (id int);\n")
    db.query("CREATE TABLE b.clash (id int)")
    migrate = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--schema", "b", env=db.db_env())
    assert "done schemas are a no-op" in one_error_line(migrate)


def test_a_failed_accept_drift_over_schemas_says_what_a_rerun_records(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--create-schemas", env=db.db_env()).exit_code == 0
    result = cli("sql", "accept-drift", "--sql-dir", sql_dir, "--schema", "a", "--schema", "zz", env=db.db_env())
    line = one_error_line(result)
    assert "no-op" not in line and "--schema zz" in line, line


# --- 10: a schema --create-schemas cannot create is that schema's failure -----------------------------


def test_a_schema_that_cannot_be_created_fails_alone(cli, db, sql_dir, app_role):
    db.query(f"CREATE SCHEMA a AUTHORIZATION {APP}; CREATE SCHEMA d; GRANT USAGE, CREATE ON SCHEMA d TO {APP};"
             f"REVOKE CREATE ON DATABASE {db.name} FROM PUBLIC")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--schema", "e", "--schema", "d",
                 "--create-schemas", env=as_app(db))
    assert result.exit_code == 1, result.output
    rows = summary_rows(result.stdout)
    assert rows["a"][:2] == ["1", "0"] and rows["d"][:2] == ["1", "0"] and "FAILED" in rows["e"], result.stdout
    assert history(db, "a") == history(db, "d") == [SEED]
    failed = [line for line in result.stderr.splitlines() if line.startswith("[e] FAILED")]
    assert len(failed) == 1 and f"GRANT CREATE ON DATABASE {db.name} TO {APP}" in failed[0], result.stderr
    assert "failed in 1 of 3 schema(s): e" in one_error_line(result)


# --- 11: a tenant schema without USAGE says so, with the exact GRANT ----------------------------------


def test_missing_usage_on_a_tenant_schema_names_the_privileges_really_missing(cli, db, sql_dir, app_role):
    db.query("CREATE SCHEMA c")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "c", env=as_app(db))
    failed = next(line for line in result.stderr.splitlines() if line.startswith("[c] FAILED"))
    assert f"GRANT USAGE, CREATE ON SCHEMA c TO {APP}" in failed, failed
    db.query(f"GRANT CREATE ON SCHEMA c TO {APP}")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "c", env=as_app(db))
    failed = next(line for line in result.stderr.splitlines() if line.startswith("[c] FAILED"))
    assert f"GRANT USAGE ON SCHEMA c TO {APP}" in failed and "GRANT CREATE" not in failed, failed
    status = cli("status", "--sql-dir", sql_dir, "--schema", "c", env=as_app(db))
    assert status.exit_code != 0
    assert "has no USAGE on schema c" in status.output and f"GRANT USAGE ON SCHEMA c TO {APP}" in status.output
    assert "the server refused" not in status.output, status.output
    db.query(f"GRANT USAGE ON SCHEMA c TO {APP}")
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "c", env=as_app(db)).exit_code == 0
    assert history(db, "c") == [SEED]


# --- 15: an applied migration whose file is gone is not counted as one of the files ---------------------


@pytest.mark.parametrize("schemas", [(), ("--schema", "a")])
def test_an_applied_migration_without_its_file_is_not_counted_among_the_files(cli, db, sql_dir, schemas):
    chain(sql_dir, "0002_gone")
    assert cli("migrate", "--sql-dir", sql_dir, *schemas, "--create-schemas", env=db.db_env()).exit_code == 0
    (sql_dir / "0002_gone.sql").unlink()
    (sql_dir / "0002_gone.rollback.sql").unlink()
    chain(sql_dir, "0003_t3", "0004_t4")
    result = cli("migrate", "--sql-dir", sql_dir, *schemas, env=db.db_env())
    assert result.exit_code == 0, result.output
    assert "applied 2; 3 of 3 migrations applied (1 applied migration has no file: 0002_gone)" in result.output
    assert "4 of 3" not in result.output
    if schemas:
        assert summary_rows(result.stdout)["a"][:2] == ["2", "0"], result.stdout
    again = cli("migrate", "--sql-dir", sql_dir, *schemas, env=db.db_env())
    assert "up to date (3 of 3 migrations applied; 1 applied migration has no file: 0002_gone)" in again.output


# --- 16: SIGTERM while a schema waits for its lock -----------------------------------------------------


def _held_by_other(db, schema: str | None):
    from migrator.pg_lock import lock_key

    other = psycopg2.connect(db.url, application_name="hcm-db-migrations otherhost:4242")
    other.autocommit = True
    with other.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (lock_key(schema),))
    return other


def _wait_until_waiting(db, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not db.poll("SELECT 1 FROM pg_stat_activity WHERE query LIKE '%%pg_try_advisory_lock(%%' "
                      "AND application_name LIKE 'hcm-db-migrations%%' AND pid <> pg_backend_pid() "
                      "AND application_name NOT LIKE '%%otherhost%%'"):
        assert time.monotonic() < deadline, "the runner never waited for the lock"
        time.sleep(0.05)


@pytest.mark.parametrize("schemas, parallel", [(["a", "c"], 1), (["a", "c"], 2), ([], 1)])
def test_sigterm_while_waiting_for_the_lock_ends_the_wait_and_runs_nothing(cli, db, sql_dir, tmp_path, schemas,
                                                                             parallel):
    args = [arg for schema in schemas for arg in ("--schema", schema)] + ["--parallel", parallel]
    ok(cli("migrate", "--sql-dir", sql_dir, "--create-schemas", *args, env=db.db_env()))  # (setup: in-process)
    chain(sql_dir, "0002_t6")
    other = _held_by_other(db, schemas[0] if schemas else None)
    try:
        proc = runner(db, "migrate", "--sql-dir", sql_dir, "--lock-timeout", "60", *args, cwd=tmp_path)
        _wait_until_waiting(db)
        if parallel > 1:  # c, not waiting, runs to its end meanwhile
            deadline = time.monotonic() + 20
            while "0002_t6" not in history(db, "c"):
                assert time.monotonic() < deadline, "c never ran"
                time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
        waited = time.monotonic() - sent
    finally:
        other.close()
    time.sleep(0.5)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert waited < 2, f"the lock wait went on {waited:.1f} s after SIGTERM"
    assert "Traceback" not in stderr
    last = stderr.rstrip().splitlines()[-1]
    for schema in (schemas or ["public"])[:1 if parallel > 1 else None]:
        assert "t6" not in relations(db, schema), "nothing starts after the signal"
    if schemas:
        rows = summary_rows(stdout)
        assert rows["a"][2:4] == ["not", "run"], stdout
        assert "a (waiting for its lock" in last, last
        if parallel > 1:
            assert rows["c"][:2] == ["1", "0"] and "not run: none;" in last, stdout + last
        else:
            assert rows["c"][2:4] == ["not", "run"] and "not run: c;" in last, last
    else:
        assert "waiting for the migration lock" in last and "unverified session" in last, last  # no lock row
        assert "nothing was run" in last, last


# --- 17: break-lock over a live runner, the summary's columns, progress prefix, a statement never started ----


def test_break_lock_refuses_a_live_runners_lock_naming_it(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--create-schemas", env=db.db_env()).exit_code == 0
    other = _held_by_other(db, "a")
    try:
        # that runner's row, written by its own session (the runner column its default fills; its server session)
        from migrator.lock_row import SESSION_VALUES

        other.cursor().execute("INSERT INTO a.yoyo_lock (locked, ctime, pid, backend_pid, backend_start) VALUES "
                               f"(1, now() AT TIME ZONE 'UTC', 4242, {SESSION_VALUES})")
        result = cli("sql", "break-lock", "--sql-dir", sql_dir, "--schema", "a", env=db.db_env())
        assert result.exit_code != 0
        failed = next(line for line in result.stderr.splitlines() if line.startswith("[a] FAILED"))
        assert "held by host otherhost pid 4242" in failed and "live" in failed, failed
        assert db.query("SELECT pid FROM a.yoyo_lock") == [(4242,)], "a live runner's row is kept"
    finally:
        other.close()
    # an older runner's row (no server session in it) that holds only the row (another version's key) but is still
    # connected: refused too
    db.query("UPDATE a.yoyo_lock SET backend_pid = NULL, backend_start = NULL")
    alive = psycopg2.connect(db.url, application_name="hcm-db-migrations otherhost:4242")
    try:
        result = cli("sql", "break-lock", "--sql-dir", sql_dir, "--schema", "a", env=db.db_env())
        assert result.exit_code != 0 and "held by a live runner (pid 4242" in result.stderr, result.output
        assert db.query("SELECT pid FROM a.yoyo_lock") == [(4242,)]
    finally:
        alive.close()
    # once that runner is gone, the row it left is removed
    result = cli("sql", "break-lock", "--sql-dir", sql_dir, "--schema", "a", env=db.db_env())
    assert result.exit_code == 0, result.output
    assert db.query("SELECT count(*) FROM a.yoyo_lock") == [(0,)]
    assert summary_rows(result.stdout)["a"][0] == "1", result.stdout


def test_the_maintenance_commands_summary_shows_what_each_schema_did(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--create-schemas", env=db.db_env()).exit_code == 0
    chain(sql_dir, "0002_t5", "0003_t6")
    db.query("CREATE SCHEMA b")
    result = cli("sql", "mark", "0002_t5", "0003_t6", "--sql-dir", sql_dir, "--schema", "a", "--schema", "b",
                 env=db.db_env())
    assert result.exit_code == 0, result.output
    assert "-" not in " ".join(c for row in summary_rows(result.stdout).values() for c in row[:2]), result.stdout
    assert summary_rows(result.stdout)["a"][:1] == ["2"] and summary_rows(result.stdout)["b"][:1] == ["2"]
    again = cli("sql", "mark", "0002_t5", "--sql-dir", sql_dir, "--schema", "a", env=db.db_env())
    assert summary_rows(again.stdout)["a"][:1] == ["0"], again.stdout


def test_progress_lines_of_a_tenant_run_carry_the_schema(db, sql_dir, tmp_path):
    add_migration(sql_dir, "0002_slow", "SELECT pg_sleep(4.5);\n")
    proc = runner(db, "migrate", "--sql-dir", sql_dir, "--create-schemas", "--parallel", "2", "--schema", "a",
                  "--schema", "b", cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    progress = [line for line in (stdout + stderr).splitlines() if "0002_slow: running for" in line]
    assert progress, stdout + stderr
    assert all("[a] 0002_slow" in line or "[b] 0002_slow" in line for line in progress), progress
    assert {"[a]", "[b]"} <= {line.split(" 0002_slow")[0].split()[-1] for line in progress}, progress


NON_TRANSACTIONAL = ("-- transactional: false\nCREATE TABLE s1 (id int);\nSELECT pg_sleep(3);\n"
                     "CREATE TABLE s2 (id int);\n")


def test_sigterm_in_a_non_transactional_file_says_a_statement_never_started_did_not_run(db, sql_dir, tmp_path):
    add_migration(sql_dir, "0002_nontx", NON_TRANSACTIONAL)
    proc = runner(db, "migrate", "--sql-dir", sql_dir, "--create-schemas", "--parallel", "2", "--schema", "a",
                  "--schema", "b", cwd=tmp_path)
    wait_for_sleeps(db, 2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    for schema in ("a", "b"):
        assert "s1" in relations(db, schema) and "s2" not in relations(db, schema)
        recorded = db.query(f"SELECT what FROM {schema}._hcm_migration_failure")[0][0]
        assert "may or may not" not in recorded and "statement 3 (line 4)" in recorded, recorded
        assert "nothing from statement 3 (line 4) on committed (the next statement never started)" in recorded
    failed = [line for line in stderr.splitlines() if "FAILED" in line]
    assert len(failed) == 2 and all("may or may not" not in line and "never started" in line for line in failed), stderr
