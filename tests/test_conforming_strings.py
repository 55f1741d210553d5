"""Issue 24, attack24q 3 (HIGH): with standard_conforming_strings off, the server reads a plain '...' literal holding a
backslash otherwise than the splitter and pglast (and so every judge: the rewrite refusal, the blind probe's
clock): an ALTER COLUMN TYPE hidden inside what they read as one INSERT rewrote the table at deploy, exit 0.
Such a statement is refused (exit 2) and never sent while the session has the setting off, however it got so."""

import pytest

from conftest import SEED, add_migration, applied, migrate, ok, one_error_line

# One INSERT to the splitter and pglast; with the setting off, to the server: INSERT; ALTER ...; SELECT '...'.
HIDDEN = ("CREATE TABLE seed (a text, b text);\n"
          "INSERT INTO seed VALUES ('\\', '); ALTER TABLE hcm_report_metadata ALTER COLUMN id TYPE bigint; SELECT --\n"
          "')-- '\n;\n")
ID_TYPE = ("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
           "WHERE attrelid = 'hcm_report_metadata'::regclass AND attname = 'id'")


def _off_for_database(db) -> None:
    db.query(f"ALTER DATABASE {db.name} SET standard_conforming_strings = off")


def test_a_database_with_the_setting_off_refuses_a_file_the_server_would_read_otherwise(cli, db, sql_dir):
    ok(migrate(cli, db, sql_dir))
    _off_for_database(db)
    path = add_migration(sql_dir, "0002_seed", HIDDEN)
    plan = cli("plan", "--sql-dir", sql_dir, env=db.db_env())  # (says what migrate refuses)
    assert plan.exit_code == 0 and f"warning: migrate refuses this: {path}:2: a '...' literal holding a backslash" \
           in plan.stderr, plan.output
    result = migrate(cli, db, sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 2, result.output
    assert f"{path}:2: a '...' literal holding a backslash reads otherwise while standard_conforming_strings is off" \
           in line and "the database's setting (ALTER DATABASE ... SET)" in line, line
    assert "SET standard_conforming_strings = on" in line and "nothing was applied" in line, line
    assert applied(db) == [SEED] and db.query(ID_TYPE) == [("integer",)]


def test_an_earlier_pending_file_naming_the_setting_refuses_the_later_file_before_anything_runs(cli, db, sql_dir):
    ok(migrate(cli, db, sql_dir))
    add_migration(sql_dir, "0002_legacy",
                  f"ALTER ROLE CURRENT_USER IN DATABASE {db.name} SET standard_conforming_strings = off;\n")
    path = add_migration(sql_dir, "0003_seed", HIDDEN)
    result = migrate(cli, db, sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 2 and f"{path}:2: " in line and "0002_legacy.sql:1 may turn it off" in line, line
    assert applied(db) == [SEED] and db.query(ID_TYPE) == [("integer",)]


@pytest.mark.parametrize("turn_off,transactional", [
    # an earlier file, by a name no text check reads: the later file's session starts with it off
    ("DO $$ BEGIN EXECUTE 'ALTER ROLE CURRENT_USER IN DATABASE ' || current_database() || ' SET standard_'\n"
     "  || 'conforming_strings = off'; END $$;\n", None),
    # the file itself, by a computed name, in its transaction / outside one
    ("SELECT set_config('standard_' || 'conforming_strings', 'off', false);\n", True),
    ("SELECT set_config('standard_' || 'conforming_strings', 'off', false);\n", False),
], ids=["earlier-file", "same-file", "same-file-not-transactional"])
def test_a_statement_read_otherwise_is_not_sent_whatever_turned_the_setting_off(cli, db, sql_dir, turn_off,
                                                                                transactional):
    if transactional is None:
        add_migration(sql_dir, "0002_legacy", turn_off)
        path, first = add_migration(sql_dir, "0003_seed", HIDDEN), 2
    else:
        head = "" if transactional else "-- transactional: false\n"
        path, first = add_migration(sql_dir, "0002_seed", head + turn_off + HIDDEN), 3 + (not transactional)
    result = migrate(cli, db, sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 2, result.output
    assert f"{path}:{first}: failed to apply" in line and "reads otherwise while standard_conforming_strings is off" \
           in line and "it was not sent" in line, line
    assert db.query(ID_TYPE) == [("integer",)]
    assert path.stem not in applied(db)
    if transactional:
        assert "nothing of it was applied" in line and db.query("SELECT to_regclass('seed')") == [(None,)]
    elif transactional is False:
        assert "COMMITTED" in line and db.query("SELECT count(*) FROM seed") == [(0,)]


def test_with_the_setting_off_a_file_whose_literals_read_alike_either_way_applies(cli, db, sql_dir):
    _off_for_database(db)
    add_migration(sql_dir, "0002_seed", "CREATE TABLE seed (a text);\n"
                                        "INSERT INTO seed VALUES (E'C:\\\\dir'), ($$a\\b$$), ('it''s');\n")
    ok(migrate(cli, db, sql_dir))
    assert db.query("SELECT a FROM seed ORDER BY a") == [("C:\\dir",), ("a\\b",), ("it's",)]


@pytest.mark.parametrize("text,found", [
    ("INSERT INTO t VALUES ('a\\b')", 22), ("SELECT 'x", 7), ("SELECT U&'\\0041'", 9),
    ("SELECT E'\\''", None), ("SELECT $$\\'$$", None), ("SELECT $q$ '\\' $q$", None), ("SELECT 1 -- '\\'", None),
    ("SELECT /* '\\' /* */ */ 1", None), ('SELECT "a\\b"', None), ("SELECT 'it''s'", None), ("SELECT e'\\n'", None),
])
def test_backslash_literal_finds_where_the_two_readings_part(text, found):
    from migrator.postgres.splitter import backslash_literal

    assert backslash_literal(text) == found



def test_a_file_s_own_set_off_refuses_its_later_backslash_literal_until_it_sets_it_on_again(cli, db, sql_dir):
    """(After its RESET, a backslash literal runs as psql runs it: tests/test_sql_attacks.py.)"""
    path = add_migration(sql_dir, "0002_seed", "CREATE TABLE seed (a text);\nSET standard_conforming_strings = off;\n"
                                               "INSERT INTO seed VALUES ('a\\b');\n")
    result = migrate(cli, db, sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 2 and f"{path}:3: " in line and f"{path}:2 turns it off" in line, line
    assert applied(db) == []


def test_the_runners_own_catalog_reads_hold_with_the_setting_off(cli, db, sql_dir):
    """attack24s 3: with the setting off (a legacy role's or database's), the runner's own `'\\s*,\\s*'` split the
    search_path into ` public` (no such schema): the unqualified table was not found, its rewrite not refused, exit 0.
    Failed before: applied, id became bigint."""
    from test_rewrites import SMALL, seeded

    seeded(cli, db, sql_dir)
    _off_for_database(db)
    path = add_migration(sql_dir, "0002_retype", "ALTER TABLE hcm_report_metadata ALTER COLUMN id TYPE bigint;\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"error: {path}:1: ALTER COLUMN id TYPE bigint rewrites " \
        "public.hcm_report_metadata" in result.stderr, result.output
    assert db.query(ID_TYPE) == [("integer",)]


def test_a_backfill_batch_that_turns_it_off_unseen_stops_before_the_next_batch(cli, db, sql_dir):
    """attack23y 7b (HIGH): each batch is the statement sent again, with no check between batches: the second batch,
    read with the setting off, was one literal and two more statements (a DROP): exit 0, recorded as applied. Failed
    before the fix."""
    from test_client_encoding import backfill_stopped

    db.query("CREATE TABLE keepme (id int)")
    # (two literals with the setting on; with it off, one literal and two more statements)
    line = backfill_stopped(cli, db, sql_dir, "'a\\' || '; DROP TABLE keepme; SELECT 1 FROM t --'",
                            "standard_conforming_strings", "off")
    assert "standard_conforming_strings is off (turned off by its last batch)" in line, line
