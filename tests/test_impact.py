"""`plan --impact` against the real server: lock modes and rewrites as PostgreSQL reports them; the live database untouched."""

from __future__ import annotations

import json
import re

import pytest

from conftest import schema_dump
from test_schema_proof import scratch_databases

TABLE = "hcm_report_metadata"
CASES = {
    "0002_add_column": f"ALTER TABLE {TABLE} ADD COLUMN note text;\n",
    "0003_add_volatile_default": f"ALTER TABLE {TABLE} ADD COLUMN score double precision DEFAULT random();\n",
    # varchar -> text is binary coercible (no rewrite); text -> integer rewrites: only the server can tell.
    "0004_alter_types": f"ALTER TABLE {TABLE} ALTER COLUMN report_name TYPE text;\n"
                        f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE integer USING tenant_id::integer;\n",
    "0005_constraints": f"ALTER TABLE {TABLE} ADD CONSTRAINT positive_id CHECK (id > 0);\n"
                        f"ALTER TABLE {TABLE} ADD CONSTRAINT small_id CHECK (id < 1000000000) NOT VALID;\n"
                        f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT small_id;\n",
    "0006_index": f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id);\n",
    "0007_index_concurrently": f"-- transactional: false\nCREATE INDEX CONCURRENTLY idx_dag_run ON {TABLE} (dag_run_id);\n",
    "0008_update": f"UPDATE {TABLE} SET dag_name = upper(dag_name);\n",
    "0009_rename": f"ALTER TABLE {TABLE} RENAME COLUMN dag_name TO dag_label;\n",
    "0010_drop": "DROP INDEX idx_hcm_report_frequency;\nCREATE TABLE scratchpad (id int);\nDROP TABLE scratchpad;\n",
}


def live_state(db) -> tuple:
    return (schema_dump(db), db.query(f"SELECT * FROM {TABLE} ORDER BY id"),
            db.query("SELECT migration_id FROM _yoyo_migration ORDER BY 1"))


