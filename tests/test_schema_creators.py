"""Other roles that may CREATE in a migrated schema, or own objects there (issue 23, attack23r 2).

The runner's own SQL resolves in pg_catalog, but a migration's own `=` on varchar resolves to an operator another
role planted in the migrated schema, and runs it as the migration role. doctor said "ready" and migrate ran it. Now
doctor FAILs naming the roles and migrate refuses (exit 2) with the REVOKE, unless SCHEMA_CREATORS_TRUSTED accepts them.
"""

from __future__ import annotations

import pytest

from conftest import add_migration, ok, one_error_line
from test_planted_objects import login_role, writable_by


@pytest.fixture
def low(db):
    """A login role not accepted by SCHEMA_CREATORS_TRUSTED (test_planted_objects' low is)."""
    with login_role(db) as name:
        yield name


OPERATOR = ("CREATE FUNCTION {s}.eq(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS "
            "$$BEGIN INSERT INTO {s}.hits VALUES (current_user); RETURN a::text OPERATOR(pg_catalog.=) b::text; END$$; "
            "CREATE OPERATOR {s}.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = {s}.eq)")


def plant(db, schema: str, role: str) -> None:
    """As `role`: a table recording who calls its operator, and `=` on varchar in `schema`."""
    db.query(f"SET ROLE {role}; CREATE TABLE {schema}.hits (who text); GRANT INSERT, SELECT ON {schema}.hits TO PUBLIC; "
             + OPERATOR.format(s=schema) + "; RESET ROLE")


def doctor_line(cli, db, sql_dir, *args, env=None) -> str:
    result = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, *args, env=env or db.db_env())
    [line] = [line for line in result.stdout.splitlines() if "postgres schema creators" in line]
    return line


def test_a_tenant_schema_others_may_create_in_is_refused_before_a_migration_runs_their_operator(cli, db, sql_dir, low):
    """Failed before: doctor said nothing of low, and migrate (exit 0) ran low's `=` as the migration role."""
    writable_by(db, "pb", low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": low}))
    plant(db, "pb", low)
    add_migration(sql_dir, "0003_data", "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    line = doctor_line(cli, db, sql_dir, "--schema", "pb")
    assert line.startswith("FAIL") and f"roles {low} may CREATE in schema pb" in line, line
    assert f'REVOKE CREATE ON SCHEMA "pb" FROM "{low}"' in line and "operator pb.=" in line
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env())
    [error] = [line for line in result.output.splitlines() if "FAILED: " in line]  # (a tenant's line)
    assert result.exit_code == 2 and "[pb] FAILED: refusing to migrate schema pb on" in error, result.output
    assert f'REVOKE CREATE ON SCHEMA "pb" FROM "{low}"' in error and f"SCHEMA_CREATORS_TRUSTED={low}" in error
    assert db.query("SELECT count(*) FROM pb.hits") == [(0,)]  # low's operator never ran as the migration role
    assert db.query("SELECT name FROM pb.a") == [("y",)]


def test_what_another_role_owns_there_is_refused_after_its_create_right_is_gone(cli, db, sql_dir, low):
    writable_by(db, "pb", low)
    plant(db, "pb", low)
    db.query(f"REVOKE CREATE ON SCHEMA pb FROM {low}")
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env())
    [error] = [line for line in result.output.splitlines() if "FAILED: " in line]
    assert result.exit_code == 2 and "other roles own objects there" in error, result.output
    assert f"(owner {low})" in error and "REVOKE CREATE" not in error
    assert db.query("SELECT to_regclass('pb.a')") == [(None,)]


def test_public_create_on_public_is_refused_in_a_plain_run(cli, db, sql_dir):
    """PostgreSQL < 15's default: PUBLIC may create in public."""
    writable_by(db, "public", "unused")
    try:
        add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
        result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
        error = one_error_line(result)
        assert result.exit_code == 2 and "PUBLIC (every role) may CREATE in schema public" in error, result.output
        assert 'REVOKE CREATE ON SCHEMA "public" FROM PUBLIC' in error
        assert "a" not in db.tables()
    finally:
        db.query("REVOKE CREATE ON SCHEMA public FROM PUBLIC")


