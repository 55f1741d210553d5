"""Issue 24 (attack24o low): `sql mark` and `sql rollback` when another session locks a bookkeeping table the command
writes: the one line and exit 4 migrate gives (bookkeeping_busy.py), not "unexpected LockNotAvailable ... rerun
with -v" (exit 1)."""

from __future__ import annotations

import pytest

from conftest import SEED, add_migration, applied, ok, one_error_line
from migrator.errors import LOCKED
from test_bookkeeping_busy import HOLDER, locked
from test_bookkeeping_holder import short_after_commit_wait  # noqa: F401 (autouse)
from test_settings import _in_thread


@pytest.mark.parametrize("table", ["_yoyo_migration", "_hcm_migration_checksum"])
def test_sql_mark_on_a_locked_bookkeeping_table_says_one_line(cli, db, pg, sql_dir, table):
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_x", "CREATE TABLE hx (id int);\n")
    with locked(pg, db, table, "EXCLUSIVE") as pid:
        result = cli("sql", "mark", "0002_x", "--sql-dir", sql_dir, env=db.db_env())
    line = one_error_line(result)
    assert result.exit_code == LOCKED, result.output
    assert "unexpected" not in line and "rerun with -v" not in line, line
    assert f'bookkeeping table "public"."{table}" waited longer than lock_timeout: held by pid {pid} ' in line, line
    assert f"application_name '{HOLDER}'" in line, line
    if table == "_yoyo_migration":  # nothing marked: marked by the rerun
        assert "sql mark on " in line and "nothing was marked" in line, line
        assert "run `runner.py sql mark 0002_x` again once that session has let go" in line, line
        ok(cli("sql", "mark", "0002_x", "--sql-dir", sql_dir, env=db.db_env()))
    else:  # marked, its checksum not recorded: accept-changes records it
        assert "0002_x are recorded as applied, but not yet in " in line, line
        assert "run `runner.py sql accept-changes 0002_x`" in line, line
        ok(cli("sql", "accept-changes", "0002_x", "--sql-dir", sql_dir, env=db.db_env()))
    assert applied(db) == [SEED, "0002_x"]
    assert db.query("SELECT migration_id FROM _hcm_migration_checksum WHERE migration_id = '0002_x'") == [("0002_x",)]


@pytest.mark.parametrize("table", ["_yoyo_migration", "_yoyo_log", "_hcm_migration_checksum"])
def test_sql_rollback_on_a_locked_bookkeeping_table_says_one_line(cli, db, pg, sql_dir, table):
    """(It did already, through the file's own step: kept beside mark's.)"""
    add_migration(sql_dir, "0002_x", "CREATE TABLE hx (id int);\n", rollback="DROP TABLE hx;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    with locked(pg, db, table, "EXCLUSIVE") as pid:
        result = cli("sql", "rollback", "--lock-retry-budget", "1", "--sql-dir", sql_dir, env=db.db_env())
    line = one_error_line(result)
    assert result.exit_code == LOCKED, result.output
    assert "unexpected" not in line and "rerun with -v" not in line, line
    assert f'"public"."{table}" waited longer than lock_timeout: held by pid {pid} ' in line, line


def test_sql_accept_changes_on_a_locked_checksum_table_says_one_line(cli, db, pg, sql_dir):
    """fix24ag low: accept-changes opened its connection without a lock timeout (as mark had): it waited unbounded."""
    add_migration(sql_dir, "0002_x", "CREATE TABLE hx (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_x", "CREATE TABLE hx (id int); -- reviewed\n")
    with locked(pg, db, "_hcm_migration_checksum", "EXCLUSIVE") as pid:
        result = _in_thread(lambda: cli("sql", "accept-changes", "0002_x", "--sql-dir", sql_dir, env=db.db_env()),
                            limit=60)
    assert result is not None, "accept-changes waited for the lock without bound"
    line = one_error_line(result)
    assert result.exit_code == LOCKED, result.output
    assert 'sql accept-changes on ' in line and "nothing was accepted" in line, line
    assert f'bookkeeping table "public"."_hcm_migration_checksum" waited longer than lock_timeout: held by pid {pid} ' \
        in line, line
    assert "run `runner.py sql accept-changes 0002_x` again" in line, line
    ok(cli("sql", "accept-changes", "0002_x", "--sql-dir", sql_dir, env=db.db_env()))
