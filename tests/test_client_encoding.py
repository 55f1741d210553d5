"""A file that changes client_encoding (attack23x 4, 4b): psycopg2 keeps encoding the runner's text as it connected,
so after `SET client_encoding TO 'SJIS'` the server reads `SELECT E'Á\\'; DROP TABLE keepme; --'` (one literal to
every check) as two statements. Refused before anything runs when the file names the setting; stopped before the
next statement (or the runner's own record) when it changes it unseen; real PostgreSQL throughout."""

from __future__ import annotations

import pytest
from conftest import add_migration, applied, migrate, ok, one_error_line

HIDDEN = "SELECT E'\u00c1\\'; DROP TABLE keepme; --';\n"  # Á = C3 81: 81 is an SJIS lead byte, it takes the backslash
SETTERS = {
    "SET": "SET client_encoding TO 'SJIS';\n",
    "SET SESSION quoted": "SET SESSION \"client_encoding\" = 'BIG5';\n",
    "SET NAMES": "SET NAMES 'SJIS';\n",
    "set_config": "SELECT pg_catalog.set_config('client_encoding', 'SJIS', false);\n",
    "DO EXECUTE": "DO $d$BEGIN EXECUTE $e$SET client_encoding TO 'SJIS'$e$; END$d$;\n",
    "DO EXECUTE NAMES": "DO $$BEGIN EXECUTE 'SET NAMES ''GBK'''; END$$;\n",
    "ALTER ROLE": "ALTER ROLE CURRENT_USER SET client_encoding = 'SJIS';\n",
    "RESET": "RESET client_encoding;\n",
}


@pytest.fixture
def keepme(cli, db, sql_dir):
    add_migration(sql_dir, "0002_keep", "CREATE TABLE keepme (id int);\n")
    ok(migrate(cli, db, sql_dir))
    return db


def kept(db) -> bool:
    return db.query("SELECT to_regclass('public.keepme') IS NOT NULL") == [(True,)]


@pytest.mark.parametrize("setter", SETTERS)
def test_a_file_that_names_client_encoding_is_refused_by_lint_plan_and_migrate_before_anything_runs(
        cli, keepme, sql_dir, setter):
    add_migration(sql_dir, "0003_enc", "CREATE TABLE before_it (id int);\n" + SETTERS[setter] + HIDDEN)
    for result in (cli("sql", "lint", "--sql-dir", sql_dir), cli("plan", "--offline", "--sql-dir", sql_dir),
                   migrate(cli, keepme, sql_dir)):
        assert result.exit_code != 0, (setter, result.output)
        assert "0003_enc.sql:2:" in result.output and "changes client_encoding" in result.output, result.output
    assert kept(keepme) and keepme.query("SELECT to_regclass('public.before_it')") == [(None,)]


def test_pg_dumps_utf8_line_is_still_accepted(cli, db, sql_dir):
    add_migration(sql_dir, "0002_dump", "SET client_encoding = 'UTF8';\nSET NAMES 'utf-8';\nCREATE TABLE d (v text);\n")
    ok(migrate(cli, db, sql_dir))


def test_a_rollback_file_and_a_flyway_folder_that_name_it_are_refused(cli, db, tmp_path, sql_dir):
    add_migration(sql_dir, "0002_t", "CREATE TABLE t (id int);\n", rollback="SET NAMES 'SJIS';\nDROP TABLE t;\n")
    ok(migrate(cli, db, sql_dir))
    line = one_error_line(cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env()))
    assert "0002_t.rollback.sql:1: changes client_encoding" in line, line
    assert db.query("SELECT to_regclass('public.t') IS NOT NULL") == [(True,)]
    folder = tmp_path / "flyway"
    folder.mkdir()
    add_migration(folder, "V1__a", "CREATE TABLE fa (id int);\n")
    add_migration(folder, "V2__cr\u00e9er", "SET client_encoding TO 'BIG5';\nINSERT INTO fa VALUES (1);\n")
    line = one_error_line(migrate(cli, db, folder))
    assert "V2__cr\u00e9er.sql:1: changes client_encoding" in line, line


# set by a name no text check can read: the server's report of the setting stops it
UNSEEN = "SELECT pg_catalog.set_config('client_' || 'encoding', 'SJIS', false);\n"


