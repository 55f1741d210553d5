"""A text psql sends as one statement that holds several for the server (issue 24, attack24u 2 and 4), on the real
PostgreSQL: psql's BEGIN ... END count (copied by the splitter) takes a routine NAMED begin for a BEGIN ATOMIC body
and sends the rest of the file with it; the server runs every statement in it. Transaction control there is refused
before anything runs, in any file and in a rollback file; every other statement in it is judged as its own
(the rewrite refusal, plan's verdicts, the tenant check); and were one to reach the server anyway, the runner never
records a file whose transaction is no longer the one it opened."""

from __future__ import annotations

import pytest

from conftest import SEED, add_migration, applied, migrate, ok
from test_rewrites import SMALL, TABLE, seeded

from migrator.postgres import files

BEGIN_FN = "CREATE FUNCTION begin() RETURNS int LANGUAGE sql IMMUTABLE RETURN 1;\n"
NEW_TABLE = "CREATE TABLE report_archive (id bigint PRIMARY KEY, note text);\n"
# (file text, its refused line, what the refusal names): attack24u 2's variants
HIDDEN = {
    "rollback_and_chain": (NEW_TABLE + BEGIN_FN + "ROLLBACK AND CHAIN;\n", 3, "ROLLBACK AND CHAIN is inside"),
    "rollback_then_begin": (NEW_TABLE + BEGIN_FN + "ROLLBACK; BEGIN;\n", 3, "ROLLBACK is inside"),
    "commit_and_chain_then_error": (f"ALTER TABLE {TABLE} ADD COLUMN hidden_col int;\n" + BEGIN_FN
                                    + "COMMIT AND CHAIN;\nSELECT 1/0;\n", 3, "COMMIT AND CHAIN is inside"),
}
FUNCTION_BEGIN = "SELECT count(*) FROM pg_proc WHERE proname = 'begin'"
HIDDEN_COL = (f"SELECT count(*) FROM pg_attribute WHERE attrelid = '{TABLE}'::regclass AND attname = 'hidden_col'")


def _nothing_ran(db) -> None:
    assert applied(db) == [SEED]
    assert "report_archive" not in db.tables()
    assert db.query(FUNCTION_BEGIN) == [(0,)] and db.query(HIDDEN_COL) == [(0,)]


@pytest.mark.parametrize("transactional", [True, False], ids=["transactional", "not-transactional"])
@pytest.mark.parametrize("case", list(HIDDEN))
def test_transaction_control_hidden_behind_a_routine_named_begin_is_refused_before_anything_runs(
        cli, db, sql_dir, case, transactional):
    """attack24u 2: ROLLBACK AND CHAIN / ROLLBACK; BEGIN; undid the file and the runner recorded it applied (exit 0);
    COMMIT AND CHAIN then an error committed half of it while the runner said nothing was applied."""
    ok(migrate(cli, db, sql_dir, "--quiet"))
    text, line, what = HIDDEN[case]
    header = "" if transactional else "-- transactional: false\n"
    path = add_migration(sql_dir, "0002_new_table", header + text)
    line += 0 if transactional else 1
    plan = cli("plan", "--sql-dir", sql_dir, env=db.db_env())
    assert plan.exit_code == 2 and f"{path}:{line}: {what}" in plan.stderr, plan.output
    result = migrate(cli, db, sql_dir)
    assert result.exit_code == 2, result.output
    assert f"{path}:{line}: {what} the text psql sends as one statement with the routine at line " in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].endswith("(nothing was run)"), result.stderr
    _nothing_ran(db)
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 1  # (pending)


