"""A type change that keeps the rows but builds an index keyed on the column again, because the key's operator class
or collation changes (attack24h findings 1, 2, 4, 5, 6): text -> citext, a COLLATE "C" column widened without COLLATE,
a domain with its own collation, an index or a collation made by an earlier pending file, the file's quoted
SET "TimeZone" and an earlier file's ALTER DATABASE / ROLE ... SET timezone. Each verdict checked against what the
real PostgreSQL does (relfilenodes)."""

from __future__ import annotations

import pytest

from conftest import SEED, add_migration, applied, migrate, ok
from test_rewrites import SMALL, TABLE, seeded
from test_rewrites_pending import _files, refused_by_migrate_and_plan

MARKER = f"-- accept-rewrite: public.{TABLE}\n"
OF = f" of public.{TABLE} (~50 rows"
OPCLASS = " (no rewrite, but each index on it is built again: its operator class changes) rebuilds index(es) "
COLLATION = " (no rewrite, but each index on it is built again: its collation changes) rebuilds index(es) "
TENANT_C = f'ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(50) COLLATE "C"; ' \
           f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id)"
TZ = f"ALTER TABLE {TABLE} ALTER COLUMN created_at TYPE timestamptz;\n"
UTC = "ALTER DATABASE {db} SET TimeZone = 'UTC'"

