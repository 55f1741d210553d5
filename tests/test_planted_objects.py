"""Objects other roles planted never run as the migration role (issue 23, finding 2), on the real PostgreSQL.

A low-privileged role with CREATE on a schema the runner migrates (a tenant's, or public where PUBLIC may
CREATE, the default before PostgreSQL 15) plants (a) an `=` on varchar, which beats pg_catalog's text = text
for an unqualified comparison, and (b) a bookkeeping table of its own with a trigger. Each planted function
records the role it ran as in a table: it must stay empty whatever the runner does.
"""

from __future__ import annotations

import contextlib
import re
import uuid

import pytest

from conftest import add_migration, applied, ok, one_error_line, psql_file


@contextlib.contextmanager
def login_role(db, prefix: str = "low_", options: str = "LOGIN"):
    """A login role (or one with other `options`) with nothing of its own; dropped (with what it made) after."""
    name = prefix + uuid.uuid4().hex[:8]
    db.query(f"CREATE ROLE {name} {options}")
    yield name
    db.query(f"DROP OWNED BY {name} CASCADE")
    db.query(f"DROP ROLE {name}")


@pytest.fixture
def low(db, monkeypatch):
    """A login_role, accepted (with PUBLIC) as a role that may CREATE in the migrated schema (SCHEMA_CREATORS_TRUSTED:
    else every writing command refuses the schema, test_schema_creators.py): what these tests prove is that the
    runner's own SQL still calls nothing it plants."""
    with login_role(db) as name:
        monkeypatch.setenv("SCHEMA_CREATORS_TRUSTED", f"{name},PUBLIC")
        yield name


def writable_by(db, schema: str, role: str) -> None:
    """The grant the finding is about: another role may CREATE in the schema the runner migrates."""
    if schema == "public":
        db.query("GRANT CREATE ON SCHEMA public TO PUBLIC")
    else:
        db.query(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        db.query(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}")


def hits_table(schema: str, role: str) -> str:
    """Where traps record their calls: a table (who, what) and a sequence, which no rollback takes back."""
    return (f"SET ROLE {role}; CREATE TABLE IF NOT EXISTS {schema}.planted_hits (who text, what text); "
            f"CREATE SEQUENCE IF NOT EXISTS {schema}.planted_calls; "
            f"GRANT INSERT, SELECT ON {schema}.planted_hits TO PUBLIC; "
            f"GRANT USAGE, SELECT ON {schema}.planted_calls TO PUBLIC; RESET ROLE")


def _record(schema: str, what: str) -> str:
    """The statements a trap's body starts with: who called it, counted outside any transaction too."""
    what = what.replace("'", "''")
    return (f"INSERT INTO {schema}.planted_hits VALUES (current_user, '{what}'); "
            f"SELECT pg_catalog.nextval('{schema}.planted_calls');")


def _trap_operator(schema: str, op: str, left: str, right: str) -> str:
    """`op` on (left, right) in `schema`: records its call, then answers as pg_catalog's `op` would."""
    function = f"{schema}.planted_op_{op.encode().hex()}"
    result = "text" if op == "||" else "boolean"
    return (f"CREATE FUNCTION {function}({left}, {right}) RETURNS {result} LANGUAGE sql VOLATILE AS $trap$ "
            f"{_record(schema, f'{op}({left}, {right})')} SELECT $1 OPERATOR(pg_catalog.{op}) $2 $trap$; "
            f"CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {function})")


def plant_operator(db, schema: str, role: str, op: str, left: str, right: str) -> None:
    """A trap: `{schema}.{op}(left, right)`, made by `role`, recording who calls it in planted_hits."""
    db.query(hits_table(schema, role) + f"; SET ROLE {role}; {_trap_operator(schema, op, left, right)}; RESET ROLE")


def plant_operators(db, schema: str, role: str) -> None:
    """`=` on (varchar, varchar) and (varchar, text): exact matches for the bookkeeping's varchar columns."""
    plant_operator(db, schema, role, "=", "varchar", "varchar")
    plant_operator(db, schema, role, "=", "varchar", "text")


def hits(db, schema: str) -> list[tuple]:
    return db.query(f"SELECT who FROM {schema}.planted_hits")


def plant_table(db, schema: str, role: str, table: str = "_hcm_migration_checksum") -> None:
    """The runner's table made first by the low role, with a BEFORE INSERT trigger recording who inserts."""
    db.query(hits_table(schema, role) + f"""; SET ROLE {role};
        CREATE TABLE {schema}.{table} (migration_id VARCHAR(255) PRIMARY KEY, sha256 CHAR(64) NOT NULL,
                                       recorded_at TIMESTAMP NOT NULL DEFAULT now());
        GRANT ALL ON {schema}.{table} TO PUBLIC;
        CREATE FUNCTION {schema}.planted_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO {schema}.planted_hits VALUES (current_user); RETURN NEW; END $$;
        CREATE TRIGGER planted BEFORE INSERT ON {schema}.{table}
            FOR EACH ROW EXECUTE FUNCTION {schema}.planted_trigger();
        RESET ROLE""")


def refusal(result) -> str:
    """The one line that refuses (a tenant's run reports it as its schema's failure, then sums up)."""
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if "refusing the migration history" in line]
    assert lines, result.output
    return lines[0]


def schema_args(schema: str) -> list[str]:
    return [] if schema == "public" else ["--schema", schema]


def two_files(sql_dir) -> None:
    """A transactional file and a non-transactional one (its progress goes through the failures table)."""
    add_migration(sql_dir, "0002_one", "CREATE TABLE one (id int);\n", "DROP TABLE one;\n")
    add_migration(sql_dir, "0003_two", "-- transactional: false\nCREATE TABLE two (id int);\n",
                  "-- transactional: false\nDROP TABLE two;\n")


