"""migrator.lint on its own: squawk's findings, each file linted as it will run, lines counted from 1."""

import pytest

from conftest import add_migration
from migrator import lint, postgres


@pytest.fixture(autouse=True)
def needs_squawk():
    if lint.squawk_path() is None:
        pytest.skip("squawk is not installed here (requirements-dev.txt brings squawk-cli)")


def test_a_clean_folder_has_no_findings(sql_dir):
    assert lint.lint(postgres.read_migrations(sql_dir)) == []


def test_findings_name_file_line_and_rule_counted_from_one(sql_dir):
    path = add_migration(sql_dir, "0002_risky", "-- a comment\n\nALTER TABLE hcm_report_metadata ADD COLUMN c int NOT NULL;\n",
                         "ALTER TABLE hcm_report_metadata DROP COLUMN c;\n")
    findings = lint.lint(postgres.read_migrations(sql_dir))
    assert findings and {f.path for f in findings} == {str(path)}
    assert all(f.line == 3 for f in findings)
    assert str(findings[0]).startswith(f"{path}:3:")


def test_concurrently_is_fine_outside_a_transaction_and_flagged_inside_one(sql_dir):
    add_migration(sql_dir, "0002_idx", "-- transactional: false\nCREATE INDEX CONCURRENTLY IF NOT EXISTS idx_t ON hcm_report_metadata (tenant_id);\n",
                  "DROP INDEX CONCURRENTLY IF EXISTS idx_t;\n")
    add_migration(sql_dir, "0003_idx", "CREATE INDEX CONCURRENTLY idx_u ON hcm_report_metadata (created_at);\n",
                  "DROP INDEX idx_u;\n")
    findings = lint.lint(postgres.read_migrations(sql_dir))
    assert not [f for f in findings if "0002_idx" in f.path]
    assert [f for f in findings if "0003_idx" in f.path]
