"""The runner's new bookkeeping tables are never seen by another session with others' write rights (issue 23,
attack23o findings 2-4), on the real PostgreSQL.

With the app's usual `ALTER DEFAULT PRIVILEGES ... GRANT ... ON TABLES TO app`, yoyo committed its new tables before
the runner revoked: the app, polling an INSERT, forged a `_yoyo_migration` row (the migration was skipped, exit 0)
or a trigger. A watcher here records each table's rights the moment it becomes visible to another session; a
history the run has just made that holds rows it did not write is refused. Rights outside the table's ACL (a
column's, MAINTAIN on PostgreSQL 17+) are seen and taken too.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from conftest import add_migration, ok, one_error_line
from migrator.postgres import flyway
from test_bookkeeping_grants import BOOKKEEPING, app, revoked_lines  # noqa: F401 (app: a fixture)
from test_planted_objects import low  # noqa: F401 (a fixture)

# As a superuser, in one statement: each bookkeeping table's other-than-SELECT rights held by the app, read the
# first time a fresh snapshot shows the table (a plpgsql loop takes one per statement), as a NOTICE.
WATCH = """
DO $$
DECLARE seen text[] := '{}'; r record; until timestamptz := clock_timestamp() + interval '60 s';
BEGIN
  WHILE cardinality(seen) < %(n)s AND clock_timestamp() < until LOOP
    FOR r IN SELECT c.relname::text AS name, coalesce((SELECT string_agg(a.privilege_type, ',' ORDER BY 1)
                 FROM aclexplode(c.relacl) a WHERE a.grantee = %(app)s::regrole AND a.privilege_type <> 'SELECT'),
                 '-') AS rights
             FROM pg_class c WHERE c.relnamespace = %(schema)s::regnamespace AND c.relname = ANY(%(tables)s)
               AND NOT c.relname = ANY(seen) LOOP
      RAISE NOTICE 'seen %% %%', r.name, r.rights;
      seen := seen || r.name;
    END LOOP;
  END LOOP;