@pytest.mark.parametrize("schema", ["pb", "public"])
def test_a_planted_operator_is_never_called_by_the_runners_own_statements(cli, db, sql_dir, low, schema):
    writable_by(db, schema, low)
    args = ["--sql-dir", sql_dir, *schema_args(schema)]
    assert cli("migrate", *args, env=db.db_env()).exit_code == 0
    plant_operators(db, schema, low)
    # the trap works: an unqualified varchar comparison in that schema calls it
    db.query(f"SET search_path = {schema}; SELECT 1 FROM {schema}._yoyo_migration WHERE migration_id = 'x'")
    assert set(hits(db, schema)) == {("postgres",)}  # (once per row compared)
    db.query(f"DELETE FROM {schema}.planted_hits")

    two_files(sql_dir)
    for command in (["status"], ["migrate"], ["sql", "rollback", "--count", "2"], ["migrate"], ["sql", "rollback"],
                    ["sql", "mark", "0003_two"], ["status"]):
        result = cli(*command, *args, env=db.db_env())
        assert result.exit_code == 0, (command, result.output)
        assert hits(db, schema) == [], f"{' '.join(command)} called the planted operator"
    assert [r[0] for r in db.query(f"SELECT migration_id FROM {schema}._yoyo_migration ORDER BY 1")] == [
        "0001_create_hcm_report_metadata", "0002_one", "0003_two"]


@pytest.mark.parametrize("schema", ["pc", "public"])
def test_a_planted_bookkeeping_table_is_refused_and_doctor_fails_naming_it(cli, db, sql_dir, low, schema):
    writable_by(db, schema, low)
    plant_table(db, schema, low)
    args = ["--sql-dir", sql_dir, *schema_args(schema)]
    result = cli("migrate", *args, env=db.db_env())
    line = refusal(result)
    assert f"refusing the migration history in schema {schema}" in line, line
    assert f"{schema}._hcm_migration_checksum is owned by role {low}" in line, line
    assert "has trigger planted" in line and "it would run as user postgres" in line, line
    assert hits(db, schema) == []
    assert db.query("SELECT to_regclass(%s)", (f"{schema}.hcm_report_metadata",)) == [(None,)], "nothing ran"

    for command in (["status"], ["sql", "rollback"]):
        refused = cli(*command, *args, env=db.db_env())
        assert f"{schema}._hcm_migration_checksum is owned by role {low}" in refusal(refused)
    doctor = cli("doctor", *args, env=db.db_env())
    assert doctor.exit_code == 1, doctor.output
    [fail] = [line for line in doctor.stdout.splitlines() if line.startswith("FAIL  postgres bookkeeping")]
    assert f"{schema}._hcm_migration_checksum is owned by role {low}" in fail, fail
    assert "has trigger planted" in fail and "ready" not in doctor.stdout.splitlines()[-1]
    assert hits(db, schema) == []


def test_a_planted_yoyo_table_is_refused_too(cli, db, sql_dir, low):
    writable_by(db, "pd", low)
    db.query(f"SET ROLE {low}; CREATE TABLE pd._yoyo_migration (migration_hash VARCHAR(64) PRIMARY KEY, "
             "migration_id VARCHAR(255), applied_at_utc TIMESTAMP); RESET ROLE")
    line = refusal(cli("migrate", "--sql-dir", sql_dir, "--schema", "pd", env=db.db_env()))
    assert f"pd._yoyo_migration is owned by role {low}" in line, line


def test_a_trigger_on_the_runners_own_table_is_refused(cli, db, sql_dir):
    """Owned by the migration role, but with a trigger: the runner's tables have none, so it is refused."""
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "pe", "--create-schemas", env=db.db_env()).exit_code == 0
    db.query("CREATE FUNCTION pe.f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$; "
             "CREATE TRIGGER t BEFORE DELETE ON pe._yoyo_migration FOR EACH ROW EXECUTE FUNCTION pe.f()")
    line = refusal(cli("sql", "rollback", "--sql-dir", sql_dir, "--schema", "pe", env=db.db_env()))
    assert "pe._yoyo_migration has trigger t" in line, line
    assert db.query("SELECT count(*) FROM pe._yoyo_migration") == [(1,)]


def test_a_member_roles_table_is_refused_and_its_default_never_runs(cli, db, sql_dir, low):
    """Membership is granted by the other role's admin (PostgreSQL 14/15: a login role may GRANT itself to the
    migration role; simulated by a superuser), even WITH INHERIT FALSE, SET FALSE: a table that role owns is not
    the run's, or its column DEFAULT runs as the migration role on every insert (attack23e 1)."""
    writable_by(db, "pf", low)
    migrator = "mig_" + uuid.uuid4().hex[:8]
    db.query(f"CREATE ROLE {migrator} LOGIN; GRANT CREATE ON DATABASE {db.name} TO {migrator}; "
             f"GRANT USAGE, CREATE ON SCHEMA pf TO {migrator}; GRANT {low} TO {migrator} WITH INHERIT FALSE, SET FALSE")
    try:
        db.query(hits_table("pf", low) + f"""; SET ROLE {low};
            CREATE FUNCTION pf.planted_default() RETURNS int LANGUAGE sql AS
                $$ INSERT INTO pf.planted_hits VALUES (current_user, 'default') RETURNING 1 $$;
            CREATE TABLE pf._hcm_migration_checksum (migration_id VARCHAR(255) PRIMARY KEY, sha256 CHAR(64) NOT NULL,
                recorded_at TIMESTAMP NOT NULL DEFAULT now(), x int DEFAULT pf.planted_default());
            GRANT ALL ON pf._hcm_migration_checksum TO PUBLIC; RESET ROLE""")
        env = {**db.db_env(), "DB_USER": migrator}
        line = refusal(cli("migrate", "--sql-dir", sql_dir, "--schema", "pf", env=env))
        assert f"pf._hcm_migration_checksum is owned by role {low}" in line, line
        assert f"ALTER TABLE pf._hcm_migration_checksum OWNER TO {migrator}" in line, line
        assert hits(db, "pf") == [] and db.query("SELECT count(*) FROM pf._hcm_migration_checksum") == [(0,)]
        doctor = cli("doctor", "--sql-dir", sql_dir, "--schema", "pf", env=env)
        assert doctor.exit_code == 1, doctor.output
        [fail] = [line for line in doctor.stdout.splitlines() if line.startswith("FAIL  postgres bookkeeping")]
        assert f"pf._hcm_migration_checksum is owned by role {low}" in fail, doctor.stdout
        assert f"ALTER TABLE pf._hcm_migration_checksum OWNER TO {migrator}" in doctor.stdout
        assert hits(db, "pf") == []
    finally:
        db.query(f"DROP OWNED BY {migrator} CASCADE; DROP ROLE {migrator}")


