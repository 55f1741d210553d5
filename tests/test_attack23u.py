"""attack23u (confirming pass on issue 23), its two HIGHs: another role's TRIGGER right on a table a pending file
writes outside the checked path, and a column of the user's own table typed by another role's domain."""

from __future__ import annotations

from conftest import add_migration, ok
from test_schema_creators import doctor_line, low, refusal  # noqa: F401 (low: a fixture)
from test_trigger_rights import recorder


def test_another_roles_trigger_right_on_a_written_table_off_the_path_is_refused(cli, db, sql_dir, low):
    """attack23u 1 (HIGH): the user's audit.log (schema audit, off the path) granted ALL to low; a pending file's
    `INSERT INTO audit.log` let low add its trigger mid-run, run as the migration user. Failed before: exit 0."""
    db.query(f"CREATE SCHEMA audit; CREATE TABLE audit.log (id int, msg text); GRANT USAGE ON SCHEMA audit TO {low}; "
             f"GRANT ALL ON ALL TABLES IN SCHEMA audit TO {low}")
    add_migration(sql_dir, "0002_log", "SELECT 1;\nINSERT INTO audit.log VALUES (1, 'backfilled');\n")
    line = refusal(cli, db, sql_dir)
    assert f"0002_log.sql:2 writes table audit.log, on which role {low} may add triggers (a TRIGGER right)" in line
    assert f'REVOKE TRIGGER ON audit.log FROM "{low}" CASCADE' in line and f"SCHEMA_CREATORS_TRUSTED={low}" in line
    assert db.query("SELECT * FROM audit.log") == []
    ok(cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": low}))
    db.query(f"REVOKE TRIGGER ON audit.log FROM {low}")  # (INSERT, SELECT left: no trigger to add)
    add_migration(sql_dir, "0003_log", "INSERT INTO audit.log VALUES (2, 'more');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT count(*) FROM audit.log") == [(2,)]


def _domain(db, low) -> None:
    """low's domain app.email (USAGE to all), with a CHECK calling low's function recording who runs it."""
    recorder(db, low)
    db.query(f"CREATE SCHEMA app AUTHORIZATION {low}; SET ROLE {low}; GRANT USAGE ON SCHEMA app TO PUBLIC; "
             f"CREATE FUNCTION app.ok(text) RETURNS bool LANGUAGE plpgsql AS $$BEGIN INSERT INTO fn_{low}.hits "
             f"VALUES (current_user); RETURN true; END$$; CREATE DOMAIN app.email AS text; RESET ROLE")


def test_a_column_typed_by_another_roles_domain_is_refused(cli, db, sql_dir, low):
    """attack23u 2 (HIGH): the user's own users.email is low's domain app.email; low adds a CHECK calling its function
    (any time) and a pending plain `INSERT INTO users` ran it as the migration user. The same for a table off the path
    a pending file writes by its qualified name. Failed before: doctor ready, exit 0, low's function ran."""
    _domain(db, low)
    db.query(f"SET ROLE {low}; ALTER DOMAIN app.email ADD CONSTRAINT audit CHECK (app.ok(VALUE)); RESET ROLE")
    db.query("CREATE TABLE users (id int, email app.email); CREATE SCHEMA data; "
             "CREATE TABLE data.contacts (id int, emails app.email[])")  # (the array's column once made, PostgreSQL
    # refuses ALTER DOMAIN ADD CONSTRAINT; the plain column's table takes one any time)
    add_migration(sql_dir, "0002_seed", "INSERT INTO users VALUES (1, 'a@example.com');\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and f"column public.users.email (domain app.email) (owner {low})" in line, line
    line = refusal(cli, db, sql_dir)
    assert f"column public.users.email (domain app.email) (owner {low})" in line, line
    assert f'ALTER DOMAIN app.email OWNER TO "{db.server.user}"' in line, line
    db.query("ALTER TABLE users ALTER COLUMN email TYPE text")
    add_migration(sql_dir, "0003_contacts", "INSERT INTO data.contacts VALUES (1, '{a@example.com}');\n")
    line = refusal(cli, db, sql_dir)
    assert f"0003_contacts.sql:1 writes table data.contacts, whose column emails is of domain app.email" in line, line
    assert f"owner {low}" in line and f'ALTER DOMAIN app.email OWNER TO "{db.server.user}"' in line, line
    assert db.query(f"SELECT who FROM fn_{low}.hits") == [] and db.query("SELECT * FROM users") == []
    db.query("CREATE DOMAIN mine AS app.email; ALTER TABLE users ALTER COLUMN email TYPE mine")  # (the user's own
    line = refusal(cli, db, sql_dir)  # domain over low's: low's CHECK still runs)
    assert f"column public.users.email (domain app.email) (owner {low})" in line, line
    assert db.query(f"SELECT who FROM fn_{low}.hits") == []
    ok(cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": low}))
    assert db.query("SELECT count(*) FROM data.contacts") == [(1,)]


def test_a_default_privilege_giving_trigger_in_a_schema_off_the_path_is_refused(cli, db, sql_dir, low):
    """attack23u 1b: `ALTER DEFAULT PRIVILEGES FOR ROLE <user> IN SCHEMA audit GRANT ALL ON TABLES TO low` (off the
    path); 0002 makes audit.events, 0003 writes it: low's trigger, added as soon as the table exists, ran as the
    migration user. Failed before: doctor ready, exit 0."""
    db.query(f"CREATE SCHEMA audit; GRANT USAGE ON SCHEMA audit TO {low}; "
             f"ALTER DEFAULT PRIVILEGES IN SCHEMA audit GRANT ALL ON TABLES TO {low}")
    add_migration(sql_dir, "0002_make", "CREATE TABLE audit.events (id int);\n")
    add_migration(sql_dir, "0003_seed", "INSERT INTO audit.events VALUES (1);\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and f"gives {low} TRIGGER on every table it makes in schema audit" in line, line
    line = refusal(cli, db, sql_dir)
    assert (f'ALTER DEFAULT PRIVILEGES FOR ROLE "{db.server.user}" IN SCHEMA "audit" REVOKE TRIGGER ON TABLES FROM '
            f'"{low}"') in line, line
    assert "events" not in str(db.query("SELECT relname FROM pg_class WHERE relname = 'events'"))
