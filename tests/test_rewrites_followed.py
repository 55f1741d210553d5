"""What earlier pending statements rename, drop or move that a later statement's verdict depends on (attack24h
findings 3, 7, 8): a RENAME TO / SET SCHEMA of a domain, type, function, schema or table is followed to the live
object; a dropped CHECK / NOT NULL no longer proves NOT NULL; tablespace moves; CHECKs that imply NOT NULL. Each
checked by migrate and plan on the real PostgreSQL, and where the server's own behaviour is the point, by it."""

from __future__ import annotations

import pytest

from conftest import add_migration, migrate, ok
from test_rewrites import SMALL, TABLE, seeded
from test_rewrites_pending import MARKER, VOLATILE_DOMAIN, _files, _write, refused_by_migrate_and_plan

VOLATILE_FUNCTION = "CREATE FUNCTION vf() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT (random() * 100)::int'"
LIVE_DOMAIN = "CREATE DOMAIN d1v AS uuid DEFAULT gen_random_uuid()"
RETYPE = "ALTER COLUMN id TYPE bigint rewrites {}.%s (~50 rows" % TABLE
NOT_NULL = f"ALTER COLUMN tenant_id SET NOT NULL without a validated CHECK (tenant_id IS NOT NULL) scans public.{TABLE}"

