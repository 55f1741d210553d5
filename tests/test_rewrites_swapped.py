"""A live table swapped out under its name (attack24i 2): renamed (RENAME TO, SET SCHEMA, its schema renamed) and
its old name created again by a pending CREATE TABLE. "New" belongs to the created table, not to the name: a risky
statement on the renamed live table is refused by migrate and plan as on the live table, and nothing runs; the same
for a live domain renamed away while a pending CREATE DOMAIN takes its name. The created table itself stays new."""

from __future__ import annotations

import pytest

from conftest import SEED, applied, migrate, ok
from test_rewrites import SMALL, TABLE, seeded
from test_rewrites_pending import _files, _write

NEW = f"CREATE TABLE {{}} (id int, tenant_id varchar(50), report_name varchar(100));\n"
SWAP = f"ALTER TABLE {TABLE} RENAME TO rm_old;\n" + NEW.format(TABLE)
# (live setup, the pending files, what the refusal of the last file's line 1 says)
REFUSED = {
    "retype": ("SELECT 1", [SWAP, "ALTER TABLE rm_old ALTER COLUMN id TYPE bigint;\n"],
               f"ALTER COLUMN id TYPE bigint rewrites public.{TABLE}"),
    "plain_index": ("SELECT 1", [SWAP, "CREATE INDEX rm_tenant ON rm_old (tenant_id);\n"],
                    f"CREATE INDEX without CONCURRENTLY builds an index on public.{TABLE}"),
    "volatile_default": ("SELECT 1", [SWAP, "ALTER TABLE rm_old ADD COLUMN u uuid DEFAULT gen_random_uuid();\n"],
                         f"rewrites public.{TABLE}"),
    "set_not_null": ("SELECT 1", [SWAP, "ALTER TABLE rm_old ALTER COLUMN tenant_id SET NOT NULL;\n"],
                     f"scans public.{TABLE}"),
    # what is noted of the new table (a validated CHECK proving NOT NULL) is not the live one's
    "check_on_the_new_table": ("SELECT 1", [SWAP + f"ALTER TABLE {TABLE} ADD CONSTRAINT nn CHECK (tenant_id IS NOT "
                                                   "NULL);\n",
                                            "ALTER TABLE rm_old ALTER COLUMN tenant_id SET NOT NULL;\n"],
                               f"scans public.{TABLE}"),
    "index_tablespace": ("SELECT 1", [SWAP, "ALTER INDEX idx_hcm_report_name SET TABLESPACE pg_default;\n"],
                         f"copies an index of public.{TABLE}"),
    "citext_indexed": ("CREATE EXTENSION IF NOT EXISTS citext",
                       [SWAP, "ALTER TABLE rm_old ALTER COLUMN report_name TYPE citext;\n"],
                       f"idx_hcm_report_name of public.{TABLE}"),
    "set_schema_swap": ("CREATE SCHEMA archl", [f"ALTER TABLE {TABLE} SET SCHEMA archl;\n" + NEW.format(TABLE),
                                                f"ALTER TABLE archl.{TABLE} ALTER COLUMN id TYPE bigint;\n"],
                        f"ALTER COLUMN id TYPE bigint rewrites public.{TABLE}"),
    "schema_rename_swap": (f"CREATE SCHEMA archl; ALTER TABLE public.{TABLE} SET SCHEMA archl",
                           ["ALTER SCHEMA archl RENAME TO arch2;\nCREATE SCHEMA archl;\n" + NEW.format(f"archl.{TABLE}"),
                            f"ALTER TABLE arch2.{TABLE} ALTER COLUMN id TYPE bigint;\n"],
                           f"ALTER COLUMN id TYPE bigint rewrites archl.{TABLE}"),
    "domain_swap": ("CREATE DOMAIN d1v AS uuid DEFAULT gen_random_uuid()",
                    ["ALTER DOMAIN d1v RENAME TO d_old;\nCREATE DOMAIN d1v AS int;\n",
                     f"ALTER TABLE {TABLE} ADD COLUMN u d_old;\n"], f"rewrites public.{TABLE}"),
    "domain_set_schema_swap": ("CREATE DOMAIN d1v AS uuid DEFAULT gen_random_uuid(); CREATE SCHEMA archl",
                               ["ALTER DOMAIN d1v SET SCHEMA archl;\nCREATE DOMAIN d1v AS int;\n",
                                f"ALTER TABLE {TABLE} ADD COLUMN u archl.d1v;\n"], f"rewrites public.{TABLE}"),
    "function_swap": ("CREATE FUNCTION vf() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT (random() * 100)::int'",
                      ["ALTER FUNCTION vf() RENAME TO vf_old;\n"
                       "CREATE FUNCTION vf() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';\n",
                       f"ALTER TABLE {TABLE} ADD COLUMN v int DEFAULT vf_old();\n"], f"rewrites public.{TABLE}"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_live_table_swapped_out_under_its_name_is_judged_as_the_live_table(cli, db, sql_dir, case):
    setup, texts, what = REFUSED[case]
    seeded(cli, db, sql_dir)
    db.query(setup)
    before = _files(db)[TABLE]
    path = _write(sql_dir, texts)[-1]
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert f"{path}:1: " in result.stderr and what in result.stderr, result.stderr
    assert applied(db) == [SEED] and _files(db)[TABLE] == before
    plan = cli("plan", "--sql-dir", sql_dir, env={**db.db_env(), "REWRITE_THRESHOLD_ROWS": "10"})
    assert plan.exit_code == 0 and f"-- REFUSED by migrate: {path}:1: " in plan.stdout, plan.output


def test_the_table_created_under_the_old_name_is_new_and_the_live_one_is_left_alone(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    before = _files(db)[TABLE]
    _write(sql_dir, [SWAP, f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"
                           f"ALTER TABLE {TABLE} ADD COLUMN u uuid DEFAULT gen_random_uuid();\n"])
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert db.query("SELECT relfilenode FROM pg_class WHERE relname = 'rm_old'") == [(before,)]
