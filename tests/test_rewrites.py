"""Rewrites and scans of big tables refused before a deploy runs (issue 24), on the real PostgreSQL."""

from __future__ import annotations

import json
import re

import pytest

from conftest import SEED, add_migration, applied, migrate, ok

TABLE = "hcm_report_metadata"
FILL = (f"INSERT INTO {{table}} (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, trigger_date, "
        "filestore_id, tenant_id) SELECT 'run-' || g, 'dag', 'C-' || g % 10, 'r', 'Daily', now(), 'f-' || g, "
        "'t' || g % 3 FROM generate_series(1, {rows}) g")
SMALL = ("--rewrite-threshold-rows", "10")  # the tests' threshold: 50 rows are "big"


def seeded(cli, db, sql_dir, rows: int = 50, analyze: bool = True, schema: str = "public"):
    """The seed applied and its table filled with `rows` rows (analyzed: the planner's estimate is known)."""
    ok(migrate(cli, db, sql_dir, "--quiet"))
    if rows:
        db.query(FILL.format(table=f"{schema}.{TABLE}", rows=rows))
    if analyze:
        db.query(f"ANALYZE {schema}.{TABLE}")


# (file text, what the refusal line says: the statement, the lock)
REFUSED = {
    "uuid_default": (f"ALTER TABLE {TABLE} ADD COLUMN ref uuid DEFAULT gen_random_uuid();\n",
                     "ADD COLUMN ref DEFAULT gen_random_uuid() (volatile", "ACCESS EXCLUSIVE"),
    "clock_default": (f"ALTER TABLE public.{TABLE} ADD COLUMN seen timestamptz DEFAULT clock_timestamp();\n",
                      "ADD COLUMN seen DEFAULT clock_timestamp()", "ACCESS EXCLUSIVE"),
    "random_default": (f'ALTER TABLE "public"."{TABLE}" ADD COLUMN score float8 DEFAULT random() * 10;\n',
                       "ADD COLUMN score DEFAULT random() * 10", "ACCESS EXCLUSIVE"),
    "serial_column": (f"ALTER TABLE {TABLE} ADD COLUMN seq bigserial;\n", "ADD COLUMN seq bigserial", "ACCESS EXCLUSIVE"),
    "int_to_bigint": (f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n", "ALTER COLUMN id TYPE", "ACCESS EXCLUSIVE"),
    "varchar_shrinks": (f"ALTER TABLE {TABLE} ALTER COLUMN report_name TYPE varchar(50);\n",
                        "ALTER COLUMN report_name TYPE", "ACCESS EXCLUSIVE"),
    # several subcommands: only the one that rewrites is named
    "second_subcommand": (f"ALTER TABLE ONLY {TABLE}\n    ADD COLUMN note text,\n    ALTER COLUMN tenant_id TYPE integer "
                          "USING length(tenant_id);\n", "ALTER COLUMN tenant_id TYPE", "ACCESS EXCLUSIVE"),
    "set_not_null": (f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n",
                     "ALTER COLUMN tenant_id SET NOT NULL without a validated CHECK", "ACCESS EXCLUSIVE"),
    "check": (f"ALTER TABLE {TABLE} ADD CONSTRAINT id_positive CHECK (id > 0);\n",
              "ADD CONSTRAINT id_positive CHECK without NOT VALID", "ACCESS EXCLUSIVE"),
    "foreign_key": (f"CREATE TABLE tenants (code varchar(50) PRIMARY KEY);\n"
                    f"INSERT INTO tenants SELECT DISTINCT tenant_id FROM {TABLE};\n"
                    f"ALTER TABLE {TABLE} ADD CONSTRAINT fk_tenant FOREIGN KEY (tenant_id) REFERENCES tenants (code);\n",
                    "ADD CONSTRAINT fk_tenant FOREIGN KEY without NOT VALID", "SHARE ROW EXCLUSIVE"),
    "plain_index": (f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id);\n",
                    "CREATE INDEX without CONCURRENTLY builds an index on", "under SHARE (writes wait)"),
    "unique_key": (f"ALTER TABLE {TABLE} ADD CONSTRAINT uk_run UNIQUE (dag_run_id);\n",
                   "ADD UNIQUE without USING INDEX", "ACCESS EXCLUSIVE"),
    "vacuum_full": (f"-- transactional: false\nVACUUM (FULL, ANALYZE) {TABLE};\n", "VACUUM FULL rewrites",
                    "ACCESS EXCLUSIVE"),
    "cluster": (f"CLUSTER {TABLE} USING idx_hcm_report_campaign;\n", "CLUSTER rewrites", "ACCESS EXCLUSIVE"),
    "unlogged": (f"ALTER TABLE {TABLE} SET UNLOGGED;\n", "SET UNLOGGED rewrites", "ACCESS EXCLUSIVE"),
    # (to another tablespace: one to the table's own is a no-op, test_rewrites_attack24p)
    "tablespace": (f"ALTER TABLE {TABLE} SET TABLESPACE elsewhere;\n", "SET TABLESPACE elsewhere rewrites",
                   "ACCESS EXCLUSIVE"),
    "reindex": (f"-- transactional: false\nREINDEX TABLE {TABLE};\n", "REINDEX TABLE without CONCURRENTLY rebuilds",
                "under ACCESS EXCLUSIVE (reads and writes wait)"),
    # a comment between the keywords is read as the server reads it
    "comment_between": (f"ALTER /* x */ TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n", "ALTER COLUMN id TYPE bigint",
                        "ACCESS EXCLUSIVE"),
    # a new column's constraint builds an index of, or scans, every row under the ADD COLUMN's lock
    "add_column_unique": (f"ALTER TABLE {TABLE} ADD COLUMN z int UNIQUE;\n", "ADD COLUMN z UNIQUE builds an index on",
                          "ACCESS EXCLUSIVE"),
    "add_column_check": (f"ALTER TABLE {TABLE} ADD COLUMN z int CHECK (z > 0);\n", "ADD COLUMN z CHECK (...) scans",
                         "ACCESS EXCLUSIVE"),
    "add_column_references": (f"ALTER TABLE {TABLE} ADD COLUMN parent int REFERENCES {TABLE} (id);\n",
                              "ADD COLUMN parent REFERENCES scans", "ACCESS EXCLUSIVE"),
    # a new collation of an indexed column rebuilds its indexes
    "collate": (f'ALTER TABLE {TABLE} ALTER COLUMN report_name TYPE varchar(100) COLLATE "C";\n',
                "ALTER COLUMN report_name TYPE varchar(100) COLLATE \"C\" (no rewrite, but each index on it is built "
                "again: its collation changes) rebuilds index(es) idx_hcm_report_campaign_report_freq, "
                "idx_hcm_report_name of", "ACCESS EXCLUSIVE"),
    # NOT VALID then VALIDATE in one ALTER TABLE: the scan runs under the ALTER's lock
    # PostgreSQL 18's NOT NULL constraint scans as SET NOT NULL does (attack24c item 3)
    "not_null_constraint": (f"ALTER TABLE {TABLE} ADD CONSTRAINT nn_tenant NOT NULL tenant_id;\n",
                            "ADD CONSTRAINT nn_tenant NOT NULL tenant_id without a validated CHECK", "ACCESS EXCLUSIVE"),
    "check_and_validate_in_one_alter": (f"-- transactional: false\nALTER TABLE {TABLE} ADD CONSTRAINT c_id CHECK (id > 0) "
                                        "NOT VALID, VALIDATE CONSTRAINT c_id;\n", "VALIDATE CONSTRAINT c_id", "ACCESS EXCLUSIVE"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_each_known_rewrite_or_scan_of_a_big_table_is_refused_before_anything_runs(cli, db, sql_dir, case):
    seeded(cli, db, sql_dir)
    text, what, lock = REFUSED[case]
    add_migration(sql_dir, "0002_harmless", "CREATE TABLE harmless (id int);\n")
    path = add_migration(sql_dir, "0003_" + case, "-- why: a test\n" + text)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    error = result.stderr[result.stderr.index("error: "):]
    line = 2 + text.count("\n", 0, text.rindex(TABLE))  # the statement's first line
    refused = [entry for entry in error.splitlines() if entry.startswith(("error: " + str(path), str(path)))]
    assert len(refused) == 1, error
    assert what in refused[0] and lock in refused[0], refused[0]
    assert f"public.{TABLE} (~50 rows" in refused[0] and "instead: " in refused[0], refused[0]
    assert f"`-- accept-rewrite: public.{TABLE}`" in refused[0]
    assert re.search(rf"{re.escape(str(path))}:{line}: ", refused[0]), refused[0]
    assert "nothing was applied" in error.splitlines()[-1]
    assert applied(db) == [SEED]  # not even the harmless file before it ran
    assert "harmless" not in db.tables()


# The same kinds of statement that PostgreSQL does without touching the rows (since PostgreSQL 11, 12).
ALLOWED = [
    f"ALTER TABLE {TABLE} ADD COLUMN seen timestamptz DEFAULT now();\n",
    f"ALTER TABLE {TABLE} ADD COLUMN born timestamp DEFAULT CURRENT_TIMESTAMP;\n",
    f"ALTER TABLE {TABLE} ADD COLUMN state text NOT NULL DEFAULT 'new';\n",
    f"ALTER TABLE {TABLE} ALTER COLUMN report_name TYPE varchar(200);\n",
    f"ALTER TABLE {TABLE} ALTER COLUMN dag_run_id TYPE text;\n",
    f"ALTER TABLE {TABLE} ADD CONSTRAINT id_positive CHECK (id > 0) NOT VALID;\n",
    f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT id_positive;\n",
    f"ALTER TABLE {TABLE} ALTER COLUMN id SET NOT NULL;\n",  # already NOT NULL (the primary key)
    f"ALTER TABLE {TABLE} ADD CONSTRAINT nn_tenant NOT NULL tenant_id NOT VALID;\n",  # PostgreSQL 18: no scan
    f"-- transactional: false\nCREATE INDEX CONCURRENTLY idx_tenant ON {TABLE} (tenant_id);\n",
]


def test_catalog_only_changes_of_a_big_table_run(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    for number, text in enumerate(ALLOWED, 2):
        add_migration(sql_dir, f"{number:04d}_allowed", text)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert len(applied(db)) == len(ALLOWED) + 1


def test_an_empty_table_a_table_created_in_the_same_run_and_a_small_one_are_never_refused(cli, db, sql_dir):
    seeded(cli, db, sql_dir, rows=0)  # empty (analyzed: 0 rows)
    add_migration(sql_dir, "0002_rewrite_empty", f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    add_migration(sql_dir, "0003_new", "CREATE TABLE events (id int, at timestamptz);\n"
                                       "INSERT INTO events SELECT g, now() FROM generate_series(1, 100) g;\n")
    add_migration(sql_dir, "0004_rewrite_new", "ALTER TABLE events ALTER COLUMN id TYPE bigint, "
                                               "ADD COLUMN ref uuid DEFAULT gen_random_uuid();\n"
                                               "CREATE INDEX idx_events_at ON events (at);\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert applied(db)[-1] == "0004_rewrite_new"
    db.query(FILL.format(table=TABLE, rows=10) + "; ANALYZE " + TABLE)  # 10 rows: not more than the threshold
    add_migration(sql_dir, "0005_small", f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE integer;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))


def test_the_marker_naming_the_table_accepts_the_cost_and_another_table_does_not(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_wrong_marker", f"-- accept-rewrite: public.other_table\n"
                                                f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    refused = migrate(cli, db, sql_dir, *SMALL)
    assert refused.exit_code == 2 and "0002_wrong_marker.sql:2: ALTER COLUMN id TYPE bigint" in refused.stderr
    (sql_dir / "0002_wrong_marker.sql").write_text(
        f"-- accept-rewrite: public.{TABLE}\n-- (reviewed: the table is small in production)\n"
        f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert db.query(f"SELECT data_type FROM information_schema.columns WHERE table_name = '{TABLE}' "
                    "AND column_name = 'id'") == [("bigint",)]


def test_a_check_validated_by_an_earlier_pending_file_lets_set_not_null_run(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_check", f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_set "
                                         "CHECK (tenant_id IS NOT NULL) NOT VALID;\n")
    add_migration(sql_dir, "0004_not_null", f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n")
    refused = migrate(cli, db, sql_dir, *SMALL)  # not validated: SET NOT NULL would scan
    assert refused.exit_code == 2 and "0004_not_null.sql:1: ALTER COLUMN tenant_id SET NOT NULL" in refused.stderr
    add_migration(sql_dir, "0003_validate", f"-- transactional: false\nALTER TABLE {TABLE} VALIDATE CONSTRAINT tenant_set;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert applied(db)[-1] == "0004_not_null"
    # A CHECK validated on the live database counts as well.
    add_migration(sql_dir, "0005_drop", f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id DROP NOT NULL;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    add_migration(sql_dir, "0006_again", f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))


def test_more_than_ten_thousand_rows_by_default_and_a_never_analyzed_table_is_counted(cli, db, sql_dir):
    ok(migrate(cli, db, sql_dir, "--quiet"))
    db.query("ALTER TABLE hcm_report_metadata SET (autovacuum_enabled = off)")  # stays never analyzed
    db.query(FILL.format(table=TABLE, rows=10_001))
    assert db.query(f"SELECT reltuples FROM pg_class WHERE relname = '{TABLE}'") == [(-1,)]
    path = add_migration(sql_dir, "0002_bigint", f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    result = migrate(cli, db, sql_dir)
    assert result.exit_code == 2 and f"{path}:1: ALTER COLUMN id TYPE bigint rewrites public.{TABLE} (~10.0 k rows" \
        in result.stderr, result.output
    assert "more than 10000" in result.stderr
    ok(migrate(cli, db, sql_dir, "--rewrite-threshold-rows", "20000"))


def test_plan_shows_the_verdicts_and_its_json_too(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_bigint", f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    add_migration(sql_dir, "0003_accepted", f"-- accept-rewrite: {TABLE}\nCLUSTER {TABLE} USING idx_hcm_report_name;\n")
    env = {**db.db_env(), "REWRITE_THRESHOLD_ROWS": "10"}
    text = cli("plan", "--sql-dir", sql_dir, env=env)
    assert text.exit_code == 0, text.output
    assert re.search(r"^-- REFUSED by migrate: .*0002_bigint.sql:1: ALTER COLUMN id TYPE bigint rewrites", text.stdout, re.M)
    assert re.search(r"^-- accepted: .*0003_accepted.sql:2: CLUSTER rewrites", text.stdout, re.M)
    data = json.loads(cli("plan", "--sql-dir", sql_dir, "--json", env=env).stdout)
    assert [(v["line"], v["accepted"], v["lock"]) for v in data["rewrites"]] == [(1, False, "ACCESS EXCLUSIVE"),
                                                                               (2, True, "ACCESS EXCLUSIVE")]
    assert cli("plan", "--sql-dir", sql_dir, "--json", env=db.db_env()).exit_code == 0
    assert json.loads(cli("plan", "--sql-dir", sql_dir, "--json", env=db.db_env()).stdout)["rewrites"] == []


def test_a_tenant_run_judges_each_schema_by_its_own_table(cli, db, sql_dir):
    env = {**db.db_env(), "SCHEMA_NAME": "big,small"}
    ok(cli("migrate", "--sql-dir", sql_dir, "--create-schemas", "--quiet", env=env))
    db.query(FILL.format(table=f"big.{TABLE}", rows=50) + f"; ANALYZE big.{TABLE}; ANALYZE small.{TABLE}")
    add_migration(sql_dir, "0002_bigint", f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    result = cli("migrate", "--sql-dir", sql_dir, *SMALL, env=env)
    assert result.exit_code == 2, result.output
    assert re.search(rf"\[big\] FAILED: .*0002_bigint.sql:1: ALTER COLUMN id TYPE bigint rewrites big.{TABLE}",
                     result.stderr), result.stderr
    assert [r[0] for r in db.query("SELECT migration_id FROM small._yoyo_migration ORDER BY 1")][-1] == "0002_bigint"
    assert [r[0] for r in db.query("SELECT migration_id FROM big._yoyo_migration ORDER BY 1")][-1] == SEED
    plan = cli("plan", "--sql-dir", sql_dir, "--json", *SMALL, env=env)
    verdicts = {schema: part["rewrites"] for schema, part in json.loads(plan.stdout)["schemas"].items()}
    assert [v["table"] for v in verdicts["big"]] == [f"big.{TABLE}"] and verdicts["small"] == [], verdicts


def test_a_partitioned_table_is_judged_by_its_partitions_rows(cli, db, sql_dir):
    add_migration(sql_dir, "0002_parted", "CREATE TABLE parted (id int, v int) PARTITION BY RANGE (id);\n"
                                          "CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM (0) TO (100);\n"
                                          "CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM (100) TO (200);\n")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    db.query("INSERT INTO parted SELECT g, g FROM generate_series(1, 150) g; ANALYZE parted")
    add_migration(sql_dir, "0003_bigint", "ALTER TABLE parted ALTER COLUMN v TYPE bigint;\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and "0003_bigint.sql:1: ALTER COLUMN v TYPE bigint rewrites public.parted (~150 rows" \
        in result.stderr, result.output


def test_quoted_identifiers_and_pg_dump_spelling_are_read_as_the_server_reads_them(cli, db, sql_dir):
    add_migration(sql_dir, "0002_quoted", 'CREATE SCHEMA "Sales";\nCREATE TABLE "Sales"."Report Rows" ("Id" int, v text);\n')
    ok(migrate(cli, db, sql_dir, "--quiet"))
    db.query('INSERT INTO "Sales"."Report Rows" SELECT g, g::text FROM generate_series(1, 50) g; '
             'ANALYZE "Sales"."Report Rows"')
    dump = ('ALTER TABLE ONLY "Sales"."Report Rows"\n    ADD CONSTRAINT "Report Rows_pkey" PRIMARY KEY ("Id");\n')
    path = add_migration(sql_dir, "0003_dump", "SET statement_timeout = 0;\n" + dump)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert f'{path}:2: ADD PRIMARY KEY without USING INDEX builds an index on "Sales"."Report Rows" (~50 rows' \
        in result.stderr
    assert '`-- accept-rewrite: "Sales"."Report Rows"`' in result.stderr
    add_migration(sql_dir, "0003_dump", '-- accept-rewrite: "Sales"."Report Rows"\n' + dump)
    ok(migrate(cli, db, sql_dir, *SMALL))


def test_a_line_break_in_a_quoted_name_cannot_end_plans_comment(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_evil", f'ALTER TABLE {TABLE} ADD COLUMN "x\nDROP TABLE {TABLE}; --" uuid '
                                        "DEFAULT gen_random_uuid();\n")
    plan = cli("plan", "--sql-dir", sql_dir, *SMALL, env=db.db_env())
    assert plan.exit_code == 0, plan.output
    (refused,) = [line for line in plan.stdout.splitlines() if line.startswith("-- REFUSED by migrate:")]
    assert f'ADD COLUMN x\\nDROP TABLE {TABLE}; -- DEFAULT gen_random_uuid()' in refused
    head = plan.stdout.split("\n\n", 1)[0].splitlines()  # the comments before the files' SQL
    assert refused in head and all(line.startswith("-- ") for line in head), head


def test_create_table_if_not_exists_of_a_big_table_does_not_make_it_new(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_again", f"CREATE TABLE IF NOT EXISTS {TABLE} (id int);\n"
                                         f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and "0002_again.sql:2: ALTER COLUMN id TYPE bigint" in result.stderr, result.output


def test_a_table_dropped_and_created_again_by_an_earlier_pending_file_is_new(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_replace", f"DROP TABLE {TABLE};\nCREATE TABLE public.{TABLE} (id int, note text);\n")
    add_migration(sql_dir, "0003_index", f"CREATE INDEX idx_note ON {TABLE} (note);\n")
    ok(migrate(cli, db, sql_dir, *SMALL))


def test_validate_in_the_transaction_that_added_the_constraint_scans_under_its_lock(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    both = (f"ALTER TABLE {TABLE} ADD CONSTRAINT id_positive CHECK (id > 0) NOT VALID;\n"
            f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT id_positive;\n")
    path = add_migration(sql_dir, "0002_check", both)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert f"{path}:2: VALIDATE CONSTRAINT id_positive in the transaction of an earlier ALTER TABLE of the table scans " \
           f"public.{TABLE}" in result.stderr and "instead: VALIDATE CONSTRAINT in a later file" in result.stderr
    add_migration(sql_dir, "0002_check", "-- transactional: false\n" + both)  # each statement commits alone
    ok(migrate(cli, db, sql_dir, *SMALL))


def test_an_update_of_every_row_after_an_alter_table_in_the_same_transaction_is_refused(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    path = add_migration(sql_dir, "0002_fill", f"ALTER TABLE {TABLE} ADD COLUMN state text;\n"
                                               f"UPDATE {TABLE} SET state = 'new';\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert f"{path}:2: UPDATE without WHERE in the transaction of an earlier ALTER TABLE of the table writes every " \
           f"row of public.{TABLE}" in result.stderr and "`-- backfill: batch`" in result.stderr
    add_migration(sql_dir, "0002_fill", f"ALTER TABLE {TABLE} ADD COLUMN state text;\n"
                                        f"UPDATE {TABLE} SET state = 'new' WHERE id = 1;\n"  # a row or a few: fine
                                        f"DELETE FROM {TABLE} WHERE id IN (2, 3) AND state IS NULL;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert db.query(f"SELECT count(*) FILTER (WHERE state = 'new'), count(*) FROM {TABLE}") == [(1, 48)]


def test_a_backfill_in_the_alter_s_transaction_names_the_lock_and_the_marker_accepts_it(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    text = (f"ALTER TABLE {TABLE} ADD COLUMN region text;\n"
            f"UPDATE {TABLE} SET region = 'eu' WHERE region IS NULL;\n")
    path = add_migration(sql_dir, "0002_region", text)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    line = next(entry for entry in result.stderr.splitlines() if f"{path}:2: " in entry)
    assert f"may write every row of public.{TABLE} (~50 rows" in line and "under ACCESS EXCLUSIVE" in line, line
    assert "instead: a `-- backfill: batch` UPDATE of bounded batches in a `-- transactional: false` file" in line
    add_migration(sql_dir, "0002_region", f"-- accept-rewrite: public.{TABLE}\n" + text)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE region = 'eu'") == [(50,)]


# (file text, the line of the refused statement, what its refusal says)
REFUSED_ELSEWHERE = {
    "renamed_earlier": (f"ALTER TABLE {TABLE} RENAME TO reports;\nALTER TABLE reports ALTER COLUMN id TYPE bigint;\n",
                        3, "ALTER COLUMN id TYPE bigint rewrites"),
    "column_renamed_earlier": (f"ALTER TABLE {TABLE} RENAME COLUMN id TO key;\n"
                               f"ALTER TABLE {TABLE} ALTER COLUMN key TYPE bigint;\n", 3, "ALTER COLUMN key TYPE bigint"),
    "column_added_earlier": (f"ALTER TABLE {TABLE} ADD COLUMN n int;\nALTER TABLE {TABLE} ALTER COLUMN n TYPE bigint;\n",
                             3, "ALTER COLUMN n TYPE bigint rewrites"),
    "temp_table": (f"CREATE TEMP TABLE {TABLE} (id int);\nALTER TABLE public.{TABLE} ALTER COLUMN id TYPE bigint;\n",
                   3, "ALTER COLUMN id TYPE bigint"),
    "other_schema": (f"CREATE SCHEMA other;\nSET search_path TO other;\nCREATE TABLE {TABLE} (id int);\n"
                     f"ALTER TABLE public.{TABLE} ALTER COLUMN id TYPE bigint;\n", 5, "ALTER COLUMN id TYPE bigint"),
    "reindex_index": ("-- transactional: false\nREINDEX INDEX idx_hcm_report_campaign;\n", 3,
                      "REINDEX INDEX idx_hcm_report_campaign without CONCURRENTLY rebuilds the indexes of"),
    "reindex_schema": ("-- transactional: false\nREINDEX SCHEMA public;\n", 3,
                       "REINDEX SCHEMA public without CONCURRENTLY rebuilds the indexes of"),
    "bare_vacuum_full": ("-- transactional: false\nVACUUM FULL;\n", 3, "VACUUM FULL rewrites"),
    "volatile_domain": (f"ALTER TABLE {TABLE} ADD COLUMN ref ref_uuid;\n", 2, "ADD COLUMN ref of domain ref_uuid"),
    "update_where_true": (f"ALTER TABLE {TABLE} ADD COLUMN state text;\nUPDATE {TABLE} SET state = 'new' WHERE true;\n",
                          3, "UPDATE of every row in the transaction of an earlier ALTER TABLE"),
    "update_in_cte": (f"ALTER TABLE {TABLE} ADD COLUMN state text;\n"
                      f"WITH u AS (UPDATE {TABLE} SET state = 'new' RETURNING 1) SELECT count(*) FROM u;\n",
                      3, "UPDATE without WHERE in the transaction of an earlier ALTER TABLE"),
    "update_after_lock": (f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE;\nUPDATE {TABLE} SET tenant_id = 'x';\n",
                          3, "UPDATE without WHERE"),
    # any WHERE that is no bounded batch, under the lock the file's transaction holds (attack24c item 3)
    "update_where_is_null": (f"ALTER TABLE {TABLE} ADD COLUMN region text;\n"
                             f"UPDATE {TABLE} SET region = 'eu' WHERE region IS NULL;\n", 3,
                             "UPDATE whose WHERE is no bounded batch (it may match every row) in the transaction of an earlier ALTER TABLE of the table may write every row of"),
    "update_where_range": (f"ALTER TABLE {TABLE} ADD COLUMN c int;\nUPDATE {TABLE} SET c = 1 WHERE id > 0;\n", 3,
                           "UPDATE whose WHERE is no bounded batch (it may match every row) in the transaction of an earlier ALTER TABLE"),
    "delete_not_a_key": (f"ALTER TABLE {TABLE} ADD COLUMN c int;\nDELETE FROM {TABLE} WHERE tenant_id = 't1';\n", 3,
                         "DELETE whose WHERE is no bounded batch (it may match every row) in the transaction of an earlier ALTER TABLE"),
    "merge_after_alter": (f"ALTER TABLE {TABLE} ADD COLUMN c int;\nMERGE INTO {TABLE} t USING (SELECT 1 AS one) s "
                          "ON t.c IS NULL WHEN MATCHED THEN UPDATE SET c = 1;\n", 3, "MERGE (it may match every row) in "
                          "the transaction of an earlier ALTER TABLE of the table may write every row of"),
    "trigger_then_update": ("CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;\n"
                            f"CREATE TRIGGER t BEFORE UPDATE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION f();\n"
                            f"UPDATE {TABLE} SET tenant_id = tenant_id WHERE tenant_id <> 'x';\n", 4,
                            "UPDATE whose WHERE is no bounded batch (it may match every row) in the transaction of an earlier CREATE TRIGGER of the table may write every row of"),
    # a batch shape bounds nothing under the lock: in one transaction every batch runs while it is held (attack24d)
    "batch_shape_after_alter": (f"ALTER TABLE {TABLE} ADD COLUMN state text;\nUPDATE {TABLE} SET state = 'b' WHERE id IN "
                                f"(SELECT id FROM {TABLE} WHERE state IS NULL LIMIT 5);\n", 3,
                                "UPDATE whose WHERE is no bounded batch (it may match every row) in the transaction of an earlier ALTER TABLE"),
    "lock_then_create_table_as": (f"LOCK TABLE {TABLE} IN SHARE MODE;\nCREATE TABLE hcm_copy AS SELECT * FROM {TABLE};\n",
                                  3, "a copy of its rows (CREATE TABLE AS / INSERT ... SELECT) in the transaction of an "
                                     "earlier LOCK TABLE of the table reads every row of"),
}


@pytest.mark.parametrize("case", list(REFUSED_ELSEWHERE))
def test_a_rewrite_hidden_by_an_earlier_statement_or_spelling_is_refused(cli, db, sql_dir, case):
    seeded(cli, db, sql_dir)
    db.query("CREATE DOMAIN ref_uuid AS uuid DEFAULT gen_random_uuid()")  # (a live domain whose default is volatile)
    text, line, what = REFUSED_ELSEWHERE[case]
    path = add_migration(sql_dir, "0002_" + case, "-- why: a test\n" + text)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert f"{path}:{line}: {what}" in result.stderr and f"public.{TABLE} (~50 rows" in result.stderr, result.stderr
    assert applied(db) == [SEED]


DEFAULT_PARTITION = ("CREATE TABLE ev (id int) PARTITION BY RANGE (id); CREATE TABLE ev_p1 PARTITION OF ev FOR VALUES "
                     "FROM (0) TO (1000); CREATE TABLE ev_def PARTITION OF ev DEFAULT; INSERT INTO ev SELECT "
                     "generate_series(5001, 5050); ANALYZE ev_def")
# (live setup, file text, the line of the refused statement, what its refusal says up to the table's size)
REFUSED_OTHER_OBJECTS = {
    "refresh_matview": (f"CREATE MATERIALIZED VIEW mv AS SELECT * FROM {TABLE}; ANALYZE mv",
                        "REFRESH MATERIALIZED VIEW mv;\n", 2,
                        "REFRESH MATERIALIZED VIEW without CONCURRENTLY rewrites public.mv (~50 rows"),
    "set_expression": (f"ALTER TABLE {TABLE} ADD COLUMN g2 bigint GENERATED ALWAYS AS (id * 2) STORED",
                       f"ALTER TABLE {TABLE} ALTER COLUMN g2 SET EXPRESSION AS (id * 3);\n", 2,
                       f"ALTER COLUMN g2 SET EXPRESSION rewrites public.{TABLE} (~50 rows"),
    # an empty inheritance parent: the ALTER reaches its big child
    "inheritance_parent": ("CREATE TABLE base (id bigint); CREATE TABLE kid () INHERITS (base); "
                           "INSERT INTO kid SELECT generate_series(1, 50); ANALYZE kid",
                           "ALTER TABLE base ADD COLUMN u uuid DEFAULT gen_random_uuid();\n", 2,
                           "ADD COLUMN u DEFAULT gen_random_uuid() (volatile: a value per row) rewrites public.base "
                           "(~50 rows"),
    # a function a pending statement creates, volatile by default
    "pending_function": ("SELECT 1", "CREATE FUNCTION mk_code() RETURNS text LANGUAGE sql AS $$ SELECT "
                                     f"md5(random()::text) $$;\nALTER TABLE {TABLE} ADD COLUMN code text DEFAULT "
                                     "mk_code();\n", 3, "ADD COLUMN code DEFAULT mk_code() (volatile"),
    "attach_partition": ("SELECT 1", f"CREATE TABLE evp (id bigint NOT NULL) PARTITION BY RANGE (id);\n"
                                     f"ALTER TABLE evp ATTACH PARTITION {TABLE} FOR VALUES FROM (0) TO (1000000);\n",
                         3, f"ATTACH PARTITION {TABLE} without a validated CHECK implying its bound scans "
                            f"public.{TABLE} (~50 rows"),
    # a small view over a big table: its REFRESH reads the big table under the view's lock (attack24c item 3)
    "refresh_small_view_of_big_table": (f"CREATE MATERIALIZED VIEW small_mv AS SELECT tenant_id, count(*) FROM {TABLE} "
                                        "GROUP BY 1; ANALYZE small_mv", "REFRESH MATERIALIZED VIEW small_mv;\n", 2,
                                        "REFRESH MATERIALIZED VIEW without CONCURRENTLY rewrites public.small_mv (~50 rows"),
    # the primary key makes its index's nullable column NOT NULL: a scan (attack24c item 3)
    "primary_key_using_nullable_index": (f"ALTER TABLE {TABLE} ADD COLUMN k bigint; UPDATE {TABLE} SET k = id; "
                                         f"CREATE UNIQUE INDEX u_k ON {TABLE} (k)",
                                         f"ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_pkey, ADD CONSTRAINT pk2 PRIMARY "
                                         "KEY USING INDEX u_k;\n", 2,
                                         "ADD PRIMARY KEY USING INDEX u_k (an implied SET NOT NULL k without a validated "
                                         f"CHECK (k IS NOT NULL)) scans public.{TABLE} (~50 rows"),
    # a new partition's range checked against a big DEFAULT partition's rows, under ACCESS EXCLUSIVE (attack24d PD)
    "partition_of_with_default": (DEFAULT_PARTITION, "CREATE TABLE ev_p2 PARTITION OF ev FOR VALUES FROM (1000) TO (2000);\n",
                                  2, "CREATE TABLE ... PARTITION OF (a new partition of ev) without a validated CHECK on "
                                     "the DEFAULT partition excluding its range scans public.ev_def (~50 rows"),
    "attach_with_default": (DEFAULT_PARTITION + "; CREATE TABLE ev_p2 (id int)",
                            "ALTER TABLE ev ATTACH PARTITION ev_p2 FOR VALUES FROM (1000) TO (2000);\n", 2,
                            "ATTACH PARTITION (a new partition of ev) without a validated CHECK on the DEFAULT partition "
                            "excluding its range scans public.ev_def (~50 rows"),
    "domain_constraint": (f"CREATE DOMAIN posint AS int; ALTER TABLE {TABLE} ADD COLUMN p posint",
                          "ALTER DOMAIN posint ADD CONSTRAINT pos CHECK (VALUE >= 0);\n", 2,
                          f"ALTER DOMAIN posint ADD CONSTRAINT pos without NOT VALID scans public.{TABLE} (~50 rows"),
    # attack24r 12: SET NOT NULL (subtype 'O') scans too; 'N', which was taken for it, is DROP NOT NULL (no scan)
    "domain_set_not_null": (f"CREATE DOMAIN code50 AS varchar(50); ALTER TABLE {TABLE} ADD COLUMN c code50",
                            "ALTER DOMAIN code50 DROP NOT NULL;\nALTER DOMAIN code50 SET NOT NULL;\n", 3,
                            f"ALTER DOMAIN code50 SET NOT NULL scans public.{TABLE} (~50 rows"),
}


@pytest.mark.parametrize("case", list(REFUSED_OTHER_OBJECTS))
def test_a_rewrite_or_scan_through_another_object_is_refused(cli, db, sql_dir, case):
    refused_before_running(cli, db, sql_dir, case, *REFUSED_OTHER_OBJECTS[case])


def refused_before_running(cli, db, sql_dir, case: str, setup: str, text: str, line: int, what: str) -> None:
    """`setup` on the live table, then a file whose line `line` (after its why-line) is refused as `what`: exit 2,
    the safe pattern given, nothing applied."""
    seeded(cli, db, sql_dir)
    db.query(setup)
    path = add_migration(sql_dir, "0002_" + case, "-- why: a test\n" + text)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert f"{path}:{line}: {what}" in result.stderr and "instead: " in result.stderr, result.stderr
    assert applied(db) == [SEED]


def test_a_stable_pending_function_default_and_an_attach_over_a_validated_check_run(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_fine", "CREATE FUNCTION code_of() RETURNS text LANGUAGE sql STABLE AS $$ SELECT "
                                        f"'x' $$;\nALTER TABLE {TABLE} ADD COLUMN code text DEFAULT code_of();\n"
                                        f"ALTER TABLE {TABLE} ADD CONSTRAINT in_range CHECK (id >= 0 AND id < 1000000) "
                                        "NOT VALID;\n")
    add_migration(sql_dir, "0003_validate", f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT in_range;\n")
    add_migration(sql_dir, "0004_attach", f"CREATE TABLE evp (LIKE {TABLE}) PARTITION BY RANGE (id);\n"
                                          f"ALTER TABLE evp ATTACH PARTITION {TABLE} FOR VALUES FROM (0) TO "
                                          "(1000000);\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert applied(db)[-1] == "0004_attach"


def test_a_small_table_an_earlier_pending_file_loads_rows_into_is_counted_as_big(cli, db, sql_dir):
    seeded(cli, db, sql_dir, rows=5)
    add_migration(sql_dir, "0002_seed_row", f"INSERT INTO {TABLE} (dag_run_id, dag_name, campaign_number, report_name, "
                                            "trigger_frequency, trigger_date, filestore_id) VALUES "
                                            "('one', 'd', 'c', 'r', 'Daily', now(), 'f');\n")
    add_migration(sql_dir, "0003_type", f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    env = {**db.db_env(), "REWRITE_THRESHOLD_ROWS": "10"}
    plan = json.loads(cli("plan", "--sql-dir", sql_dir, "--json", env=env).stdout)
    assert plan["rewrites"] == []  # a few VALUES: the live size still tells
    add_migration(sql_dir, "0002_seed_row", FILL.format(table=TABLE, rows=100) + ";\n")  # now it loads
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert (f"0003_type.sql:1: ALTER COLUMN id TYPE bigint rewrites public.{TABLE} (~5 rows now, and rows loaded into "
            "it by an earlier pending statement: counted as big)") in result.stderr, result.stderr
    assert applied(db) == [SEED]


def test_a_using_that_keeps_the_value_is_no_rewrite(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_widen", f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(60) "
                                         "USING tenant_id::varchar(60);\n")
    ok(migrate(cli, db, sql_dir, *SMALL))


def test_a_marker_inside_a_string_or_a_function_body_accepts_nothing(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_hidden", f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"
                                          "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$\n"
                                          f"-- accept-rewrite: public.{TABLE}\nSELECT 1 $$;\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and "0002_hidden.sql:1: ALTER COLUMN id TYPE bigint" in result.stderr, result.output


def test_a_primary_key_using_a_pending_index_is_judged_by_its_columns_or_said_unjudged(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    db.query(f"ALTER TABLE {TABLE} ADD COLUMN k bigint; UPDATE {TABLE} SET k = id; ANALYZE {TABLE}")
    add_migration(sql_dir, "0002_index", f"-- transactional: false\nCREATE UNIQUE INDEX CONCURRENTLY u_k ON {TABLE} (k);\n")
    swap = f"ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_pkey, ADD CONSTRAINT pk2 PRIMARY KEY USING INDEX {{}};\n"
    path = add_migration(sql_dir, "0003_key", swap.format("u_k"))
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:1: ADD PRIMARY KEY USING INDEX u_k (an implied SET NOT NULL k " \
        "without a validated CHECK (k IS NOT NULL)) scans" in result.stderr, result.output
    path = add_migration(sql_dir, "0003_key", swap.format("u_nowhere"))
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:1: ADD PRIMARY KEY USING INDEX u_nowhere (an implied SET NOT NULL of " \
        "columns that cannot be judged: its index was not found) may scan" in result.stderr, result.output
    # the safe way: a validated CHECK (k IS NOT NULL) first, then the key is catalog only
    add_migration(sql_dir, "0003_check", f"ALTER TABLE {TABLE} ADD CONSTRAINT k_nn CHECK (k IS NOT NULL) NOT VALID;\n")
    add_migration(sql_dir, "0004_validate", f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT k_nn;\n")
    add_migration(sql_dir, "0005_key", swap.format("u_k"))
    (sql_dir / "0003_key.sql").unlink()
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert applied(db)[-1] == "0005_key"


def test_a_new_partition_passes_once_a_validated_check_on_the_default_partition_excludes_its_range(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    db.query(DEFAULT_PARTITION)
    add_migration(sql_dir, "0002_check", "ALTER TABLE ev_def ADD CONSTRAINT not_p2 CHECK (id < 1000 OR id >= 2000) "
                                         "NOT VALID;\n")
    add_migration(sql_dir, "0003_validate", "ALTER TABLE ev_def VALIDATE CONSTRAINT not_p2;\n")
    add_migration(sql_dir, "0004_p2", "CREATE TABLE ev_p2 PARTITION OF ev FOR VALUES FROM (1000) TO (2000);\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert db.query("SELECT count(*) FROM pg_inherits WHERE inhparent = 'ev'::regclass") == [(3,)]