# (live setup, the pending files in run order, (index of the refused file, its line), what its refusal says)
REFUSED = {
    "renamed_domain": (LIVE_DOMAIN, ["ALTER DOMAIN d1v RENAME TO nicedom;\n",
                                     f"ALTER TABLE {TABLE} ADD COLUMN u nicedom;\n"], (1, 1),
                       f"ADD COLUMN u of domain nicedom, {VOLATILE_DOMAIN}"),
    "renamed_domain_as_type": (LIVE_DOMAIN, ["ALTER TYPE public.d1v RENAME TO nicedom;\n",
                                             f"ALTER TABLE {TABLE} ADD COLUMN u nicedom;\n"], (1, 1),
                               f"ADD COLUMN u of domain nicedom, {VOLATILE_DOMAIN}"),
    "domain_set_schema": (LIVE_DOMAIN + "; CREATE SCHEMA archl", ["ALTER DOMAIN d1v SET SCHEMA archl;\n",
                                                                  f"ALTER TABLE {TABLE} ADD COLUMN u archl.d1v;\n"],
                          (1, 1), f"ADD COLUMN u of domain archl.d1v, {VOLATILE_DOMAIN}"),
    "pending_domain_renamed": ("SELECT 1", ["CREATE DOMAIN pd AS uuid DEFAULT gen_random_uuid();\n"
                                            "ALTER DOMAIN pd RENAME TO pd2;\n",
                                            f"ALTER TABLE {TABLE} ADD COLUMN u pd2;\n"], (1, 1),
                               f"ADD COLUMN u of domain pd2, {VOLATILE_DOMAIN}"),
    "renamed_function": (VOLATILE_FUNCTION, ["ALTER FUNCTION vf() RENAME TO nicef;\n",
                                             f"ALTER TABLE {TABLE} ADD COLUMN v int DEFAULT nicef();\n"], (1, 1),
                         f"ADD COLUMN v DEFAULT nicef() (volatile: a value per row) rewrites public.{TABLE}"),
    "renamed_schema": (f"CREATE SCHEMA archl; ALTER TABLE public.{TABLE} SET SCHEMA archl",
                       ["ALTER SCHEMA archl RENAME TO arch2;\n",
                        f"ALTER TABLE arch2.{TABLE} ALTER COLUMN id TYPE bigint;\n"], (1, 1), RETYPE.format("archl")),
    "renamed_schema_then_table": (f"CREATE SCHEMA archl; ALTER TABLE public.{TABLE} SET SCHEMA archl",
                                  ["ALTER SCHEMA archl RENAME TO arch2;\n"
                                   f"ALTER TABLE arch2.{TABLE} RENAME TO big;\n"
                                   "ALTER TABLE arch2.big SET SCHEMA public;\n",
                                   "ALTER TABLE big ALTER COLUMN id TYPE bigint;\n"], (1, 1), RETYPE.format("archl")),
    # attack24h 7: what proved NOT NULL dropped by an earlier pending statement
    "check_dropped": (f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_nn CHECK (tenant_id IS NOT NULL)",
                      [f"ALTER TABLE {TABLE} DROP CONSTRAINT tenant_nn;\n",
                       f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n"], (1, 1), NOT_NULL),
    "pending_check_dropped": ("SELECT 1", [f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_nn CHECK (tenant_id IS NOT "
                                           f"NULL) NOT VALID;\nALTER TABLE {TABLE} VALIDATE CONSTRAINT tenant_nn;\n",
                                           f"ALTER TABLE {TABLE} DROP CONSTRAINT tenant_nn;\n"
                                           f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n"], (1, 2),
                              NOT_NULL),
    "not_null_constraint_dropped": (f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_nn NOT NULL tenant_id",
                                    [f"ALTER TABLE {TABLE} DROP CONSTRAINT tenant_nn;\n",
                                     f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n"], (1, 1), NOT_NULL),
    "drop_not_null": (f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL",
                      [f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id DROP NOT NULL;\n",
                       f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n"], (1, 1), NOT_NULL),
    # ... and tablespace moves, as ALTER TABLE ... SET TABLESPACE is
    "index_set_tablespace": (f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id)",
                             ["ALTER INDEX idx_tenant SET TABLESPACE pg_default;\n"], (0, 1),
                             f"ALTER INDEX idx_tenant SET TABLESPACE pg_default copies an index of public.{TABLE}"),
    "all_in_tablespace": ("SELECT 1", ["ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE elsewhere;\n"], (0, 1),
                          f"ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE elsewhere rewrites public.{TABLE}"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_statement_is_judged_after_what_earlier_pending_statements_rename_or_drop(cli, db, sql_dir, case):
    refused_by_migrate_and_plan(cli, db, sql_dir, REFUSED[case])


def test_the_server_rewrites_for_a_renamed_volatile_function_and_the_marker_accepts_it(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    db.query(VOLATILE_FUNCTION)
    before = _files(db)[TABLE]
    add_migration(sql_dir, "0002_rename", "ALTER FUNCTION vf() RENAME TO nicef;\n")
    add_migration(sql_dir, "0003_add", MARKER + f"ALTER TABLE {TABLE} ADD COLUMN v int DEFAULT nicef();\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db)[TABLE] != before  # rewritten, as the verdict said


def test_a_name_a_pending_rename_took_away_is_no_longer_the_live_table(cli, db, sql_dir):
    """The old name, made again by CREATE TABLE IF NOT EXISTS (not counted as new: it may exist), is an empty table:
    a volatile default on it rewrites nothing big, and is not refused as the live table's."""
    seeded(cli, db, sql_dir)
    before = _files(db)[TABLE]
    add_migration(sql_dir, "0002_rename", f"ALTER TABLE {TABLE} RENAME TO old_meta;\n"
                                          f"CREATE TABLE IF NOT EXISTS {TABLE} (id int);\n")
    add_migration(sql_dir, "0003_add", f"ALTER TABLE {TABLE} ADD COLUMN u uuid DEFAULT gen_random_uuid();\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert db.query(f"SELECT relfilenode FROM pg_class WHERE relname = 'old_meta'") == [(before,)]


# attack24h 8: false refusals (each runs: migrate exits 0 with the tests' 10-row threshold, the table's file kept)
PASSES = {
    "live_check_conjunct": (f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_ok CHECK (tenant_id IS NOT NULL AND "
                            "tenant_id <> '')", [f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n"]),
    "pending_check_conjunct": ("SELECT 1", [f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_ok CHECK (tenant_id <> '' AND "
                                            "(id > 0 AND tenant_id IS NOT NULL)) NOT VALID;\n",
                                            f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT tenant_ok;\n",
                                            f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n"]),
    "virtual_set_expression": (f"ALTER TABLE {TABLE} ADD COLUMN v int GENERATED ALWAYS AS (id * 2) VIRTUAL",
                               [f"ALTER TABLE {TABLE} ALTER COLUMN v SET EXPRESSION AS (id * 3);\n"]),
}


@pytest.mark.parametrize("case", list(PASSES))
def test_a_check_implying_not_null_and_a_virtual_columns_expression_are_not_refused(cli, db, sql_dir, case):
    setup, texts = PASSES[case]
    seeded(cli, db, sql_dir)
    db.query(setup)
    before = _files(db)[TABLE]
    _write(sql_dir, texts)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db)[TABLE] == before


@pytest.mark.parametrize("case", ["or", "stored"])
def test_a_check_that_does_not_imply_not_null_and_a_stored_columns_expression_are_still_refused(cli, db, sql_dir,
                                                                                                 case):
    seeded(cli, db, sql_dir)
    if case == "or":
        db.query(f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_ok CHECK (tenant_id IS NOT NULL OR id > 0)")
        path, what = add_migration(sql_dir, "0002_nn", f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n"), \
            NOT_NULL
    else:
        db.query(f"ALTER TABLE {TABLE} ADD COLUMN v int GENERATED ALWAYS AS (id * 2) STORED")
        path = add_migration(sql_dir, "0002_expr", f"ALTER TABLE {TABLE} ALTER COLUMN v SET EXPRESSION AS (id * 3);\n")
        what = f"ALTER COLUMN v SET EXPRESSION rewrites public.{TABLE}"
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:1: {what}" in result.stderr, result.output