# --- low: no rights on the bookkeeping is one line naming table, privilege and the GRANT ---------------------


@pytest.mark.parametrize("command", [["migrate"], ["status"]])
def test_no_rights_on_a_bookkeeping_table_is_one_line_with_the_grant(cli, db, sql_dir, low, command):
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    db.query(f"GRANT USAGE, CREATE ON SCHEMA public TO {low}; "
             f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {low}; "
             f"REVOKE ALL ON public._yoyo_migration FROM {low}; REVOKE DELETE ON public.yoyo_lock FROM {low}")
    result = cli(*command, "--sql-dir", sql_dir, env={**db.db_env(), "DB_USER": low})
    line = one_error_line(result)
    assert "unexpected" not in result.output, result.output
    if command == ["migrate"]:
        assert f"user {low} lacks SELECT, INSERT, UPDATE, DELETE on public._yoyo_migration; DELETE on public.yoyo_lock" in line
        assert f"run GRANT SELECT, INSERT, UPDATE, DELETE ON public._yoyo_migration, public.yoyo_lock TO {low}" in line
    else:  # reading needs SELECT alone
        assert f"user {low} lacks SELECT on public._yoyo_migration" in line and "yoyo_lock" not in line, line
        assert f"run GRANT SELECT ON public._yoyo_migration TO {low}" in line, line


# --- low: a forged application_name does not make a session the named runner -----------------------------


def test_a_forged_lock_holder_is_named_as_the_server_knows_it(cli, db, sql_dir, low):
    import psycopg2

    from migrator.pg_lock import LOCK_KEY

    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    forger = psycopg2.connect(dbname=db.name, user=low, host=db.server.host, port=db.server.port,
                              application_name="hcm-db-migrations victimhost:4242")
    forger.autocommit = True
    try:
        forger.cursor().execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        pid = forger.info.backend_pid
        for command in (["migrate", "--lock-timeout", "0.3"], ["sql", "break-lock"]):
            line = one_error_line(cli(*command, "--sql-dir", sql_dir, env=db.db_env()))
            assert f"held by an unverified session (server pid {pid}, user {low}" in line, line
            assert "held by host victimhost" not in line, line
        # a real runner's row with that pid, written on another host (pods share pids): the row names its host,
        # which is not the one the session claims: still unverified, and the claimed host is never named
        db.query("INSERT INTO public.yoyo_lock (locked, ctime, pid, runner) VALUES "
                 "(1, now() AT TIME ZONE 'UTC', 4242, 'hcm-db-migrations otherhost:4242')")
        line = one_error_line(cli("migrate", "--lock-timeout", "0.3", "--sql-dir", sql_dir, env=db.db_env()))
        assert f"held by an unverified session (server pid {pid}" in line and "held by host" not in line, line
        # the row of the runner the session names, written after that session connected: not that session's own
        # row (attack23r 3: it was named as that runner), nor is one naming its server session (its role may not
        # write the table): still unverified
        db.query("UPDATE public.yoyo_lock SET runner = 'hcm-db-migrations victimhost:4242'")
        line = one_error_line(cli("migrate", "--lock-timeout", "0.3", "--sql-dir", sql_dir, env=db.db_env()))
        assert f"held by an unverified session (server pid {pid}" in line and "held by host" not in line, line
        db.query("UPDATE public.yoyo_lock SET backend_pid = a.pid, backend_start = a.backend_start "
                 "FROM pg_stat_activity a WHERE a.pid = %s", (pid,))
        line = one_error_line(cli("migrate", "--lock-timeout", "0.3", "--sql-dir", sql_dir, env=db.db_env()))
        assert f"held by an unverified session (server pid {pid}" in line and "held by host" not in line, line
    finally:
        forger.close()


def test_a_planted_flyway_history_under_its_schema_table_name_is_refused(cli, db, tmp_path, low):
    """SCHEMA_TABLE names a Flyway folder's history: a table of that name another role made first (with a
    trigger) is refused like the runner's own tables, before the runner writes Flyway's rows into it."""
    folder = tmp_path / "flyway"
    folder.mkdir()
    (folder / "V20240101120000__create_x.sql").write_text("CREATE TABLE pf_x (id int);\n")
    writable_by(db, "pf", low)
    db.query(hits_table("pf", low) + f"""; SET ROLE {low};
        CREATE TABLE pf.plan_history (installed_rank int PRIMARY KEY, version varchar(50), description varchar(200),
            type varchar(20), script varchar(1000), checksum int, installed_by varchar(100),
            installed_on timestamp DEFAULT now(), execution_time int, success boolean);
        GRANT ALL ON pf.plan_history TO PUBLIC;
        CREATE FUNCTION pf.planted_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO pf.planted_hits VALUES (current_user); RETURN NEW; END $$;
        CREATE TRIGGER planted BEFORE INSERT ON pf.plan_history FOR EACH ROW EXECUTE FUNCTION pf.planted_trigger();
        RESET ROLE""")
    result = cli("migrate", "--sql-dir", str(folder), "--schema", "pf", env={**db.db_env(), "SCHEMA_TABLE": "plan_history"})
    line = refusal(result)
    assert f"pf.plan_history is owned by role {low}" in line and "has trigger planted" in line, line
    assert hits(db, "pf") == []
    assert db.query("SELECT to_regclass('pf.pf_x')") == [(None,)], "nothing ran"


