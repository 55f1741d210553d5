"""What earlier pending files change that a later statement's rewrite depends on (attack24g findings 1, 2, 5): a
domain's DEFAULT or a function's volatility, an expression / partial index or a validated CHECK on a column, a
table's schema. Each verdict checked against what the real PostgreSQL does (relfilenodes)."""

from __future__ import annotations

import pytest

from conftest import SEED, add_migration, applied, migrate, ok
from test_rewrites import SMALL, TABLE, seeded

MARKER = f"-- accept-rewrite: public.{TABLE}\n"
WIDEN = f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(64);\n"
VOLATILE_DOMAIN = "whose DEFAULT is volatile (a value per row) rewrites public.{} (~50 rows".format(TABLE)
RETYPED = "ALTER COLUMN tenant_id TYPE varchar(64) (binary-coercible, but "
REBUILDS = RETYPED + "an index with an expression or a WHERE is built again) rebuilds index(es) {} of public." + TABLE
CHECKED = RETYPED + "CHECK tenant_set is checked again on every row) scans public." + TABLE
IMMUTABLE = "CREATE FUNCTION mkval() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN RETURN 1; END$$"

# (live setup, the pending files in run order, (index of the refused file, its line), what its refusal says)
REFUSED = {
    "create_domain_earlier_file": ("SELECT 1", ["CREATE DOMAIN uidd AS uuid DEFAULT gen_random_uuid();\n",
                                                f"ALTER TABLE {TABLE} ADD COLUMN u uidd;\n"], (1, 1),
                                   f"ADD COLUMN u of domain uidd, {VOLATILE_DOMAIN}"),
    "create_domain_same_file": ("SELECT 1", ["CREATE DOMAIN uidd AS uuid DEFAULT gen_random_uuid();\n"
                                             f"ALTER TABLE {TABLE} ADD COLUMN u uidd;\n"], (0, 2),
                                f"ADD COLUMN u of domain uidd, {VOLATILE_DOMAIN}"),
    # a domain inherits its base domain's DEFAULT when it is created
    "create_domain_over_live": ("CREATE DOMAIN d1v AS uuid DEFAULT gen_random_uuid()",
                                ["CREATE DOMAIN d3v AS d1v;\n", f"ALTER TABLE {TABLE} ADD COLUMN u d3v;\n"], (1, 1),
                                f"ADD COLUMN u of domain d3v, {VOLATILE_DOMAIN}"),
    "create_domain_over_pending": ("SELECT 1", ["CREATE DOMAIN d1v AS uuid DEFAULT gen_random_uuid();\n"
                                                "CREATE DOMAIN d3v AS public.d1v;\n",
                                                f"ALTER TABLE {TABLE} ADD COLUMN u d3v;\n"], (1, 1),
                                   f"ADD COLUMN u of domain d3v, {VOLATILE_DOMAIN}"),
    "alter_domain_set_default": ("CREATE DOMAIN plainuuid AS uuid",
                                 ["ALTER DOMAIN plainuuid SET DEFAULT gen_random_uuid();\n",
                                  f"ALTER TABLE {TABLE} ADD COLUMN u plainuuid;\n"], (1, 1),
                                 f"ADD COLUMN u of domain plainuuid, {VOLATILE_DOMAIN}"),
    "domain_default_pending_function": ("SELECT 1", ["CREATE FUNCTION mkid() RETURNS int LANGUAGE sql VOLATILE AS "
                                                     "'SELECT (random() * 100)::int';\n"
                                                     "CREATE DOMAIN fdom AS int DEFAULT mkid();\n",
                                                     f"ALTER TABLE {TABLE} ADD COLUMN f fdom;\n"], (1, 1),
                                        f"ADD COLUMN f of domain fdom, {VOLATILE_DOMAIN}"),
    "alter_function_volatile": (IMMUTABLE, ["ALTER FUNCTION mkval() VOLATILE;\n",
                                            f"ALTER TABLE {TABLE} ADD COLUMN v int DEFAULT mkval();\n"], (1, 1),
                                "ADD COLUMN v DEFAULT mkval() (volatile: a value per row) rewrites"),
    "alter_function_then_domain": (IMMUTABLE + "; CREATE DOMAIN vdom AS int DEFAULT mkval()",
                                   ["ALTER ROUTINE public.mkval() VOLATILE;\n",
                                    f"ALTER TABLE {TABLE} ADD COLUMN v vdom;\n"], (1, 1),
                                   f"ADD COLUMN v of domain vdom, {VOLATILE_DOMAIN}"),
    # attack24g 2: an index the type change builds again, made by an earlier pending file (CONCURRENTLY or not)
    "pending_expression_index": ("SELECT 1", ["-- transactional: false\nCREATE INDEX CONCURRENTLY idx_tenant_lower "
                                              f"ON {TABLE} (lower(tenant_id));\n", WIDEN], (1, 1),
                                 REBUILDS.format("idx_tenant_lower") + " (~50 rows"),
    "pending_partial_index": ("SELECT 1", ["-- transactional: false\nCREATE INDEX CONCURRENTLY idx_set ON "
                                           f"{TABLE} (id) WHERE tenant_id <> '';\n", WIDEN], (1, 1),
                              REBUILDS.format("idx_set")),
    "pending_unnamed_index": ("SELECT 1", ["-- transactional: false\nCREATE INDEX CONCURRENTLY ON "
                                           f"{TABLE} (lower(tenant_id));\n", WIDEN], (1, 1),
                              REBUILDS.format("(unnamed 1)")),
    "pending_index_other_column_expression": (
        "SELECT 1", [MARKER + f"CREATE INDEX idx_tn ON {TABLE} (tenant_id, lower(report_name));\n", WIDEN], (1, 1),
        REBUILDS.format("idx_tn")),
    # attack24i 3: a failed build's INVALID (plain) index is said to be one, with its fix
    "live_invalid_index": (f"CREATE INDEX idx_tenant ON {TABLE} (tenant_id); UPDATE pg_index SET indisvalid = false "
                           "WHERE indexrelid = 'idx_tenant'::regclass", [WIDEN], (0, 1),
                           RETYPED + "the INVALID index idx_tenant is built again by the ALTER: REINDEX INDEX "
                           f"CONCURRENTLY it (or drop it) first) rebuilds index(es) idx_tenant of public.{TABLE}"),
    # ... and a CHECK an earlier pending file validates
    "pending_validated_check": ("SELECT 1", [f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_set CHECK (tenant_id <> '');\n"
                                             + MARKER, WIDEN], (1, 1),
                                CHECKED),
    "pending_validate_of_pending_check": (
        "SELECT 1", [f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_set CHECK (tenant_id <> '') NOT VALID;\n",
                     f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT tenant_set;\n", WIDEN], (2, 1),
        CHECKED),
    "pending_validate_of_live_check": (
        f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_set CHECK (tenant_id <> '') NOT VALID",
        [f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT tenant_set;\n", WIDEN], (1, 1), CHECKED),
    # attack24g 5: a pending SET SCHEMA, tracked as a RENAME TO is
    "set_schema_new_schema": ("SELECT 1", [f"CREATE SCHEMA arch;\nALTER TABLE {TABLE} SET SCHEMA arch;\n",
                                           f"ALTER TABLE arch.{TABLE} ALTER COLUMN id TYPE bigint;\n"], (1, 1),
                              f"ALTER COLUMN id TYPE bigint rewrites public.{TABLE} (~50 rows"),
    "set_schema_live_schema": ("CREATE SCHEMA archl", [f"ALTER TABLE IF EXISTS public.{TABLE} SET SCHEMA archl;\n"
                                                       f"ALTER TABLE archl.{TABLE} ADD COLUMN u uuid DEFAULT "
                                                       "gen_random_uuid();\n"], (0, 2),
                               f"ADD COLUMN u DEFAULT gen_random_uuid() (volatile: a value per row) rewrites public."),
}


def _files(db) -> dict:
    return dict(db.query("SELECT relname, relfilenode FROM pg_class WHERE relname LIKE 'idx_%%' OR relname = %s",
                         (TABLE,)))


def _write(sql_dir, texts) -> list:
    return [add_migration(sql_dir, f"{number:04d}_pending", text) for number, text in enumerate(texts, 2)]


def refused_by_migrate_and_plan(cli, db, sql_dir, case, fill=lambda text: text) -> None:
    """`case` (set-up SQL, the pending files' texts, (which file, its line), what the refusal says; `fill` applied
    to each text): migrate refuses it (exit 2, nothing applied) and plan shows the same verdict."""
    setup, texts, (index, line), what = case
    seeded(cli, db, sql_dir)
    db.query(fill(setup))
    path = _write(sql_dir, [fill(text) for text in texts])[index]
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert f"{path}:{line}: {what}" in result.stderr and "instead: " in result.stderr, result.stderr
    assert applied(db) == [SEED]
    plan = cli("plan", "--sql-dir", sql_dir, env={**db.db_env(), "REWRITE_THRESHOLD_ROWS": "10"})
    assert plan.exit_code == 0 and f"-- REFUSED by migrate: {path}:{line}: {what}" in plan.stdout, plan.output


def applied_without_a_rewrite(cli, db, sql_dir, setup: str, texts: list[str]) -> None:
    """After `setup`, the pending files' `texts` all apply and the table keeps its file (the server agrees: no
    rewrite)."""
    seeded(cli, db, sql_dir)
    db.query(setup)
    before = _files(db)[TABLE]
    _write(sql_dir, texts)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert len(applied(db)) == 1 + len(texts) and applied(db)[0] == SEED
    assert _files(db)[TABLE] == before


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_rewrite_made_so_by_an_earlier_pending_statement_is_refused_by_migrate_and_plan(cli, db, sql_dir, case):
    refused_by_migrate_and_plan(cli, db, sql_dir, REFUSED[case])


def test_the_server_rewrites_for_a_pending_volatile_domain_default_and_not_once_it_is_dropped(cli, db, sql_dir):
    """The verdicts follow the domain's DEFAULT through the pending files, as the server does."""
    seeded(cli, db, sql_dir)
    db.query("CREATE DOMAIN plainuuid AS uuid; CREATE DOMAIN liveuuid AS uuid DEFAULT gen_random_uuid()")
    before = _files(db)[TABLE]
    add_migration(sql_dir, "0002_default", "ALTER DOMAIN plainuuid SET DEFAULT gen_random_uuid();\n"
                                           "ALTER DOMAIN liveuuid DROP DEFAULT;\n")
    add_migration(sql_dir, "0003_add", f"ALTER TABLE {TABLE} ADD COLUMN l liveuuid;\n")  # no default left: catalog only
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db)[TABLE] == before and db.query(f"SELECT count(l) FROM {TABLE}") == [(0,)]
    add_migration(sql_dir, "0004_add", MARKER + f"ALTER TABLE {TABLE} ADD COLUMN u plainuuid;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))  # accepted: and indeed rewritten, a value per row
    assert _files(db)[TABLE] != before
    assert db.query(f"SELECT count(DISTINCT u) FROM {TABLE}") == [(50,)]


def test_a_constant_default_given_by_a_pending_file_over_a_volatile_one_runs_without_a_rewrite(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    db.query(f"CREATE DOMAIN liveuuid AS uuid DEFAULT gen_random_uuid(); {IMMUTABLE}")
    before = _files(db)[TABLE]
    add_migration(sql_dir, "0002_default", "ALTER DOMAIN liveuuid SET DEFAULT '00000000-0000-0000-0000-000000000000';\n"
                                           "CREATE DOMAIN also AS liveuuid;\n")
    add_migration(sql_dir, "0003_add", f"ALTER TABLE {TABLE} ADD COLUMN l also, ADD COLUMN v int DEFAULT mkval();\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db)[TABLE] == before


def test_the_server_rebuilds_a_pending_expression_index_and_keeps_a_pending_plain_one(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_indexes", "-- transactional: false\n"
                  f"CREATE INDEX CONCURRENTLY idx_tenant_lower ON {TABLE} (lower(tenant_id));\n"
                  f"CREATE INDEX CONCURRENTLY idx_tenant ON {TABLE} (tenant_id);\n"
                  f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_set CHECK (tenant_id <> '') NOT VALID;\n")
    path = add_migration(sql_dir, "0003_widen", WIDEN)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:1: " in result.stderr, result.output
    assert "idx_tenant_lower of" in result.stderr and "idx_tenant," not in result.stderr, result.stderr
    assert "CHECK tenant_set" not in result.stderr, result.stderr  # NOT VALID: not checked again
    path.unlink()
    ok(migrate(cli, db, sql_dir, *SMALL))
    before = _files(db)
    add_migration(sql_dir, "0003_widen", MARKER + WIDEN)
    ok(migrate(cli, db, sql_dir, *SMALL))
    after = _files(db)
    assert after["idx_tenant_lower"] != before["idx_tenant_lower"]  # built again, as the verdict said
    assert after["idx_tenant"] == before["idx_tenant"] and after[TABLE] == before[TABLE]  # kept


def test_the_server_rewrites_the_table_a_pending_set_schema_moved(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    before = _files(db)[TABLE]
    add_migration(sql_dir, "0002_move", f"CREATE SCHEMA arch;\nALTER TABLE {TABLE} SET SCHEMA arch;\n")
    path = add_migration(sql_dir, "0003_retype", f"ALTER TABLE arch.{TABLE} ALTER COLUMN id TYPE bigint;\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:1: ALTER COLUMN id TYPE bigint rewrites public." in result.stderr, \
        result.output
    add_migration(sql_dir, "0003_retype", MARKER + f"ALTER TABLE arch.{TABLE} ALTER COLUMN id TYPE bigint;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db)[TABLE] != before  # rewritten, as the verdict said


def test_the_safe_patterns_the_refusal_gives_pass_once_a_pending_file_drops_what_would_be_redone(cli, db, sql_dir):
    """The refusal's own advice (DROP INDEX CONCURRENTLY, widen, CREATE INDEX CONCURRENTLY; DROP CONSTRAINT, widen, ADD
    ... NOT VALID in one ALTER TABLE) was refused too: the pending DROPs were not read. Another index's DROP hides
    nothing; the server keeps the table's file, as the verdict says."""
    seeded(cli, db, sql_dir)
    db.query(f"CREATE INDEX idx_tenant_lower ON {TABLE} (lower(tenant_id)); CREATE INDEX idx_other ON {TABLE} (id) "
             f"WHERE id > 0; ALTER TABLE {TABLE} ADD CONSTRAINT tenant_set CHECK (tenant_id <> '')")
    add_migration(sql_dir, "0002_drop", "-- transactional: false\nDROP INDEX CONCURRENTLY IF EXISTS public.idx_other;"
                                        "\n")
    path = add_migration(sql_dir, "0003_widen", WIDEN)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:1: {REBUILDS.format('idx_tenant_lower')}" in result.stderr, result.output
    assert f"{path}:1: {CHECKED}" in result.stderr, result.stderr
    add_migration(sql_dir, "0002_drop", "-- transactional: false\nDROP INDEX CONCURRENTLY idx_tenant_lower;\n")
    add_migration(sql_dir, "0003_widen", f"ALTER TABLE {TABLE} DROP CONSTRAINT tenant_set, ALTER COLUMN tenant_id TYPE "
                                         "varchar(64), ADD CONSTRAINT tenant_set CHECK (tenant_id <> '') NOT VALID;\n")
    add_migration(sql_dir, "0004_index", "-- transactional: false\nCREATE INDEX CONCURRENTLY idx_tenant_lower ON "
                                         f"{TABLE} (lower(tenant_id));\n")
    before = _files(db)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db)[TABLE] == before[TABLE] and _files(db)["idx_other"] == before["idx_other"]
    add_migration(sql_dir, "0005_widen", f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT tenant_set;\n"
                                         f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id TYPE varchar(80);\n")
    result = migrate(cli, db, sql_dir, *SMALL)  # the index built again by 0004 and the CHECK validated: both redone
    assert result.exit_code == 2 and "0005_widen.sql:2: ALTER COLUMN tenant_id TYPE varchar(80) (binary-coercible, " \
        "but CHECK tenant_set" in result.stderr and "idx_tenant_lower of" in result.stderr, result.stderr
