"""The checks before a run meet a table another session locks (attack24c items 5 and 6): the rewrite judge's size
read and the schema description wait for no lock beyond the run's own lock timeout and never crash on it; the
migration itself then waits, retried, naming who blocks it."""

import threading

from conftest import SEED, add_migration, applied, one_error_line
from test_live_traffic import connect, seeded  # noqa: F401
from test_rewrites import FILL, TABLE


def holding_access_exclusive(db, seconds: float):
    """Another session holding ACCESS EXCLUSIVE on the table for `seconds` (a maintenance job's LOCK)."""
    holder = connect(db, application_name="maintenance")
    holder.cursor().execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
    threading.Timer(seconds, holder.close).start()
    return holder


def test_the_size_read_of_a_locked_table_is_no_crash_and_the_migration_waits_its_turn(cli, db, sql_dir, seeded):
    db.query(FILL.format(table=TABLE, rows=50) + f"; ANALYZE {TABLE}")
    add_migration(sql_dir, "0002_not_null", f"-- accept-rewrite: public.{TABLE}\n"
                                            f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n")
    holder = holding_access_exclusive(db, 2.5)
    try:
        result = cli("migrate", "--sql-dir", sql_dir, "--rewrite-threshold-rows", "10", env=seeded)
    finally:
        holder.close()
    assert "unexpected" not in result.output, result.output
    assert result.exit_code == 0, result.output
    assert "lock not granted" in result.stderr and "application_name 'maintenance'" in result.stderr, result.stderr
    assert applied(db) == [SEED, "0002_not_null"]


def test_a_locked_table_s_size_is_read_from_the_catalog_so_a_big_one_is_still_refused(cli, db, sql_dir, seeded):
    db.query(FILL.format(table=TABLE, rows=50) + f"; ANALYZE {TABLE}")
    path = add_migration(sql_dir, "0002_type", f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    holder = holding_access_exclusive(db, 30)
    try:
        result = cli("migrate", "--sql-dir", sql_dir, "--rewrite-threshold-rows", "10", env=seeded)
    finally:
        holder.close()
    assert result.exit_code == 2, result.output
    assert f"{path}:1: ALTER COLUMN id TYPE bigint rewrites public.{TABLE} (~50 rows" in result.stderr, result.stderr
    assert applied(db) == [SEED]


def test_the_schema_description_waits_for_a_lock_in_retried_tries_naming_the_holder(cli, db, sql_dir, seeded):
    """A maintenance job's ACCESS EXCLUSIVE on a table the migration does not touch (its DEFAULT makes the
    description lock it): each try waits the run's lock timeout, one line each names the holder; the migration
    runs once it has ended."""
    db.query("CREATE TABLE hcm_audit (id int, at timestamptz DEFAULT now())")
    add_migration(sql_dir, "0002_x", f"ALTER TABLE {TABLE} ADD COLUMN x int;\n")
    holder = connect(db, application_name="maintenance")
    holder.cursor().execute("LOCK TABLE hcm_audit IN ACCESS EXCLUSIVE MODE")
    pid = holder.info.backend_pid
    threading.Timer(2, holder.close).start()
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    finally:
        holder.close()
    assert result.exit_code == 0 and "unexpected" not in result.output, result.output
    waits = [line for line in result.stderr.splitlines() if "schema description: lock" in line]
    assert waits and "lock not granted within 300 ms (lock_timeout) reading the catalog" in waits[0], result.stderr
    assert f"blocked by pid {pid} (holds ACCESS EXCLUSIVE on public.hcm_audit; application_name 'maintenance'" in waits[0]
    assert f"SELECT pg_terminate_backend({pid})" in waits[0] and "of the lock retry budget left" in waits[0]
    assert applied(db) == [SEED, "0002_x"]


def test_a_lock_outlasting_the_budget_ends_the_description_in_one_line(cli, db, sql_dir, seeded):
    """(The holder's application_name, its own to choose, is quoted: attack 23f, it read as more fields.)"""
    db.query("CREATE TABLE hcm_audit (id int, at timestamptz DEFAULT now())")
    add_migration(sql_dir, "0002_x", f"ALTER TABLE {TABLE} ADD COLUMN x int;\n")
    holder = connect(db, application_name="job, user postgres\nforged")
    holder.cursor().execute("LOCK TABLE hcm_audit IN ACCESS EXCLUSIVE MODE")
    pid = holder.info.backend_pid
    try:
        result = cli("migrate", "--sql-dir", sql_dir, "--lock-retry-budget", "1s", env=seeded)
    finally:
        holder.close()
    line = one_error_line(result)
    assert result.exit_code == 1 and "unexpected" not in result.output, result.output
    assert line.startswith("error: reading the schema's catalog: lock not granted within 300 ms"), line
    assert f"blocked by pid {pid} (holds ACCESS EXCLUSIVE on public.hcm_audit; application_name " \
           "'job, user postgres\\\\x0aforged', user " in line, line
    assert "--lock-retry-budget" in line and applied(db) == [SEED]
