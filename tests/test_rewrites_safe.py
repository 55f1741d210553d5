"""Common safe migrations the rewrite judge refused (attack24g findings 4, 6 and 7), each verdict checked against
what the real PostgreSQL does (relfilenodes, seq_tup_read): timestamp <-> timestamptz under a UTC TimeZone,
PostgreSQL 18's NOT NULL ... NOT VALID + VALIDATE + SET NOT NULL, a type change to a domain with no constraint."""

from __future__ import annotations

import pytest

from conftest import SEED, add_migration, applied, migrate, ok
from test_rewrites import SMALL, TABLE, refused_before_running, seeded
from test_rewrites_retype import MARKER, _files, _scanned


def _zone(db, zone: str) -> None:
    """Every new session of the test's database starts in `zone` (as a DBA's ALTER DATABASE ... SET does it)."""
    db.query(f"ALTER DATABASE {db.name} SET TimeZone = '{zone}'")


# --- 1. timestamp <-> timestamptz: no rewrite on PostgreSQL 12+ when the session's TimeZone is UTC -------------------

def test_timestamp_to_timestamptz_and_back_is_catalog_only_when_the_sessions_timezone_is_utc(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    _zone(db, "Etc/UTC")
    before = _files(db)
    add_migration(sql_dir, "0002_tz", f"ALTER TABLE {TABLE} ALTER COLUMN created_at TYPE timestamptz;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    add_migration(sql_dir, "0003_back", f"ALTER TABLE {TABLE} ALTER COLUMN created_at TYPE timestamp(6);\n")
    ok(migrate(cli, db, sql_dir, *SMALL))  # (its own run: the judge reads the live column, timestamptz by then)
    assert applied(db)[-1] == "0003_back"
    assert _files(db) == before  # the table and every index kept their files: catalog only, as judged


def test_timestamp_to_timestamptz_under_another_timezone_is_refused_and_the_server_rewrites(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    _zone(db, "America/New_York")
    retype = f"ALTER TABLE {TABLE} ALTER COLUMN created_at TYPE timestamptz;\n"
    path = add_migration(sql_dir, "0002_tz", retype)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and (
        f"{path}:1: ALTER COLUMN created_at TYPE timestamptz (the session's TimeZone America/New_York is not UTC: "
        f"every value is converted) rewrites public.{TABLE} (~50 rows") in result.stderr, result.output
    assert applied(db) == [SEED]
    before = _files(db)[TABLE]
    add_migration(sql_dir, "0002_tz", MARKER + retype)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db)[TABLE] != before  # the verdict was right: rewritten


def test_the_connections_own_timezone_is_read_not_assumed(cli, db, sql_dir):
    """PGTZ (libpq sends it at connect) makes every session of the run start in that zone: judged by it."""
    seeded(cli, db, sql_dir)
    _zone(db, "UTC")
    path = add_migration(sql_dir, "0002_tz", f"ALTER TABLE {TABLE} ALTER COLUMN created_at TYPE timestamptz;\n")
    result = cli("migrate", "--sql-dir", sql_dir, *SMALL, env={**db.db_env(), "PGTZ": "Europe/Paris"})
    assert result.exit_code == 2 and f"{path}:1: ALTER COLUMN created_at TYPE timestamptz (the session's TimeZone " \
        "Europe/Paris is not UTC" in result.stderr, result.output
    ok(migrate(cli, db, sql_dir, *SMALL))  # the database's own UTC


def test_a_files_own_set_time_zone_decides(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    _zone(db, "Europe/Paris")
    before = _files(db)
    add_migration(sql_dir, "0002_utc", f"SET TIME ZONE 'UTC';\nALTER TABLE {TABLE} ALTER COLUMN created_at TYPE "
                                       "timestamptz;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db) == before  # the file's own zone: catalog only
    path = add_migration(sql_dir, "0003_reset", f"SET TIME ZONE 'UTC';\nRESET timezone;\nALTER TABLE {TABLE} ALTER "
                                                "COLUMN created_at TYPE timestamp;\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:3: ALTER COLUMN created_at TYPE timestamp (the session's TimeZone " \
        "Europe/Paris is not UTC" in result.stderr, result.output


TZ = f"ALTER TABLE {TABLE} ALTER COLUMN created_at TYPE timestamptz;\n"
# (file text, the refused line, what its refusal says up to the table) with the session's TimeZone UTC
TZ_REFUSED = {
    "file_sets_another_zone": (f"SET timezone TO 'Europe/Paris';\n{TZ}", 3, "ALTER COLUMN created_at TYPE timestamptz "
                               "(the file's TimeZone Europe/Paris is not UTC: every value is converted) rewrites"),
    "set_config": (f"SELECT pg_catalog.set_config('TimeZone', 'Asia/Tokyo', false);\n{TZ}", 3,
                   "ALTER COLUMN created_at TYPE timestamptz (the file's TimeZone (set by set_config) is not UTC: "
                   "every value is converted) rewrites"),
    # attack24i 3: a DO block's EXECUTE 'SET ...' (the judge does not read its body): not read as UTC
    "do_execute": (f"DO $$ BEGIN EXECUTE 'SET TIME ZONE ''America/New_York'''; END $$;\n{TZ}", 3,
                   "ALTER COLUMN created_at TYPE timestamptz (the file's TimeZone (set inside a statement the judge "
                   "does not read) is not UTC: every value is converted) rewrites"),
    "do_set_config": (f"DO $$ BEGIN PERFORM set_config('TimeZone', 'Asia/Tokyo', false); END $$;\n{TZ}", 3,
                      "ALTER COLUMN created_at TYPE timestamptz (the file's TimeZone (set by set_config) is not UTC: "
                      "every value is converted) rewrites"),
    # SET LOCAL outside a transaction block does nothing: not read as UTC
    "set_local_without_transaction": (f"-- transactional: false\nSET LOCAL TIME ZONE 'UTC';\n{TZ}", 4,
                                      "ALTER COLUMN created_at TYPE timestamptz (the file's TimeZone (SET LOCAL "
                                      "outside a transaction) is not UTC: every value is converted) rewrites"),
    "precision": (f"ALTER TABLE {TABLE} ALTER COLUMN created_at TYPE timestamptz(3);\n", 2,
                  "ALTER COLUMN created_at TYPE timestamptz(3) rewrites"),
    "indexed": (f"ALTER TABLE {TABLE} ALTER COLUMN trigger_date TYPE timestamptz;\n", 2,
                "ALTER COLUMN trigger_date TYPE timestamptz (no rewrite in TimeZone UTC, but each index on it is built "
                "again: its operator class changes) rebuilds index(es) idx_hcm_report_trigger_date of"),
}


@pytest.mark.parametrize("case", list(TZ_REFUSED))
def test_timestamptz_is_refused_when_the_file_changes_the_zone_the_precision_or_it_is_indexed(cli, db, sql_dir, case):
    text, line, what = TZ_REFUSED[case]
    refused_before_running(cli, db, sql_dir, case, f"ALTER DATABASE {db.name} SET TimeZone = 'UTC'", text, line,
                           what + f" public.{TABLE} (~50 rows")


def test_a_functions_own_time_zone_setting_leaves_the_sessions_utc(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    _zone(db, "UTC")
    before = _files(db)
    add_migration(sql_dir, "0002_tz", "CREATE FUNCTION tzf() RETURNS int LANGUAGE sql SET timezone = 'Asia/Tokyo' "
                                      f"AS 'SELECT 1';\n{TZ}")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db) == before  # catalog only, as judged


def test_the_server_keeps_the_table_and_rebuilds_only_the_index_of_the_column(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    _zone(db, "UTC")
    before = _files(db)
    add_migration(sql_dir, "0002_tz", MARKER + f"ALTER TABLE {TABLE} ALTER COLUMN trigger_date TYPE timestamptz;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    after = _files(db)
    assert sorted(n for n in before if after[n] != before[n]) == ["idx_hcm_report_trigger_date"], (before, after)


# --- 2. PostgreSQL 18's NOT NULL constraint: ADD ... NOT VALID, VALIDATE, SET NOT NULL --------------------------------

NN = f"ALTER TABLE {TABLE} ADD CONSTRAINT tenant_nn NOT NULL tenant_id NOT VALID;\n"
VALIDATE = f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT tenant_nn;\n"
SET_NN = f"ALTER TABLE {TABLE} ALTER COLUMN tenant_id SET NOT NULL;\n"


@pytest.mark.parametrize("same_file", [False, True])
def test_a_not_null_constraint_validated_by_a_pending_file_lets_set_not_null_run_without_a_scan(cli, db, sql_dir,
                                                                                               same_file):
    seeded(cli, db, sql_dir)
    scanned = _scanned(db)
    add_migration(sql_dir, "0002_nn", NN)
    if same_file:  # (VALIDATE first: nothing of the file holds the table's lock yet)
        add_migration(sql_dir, "0003_validate_set", VALIDATE + SET_NN)
    else:
        add_migration(sql_dir, "0003_validate", VALIDATE)
        add_migration(sql_dir, "0004_set", SET_NN)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _scanned(db) == scanned + 50  # the VALIDATE's scan only: SET NOT NULL read no row
    assert db.query(f"SELECT attnotnull FROM pg_attribute WHERE attrelid = '{TABLE}'::regclass "
                    "AND attname = 'tenant_id'") == [(True,)]


def test_an_unnamed_not_null_not_valid_validated_by_its_generated_name_counts_too(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_nn", f"ALTER TABLE {TABLE} ADD NOT NULL tenant_id NOT VALID;\n")
    add_migration(sql_dir, "0003_validate", f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT {TABLE}_tenant_id_not_null;\n")
    add_migration(sql_dir, "0004_set", SET_NN)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert applied(db)[-1] == "0004_set"


def test_set_not_null_over_a_live_not_valid_not_null_constraint_scans_unless_a_pending_file_validates_it(cli, db,
                                                                                                         sql_dir):
    """PostgreSQL 18 marks the column attnotnull already for a NOT VALID constraint, but SET NOT NULL validates it:
    a full scan under ACCESS EXCLUSIVE (it was passed as 'already NOT NULL')."""
    seeded(cli, db, sql_dir)
    db.query(NN)
    path = add_migration(sql_dir, "0002_set", SET_NN)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:1: ALTER COLUMN tenant_id SET NOT NULL without a validated CHECK " \
        f"(tenant_id IS NOT NULL) scans public.{TABLE}" in result.stderr, result.output
    add_migration(sql_dir, "0002_set", MARKER + SET_NN)
    scanned = _scanned(db)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _scanned(db) == scanned + 50  # the verdict was right: every row read
    db.query(f"ALTER TABLE {TABLE} DROP CONSTRAINT tenant_nn; " + NN)
    add_migration(sql_dir, "0003_validate", VALIDATE)
    add_migration(sql_dir, "0004_set", SET_NN)
    scanned = _scanned(db)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _scanned(db) == scanned + 50  # the VALIDATE's scan only


# --- 3. ALTER COLUMN TYPE to a domain with no constraint over a type the column can be relabelled to ------------------

PLAIN = "CREATE DOMAIN campaign AS varchar(100)"


@pytest.mark.parametrize("case", ["live", "pending", "same_file", "wider", "over_a_plain_domain"])
def test_a_type_change_to_a_domain_without_constraint_is_catalog_only(cli, db, sql_dir, case):
    seeded(cli, db, sql_dir)
    before = _files(db)
    setup = {"live": PLAIN, "pending": None, "same_file": None, "wider": "CREATE DOMAIN campaign AS text",
             "over_a_plain_domain": "CREATE DOMAIN base AS varchar(120); CREATE DOMAIN campaign AS base"}[case]
    if setup:
        db.query(setup)
    retype = f"ALTER TABLE {TABLE} ALTER COLUMN campaign_number TYPE campaign;\n"
    if case == "pending":
        add_migration(sql_dir, "0002_domain", PLAIN + ";\n")
    add_migration(sql_dir, "0003_retype", (PLAIN + ";\n" if case == "same_file" else "") + retype)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db) == before  # the table and its indexes (two on the column) kept their files
    add_migration(sql_dir, "0004_back", f"ALTER TABLE {TABLE} ALTER COLUMN campaign_number TYPE text;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))  # and back to a type with no limit: a relabel
    assert _files(db) == before


# a domain that checks each value, or one over a narrower type: judged as before (each row converted or checked)
DOMAIN_REFUSED = {
    "live_checked": ("CREATE DOMAIN campaign AS varchar(100) CHECK (VALUE <> '')", ""),
    "pending_checked": ("SELECT 1", "CREATE DOMAIN campaign AS varchar(100) NOT NULL;\n"),
    "plain_given_a_check_by_a_pending_alter": (PLAIN, "ALTER DOMAIN campaign ADD CONSTRAINT c CHECK (VALUE <> '') "
                                                      "NOT VALID;\n"),
    "narrower": ("CREATE DOMAIN campaign AS varchar(20)", ""),
    "pending_narrower": ("SELECT 1", "CREATE DOMAIN campaign AS varchar(20);\n"),
}


@pytest.mark.parametrize("case", list(DOMAIN_REFUSED))
def test_a_type_change_to_a_constrained_or_narrower_domain_is_still_refused(cli, db, sql_dir, case):
    setup, before = DOMAIN_REFUSED[case]
    text = before + f"ALTER TABLE {TABLE} ALTER COLUMN campaign_number TYPE campaign USING campaign_number::campaign;\n"
    refused_before_running(cli, db, sql_dir, case, setup, text, 2 + before.count("\n"),
                           "ALTER COLUMN campaign_number TYPE campaign")


def test_leaving_a_domain_for_its_base_type_with_a_limit_is_refused_and_the_server_rewrites(cli, db, sql_dir):
    """A column of a domain is read as the base type with no limit (PostgreSQL's Var has none): to varchar(100)
    every row is checked, to text it is a relabel (above)."""
    seeded(cli, db, sql_dir)
    db.query(PLAIN + f"; ALTER TABLE {TABLE} ALTER COLUMN campaign_number TYPE campaign")
    retype = f"ALTER TABLE {TABLE} ALTER COLUMN campaign_number TYPE varchar(100);\n"
    path = add_migration(sql_dir, "0002_leave", retype)
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:1: ALTER COLUMN campaign_number TYPE varchar(100) rewrites " \
        f"public.{TABLE} (~50 rows" in result.stderr, result.output
    before = _files(db)[TABLE]
    add_migration(sql_dir, "0002_leave", MARKER + retype)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _files(db)[TABLE] != before  # the verdict was right: rewritten
