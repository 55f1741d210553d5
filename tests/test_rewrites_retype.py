"""What a binary-coercible type change and a column of a constrained domain still do to a big table (attack24e
findings 1 and 2, and two lows), each verdict checked against what the real PostgreSQL does (relfilenodes,
seq_tup_read)."""

from __future__ import annotations

import json
import time

import pytest

from conftest import SEED, add_migration, applied, migrate, ok
from test_impact_work import impact
from test_rewrites import SMALL, TABLE, refused_before_running, seeded

WIDEN = f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64);\n"
MARKER = f"-- accept-rewrite: public.{TABLE}\n"

REBUILDS = ("ALTER COLUMN tenant_id TYPE varchar(64) (binary-coercible, but an index with an expression or a WHERE is "
            f"built again) rebuilds index(es) {{}} of public.{TABLE} (~50 rows")
# (setup on the live table, what the refusal of WIDEN says)
RETYPE_REFUSED = {
    "check": (f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_set CHECK (btrim(tenant_id) <> '')",
              "ALTER COLUMN tenant_id TYPE varchar(64) (binary-coercible, but CHECK tenant_set is checked again on "
              f"every row) scans public.{TABLE} (~50 rows"),
    "expression_index": (f"CREATE INDEX idx_tenant_lower ON {TABLE} (lower(tenant_id))",
                         REBUILDS.format("idx_tenant_lower")),
    "partial_index": (f"CREATE INDEX idx_with_tenant ON {TABLE} (id) WHERE tenant_id IS NOT NULL",
                      REBUILDS.format("idx_with_tenant")),
    # an index with an expression on another column is built again too (CheckIndexCompatible)
    "multi_column_expression": (f"CREATE INDEX idx_tenant_name ON {TABLE} (tenant_id, lower(report_name))",
                                REBUILDS.format("idx_tenant_name")),
}


@pytest.mark.parametrize("case", list(RETYPE_REFUSED))
def test_a_binary_coercible_type_change_that_rechecks_or_rebuilds_is_refused(cli, db, sql_dir, case):
    setup, what = RETYPE_REFUSED[case]
    refused_before_running(cli, db, sql_dir, case, setup, WIDEN, 2, what)


def _files(db) -> dict:
    return dict(db.query("SELECT relname, relfilenode FROM pg_class WHERE relname LIKE 'idx_%%' OR relname = %s",
                         (TABLE,)))


def _scanned(db) -> int:
    db.query("SELECT pg_stat_force_next_flush()")
    time.sleep(0.6)  # (the server's statistics flush: not a timing assertion)
    return db.query("SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = %s", (TABLE,))[0][0]


