"""An interrupted REINDEX ... CONCURRENTLY of a partitioned table or index (attack24c item 2): its INVALID copies
sit on the partitions (and their TOAST tables), not on the parent; the rerun finds and drops them like the parent's,
and `status`'s advice for them holds."""

import pytest

from conftest import SEED, add_migration, applied
from test_live_traffic import invalid_indexes, seeded, sigterm_while_waiting_for_old_snapshots  # noqa: F401

PARTED = ("CREATE TABLE parted (id bigint, name text, note text) PARTITION BY RANGE (id);\n"
          "CREATE TABLE parted_p1 PARTITION OF parted FOR VALUES FROM (0) TO (1000);\n"
          "CREATE TABLE parted_p2 PARTITION OF parted FOR VALUES FROM (1000) TO (2000);\n"
          "INSERT INTO parted SELECT g, 'r' || g, 'n' FROM generate_series(1, 1999) g;\n"
          "CREATE INDEX parted_name_idx ON parted (name);\n")


@pytest.mark.parametrize("reindex", ["REINDEX TABLE CONCURRENTLY parted", "REINDEX INDEX CONCURRENTLY parted_name_idx"],
                         ids=["table", "index"])
def test_an_interrupted_reindex_of_a_partitioned_table_leaves_nothing_after_the_rerun(cli, db, sql_dir, seeded,
                                                                                       reindex):
    add_migration(sql_dir, "0002_parted", PARTED)
    assert cli("migrate", "--sql-dir", sql_dir, env=seeded).exit_code == 0
    add_migration(sql_dir, "0003_reindex", f"-- transactional: false\n{reindex};\n")
    sigterm_while_waiting_for_old_snapshots(db, sql_dir, seeded)
    leftovers = [name for (name,) in invalid_indexes(db)]
    assert any(name.startswith("parted_p1_name_idx_cc") for name in leftovers), leftovers
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded)
    assert status.exit_code != 0 and "run migrate again if a pending migration ran it" in status.output

    rerun = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert rerun.exit_code == 0, rerun.output
    assert "dropped INVALID index public.parted_p1_name_idx_cc" in rerun.stderr, rerun.stderr
    assert invalid_indexes(db) == [] and applied(db) == [SEED, "0002_parted", "0003_reindex"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=seeded).exit_code == 0
