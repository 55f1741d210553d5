"""The runner's bookkeeping is its own (issue 23, attack23n finding 2), on the real PostgreSQL.

A common DBA grant (`ALTER DEFAULT PRIVILEGES ... GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO app`, or
`GRANT ... ON ALL TABLES IN SCHEMA`) let the application role write yoyo's and the runner's tables: forge a live
lock row, or delete history rows so a non-transactional file ran twice. migrate takes those rights (SELECT kept),
saying so once; doctor warns before it, and names the roles granted the migration user itself.
"""

from __future__ import annotations

import uuid

import pytest

from conftest import SPECIAL_PASSWORD, add_migration, ok, one_error_line
from test_planted_objects import low  # noqa: F401 (a fixture)

WRITES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
BOOKKEEPING = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock", "_hcm_migration_checksum",
               "_hcm_schema_snapshot")


@pytest.fixture
def app(low):
    """The application's login role (test_planted_objects' low: dropped with its grants after the test)."""
    return low


def writes(db, role: str, schema: str = "public") -> list[tuple]:
    """(table, right) of WRITES `role` (or PUBLIC) holds on the bookkeeping tables present in `schema`."""
    return db.query("SELECT c.relname::text, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
                    "WHERE c.relnamespace = %s::regnamespace AND c.relname = ANY(%s) "
                    "AND a.grantee = coalesce((SELECT oid FROM pg_roles WHERE rolname = %s), 0) "
                    "AND a.privilege_type = ANY(%s) ORDER BY 1, 2", (schema, list(BOOKKEEPING), role, list(WRITES)))


def selects(db, role: str) -> set[str]:
    return {t for t in BOOKKEEPING
            if db.query("SELECT has_table_privilege(%s, %s, 'SELECT')", (role, f"public.{t}"))[0][0]}


def revoked_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if "revoked write rights" in line]


def test_a_default_privilege_to_the_app_is_taken_from_the_tables_migrate_creates(cli, db, sql_dir, app):
    db.query(f"GRANT USAGE ON SCHEMA public TO {app}; ALTER DEFAULT PRIVILEGES IN SCHEMA public "
             f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}")
    first = ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert writes(db, app) == []  # not one bookkeeping table the app may write
    assert selects(db, app) == set(BOOKKEEPING)  # reading the history stays possible
    assert db.query(f"SELECT has_table_privilege('{app}', 'public.hcm_report_metadata', 'INSERT')") == [(True,)]
    (line,) = revoked_lines(first)  # one line, though the tables are made in several steps
    assert app in line and "INSERT" in line and "yoyo_lock" in line, first.output
    again = ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert revoked_lines(again) == []  # nothing left to take: said once


def test_a_tenant_schemas_bookkeeping_is_taken_back_the_same_way(cli, db, sql_dir, app):
    db.query(f"CREATE SCHEMA pb; GRANT USAGE ON SCHEMA pb TO {app}; ALTER DEFAULT PRIVILEGES IN SCHEMA pb "
             f"GRANT ALL ON TABLES TO {app}")
    first = ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env()))
    (line,) = revoked_lines(first)
    assert "tables in pb" in line and app in line, first.output
    assert writes(db, app, "pb") == [] and len(db.query("SELECT 1 FROM pb._yoyo_migration")) >= 1
    assert db.query(f"SELECT has_table_privilege('{app}', 'pb.hcm_report_metadata', 'INSERT')") == [(True,)]


def test_rights_granted_on_existing_bookkeeping_are_warned_by_doctor_then_taken_by_migrate(cli, db, sql_dir, app):
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query(f"GRANT USAGE ON SCHEMA public TO {app}; GRANT ALL ON ALL TABLES IN SCHEMA public TO {app}; "
             "GRANT DELETE ON public._yoyo_migration TO PUBLIC")
    doctor = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    warn = [line for line in doctor.output.splitlines() if "may write the runner's bookkeeping" in line]
    assert len(warn) == 1 and warn[0].startswith("warn"), doctor.output
    assert f"public.yoyo_lock to {app} (" in warn[0] and "public._yoyo_migration to PUBLIC (DELETE)" in warn[0]
    maintain = ", MAINTAIN" if db.query("SHOW server_version_num")[0][0] >= "170000" else ""  # (GRANT ALL's)
    assert f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER{maintain} ON TABLE" in doctor.output
    migrate = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())  # (then refuses: the history is unconfirmed)
    assert migrate.exit_code == 2 and "sql trust-history --yes" in migrate.output, migrate.output
    (line,) = revoked_lines(migrate)
    assert app in line and "PUBLIC" in line and "public.yoyo_lock" in line, migrate.output
    assert writes(db, app) == [] and writes(db, "PUBLIC") == []
    assert selects(db, app) == set(BOOKKEEPING)
    after = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    assert "may write the runner's bookkeeping" not in after.output, after.output