@pytest.fixture
def measured(cli, db, pg, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    db.query(f"INSERT INTO {TABLE} (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, "
             "trigger_date, filestore_id, tenant_id) SELECT 'run-' || g, 'dag', 'C-' || g % 10, 'r', 'Daily', now(), "
             f"'f-' || g, (g % 5)::text FROM generate_series(1, 3000) g")
    db.query(f"ANALYZE {TABLE}")
    for name, text in CASES.items():
        (sql_dir / f"{name}.sql").write_text(text)
        (sql_dir / f"{name}.rollback.sql").write_text("SELECT 1;\n")
    before = live_state(db)
    result = cli("plan", "--impact", "--json", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert result.exit_code == 0, result.output
    assert live_state(db) == before  # the live database was only read
    assert scratch_databases(pg) == []  # and the scratch database is gone
    report = json.loads(result.stdout)
    return {m["id"]: m for m in report["migrations"]}, cli, db, sql_dir


def locks(statement) -> dict[str, str]:
    return {lock["relation"]: lock["mode"] for lock in statement["locks"]}


def test_lock_modes_and_rewrites_as_the_server_reports_them(measured):
    found, *_ = measured
    assert list(found) == list(CASES)
    (add,) = found["0002_add_column"]["statements"]
    assert locks(add) == {TABLE: "ACCESS EXCLUSIVE"} and add["rewrites"] == []
    (volatile,) = found["0003_add_volatile_default"]["statements"]
    assert locks(volatile)[TABLE] == "ACCESS EXCLUSIVE" and TABLE in volatile["rewrites"]
    coercible, converted = found["0004_alter_types"]["statements"]
    assert locks(coercible)[TABLE] == "ACCESS EXCLUSIVE" and coercible["rewrites"] == []
    assert TABLE in converted["rewrites"] and TABLE not in locks(converted)  # the first one took the table's lock
    assert "idx_hcm_report_campaign" in converted["rewrites"]  # its indexes are rebuilt, under ACCESS EXCLUSIVE
    assert set(locks(converted).values()) == {"ACCESS EXCLUSIVE"}
    check, not_valid, validate = found["0005_constraints"]["statements"]
    assert locks(check) == {TABLE: "ACCESS EXCLUSIVE"} and check["rewrites"] == []
    assert not_valid["locks"] == []  # ACCESS EXCLUSIVE already held by this transaction
    assert validate["locks"] == []
    (index,) = found["0006_index"]["statements"]
    assert locks(index) == {TABLE: "SHARE"}
    assert index["locks"][0]["blocks"] == "blocks writes (INSERT, UPDATE, DELETE); reads go on"
    (concurrently,) = found["0007_index_concurrently"]["statements"]
    assert locks(concurrently) == {TABLE: "SHARE UPDATE EXCLUSIVE"}
    assert concurrently["waits_for"][0].startswith("every transaction older than it")
    assert "no other open transaction" in concurrently["waits_for"][1]
    (update,) = found["0008_update"]["statements"]
    new_index = next(lock for lock in update["locks"] if lock["relation"] == "idx_tenant")
    assert new_index["live_bytes"] is None  # made by a pending migration: not on the live database
    assert locks(update)[TABLE] == "ROW EXCLUSIVE" and locks(update)["idx_hcm_report_campaign"] == "ROW EXCLUSIVE"
    assert update["rewrites"] == []
    (rename,) = found["0009_rename"]["statements"]
    assert locks(rename) == {TABLE: "ACCESS EXCLUSIVE"}
    drop, create, drop_new = found["0010_drop"]["statements"]
    assert locks(drop) == {TABLE: "ACCESS EXCLUSIVE", "idx_hcm_report_frequency": "ACCESS EXCLUSIVE"}
    assert create["locks"] == [] and drop_new["locks"] == []  # a table this migration made: nobody else sees it


def test_sizes_come_from_the_live_database(measured):
    found, *_ = measured
    (volatile,) = found["0003_add_volatile_default"]["statements"]
    (lock,) = [lock for lock in volatile["locks"] if lock["relation"] == TABLE]
    assert lock["live_rows"] == 3000 and lock["live_bytes"] > 100_000
    assert lock["blocks"] == "blocks reads and writes"


def test_not_valid_and_validate_measured_in_their_own_migrations(cli, db, pg, sql_dir):
    (sql_dir / "0002_tenant.sql").write_text("CREATE TABLE tenant (id int PRIMARY KEY);\n")
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0  # built on scratch too
    files = {"0003_fk_not_valid": f"ALTER TABLE {TABLE} ADD CONSTRAINT fk_t FOREIGN KEY (id) REFERENCES tenant NOT VALID;\n",
             "0004_validate": f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT fk_t;\n",
             "0005_check_not_valid": f"ALTER TABLE {TABLE} ADD CONSTRAINT c CHECK (id > 0) NOT VALID;\n"}
    for name, text in files.items():
        (sql_dir / f"{name}.sql").write_text(text)
    result = cli("plan", "--impact", "--json", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert result.exit_code == 0, result.output
    found = {m["id"]: m["statements"][0] for m in json.loads(result.stdout)["migrations"]}
    assert locks(found["0003_fk_not_valid"]) == {TABLE: "SHARE ROW EXCLUSIVE", "tenant": "SHARE ROW EXCLUSIVE",
                                                 "tenant_pkey": "ACCESS SHARE"}
    assert locks(found["0004_validate"])[TABLE] == "SHARE UPDATE EXCLUSIVE"
    assert locks(found["0005_check_not_valid"]) == {TABLE: "ACCESS EXCLUSIVE"}


def test_text_and_markdown_say_it_in_words(measured, pg):
    _found, cli, db, sql_dir = measured
    text = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert text.exit_code == 0, text.output
    (line,) = [line for line in text.stdout.splitlines() if line.startswith("  line 2: ALTER TABLE") and "tenant_id" in line]
    assert line.startswith(f"  line 2: ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE integer USING tenant_id::integer: "
                           "ACCESS EXCLUSIVE on index hcm_report_metadata_pkey (")  # the table's lock came with line 1
    assert f" kB): blocks reads and writes; rewrites {TABLE} (~3.0 k rows, " in line
    assert re.search(r"and rebuilds its 7 index\(es\) hcm_report_metadata_pkey \(primary key\), uk_hcm_report_filestore_id "
                     r"\(unique\), idx_hcm_report_campaign, .*: (under 1 s|~\d+ s) at the scratch server's measured speed$", line)
    assert f"    ACCESS EXCLUSIVE on table {TABLE} (~3.0 k rows, " in text.stdout
    assert f"    rewrites table {TABLE} (~3.0 k rows, " in text.stdout
    markdown = cli("plan", "--impact", "--markdown", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(),
                   env=db.db_env())
    assert markdown.exit_code == 0, markdown.output
    lines = markdown.stdout.splitlines()
    assert "### 0006_index (locks held until COMMIT)" in lines
    row = lines[lines.index("### 0006_index (locks held until COMMIT)") + 4]
    assert row.startswith(f"| 1 | `CREATE INDEX idx_tenant ON {TABLE} (tenant_id);` | SHARE on table {TABLE} (~3.0 k rows")
    assert row.count("|") == 6
    assert scratch_databases(pg) == []


def test_a_statement_that_fails_on_the_scratch_database_is_reported_and_stops_there(cli, db, pg, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    (sql_dir / "0002_bad.sql").write_text(f"ALTER TABLE {TABLE} ADD COLUMN x int;\nALTER TABLE nope ADD COLUMN y int;\n")
    (sql_dir / "0003_after.sql").write_text(f"ALTER TABLE {TABLE} ADD COLUMN z int;\n")
    result = cli("plan", "--impact", "--json", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert result.exit_code == 1, result.output  # an incomplete report is not a pass
    report = json.loads(result.stdout)
    (bad,) = report["migrations"]
    assert 'relation "nope" does not exist' in bad["statements"][1]["error"]
    assert report["not_measured"] == ["0003_after"] and report["complete"] is False
    text = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert text.exit_code == 1
    assert text.stdout.splitlines()[-1].startswith("NOT measured: 0003_after (0002_bad line 2 failed on the scratch database")
    assert scratch_databases(pg) == []
