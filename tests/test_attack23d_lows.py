"""Attack 23d's lows: a forged application_name in a lock-wait line, a hard link out of sql/, full-width digits."""

from __future__ import annotations

import os

import pytest

from conftest import SEED, add_migration, applied, ok, one_error_line
from test_live_traffic import SECRET_QUERY, connect

FORGED = "x, user admin, from 10.9.9.9, active for 0 s"


def test_a_forged_application_name_is_quoted_in_the_blocker_line(cli, db, sql_dir):
    """The name is the blocker's own to choose: unquoted it read as other fields (another user, another host)."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n")
    blocker = connect(db, application_name=FORGED)
    try:
        blocker.cursor().execute(SECRET_QUERY)
        result = cli("migrate", "--lock-retry-budget", "1s", "--ddl-lock-timeout", "200ms", "--sql-dir", sql_dir,
                     env=db.db_env())
        pid = blocker.info.backend_pid
    finally:
        blocker.close()
    line = one_error_line(result)
    assert f"blocked by pid {pid} (application_name '{FORGED}', user {db.server.user}, from " in line, line
    assert applied(db) == [SEED]


def test_a_hard_link_in_sql_is_refused_in_one_line_and_never_printed(cli, tmp_path):
    secret = tmp_path / "credentials.txt"
    secret.write_text("password=hunter2\n")
    sql = tmp_path / "sql"
    sql.mkdir()
    os.link(secret, sql / "0001_a.sql")
    (sql / "0001_a.rollback.sql").write_text("SELECT 1;\n")
    result = cli("plan", "--offline", "--sql-dir", sql)
    line = one_error_line(result)
    assert result.exit_code == 2 and "0001_a.sql" in line and "is a hard link (2 names for one file" in line, line
    assert "hunter2" not in result.output


@pytest.mark.parametrize("args, env", [
    (["migrate", "--lock-timeout", "\uff15"], {}),  # a full-width 5
    (["migrate", "--lock-timeout", "1_0"], {}),
    (["sql", "rollback", "--count", "\uff11"], {}),
    (["migrate", "--parallel", "\u0662"], {}),  # an Arabic-Indic 2
    (["migrate", "--rewrite-threshold-rows", "1_000"], {}),
    (["mongo", "apply"], {"MONGO_PATCH_TIMEOUT": "\uff15"}),
])
def test_numbers_take_ascii_digits_only(cli, sql_dir, args, env):
    result = cli(*args, "--sql-dir", sql_dir, env=env) if args[0] != "mongo" else cli(*args, env=env)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "is not a number of seconds" in result.output or "is not a whole number" in result.output, result.output
