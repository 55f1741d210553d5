"""attack24v 1, on the real PostgreSQL: `ALTER TABLE parent ATTACH PARTITION big_table` clones the parent's indexes,
and foreign keys onto the big table under ACCESS EXCLUSIVE on it (an index built, a foreign key validated),
which plan --impact called "catalog only ... instant" and migrate ran unrefused. Now each is refused before anything
runs (the safe pattern named, the marker accepted), and plan --impact counts it as work with an estimate."""

from __future__ import annotations

import pytest

from conftest import SEED, add_migration, applied, migrate, ok
from test_impact_work import impact
from test_rewrites import SMALL, TABLE, refused_before_running, seeded

IN_RANGE = f"ALTER TABLE {TABLE} ADD CONSTRAINT in_range CHECK (id >= 0 AND id < 1000000)"  # (the bound: no scan)
PARENT = f"CREATE TABLE evp (LIKE {TABLE} INCLUDING DEFAULTS) PARTITION BY RANGE (id);\n"
ATTACH = f"ALTER TABLE evp ATTACH PARTITION {TABLE} FOR VALUES FROM (0) TO (1000000);\n"
# (what the parent brings, the line of the ATTACH, what the refusal says up to the table)
CLONED = {
    "index": ("CREATE INDEX evp_filestore ON evp (filestore_id, report_name);\n", 4,
              f"ATTACH PARTITION {TABLE} (cloning evp's index evp_filestore (filestore_id, report_name)) builds an "
              f"index on public.{TABLE} (~50 rows"),
    "unique": ("ALTER TABLE evp ADD CONSTRAINT evp_run_uk UNIQUE (id, dag_run_id);\n", 4,
               f"ATTACH PARTITION {TABLE} (cloning evp's index evp_run_uk (id, dag_run_id)) builds an index on"),
    "foreign_key": ("CREATE TABLE dag (name varchar(100) PRIMARY KEY);\nINSERT INTO dag VALUES ('dag');\n"
                    "ALTER TABLE evp ADD CONSTRAINT evp_dag_fk FOREIGN KEY (dag_name) REFERENCES dag (name);\n", 6,
                    f"ATTACH PARTITION {TABLE} (cloning evp's foreign key evp_dag_fk (dag_name) REFERENCES dag, "
                    f"validated) scans public.{TABLE} (~50 rows"),
}


@pytest.mark.parametrize("case", list(CLONED))
def test_an_attach_that_clones_the_parents_index_or_constraint_onto_a_big_table_is_refused(cli, db, sql_dir, case):
    brings, line, what = CLONED[case]
    refused_before_running(cli, db, sql_dir, case, IN_RANGE, PARENT + brings + ATTACH, line, what)


