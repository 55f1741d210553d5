"""The reliability suite, against a real PostgreSQL: drift, lint, concurrent runners, a SIGKILL in the
middle of a migration, DDL timeouts, invalid indexes, and a table of bad inputs that must each end in
one clear line with the right exit code, no traceback and no password.
"""

import os
import signal
import subprocess
import sys
import time

import psycopg2
import pytest

from conftest import PASSWORD_USER, PROJECT_ROOT, SPECIAL_PASSWORD, add_migration, applied, one_error_line

SEED = "0001_create_hcm_report_metadata"


# --- drift ---------------------------------------------------------------------------------


def test_an_edited_applied_file_is_reported_refused_and_accepted_after_review(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    seed = sql_dir / f"{SEED}.sql"
    seed.write_text(seed.read_text().replace("VARCHAR(50),", "VARCHAR(64),"))

    status = cli("status", "--sql-dir", sql_dir, env=env)
    assert f"{SEED}  applied, CHANGED since" in status.stdout
    assert "1 CHANGED since applied" in status.stdout
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 3

    add_migration(sql_dir, "0002_more", "CREATE TABLE t_more (id int);\n", "DROP TABLE t_more;\n")
    refused = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert refused.exit_code == 3
    line = one_error_line(refused)
    assert f"migrate refuses to run: {seed} changed since applied to" in line
    assert f"runner.py sql accept-changes {SEED}" in line
    assert "t_more" not in db.tables()  # nothing ran

    plan = cli("plan", "--sql-dir", sql_dir, env=env)
    assert plan.exit_code == 3 and f"-- DRIFT: {seed} changed since it was applied" in plan.stdout

    accepted = cli("sql", "accept-changes", SEED, "--sql-dir", sql_dir, env=env)
    assert accepted.exit_code == 0 and f"accepted {SEED}: sha256" in accepted.stdout
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    assert "t_more" in db.tables()
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 0


def test_line_endings_alone_are_not_drift(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    seed = sql_dir / f"{SEED}.sql"
    seed.write_bytes(seed.read_bytes().replace(b"\n", b"\r\n"))
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0


def test_databases_migrated_before_checksums_get_them_on_the_next_run(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    db.query("DROP TABLE _hcm_migration_checksum")  # as a database migrated by an older runner
    again = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert again.exit_code == 0
    assert "recorded the checksums of 1 migration(s) applied before drift detection" in again.stderr
    assert db.query("SELECT migration_id FROM _hcm_migration_checksum") == [(SEED,)]
    seed = sql_dir / f"{SEED}.sql"
    seed.write_text(seed.read_text() + "\n-- an edit\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 3


def test_a_migration_committed_but_not_marked_is_marked_not_rerun(cli, db, sql_dir):
    """yoyo marks in a second transaction; a runner killed between the two left this state."""
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    db.query("DELETE FROM _yoyo_migration")  # the schema is there, the mark is not
    result = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 0, result.output  # re-running CREATE TABLE would have failed
    assert f"marked {SEED} applied: committed by a runner that died before marking it" in result.stderr
    assert applied(db) == [SEED]


def test_rollback_removes_the_checksum_with_the_migration(cli, db, sql_dir):
    env = db.db_env()
    cli("migrate", "--sql-dir", sql_dir, env=env)
    assert cli("sql", "rollback", "--sql-dir", sql_dir, env=env).exit_code == 0
    assert db.query("SELECT count(*) FROM _hcm_migration_checksum") == [(0,)]


# --- lint ----------------------------------------------------------------------------------


def test_the_projects_sql_is_lint_clean(cli):
    result = cli("sql", "lint")
    assert result.exit_code == 0, result.output
    assert "migration(s) clean" in result.stdout


def test_an_index_built_without_concurrently_on_an_existing_table_fails_lint(cli, sql_dir):
    add_migration(sql_dir, "0002_tenant_index", "-- tenant lookups\nCREATE INDEX idx_hcm_report_tenant ON hcm_report_metadata (tenant_id);\n")
    result = cli("sql", "lint", "--sql-dir", sql_dir)
    assert result.exit_code == 1
    assert (f"{sql_dir}/0002_tenant_index.sql:2:1: require-concurrent-index-creation: "
            "During normal index creation, table updates are blocked, but reads are still allowed.") in result.stdout
    assert one_error_line(result).startswith("error: lint: 1 finding(s) in 1 file(s)")
    # The documented way passes.
    add_migration(sql_dir, "0002_tenant_index",
                  "-- transactional: false\nDROP INDEX CONCURRENTLY IF EXISTS idx_hcm_report_tenant;\n"
                  "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_hcm_report_tenant ON hcm_report_metadata (tenant_id);\n")
    assert cli("sql", "lint", "--sql-dir", sql_dir).exit_code == 0


def test_the_concurrent_index_example_applies_outside_a_transaction(cli, db, sql_dir):
    add_migration(sql_dir, "0002_tenant_index",
                  "-- transactional: false\nDROP INDEX CONCURRENTLY IF EXISTS idx_hcm_report_tenant;\n"
                  "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_hcm_report_tenant ON hcm_report_metadata (tenant_id);\n",
                  "DROP INDEX CONCURRENTLY IF EXISTS idx_hcm_report_tenant;\n")
    env = db.db_env()
    result = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 0, result.output
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_hcm_report_tenant'::regclass") == [(True,)]
    assert cli("sql", "rollback", "--sql-dir", sql_dir, env=env).exit_code == 0
    assert db.query("SELECT to_regclass('idx_hcm_report_tenant')") == [(None,)]


# --- failures that leave something behind ---------------------------------------------------


def test_a_failed_concurrent_build_is_reported_as_an_invalid_index(cli, db, sql_dir):
    add_migration(sql_dir, "0002_seed_rows", "INSERT INTO hcm_report_metadata (dag_run_id, dag_name, campaign_number, "
                  "report_name, trigger_frequency, trigger_date, filestore_id) VALUES "
                  "('r1', 'd', 'C1', 'rep', 'Daily', now(), 'f1'), ('r1', 'd', 'C1', 'rep', 'Daily', now(), 'f2');\n")
    add_migration(sql_dir, "0003_unique_run", "-- transactional: false\n"
                  "CREATE UNIQUE INDEX CONCURRENTLY idx_hcm_report_run ON hcm_report_metadata (dag_run_id);\n")
    env = db.db_env()
    failed = cli("migrate", "--sql-dir", sql_dir, env=env)
    line = one_error_line(failed)
    assert "0003_unique_run.sql:2: failed to apply" in line and "could not create unique index" in line
    assert "not transactional" in line and "INVALID index" in line
    status = cli("status", "--sql-dir", sql_dir, env=env)
    assert ("INVALID index public.idx_hcm_report_run on hcm_report_metadata (left by an earlier try of pending "
            "0003_unique_run's CONCURRENTLY build): `runner.py migrate` drops it and builds it again (fix what made "
            "that build fail first: its record above)") in status.stdout
    import json

    data = json.loads(cli("status", "--json", "--sql-dir", sql_dir, env=env).stdout)
    assert data["invalid_indexes"] == ["public.idx_hcm_report_run"]


def test_ddl_behind_application_traffic_waits_only_as_long_as_its_budget(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n", "")
    server = db.server
    app = psycopg2.connect(dbname=db.name, user=server.user, password=server.password, host=server.host, port=server.port)
    try:
        app.cursor().execute("SELECT * FROM hcm_report_metadata")  # an open transaction: ACCESS SHARE held
        started = time.monotonic()
        result = cli("migrate", "--ddl-lock-timeout", "300ms", "--lock-retry-budget", "1s", "--sql-dir", sql_dir, env=env)
        assert time.monotonic() - started < 5
    finally:
        app.close()
    line = one_error_line(result)
    assert "0002_add_status.sql:1: failed to apply" in line and "lock timeout" in line
    assert "run again once it has ended (--lock-retry-budget" in line
    assert applied(db) == [SEED]
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0  # traffic gone: it goes on


def test_statement_timeout_applies_to_migrations(cli, db, sql_dir):
    add_migration(sql_dir, "0002_slow", "SELECT pg_sleep(3);\n")
    result = cli("migrate", "--statement-timeout", "300ms", "--sql-dir", sql_dir, env=db.db_env())
    line = one_error_line(result)
    assert "0002_slow.sql:1: failed to apply" in line and "statement timeout" in line
    assert "raise --statement-timeout" in line


# --- processes: two at once, and one killed --------------------------------------------------


def runner_process(args, env, **kwargs) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "MONGO_"))}
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), *map(str, args)], env={**clean, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_two_runners_at_once_both_succeed_and_apply_each_migration_once(db, sql_dir):
    add_migration(sql_dir, "0002_slow", "CREATE TABLE t_slow (id int);\nSELECT pg_sleep(1);\n", "DROP TABLE t_slow;\n")
    add_migration(sql_dir, "0003_after", "CREATE TABLE t_after (id int);\n", "DROP TABLE t_after;\n")
    env = db.db_env()
    runners = [runner_process(["migrate", "--lock-timeout", "30", "--sql-dir", sql_dir], env) for _ in range(2)]
    outputs = [r.communicate(timeout=60) for r in runners]
    assert [r.returncode for r in runners] == [0, 0], outputs
    counts = db.query("SELECT migration_id, count(*) FROM _yoyo_log WHERE operation = 'apply' GROUP BY 1 ORDER BY 1")
    assert counts == [(SEED, 1), ("0002_slow", 1), ("0003_after", 1)]
    assert sum("applied 0002_slow" in out for out, _ in outputs) == 1
    assert sum("up to date" in out for out, _ in outputs) == 1


def test_a_sigkilled_runner_does_not_block_the_next_one(db, sql_dir):
    env = db.db_env()
    slow = "CREATE TABLE t_partial (id int);\nSELECT pg_sleep(60);\n"
    add_migration(sql_dir, "0002_partial", slow, "DROP TABLE t_partial;\n")
    victim = runner_process(["migrate", "--sql-dir", sql_dir], env)
    deadline = time.monotonic() + 30
    while not db.poll("SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()"):
        assert time.monotonic() < deadline and victim.poll() is None, victim.communicate()
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    add_migration(sql_dir, "0002_partial", slow.replace("SELECT pg_sleep(60);\n", ""), "DROP TABLE t_partial;\n")
    started = time.monotonic()
    rerun = runner_process(["migrate", "--lock-timeout", "20", "--sql-dir", sql_dir], env)
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, out + err
    assert time.monotonic() - started < 20
    assert "cleared the migration lock left by a runner that died" in err
    assert "applied 0002_partial" in out
    assert applied(db) == [SEED, "0002_partial"]
    assert db.query("SELECT migration_id, count(*) FROM _yoyo_log WHERE operation = 'apply' AND migration_id = '0002_partial' "
                    "GROUP BY 1") == [("0002_partial", 1)]


# --- bad inputs: one line, the right exit code, no traceback, no password ----------------------

PASSWORD = "Tbl-secret-pw9"


def _pw(db) -> dict:
    return {**db.db_env(), "DB_PASSWORD": PASSWORD} if not db.server.password else db.db_env()


def case_unreadable_file(db, sql_dir, tmp_path, aws):
    (sql_dir / "0002_gone.sql").symlink_to(tmp_path / "nowhere.sql")
    return ["migrate", "--sql-dir", sql_dir], _pw(db), 2, "0002_gone.sql cannot be read (No such file or directory)"


def case_non_utf8_file(db, sql_dir, tmp_path, aws):
    (sql_dir / "0002_latin1.sql").write_bytes("SELECT 'caf\xe9';\n".encode("latin-1"))
    return ["migrate", "--sql-dir", sql_dir], _pw(db), 2, "0002_latin1.sql is not UTF-8 (byte 0xe9 at offset 11)"


def case_empty_file(db, sql_dir, tmp_path, aws):
    (sql_dir / "0002_empty.sql").write_text("-- nothing yet\n")
    return ["migrate", "--sql-dir", sql_dir], _pw(db), 2, "0002_empty.sql holds no SQL statement"


def case_duplicate_numbers(db, sql_dir, tmp_path, aws):
    add_migration(sql_dir, "0001_again", "SELECT 1;\n")
    return ["migrate", "--sql-dir", sql_dir], _pw(db), 2, "share the number 1;"


def case_duplicate_ids(db, sql_dir, tmp_path, aws):
    (sql_dir / f"{SEED}.py").write_text("from yoyo import step\nstep('SELECT 1')\n")
    return ["migrate", "--sql-dir", sql_dir], _pw(db), 2, f"{SEED}.py: the runner applies .sql migrations only"


def case_missing_rollback_file(db, sql_dir, tmp_path, aws):
    add_migration(sql_dir, "0002_no_way_back", "CREATE TABLE t_nwb (id int);\n")
    subprocess.run([sys.executable, str(PROJECT_ROOT / "runner.py"), "migrate", "--sql-dir", str(sql_dir)],
                   env={**os.environ, **db.db_env()}, check=True, capture_output=True)
    return ["sql", "rollback", "--sql-dir", sql_dir], _pw(db), 1, "0002_no_way_back.rollback.sql not found"


def case_unknown_id_for_to(db, sql_dir, tmp_path, aws):
    return ["sql", "rollback", "--to", "0042_nope", "--sql-dir", sql_dir], _pw(db), 2, "--to 0042_nope: no applied migration"


def case_malformed_database_url(db, sql_dir, tmp_path, aws):
    return ["migrate"], {"DATABASE_URL": f"postgresql://u:{PASSWORD}@h:54x2/db"}, 2, "DATABASE_URL (environment): the host part is not host[:port]"


def case_non_numeric_db_port(db, sql_dir, tmp_path, aws):
    return ["migrate"], {**_pw(db), "DB_PORT": "five"}, 2, "DB_PORT (environment): port 'five' is not a number"


def case_wrong_password(db, sql_dir, tmp_path, aws):
    if not db.server.enforces_passwords:
        pytest.skip("this server does not check passwords (trust authentication)")
    return (["migrate"], {**db.db_env(), "DB_USER": PASSWORD_USER, "DB_PASSWORD": PASSWORD}, 1,
            f"authentication failed for user {PASSWORD_USER}")


def case_unknown_database(db, sql_dir, tmp_path, aws):
    return ["migrate"], {**_pw(db), "DB_NAME": "no_such_db"}, 1, "database no_such_db does not exist"


def case_unresolvable_host(db, sql_dir, tmp_path, aws):
    return ["migrate"], {"DB_HOST": "db.invalid", "DB_PASSWORD": PASSWORD}, 1, "host db.invalid cannot be resolved"


def case_missing_ca_bundle(db, sql_dir, tmp_path, aws):
    return ["migrate", "--ca-bundle", tmp_path / "rds.pem"], _pw(db), 2, "rds.pem (--ca-bundle) not found"


def case_secret_not_json(db, sql_dir, tmp_path, aws):
    return ["migrate", "--secret-name", aws("t/not-json", f"password={PASSWORD}")], {}, 1, "AWS secret t/not-json is not JSON"


def case_secret_missing_keys(db, sql_dir, tmp_path, aws):
    name = aws("t/partial", {"host": "h", "password": PASSWORD})
    return ["migrate", "--secret-name", name], {}, 1, "secret t/partial (--secret-name) lacks username"


def case_lock_timeout(db, sql_dir, tmp_path, aws):
    from migrator.pg_lock import LOCK_KEY

    server = db.server
    holder = psycopg2.connect(dbname=db.name, user=server.user, password=server.password, host=server.host,
                              port=server.port, application_name="hcm-db-migrations other:1")
    holder.autocommit = True
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    case_lock_timeout.holder = holder  # closed by the test
    return ["migrate", "--lock-timeout", "0.3"], _pw(db), 4, "a session holds the migration lock"


def case_bad_ddl_lock_timeout(db, sql_dir, tmp_path, aws):
    return ["migrate", "--ddl-lock-timeout", "soon"], _pw(db), 2, "'--ddl-lock-timeout': 'soon' is not a duration"


def case_unknown_dsn_option(db, sql_dir, tmp_path, aws):
    url = db.server.url(db.name, password=PASSWORD)
    url += ("&" if "?" in url else "?") + "bogus_option=1"
    # Refused before connecting (a configuration error, exit 2), named: config would otherwise print the option.
    return ["migrate"], {"DATABASE_URL": url}, 2, "DATABASE_URL (environment) sets bogus_option, which libpq does not know"


def case_sql_error(db, sql_dir, tmp_path, aws):
    add_migration(sql_dir, "0002_typo", "CREATE TABLE t_typo (id int);\nALTER TABLE t_typo ADD COLUM x int;\n")
    return ["migrate", "--sql-dir", sql_dir], _pw(db), 1, "0002_typo.sql:2:32: failed to apply"


BAD_INPUTS = [case_unreadable_file, case_non_utf8_file, case_empty_file, case_duplicate_numbers, case_duplicate_ids,
              case_missing_rollback_file, case_unknown_id_for_to, case_malformed_database_url, case_non_numeric_db_port,
              case_wrong_password, case_unknown_database, case_unresolvable_host, case_missing_ca_bundle,
              case_secret_not_json, case_secret_missing_keys, case_lock_timeout, case_bad_ddl_lock_timeout,
              case_unknown_dsn_option, case_sql_error]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.__name__[5:] for c in BAD_INPUTS])
def test_bad_input(case, cli, db, sql_dir, tmp_path, aws, password_role):
    args, env, code, message = case(db, sql_dir, tmp_path, aws)
    try:
        result = cli(*args, env=env)
    finally:
        if getattr(case, "holder", None):
            case.holder.close()
    assert result.exit_code == code, result.output
    line = one_error_line(result)
    assert message in line
    assert PASSWORD not in result.output and SPECIAL_PASSWORD not in result.output
    assert len(line.replace(db.server.host, "")) < 400  # one readable line, not a dump (less the socket folder)
