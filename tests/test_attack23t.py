"""attack23t (hostile pass on 098638e), the findings in planted.py's scope: an event trigger whose function another
role owns, and CREATE granted to a predefined role."""

from __future__ import annotations

from conftest import add_migration, ok, one_error_line
from test_schema_creators import doctor_line, low, refusal  # noqa: F401 (low: a fixture)


def test_an_event_trigger_whose_function_another_role_owns_is_refused(cli, db, sql_dir, low):
    """attack23t 5 (HIGH): a DBA's DDL audit event trigger calls the app role's function, whose body that role may
    replace at any time; the migration's DDL ran it as the migration user. Failed before: doctor ready, exit 0."""
    db.query(f"CREATE SCHEMA fn_{low} AUTHORIZATION {low}; SET ROLE {low}; CREATE TABLE fn_{low}.hits (who text); "
             f"GRANT USAGE ON SCHEMA fn_{low} TO PUBLIC; GRANT INSERT ON fn_{low}.hits TO PUBLIC; "
             f"CREATE FUNCTION fn_{low}.audit() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO "
             f"fn_{low}.hits VALUES (current_user); END$$; RESET ROLE; "
             f"CREATE EVENT TRIGGER audit_{low} ON ddl_command_end EXECUTE FUNCTION fn_{low}.audit()")
    add_migration(sql_dir, "0002_b", "CREATE TABLE b (id int);\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and f"event trigger audit_{low} (function fn_{low}.audit()) (owner {low})" in line
    error = refusal(cli, db, sql_dir)
    assert f"event trigger audit_{low} (function fn_{low}.audit()) (owner {low})" in error, error
    assert db.query(f"SELECT who FROM fn_{low}.hits") == [] and "b" not in db.tables()
    db.query(f"ALTER EVENT TRIGGER audit_{low} DISABLE")  # (a disabled one runs nothing)
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query(f"SELECT who FROM fn_{low}.hits") == []


def test_create_granted_to_a_predefined_role_another_login_role_may_set_is_refused(cli, db, sql_dir, low):
    """attack23t 9: pg_* roles were left out of the creators' list: `GRANT CREATE ON SCHEMA public TO
    pg_write_all_data` with low a SET-only member (has_schema_privilege(low) is false). Failed before: doctor "no
    other role may create", exit 0."""
    db.query(f"GRANT CREATE ON SCHEMA public TO pg_write_all_data; "
             f"GRANT pg_write_all_data TO {low} WITH INHERIT FALSE, SET TRUE")
    try:
        line = doctor_line(cli, db, sql_dir)
        assert line.startswith("FAIL") and "roles pg_write_all_data may CREATE in schema public" in line, line
        # (low, a member of pg_write_all_data, writes the history: refused at connect, before who may create is
        # read, history_writers; trusting low for that leaves pg_write_all_data's CREATE to refuse, before the file)
        result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
        assert result.exit_code == 2 and f"roles {low} are members of pg_write_all_data" in result.output
        result = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": low})
        error = one_error_line(result)
        assert result.exit_code == 2 and 'REVOKE CREATE ON SCHEMA "public" FROM "pg_write_all_data"' in error, error
    finally:
        db.query(f"REVOKE CREATE ON SCHEMA public FROM pg_write_all_data; REVOKE pg_write_all_data FROM {low}")


def test_a_path_entry_naming_no_schema_yet_is_refused_while_others_may_create_on_the_database(cli, db, sql_dir, low):
    """attack23t 1 (HIGH): the default path's "$user" names no schema; low, with CREATE on the database, made it
    mid-run and planted `=` there, which the next migration ran as the migration user. Failed before: doctor "ok",
    exit 0 (the check saw only existing schemas)."""
    user = db.server.user
    assert db.query(f"SELECT to_regnamespace('{user}')") == [(None,)]
    db.query(f'GRANT CREATE ON DATABASE "{db.name}" TO {low}')
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and f"schema {user} on the migration's search_path does not exist and roles " \
        f"{low} may CREATE on the database" in line, line
    error = refusal(cli, db, sql_dir)
    assert f'run CREATE SCHEMA "{user}"' in error and \
        f'REVOKE CREATE ON DATABASE "{db.name}" FROM "{low}"' in error, error
    assert "a" not in db.tables()
    db.query(f'REVOKE CREATE ON DATABASE "{db.name}" FROM {low}')
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))


def test_a_forged_mark_with_a_flyway_looking_id_and_a_pending_migrations_hash_is_refused(cli, db, sql_dir, low):
    """attack23t 2 (HIGH): `(sha256('0002_important'), 'V1__init')` passed the hash/id check (a Flyway-shaped id was
    exempt, in a yoyo folder too): trust-history --yes confirmed, migrate said "up to date", 0002 never ran. Failed
    before: --yes exit 0."""
    from test_history_distrust import grant_history_to, refused_until_mark_deleted

    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    grant_history_to(db, low)
    db.query(f"SET ROLE {low}; INSERT INTO public._yoyo_migration VALUES (encode(sha256('0002_important'), 'hex'), "
             "'V1__init', now()); RESET ROLE")
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 2  # (revoked, recorded)
    review = ok(cli("sql", "trust-history", "--sql-dir", sql_dir, env=db.db_env()))
    assert "mark for V1__init carries migration_hash" in review.output, review.output
    refused_until_mark_deleted(cli, db, sql_dir, "mark for V1__init (another migration's hash)", "V1__init",
                               "important")


