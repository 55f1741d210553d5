"""A history others could write is not trusted until a person confirms it (issue 23, attack23q MEDIUM), on the real
PostgreSQL.

Under a standing grant the app role may mark a pending migration applied (with its checksum: the sha256 of a file
in the repository) or add a row to Flyway's table, and the runner would skip that migration for good. The run that
takes those rights records, in the same transaction, that the history is unconfirmed (a COMMENT only the tables'
owner can write); every write command then refuses in one line until `sql trust-history --yes`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import add_migration, ok, one_error_line
from migrator.postgres import flyway
from test_flyway_locks import write
from test_planted_objects import low  # noqa: F401 (a fixture)


@pytest.fixture
def app(low):
    return low


def grant_history_to(db, app: str, schema: str = "public") -> None:
    """The usual standing grant: the app may write every table in the schema, the runner's history too."""
    db.query(f"GRANT USAGE ON SCHEMA {schema} TO {app}; "
             f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {app}")


def refused_until_mark_deleted(cli, db, sql_dir, refused_with: str, migration_id: str, table: str) -> None:
    """trust-history --yes refuses (exit 2) saying `refused_with`; with `migration_id`'s mark deleted it confirms, and
    migrate runs the migration making `table`."""
    confirm = cli("sql", "trust-history", "--yes", "--sql-dir", sql_dir, env=db.db_env())
    assert confirm.exit_code == 2 and refused_with in confirm.output, confirm.output
    db.query(f"DELETE FROM public._yoyo_migration WHERE migration_id = '{migration_id}'")
    ok(cli("sql", "trust-history", "--yes", "--sql-dir", sql_dir, env=db.db_env()))
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert table in db.tables()


def forge_mark(db, app: str, migration_id: str, path: Path | None = None, schema: str = "public") -> None:
    """The app marks `migration_id` applied; with `path`, its checksum row too (computable from the repository)."""
    text = path.read_bytes().replace(b"\r\n", b"\n") if path else b""
    checksum = (f"; INSERT INTO {schema}._hcm_migration_checksum (migration_id, sha256) VALUES "
                f"('{migration_id}', '{hashlib.sha256(text).hexdigest()}')") if path else ""
    db.query(f"SET ROLE {app}; INSERT INTO {schema}._yoyo_migration VALUES (encode(sha256('{migration_id}'), 'hex'), "
             f"'{migration_id}', now()){checksum}; RESET ROLE")


def refusal(result, table: str, app: str, confirm: str = "runner.py sql trust-history --yes") -> str:
    line = one_error_line(result) if "--schema" not in confirm else \
        next(x for x in result.stderr.splitlines() if "refusing to apply" in x)
    assert result.exit_code == 2, result.output
    assert "history " in line and table in line and app in line and "may be forged" in line, line
    assert "runner.py status" in line and confirm in line, line
    return line


def test_the_distrust_outlives_a_revoking_run_that_failed(cli, db, sql_dir, app):
    """(a) the revoking run refuses (a mark without its checksum); the next one, finding no foreign right left,
    used to trust the forged mark and backfill its checksum: 0002_more skipped for good."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    grant_history_to(db, app)
    forge_mark(db, app, "0002_more")
    first = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert first.exit_code == 2, first.output
    assert db.query(f"SELECT has_table_privilege('{app}', 'public._yoyo_migration', 'INSERT')") == [(False,)]
    again = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    refusal(again, "public._yoyo_migration", app)
    assert "until a run revoked it" in one_error_line(again)
    assert db.query("SELECT count(*) FROM _hcm_migration_checksum WHERE migration_id = '0002_more'") == [(0,)]
    for command in (("sql", "mark", "0002_more"), ("sql", "rollback")):  # nothing is marked or undone either
        assert cli(*command, "--sql-dir", sql_dir, env=db.db_env()).exit_code == 2
    status = ok(cli("status", "--sql-dir", sql_dir, env=db.db_env()))  # read-only: works, and says so
    assert "unconfirmed" in status.output and "sql trust-history" in status.output, status.output
    plan = ok(cli("plan", "--sql-dir", sql_dir, env=db.db_env()))
    assert "unconfirmed" in plan.stderr and "unconfirmed" not in plan.stdout, plan.output  # (stdout: psql's script)
    doctor = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    (line,) = [x for x in doctor.output.splitlines() if "unconfirmed" in x]
    assert line.startswith("FAIL") and "public._yoyo_migration" in line, doctor.output
    assert "sql trust-history --yes" in doctor.output
    # the steps the line gives: review, delete the forged row, confirm, migrate
    shown = ok(cli("sql", "trust-history", "--sql-dir", sql_dir, env=db.db_env()))
    assert "0002_more" in shown.output and "--yes" in shown.output, shown.output
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 2  # (without --yes: nothing changed)
    db.query("DELETE FROM _yoyo_migration WHERE migration_id = '0002_more'")
    confirmed = ok(cli("sql", "trust-history", "--yes", "--sql-dir", sql_dir, env=db.db_env()))
    assert "confirmed" in confirmed.output, confirmed.output
    assert "nothing to confirm" in ok(cli("sql", "trust-history", "--yes", "--sql-dir", sql_dir,
                                          env=db.db_env())).output  # idempotent
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "more_rows" in db.tables()
    assert "unconfirmed" not in cli("doctor", "--sql-dir", sql_dir, env=db.db_env()).output


def test_a_forged_mark_with_its_checksum_is_refused_by_the_revoking_run(cli, db, sql_dir, app):
    """(b) the checksum row made the forged mark look whole: the revoking run adopted it, exit 0."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    path = add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    grant_history_to(db, app)
    forge_mark(db, app, "0002_more", path)
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    line = refusal(result, "public._yoyo_migration", app)
    assert "until this run revoked it" in line and "public._hcm_migration_checksum" in line, line
    assert "revoked write rights" in result.output  # (the revoke committed, and the distrust with it)
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 2


def test_a_forged_flyway_row_is_refused(cli, db, tmp_path, app):
    """(c) Flyway's table had no check at all: a row the app added for V2 was taken over as applied."""
    folder = tmp_path / "flyway"
    write(folder, "V1__init.sql", "CREATE TABLE init_rows (id int);\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    write(folder, "V2__more.sql", "CREATE TABLE more_rows (id int);\n")
    grant_history_to(db, app)
    db.query(f"SET ROLE {app}; INSERT INTO public.flyway_schema_history (installed_rank, version, description, type, "
             "script, checksum, installed_by, execution_time, success) VALUES (2, '2', 'more', 'SQL', 'V2__more.sql', "
             f"{flyway.checksum(folder / 'V2__more.sql')}, 'app', 1, true); RESET ROLE")
    refusal(cli("migrate", "--sql-dir", folder, env=db.db_env()), "public.flyway_schema_history", app)
    refusal(cli("migrate", "--sql-dir", folder, env=db.db_env()), "public.flyway_schema_history", app)
    assert "more_rows" not in db.tables()
    db.query("DELETE FROM public.flyway_schema_history WHERE installed_rank = 2")
    ok(cli("sql", "trust-history", "--yes", "--sql-dir", folder, env=db.db_env()))
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert "more_rows" in db.tables()


def test_a_tenants_distrust_is_its_own_and_named_with_its_schema(cli, db, sql_dir, app):
    db.query("CREATE SCHEMA ta; CREATE SCHEMA tb")
    for schema in ("ta", "tb"):
        ok(cli("migrate", "--sql-dir", sql_dir, "--schema", schema, env=db.db_env()))
    grant_history_to(db, app, "ta")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "ta", env=db.db_env())
    refusal(result, "ta._yoyo_migration", app, "runner.py sql trust-history --yes --schema ta")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "tb", env=db.db_env()))
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    both = cli("migrate", "--sql-dir", sql_dir, "--schema", "ta", "--schema", "tb", "--parallel", "2", env=db.db_env())
    refusal(both, "ta._yoyo_migration", app, "runner.py sql trust-history --yes --schema ta")
    assert db.query("SELECT to_regclass('tb.more_rows') IS NOT NULL, to_regclass('ta.more_rows') IS NULL") == \
        [(True, True)]  # each schema its own: tb migrated, ta refused
    ok(cli("sql", "trust-history", "--yes", "--sql-dir", sql_dir, "--schema", "ta", env=db.db_env()))
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "ta", env=db.db_env()))


def test_a_history_the_run_creates_needs_no_confirmation(cli, db, sql_dir, app):
    db.query(f"GRANT USAGE ON SCHEMA public TO {app}; ALTER DEFAULT PRIVILEGES IN SCHEMA public "
             f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "unconfirmed" not in cli("doctor", "--sql-dir", sql_dir, env=db.db_env()).output


def test_doctor_over_tenants_names_the_unconfirmed_one(cli, db, sql_dir, app):
    db.query("CREATE SCHEMA ta; CREATE SCHEMA tb")
    for schema in ("ta", "tb"):
        ok(cli("migrate", "--sql-dir", sql_dir, "--schema", schema, env=db.db_env()))
    grant_history_to(db, app, "tb")
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "tb", env=db.db_env()).exit_code == 2
    doctor = cli("doctor", "--sql-dir", sql_dir, "--schema", "ta", "--schema", "tb", env=db.db_env())
    (line,) = [x for x in doctor.output.splitlines() if "unconfirmed" in x]
    assert line.startswith("FAIL") and "[tb]" in line and "tb._yoyo_migration" in line, doctor.output
    assert "sql trust-history --yes --schema tb" in doctor.output, doctor.output