# (live setup, the pending files in run order, (index of the refused file, its line), what its refusal says)
REFUSED = {
    "text_to_citext": ("CREATE EXTENSION IF NOT EXISTS citext",
                       [f"ALTER TABLE {TABLE} ALTER COLUMN report_name TYPE citext;\n"], (0, 1),
                       "ALTER COLUMN report_name TYPE citext" + OPCLASS
                       + "idx_hcm_report_campaign_report_freq, idx_hcm_report_name" + OF),
    "varchar_to_citext_unique": (f"CREATE EXTENSION IF NOT EXISTS citext; ALTER TABLE {TABLE} ADD CONSTRAINT uq_run "
                                 "UNIQUE (dag_run_id)", [f"ALTER TABLE {TABLE} ALTER COLUMN dag_run_id TYPE citext;\n"],
                                 (0, 1), "ALTER COLUMN dag_run_id TYPE citext" + OPCLASS + "uq_run" + OF),
    # the column takes the new type's collation: "C" is lost, the index built again
    "collate_c_widened": (TENANT_C, [f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64);\n"], (0, 1),
                          "ALTER COLUMN tenant_id TYPE varchar(64)" + COLLATION + "idx_tenant" + OF),
    "domain_with_collation": (f'CREATE DOMAIN cdom AS text COLLATE "C"; CREATE INDEX idx_tenant ON {TABLE} (tenant_id)',
                              [f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE cdom;\n"], (0, 1),
                              "ALTER COLUMN tenant_id TYPE cdom" + COLLATION + "idx_tenant" + OF),
    "pending_domain_with_collation": (f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id)",
                                      ['CREATE DOMAIN cdom AS text COLLATE "C";\n',
                                       f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE cdom;\n"], (1, 1),
                                      "ALTER COLUMN tenant_id TYPE cdom" + COLLATION + "idx_tenant" + OF),
    # a collation a pending file creates differs from the column's: never "unexpected ... rerun with -v"
    "pending_collation": (f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id)",
                          ['CREATE COLLATION mycoll FROM "C";\n',
                           f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64) COLLATE mycoll;\n"], (1, 1),
                          "ALTER COLUMN tenant_id TYPE varchar(64) COLLATE mycoll" + COLLATION + "idx_tenant" + OF),
    # an index an earlier pending file builds counts as a live one does
    "pending_index_then_timestamptz": (UTC, ["-- transactional: false\nCREATE INDEX CONCURRENTLY idx_created ON "
                                             f"{TABLE} (created_at);\n", TZ], (1, 1),
                                       "ALTER COLUMN created_at TYPE timestamptz (no rewrite in TimeZone UTC, but each "
                                       "index on it is built again: its operator class changes) rebuilds index(es) "
                                       "idx_created" + OF),
    "pending_index_then_collate": ("SELECT 1", [MARKER + f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id);\n",
                                                f'ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64) '
                                                'COLLATE "C";\n'], (1, 1),
                                   'ALTER COLUMN tenant_id TYPE varchar(64) COLLATE "C"' + COLLATION + "idx_tenant"
                                   + OF),
    "pending_exclude_then_citext": ("CREATE EXTENSION IF NOT EXISTS citext",
                                    [MARKER + f"ALTER TABLE {TABLE} ADD CONSTRAINT ex_tenant EXCLUDE USING btree "
                                     "(tenant_id WITH =);\n",
                                     f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE citext;\n"],
                                    (1, 1), "ALTER COLUMN tenant_id TYPE citext" + OPCLASS + "ex_tenant" + OF),
    "pending_exclude_expression": ("SELECT 1", [MARKER + f"ALTER TABLE {TABLE} ADD CONSTRAINT ex_code EXCLUDE USING "
                                                "btree (lower(tenant_id) WITH =);\n",
                                                f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64);\n"],
                                   (1, 1), "ALTER COLUMN tenant_id TYPE varchar(64) (binary-coercible, but an index "
                                   "with an expression or a WHERE is built again) rebuilds index(es) ex_code" + OF),
    # the TimeZone: a quoted GUC name, an earlier file's ALTER DATABASE / ROLE ... SET (the next file's session)
    "quoted_timezone": (UTC, [f"SET \"TimeZone\" = 'America/New_York';\n{TZ}"], (0, 2),
                        "ALTER COLUMN created_at TYPE timestamptz (the file's TimeZone America/New_York is not UTC"),
    "alter_database_earlier": (UTC, ["ALTER DATABASE {db} SET timezone = 'America/New_York';\n", TZ], (1, 1),
                               "ALTER COLUMN created_at TYPE timestamptz (the session's TimeZone (set by ALTER DATABASE"
                               " / ROLE in an earlier pending file) is not UTC"),
    "alter_role_earlier": (UTC, ["ALTER ROLE CURRENT_USER SET \"TimeZone\" TO 'Asia/Tokyo';\n", TZ], (1, 1),
                           "ALTER COLUMN created_at TYPE timestamptz (the session's TimeZone (set by ALTER DATABASE"
                           " / ROLE in an earlier pending file) is not UTC"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_an_index_built_again_by_a_type_change_that_keeps_the_rows_is_refused_by_migrate_and_plan(cli, db, sql_dir,
                                                                                                 case):
    refused_by_migrate_and_plan(cli, db, sql_dir, REFUSED[case], lambda text: text.replace("{db}", db.name))


# (live setup, the file, the index the server builds again when it is accepted)
REBUILT = {
    "text_to_citext": ("CREATE EXTENSION IF NOT EXISTS citext; CREATE INDEX idx_tenant ON {} (tenant_id)",
                       f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE citext;\n"),
    "collate_c_widened": (TENANT_C, f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64);\n"),
    "domain_with_collation": ('CREATE DOMAIN cdom AS text COLLATE "C"; CREATE INDEX idx_tenant ON {} (tenant_id)',
                              f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE cdom;\n"),
}


@pytest.mark.parametrize("case", list(REBUILT))
def test_accepted_the_server_keeps_the_rows_and_builds_the_index_again_as_judged(cli, db, sql_dir, case):
    setup, text = REBUILT[case]
    seeded(cli, db, sql_dir)
    db.query(setup.format(TABLE))
    before = _files(db)
    add_migration(sql_dir, "0002_retype", MARKER + text)
    ok(migrate(cli, db, sql_dir, *SMALL))
    after = _files(db)
    assert sorted(n for n in before if after[n] != before[n]) == ["idx_tenant"], (before, after)


# (live setup, the file): the rows and every index kept, as judged
KEPT = {
    "varchar_widened": (f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id)",
                        f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64);\n"),
    "varchar_to_text_unique": (f"ALTER TABLE {TABLE} ADD CONSTRAINT idx_uq_run UNIQUE (dag_run_id)",
                               f"ALTER TABLE {TABLE} ALTER COLUMN dag_run_id TYPE text;\n"),
    "same_collation": (TENANT_C, f'ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64) COLLATE "C";\n'),
    "named_collation_of_the_index": (f'CREATE INDEX idx_tenant ON {TABLE} (tenant_id COLLATE "C")',
                                     f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE text;\n"),
    # a named operator class stays (pg_get_indexdef names it): citext is binary-coercible to text
    "named_opclass_of_the_index": (f"CREATE EXTENSION IF NOT EXISTS citext; CREATE INDEX idx_tenant ON {TABLE} "
                                   "(tenant_id text_pattern_ops)",
                                   f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE citext;\n"),
    "plain_domain": (f"CREATE DOMAIN pdom AS text; CREATE INDEX idx_tenant ON {TABLE} (tenant_id)",
                     f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE pdom;\n"),
    "pending_index_widened": ("SELECT 1", "-- transactional: false\nCREATE INDEX CONCURRENTLY idx_tenant ON "
                              f"{TABLE} (tenant_id);\nALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64);\n"),
}


@pytest.mark.parametrize("case", list(KEPT))
def test_a_type_change_that_keeps_every_operator_class_and_collation_runs_and_keeps_every_file(cli, db, sql_dir, case):
    setup, text = KEPT[case]
    seeded(cli, db, sql_dir)
    db.query(setup)
    before = _files(db)
    add_migration(sql_dir, "0002_retype", text)
    ok(migrate(cli, db, sql_dir, *SMALL))
    after = _files(db)
    assert {n: after[n] for n in before} == before, (before, after)


def test_a_misspelt_collation_is_left_to_the_server_one_line_no_crash(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    db.query(f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id)")
    path = add_migration(sql_dir, "0002_coll", f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64) "
                                               "COLLATE nosuchcoll;\n")
    plan = cli("plan", "--sql-dir", sql_dir, env={**db.db_env(), "REWRITE_THRESHOLD_ROWS": "10"})
    assert plan.exit_code == 0 and "unexpected" not in plan.output, plan.output
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 1 and "unexpected" not in result.output, result.output
    assert str(path) in result.stderr and 'collation "nosuchcoll"' in result.stderr, result.stderr
    assert applied(db) == [SEED]