# --- second review: the first statement, side connections and plan --impact resolve in pg_catalog alone -------


def plant_function(db, schema: str, role: str, create: str) -> None:
    """`create` (a CREATE FUNCTION/AGGREGATE/OPERATOR made by `role`) may call `{schema}.planted_hit()`,
    which records who ran it."""
    db.query(hits_table(schema, role) + f"""; SET ROLE {role};
        CREATE FUNCTION {schema}.planted_hit() RETURNS boolean LANGUAGE sql VOLATILE AS $$
            INSERT INTO {schema}.planted_hits VALUES (current_user); SELECT true $$;
        {create};
        RESET ROLE""")


def test_a_planted_string_agg_is_not_called_by_the_first_pinning_statement(cli, db, sql_dir, low):
    """string_agg(name, text) in public is an exact match for the pin's aggregate over nspname (pg_catalog's
    takes text): it ran before the pin's own set_config('search_path') took effect."""
    writable_by(db, "public", low)
    plant_function(db, "public", low, f"""
        CREATE FUNCTION public.sa_step(text, name, text) RETURNS text LANGUAGE sql AS $$ SELECT $2::text $$;
        CREATE FUNCTION public.sa_final(text) RETURNS text LANGUAGE sql AS $$ SELECT CASE WHEN public.planted_hit()
            THEN $1 END $$;
        CREATE AGGREGATE public.string_agg(name, text) (SFUNC = public.sa_step, STYPE = text,
                                                         FINALFUNC = public.sa_final)""")
    db.query("SELECT string_agg(nspname, ',') FROM pg_namespace")  # the trap works
    assert set(hits(db, "public")) == {("postgres",)}  # (once per row compared)
    db.query("DELETE FROM public.planted_hits")
    for command in (["migrate"], ["status"], ["doctor"]):
        cli(*command, "--sql-dir", sql_dir, env=db.db_env())
        assert hits(db, "public") == [], f"{command} called the planted string_agg"
    assert applied(db) == ["0001_create_hcm_report_metadata"]


def test_the_progress_watcher_never_calls_a_planted_unnest(cli, db, sql_dir, low):
    """The watcher's side connection (and the lock-retry probe on the same keywords) resolve in pg_catalog alone:
    a planted public.unnest(integer[]) is an exact match for unnest(pg_blocking_pids(...))."""
    import psycopg2

    from test_progress import add, read_until, runner

    ok(cli("migrate", "--sql-dir", sql_dir, "--database-url", db.url))  # (setup: in-process)
    writable_by(db, "public", low)
    plant_function(db, "public", low, """
        CREATE FUNCTION public.unnest(integer[]) RETURNS SETOF integer LANGUAGE sql AS $$
            SELECT x FROM pg_catalog.unnest($1) x WHERE public.planted_hit() $$""")
    add(sql_dir, "0002_add_note", "ALTER TABLE hcm_report_metadata ADD COLUMN note text;\n")
    holder = psycopg2.connect(db.url, application_name="dba-console-9")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT count(*) FROM hcm_report_metadata")
        proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", db.url, "--ddl-lock-timeout", "120s")
        lines = read_until(proc, lambda line: "pg_terminate_backend" in line, timeout=60)
        holder.rollback()
        proc.communicate(timeout=60)
    finally:
        holder.close()
    assert any("dba-console-9" in line for line in lines), lines  # the holder is still named
    assert proc.returncode == 0
    assert hits(db, "public") == []


def test_plan_impact_never_calls_a_planted_operator_on_the_live_database(cli, db, sql_dir, low, pg):
    """The live sizes compared `c.oid = to_regclass(...)` (oid = regclass) under the bookkeeping schema's
    search_path: a planted =(oid, regclass) there was an exact match."""
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    writable_by(db, "public", low)
    plant_operator(db, "public", low, "=", "oid", "regclass")
    db.query("SET search_path = public; SELECT 1 FROM pg_class WHERE oid = 'pg_class'::regclass")  # the trap works
    assert set(hits(db, "public")) == {("postgres",)}  # (once per row compared)
    db.query("DELETE FROM public.planted_hits")
    add_migration(sql_dir, "0002_big", "ALTER TABLE hcm_report_metadata ALTER COLUMN id TYPE bigint;\n", "SELECT 1;\n")
    result = cli("plan", "--impact", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert result.exit_code == 0, result.output
    assert "rewrites hcm_report_metadata (" in result.output, result.output  # the live size is still found
    assert hits(db, "public") == []


@pytest.fixture
def migrator_role(db):
    """A non-superuser migration role that may create schemas."""
    name = "mig_" + uuid.uuid4().hex[:8]
    db.query(f"CREATE ROLE {name} LOGIN; GRANT CREATE ON DATABASE {db.name} TO {name}")
    yield name
    db.query(f"DROP OWNED BY {name} CASCADE; DROP ROLE {name}")


def test_a_tenant_schema_owned_by_another_role_is_refused_and_doctor_names_its_owner(cli, db, sql_dir, low,
                                                                                     migrator_role):
    """The schema's owner may drop or replace the runner's tables whenever it likes: not the run's to trust."""
    db.query(f"GRANT CREATE ON DATABASE {db.name} TO {low}; SET ROLE {low}; CREATE SCHEMA po; "
             f"GRANT USAGE, CREATE ON SCHEMA po TO {migrator_role}; RESET ROLE")
    env = {**db.db_env(), "DB_USER": migrator_role}
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "po", env=env)
    line = refusal(result)
    assert f"schema po is owned by role {low}" in line and f"ALTER SCHEMA po OWNER TO {migrator_role}" in line, line
    assert db.query("SELECT to_regclass('po._yoyo_migration')") == [(None,)], "nothing ran"
    doctor = cli("doctor", "--sql-dir", sql_dir, "--schema", "po", env=env)
    assert doctor.exit_code == 1, doctor.output
    [fail] = [line for line in doctor.stdout.splitlines() if line.startswith("FAIL  postgres bookkeeping")]
    assert f"schema po is owned by role {low}" in fail, doctor.stdout
    assert f"ALTER SCHEMA po OWNER TO {migrator_role}" in doctor.stdout
    # its owner handing it over makes it the run's: accepted
    db.query(f"ALTER SCHEMA po OWNER TO {migrator_role}")
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "po", env=env).exit_code == 0


