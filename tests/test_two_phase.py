"""Two-phase commit in a migration file (attack24l N3): a `-- transactional: false` file `BEGIN; ALTER ...; PREPARE
TRANSACTION 'x';` was printed "applied" and recorded while its ALTER was uncommitted, and the prepared transaction
held ACCESS EXCLUSIVE on the live table until someone ended it by hand. PREPARE TRANSACTION, COMMIT PREPARED and
ROLLBACK PREPARED are refused before anything runs, however spelled, in plain, tenant and Flyway folders, by plan,
`sql lint` and migrate, on the real PostgreSQL (whose max_prepared_transactions lets PREPARE TRANSACTION work)."""

from __future__ import annotations

import pytest

from conftest import SEED, add_migration, applied, migrate, ok, one_error_line

NON_TX = "-- transactional: false\n"
SPELLINGS = [  # (file body, line of the refused statement, its words in the error)
    (NON_TX + "BEGIN;\nALTER TABLE t_ok ADD COLUMN p int;\nPREPARE TRANSACTION 'mig_p';\n", 4, "PREPARE TRANSACTION"),
    (NON_TX + "BEGIN;\nALTER TABLE t_ok ADD COLUMN p int;\npRePaRe /* the gid: */\n  -- next line\n"
     "TRANSACTION\t$g$mig_p$g$;\n", 4, "PREPARE TRANSACTION"),
    (NON_TX + "COMMIT -- a comment between\nPREPARED 'other_app_gid';\n", 2, "COMMIT PREPARED"),
    (NON_TX + "rollback/**/prepared 'other_app_gid';\n", 2, "ROLLBACK PREPARED"),
    ("ALTER TABLE t_ok ADD COLUMN p int;\nPREPARE TRANSACTION 'mig_p';\n", 2, "PREPARE TRANSACTION"),  # transactional
]


def _refused(line: str, name: str, at: int, words: str, lint: bool = False) -> None:
    assert f"{name}:{at}:1: runner: {words} " in line if lint else f"{name}:{at}: {words} " in line, line
    assert "two-phase commit has no place in a migration; remove it" in line, line
    assert lint or "nothing was run" in line, line


@pytest.mark.parametrize("body, at, words", SPELLINGS)
def test_two_phase_commit_is_refused_before_anything_runs_by_migrate_plan_and_lint(cli, db, sql_dir, body, at, words):
    add_migration(sql_dir, "0002_ok", "CREATE TABLE t_ok (id int);\n")
    add_migration(sql_dir, "0003_two_phase", body)
    for command in ("migrate", "plan"):
        result = cli(command, "--sql-dir", sql_dir, env=db.db_env())
        assert result.exit_code == 2, (command, result.output)
        _refused(one_error_line(result), "0003_two_phase.sql", at, words)
    lint = cli("sql", "lint", "--sql-dir", sql_dir, env=db.db_env())
    assert lint.exit_code == 1, lint.output  # (lint's findings, each a line)
    _refused(next(line for line in lint.stdout.splitlines() if ": runner: " in line), "0003_two_phase.sql", at, words,
             lint=True)
    assert applied(db) == [] and "t_ok" not in db.tables()
    assert db.query("SELECT count(*) FROM pg_prepared_xacts") == [(0,)]


def test_a_prepare_like_statement_that_is_not_two_phase_commit_still_runs(cli, db, sql_dir):
    add_migration(sql_dir, "0002_words", NON_TX + "PREPARE q (int) AS SELECT $1;\nEXECUTE q(1);\n"
                  "CREATE TABLE prepared (note text);\nINSERT INTO prepared VALUES ('prepare transaction');\n"
                  "COMMIT;\n")  # (a COMMIT outside a block: a warning, nothing prepared)
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED, "0002_words"] and db.query("SELECT note FROM prepared") == [("prepare transaction",)]


def test_a_tenant_file_with_prepare_transaction_is_refused_before_any_schema_runs(cli, db, sql_dir):
    db.query("CREATE SCHEMA a; CREATE SCHEMA c")
    add_migration(sql_dir, "0002_two_phase", NON_TX + "BEGIN;\nCREATE TABLE t (id int);\nPREPARE TRANSACTION 'x';\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--schema", "c", env=db.db_env())
    assert result.exit_code == 2, result.output
    assert "migrate failed in 2 of 2 schema(s): a, c" in one_error_line(result)
    for schema in ("a", "c"):  # (as a transactional file's COMMIT: each schema's run refuses it before its first file)
        failed = next(line for line in result.stderr.splitlines() if line.startswith(f"[{schema}] FAILED"))
        _refused(failed, "0002_two_phase.sql", 4, "PREPARE TRANSACTION")
    assert db.query("SELECT count(*) FROM pg_prepared_xacts") == [(0,)]
    assert db.query("SELECT count(*) FROM pg_tables WHERE tablename = 't'") == [(0,)]


def test_a_flyway_file_with_prepare_transaction_is_refused(cli, db, tmp_path):
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "V1__a.sql").write_text("CREATE TABLE a (id int);\n")
    (folder / "V2__two_phase.sql").write_text("ALTER TABLE a ADD COLUMN p int;\nPrepare Transaction 'fw';\n")
    result = cli("migrate", "--sql-dir", folder, env=db.db_env())
    assert result.exit_code == 2, result.output
    _refused(one_error_line(result), "V2__two_phase.sql", 2, "PREPARE TRANSACTION")
    assert "a" not in db.tables() and db.query("SELECT count(*) FROM pg_prepared_xacts") == [(0,)]
