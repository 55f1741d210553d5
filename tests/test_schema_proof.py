"""verify (up-down-up), adopt (by comparison), recording and live drift, schema.sql kept current."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PROJECT_ROOT
from schema_helpers import (REPO_SQL, db_target, migration_files, psql_all, server_target, with_kinds)

from migrator import postgres
from migrator.errors import MigratorError
from migrator.schema import adopt, snapshot, verify
from migrator.schema.generate import schema_text, stale_summary

T = "hcm_report_metadata"


def add(sql_dir: Path, name: str, up: str, down: str | None) -> None:
    (sql_dir / f"{name}.sql").write_text(up)
    if down is not None:
        (sql_dir / f"{name}.rollback.sql").write_text(down)


def scratch_databases(pg) -> list[str]:
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'hcm\\_scratch\\_%'")
        return [r[0] for r in cur.fetchall()]


# --- verify -------------------------------------------------------------------------------------

def test_verify_passes_on_the_repositorys_migrations_and_every_kind(pg, sql_dir):
    with_kinds(sql_dir)
    add(sql_dir, "0003_no_rollback", f"ALTER TABLE {T} ADD COLUMN note text;", None)
    report = verify.verify(server_target(pg), postgres.read_migrations(sql_dir))
    assert report.ok
    assert [(s.id, s.outcome) for s in report.steps] == [
        ("0001_create_hcm_report_metadata", "ok"), ("0002_every_kind", "ok"), ("0003_no_rollback", "irreversible")]
    assert report.lines()[-1] == ("verify: ok: 2 migration(s) roll back and re-apply exactly; "
                                  "irreversible: 0003_no_rollback")
    assert report.to_json()["failed"] is None
    assert scratch_databases(pg) == []


def test_verify_catches_a_rollback_that_forgets_an_index(pg, sql_dir):
    add(sql_dir, "0002_tenant", f"ALTER TABLE {T} ADD COLUMN region text; CREATE INDEX idx_region ON {T} (region);",
        "DROP INDEX idx_region;")  # forgets the column
    add(sql_dir, "0003_later", "CREATE TABLE later (id int);", "DROP TABLE later;")
    report = verify.verify(server_target(pg), postgres.read_migrations(sql_dir))
    assert not report.ok and report.failure.id == "0002_tenant"
    assert report.failure.outcome == "rollback differs"
    assert report.failure.changes == [f"column {T}.region added"]  # left behind by the rollback
    assert [s.id for s in report.steps] == ["0001_create_hcm_report_metadata", "0002_tenant"]  # stops there
    assert "  0002_tenant: FAILED: its rollback does not restore the schema before it:" in report.lines()
    assert scratch_databases(pg) == []


def test_verify_catches_a_forgotten_index_and_a_column_the_up_did_not_add(pg, sql_dir):
    add(sql_dir, "0002_index", f"CREATE INDEX idx_tenant ON {T} (tenant_id);", "SELECT 1;")
    report = verify.verify(server_target(pg), postgres.read_migrations(sql_dir))
    assert report.failure.changes == [f"index idx_tenant ON {T} added"]

    (sql_dir / "0002_index.rollback.sql").write_text(f"DROP INDEX idx_tenant; ALTER TABLE {T} DROP COLUMN tenant_id;")
    report = verify.verify(server_target(pg), postgres.read_migrations(sql_dir))
    assert report.failure.id == "0002_index"
    assert report.failure.changes == [f"column {T}.tenant_id dropped", f"comment on column {T}.tenant_id dropped"]


def test_verify_catches_a_migration_that_differs_when_applied_again(pg, sql_dir):
    # DDL that depends on data: the rollback restores the schema, not the counter, so the re-application differs.
    add(sql_dir, "0002_counter", "CREATE TABLE counter (n int); INSERT INTO counter VALUES (0);", "DROP TABLE counter;")
    add(sql_dir, "0003_numbered", "UPDATE counter SET n = n + 1;\n"
        "DO $$ BEGIN EXECUTE format('CREATE TABLE t%s (id int)', (SELECT n FROM counter)); END $$;",
        "DO $$ BEGIN EXECUTE format('DROP TABLE t%s', (SELECT n FROM counter)); END $$;")
    report = verify.verify(server_target(pg), postgres.read_migrations(sql_dir))
    assert report.failure.id == "0003_numbered" and report.failure.outcome == "re-apply differs"
    assert report.failure.changes == ["column t1.id dropped", "column t2.id added", "table t1 dropped", "table t2 added"]


def test_verify_from_an_id_and_unknown_ids(pg, sql_dir):
    add(sql_dir, "0002_a", "CREATE TABLE a (id int);", "DROP TABLE a;")
    add(sql_dir, "0003_b", "CREATE TABLE b (id int);", "DROP TABLE b;")
    report = verify.verify(server_target(pg), postgres.read_migrations(sql_dir), from_id="0003_b")
    assert report.applied_first == ["0001_create_hcm_report_metadata", "0002_a"]
    assert [s.id for s in report.steps] == ["0003_b"] and report.ok
    with pytest.raises(MigratorError, match=r"--from 0009_x: no migration has that id"):
        verify.verify(server_target(pg), postgres.read_migrations(sql_dir), from_id="0009_x")


def test_a_failing_migration_fails_in_one_line_and_leaves_no_scratch_database(pg, sql_dir):
    add(sql_dir, "0002_bad", "CREATE TABLE a (id int);\nCREATE TABLE a (id int);", "DROP TABLE a;")
    with pytest.raises(MigratorError, match=r"0002_bad\.sql:2"):
        verify.verify(server_target(pg), postgres.read_migrations(sql_dir))
    assert scratch_databases(pg) == []


# --- adopt --------------------------------------------------------------------------------------

def three_migrations(sql_dir: Path) -> None:
    add(sql_dir, "0002_region", f"ALTER TABLE {T} ADD COLUMN region text;", f"ALTER TABLE {T} DROP COLUMN region;")
    add(sql_dir, "0003_region_index", f"CREATE INDEX idx_region ON {T} (region);", "DROP INDEX idx_region;")


def test_adopt_marks_exactly_the_matching_prefix(pg, db, sql_dir):
    three_migrations(sql_dir)
    psql_all(db, migration_files(sql_dir)[:2])
    db.query("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); "
             "INSERT INTO alembic_version VALUES ('001')")  # what Alembic left: not part of the comparison
    migrations = postgres.read_migrations(sql_dir)
    target = db_target(db)
    with postgres.connect(target, read_only=True) as backend:
        report = adopt.adopt(backend, server_target(pg), migrations)
    assert report.matched == "0002_region"
    assert report.to_mark == ["0001_create_hcm_report_metadata", "0002_region"] and report.already == []
    assert report.lines()[0] == "adopt: the database matches the history up to 0002_region"
    assert "_yoyo_migration" not in db.tables()  # adopt without --yes wrote nothing

    with postgres.connect(target, read_only=False) as backend, postgres.locked(backend, target, 5, print):
        marked = adopt.mark_adopted(backend, migrations, report)
    assert marked == ["0001_create_hcm_report_metadata", "0002_region"]
    assert sorted(r[0] for r in db.query("SELECT migration_id FROM _yoyo_migration")) == marked
    with postgres.connect(target, read_only=True) as backend:
        recorded = snapshot.recorded(backend.connection, backend.bookkeeping_schema)
        assert (recorded.reason, recorded.last_migration) == ("adopt", "0002_region")
        assert [m.id for m in postgres.pending(backend, migrations)] == ["0003_region_index"]


def test_adopt_marks_nothing_on_a_hand_made_difference_and_shows_it(pg, db, sql_dir):
    three_migrations(sql_dir)
    psql_all(db, migration_files(sql_dir)[:1])
    db.query(f"ALTER TABLE {T} RENAME COLUMN campaign_number TO campaign_name")  # the old Alembic revision's name
    migrations = postgres.read_migrations(sql_dir)
    target = db_target(db)
    with postgres.connect(target, read_only=True) as backend:
        report = adopt.adopt(backend, server_target(pg), migrations)
    assert report.matched is None and report.closest == "0001_create_hcm_report_metadata"
    assert f"column {T}.campaign_name added" in report.changes
    assert f"column {T}.campaign_number dropped" in report.changes
    assert report.lines()[-1].startswith("adopt: nothing marked")
    with postgres.connect(target, read_only=False) as backend, postgres.locked(backend, target, 5, print):
        assert adopt.mark_adopted(backend, migrations, report) == []
    assert "_yoyo_migration" not in db.tables()  # nothing marked


# --- recording and live drift --------------------------------------------------------------------

def test_recorded_schema_and_live_drift(cli, db, sql_dir):
    target = db_target(db)
    with postgres.connect(target, read_only=False) as backend:
        report = snapshot.live_drift(backend.connection, backend.bookkeeping_schema)
    assert report.recorded is None and not report.drifted
    assert report.lines()[0].startswith("schema: no description recorded yet")

    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0  # records after applying
    with postgres.connect(target, read_only=True) as backend:
        first = snapshot.live_drift(backend.connection, backend.bookkeeping_schema).recorded
    assert first.last_migration == "0001_create_hcm_report_metadata" and first.reason == "migrate"

    db.query(f"CREATE INDEX idx_x ON {T} (tenant_id); ALTER TABLE {T} ALTER report_name TYPE varchar(200); "
             "CREATE TABLE foo (id int)")
    db.query("DROP INDEX idx_hcm_report_frequency")
    with postgres.connect(target, read_only=True) as backend:  # status: read-only
        report = snapshot.live_drift(backend.connection, backend.bookkeeping_schema)
    assert report.changes == [
        "column foo.id added", f"column {T}.report_name: character varying(100) NOT NULL -> character varying(200) NOT NULL",
        f"index idx_hcm_report_frequency ON {T} dropped", f"index idx_x ON {T} added", "table foo added"]
    assert report.drifted and report.to_json()["changes"] == report.changes
    assert report.lines()[0].startswith("schema: DRIFT since migrate at ")

    with postgres.connect(target, read_only=False) as backend:  # sql accept-drift
        snapshot.record(backend.connection, backend.bookkeeping_schema, "accept-drift")
        report = snapshot.live_drift(backend.connection, backend.bookkeeping_schema)
    assert not report.drifted and report.recorded.reason == "accept-drift"
    assert report.recorded.sha256 != first.sha256


# --- schema.sql --------------------------------------------------------------------------------------

def test_schema_sql_is_current(pg):
    """CI's check: schema.sql regenerated from sql/ on the suite's server must equal the committed one."""
    committed = (PROJECT_ROOT / "schema.sql").read_text(encoding="utf-8")
    problem = stale_summary(committed, schema_text(server_target(pg), REPO_SQL))
    assert problem is None, problem


def test_a_stale_schema_sql_is_named_in_one_line(pg, sql_dir):
    committed = (PROJECT_ROOT / "schema.sql").read_text(encoding="utf-8")
    add(sql_dir, "0002_region", f"ALTER TABLE {T} ADD COLUMN region text; CREATE TABLE foo (id int); "
                                f"DROP INDEX idx_hcm_report_name; COMMENT ON COLUMN {T}.tenant_id IS 'owner'", None)
    problem = stale_summary(committed, schema_text(server_target(pg), sql_dir))
    # Each object that differs, and how, readable at a glance (the header's new last migration goes unsaid).
    assert problem == ("schema.sql is out of date: table public.foo added; table public.hcm_report_metadata: column "
                       "region added; table public.hcm_report_metadata: comment on column "
                       "public.hcm_report_metadata.tenant_id changed; table public.hcm_report_metadata: index "
                       "idx_hcm_report_name removed; run `make schema` and commit it")
    # More than four: the rest counted.
    add(sql_dir, "0003_more", "CREATE TABLE a1 (id int); CREATE TABLE a2 (id int); CREATE VIEW v1 AS SELECT 1 AS one;", None)
    problem = stale_summary(committed, schema_text(server_target(pg), sql_dir))
    assert problem.startswith("schema.sql is out of date: table public.a1 added; table public.a2 added; table "
                              "public.foo added; table public.hcm_report_metadata: column region added; and 3 more; ")
