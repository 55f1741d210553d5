"""attack23u (confirming pass on issue 23), its two HIGHs: another role's TRIGGER right on a table a pending file
writes outside the checked path, and a column of the user's own table typed by another role's domain."""

from __future__ import annotations

from conftest import add_migration, ok, one_error_line
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
    assert line.startswith("FAIL") and f"column public.users.email uses domain app.email (owner {low})" in line, line
    line = refusal(cli, db, sql_dir)
    assert f"column public.users.email uses domain app.email (owner {low})" in line, line
    assert f'ALTER DOMAIN app.email OWNER TO "{db.server.user}"' in line, line
    db.query("ALTER TABLE users ALTER COLUMN email TYPE text")
    add_migration(sql_dir, "0003_contacts", "INSERT INTO data.contacts VALUES (1, '{a@example.com}');\n")
    line = refusal(cli, db, sql_dir)
    assert f"0003_contacts.sql:1 writes table data.contacts, whose column data.contacts.emails uses domain app.email" in line, line
    assert f"owner {low}" in line and f'ALTER DOMAIN app.email OWNER TO "{db.server.user}"' in line, line
    assert db.query(f"SELECT who FROM fn_{low}.hits") == [] and db.query("SELECT * FROM users") == []
    db.query("CREATE DOMAIN mine AS app.email; ALTER TABLE users ALTER COLUMN email TYPE mine")  # (the user's own
    line = refusal(cli, db, sql_dir)  # domain over low's: low's CHECK still runs)
    assert f"column public.users.email uses domain app.email (owner {low})" in line, line
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


def test_a_right_the_runs_own_migration_grants_is_refused_before_the_next_file(cli, db, sql_dir, low):
    """attack23u 6: 0003 grants low CREATE on public (a DO block's), low plants its `=` at once, and 0004's UPDATE ran
    it as the migration user: the planted rule was checked at connect only. Now checked again before each file after
    the first. Failed before: exit 0, 0004 applied."""
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y');\n")
    add_migration(sql_dir, "0003_grant", f"DO $$BEGIN EXECUTE 'GRANT USAGE, CREATE ON SCHEMA public TO {low}'; "
                  "END$$;\n")  # (a plain GRANT is refused before the run: attack23v 5, test_attack23v.py)
    add_migration(sql_dir, "0004_data", "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    error = one_error_line(result)
    assert result.exit_code == 2 and f"roles {low} may CREATE in schema public" in error, result.output
    assert ("before 0004_data (nothing of it ran; committed by this run: 0001_create_hcm_report_metadata, 0002_a, "
            "0003_grant)") in error, error
    assert f'REVOKE CREATE ON SCHEMA "public" FROM "{low}"' in error
    assert db.query("SELECT name FROM a") == [("y",)]


def test_a_trigger_right_granted_in_a_do_block_is_refused_before_a_tenants_next_file(cli, db, sql_dir, low):
    """attack23u 6, the TRIGGER variant on a tenant's run: a DO block's EXECUTE grants low TRIGGER on pb.a (lint
    clean); its trigger, added at once, ran as the migration user on the next file's UPDATE. Failed before: exit 0."""
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y');\n")
    add_migration(sql_dir, "0003_grant", f"DO $$BEGIN EXECUTE 'GRANT TRIGGER ON a TO {low}'; END$$;\n")
    add_migration(sql_dir, "0004_data", "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    db.query("CREATE SCHEMA pb")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env())
    [error] = [line for line in result.output.splitlines() if "FAILED: " in line]
    assert result.exit_code == 2 and f"roles {low} may add triggers (a TRIGGER right) on table pb.a" in error, error
    assert "before 0004_data (nothing of it ran; committed by this run: " in error and "0003_grant)" in error
    assert db.query("SELECT name FROM pb.a") == [("y",)]


def _login_trigger(db, low, body: str) -> None:
    """A superuser's `ON login` event trigger login_audit calling low's function lowfn.on_login() (`body`)."""
    db.query(f"CREATE SCHEMA lowfn AUTHORIZATION {low}; SET ROLE {low}; CREATE TABLE lowfn.seen (who text); "
             "GRANT USAGE ON SCHEMA lowfn TO PUBLIC; GRANT INSERT ON lowfn.seen TO PUBLIC; "
             f"CREATE FUNCTION lowfn.on_login() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN {body} END$$; "
             "RESET ROLE; CREATE EVENT TRIGGER login_audit ON login EXECUTE FUNCTION lowfn.on_login()")


def test_a_login_event_trigger_on_another_roles_function_is_said_to_have_run_already(cli, db, sql_dir, low):
    """attack23u 11: the refusal said low's login trigger "runs ... when a migration's SQL resolves to it"; it had
    already run as the migration user on that very connection. Failed before: the generic wording, no DROP."""
    _login_trigger(db, low, "NULL;")
    try:
        add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
        line = refusal(cli, db, sql_dir)
        assert f"login event trigger login_audit (function lowfn.on_login()) (owner {low})" in line, line
        assert (f"the login event trigger's function already ran as user {db.server.user} on this connection and "
                "runs on every connection of this role") in line, line
        assert "when a migration's SQL resolves to it" not in line, line
        assert ("as a superuser run DROP EVENT TRIGGER login_audit, or ALTER FUNCTION lowfn.on_login() OWNER TO a "
                "superuser") in line and "drop what others own there" not in line, line
        line = doctor_line(cli, db, sql_dir)
        assert line.startswith("FAIL") and "trigger's function already ran as user" in line, line
    finally:
        db.query("DROP EVENT TRIGGER IF EXISTS login_audit")


def test_a_login_trigger_failing_in_doctors_read_only_session_is_named(cli, db, sql_dir, low):
    """attack23u 11: low's login trigger function writes, which doctor's read-only session refuses: doctor's only line
    was a connect error with the server's FATAL. Failed before: nothing named a login event trigger."""
    _login_trigger(db, low, "INSERT INTO lowfn.seen VALUES (current_user);")
    try:
        result = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env())
        [line] = [line for line in result.stdout.splitlines() if "cannot connect to PostgreSQL" in line]
        assert "read-only transaction" in line and ("raised by function lowfn.on_login(), which a login event trigger "
                                                    "(ON login, PostgreSQL 17+) ran while connecting") in line, line
    finally:
        db.query("DROP EVENT TRIGGER IF EXISTS login_audit")