def test_public_owned_by_pg_database_owner_is_trusted_for_the_databases_owner(cli, db, sql_dir, migrator_role):
    """PostgreSQL 15+: public belongs to pg_database_owner, whose member is the database's owner."""
    db.query(f"ALTER DATABASE {db.name} OWNER TO {migrator_role}")
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "DB_USER": migrator_role})
        assert result.exit_code == 0, result.output
    finally:
        db.query(f"ALTER DATABASE {db.name} OWNER TO CURRENT_USER")


def test_a_role_search_path_with_pg_catalog_last_reaches_no_planted_operator(cli, db, sql_dir, low):
    """The run connection's first statement (the pin) ran under the role's own search_path: with pg_catalog
    listed after a schema others may create in, a planted = on name ran as the migration role (attack23b 2)."""
    writable_by(db, "public", low)
    plant_operator(db, "public", low, "=", "name", "name")
    db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} SET search_path = public, pg_catalog")
    try:
        for command in (["migrate"], ["status"], ["sql", "rollback"]):
            result = cli(*command, "--sql-dir", sql_dir, env=db.db_env())
            assert result.exit_code == 0, (command, result.output)
            assert hits(db, "public") == [], f"{' '.join(command)} called the planted operator"
    finally:
        db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} RESET search_path")