def test_a_search_path_the_database_owner_changes_mid_run_is_refused_before_the_next_file_runs(cli, db, sql_dir, low):
    """attack23t 1b (HIGH): the database is low's (the app team's own); mid-run low ran `ALTER DATABASE ... SET
    search_path = <its schema>, ...`, and the next migration's fresh session took that path, which the connect check
    never saw: low's `=` ran as the migration user. (0002 does low's ALTER, as low, at the moment it would; in a DO
    block: a file's visible ALTER DATABASE ... SET search_path is file_paths.py's, test below.) Failed
    before: exit 0, low's operator ran on 0003's UPDATE."""
    from test_schema_creators import plant

    user = db.server.user  # (its "$user" schema made: the owner may CREATE on the database, test above)
    db.query(f'ALTER DATABASE "{db.name}" OWNER TO {low}; ALTER SCHEMA public OWNER TO "{user}"; '
             f'CREATE SCHEMA "{user}"; CREATE SCHEMA lowpath AUTHORIZATION {low}; GRANT USAGE ON SCHEMA lowpath TO PUBLIC')
    plant(db, "lowpath", low)
    try:
        _refused_mid_run(cli, db, sql_dir, low)
    finally:
        db.query(f'ALTER DATABASE "{db.name}" OWNER TO "{user}"; ALTER DATABASE "{db.name}" RESET search_path')


