"""A unique index built CONCURRENTLY on data with duplicate keys (attack24h finding 9): the data needs fixing, not the
file, and status does not call a file PARTLY applied while it says that no statement of it committed."""

from __future__ import annotations

import re

from conftest import add_migration, migrate, ok
from test_rewrites import TABLE, seeded

BUILD = f"-- transactional: false\nCREATE UNIQUE INDEX CONCURRENTLY idx_dag_run ON {TABLE} (dag_run_id);\n"


def test_a_unique_build_failing_on_duplicates_says_to_fix_the_data_and_status_agrees_nothing_committed(cli, db,
                                                                                                       sql_dir):
    seeded(cli, db, sql_dir)
    db.query(f"UPDATE {TABLE} SET dag_run_id = 'dup' WHERE id IN (5, 6)")
    path = add_migration(sql_dir, "0002_unique", BUILD)
    for _ in range(2):  # the second run drops the INVALID index left by the first and fails the same way
        result = migrate(cli, db, sql_dir)
        assert result.exit_code == 1 and f"{path}:2: " in result.stderr, result.output
        assert "is duplicated" in result.stderr and "fix the data (the file is not wrong)" in result.stderr, \
            result.stderr
        assert "fix the file" not in result.stderr and "an earlier run left" not in result.stderr, result.stderr
        status = cli("status", "--sql-dir", sql_dir, env=db.db_env()).stdout
        assert re.search(r"0002_unique +pending, interrupted\n", status), status
        assert "no statement of it committed" in status, status
        assert "PARTLY" not in status, status
    db.query(f"UPDATE {TABLE} SET dag_run_id = 'run-6' WHERE id = 6")
    ok(migrate(cli, db, sql_dir))
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_dag_run'::regclass") == [(True,)]


def test_a_duplicate_row_the_file_inserts_still_says_fix_the_file(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    db.query(f"CREATE UNIQUE INDEX idx_dag_run ON {TABLE} (dag_run_id)")
    add_migration(sql_dir, "0002_insert", f"INSERT INTO {TABLE} (dag_run_id, dag_name, campaign_number, report_name, "
                  "trigger_frequency, trigger_date, filestore_id, tenant_id) VALUES ('run-1', 'd', 'c', 'r', 'Daily', "
                  "now(), 'f', 't');\n")
    result = migrate(cli, db, sql_dir)
    assert result.exit_code == 1 and "fix the file and run again" in result.stderr, result.output
