"""A read-only default (attack 23k): a reader endpoint, ALTER DATABASE ... SET default_transaction_read_only = on, or
the URL's options. Before: migrate waited the lock timeout out, then said the lock "is held" by a row nobody wrote;
on a fresh database it asked for GRANT CREATE ON SCHEMA public; doctor said "ready"."""

import pytest

from conftest import SEED, add_migration, applied, one_error_line

READ_ONLY_LINE = "runs this session read-only (a reader endpoint or hot standby, or default_transaction_read_only"


def _read_only_default(db) -> None:
    db.query(f'ALTER DATABASE "{db.name}" SET default_transaction_read_only = on')


def _with_read_only_options(db) -> dict:
    return {"DATABASE_URL": db.url + ("&" if "?" in db.url else "?")
            + "options=-c%20default_transaction_read_only%3Don"}


@pytest.mark.parametrize("command", [["migrate"], ["sql", "rollback", "--all"]])
def test_a_read_only_default_is_said_at_once_not_called_a_held_lock(cli, db, sql_dir, command):
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    _read_only_default(db)
    result = cli(*command, "--sql-dir", sql_dir, "--lock-timeout", "5", env=db.db_env())
    line = one_error_line(result)
    assert result.exit_code == 2 and READ_ONLY_LINE in line, line
    assert "is held" not in line and "connect to the writer" in line, line
    assert applied(db) == [SEED]
    assert db.query("SELECT count(*) FROM yoyo_lock") == [(0,)]


def test_on_a_fresh_database_a_read_only_default_is_not_a_missing_grant(cli, db, sql_dir):
    _read_only_default(db)
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert READ_ONLY_LINE in line and "GRANT" not in line, line
    assert db.tables() == set()


def test_the_urls_read_only_options_are_said_too(cli, db, sql_dir):
    result = cli("migrate", "--sql-dir", sql_dir, env=_with_read_only_options(db))
    assert READ_ONLY_LINE in one_error_line(result) and db.tables() == set()
    doctor = cli("doctor", "--sql-dir", sql_dir, env=_with_read_only_options(db))
    assert "default_transaction_read_only on in the URL's options" in doctor.output, doctor.output
    assert not doctor.stdout.rstrip().endswith("ready"), doctor.output
