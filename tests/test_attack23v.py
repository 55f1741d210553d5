"""attack23v (confirming pass on issue 23), findings 2, 3 and 5: a history pg_write_all_data's members write, a
member of the user that cannot act as it, and a pending file's own grant of CREATE or TRIGGER to another role."""

from __future__ import annotations

import hashlib

import pytest

from conftest import add_migration, ok, one_error_line
from test_schema_creators import low  # noqa: F401 (low: a fixture)


def _write_all(db, low) -> None:
    if not db.query("SELECT to_regrole('pg_write_all_data')")[0][0]:
        pytest.skip("pg_write_all_data is PostgreSQL 14+")
    db.query(f"GRANT pg_write_all_data, pg_read_all_data TO {low}; GRANT USAGE ON SCHEMA public TO {low}")


def _as(db, role: str, sql: str) -> None:
    db.query(f"SET ROLE {role}; {sql}; RESET ROLE")


def _doctor_writers(cli, db, sql_dir, env=None) -> str:
    result = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=env or db.db_env())
    [line] = [line for line in result.stdout.splitlines() if "members of pg_write_all_data" in line]
    return line


@pytest.mark.parametrize("forge", ["mark", "removed", "checksum"])
def test_a_member_of_pg_write_all_data_is_refused_like_an_untrusted_writer(cli, db, sql_dir, low, forge):
    """attack23v 2 (HIGH), 2b, 2c: low (pg_write_all_data, no ACL entry to revoke) forged the mark of pending
    0002_important (migrate "up to date"), or removed applied 0002's records (migrate ran the data migration again),
    or wrote a lone checksum row (migrate marked 0002 applied, "committed by a runner that died"). Failed before:
    doctor WARN "ready", migrate exit 0."""
    _write_all(db, low)
    if forge == "removed":
        add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": low}))
    add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    if forge == "removed":
        _as(db, low, "DELETE FROM public._yoyo_migration WHERE migration_id = '0002_important'; "
                     "DELETE FROM public._hcm_migration_checksum WHERE migration_id = '0002_important'; "
                     "DELETE FROM public._yoyo_log WHERE migration_id = '0002_important'")
        db.query("DROP TABLE important")
    elif forge == "mark":
        digest = hashlib.sha256(b"0002_important").hexdigest()
        _as(db, low, f"INSERT INTO public._yoyo_migration VALUES ('{digest}', '0002_important', now())")
    else:
        digest = hashlib.sha256((sql_dir / "0002_important.sql").read_bytes()).hexdigest()
        _as(db, low, f"INSERT INTO public._hcm_migration_checksum VALUES ('0002_important', '{digest}')")
    line = _doctor_writers(cli, db, sql_dir)
    assert line.startswith("FAIL") and f"roles {low} are members of pg_write_all_data" in line, line
    assert f"REVOKE pg_write_all_data FROM {low}" in line and "migrate refuses" in line, line
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    error = one_error_line(result)
    assert result.exit_code == 2 and f"roles {low} are members of pg_write_all_data" in error, error
    assert f"REVOKE pg_write_all_data FROM {low}" in error and f"SCHEMA_CREATORS_TRUSTED={low}" in error, error
    assert "important" not in db.tables()
    db.query(f"REVOKE pg_write_all_data FROM {low}")
    assert "members of pg_write_all_data" not in cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir,
                                                      env=db.db_env()).stdout