@pytest.mark.parametrize("transactional", [True, False])
def test_a_change_no_check_can_read_stops_the_file_before_its_next_statement(cli, keepme, sql_dir, transactional):
    head = "" if transactional else "-- transactional: false\n"
    add_migration(sql_dir, "0003_enc", head + "CREATE TABLE before_it (id int);\n" + UNSEEN + HIDDEN)
    result = migrate(cli, keepme, sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 2, result.output
    assert "client_encoding is SJIS" in line and "it was not sent" in line, line
    assert kept(keepme)
    if transactional:
        assert "nothing of it was applied" in line, line
        assert keepme.query("SELECT to_regclass('public.before_it')") == [(None,)]
    else:  # the CREATE and the set_config committed, said so
        assert "statements 1-2 of 3" in line and "COMMITTED" in line, line
        assert keepme.query("SELECT to_regclass('public.before_it') IS NOT NULL") == [(True,)]
    assert "0003_enc" not in [row[0] for row in keepme.query("SELECT migration_id FROM _yoyo_migration")]


def test_a_change_in_a_flyway_files_last_statement_never_garbles_flyways_history(cli, db, tmp_path):
    folder = tmp_path / "flyway"
    folder.mkdir()
    add_migration(folder, "V1__a", "CREATE TABLE fa (id int);\n")
    add_migration(folder, "V2__cr\u00e9er", "INSERT INTO fa VALUES (1);\n"
                  "SELECT set_config('client_' || 'encoding', 'BIG5', false);\n")
    result = migrate(cli, db, folder)
    line = one_error_line(result)
    assert "V2__cr\u00e9er.sql: the session's client_encoding is BIG5" in line and "rolled back" in line, line
    assert db.query("SELECT script FROM flyway_schema_history WHERE version IS NOT NULL ORDER BY installed_rank") \
        == [("V1__a.sql",)]
    assert db.query("SELECT count(*) FROM fa") == [(0,)]


def test_over_tenant_schemas_a_named_change_is_refused_and_an_unseen_one_stops_each_schemas_file(cli, db, sql_dir):
    db.query("CREATE SCHEMA a; CREATE SCHEMA c")
    path = add_migration(sql_dir, "0002_enc", "CREATE TABLE t (id int);\nSET NAMES 'SJIS';\n")
    run = ("migrate", "--sql-dir", sql_dir, "--schema", "a", "--schema", "c")
    result = cli(*run, env=db.db_env())
    one_error_line(result)
    for schema in ("a", "c"):  # (each schema's line says it; nothing of the run applied)
        assert f"[{schema}] FAILED: {path}:2: changes client_encoding" in result.stderr, result.stderr
        assert db.query(f"SELECT to_regclass('{schema}.hcm_report_metadata')") == [(None,)]
    path.write_text("CREATE TABLE t (id int);\n" + UNSEEN + "CREATE TABLE after_it (id int);\n")
    result = cli(*run, env=db.db_env())
    one_error_line(result)
    for schema in ("a", "c"):
        failed = next(line for line in result.stderr.splitlines() if line.startswith(f"[{schema}] FAILED"))
        assert "client_encoding is SJIS" in failed and "rolled back" in failed, failed
        assert db.query(f"SELECT to_regclass('{schema}.t'), to_regclass('{schema}.after_it')") == [(None, None)]


def test_a_rollback_file_that_changes_it_unseen_is_stopped_and_rolled_back(cli, keepme, sql_dir):
    add_migration(sql_dir, "0003_t", "CREATE TABLE t (id int);\n", rollback="DROP TABLE t;\n" + UNSEEN + HIDDEN)
    ok(migrate(cli, keepme, sql_dir))
    result = cli("sql", "rollback", "--sql-dir", sql_dir, env=keepme.db_env())
    line = one_error_line(result)
    assert result.exit_code == 2 and "client_encoding is SJIS" in line, line
    assert kept(keepme) and keepme.query("SELECT to_regclass('public.t') IS NOT NULL") == [(True,)]
    assert "0003_t" in [row[0] for row in keepme.query("SELECT migration_id FROM _yoyo_migration")]


def backfill_stopped(cli, db, sql_dir, literal: str, setting: str, value: str) -> str:
    """A non-transactional file whose `-- backfill: batch` UPDATE (line 5) sets v to `literal` and, in its first batch,
    `setting` to `value` by a computed name (no text check reads it): stopped before its second batch (exit 2, one
    row done, keepme, which a misread batch drops, kept, unrecorded); its error line."""
    head, tail = setting.split("_", 1)
    path = add_migration(sql_dir, "0003_fill", "-- transactional: false\n"
                         "CREATE TABLE t (id int PRIMARY KEY, v text);\n"
                         "INSERT INTO t SELECT g, NULL FROM generate_series(1, 3) g;\n"
                         f"-- backfill: batch\nUPDATE t SET v = {literal}\n"
                         "WHERE id IN (SELECT id FROM t WHERE v IS NULL LIMIT 1)"
                         f" AND length(pg_catalog.set_config('{head}' || '_{tail}', '{value}', false)) > 0;\n")
    result = migrate(cli, db, sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 2, result.output
    assert f"{path}:5: " in line and "it was not sent" in line, line
    assert "the backfill at line 5 COMMITTED 1 row(s) in 1 batch(es)" in line, line
    assert kept(db) and db.query("SELECT count(v) FROM t") == [(1,)]
    assert "0003_fill" not in applied(db)
    return line


def test_a_backfill_batch_that_changes_it_unseen_stops_before_the_next_batch(cli, keepme, sql_dir):
    """attack23y 7 (HIGH): every batch was sent with no check between batches: keepme dropped (committed), then a
    TypeError, exit 1. Failed before the fix."""
    # (each batch is the statement sent again: read in SJIS, `E'Á\'` ends at the quote, the rest runs as statements)
    line = backfill_stopped(cli, keepme, sql_dir, "E'\u00c1\\'; DROP TABLE keepme; SELECT 1 FROM t --'",
                            "client_encoding", "SJIS")
    assert "client_encoding is SJIS (its last batch changed it" in line, line
    assert "; remove what sets client_encoding from the file" in line, line  # (before the generic words)


def test_a_non_transactional_file_whose_last_statement_changes_it_unseen_says_what_committed(cli, keepme, sql_dir):
    """attack23y 8 (MEDIUM): the stop before the runner's record crashed (`unexpected TypeError: Progress.__call__()
    ...`, exit 1) for every non-transactional file. Failed before the fix."""
    path = add_migration(sql_dir, "0003_enc", "-- transactional: false\nCREATE TABLE before_it (id int);\n" + UNSEEN)
    result = migrate(cli, keepme, sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 2, result.output
    assert line.startswith(f"error: {path}: the session's client_encoding is SJIS (the file changed it"), line
    assert "not transactional: statements 1-2 of 2 (through the one at line 3) COMMITTED; it was not recorded as " \
           "applied" in line, line
    assert keepme.query("SELECT to_regclass('public.before_it') IS NOT NULL") == [(True,)]
    assert "0003_enc" not in [row[0] for row in keepme.query("SELECT migration_id FROM _yoyo_migration")]