def test_the_concurrent_build_checks_on_the_migration_session_call_no_planted_operator(cli, db, sql_dir, low):
    """The checks after a non-transactional file's REINDEX/CREATE INDEX CONCURRENTLY run on the migration's own
    session, whose search_path is the file's: `relname ~ '...'` took a planted ~(name, name) over pg_catalog's
    ~(name, text) for the unknown literal (attack23c 1)."""
    import psycopg2

    writable_by(db, "public", low)
    plant_operator(db, "public", low, "~", "name", "name")
    plant_operator(db, "public", low, "=", "name", "name")
    db.query(f"SET ROLE {low}; CREATE TABLE public.dup (x int); INSERT INTO public.dup VALUES (1), (1); RESET ROLE")
    with pytest.raises(psycopg2.Error):  # an INVALID index somewhere, so the leftover filter reaches its ~
        db.query("CREATE UNIQUE INDEX CONCURRENTLY dup_x ON public.dup (x)")
    add_migration(sql_dir, "0002_reindex", "-- transactional: false\n"
                  "REINDEX INDEX CONCURRENTLY idx_hcm_report_name;\n"
                  "CREATE INDEX CONCURRENTLY idx_hcm_report_tenant ON hcm_report_metadata (tenant_id);\n",
                  "-- transactional: false\nDROP INDEX CONCURRENTLY idx_hcm_report_tenant;\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 0, result.output
    assert hits(db, "public") == [], "a check after the concurrent builds called a planted operator"


def test_plan_impacts_catalog_reads_on_the_scratch_session_call_no_planted_operator(db, low):
    """plan --impact reads the scratch database's relations on the session that runs the migration's text (its
    search_path is the default): `nspname NOT LIKE 'pg\\_toast%'` took a planted !~~(name, name) over pg_catalog's
    !~~(name, text), run as the migration role, by a role that planted it in the new scratch database (attack23d 1).
    The same query on a database where the trap is planted proves it."""
    import psycopg2

    from migrator.postgres import impact

    writable_by(db, "public", low)
    plant_operator(db, "public", low, "!~~", "name", "name")
    plant_operator(db, "public", low, "<>", "name", "name")
    server = db.server
    conn = psycopg2.connect(dbname=db.name, user=server.user, password=server.password, host=server.host,
                            port=server.port, options="-c search_path=public,pg_catalog")
    conn.autocommit = True  # (a rollback would take the trap's own records with it)
    try:
        with conn.cursor() as cur:
            assert impact._relations(cur)  # it still reads the relations
            cur.execute(impact._LOCKS, (conn.info.backend_pid,))
    finally:
        conn.close()
    assert hits(db, "public") == []


# --- the systematic audit: traps for every operator and function the runner spells, on every path ---------------

TRAP_OPERATORS = ("=", "<>", "<", ">", "<=", ">=", "~~", "!~~", "~~*", "!~~*", "~", "!~", "~*", "!~*", "||")
TRAP_TYPES = ("name", "text", "varchar", "bpchar", '"char"', "oid", "regclass", "regnamespace", "int2", "int4",
              "int8", "numeric", "bool", "timestamp", "timestamptz")
# Type names (not SQL keywords) a cast finds on the search_path: planted as domains that record their caller.
TRAP_DOMAINS = ("text", "name", "oid", "regclass", "regcollation", "regtype", "regnamespace", "int2", "int4", "int8",
                "xid", "xid8", "bool", "jsonb", "numeric")


def _spelled_calls() -> list[str]:
    """Every word the runner's source writes before `(`: those pg_catalog has as functions get a trap."""
    from conftest import PROJECT_ROOT

    words = set()
    for path in (PROJECT_ROOT / "migrator").rglob("*.py"):
        words.update(re.findall(r"(?<![\w.])([a-z_][a-z0-9_]*)\s*\(", path.read_text()))
    return sorted(words)


def plant_traps(query, schema: str, role: str) -> int:
    """Made by `role` in `schema`, each recording its caller: every operator of TRAP_OPERATORS on every pair of
    TRAP_TYPES that pg_catalog's operator accepts, a same-signature copy of every (non-polymorphic) pg_catalog
    function whose name the runner spells, and a domain for each of TRAP_DOMAINS. `query` runs SQL on the database. Returns how many were planted."""
    record = ("pg_catalog.format('INSERT INTO %I.planted_hits VALUES (current_user, %L); "
              "SELECT pg_catalog.nextval(%L);', s, what, pg_catalog.format('%s.planted_calls', s))")
    record_check = record.replace(", s, what,", ", s, 'a cast to a planted type',")
    domains = ", ".join(f"'{name}'" for name in TRAP_DOMAINS)
    words = ", ".join(f"'{word}'" for word in _spelled_calls())
    types = ", ".join("'" + t.replace("'", "''") + "'" for t in TRAP_TYPES)
    ops = ", ".join(f"'{op}'" for op in TRAP_OPERATORS)
    query(hits_table(schema, role) + f"""; SET ROLE {role};
        DO $plant$
        DECLARE s text := '{schema}'; op text; l text; r text; what text; f record;
        BEGIN
          FOREACH op IN ARRAY ARRAY[{ops}] LOOP
            FOREACH l IN ARRAY ARRAY[{types}] LOOP
              FOREACH r IN ARRAY ARRAY[{types}] LOOP
                what := pg_catalog.format('%s(%s, %s)', op, l, r);
                BEGIN
                  EXECUTE pg_catalog.format('CREATE FUNCTION %I.%I(%s, %s) RETURNS %s LANGUAGE sql VOLATILE AS %L',
                    s, pg_catalog.format('planted_op_%s', pg_catalog.encode(pg_catalog.convert_to(op, 'UTF8'), 'hex')), l, r,
                    CASE op WHEN '||' THEN 'text' ELSE 'boolean' END,
                    pg_catalog.concat({record}, pg_catalog.format(' SELECT $1 OPERATOR(pg_catalog.%s) $2', op)));
                  EXECUTE pg_catalog.format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %I.%I)',
                    s, op, l, r, s, pg_catalog.format('planted_op_%s', pg_catalog.encode(pg_catalog.convert_to(op, 'UTF8'), 'hex')));
                EXCEPTION WHEN OTHERS THEN NULL;  -- pg_catalog has no such operator: nothing to shadow
                END;
              END LOOP;
            END LOOP;
          END LOOP;
          FOR f IN SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args,
                          pg_catalog.pg_get_function_result(p.oid) AS result, p.pronargs, p.proretset
                   FROM pg_catalog.pg_proc p
                   WHERE p.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
                     AND p.prokind OPERATOR(pg_catalog.=) 'f' AND p.provariadic OPERATOR(pg_catalog.=) 0
                     AND p.proname OPERATOR(pg_catalog.=) ANY (ARRAY[{words}]::pg_catalog.name[])
                     AND NOT EXISTS (SELECT FROM pg_catalog.pg_type t
                                     WHERE t.typtype OPERATOR(pg_catalog.=) 'p'
                                       AND (t.oid OPERATOR(pg_catalog.=) ANY (p.proargtypes::pg_catalog.oid[])
                                            OR t.oid OPERATOR(pg_catalog.=) p.prorettype)) LOOP
            what := pg_catalog.format('%s(%s)', f.proname, f.args);
            BEGIN
              EXECUTE pg_catalog.format('CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE sql VOLATILE AS %L',
                s, f.proname, f.args, f.result,
                pg_catalog.concat({record}, CASE WHEN f.proretset THEN ' SELECT * FROM ' ELSE ' SELECT ' END,
                pg_catalog.format('pg_catalog.%I(%s)', f.proname, coalesce(
                     (SELECT pg_catalog.string_agg(pg_catalog.format('$%s', i), ', ') FROM pg_catalog.generate_series(1, f.pronargs) i), ''))));
            EXCEPTION WHEN OTHERS THEN NULL;
            END;
          END LOOP;
          -- a type name the runner casts to, found first in `s`: a domain whose CHECK records its caller
          EXECUTE pg_catalog.format('CREATE FUNCTION %I.planted_check() RETURNS boolean LANGUAGE sql VOLATILE AS %L',
                                    s, pg_catalog.concat({record_check}, ' SELECT true'));
          FOREACH l IN ARRAY ARRAY[{domains}] LOOP
            EXECUTE pg_catalog.format('CREATE DOMAIN %I.%I AS pg_catalog.%I CHECK (%I.planted_check())', s, l, l, s);
          END LOOP;
        END $plant$;
        RESET ROLE""")
    return int(query(f"SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc WHERE pronamespace OPERATOR(pg_catalog.=) "
                     f"'{schema}'::pg_catalog.regnamespace AND proname OPERATOR(pg_catalog.<>) 'planted_hit'")[0][0])


def trap_calls(query, schema: str) -> int:
    """How many times the traps ran (a sequence: a rolled-back call still counts)."""
    value, called = query(f"SELECT last_value, is_called FROM {schema}.planted_calls")[0]
    return value if called else 0


def test_the_traps_catch_an_unqualified_operator_and_function(db, low):
    """The audit's traps work: under search_path = schema, pg_catalog an unqualified comparison, LIKE, concatenation
    and call reach them; their OPERATOR(pg_catalog....) spellings do not."""
    writable_by(db, "pt", low)
    planted = plant_traps(db.query, "pt", low)
    assert planted > 300, planted
    qualified = ("SELECT 'a'::pg_catalog.name OPERATOR(pg_catalog.~) 'b', pg_catalog.lower('X'), "
                 "1 OPERATOR(pg_catalog.=) 2, 'a'::pg_catalog.text OPERATOR(pg_catalog.||) 'b'")
    db.query("SET search_path = pt, pg_catalog; " + qualified)
    assert trap_calls(db.query, "pt") == 0
    for unqualified in ("SELECT 'a'::name ~ 'b'", "SELECT relname NOT LIKE 'x' FROM pg_class LIMIT 1",
                        "SELECT 1 = 2", "SELECT 'a'::text || 'b'", "SELECT lower('X')", "SELECT oid = 0 FROM pg_class LIMIT 1",
                        "SELECT 'pg_class'::regclass"):
        before = trap_calls(db.query, "pt")
        db.query("SET search_path = pt, pg_catalog; " + unqualified)
        assert trap_calls(db.query, "pt") > before, unqualified


@pytest.fixture
def trapped_scratch(monkeypatch, low, pg):
    """Every scratch database gets the traps the moment it exists (a racing planter where PUBLIC may CREATE on
    public), with search_path = public, pg_catalog; the calls they saw are summed before it is dropped."""
    import psycopg2

    from migrator.schema import scratch

    seen = []
    real = scratch._on_server

    def pg_connect(name):
        return psycopg2.connect(dbname=name, user=pg.user, password=pg.password, host=pg.host, port=pg.port)

    def on_server(server, statements, what="create"):
        if '"' not in statements[0]:  # (scratch.powers: the user's rights read, no database named)
            return real(server, statements, what)
        name = statements[0].split('"')[1]
        if statements[-1].startswith("DROP"):  # (its statements: closed to connections, then dropped)
            with pg_connect(name) as conn, conn.cursor() as cur:
                cur.execute("SELECT last_value, is_called FROM public.planted_calls")
                value, called = cur.fetchone()
                cur.execute("SELECT who, what FROM public.planted_hits")
                seen.append((value if called else 0, sorted(set(cur.fetchall()))))
            conn.close()
        rows = real(server, statements, what)
        if statements[0].startswith("REVOKE"):  # (open to connections now; a superuser plants: trusted, not refused)
            def query(sql, params=None):
                with pg_connect(name) as conn, conn.cursor() as cur:  # (the suite's superuser: SET ROLE low)
                    cur.execute(sql, params)
                    rows = cur.fetchall() if cur.description else []
                conn.close()
                return rows
            query(f"GRANT CREATE ON SCHEMA public TO {low}")
            plant_traps(query, "public", low)
            query(f'ALTER DATABASE "{name}" SET search_path = public, pg_catalog')
        return rows

    monkeypatch.setattr(scratch, "_on_server", on_server)
    return seen


def trap_files(sql_dir, schema: str) -> None:
    """A transactional file, a CONCURRENTLY build, a backfill and a rewrite, each on the trapped path (a plain run's files set
    it; a tenant's path is the runner's, its schema then public; their own SQL names pg_catalog's operators)."""
    path = "SET search_path = public, pg_catalog;\n" if schema == "public" else ""
    add_migration(sql_dir, "0002_tr", path + "CREATE TABLE tr (id int PRIMARY KEY, ref int, note varchar(20));\n"
                  "INSERT INTO tr (id) SELECT g FROM pg_catalog.generate_series(1, 20) g;\n",
                  path + "DROP TABLE tr;\n")
    add_migration(sql_dir, "0003_tr_index", "-- transactional: false\n" + path +
                  "CREATE INDEX CONCURRENTLY tr_note ON tr (note);\n",
                  "-- transactional: false\n" + path + "DROP INDEX CONCURRENTLY tr_note;\n")
    add_migration(sql_dir, "0004_tr_fill", "-- transactional: false\n" + path + "-- backfill: batch\n"
                  "UPDATE tr SET ref = 1 WHERE id OPERATOR(pg_catalog.=) ANY "
                  "(SELECT id FROM tr WHERE ref IS NULL LIMIT 7);\n", path + "UPDATE tr SET ref = NULL;\n")
    add_migration(sql_dir, "0005_tr_types", path + "ALTER TABLE tr ALTER COLUMN ref TYPE bigint;\n"
                  "ALTER TABLE tr ALTER COLUMN note TYPE varchar(40) COLLATE \"C\";\n"
                  "ALTER TABLE tr ADD CONSTRAINT tr_ref CHECK (id IS NOT NULL);\n",
                  path + "ALTER TABLE tr DROP CONSTRAINT tr_ref;\nALTER TABLE tr ALTER COLUMN ref TYPE int;\n"
                  "ALTER TABLE tr ALTER COLUMN note TYPE varchar(20) COLLATE \"default\";\n")


@pytest.mark.parametrize("schema", ["public", "pt"])
def test_no_command_calls_a_planted_operator_or_function(cli, db, pg, sql_dir, low, schema, trapped_scratch):
    """Issue 23, the audit: traps for every operator and function name the runner uses sit in a schema on the path
    ahead of pg_catalog, planted by a low role, in the live database and in every scratch database. No command
    may call one: migrate (plain and --schema), status, plan --impact, sql verify, sql adopt, rollback, mark,
    doctor, the CONCURRENTLY path, a backfill and the rewrite judge."""
    writable_by(db, schema, low)
    if schema != "public":
        db.query(f"ALTER SCHEMA {schema} OWNER TO CURRENT_USER")
    assert psql_file(db, sql_dir / "0001_create_hcm_report_metadata.sql").returncode == 0  # adopted below
    plant_traps(db.query, schema, low)
    db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} SET search_path = {schema}, public, pg_catalog")
    trap_files(sql_dir, schema)
    scratch = pg.scratch_url()
    args = ["--sql-dir", sql_dir, *schema_args(schema)]
    try:
        for command in (["sql", "adopt", "--yes", "--scratch-url", scratch], ["sql", "mark", "0001_create_hcm_report_metadata"],
                        ["plan", "--impact", "--scratch-url", scratch],
                        ["migrate"], ["status"], ["sql", "verify", "--scratch-url", scratch],
                        ["sql", "rollback", "--count", "4"], ["migrate"], ["sql", "rollback"], ["sql", "mark", "0005_tr_types"],
                        ["status"], ["doctor"]):
            if schema != "public" and {"adopt", "0001_create_hcm_report_metadata"} & set(command):
                continue  # (adopt takes a plain database; a tenant's migrate makes 0001 in its own schema)
            result = cli(*command, *args, env=db.db_env())
            if command[:2] == ["sql", "adopt"]:  # the traps are objects of the live schema the history does not make
                assert result.exit_code == 1 and "adopt: no prefix of the history matches the database" in result.stdout
            else:
                assert result.exit_code == 0, (command, result.output[-1500:])
            assert trap_calls(db.query, schema) == 0, (command, db.query(f"SELECT DISTINCT * FROM {schema}.planted_hits"))
            assert all(calls == 0 for calls, _ in trapped_scratch), (command, trapped_scratch)
    finally:
        db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} RESET search_path")
    assert trapped_scratch, "the scratch databases were trapped"
    assert db.query(f"SELECT migration_id FROM {schema}._yoyo_migration ORDER BY 1")[-1] == ("0005_tr_types",)


