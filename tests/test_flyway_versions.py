"""`sql rollback` and `sql repair` find Flyway's history rows by version, as Flyway does: a renamed file whose
version matches (`V02` for `V2`, a new description) is the same migration, and an ID given as a version
(`20230101120000`, `1.10`, `1_10`) resolves by Flyway's version comparison."""

from __future__ import annotations

from conftest import one_error_line, ok
from test_flyway import rows, write


def failed_row(db, rank: int, version: str, script: str) -> None:
    """The row Flyway 10 leaves for a migration that failed part-way (a non-transactional file)."""
    db.query("INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, checksum, "
             "installed_by, execution_time, success) VALUES (%s, %s, 'x', 'SQL', %s, 0, 'flyway', 1, false)",
             (rank, version, script))


def test_rollback_of_a_renamed_file_runs_its_undo_and_removes_its_versions_row(cli, db, tmp_path):
    folder = tmp_path / "main"
    write(folder, "V1__create_a.sql", "CREATE TABLE a (id INT);\n")
    write(folder, "V2__create_b.sql", "CREATE TABLE b (id INT);\n")
    write(folder, "U2__create_b.sql", "DROP TABLE b;\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    (folder / "V2__create_b.sql").rename(folder / "V02__create_b.sql")  # the same version, as Flyway reads it
    done = ok(cli("sql", "rollback", "--sql-dir", folder, env=db.db_env()))
    assert "rolled back V02__create_b" in done.stdout, done.output
    assert "b" not in db.tables() and "a" in db.tables()
    assert [r[4] for r in rows(db)] == ["V1__create_a.sql"]  # V2's row (script V2__create_b.sql) went with it
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert [(r[1], r[4]) for r in rows(db)] == [("1", "V1__create_a.sql"), ("02", "V02__create_b.sql")]  # (as Flyway writes it)


def test_rollback_of_a_file_whose_description_changed_finds_its_row(cli, db, tmp_path):
    folder = tmp_path / "main"
    write(folder, "V1__create_a.sql", "CREATE TABLE a (id INT);\n")
    write(folder, "V2__create_b.sql", "CREATE TABLE b (id INT);\n")
    write(folder, "U2__create_b.sql", "DROP TABLE b;\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    (folder / "V2__create_b.sql").rename(folder / "V2__create_table_b.sql")
    (folder / "U2__create_b.sql").rename(folder / "U2__create_table_b.sql")
    ok(cli("sql", "rollback", "--sql-dir", folder, env=db.db_env()))
    assert "b" not in db.tables() and [r[1] for r in rows(db)] == ["1"]


def test_rollback_to_a_version_resolves_by_flyways_comparison(cli, db, tmp_path):
    folder = tmp_path / "main"
    for version, table in (("1", "a"), ("1.9", "b"), ("1_10", "c"), ("20230101120000", "d")):
        write(folder, f"V{version}__create_{table}.sql", f"CREATE TABLE {table} (id INT);\n")
        write(folder, f"U{version}__create_{table}.sql", f"DROP TABLE {table};\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    ok(cli("sql", "rollback", "--to", "1.10", "--sql-dir", folder, env=db.db_env()))  # 1.10 is V1_10, after 1.9
    assert {"a", "b", "c"} <= db.tables() and "d" not in db.tables()
    ok(cli("sql", "rollback", "--to", "1.0", "--sql-dir", folder, env=db.db_env()))  # 1.0 is 1
    assert "a" in db.tables() and not {"b", "c"} & db.tables()
    assert [r[1] for r in rows(db)] == ["1"]
    unknown = one_error_line(cli("sql", "rollback", "--to", "7", "--sql-dir", folder, env=db.db_env()))
    assert "--to 7: no applied migration has that id" in unknown


def test_repair_finds_failed_rows_by_version_whatever_their_script_name(cli, db, tmp_path):
    folder = tmp_path / "main"
    write(folder, "V1__create_a.sql", "CREATE TABLE a (id INT);\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    write(folder, "V1_10__fill_a_again.sql", "INSERT INTO a VALUES (10);\n")
    write(folder, "V02__fill_a.sql", "INSERT INTO a VALUES (2);\n")
    write(folder, "V20230101120000__late.sql", "INSERT INTO a VALUES (3);\n")
    failed_row(db, 2, "1.10", "V1_10__fill_a.sql")  # the file's description changed since
    failed_row(db, 3, "2", "V2__fill_a.sql")  # written V2, now V02
    failed_row(db, 4, "20230101120000", "V20230101120000__late.sql")
    removed = ok(cli("sql", "repair", "1.10", "--sql-dir", folder, env=db.db_env()))
    assert "removed 1 failed row(s)" in removed.stdout, removed.output
    assert [r[1] for r in rows(db)] == ["1", "2", "20230101120000"]
    ok(cli("sql", "repair", "V02__fill_a", "--sql-dir", folder, env=db.db_env()))
    assert [r[1] for r in rows(db)] == ["1", "20230101120000"]
    ok(cli("sql", "repair", "20230101120000", "--sql-dir", folder, env=db.db_env()))
    assert [r[1] for r in rows(db)] == ["1"]
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert db.query("SELECT id FROM a ORDER BY id") == [(2,), (3,), (10,)]
    unknown = one_error_line(cli("sql", "repair", "9", "--sql-dir", folder, env=db.db_env()))
    assert "unknown migration id 9" in unknown


def test_lint_pending_reads_the_history_schema_table_names(cli, db, tmp_path):
    """Services sharing a schema: what is pending for census is census's history's, never plan's (one file name)."""
    from migrator.lint import squawk_path

    if squawk_path() is None:
        import pytest

        pytest.skip("squawk is not installed (`make install` brings it)")
    plan, census = tmp_path / "plan", tmp_path / "census"
    plan_env, census_env = ({**db.db_env(), "SCHEMA_TABLE": t} for t in ("plan_history", "census_history"))
    for folder, table in ((plan, "plan"), (census, "census")):
        write(folder, "V1__init.sql", f"CREATE TABLE {table} (name TEXT);\n")
    ok(cli("migrate", "--sql-dir", census, env=census_env))
    for folder, table in ((plan, "plan"), (census, "census")):
        write(folder, "V2__index.sql", f"CREATE INDEX {table}_idx ON {table} (name);\n")  # blocking: a finding
    ok(cli("migrate", "--sql-dir", plan, env=plan_env))
    pending = cli("sql", "lint", "--pending", "--sql-dir", census, env=census_env)
    assert pending.exit_code == 1 and "V2__index.sql" in pending.stdout, pending.output  # not applied for census
    assert "V1__init.sql" not in pending.stdout
    done = cli("sql", "lint", "--pending", "--sql-dir", plan, env=plan_env)
    assert done.exit_code == 0 and "V2__index.sql" not in done.stdout, done.output
