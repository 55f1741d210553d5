"""`plan --impact` (issue 24): catalog-only changes told from scans and rewrites under the same lock, every index a
rewrite rebuilds, and each scan's and rewrite's duration estimated from the live size and the server's speed."""

from __future__ import annotations

import json

from conftest import add_migration, migrate, ok
from test_rewrites import FILL, TABLE


def impact(cli, db, pg, sql_dir) -> dict:
    result = cli("plan", "--impact", "--json", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(),
                 env=db.db_env())
    assert result.exit_code == 0, result.output
    return {m["id"]: m["statements"] for m in json.loads(result.stdout)["migrations"]}


def test_same_lock_catalog_only_or_a_scan_and_every_index_a_rewrite_rebuilds(cli, db, pg, sql_dir):
    add_migration(sql_dir, "0002_tenants", "CREATE TABLE tenants (code varchar(50) PRIMARY KEY);\n"
                                           f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_set CHECK (tenant_id IS NOT NULL) NOT VALID;\n")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    db.query(FILL.format(table=TABLE, rows=2000) + f"; INSERT INTO tenants VALUES ('t0'), ('t1'), ('t2'); ANALYZE {TABLE}")
    add_migration(sql_dir, "0003_not_null_scans", f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n"
                                                  f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id DROP NOT NULL;\n")
    add_migration(sql_dir, "0004_validate", f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT tenant_set;\n")
    add_migration(sql_dir, "0005_not_null_instant", f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n")
    add_migration(sql_dir, "0006_fk", f"ALTER TABLE {TABLE} ADD CONSTRAINT fk_a FOREIGN KEY (tenant_id) "
                                      "REFERENCES tenants NOT VALID;\n"
                                      f"ALTER TABLE {TABLE} ADD CONSTRAINT fk_b FOREIGN KEY (tenant_id) REFERENCES tenants;\n")
    add_migration(sql_dir, "0007_bigint", f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    found = impact(cli, db, pg, sql_dir)
    scan, _drop = found["0003_not_null_scans"]
    assert [w["work"] for w in scan["work"]] == ["scan"] and not scan["catalog_only"]
    assert scan["work"][0]["lock"] == "ACCESS EXCLUSIVE" and scan["work"][0]["live_rows"] == 2000
    assert scan["work"][0]["estimated_seconds"] > 0
    (validate,) = found["0004_validate"]
    assert validate["work"][0]["work"] == "validate" and validate["work"][0]["lock"].startswith("SHARE UPDATE EXCLUSIVE")
    (instant,) = found["0005_not_null_instant"]  # the same lock, but the validated CHECK proves it: no scan
    assert instant["catalog_only"] and instant["work"] == [] and instant["locks"][0]["mode"] == "ACCESS EXCLUSIVE"
    not_valid, validating = found["0006_fk"]
    assert not_valid["catalog_only"] and not_valid["work"] == []
    assert [(w["work"], w["lock"]) for w in validating["work"]] == [("scan", "SHARE ROW EXCLUSIVE")]
    (bigint,) = found["0007_bigint"]
    (rewrite,) = bigint["work"]
    assert rewrite["work"] == "rewrite" and rewrite["rebuilds"][:2] == ["hcm_report_metadata_pkey (primary key)",
                                                                         "uk_hcm_report_filestore_id (unique)"]
    assert len(rewrite["rebuilds"]) == 7 and rewrite["live_bytes"] > 100_000 and rewrite["estimated_seconds"] > 0
    text = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env()).stdout
    line = next(line for line in text.splitlines() if "0005" not in line and "SET NOT NULL" in line)
    assert "scans public.hcm_report_metadata (~2.0 k rows, " in line and "at the scratch server's measured speed" in line
    (line,) = [line for line in text.splitlines() if line.startswith("  line 1: ALTER TABLE") and "SET NOT NULL" in line
               and "catalog only" in line]
    assert "catalog only: no row is read or written" in line


def test_an_index_rebuilt_without_a_table_rewrite_and_a_new_columns_index_build_are_work(cli, db, pg, sql_dir):
    ok(migrate(cli, db, sql_dir, "--quiet"))
    db.query(FILL.format(table=TABLE, rows=2000) + f"; ANALYZE {TABLE}")
    add_migration(sql_dir, "0002_collate", f'ALTER TABLE {TABLE} ALTER COLUMN report_name TYPE varchar(100) COLLATE "C";\n')
    add_migration(sql_dir, "0003_unique_column", f"ALTER TABLE {TABLE} ADD COLUMN zz int UNIQUE;\n")
    found = impact(cli, db, pg, sql_dir)
    (collate,) = found["0002_collate"]
    assert not collate["catalog_only"], collate
    assert [w["work"] for w in collate["work"]] == ["reindex"], collate  # the column's indexes, not all of them
    assert "idx_hcm_report_name" in collate["work"][0]["rebuilds"] and "idx_hcm_report_campaign" not in \
        collate["work"][0]["rebuilds"]
    assert collate["work"][0]["live_rows"] == 2000 and collate["work"][0]["lock"] == "ACCESS EXCLUSIVE"
    (unique,) = found["0003_unique_column"]
    assert not unique["catalog_only"] and [w["work"] for w in unique["work"]] == ["index"], unique
    assert unique["work"][0]["lock"] == "ACCESS EXCLUSIVE"