def test_a_rollback_file_hiding_transaction_control_is_refused_before_anything_runs(cli, db, sql_dir):
    ok(migrate(cli, db, sql_dir, "--quiet"))
    path = add_migration(sql_dir, "0002_new_table", NEW_TABLE, rollback="DROP TABLE report_archive;\n" + BEGIN_FN
                         + "ROLLBACK AND CHAIN;\n")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    result = cli("sql", "rollback", "--count", "1", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2, result.output
    rollback = path.with_name("0002_new_table.rollback.sql")
    assert f"{rollback}:3: ROLLBACK AND CHAIN is inside" in result.stderr, result.stderr
    assert applied(db) == [SEED, "0002_new_table"] and "report_archive" in db.tables()
    assert db.query(FUNCTION_BEGIN) == [(0,)]


def test_a_rewrite_hidden_behind_a_routine_named_begin_is_refused_and_plan_says_so(cli, db, sql_dir):
    """attack24u 4: `ALTER COLUMN id TYPE bigint` after `CREATE FUNCTION begin() ... RETURN 1;` escaped the rewrite
    refusal (plan printed no REFUSED line; migrate applied it, exit 0)."""
    seeded(cli, db, sql_dir)
    path = add_migration(sql_dir, "0002_retype", BEGIN_FN + f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    plan = cli("plan", "--sql-dir", sql_dir, *SMALL, env=db.db_env())
    assert plan.exit_code == 0, plan.output
    assert f"-- REFUSED by migrate: {path}:2: ALTER COLUMN id TYPE bigint rewrites public.{TABLE}" in plan.stdout
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert f"{path}:2: ALTER COLUMN id TYPE bigint rewrites public.{TABLE}" in result.stderr, result.stderr
    assert applied(db) == [SEED] and db.query(FUNCTION_BEGIN) == [(0,)]
    assert db.query(f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{TABLE}'::regclass "
                    "AND attname = 'id'") == [("integer",)]


def test_other_statements_behind_a_routine_named_begin_still_run_as_psql_runs_them(cli, db, sql_dir):
    """Nothing else changes: the text is sent as psql sends it, and a BEGIN ATOMIC body is one statement."""
    ok(migrate(cli, db, sql_dir, "--quiet"))
    add_migration(sql_dir, "0002_fine", BEGIN_FN + "CREATE TABLE report_archive (id int);\n"
                  "CREATE FUNCTION two() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\n")
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED, "0002_fine"] and "report_archive" in db.tables()
    assert db.query("SELECT begin(), two()") == [(1, 2)]


def test_each_statement_inside_such_a_text_is_judged_with_its_own_line(tmp_path):
    """The tenant check and the statements the judges read see the statements the server parses, not the head."""
    from migrator.postgres import server_statements

    path = tmp_path / "0002_x.sql"
    path.write_text("-- why\n" + BEGIN_FN + "SELECT 1;\nCREATE EXTENSION hstore;\n")
    assert [line for line, _ in files.tenant_problems(path)] == [4]
    found = files.statements(path, in_transaction=True)
    assert len(found) == 1 and found[0].swallowed
    assert [(s.line, s.text) for s in server_statements.judged(found)] == [
        (2, BEGIN_FN.rstrip(";\n")), (3, "SELECT 1"), (4, "CREATE EXTENSION hstore")]


# (file text, what must not be in the database after it: the statements before a hidden end of the transaction)
UNSEEN = {
    "rollback_and_chain": NEW_TABLE + BEGIN_FN + "ROLLBACK AND CHAIN;\nCREATE TABLE after_chain (id int);\n",
    "rollback_then_begin": NEW_TABLE + BEGIN_FN + "ROLLBACK; BEGIN;\nCREATE TABLE after_chain (id int);\n",
    "commit_and_chain": NEW_TABLE + BEGIN_FN + "COMMIT AND CHAIN;\nCREATE TABLE after_chain (id int);\n",
}


@pytest.mark.parametrize("case", list(UNSEEN))
def test_a_file_that_ended_its_transaction_unseen_is_never_recorded(cli, db, sql_dir, monkeypatch, case):
    """The second line of defence (issue 24 part 2): were transaction control to reach the server unseen (the text
    check switched off here), the runner records the file only in the transaction it opened; ROLLBACK AND CHAIN
    and ROLLBACK; BEGIN; left the session in a transaction, so the old idle check let the runner record it."""
    from migrator.postgres import server_statements

    ok(migrate(cli, db, sql_dir, "--quiet"))
    monkeypatch.setattr(server_statements, "_ends_transaction", lambda tree: False)
    monkeypatch.setattr(files, "in_transaction_problem", lambda statement: None)
    path = add_migration(sql_dir, "0002_new_table", UNSEEN[case])
    result = migrate(cli, db, sql_dir)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{path}" in errors[0], result.stderr
    assert "the file ended that transaction" in errors[0] and "recorded none of it" in errors[0], errors[0]
    assert "nothing of it was applied" not in errors[0]
    assert applied(db) == [SEED] and "after_chain" not in db.tables()  # (the runner's rollback of the chained one)
    assert ("report_archive" in db.tables()) == (case == "commit_and_chain")
    status = cli("status", "--sql-dir", sql_dir, env=db.db_env())
    assert "0002_new_table" in status.output and "may have committed" in status.output, status.output



def test_a_rollback_file_that_ended_its_transaction_unseen_leaves_the_migration_applied(cli, db, sql_dir, monkeypatch):
    """`sql rollback`: the rollback file's record (the checksum's removal) is refused as a migration's would be."""
    from migrator.postgres import server_statements

    ok(migrate(cli, db, sql_dir, "--quiet"))
    add_migration(sql_dir, "0002_new_table", NEW_TABLE, rollback="DROP TABLE report_archive;\n" + BEGIN_FN
                  + "ROLLBACK AND CHAIN;\n")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    monkeypatch.setattr(server_statements, "_ends_transaction", lambda tree: False)
    monkeypatch.setattr(files, "in_transaction_problem", lambda statement: None)
    result = cli("sql", "rollback", "--count", "1", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 1, result.output
    assert "the file ended that transaction" in result.stderr, result.stderr
    assert applied(db) == [SEED, "0002_new_table"] and "report_archive" in db.tables()


def test_lint_reads_each_statement_inside_such_a_text(tmp_path):
    """lint's dynamic search_path finding (and so plan's) names the DO block hidden behind the routine, at its line."""
    from types import SimpleNamespace

    from migrator import lint

    path = tmp_path / "0002_x.sql"
    path.write_text(BEGIN_FN + "DO $$ BEGIN EXECUTE 'SET search_path TO ' || 'x'; END $$;\n")
    found = lint.path_findings([SimpleNamespace(path=path, use_transactions=True)])
    assert [(f.line, f.rule) for f in found] == [(2, lint.DYNAMIC_PATH)]


def test_the_runners_mark_of_its_transaction_changes_nothing_a_file_may_do(cli, db, sql_dir):
    """The mark is a SET LOCAL (no snapshot: SET TRANSACTION may still be a file's first statement, as it may without
    lock retries) and is set again after a file's RESET ALL: such files run and are recorded."""
    ok(migrate(cli, db, sql_dir, "--quiet"))
    add_migration(sql_dir, "0002_serializable", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\n" + NEW_TABLE,
                  rollback="DROP TABLE report_archive;\n")
    add_migration(sql_dir, "0003_reset_all", "SET work_mem = '8MB';\nRESET ALL;\nCREATE TABLE after_reset (id int);\n",
                  rollback="DROP TABLE after_reset;\n")
    ok(migrate(cli, db, sql_dir, "--ddl-lock-timeout", "0"))
    assert applied(db) == [SEED, "0002_serializable", "0003_reset_all"]
    ok(cli("sql", "rollback", "--count", "1", "--sql-dir", sql_dir, env=db.db_env()))
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED, "0002_serializable", "0003_reset_all"] and "after_reset" in db.tables()


def test_set_transaction_may_be_a_files_first_statement_under_default_lock_retries(cli, db, sql_dir):
    """As psql -1 -f: SET TRANSACTION ISOLATION LEVEL first in a transactional file works with the default lock
    retries too (the runner asked whether it may lower deadlock_timeout with a SELECT in the file's transaction,
    which took its snapshot first: "must be called before any query"); written later, the line says where it goes."""
    ok(migrate(cli, db, sql_dir, "--quiet"))
    add_migration(sql_dir, "0002_serializable", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\n" + NEW_TABLE,
                  rollback="DROP TABLE report_archive;\n")
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED, "0002_serializable"] and "report_archive" in db.tables()
    add_migration(sql_dir, "0003_late", "CREATE TABLE late (id int);\nSET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\n",
                  rollback="DROP TABLE late;\n")
    result = migrate(cli, db, sql_dir)
    assert result.exit_code == 1 and "0003_late.sql:2:" in result.output
    assert "make it the file's first statement" in result.output and "transactional: false" not in result.output
