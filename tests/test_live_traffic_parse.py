"""Issue 24, fourth hostile pass: what the runner decides about a statement comes from PostgreSQL's own parse of
it, never from a word in its text (a comment, a literal, a quoted name saying "concurrently")."""

import threading
from contextlib import contextmanager

import pytest

from conftest import SEED, add_migration, applied
from test_live_traffic import connect, seeded  # noqa: F401 (a fixture)


@contextmanager
def writing(db, hold: float, table="hcm_report_metadata"):
    """An app session idle in transaction after a write (ROW EXCLUSIVE on `table`), closed after `hold` seconds."""
    conn = connect(db, application_name="app")
    try:
        conn.cursor().execute(f"UPDATE {table} SET report_name = report_name WHERE false")
        threading.Timer(hold, conn.close).start()
        yield conn.info.backend_pid
    finally:
        conn.close()


@pytest.mark.parametrize("statement", [
    "CREATE INDEX t_idx ON hcm_report_metadata (tenant_id) /* small: no need for concurrently */;",
    "CREATE INDEX t_idx ON hcm_report_metadata (tenant_id) WHERE report_name <> 'concurrently';",
    "CREATE INDEX \"t concurrently\" ON hcm_report_metadata (tenant_id);",
])
def test_a_plain_index_build_saying_concurrently_keeps_its_lock_timeout(cli, db, sql_dir, seeded, statement):
    """Before: the regex took it for a CONCURRENTLY build: lock_timeout off, it queued the app's writes behind a
    reader for that reader's whole life, never retried."""
    add_migration(sql_dir, "0002_idx", f"-- transactional: false\n{statement}\n")
    with writing(db, hold=2.5):
        result = cli("migrate", "--ddl-lock-timeout", "200ms", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    assert "0002_idx.sql:2: lock not granted within 200 ms" in result.stderr, result.stderr
    assert applied(db) == [SEED, "0002_idx"]