def test_the_app_can_no_longer_forge_a_lock_row_or_delete_history(cli, db, sql_dir, app):
    db.query(f"GRANT USAGE ON SCHEMA public TO {app}; ALTER DEFAULT PRIVILEGES IN SCHEMA public "
             f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    import psycopg2

    for statement in ("INSERT INTO public.yoyo_lock (locked, ctime, pid) VALUES (1, now(), 777)",
                      "DELETE FROM public._yoyo_migration", "DELETE FROM public._hcm_migration_checksum"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            db.query(f"SET ROLE {app}; {statement}")


def test_doctor_names_roles_granted_the_migration_user(cli, make_db, password_role, sql_dir):
    db = make_db(owner=password_role)
    member = "app_" + uuid.uuid4().hex[:8]
    db.query(f"CREATE ROLE {member} LOGIN; GRANT {password_role} TO {member}")
    try:
        env = {**db.db_env(), "DB_USER": password_role, "DB_PASSWORD": SPECIAL_PASSWORD}
        ok(cli("migrate", "--sql-dir", sql_dir, env=env))
        doctor = cli("doctor", "--sql-dir", sql_dir, env=env)
        (line,) = [line for line in doctor.output.splitlines() if f"are granted user {password_role}" in line]
        assert line.startswith("warn") and member in line, doctor.output
        assert f"REVOKE {password_role} FROM {member}" in doctor.output
    finally:
        db.query(f"DROP ROLE {member}")


def test_a_read_only_server_with_such_grants_is_said_as_read_only(cli, db, sql_dir, app):
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query(f"GRANT INSERT ON ALL TABLES IN SCHEMA public TO {app}")
    db.query(f"ALTER DATABASE {db.name} SET default_transaction_read_only = on")
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    finally:
        db.query(f"SET TRANSACTION READ WRITE; ALTER DATABASE {db.name} RESET default_transaction_read_only")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "default_transaction_read_only" in result.output and "revoked" not in result.output
    assert writes(db, app) != []  # (nothing written on a read-only server)


def test_a_revoke_that_fails_on_a_writable_session_refuses_the_run_before_the_tables_are_used(cli, db, sql_dir, app):
    """attack23o trig_toctou: the app (GRANT ALL) creates a trigger on yoyo_lock in a transaction it keeps open; the
    run's catalog read cannot see it, its REVOKE failed and was swallowed (meant for read-only sessions), and the
    trigger, once committed, ran as the migration role on the run's lock row (exit 0, the rights kept). Now a
    failed REVOKE on a writable session refuses the run in one line, before any bookkeeping table is used."""
    import psycopg2

    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    db.query(f"GRANT USAGE ON SCHEMA public TO {app}; GRANT ALL ON ALL TABLES IN SCHEMA public TO {app}; "
             "CREATE TABLE public.ran (who text); GRANT INSERT ON public.ran TO PUBLIC; "
             "CREATE FUNCTION public.log_it() RETURNS trigger LANGUAGE plpgsql AS "
             "$$BEGIN INSERT INTO public.ran VALUES (current_user); RETURN NEW; END$$")
    evil = psycopg2.connect(dbname=db.name, user=app, host=db.server.host, port=db.server.port)
    try:
        evil.cursor().execute("CREATE TRIGGER z BEFORE INSERT OR DELETE ON public.yoyo_lock "
                              "FOR EACH ROW EXECUTE FUNCTION public.log_it()")  # (its transaction left open)
        result = cli("migrate", "--sql-dir", sql_dir, "--ddl-lock-timeout", "1s", env=db.db_env())
        evil.commit()
    finally:
        evil.close()
    line = one_error_line(result)
    assert result.exit_code != 0 and "could not take" in line and app in line, result.output
    assert db.query("SELECT count(*) FROM public.ran") == [(0,)]  # its code never ran as the migration role
    assert "more_rows" not in db.tables()