def test_a_mark_no_run_wrote_is_not_counted_applied_by_status_nor_migrate(cli, db, sql_dir):
    """attack23v 2: the sign trust-history showed (a mark with no apply in _yoyo_log and no checksum row: the runner
    writes both) was looked at by its review only; status listed the migration applied and migrate said "up to date"
    (exit 0, the migration never ran). Here a writer the run cannot see (a superuser). Failed before: both."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    digest = hashlib.sha256(b"0002_important").hexdigest()
    db.query(f"INSERT INTO public._yoyo_migration VALUES ('{digest}', '0002_important', now())")
    status = ok(cli("status", "--sql-dir", sql_dir, env=db.db_env())).stdout
    [line] = [line for line in status.splitlines() if line.startswith("  0002_important ")]
    assert "pending, FORGED mark?" in line and "1 pending" in status, status
    assert "0002_important is marked applied, yet public._yoyo_log has no apply of it" in status, status
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    error = one_error_line(result)
    assert result.exit_code == 2 and "holds a mark no run wrote (forged?): 0002_important is marked applied" in error
    assert f"DELETE FROM public._yoyo_migration WHERE migration_hash = '{digest}'" in error, error
    assert "important" not in db.tables()
    db.query(f"DELETE FROM public._yoyo_migration WHERE migration_hash = '{digest}'")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "important" in db.tables()
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))  # (its own mark has its log entry and checksum row)


@pytest.mark.parametrize("right", ["create", "trigger"])
def test_a_member_of_the_user_that_cannot_act_as_it_is_no_trusted_creator(cli, db, sql_dir, low, right):
    """attack23v 3 (MEDIUM): `GRANT mig TO low WITH INHERIT FALSE, SET FALSE` (it cannot SET ROLE to mig nor use
    its rights) made low a trusted creator: its CREATE on public / TRIGGER on the user's table was never refused,
    and doctor said it "acts as" the user. Failed before: doctor ready, migrate exit 0."""
    if int(db.query("SHOW server_version_num")[0][0]) < 160000:
        pytest.skip("grant options are PostgreSQL 16+")
    user = db.server.user
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query("CREATE TABLE a (id int, name varchar(20))")
    db.query(f'GRANT "{user}" TO {low} WITH INHERIT FALSE, SET FALSE; GRANT USAGE ON SCHEMA public TO {low}; '
             + (f"GRANT CREATE ON SCHEMA public TO {low}" if right == "create" else f"GRANT TRIGGER ON a TO {low}"))
    add_migration(sql_dir, "0002_data", "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env()).stdout
    [line] = [line for line in doctor.splitlines() if "postgres schema creators" in line]
    assert line.startswith("FAIL") and low in line, line
    assert f"roles {low} are granted user" not in doctor, doctor
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    error = one_error_line(result)
    assert result.exit_code == 2 and "refusing to migrate schema public" in error and low in error, error
    db.query(f'REVOKE "{user}" FROM {low}; GRANT "{user}" TO {low} WITH INHERIT FALSE, SET TRUE')  # (it can: trusted)
    doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env()).stdout
    assert f"roles {low} are granted user {user}: they act as it" in doctor, doctor
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))


@pytest.mark.parametrize("grant, said", [
    ("GRANT USAGE, CREATE ON SCHEMA public TO {low}", "grants CREATE on schema public to role {low}"),
    ("GRANT ALL ON SCHEMA public TO {low}", "grants CREATE on schema public to role {low}"),
    ("GRANT TRIGGER ON a TO {low}", "grants TRIGGER on table a to role {low}"),
    ("GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO {low}",
     "grants ALL (TRIGGER with it) on tables in schema public"),
    ("ALTER DEFAULT PRIVILEGES GRANT TRIGGER ON TABLES TO {low}", "grants TRIGGER on the tables it makes"),
    ("ALTER DEFAULT PRIVILEGES GRANT CREATE ON SCHEMAS TO PUBLIC",
     "grants CREATE on the schemas it makes (a default privilege) to PUBLIC (every role)"),
])
def test_a_pending_file_granting_create_or_trigger_to_another_role_is_refused_before_it_runs(cli, db, sql_dir, low,
                                                                                            grant, said):
    """attack23v 5 (MEDIUM): a non-transactional file's own `GRANT CREATE ON SCHEMA public TO low` (lint clean) /
    `GRANT TRIGGER ON a TO low` committed at once; low planted before the file's next statement, which ran low's `=` /
    trigger as the migration user (the recheck is per file). Failed before: exit 0."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query("CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y')")
    add_migration(sql_dir, "0002_data", f"-- transactional: false\nSELECT 1;\n{grant.format(low=low)};\n"
                  "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    error = one_error_line(result)
    assert result.exit_code == 2 and f"0002_data.sql:3 {said.format(low=low)}" in error, error
    assert "grant it outside migrations and name the role in SCHEMA_CREATORS_TRUSTED=" in error, error
    assert db.query("SELECT name FROM a") == [("y",)]
    assert db.query(f"SELECT has_schema_privilege('{low}', 'public', 'CREATE')") == [(False,)]


def test_a_pending_files_grant_to_a_trusted_role_or_of_create_on_an_unused_schema_runs(cli, db, sql_dir, low):
    """The other side of attack23v 5: a grant to a role SCHEMA_CREATORS_TRUSTED names runs, and so does CREATE on a
    schema no run resolves names in (a reporting schema)."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_reports", f"CREATE SCHEMA reports; GRANT USAGE, CREATE ON SCHEMA reports TO {low};\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0003_app", f"CREATE TABLE a (id int); GRANT ALL ON a TO {low};\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 2
    ok(cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": low}))


@pytest.mark.parametrize("spelled, flagged", [
    ("GRANT CREATE ON SCHEMA public TO app;", True),
    ("GRANT USAGE, CREATE ON SCHEMA reports TO app, PUBLIC;", True),
    ("grant all privileges on schema public to app;", True),
    ("ALTER DEFAULT PRIVILEGES GRANT CREATE ON SCHEMAS TO app;", True),
    ("GRANT USAGE ON SCHEMA public TO app;", False),
    ("REVOKE CREATE ON SCHEMA public FROM PUBLIC;", False),
    ("GRANT CREATE ON SCHEMA public TO CURRENT_USER;", False),
    ("GRANT CREATE ON DATABASE db TO app;", False),
    ("COMMENT ON TABLE hcm_report_metadata IS 'grant create on schema public to x';", False),
])
def test_a_migration_granting_create_on_a_schema_is_a_lint_finding(sql_dir, spelled, flagged):
    """attack23v 5: lint said nothing of a file's `GRANT CREATE ON SCHEMA public TO low` (attack23u 6 asked for a
    rule). Failed before: no such rule."""
    from migrator import lint, postgres

    path = add_migration(sql_dir, "0002_grant", "SELECT 1;\n" + spelled + "\n")
    findings = lint.create_grant_findings(postgres.read_migrations(sql_dir))
    assert bool(findings) == flagged, findings
    if flagged:
        assert str(findings[0]).startswith(f"{path}:2:") and "grant-create-schema" in str(findings[0]), findings


def test_a_rollback_file_granting_create_to_another_role_is_refused_before_it_runs(cli, db, sql_dir, low):
    """attack23v 5, the rollback side: `sql rollback` runs the rollback file's grant just as migrate would."""
    add_migration(sql_dir, "0002_lock", f"REVOKE CREATE ON SCHEMA public FROM {low};\n",
                  rollback=f"-- transactional: false\nGRANT CREATE ON SCHEMA public TO {low};\nSELECT 1;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    result = cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env())
    error = one_error_line(result)
    assert result.exit_code == 2 and f"0002_lock.rollback.sql:2 grants CREATE on schema public to role {low}" in error
    assert db.query(f"SELECT has_schema_privilege('{low}', 'public', 'CREATE')") == [(False,)]