def test_roles_the_setting_accepts_are_migrated_with_a_doctor_warning(cli, db, sql_dir, low):
    writable_by(db, "pb", low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
    env = {**db.db_env(), "SCHEMA_CREATORS_TRUSTED": f"{low}, other"}
    assert doctor_line(cli, db, sql_dir, "--schema", "pb", env=env).startswith("warn")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=env))
    assert doctor_line(cli, db, sql_dir, "--schema", "pb").startswith("FAIL")  # (not accepted without the setting)


def test_a_schema_only_the_migration_user_may_create_in_is_ok(cli, db, sql_dir):
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert doctor_line(cli, db, sql_dir).startswith("ok")


def refusal(cli, db, sql_dir, *args) -> str:
    result = cli("migrate", "--sql-dir", sql_dir, *args, env=db.db_env())
    [error] = [line for line in result.output.splitlines() if "refusing to migrate schema" in line] or [result.output]
    assert result.exit_code == 2, result.output
    return error


def test_public_on_a_tenant_runs_search_path_is_checked_too(cli, db, sql_dir, low):
    """attack23s 1: the tenant pb was clean, low planted `=` in public (on its search_path, pb then public).
    Failed before: doctor "ok", migrate exit 0 ran low's operator as the migration role."""
    db.query("CREATE SCHEMA pb")
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env()))
    db.query(f"GRANT CREATE ON SCHEMA public TO {low}")
    plant(db, "public", low)
    add_migration(sql_dir, "0003_data", "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    line = doctor_line(cli, db, sql_dir, "--schema", "pb")
    assert line.startswith("FAIL") and "may CREATE in schema public (on the migration's search_path)" in line, line
    error = refusal(cli, db, sql_dir, "--schema", "pb")
    assert f'REVOKE CREATE ON SCHEMA "public" FROM "{low}"' in error and "operator public.=" in error, error
    assert db.query("SELECT count(*) FROM public.hits") == [(0,)]
    assert db.query("SELECT name FROM pb.a") == [("y",)]


def test_a_schema_the_databases_search_path_names_is_checked_in_a_plain_run(cli, db, sql_dir, low):
    """attack23s 1 (07): ALTER DATABASE ... SET search_path = "$user", public, ext; low may CREATE in ext."""
    db.query(f"CREATE SCHEMA ext; GRANT USAGE ON SCHEMA ext TO PUBLIC; GRANT CREATE ON SCHEMA ext TO {low}")
    db.query(f'ALTER DATABASE "{db.name}" SET search_path = "$user", public, ext')
    plant(db, "ext", low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (name varchar(20)); SELECT 1 WHERE 'a'::varchar = 'b'::varchar;\n")
    error = refusal(cli, db, sql_dir)
    assert f'REVOKE CREATE ON SCHEMA "ext" FROM "{low}"' in error, error
    assert db.query("SELECT count(*) FROM ext.hits") == [(0,)] and "a" not in db.tables()


def test_a_role_the_migration_user_is_a_member_of_is_no_trusted_creator(cli, db, sql_dir, low):
    """attack23s 2: `GRANT app TO mig` made the app's login role trusted. Failed before: exit 0, its `=` ran."""
    writable_by(db, "pb", low)
    db.query(f"GRANT {low} TO CURRENT_USER")
    plant(db, "pb", low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (name varchar(20)); SELECT 1 WHERE 'a'::varchar = 'b'::varchar;\n")
    error = refusal(cli, db, sql_dir, "--schema", "pb")
    assert f"roles {low} may CREATE in schema pb" in error and f"(owner {low})" in error, error
    assert db.query("SELECT count(*) FROM pb.hits") == [(0,)]


def test_a_group_with_another_login_member_is_no_trusted_creator(cli, db, sql_dir, low):
    """attack23s 2 (02): a group the user shares with low; low SETs ROLE to it and plants. Failed before: exit 0."""
    group = f"grp_{low}"
    db.query(f"CREATE ROLE {group} NOLOGIN; GRANT {group} TO CURRENT_USER; GRANT {group} TO {low}")
    try:
        writable_by(db, "pb", group)
        plant(db, "pb", group)
        add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
        error = refusal(cli, db, sql_dir, "--schema", "pb")
        assert f'REVOKE CREATE ON SCHEMA "pb" FROM "{group}"' in error and f"(owner {group})" in error, error
        assert db.query("SELECT to_regclass('pb.a')") == [(None,)]
    finally:
        db.query(f"DROP OWNED BY {group} CASCADE; DROP ROLE {group}")


def test_what_a_role_that_can_no_longer_log_in_owns_is_still_refused(cli, db, sql_dir, low):
    """attack23s 5: the leaver's CREATE revoked and its login disabled, its operator left. Failed before: exit 0."""
    writable_by(db, "pb", low)
    plant(db, "pb", low)
    db.query(f"REVOKE CREATE ON SCHEMA pb FROM {low}; ALTER ROLE {low} NOLOGIN")
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
    error = refusal(cli, db, sql_dir, "--schema", "pb")
    assert f"(owner {low})" in error and "REVOKE CREATE" not in error, error


def test_a_nologin_role_only_the_user_acts_as_may_own_objects_there(cli, db, sql_dir, low):
    """The trusted case kept: the user's own owner role (no login, no member but the user)."""
    owner = f"own_{low}"
    db.query(f"CREATE ROLE owner_only NOLOGIN; GRANT owner_only TO CURRENT_USER; CREATE SCHEMA pb; "
             "GRANT USAGE, CREATE ON SCHEMA pb TO owner_only; SET ROLE owner_only; CREATE TABLE pb.t (id int); RESET ROLE"
             .replace("owner_only", owner))
    try:
        add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int);\n")
        ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env()))
    finally:
        db.query(f"DROP OWNED BY {owner} CASCADE; DROP ROLE {owner}")