def test_the_server_does_what_the_verdicts_say_and_a_plain_index_or_not_valid_check_passes(cli, db, sql_dir):
    """Accepted, the widening scans (the CHECK) and builds the expression index again, keeping the table's and the
    plain index's files; with a NOT VALID CHECK and only plain indexes it is catalog only and runs unrefused."""
    seeded(cli, db, sql_dir)
    db.query(f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_set CHECK (btrim(tenant_id) <> ''); "
             f"CREATE INDEX idx_tenant_lower ON {TABLE} (lower(tenant_id)); "
             f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id); "
             f"ALTER TABLE {TABLE} ADD CONSTRAINT name_set CHECK (report_name <> '') NOT VALID")
    before, scanned = _files(db), _scanned(db)
    add_migration(sql_dir, "0002_widen", MARKER + WIDEN)
    ok(migrate(cli, db, sql_dir, *SMALL))
    after = _files(db)
    assert _scanned(db) >= scanned + 50  # the CHECK checked (and the index built) on every row
    assert after[TABLE] == before[TABLE] and after["idx_tenant"] == before["idx_tenant"]  # rows and plain index kept
    assert after["idx_tenant_lower"] != before["idx_tenant_lower"]  # built again
    db.query("DROP INDEX idx_tenant_lower")
    add_migration(sql_dir, "0003_catalog_only", f"ALTER TABLE {TABLE} ALTER COLUMN report_name TYPE text;\n"
                                                f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE text;\n")
    result = migrate(cli, db, sql_dir, *SMALL)  # tenant_id's CHECK is validated: refused; report_name's is NOT VALID
    assert result.exit_code == 2 and "0003_catalog_only.sql:2: ALTER COLUMN tenant_id" in result.stderr, result.output
    assert "0003_catalog_only.sql:1:" not in result.stderr, result.stderr
    db.query(f"ALTER TABLE {TABLE} DROP CONSTRAINT tenant_set")
    before, scanned = _files(db), _scanned(db)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _scanned(db) == scanned and _files(db) == before  # indeed catalog only


# A column of a domain with a CHECK or NOT NULL (its own or its base domain's): every row rewritten, default or not.
DOMAIN_REFUSED = {
    "live_domain": ("CREATE DOMAIN region AS text CHECK (VALUE ~ '^[a-z]{2}$')",
                    f"ALTER TABLE {TABLE} ADD COLUMN region region;\n", "ADD COLUMN region of domain region"),
    "constant_default": ("CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
                         f"ALTER TABLE {TABLE} ADD COLUMN p posint DEFAULT 1;\n", "ADD COLUMN p of domain posint"),
    "not_null_domain": ("CREATE DOMAIN code AS text NOT NULL DEFAULT 'x'",
                        f"ALTER TABLE {TABLE} ADD COLUMN c public.code;\n", "ADD COLUMN c of domain public.code"),
    "live_domain_over_domain": ("CREATE DOMAIN posint AS int CHECK (VALUE > 0); CREATE DOMAIN small AS posint",
                                f"ALTER TABLE {TABLE} ADD COLUMN s small;\n", "ADD COLUMN s of domain small"),
    "pending_domain": ("SELECT 1", f"CREATE DOMAIN nonblank AS text CHECK (VALUE <> '');\n"
                                   f"ALTER TABLE {TABLE} ADD COLUMN n nonblank;\n", "ADD COLUMN n of domain nonblank"),
    "pending_over_live": ("CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
                          f"CREATE DOMAIN mine AS posint;\nALTER TABLE {TABLE} ADD COLUMN m mine;\n",
                          "ADD COLUMN m of domain mine"),
    # attack24f: a live plain domain given a constraint by a pending ALTER DOMAIN (same file: ad2)
    "pending_alter_domain_not_null": ("CREATE DOMAIN plaindom AS int", f"ALTER DOMAIN plaindom SET NOT NULL;\n"
                                      f"ALTER TABLE {TABLE} ADD COLUMN d plaindom DEFAULT 1;\n",
                                      "ADD COLUMN d of domain plaindom"),
    "pending_alter_domain_under_live": ("CREATE DOMAIN plaindom AS int; CREATE DOMAIN small AS plaindom",
                                        "ALTER DOMAIN public.plaindom ADD CONSTRAINT pos CHECK (VALUE > 0) NOT VALID;"
                                        f"\nALTER TABLE {TABLE} ADD COLUMN s small;\n", "ADD COLUMN s of domain small"),
}


@pytest.mark.parametrize("case", list(DOMAIN_REFUSED))
def test_a_column_of_a_domain_with_constraints_is_refused(cli, db, sql_dir, case):
    setup, text, what = DOMAIN_REFUSED[case]
    line = 2 + text.count("\n", 0, text.index("ALTER TABLE"))
    refused_before_running(cli, db, sql_dir, case, setup, text, line,
                           f"{what}, which has a CHECK or NOT NULL constraint (checked on every row, default or not) "
                           f"rewrites public.{TABLE} (~50 rows")


def test_the_server_rewrites_for_a_constrained_domain_and_not_for_a_plain_one(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    db.query("CREATE DOMAIN plain_int AS int; CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    add_migration(sql_dir, "0002_plain", f"CREATE DOMAIN also_plain AS plain_int;\nALTER TABLE {TABLE} ADD COLUMN a "
                                         "plain_int;\nALTER TABLE {TABLE} ADD COLUMN b also_plain;\n".replace(
                                             "{TABLE}", TABLE))
    before = _files(db)[TABLE]
    ok(migrate(cli, db, sql_dir, *SMALL))  # no constraint: catalog only
    assert _files(db)[TABLE] == before
    add_migration(sql_dir, "0003_checked", MARKER + f"ALTER TABLE {TABLE} ADD COLUMN p posint;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))  # accepted by the marker: and indeed rewritten
    assert _files(db)[TABLE] != before
    assert applied(db)[-1] == "0003_checked" and applied(db)[0] == SEED


def test_plan_impact_says_the_recheck_scan_and_only_the_indexes_built_again(cli, db, pg, sql_dir):
    ok(migrate(cli, db, sql_dir, "--quiet"))
    add_migration(sql_dir, "0002_setup", f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_set CHECK (btrim(tenant_id) <> "
                                         f"'');\nCREATE INDEX idx_tenant ON {TABLE} (tenant_id);\n"
                                         f"CREATE INDEX idx_tenant_name ON {TABLE} (report_name, lower(tenant_id));\n")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    db.query(f"INSERT INTO {TABLE} (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, "
             "trigger_date, filestore_id, tenant_id) SELECT 'run-' || g, 'dag', 'C', 'r', 'Daily', now(), 'f-' || g, "
             f"'t' || g % 3 FROM generate_series(1, 2000) g; ANALYZE {TABLE}")
    add_migration(sql_dir, "0003_widen", WIDEN)
    (widen,) = impact(cli, db, pg, sql_dir)["0003_widen"]
    assert not widen["catalog_only"], widen
    works = {w["work"]: w for w in widen["work"]}
    assert set(works) == {"scan", "reindex"}, widen
    assert works["scan"]["lock"] == "ACCESS EXCLUSIVE" and works["scan"]["live_rows"] == 2000
    assert works["scan"]["estimated_seconds"] > 0
    assert works["reindex"]["rebuilds"] == ["idx_tenant_name"], works  # the plain idx_tenant keeps its file
    plan = json.loads(cli("plan", "--sql-dir", sql_dir, "--json", env={**db.db_env(), "REWRITE_THRESHOLD_ROWS": "10"}
                          ).stdout)
    assert {r["does"] for r in plan["rewrites"]} == {"scans", "rebuilds index(es) idx_tenant_name of"}, plan


def test_a_marker_inside_a_block_comment_accepts_nothing(cli, db, sql_dir):
    """attack24e low: a commented-out marker (in /* */, nested too) was honoured; one after the comment still is."""
    seeded(cli, db, sql_dir)
    retype = f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"
    add_migration(sql_dir, "0002_hidden", f"/* old: /* nested */\n{MARKER}*/\n" + retype)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and "0002_hidden.sql:4: ALTER COLUMN id TYPE bigint" in result.stderr, result.output
    add_migration(sql_dir, "0002_hidden", f"/* old: /* nested */ */\n{MARKER}" + retype)
    ok(migrate(cli, db, sql_dir, *SMALL))


def test_plan_impact_never_cuts_a_statement_mid_name(cli, db, pg, sql_dir):
    ok(migrate(cli, db, sql_dir, "--quiet"))
    long = (f"ALTER TABLE {TABLE} ADD CONSTRAINT fk_parent_report FOREIGN KEY (id) REFERENCES {TABLE}(id) NOT VALID;\n")
    add_migration(sql_dir, "0002_fk", long)
    text = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env()).stdout
    (line,) = [line for line in text.splitlines() if line.startswith("  line 1: ALTER TABLE")]
    assert line.startswith(f"  line 1: ALTER TABLE {TABLE} ADD CONSTRAINT fk_parent_report FOREIGN KEY (id) REFERENCES "
                           "...: "), line  # before: "REFERENCES hcm_rep: " (the name cut at 100 characters)


# attack24f: a partitioned (or inheritance parent) table whose partition / child has its own CHECK or expression
# index: ALTER COLUMN TYPE recurses, and checks / builds each one again (only the parent's were read).
EVENTS = ("CREATE TABLE ev (id int, code varchar(20)) PARTITION BY RANGE (id); "
          "CREATE TABLE ev_p1 PARTITION OF ev FOR VALUES FROM (0) TO (1000); "
          "INSERT INTO ev SELECT g, 'c' || g FROM generate_series(1, 50) g; ")
CHILD = ("CREATE TABLE ev (id int, code varchar(20)); CREATE TABLE ev_c1 () INHERITS (ev); "
         "INSERT INTO ev_c1 SELECT g, 'c' || g FROM generate_series(1, 50) g; ")
REBUILT = "an index with an expression or a WHERE is built again) rebuilds index(es)"
EV_WIDEN = "ALTER TABLE ev ALTER COLUMN code TYPE varchar(64);\n"
PARTS_REFUSED = {
    "partition_check": (EVENTS + "ALTER TABLE ev_p1 ADD CONSTRAINT p1_code CHECK (code <> '')",
                        "CHECK p1_code (of partition/child ev_p1) is checked again on every row) scans public.ev"),
    "partition_expression_index": (EVENTS + "CREATE INDEX ev_p1_lower ON ev_p1 (lower(code))",
                                   f"{REBUILT} ev_p1_lower (of partition/child ev_p1) of public.ev"),
    "child_partial_index": (CHILD + "CREATE INDEX ev_c1_set ON ev_c1 (id) WHERE code IS NOT NULL",
                            f"{REBUILT} ev_c1_set (of partition/child ev_c1) of public.ev"),
}


@pytest.mark.parametrize("case", list(PARTS_REFUSED))
def test_a_partitions_own_check_or_expression_index_is_refused(cli, db, sql_dir, case):
    setup, what = PARTS_REFUSED[case]
    refused_before_running(cli, db, sql_dir, case, setup + "; ANALYZE ev", EV_WIDEN, 2,
                           "ALTER COLUMN code TYPE varchar(64) (binary-coercible, but " + what)


def test_the_server_rebuilds_what_the_verdict_names_on_a_partition_and_keeps_its_own_plain_index(cli, db, pg,
                                                                                                sql_dir):
    ok(migrate(cli, db, sql_dir, "--quiet"))  # (the setup in a migration: plan --impact measures on a scratch copy)
    add_migration(sql_dir, "0002_setup", EVENTS.replace("; ", ";\n") + "CREATE INDEX ev_code ON ev (code);\n"
                  "CREATE INDEX ev_p1_lower ON ev_p1 (lower(code));\n"
                  "CREATE INDEX ev_p1_own ON ev_p1 (code);\n"
                  "ALTER TABLE ev ADD CONSTRAINT ev_code_set CHECK (code <> '') NOT VALID;\n")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    db.query("ANALYZE ev")
    add_migration(sql_dir, "0003_widen", EV_WIDEN)
    (widen,) = impact(cli, db, pg, sql_dir)["0003_widen"]
    assert {w["work"] for w in widen["work"]} == {"reindex"}, widen
    assert [w["rebuilds"] for w in widen["work"]] == [["ev_p1_code_idx", "ev_p1_lower"]], widen
    files = "SELECT relname, relfilenode FROM pg_class WHERE relname LIKE 'ev%%'"
    before = dict(db.query(files))
    add_migration(sql_dir, "0003_widen", "-- accept-rewrite: public.ev\n" + EV_WIDEN)
    ok(migrate(cli, db, sql_dir, *SMALL))
    after = dict(db.query(files))
    # the partition of the partitioned index ev_code is built again too (PostgreSQL 18), not ev_p1's own plain one
    assert sorted(n for n in before if after.get(n) != before[n]) == ["ev_p1_code_idx", "ev_p1_lower"], (before, after)
    add_migration(sql_dir, "0004_text", "ALTER TABLE ev ALTER COLUMN code TYPE text;\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{REBUILT} ev_p1_code_idx (of partition/child ev_p1, of index ev_code), " \
        "ev_p1_lower (of partition/child ev_p1) of public.ev" in result.stderr, result.stderr
    db.query("DROP INDEX ev_p1_lower; DROP INDEX ev_code")
    ok(migrate(cli, db, sql_dir, *SMALL))  # a partition's own plain index, a NOT VALID CHECK: catalog only
    assert applied(db)[-1] == "0004_text"


def test_a_domain_given_a_check_by_an_earlier_pending_file_is_refused_and_the_server_rewrites(cli, db, sql_dir):
    """attack24f reproAD `ad`: ALTER DOMAIN ... ADD CONSTRAINT in one pending file, ADD COLUMN of it in the next."""
    seeded(cli, db, sql_dir)
    db.query("CREATE DOMAIN plaindom AS int")
    add_migration(sql_dir, "0002_dom", "ALTER DOMAIN plaindom ADD CONSTRAINT plaindom_pos CHECK (VALUE > 0);\n")
    path = add_migration(sql_dir, "0003_add", f"ALTER TABLE {TABLE} ADD COLUMN d plaindom;\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:1: ADD COLUMN d of domain plaindom, which has a CHECK" in result.stderr, \
        result.output
    assert applied(db) == [SEED]
    before = _files(db)[TABLE]
    add_migration(sql_dir, "0003_add", MARKER + f"ALTER TABLE {TABLE} ADD COLUMN d plaindom;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db)[TABLE] != before  # the verdict was right: rewritten