def test_a_flyway_folder_migrate_calls_no_planted_operator_or_function(cli, db, tmp_path, low):
    """The Flyway history's reads and writes (its own table, checksums, the takeover checks) under the traps."""
    folder = tmp_path / "flyway"
    folder.mkdir()
    path = "SET search_path = public, pg_catalog;\n"
    (folder / "V1__create_fw.sql").write_text(path + "CREATE TABLE fw (id int, note text);\n")
    (folder / "V2__index_fw.sql").write_text(path + "CREATE INDEX CONCURRENTLY fw_note ON fw (note);\n")
    (folder / "R__fw_view.sql").write_text(path + "CREATE OR REPLACE VIEW fw_v AS SELECT id FROM fw;\n")
    writable_by(db, "public", low)
    plant_traps(db.query, "public", low)
    db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} SET search_path = public, pg_catalog")
    try:
        for command in (["migrate"], ["status"], ["migrate"], ["sql", "rollback"]):
            result = cli(*command, "--sql-dir", folder, env=db.db_env())
            assert trap_calls(db.query, "public") == 0, (command, db.query("SELECT DISTINCT * FROM public.planted_hits"))
            if command != ["sql", "rollback"]:  # (no U file: refused, after reading the history)
                assert result.exit_code == 0, (command, result.output)
    finally:
        db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} RESET search_path")
    assert db.query("SELECT version FROM public.flyway_schema_history WHERE success ORDER BY installed_rank") == [
        ("1",), ("2",), (None,)]