def test_another_roles_trigger_on_a_migrated_table_is_refused(cli, db, sql_dir, low):
    """attack23s (2nd report) 3: GRANT ALL carries TRIGGER; low's trigger (its function in its own schema) fired as
    the migration role on the next data migration. Failed before: exit 0, the trigger ran."""
    db.query(f"CREATE SCHEMA pb; CREATE SCHEMA fn_{low} AUTHORIZATION {low}")
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env()))
    db.query(f"GRANT USAGE ON SCHEMA pb TO {low}; GRANT ALL ON pb.a TO {low}; SET ROLE {low}; "
             f"CREATE TABLE fn_{low}.hits (who text); GRANT INSERT ON fn_{low}.hits TO PUBLIC; "
             f"CREATE FUNCTION fn_{low}.t() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO fn_{low}.hits "
             f"VALUES (current_user); RETURN NEW; END$$; "
             f"CREATE TRIGGER audit BEFORE UPDATE ON pb.a FOR EACH ROW EXECUTE FUNCTION fn_{low}.t(); RESET ROLE")
    add_migration(sql_dir, "0003_data", "UPDATE a SET name = 'x';\n")
    error = refusal(cli, db, sql_dir, "--schema", "pb")
    assert f"trigger audit on table pb.a (function fn_{low}.t()) (owner {low})" in error, error
    assert db.query(f"SELECT count(*) FROM fn_{low}.hits") == [(0,)]


