"""A bookkeeping table locked by another session (a DBA's LOCK TABLE, a MAINTAIN right's holder) when the runner's own
statement on it times out (attack24l H, attack23o 3): one true line naming the table and its holder (pid,
application_name, user, state: as the retry lines name blockers), what committed and what to do, exit 4. Before:
"nothing of it was applied: its transaction rolled back" for a file that had committed (_yoyo_log, _yoyo_migration),
and "error: unexpected LockNotAvailable ... rerun with -v" (yoyo_lock, _yoyo_migration, _hcm_*), exit 1."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from conftest import SEED, add_migration, applied, ok, one_error_line
from migrator.errors import LOCKED
from test_bookkeeping_holder import short_after_commit_wait  # noqa: F401 (autouse: a tenant's reads wait 60 s else)

HOLDER = "fix24z_holder"


@contextmanager
def locked(pg, db, tables: str, mode: str):
    """Another session holding `mode` on the bookkeeping `tables` in an open transaction: its pid."""
    with pg.connect(db.name) as session, session.cursor() as cursor:
        cursor.execute(f"SET application_name = '{HOLDER}'")
        cursor.execute("BEGIN")
        cursor.execute(f"LOCK TABLE {tables} IN {mode} MODE")
        cursor.execute("SELECT pg_backend_pid()")
        yield cursor.fetchone()[0]
        cursor.execute("ROLLBACK")


def column_z(db) -> int:
    return db.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'hx' AND column_name = 'z'")[0][0]


@pytest.fixture
def one_pending(cli, db, sql_dir):
    add_migration(sql_dir, "0002_x", "CREATE TABLE hx (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0003_add", "ALTER TABLE hx ADD COLUMN z int;\n")
    return sql_dir


def run(cli, db, sql_dir):
    result = cli("migrate", "--sql-dir", sql_dir, "--lock-retry-budget", "1", env=db.db_env())
    assert result.exit_code == LOCKED, result.output
    line = one_error_line(result)
    assert "unexpected" not in line and "rerun with -v" not in line, line
    return line


def _names(line: str, table: str, pid: int, mode: str) -> None:
    assert f'bookkeeping table "public"."{table}" waited longer than lock_timeout: held by pid {pid} ' in line, line
    assert f"application_name '{HOLDER}', user postgres" in line and f"holds {mode})" in line, line
    assert f"SELECT pg_terminate_backend({pid})" in line, line


@pytest.mark.parametrize("table", ["_yoyo_log", "_yoyo_migration"])
def test_a_committed_file_whose_record_times_out_is_said_committed_and_the_rerun_records_it(cli, db, pg, one_pending,
                                                                                           table):
    with locked(pg, db, f"public.{table}", "EXCLUSIVE") as pid:
        line = run(cli, db, one_pending)
    _names(line, table, pid, "EXCLUSIVE")
    assert "0003_add COMMITTED, but recording it as applied timed out" in line, line
    assert "nothing of it was applied" not in line and "rolled back" not in line, line
    assert "the next migrate records it from the checksum it committed with, without running it again" in line
    assert column_z(db) == 1 and applied(db) == [SEED, "0002_x"]
    rerun = ok(cli("migrate", "--sql-dir", one_pending, env=db.db_env()))
    assert "marked 0003_add applied" in rerun.output and applied(db) == [SEED, "0002_x", "0003_add"]


@pytest.mark.parametrize("tables, named", [
    ("public.yoyo_lock, public._yoyo_migration", "yoyo_lock"),  # attack23o 3 (maintain_lock.sh)
    ("public._yoyo_migration", "_yoyo_migration"),
    ("public._hcm_schema_snapshot", "_hcm_schema_snapshot"),
    ("public._hcm_migration_checksum", "_hcm_migration_checksum"),
])
def test_a_bookkeeping_table_locked_before_the_first_file_is_one_line_nothing_applied(cli, db, pg, one_pending, tables,
                                                                                      named):
    with locked(pg, db, tables, "ACCESS EXCLUSIVE") as pid:
        line = run(cli, db, one_pending)
    _names(line, named, pid, "ACCESS EXCLUSIVE")
    assert "nothing was applied; run migrate again once that session has let go" in line, line
    assert column_z(db) == 0 and applied(db) == [SEED, "0002_x"]


def test_the_checksum_table_locked_inside_the_files_transaction_is_said_rolled_back(cli, db, pg, one_pending):
    with locked(pg, db, "public._hcm_migration_checksum", "EXCLUSIVE") as pid:
        line = run(cli, db, one_pending)
    _names(line, "_hcm_migration_checksum", pid, "EXCLUSIVE")
    assert "nothing of 0003_add committed (its transaction rolled back); run the command again" in line, line
    assert column_z(db) == 0 and applied(db) == [SEED, "0002_x"]


def test_the_snapshot_table_locked_after_the_last_file_says_all_committed_and_what_the_next_run_reports(
        cli, db, pg, one_pending):
    with locked(pg, db, "public._hcm_schema_snapshot", "EXCLUSIVE") as pid:
        result = cli("migrate", "--sql-dir", one_pending, "--lock-retry-budget", "1", env=db.db_env())
    assert result.exit_code == LOCKED and "applied 0003_add" in result.stdout, result.output
    line = one_error_line(result)
    _names(line, "_hcm_schema_snapshot", pid, "EXCLUSIVE")
    assert "the migrations reported applied above are committed and recorded, but the schema's new description " \
           "was not" in line and "`runner.py sql accept-drift`" in line, line
    assert column_z(db) == 1 and applied(db) == [SEED, "0002_x", "0003_add"]


def test_a_flyway_history_locked_before_the_first_file_is_named(cli, db, pg, tmp_path):
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "V1__a.sql").write_text("CREATE TABLE a (id int);\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    (folder / "V2__b.sql").write_text("CREATE TABLE b (id int);\n")
    with locked(pg, db, "public.flyway_schema_history", "ACCESS EXCLUSIVE") as pid:
        line = run(cli, db, folder)
    _names(line, "flyway_schema_history", pid, "ACCESS EXCLUSIVE")
    assert "nothing was applied" in line and "b" not in db.tables()


def test_a_tenants_bookkeeping_table_locked_names_it_in_that_schemas_line(cli, db, pg, sql_dir):
    db.query("CREATE SCHEMA a")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "a", env=db.db_env()))
    add_migration(sql_dir, "0002_t", "CREATE TABLE t (id int);\n")
    with locked(pg, db, "a._yoyo_migration", "ACCESS EXCLUSIVE") as pid:
        result = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--lock-retry-budget", "1", env=db.db_env())
    assert result.exit_code == LOCKED, result.output
    failed = next(line for line in result.stderr.splitlines() if line.startswith("[a] FAILED") or "error:" in line)
    assert f'bookkeeping table "a"."_yoyo_migration" waited longer than lock_timeout: held by pid {pid} ' in failed, \
        result.output
    assert "nothing was applied" in failed and "unexpected" not in result.output


def test_a_non_transactional_files_checksum_timed_out_says_all_committed_and_to_mark_it(cli, db, pg, sql_dir):
    add_migration(sql_dir, "0002_x", "CREATE TABLE hx (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0003_add", "-- transactional: false\nALTER TABLE hx ADD COLUMN z int;\n")
    with locked(pg, db, "public._hcm_migration_checksum", "EXCLUSIVE") as pid:
        line = run(cli, db, sql_dir)
    _names(line, "_hcm_migration_checksum", pid, "EXCLUSIVE")
    assert "not transactional: its statements all ran and COMMITTED, but recording 0003_add as applied timed out" in line
    assert "run `runner.py sql mark 0003_add` (it must not run twice)" in line, line
    assert column_z(db) == 1
    ok(cli("sql", "mark", "0003_add", "--sql-dir", sql_dir, env=db.db_env()))  # (the way out it names works)
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert applied(db) == [SEED, "0002_x", "0003_add"]
