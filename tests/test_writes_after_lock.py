"""Writes under a lock the migration's transaction still holds (attack24d, issue 24): the locks taken by other
statements than ALTER TABLE, the writes that reach the locked table another way, and a non-transactional file's
own BEGIN ... COMMIT block; and the writes that stay allowed (a composite key lookup, statements after COMMIT)."""

from __future__ import annotations

import pytest

from conftest import add_migration, applied, migrate, ok
from test_rewrites import FILL, SMALL, TABLE, refused_before_running, seeded

ADD = f"ALTER TABLE {TABLE} ADD COLUMN region text;\n"
SOME = f"UPDATE {TABLE} SET tenant_id = 'x' WHERE tenant_id = 't1';\n"
MAY = "UPDATE whose WHERE is no bounded batch (it may match every row) in the transaction of an earlier"

# (live setup, file text, the line of the refused statement, what its refusal says up to the table's size)
REFUSED = {
    "nontx_begin_block": ("SELECT 1", f"-- transactional: false\nBEGIN;\n{ADD}"
                          f"UPDATE {TABLE} SET region = 'eu' WHERE region IS NULL;\nCOMMIT;\n", 5,
                          f"{MAY} ALTER TABLE of the table may write every row of public.{TABLE} (~50 rows"),
    "drop_index": ("SELECT 1", f"DROP INDEX idx_hcm_report_campaign;\n{SOME}", 3,
                   f"{MAY} DROP INDEX of the table may write every row of public.{TABLE} (~50 rows"),
    "create_table_references": ("SELECT 1", f"CREATE TABLE rm_child (id int PRIMARY KEY, rm_id bigint REFERENCES "
                                            f"{TABLE} (id));\n{SOME}", 3,
                                f"{MAY} CREATE TABLE ... REFERENCES of the table may write every row of public.{TABLE}"),
    "create_policy": ("SELECT 1", f"CREATE POLICY p_all ON {TABLE} USING (true);\n{SOME}", 3,
                      f"{MAY} CREATE POLICY of the table may write every row of public.{TABLE} (~50 rows"),
    "rename_then_new_name": ("SELECT 1", f"ALTER TABLE {TABLE} RENAME TO rm_old;\n"
                                         "UPDATE rm_old SET tenant_id = 'x' WHERE tenant_id = 't1';\n", 3,
                             f"{MAY} ALTER TABLE ... RENAME of the table may write every row of public.{TABLE} (~50"),
    "pending_view": ("SELECT 1", f"{ADD}CREATE VIEW rm_v AS SELECT * FROM {TABLE};\nUPDATE rm_v SET region = 'eu';\n",
                     4, f"UPDATE without WHERE in the transaction of an earlier ALTER TABLE of the table writes every "
                        f"row of public.{TABLE} (~50 rows"),
    "live_view": (f"CREATE VIEW rm_live_v AS SELECT id, tenant_id FROM {TABLE}",
                  f"{ADD}UPDATE rm_live_v SET tenant_id = 'x';\n", 3,
                  f"UPDATE without WHERE in the transaction of an earlier ALTER TABLE of the table writes every "
                  f"row of public.{TABLE} (~50 rows"),
    "partition_of_locked_parent": ("CREATE TABLE ev (id int, r text) PARTITION BY RANGE (id); CREATE TABLE ev_p1 "
                                   "PARTITION OF ev FOR VALUES FROM (0) TO (1000); INSERT INTO ev SELECT "
                                   "generate_series(1, 50); ANALYZE ev_p1",
                                   "ALTER TABLE ev ADD COLUMN region text;\nUPDATE ev_p1 SET region = 'eu' "
                                   "WHERE region IS NULL;\n", 3,
                                   f"{MAY} ALTER TABLE of the table may write every row of public.ev_p1 (~50 rows"),
    "insert_select_into": ("SELECT 1", ADD + FILL.format(table=TABLE, rows=10) + ";\n", 3,
                           "INSERT ... SELECT into it in the transaction of an earlier ALTER TABLE of the table may "
                           f"write any number of rows into public.{TABLE} (~50 rows"),
    "do_block": ("SELECT 1", f"{ADD}DO $$ BEGIN UPDATE {TABLE} SET region = 'eu'; END $$;\n", 3,
                 "DO block in the transaction of an earlier ALTER TABLE of the table cannot be judged (its statements "
                 f"are not read) and may write every row of public.{TABLE} (~50 rows"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_write_under_a_lock_taken_or_reached_another_way_is_refused(cli, db, sql_dir, case):
    refused_before_running(cli, db, sql_dir, case, *REFUSED[case])


def test_a_composite_key_lookup_and_writes_after_the_block_s_commit_are_allowed(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    db.query(f"CREATE UNIQUE INDEX rm_tenant_run ON {TABLE} (tenant_id, dag_run_id)")
    add_migration(sql_dir, "0002_key", f"{ADD}UPDATE {TABLE} SET region = 'eu' WHERE tenant_id = 't1' "
                                       "AND dag_run_id = 'run-1';\n")
    add_migration(sql_dir, "0003_block", f"-- transactional: false\nBEGIN;\nALTER TABLE {TABLE} ADD COLUMN c int;\n"
                                         f"COMMIT;\nUPDATE {TABLE} SET c = 1 WHERE region IS NULL;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert applied(db)[-2:] == ["0002_key", "0003_block"]
    assert db.query(f"SELECT count(*) FILTER (WHERE region = 'eu'), count(*) FILTER (WHERE c = 1) FROM {TABLE}") \
        == [(1, 49)]


def test_a_key_lookup_on_only_part_of_a_composite_key_is_refused(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    db.query(f"CREATE UNIQUE INDEX rm_tenant_run ON {TABLE} (tenant_id, dag_run_id)")
    path = add_migration(sql_dir, "0002_key", f"{ADD}UPDATE {TABLE} SET region = 'eu' WHERE tenant_id = 't1';\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:2: {MAY} ALTER TABLE" in result.stderr, result.stderr