FORGER = '"planter\nerror: forged line"'  # a role name with a line break (anyone with CREATEROLE may choose it)


@pytest.fixture
def forger(db):
    db.query(f"CREATE ROLE {FORGER} LOGIN")
    yield FORGER
    db.query(f"DROP OWNED BY {FORGER} CASCADE")
    db.query(f"DROP ROLE {FORGER}")


@pytest.mark.parametrize("how", ["planted table", "schema owner"])
def test_an_owner_with_a_line_break_in_its_name_never_splits_the_refusal(cli, db, sql_dir, forger, how):
    if how == "schema owner":
        db.query(f"CREATE SCHEMA pn AUTHORIZATION {forger}")
    else:
        writable_by(db, "pn", forger)
        plant_table(db, "pn", forger)
    args = ["--sql-dir", sql_dir, "--schema", "pn"]
    for result in (cli("migrate", *args, env=db.db_env()), cli("doctor", *args, env=db.db_env())):
        assert result.exit_code != 0
        assert not any(line.startswith("error: forged") for line in result.output.splitlines()), result.output
        [line] = [line for line in result.output.splitlines() if "owned by role" in line]
        assert "planter\\nerror: forged line" in line, line


@pytest.mark.parametrize("search_path", ["''", "app", "pg_catalog, public"])
def test_a_role_search_path_naming_no_usable_schema_keeps_the_bookkeeping_in_public(cli, db, tmp_path, search_path):
    """attack23k 2: with the role's search_path empty (CVE-2018-1058 hardening) or naming no schema of this database,
    the home schema fell back to the pinned session's current_schema(), pg_catalog: migrate said "run GRANT CREATE ON
    SCHEMA pg_catalog", doctor advised it (a role creating objects every session resolves first). (The file names
    its schema: under such a search_path an unqualified CREATE fails as it would in psql.)"""
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    add_migration(sql_dir, "0001_home", "CREATE TABLE public.t_home (id int);\n")
    db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} SET search_path = {search_path}")
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
        doctor = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    finally:
        db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} RESET search_path")
    assert result.exit_code == 0, result.output
    assert "pg_catalog" not in result.output and "SCHEMA pg_catalog" not in doctor.output, (result.output, doctor.output)
    assert "postgres search_path" in doctor.output, doctor.output  # (warned: test_attack23l_lows)
    assert db.query("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relname = '_yoyo_migration'") == [("public",)]
