"""The schema description's lock waits on every connection that describes a schema, not only a migration
session's (attack 23f, M2): a session holding ACCESS EXCLUSIVE on a table of a tenant's schema (another
service's long ALTER, a batch job's LOCK TABLE) made `migrate` (the tenant run's first survey) and `status` wait
silently until the read timeout blamed the network. Each read now waits one lock_timeout per try, retried within
the lock retry budget, one line each naming the holder; the budget spent, one line naming it."""

from __future__ import annotations

import threading

import pytest

from conftest import add_migration, one_error_line
from test_live_traffic import connect

SCHEMA = "t12"
# A table whose DEFAULT, CHECK and index the description reads (pg_get_expr, pg_get_indexdef lock it).
HELD = f"CREATE TABLE {SCHEMA}.zz (id int DEFAULT 1 PRIMARY KEY CHECK (id > 0))"
APP = "nightly batch, user postgres"  # its own to choose: quoted when named


@pytest.fixture
def tenant(cli, db, sql_dir):
    """A tenant schema migrated once, a table of another service's beside its own, and a 5 s read timeout (before
    the fix, the lock wait ended there as "no answer within 5 s ... went silent")."""
    env = {**db.db_env(), "SCHEMA_NAME": SCHEMA, "DB_READ_TIMEOUT": "5"}
    result = cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env=env)
    assert result.exit_code == 0, result.output
    db.query(HELD)
    return env


def holding(db, seconds: float | None = None):
    """A session holding ACCESS EXCLUSIVE on the other service's table (closed after `seconds` when given)."""
    holder = connect(db, application_name=APP)
    holder.cursor().execute(f"LOCK TABLE {SCHEMA}.zz IN ACCESS EXCLUSIVE MODE")
    if seconds is not None:
        threading.Timer(seconds, holder.close).start()
    return holder


def named(pid: int) -> str:
    return f"blocked by pid {pid} (holds ACCESS EXCLUSIVE on {SCHEMA}.zz; application_name '{APP}', user "


@pytest.mark.parametrize("command", ["migrate", "status", "plan", "doctor"])
def test_a_lock_on_a_tenant_table_is_waited_in_tries_naming_the_holder(cli, db, sql_dir, tenant, command):
    add_migration(sql_dir, "0002_orders", "CREATE TABLE orders (id int);\n")
    holder = holding(db, 2)
    pid = holder.info.backend_pid
    try:
        result = cli(command, "--sql-dir", sql_dir, env=tenant)
    finally:
        holder.close()
    assert result.exit_code == 0 and "unexpected" not in result.output, result.output
    assert "no answer within" not in result.output, result.output
    waits = [line for line in result.stderr.splitlines() if "lock not granted within 300 ms" in line]
    assert waits and named(pid) in waits[0], result.output
    assert "of the lock retry budget left" in waits[0], waits[0]
    pending = db.query(f"SELECT to_regclass('{SCHEMA}.orders') IS NULL")[0][0]
    assert pending is (command != "migrate")


@pytest.mark.parametrize("command", ["migrate", "status"])
def test_a_lock_outlasting_the_budget_is_one_line_naming_the_holder(cli, db, sql_dir, tenant, command):
    holder = holding(db)
    pid = holder.info.backend_pid
    try:
        result = cli(command, "--sql-dir", sql_dir, env={**tenant, "DB_LOCK_RETRY_BUDGET": "1s"})
    finally:
        holder.close()
    line = one_error_line(result)
    assert result.exit_code == 1 and "unexpected" not in result.output, result.output
    assert "lock not granted within 300 ms (lock_timeout)" in line and "lock retry budget spent" in line, line
    assert named(pid) in line and "DB_LOCK_RETRY_BUDGET" in line, line


def test_an_unreadable_lock_setting_still_bounds_a_read_only_commands_waits(cli, db, sql_dir, tenant):
    """`status` does not use DB_LOCK_TIMEOUT itself, so a bad value is not its error; the description's waits then
    keep the defaults rather than waiting unbounded until the read timeout."""
    holder = holding(db, 2)
    pid = holder.info.backend_pid
    try:
        result = cli("status", "--sql-dir", sql_dir, env={**tenant, "DB_LOCK_TIMEOUT": "soon"})
    finally:
        holder.close()
    assert result.exit_code == 0 and "no answer within" not in result.output, result.output
    waits = [line for line in result.stderr.splitlines() if "lock not granted within 300 ms" in line]
    assert waits and named(pid) in waits[0], result.output


def test_a_held_tables_name_with_a_line_break_cannot_forge_a_line(cli, db, sql_dir, tenant):
    """attack23h table_newline: the name came raw from regclass, so the line split and its second half read as the
    runner's own "error:" line; it is now escaped (\\n) wherever a held or waited relation is named."""
    forged = 'zz\nerror: migrate failed in 1 of 1 schema(s)'
    db.query(f'CREATE TABLE {SCHEMA}."{forged}" (id int DEFAULT 1 PRIMARY KEY)')
    holder = connect(db, application_name=APP)
    holder.cursor().execute(f'LOCK TABLE {SCHEMA}."{forged}" IN ACCESS EXCLUSIVE MODE')
    try:
        result = cli("status", "--sql-dir", sql_dir, env={**tenant, "DB_LOCK_RETRY_BUDGET": "1s"})
    finally:
        holder.close()
    line = one_error_line(result)
    assert f'ACCESS EXCLUSIVE on {SCHEMA}."zz\\nerror: migrate failed' in line, result.stderr
    assert not any(text.startswith("error: migrate") for text in result.stderr.splitlines()), result.stderr