def _refused_mid_run(cli, db, sql_dir, low) -> None:
    # (a live function's body, which no pending file holds, in a schema the connect check does not read: unread, as
    # another session's would be; in public its literal path is refused before the run since attack23z)
    db.query("CREATE SCHEMA util; GRANT USAGE ON SCHEMA util TO PUBLIC; "
             "CREATE FUNCTION util.as_another_session() RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE "
             f"'ALTER DATABASE \"{db.name}\" SET search_path = lowpath, \"$user\", public'; END$$")
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20));\nINSERT INTO a VALUES (1, 'y');\n"
                  f"SET ROLE {low};\nSELECT util.as_another_session();\nRESET ROLE;\n")
    add_migration(sql_dir, "0003_data", "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert db.query("SELECT who FROM lowpath.hits") == [], result.output
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert 'search_path lowpath, "$user", public' in line and "nothing of 0003_data ran" in line, line
    assert db.query("SELECT name FROM a") == [("y",)]
    error = refusal(cli, db, sql_dir)  # (run again: the new path checked, and low's schema on it refused)
    assert f"schema lowpath (on the migration's search_path)" in error or "lowpath" in error, error
    assert db.query("SELECT who FROM lowpath.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


def test_yoyos_log_others_could_write_is_recorded_unconfirmed_with_the_other_histories(cli, db, sql_dir, low):
    """fix23ac's note: the history review reads `_yoyo_log` (a removed mark is noticed from it: attack23t 3), yet a
    role's standing write rights on it, taken with the others', left no record: the review took as true a log its
    rows could have been deleted from or forged in. Failed before: the refusal named _hcm_migration_checksum and
    _yoyo_migration only, and no COMMENT recorded the log's distrust."""
    from test_history_distrust import grant_history_to

    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    grant_history_to(db, low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and "public._yoyo_log" in result.stderr.splitlines()[-1], result.output
    assert db.query(f"SELECT has_table_privilege('{low}', 'public._yoyo_log', 'INSERT,UPDATE,DELETE')") == [(False,)]
    assert db.query("SELECT obj_description('public._yoyo_log'::regclass) LIKE "
                    "'hcm-db-migrations unconfirmed history%'") == [(True,)]
    review = ok(cli("sql", "trust-history", "--sql-dir", sql_dir, env=db.db_env()))
    assert "public._yoyo_log (could be written by " in review.output, review.output
    ok(cli("sql", "trust-history", "--yes", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT obj_description('public._yoyo_log'::regclass)") == [(None,)]
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "a" in db.tables()


def test_a_schema_a_pending_files_own_search_path_names_is_held_to_the_planted_rule(cli, db, sql_dir, low):
    """attack23t 6 (MEDIUM): `SET search_path TO app, public;` at the top of a file (a common habit), app being the
    application role's schema: low's `app.=` ran as the migration user on the file's WHERE. Failed before: exit 0,
    low's operator ran. set_config('search_path', ...) alike; SCHEMA_CREATORS_TRUSTED accepts the role."""
    from test_schema_creators import plant

    db.query(f"CREATE SCHEMA app AUTHORIZATION {low}; GRANT USAGE ON SCHEMA app TO PUBLIC")
    plant(db, "app", low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20));\nINSERT INTO a VALUES (1, 'y');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    for setting in ("SET search_path TO app, public;", "SELECT pg_catalog.set_config('search_path', 'app,public', true);"):
        add_migration(sql_dir, "0003_data", f"-- seed\n{setting}\nUPDATE public.a SET name = 'x' WHERE name = 'y';\n")
        result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
        assert db.query("SELECT who FROM app.hits") == [], result.output
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        line = result.stderr.splitlines()[-1]
        assert f"0003_data.sql:2 puts schema app on its search_path" in line, line
        assert f"operator app.=(character varying,character varying) (owner {low})" in line, line
        assert f"SCHEMA_CREATORS_TRUSTED={low}" in line and db.query("SELECT name FROM a") == [("y",)]
    ok(cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": low}))


def test_a_pending_file_writing_a_table_another_role_owns_or_triggers_is_refused(cli, db, sql_dir, low):
    """attack23t 7 (MEDIUM): the app's role owns app.settings (the migration user may INSERT) and adds a trigger whose
    function it owns; the migration's qualified `INSERT INTO app.settings` (outside the path the check reads) ran it
    as the migration user. A table of the user's own with such a trigger alike. Failed before: exit 0, the trigger
    ran as the migration user."""
    from test_trigger_rights import recorder

    function = recorder(db, low)
    db.query(f"CREATE SCHEMA app; CREATE TABLE app.settings (k text, v text); ALTER TABLE app.settings OWNER TO {low}; "
             f"GRANT USAGE ON SCHEMA app TO {low}; GRANT INSERT ON app.settings TO PUBLIC; "
             f"CREATE TRIGGER audit BEFORE INSERT ON app.settings FOR EACH ROW EXECUTE FUNCTION {function}")
    add_migration(sql_dir, "0002_seed", "-- reference data\nINSERT INTO app.settings VALUES ('feature_x', 'on');\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert db.query(f"SELECT who FROM fn_{low}.hits") == [], result.output
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = result.stderr.splitlines()[-1]
    assert f"0002_seed.sql:2 writes table app.settings, owned by role {low}" in line, line
    assert f"ALTER TABLE app.settings OWNER TO" in line and f"SCHEMA_CREATORS_TRUSTED={low}" in line, line
    db.query(f'ALTER TABLE app.settings OWNER TO "{db.server.user}"')  # (its trigger's function still low's)
    line = cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).stderr.splitlines()[-1]
    assert f"trigger audit (function {function}, owner {low})" in line, line
    assert db.query(f"SELECT who FROM fn_{low}.hits") == [] and db.query("SELECT * FROM app.settings") == []


def test_the_tables_a_file_writes_are_read_in_every_shape_without_the_parser_where_it_is_plain():
    """file_paths.written: the head of a plain INSERT/UPDATE/DELETE/MERGE by pattern (a seed file's 20,000 rows), the
    rest by the parser (a data-modifying WITH, TRUNCATE's list, COPY FROM, a comment inside); unqualified names and
    COPY TO are none (the checked path holds the former; the latter writes nothing)."""
    from migrator.postgres import file_paths
    from migrator.postgres.splitter import Statement

    texts = ['UPDATE "App".Settings SET v = 1', "DELETE FROM ONLY app . s WHERE x", "UPDATE a SET v = 1",
             "WITH d AS (DELETE FROM app.x RETURNING *) SELECT 1", "TRUNCATE a.b, c", "COPY app.f FROM stdin",
             "COPY app.t TO stdout", "MERGE INTO app.m USING t ON true WHEN MATCHED THEN DELETE",
             "INSERT /* c */ INTO app.z VALUES (1)"]
    files = [(f"{i}.sql", [Statement(t, 1, 0)]) for i, t in enumerate(texts)]
    assert file_paths.written(files) == {'"App"."settings"': "0.sql:1", '"app"."s"': "1.sql:1", '"app"."x"': "3.sql:1",
                                         '"a"."b"': "4.sql:1", '"app"."f"': "5.sql:1", '"app"."m"': "7.sql:1",
                                         '"app"."z"': "8.sql:1"}



def test_a_rollback_file_is_held_to_the_same_rules(cli, db, sql_dir, low):
    """A rollback file runs as the migration user too: its own `SET search_path` naming low's schema is refused
    before anything is rolled back, naming the rollback file and line."""
    from test_schema_creators import plant

    db.query(f"CREATE SCHEMA app AUTHORIZATION {low}; GRANT USAGE ON SCHEMA app TO PUBLIC")
    plant(db, "app", low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20));\n",
                  "SET search_path TO app, public;\nDELETE FROM public.a WHERE name = 'y';\nDROP TABLE public.a;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    result = cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and "0002_a.rollback.sql:1 puts schema app on its search_path" in result.stderr, \
        result.output
    assert "a" in db.tables() and db.query("SELECT who FROM app.hits") == []