END $$
"""


def first_sight(db, app_role: str, schema: str, run) -> dict[str, str]:
    """{table: the app's write rights on it when another session first saw it ('-': none)} while `run` runs."""
    import psycopg2

    tables = list(BOOKKEEPING)
    conn = psycopg2.connect(db.url)
    conn.autocommit = True
    watcher = threading.Thread(target=lambda: conn.cursor().execute(
        WATCH, {"n": len(tables), "app": app_role, "schema": schema, "tables": tables}))
    watcher.start()
    try:
        while watcher.is_alive() and not db.poll("SELECT 1 FROM pg_stat_activity WHERE query LIKE '%%DO $$%%seen %%' "
                                                 "AND state = 'active' AND pid <> pg_backend_pid()"):
            pass
        run()
    finally:
        watcher.join()
        conn.close()
    seen = dict(line.split()[-2:] for line in conn.notices if " seen " in line)
    assert set(seen) == set(tables), conn.notices
    return seen


@pytest.mark.parametrize("schema", ["public", "pb"])
def test_no_other_session_sees_a_new_bookkeeping_table_with_the_default_privileges_rights(cli, db, sql_dir, app,
                                                                                          schema):
    tenant = schema != "public"
    db.query(f"CREATE SCHEMA IF NOT EXISTS {schema}; GRANT USAGE ON SCHEMA {schema} TO {app}; "
             f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT ALL ON TABLES TO {app}")
    args = ("migrate", "--sql-dir", sql_dir, *(("--schema", schema) if tenant else ()))
    results = []
    seen = first_sight(db, app, schema, lambda: results.append(cli(*args, env=db.db_env())))
    assert seen == {table: "-" for table in BOOKKEEPING}, seen  # not one moment with the app's INSERT or TRIGGER
    (line,) = revoked_lines(ok(results[0]))  # still said, once
    assert app in line and f"tables in {schema}" in line
    assert db.query(f"SELECT has_table_privilege('{app}', '{schema}.hcm_report_metadata', 'INSERT')") == [(True,)]


# What another writer (a superuser, a member of pg_write_all_data) may put into a history the moment it exists: here
# written in the creating transaction itself by an event trigger, so the run finds it every time.
FORGE = """
CREATE FUNCTION public.forge() RETURNS event_trigger LANGUAGE plpgsql AS $f$
DECLARE fresh boolean;
BEGIN
  IF to_regclass('public.{table}') IS NOT NULL AND EXISTS (SELECT FROM pg_attribute WHERE attname = '{column}'
        AND attrelid = to_regclass('public.{table}')) THEN
    EXECUTE 'SELECT NOT EXISTS (SELECT FROM public.{table})' INTO fresh;
    IF fresh THEN EXECUTE $s${insert}$s$; END IF;
  END IF;
END $f$;
CREATE EVENT TRIGGER forge ON ddl_command_end WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION public.forge();
"""


@pytest.mark.parametrize("table, insert", [
    ("_yoyo_migration", "INSERT INTO public._yoyo_migration VALUES (encode(sha256('0002_b'::bytea), 'hex'), '0002_b', now())"),
    ("_hcm_migration_checksum", "INSERT INTO public._hcm_migration_checksum VALUES ('0002_b', repeat('0', 64))"),
])
def test_a_history_the_run_just_made_holding_rows_it_did_not_write_is_refused(cli, db, sql_dir, table, insert):
    add_migration(sql_dir, "0002_b", "CREATE TABLE b_ran (id int);\n")
    db.query(FORGE.format(table=table, column="migration_id", insert=insert))
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert f"refusing the migration history public.{table} on " in line, line
    assert "holds rows the run did not write (migration_id '0002_b')" in line and "DELETE FROM" in line, line
    assert db.query("SELECT to_regclass('public.b_ran')") == [(None,)]  # nothing was skipped as applied, or run



def test_a_flyway_history_the_run_just_made_holding_rows_it_did_not_write_is_refused(cli, db, tmp_path):
    folder = tmp_path / "db" / "migration" / "main"
    folder.mkdir(parents=True)
    (folder / "V1__create_b.sql").write_text("CREATE TABLE b_ran (id int);\n")
    checksum = flyway.checksum(folder / "V1__create_b.sql")  # (a forgery Flyway itself would take as applied)
    db.query(FORGE.format(table="flyway_schema_history", column="script", insert=(
        "INSERT INTO public.flyway_schema_history VALUES (1, '1', 'create b', 'SQL', 'V1__create_b.sql', "
        f"{checksum}, 'x', now(), 0, true)")))
    line = one_error_line(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert "refusing the migration history public.flyway_schema_history on " in line, line
    assert "holds rows the run did not write (script 'V1__create_b.sql')" in line, line
    assert db.query("SELECT to_regclass('public.b_ran')") == [(None,)]

def pg17(db) -> bool:
    return int(db.query("SHOW server_version_num")[0][0]) >= 170000


def column_rights(db, role: str) -> list[tuple]:
    return db.query("SELECT c.relname::text, t.attname::text, a.privilege_type FROM pg_attribute t "
                    "JOIN pg_class c ON c.oid = t.attrelid, aclexplode(t.attacl) a WHERE c.relname = ANY(%s) "
                    "AND a.grantee = %s::regrole ORDER BY 1, 2, 3", (list(BOOKKEEPING), role))


def test_column_rights_and_maintain_are_warned_by_doctor_then_taken_by_migrate(cli, db, sql_dir, app):
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query(f"GRANT USAGE ON SCHEMA public TO {app}; GRANT INSERT (migration_hash, migration_id, applied_at_utc), "
             f"UPDATE (migration_id) ON public._yoyo_migration TO {app}; GRANT INSERT (locked, pid) ON public.yoyo_lock "
             f"TO {app}" + (f"; GRANT MAINTAIN ON public.yoyo_lock TO {app}" if pg17(db) else ""))
    doctor = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    (warn,) = [line for line in doctor.output.splitlines() if "may write the runner's bookkeeping" in line]
    assert warn.startswith("warn") and "doctor: " in doctor.output and "0 FAIL" in doctor.output, doctor.output
    assert (f"public._yoyo_migration to {app} (INSERT (migration_hash, migration_id, applied_at_utc), "
            "UPDATE (migration_id))") in warn, warn
    assert f"public.yoyo_lock to {app} (INSERT (locked, pid)" in warn, warn
    assert ("MAINTAIN" in warn) == pg17(db) and (", MAINTAIN ON TABLE" in warn) == pg17(db), warn
    migrate = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())  # (then refuses: the history is unconfirmed)
    assert migrate.exit_code == 2 and "sql trust-history --yes" in migrate.output, migrate.output
    (line,) = revoked_lines(migrate)
    assert "INSERT (migration_hash, migration_id, applied_at_utc)" in line, line
    assert column_rights(db, app) == []  # the app can no longer add a history row for a pending migration
    if pg17(db):  # nor LOCK the tables (ACCESS EXCLUSIVE: every run times out)
        assert db.query(f"SELECT has_table_privilege('{app}', 'public.yoyo_lock', 'MAINTAIN')") == [(False,)]
    assert "may write the runner's bookkeeping" not in cli("doctor", "--sql-dir", sql_dir, env=db.db_env()).output


def test_doctor_names_the_members_of_pg_write_all_data(cli, db, sql_dir, app):
    if not db.query("SELECT to_regrole('pg_write_all_data')")[0][0]:
        pytest.skip("pg_write_all_data is PostgreSQL 14+")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query(f"GRANT pg_write_all_data TO {app}")
    doctor = cli("doctor", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": ""})
    (fail,) = [line for line in doctor.output.splitlines() if "members of pg_write_all_data" in line]
    assert fail.startswith("FAIL") and f"roles {app} are" in fail, doctor.output  # (attack23v 2: migrate refuses)
    assert f"REVOKE pg_write_all_data FROM {app}" in fail and "ready" not in doctor.output, doctor.output
    doctor = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())  # (app's fixture trusts it: SCHEMA_CREATORS_TRUSTED)
    (warn,) = [line for line in doctor.output.splitlines() if "members of pg_write_all_data" in line]
    assert warn.startswith("warn") and "accepted by SCHEMA_CREATORS_TRUSTED" in warn, doctor.output
    assert f"REVOKE pg_write_all_data FROM {app}" in warn and "ready" in doctor.output, doctor.output


@pytest.mark.parametrize("name", ['app "x" y', "app\nerror: forged\x1b[31m"])
def test_doctors_revoke_runs_as_printed_or_is_not_printed(cli, db, sql_dir, name):
    name += uuid.uuid4().hex[:6]  # (roles are the server's: one of this test's own)
    quoted = '"' + name.replace('"', '""') + '"'
    db.query(f"CREATE ROLE {quoted}")
    try:
        ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
        db.query(f"GRANT INSERT ON public._yoyo_migration TO {quoted}")
        doctor = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
        (warn,) = [line for line in doctor.output.splitlines() if "may write the runner's bookkeeping" in line]
        if name.isprintable():  # copied from the line, it runs, and takes the right
            db.query(warn.split("or run ", 1)[1])
            assert db.query("SELECT has_table_privilege(%s, 'public._yoyo_migration', 'INSERT')", (name,)) == [(False,)]
        else:
            assert "REVOKE as printed would not run (a name in it holds control characters" in warn, warn
            assert "FROM" not in warn.split(" -> ", 1)[1], warn
    finally:
        db.query(f"DROP OWNED BY {quoted}; DROP ROLE {quoted}")