def test_an_attach_of_a_table_that_has_the_parents_index_already_runs(cli, db, sql_dir):
    """The safe pattern: the table's own CREATE INDEX CONCURRENTLY of the parent's columns first (the ATTACH takes it
    over); a parent index that only the marker accepts runs too."""
    seeded(cli, db, sql_dir)
    db.query(IN_RANGE)
    add_migration(sql_dir, "0002_table_index", f"-- transactional: false\nCREATE INDEX CONCURRENTLY t_filestore ON "
                                               f"{TABLE} (filestore_id, report_name);\n")
    add_migration(sql_dir, "0003_attach", PARENT + "CREATE INDEX evp_filestore ON evp (filestore_id, report_name);\n"
                  + ATTACH)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert applied(db)[-1] == "0003_attach"
    assert not db.query(f"SELECT 1 FROM pg_index WHERE indrelid = '{TABLE}'::regclass AND NOT indisvalid")
    add_migration(sql_dir, "0004_more", "CREATE TABLE evq (LIKE evp) PARTITION BY RANGE (id);\n"
                                        "CREATE INDEX evq_tenant ON evq (tenant_id);\n"
                                        "ALTER TABLE evq ATTACH PARTITION evp FOR VALUES FROM (0) TO (1000000);\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and "(cloning evq's index evq_tenant (tenant_id))" in result.stderr, \
        result.output
    add_migration(sql_dir, "0004_more", "-- accept-rewrite: public.evp\n" + (sql_dir / "0004_more.sql").read_text())
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert applied(db) == [SEED, "0002_table_index", "0003_attach", "0004_more"]


def test_plan_impact_counts_an_attachs_index_build_and_validation_as_work(cli, db, pg, sql_dir):
    seeded(cli, db, sql_dir, rows=2000)
    add_migration(sql_dir, "0002_range", IN_RANGE + ";\n")  # (a migration's: the scratch copy has it too)
    ok(migrate(cli, db, sql_dir))
    add_migration(sql_dir, "0003_attach", PARENT + CLONED["index"][0] + CLONED["foreign_key"][0] + ATTACH)
    statements = impact(cli, db, pg, sql_dir)["0003_attach"]
    attach = statements[-1]
    assert attach["sql"].startswith("ALTER TABLE evp ATTACH PARTITION"), attach
    assert not attach["catalog_only"], attach
    assert sorted(w["work"] for w in attach["work"]) == ["index", "scan"], attach
    assert all(w["lock"] == "ACCESS EXCLUSIVE" and w["live_rows"] == 2000 and w["estimated_seconds"] > 0
               for w in attach["work"]), attach


# The table's own index on the parent index's columns (parent's, table's): one PostgreSQL cannot take over (it
# compares access method, operator family, collation, INCLUDE columns, expressions, predicate, NULLS NOT DISTINCT:
# CompareIndexInfo), so the ATTACH builds a clone under ACCESS EXCLUSIVE (attack24x 4: refused by columns alone before;
# dag_name: the seed's table has no index of its own on it)
NOT_TAKEN = {
    "hash": ("(dag_name)", "USING hash (dag_name)"),
    "pattern_ops": ("(dag_name)", "(dag_name varchar_pattern_ops)"),
    "collation": ("(dag_name)", '(dag_name COLLATE "C")'),
    "predicate": ("(dag_name) WHERE dag_name > 'a'", "(dag_name) WHERE dag_name > 'b'"),
    "include": ("(dag_name)", "(dag_name) INCLUDE (id)"),
    "expression": ("(lower(dag_name))", "(upper(dag_name))"),
    "nulls_not_distinct": ("(dag_name)", "(dag_name) NULLS NOT DISTINCT"),
}
# ... and ones it takes over (sort order, storage options and an explicit default operator class are not compared)
TAKEN = {
    "desc": ("(dag_name)", "(dag_name DESC NULLS FIRST)"),
    "options": ("(dag_name)", "(dag_name) WITH (fillfactor = 50)"),
    "default_ops": ("(dag_name text_ops)", "(dag_name)"),
    "same_predicate": ("(dag_name) WHERE dag_name > 'a'", "(dag_name) WHERE dag_name > 'a'"),
}


@pytest.mark.parametrize("case", list(NOT_TAKEN) + list(TAKEN))
@pytest.mark.parametrize("parent", ["live", "pending"])
def test_an_attach_is_refused_unless_the_server_takes_the_tables_index_over(cli, db, sql_dir, case, parent):
    """Refused exactly when PostgreSQL builds a clone: the taken-over cases run and leave no index beside the
    table's own. The parent and its index live, or made by the same pending file."""
    parents, tables = {**NOT_TAKEN, **TAKEN}[case]
    seeded(cli, db, sql_dir)
    db.query(IN_RANGE)
    db.query(f"CREATE INDEX t_name ON {TABLE} {tables}")
    made = PARENT + f"CREATE INDEX evp_name ON evp {parents};\n"
    if parent == "live":
        db.query(made)
    path = add_migration(sql_dir, "0002_attach", "-- why: a test\n" + (made if parent == "pending" else "") + ATTACH)
    indexes = (f"SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
               f"WHERE i.indrelid = '{TABLE}'::regclass ORDER BY 1")
    before = db.query(indexes)
    plan = cli("plan", "--sql-dir", sql_dir, *SMALL, env=db.db_env())  # (plan shows migrate's verdict)
    verdicts = [line for line in plan.stdout.splitlines() if line.startswith("-- REFUSED by migrate:")]
    result = migrate(cli, db, sql_dir, *SMALL)
    # (a pending index's predicate is the file's text, a live one's the server's: not compared, counted as a build)
    if case in NOT_TAKEN or parent == "pending" and case == "same_predicate":
        assert result.exit_code == 2, result.output
        line = 4 if parent == "pending" else 2
        assert f"{path}:{line}: ATTACH PARTITION {TABLE} (cloning evp's index evp_name (" in result.stderr, \
            result.stderr
        assert applied(db) == [SEED] and any("(cloning evp's index evp_name" in line for line in verdicts), verdicts
        return
    ok(result)
    assert verdicts == [], verdicts
    assert applied(db) == [SEED, "0002_attach"]
    assert db.query(indexes) == before  # (taken over: no clone built beside t_name)
