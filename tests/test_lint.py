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


@pytest.mark.parametrize("spelled, flagged", [
    ("CREATE FUNCTION find_a(n varchar) RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1 WHERE n = 'y' $$;",
     True),
    ("create or replace function find_a(n varchar) returns int language plpgsql\n  security definer as\n"
     "$f$ BEGIN RETURN 1; END $f$;", True),
    ("CREATE PROCEDURE p() LANGUAGE sql EXTERNAL SECURITY DEFINER AS 'SELECT 1';", True),
    ("CREATE FUNCTION find_a(n varchar) RETURNS int LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, "
     "pg_temp AS $$ SELECT 1 $$;", False),
    ('CREATE FUNCTION find_a() RETURNS int LANGUAGE sql SET "search_path" FROM CURRENT SECURITY DEFINER '
     "AS $$ SELECT 1 $$;", False),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY INVOKER AS $$ SELECT 1 /* security definer */ $$;", False),
    ("COMMENT ON TABLE hcm_report_metadata IS 'security definer';", False),
    # attack23u 13: a later ALTER makes it SECURITY DEFINER; a set path without pg_temp last (temp tables first)
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\nALTER FUNCTION f() SECURITY DEFINER;", True),
    ("ALTER ROUTINE f() SECURITY DEFINER SET search_path TO 'pg_catalog, pg_temp';", False),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER SET search_path = public AS 'SELECT 1';", True),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER SET search_path TO 'app, pg_temp' AS 'SELECT 1';",
     False),
])
def test_a_security_definer_function_without_its_own_search_path_is_a_finding(sql_dir, spelled, flagged):
    """attack23s 15 (second report): such a function runs as the migration user under its caller's search_path, so
    the caller's own `=` runs as the migration user. Failed before: `sql lint` passed it."""
    path = add_migration(sql_dir, "0002_definer", spelled + "\n")
    findings = [f for f in lint.lint(postgres.read_migrations(sql_dir)) if f.rule == lint.DEFINER]
    assert bool(findings) == flagged, findings
    if flagged:
        line = 2 if "\n  security" in spelled or "\nALTER" in spelled else 1
        assert str(findings[0]).startswith(f"{path}:{line}:") and "SET search_path = pg_catalog" in str(findings[0])


def test_sql_lint_fails_on_a_security_definer_function_without_search_path(cli, sql_dir):
    """Failed before: `lint: 2 migration(s) clean`, exit 0."""
    add_migration(sql_dir, "0002_definer", "CREATE FUNCTION find_a(n varchar) RETURNS int LANGUAGE sql SECURITY DEFINER "
                                           "AS $$ SELECT 1 WHERE n = 'y' $$;\n", "DROP FUNCTION find_a(varchar);\n")
    result = cli("sql", "lint", "--sql-dir", sql_dir)
    assert result.exit_code == 1 and "0002_definer.sql:1:60: security-definer-search-path: " in result.output, \
        result.output


@pytest.mark.parametrize("spelled, flagged", [
    ("GRANT ALL ON hcm_report_metadata TO PUBLIC;", True),
    ("grant select, trigger on table hcm_report_metadata to public;", True),
    ("GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO PUBLIC;", True),
    ("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO PUBLIC;", True),
    ("GRANT SELECT, INSERT, UPDATE, DELETE ON hcm_report_metadata TO PUBLIC;", False),
    ("GRANT ALL ON SEQUENCE hcm_report_metadata_id_seq TO PUBLIC;", False),
    ("GRANT ALL ON SCHEMA public TO PUBLIC;", False),
    ("REVOKE ALL ON hcm_report_metadata FROM PUBLIC;", False),
    ("ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM PUBLIC;", False),
    ("ALTER DEFAULT PRIVILEGES REVOKE GRANT OPTION FOR ALL ON TABLES FROM PUBLIC;", False),
    ("COMMENT ON TABLE hcm_report_metadata IS 'grant all on t to x';", False),
])
def test_a_migration_granting_trigger_on_tables_is_a_finding(sql_dir, spelled, flagged):
    """attack23s (second report) 3, within one run: a file's GRANT ALL lets the grantee add a trigger before the next
    file writes the table (the connect check saw no such right). Failed before: no finding."""
    path = add_migration(sql_dir, "0002_grant", spelled + "\n")
    findings = [f for f in lint.lint(postgres.read_migrations(sql_dir)) if f.rule == lint.TRIGGER_GRANT]
    assert bool(findings) == flagged, findings
    if flagged:
        assert str(findings[0]).startswith(f"{path}:1:")