def test_a_database_owned_by_another_login_role_is_no_trusted_creator_in_public(cli, db, sql_dir, low):
    """attack23s (2nd report) 9: the database's owner (the app's login role) may CREATE in public through
    pg_database_owner. Failed before: doctor "ok", migrate ran its `=`."""
    if db.query("SELECT current_setting('server_version_num')::int")[0][0] < 150000:
        pytest.skip("public is owned by pg_database_owner on 15+")
    db.query(f'ALTER DATABASE "{db.name}" OWNER TO {low}')
    try:
        plant(db, "public", low)
        add_migration(sql_dir, "0002_a", "CREATE TABLE a (name varchar(20)); SELECT 1 WHERE 'a'::varchar = 'b'::varchar;\n")
        error = refusal(cli, db, sql_dir)
        assert f"roles {low} may CREATE in schema public" in error and "operator public.=" in error, error
        assert db.query("SELECT count(*) FROM public.hits") == [(0,)]
    finally:
        db.query(f'ALTER DATABASE "{db.name}" OWNER TO CURRENT_USER')


def test_a_path_schema_others_may_create_in_is_refused_with_standard_conforming_strings_off(cli, db, sql_dir, low):
    """attack24s 3's class in planted.py: the path's entries were split with `'\\s*...'`, which the server reads as
    `s*...` with the setting off (a legacy database's): `sales` was no entry, its creators never checked, and low's
    `=` there ran as the migration role. Failed before: exit 0, a hit recorded."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    writable_by(db, "sales", low)
    plant(db, "sales", low)
    db.query(f"ALTER DATABASE {db.name} SET search_path = sales, public")
    db.query(f"ALTER DATABASE {db.name} SET standard_conforming_strings = off")
    add_migration(sql_dir, "0002_data", "CREATE TABLE a (id int, name varchar(20));\n"
                  "SELECT count(*) FROM a WHERE name = 'y';\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and f"roles {low} may CREATE in schema sales" in one_error_line(result), result.output
    assert db.query("SELECT count(*) FROM sales.hits") == [(0,)]


def test_a_no_op_migrate_leaves_who_may_create_to_the_run_that_runs_a_file(cli, db, sql_dir, low):
    """issue 22: who may plant objects where a migration's SQL resolves names is read once a file will run (in a new
    session those catalog reads cost more than the rest of a no-op's queries). With nothing to run, nothing of the
    migrations' SQL runs and the runner's own is schema-qualified: the no-op says so, exit 0. Failed before: exit 2.
    The run that has a file to run still refuses before it, and low's operator never runs."""
    writable_by(db, "pb", low)
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": low}))
    plant(db, "pb", low)
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env())
    assert result.exit_code == 0 and "up to date (1 of 1 migrations applied)" in result.output, result.output
    assert "refusing" not in result.output
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (name varchar(20)); INSERT INTO a VALUES ('y'); "
                                     "UPDATE a SET name = 'x' WHERE name = 'y';\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env())
    [error] = [line for line in result.output.splitlines() if "FAILED: " in line]
    assert result.exit_code == 2 and "[pb] FAILED: refusing to migrate schema pb on" in error, result.output
    assert f'REVOKE CREATE ON SCHEMA "pb" FROM "{low}"' in error and "operator pb.=" in error
    assert db.query("SELECT count(*) FROM pb.hits") == [(0,)] and db.query("SELECT to_regclass('pb.a')") == [(None,)]


def test_an_event_trigger_another_role_owns_still_refuses_a_no_op(cli, db, sql_dir, low):
    """What the runner's own statements meet stays in the connect check (issue 22 moved the rest to the first file):
    an enabled event trigger runs on the runner's own DDL, REVOKE and COMMENT, a no-op's too."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query(f"CREATE SCHEMA fn_{low} AUTHORIZATION {low}; SET ROLE {low}; CREATE FUNCTION fn_{low}.audit() "
             "RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN NULL; END$$; RESET ROLE; "
             f"CREATE EVENT TRIGGER audit_{low} ON ddl_command_end EXECUTE FUNCTION fn_{low}.audit()")
    try:
        error = refusal(cli, db, sql_dir)
        assert f"event trigger audit_{low} (function fn_{low}.audit()) (owner {low})" in error, error
    finally:
        db.query(f"DROP EVENT TRIGGER audit_{low}")
