"""The settings order of DESIGN.md, row by row, and the credentials that must survive it."""

import re
from urllib.parse import quote, unquote, urlsplit

import pytest

from conftest import PASSWORD_USER, SPECIAL_PASSWORD, one_error_line
from migrator.errors import MigratorError
from migrator.env import Env
from migrator.settings import resolve_postgres
from migrator.targets import PostgresOptions

ENV_URL = "postgresql://envuser:envpw@env-host:6000/envdb"
DB_VARS = {"DB_HOST": "fields-host", "DB_PORT": "6001", "DB_NAME": "fieldsdb", "DB_USER": "fieldsuser", "DB_PASSWORD": "fieldspw"}


def resolve(environ=None, dotenv=None, **options):
    return resolve_postgres(PostgresOptions(**options), Env(environ or {}, dotenv or {}))


def test_option_url_wins_over_everything():
    t = resolve({"DATABASE_URL": ENV_URL, **DB_VARS, "DB_SECRET_NAME": "dev/db"},
                database_url="postgresql://optuser:optpw@opt-host:6002/optdb")
    assert (t.host, t.port, t.dbname, t.user, t.password) == ("opt-host", 6002, "optdb", "optuser", "optpw")
    assert t.sources == {"url": "--database-url"}
    assert any("secret dev/db (DB_SECRET_NAME (environment)) ignored" in line for line in t.notes)


def test_field_options_fill_from_db_vars():
    t = resolve({"DB_PORT": "6001", "DB_PASSWORD": "fieldspw", "DB_HOST": "opt-host"}, host="opt-host", dbname="optdb")
    assert (t.host, t.port, t.dbname, t.user, t.password) == ("opt-host", 6001, "optdb", "postgres", "fieldspw")
    assert t.sources == {"host": "--db-host", "port": "DB_PORT (environment)", "dbname": "--db-name",
                         "user": "default", "password": "DB_PASSWORD (environment)"}


@pytest.mark.parametrize("password", ["DB_PASSWORD", "PGPASSWORD"])
@pytest.mark.parametrize("options", [{"host": "opt-host"}, {"database_url": "postgresql://optuser@opt-host/optdb"}])
def test_an_environment_password_never_goes_to_a_host_only_the_command_line_names(password, options):
    """attack23s 12 (second report): DB_PASSWORD went to --db-host's and --database-url's host (a note at most), while
    PGPASSWORD was refused beside --database-url and replaced by the seed's password beside --db-host. Failed before:
    three of the four resolved without an error."""
    with pytest.raises(MigratorError) as caught:
        resolve({password: "envpw", "DB_HOST": "env-host"}, **options)
    message = str(caught.value)
    assert f"a password from the environment ({password} (environment" in message and "host opt-host is named by " \
        f"--{'db-host' if 'host' in options else 'database-url'} on the command line" in message, message
    assert "envpw" not in message


@pytest.mark.parametrize("password", ["DB_PASSWORD", "PGPASSWORD"])
def test_an_environment_password_never_goes_to_a_command_line_hostaddr(password):
    """attack23u 12: --database-url naming the environment's DB_HOST but `hostaddr=` another address (where libpq
    really connects) got DB_PASSWORD. Failed before: resolved without an error."""
    with pytest.raises(MigratorError) as caught:
        resolve({password: "envpw", "DB_HOST": "env-host"},
                database_url="postgresql://optuser@env-host/optdb?hostaddr=127.0.0.6")
    message = str(caught.value)
    assert f"a password from the environment ({password} (environment" in message and "host env-host (hostaddr " \
        "127.0.0.6) is named by --database-url on the command line" in message, message
    assert "envpw" not in message


@pytest.mark.parametrize("option", ["host", "port", "dbname", "user"])
@pytest.mark.parametrize("where", ["environ", "dotenv"])
def test_a_field_option_with_a_database_url_is_refused(option, where):
    """attack23s 8: --db-name dropped the URL silently (the run went to localhost with the seed's password).
    Failed before: resolved to the defaults, no error."""
    with pytest.raises(MigratorError) as caught:
        resolve(**{where: {"DATABASE_URL": ENV_URL}}, **{option: "6003" if option == "port" else "other"})
    message = str(caught.value)
    assert "cannot be combined with DATABASE_URL" in message and "--database-url" in message, message
    assert "envpw" not in message


def test_database_url_wins_over_db_vars_and_secret():
    t = resolve({"DATABASE_URL": ENV_URL, **DB_VARS, "DB_SECRET_NAME": "dev/db"})
    assert (t.host, t.port, t.dbname, t.user, t.password) == ("env-host", 6000, "envdb", "envuser", "envpw")
    assert t.sources == {"url": "DATABASE_URL (environment)"}


def test_db_vars_win_over_secret_with_seed_defaults_for_the_rest():
    t = resolve({"DB_HOST": "db.internal", "DB_SECRET_NAME": "dev/db", "DB_PASSWORD": "pw"})
    assert (t.host, t.port, t.dbname, t.user, t.password) == ("db.internal", 5432, "unifieddevdb", "postgres", "pw")
    assert t.sources["host"] == "DB_HOST (environment)" and t.sources["port"] == "default"
    assert t.notes and not t.local_dev
    # never the seed's default password in the secret's stead (attack23r #7)
    with pytest.raises(MigratorError, match="DB_SECRET_NAME .environment. names a secret, but it comes after "
                                            "DB_HOST .environment. in the settings order"):
        resolve({"DB_HOST": "db.internal", "DB_SECRET_NAME": "dev/db"})


def test_nothing_configured_means_the_local_development_database():
    t = resolve({"HOME": "/root", "PATH": "/usr/bin"})
    assert t.local_dev
    assert t.host is None and t.password is None


def test_any_single_setting_turns_the_local_database_off():
    for name, value in [("DATABASE_URL", ENV_URL), ("DB_NAME", "x"), ("DB_USER", "x")]:
        assert not resolve({name: value}).local_dev, name
    assert not resolve(port="6000").local_dev
    with pytest.raises(MigratorError, match="no setting names the host"):  # nor a password to localhost
        resolve({"DB_PASSWORD": "x"})


def test_the_real_environment_gives_the_connection_whole_and_dotenv_only_where_it_names_none():
    environ = {"DB_HOST": "from-env"}
    t = resolve(environ, {"DB_HOST": "from-dotenv", "DB_NAME": "dotenvdb"})
    assert (t.host, t.dbname) == ("from-env", "unifieddevdb")  # .env fills no gap of the environment's connection
    assert t.sources["host"] == "DB_HOST (environment)" and t.sources["dbname"] == "default"
    assert any("DB_HOST, DB_NAME (.env) ignored: the environment names the PostgreSQL connection" in n for n in t.notes)
    only_dotenv = resolve({"SCHEMA_NAME": "pb"}, {"DB_HOST": "from-dotenv", "DB_NAME": "dotenvdb"})
    assert (only_dotenv.host, only_dotenv.dbname) == ("from-dotenv", "dotenvdb")
    assert not resolve({}, {"DATABASE_URL": ENV_URL}).local_dev


def test_empty_variables_count_as_unset():
    assert resolve({"DATABASE_URL": "", "DB_HOST": ""}).local_dev


def test_special_password_is_url_encoded_and_comes_back_intact():
    t = resolve({"DB_HOST": "h", "DB_USER": "us@er", "DB_PASSWORD": SPECIAL_PASSWORD})
    parts = urlsplit(t.url)
    assert unquote(parts.password) == SPECIAL_PASSWORD and unquote(parts.username) == "us@er"
    assert parts.hostname == "h" and parts.port == 5432 and parts.path == "/unifieddevdb"
    assert SPECIAL_PASSWORD not in t.display_url and ":***@" in t.display_url


@pytest.mark.parametrize("environ, message", [
    ({"DB_PORT": "54x2"}, "DB_PORT (environment): port '54x2' is not a number"),
    ({"DB_PORT": "70000"}, "port 70000 is out of range"),
    ({"DB_PORT": "\uff15\uff14\uff13\uff12"}, "DB_PORT (environment): port '\uff15\uff14\uff13\uff12' is not a number"),
    ({"DB_PORT": "5_432"}, "DB_PORT (environment): port '5_432' is not a number"),  # (int() took both)
    ({"DATABASE_URL": "postgresql://u:p@h:port/db"}, "DATABASE_URL (environment): the host part is not host[:port]"),
    ({"DATABASE_URL": "postgresql://u:p@h:99999/db"}, "DATABASE_URL (environment): the port is not a number from 1 to 65535"),
    ({"DATABASE_URL": "mysql://u:p@h/db"}, "is not a PostgreSQL URL (scheme 'mysql')"),
    ({"DATABASE_URL": "postgresql://u:p@h:5432/"}, "names no database"),
])
def test_malformed_settings_are_usage_errors_naming_the_setting(environ, message):
    with pytest.raises(MigratorError) as err:
        resolve(environ)
    assert message in str(err.value)
    assert err.value.exit_code == 2
    assert ":p@" not in str(err.value)


def test_ca_bundle_turns_on_verify_full(tmp_path):
    bundle = tmp_path / "rds-combined-ca-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    t = resolve({"DB_HOST": "h"}, ca_bundle=str(bundle))
    assert t.params == {"sslmode": "verify-full", "sslrootcert": str(bundle)}
    assert "sslmode=verify-full" in t.url and f"sslrootcert={bundle}" in t.url
    assert resolve({"DB_HOST": "h", "CA_BUNDLE": str(bundle)}).sources["tls"] == "CA_BUNDLE (environment)"


def test_missing_ca_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(MigratorError) as err:
        resolve({"DB_HOST": "h"}, ca_bundle=str(tmp_path / "nope.pem"))
    assert f"CA bundle {tmp_path / 'nope.pem'} (--ca-bundle) not found" in str(err.value)


# --- through the CLI, against the real server --------------------------------------------


def test_special_password_works_end_to_end(cli, make_db, password_role, pg):
    if not pg.enforces_passwords:
        pytest.skip("this server does not check passwords (trust authentication)")
    db = make_db(owner=PASSWORD_USER)
    env = {**db.db_env(), "DB_USER": PASSWORD_USER, "DB_PASSWORD": SPECIAL_PASSWORD}
    result = cli("migrate", env=env)
    assert result.exit_code == 0, result.output
    assert "hcm_report_metadata" in db.tables()
    via_url = cli("status", env={"DATABASE_URL": pg.url(db.name, PASSWORD_USER, SPECIAL_PASSWORD)})
    assert via_url.exit_code == 0, via_url.output
    assert "1 applied, 0 pending" in via_url.stdout
    for r in (result, via_url):
        assert SPECIAL_PASSWORD not in r.output and "p%40ss" not in r.output


def test_wrong_password_is_one_line(cli, make_db, password_role, pg):
    if not pg.enforces_passwords:
        pytest.skip("this server does not check passwords (trust authentication)")
    db = make_db(owner=PASSWORD_USER)
    result = cli("migrate", env={**db.db_env(), "DB_USER": PASSWORD_USER, "DB_PASSWORD": "wrong-Secret-1"})
    line = one_error_line(result)
    assert f"authentication failed for user {PASSWORD_USER}" in line
    assert db.name in line and "wrong-Secret-1" not in result.output


def test_dotenv_in_the_working_directory_is_read(cli, db, workdir):
    (workdir / ".env").write_text(f"DATABASE_URL={db.url}\n")
    result = cli("migrate")
    assert result.exit_code == 0, result.output
    assert "hcm_report_metadata" in db.tables()
    assert "no database configured" not in result.output


def test_environment_wins_over_dotenv_through_the_cli(cli, db, workdir):
    (workdir / ".env").write_text("DATABASE_URL=postgresql://nobody:x@127.0.0.1:1/nowhere\n")
    result = cli("migrate", env={"DATABASE_URL": db.url})
    assert result.exit_code == 0, result.output


def test_config_names_each_source_and_masks_the_password(cli, workdir):
    (workdir / ".env").write_text("DB_NAME=fromdotenv\nDB_HOST=db.internal\nDB_PASSWORD=Sup3r-secret\n")
    result = cli("config", env={"DB_USER": "app"})  # the environment names part of the connection: it wins whole
    assert result.exit_code == 0, result.output
    assert "note: DB_HOST, DB_NAME, DB_PASSWORD (.env) ignored: the environment names" in result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert lines["host"].split()[1:] == ["localhost", "default"]
    assert lines["user"].split()[1:] == ["app", "DB_USER", "(environment)"]
    result = cli("config", env={})
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert lines["host"].split()[1:] == ["db.internal", "DB_HOST", "(.env)"]
    assert lines["database"].split()[1:] == ["fromdotenv", "DB_NAME", "(.env)"]
    assert lines["port"].split()[1:] == ["5432", "default"]
    assert lines["user"].split()[1:] == ["postgres", "default"]
    assert lines["password"].split()[1:] == ["***", "DB_PASSWORD", "(.env)"]
    assert "postgresql://postgres:***@db.internal:5432/fromdotenv" in result.stdout
    assert "Sup3r-secret" not in result.output


def test_config_with_nothing_configured_names_the_local_database(cli, workdir, tmp_path):
    result = cli("config")
    assert result.exit_code == 0
    assert f"local development database in {tmp_path / 'devdb'}" in result.stdout
    assert not (tmp_path / "devdb").exists()  # config does not start it


@pytest.mark.parametrize("options, environ, expected", [
    ({}, {}, ("300ms", "10min", "5min")),
    ({"lock_timeout": "2s", "budget": "1min"}, {"DB_LOCK_TIMEOUT": "9s", "DB_STATEMENT_TIMEOUT": "1h",
                                                "DB_LOCK_RETRY_BUDGET": "9min"}, ("2s", "1h", "1min")),
    ({}, {"DB_LOCK_TIMEOUT": "750ms", "DB_STATEMENT_TIMEOUT": "0", "DB_LOCK_RETRY_BUDGET": "0"}, ("750ms", "0", "0")),
])
def test_ddl_limits_options_over_environment_over_defaults(options, environ, expected):
    from migrator.limits import resolve_ddl_limits

    limits = resolve_ddl_limits(options.get("lock_timeout"), options.get("statement_timeout"), Env(environ),
                                options.get("budget"))
    assert (limits.lock_timeout, limits.statement_timeout, limits.lock_retry_budget) == expected


def test_a_bad_duration_names_its_setting():
    from migrator.limits import resolve_ddl_limits

    with pytest.raises(MigratorError, match=r"DB_STATEMENT_TIMEOUT \(environment\): 'later' is not a duration"):
        resolve_ddl_limits(None, None, Env({"DB_STATEMENT_TIMEOUT": "later"}))


# --- libpq's connection fields in a URL's query: one reading everywhere (attack16b 7) -------------------


def test_connection_fields_in_the_query_are_the_connections_and_configs():
    t = resolve({"DATABASE_URL": "postgresql://127.0.0.1/d1?port=5491&user=app&password=Qpw-1&sslmode=disable"})
    assert (t.host, t.port, t.dbname, t.user, t.password) == ("127.0.0.1", 5491, "d1", "app", "Qpw-1")
    assert t.params == {"sslmode": "disable"} and t.where == "127.0.0.1:5491/d1"
    assert t.display_url == "postgresql://app:***@127.0.0.1:5491/d1?sslmode=disable"
    socket = resolve({"DB_URL": "jdbc:postgresql:///?host=/run/pg&port=5499&dbname=d2&user=u"})
    assert (socket.host, socket.port, socket.dbname, socket.user) == ("/run/pg", 5499, "d2", "u")
    assert socket.where == "socket /run/pg (port 5499), database d2" and socket.params == {}  # not as host:port
    assert socket.server == "socket /run/pg (port 5499)" and t.server == "127.0.0.1:5491"


def test_a_url_with_user_and_password_in_its_query_logs_in_as_that_user(cli, make_db, password_role, pg, sql_dir):
    if not pg.host.startswith("/"):
        pytest.skip("uses the suite's server's Unix socket")
    db = make_db(owner=password_role)
    url = f"postgresql:///{db.name}?host={pg.host}&port={pg.port}&user={password_role}&password={quote(SPECIAL_PASSWORD, safe='')}"
    config = cli("config", env={"DATABASE_URL": url})
    assert re.search(rf"user\s+{password_role}\s+DATABASE_URL", config.stdout), config.stdout
    assert re.search(rf"host\s+{re.escape(pg.host)}\s", config.stdout) and f":{pg.port}/{db.name}" in config.stdout
    result = cli("migrate", "--sql-dir", sql_dir, env={"DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert db.query("SELECT tableowner FROM pg_tables WHERE tablename = 'hcm_report_metadata'") == [(password_role,)]
    assert SPECIAL_PASSWORD not in result.output + config.output


# --- the platform's settings: Indexed Job counts, currentSchema, credentials from two places (attack16b 14) ---


@pytest.mark.parametrize("environ, message", [
    ({"SCHEMA_COUNT": "3", "SCHEMA_INDEX": ""}, "SCHEMA_COUNT (environment) is set but SCHEMA_INDEX is empty or unset"),
    ({"SCHEMA_COUNT": "3"}, "SCHEMA_COUNT (environment) is set but SCHEMA_INDEX is empty or unset"),
    ({"SCHEMA_COUNT": "3", "SCHEMA_INDEX": " "}, "is not an index of the 3 schemas"),
    ({"SCHEMA_COUNT": "3", "SCHEMA_INDEX": "1.0"}, "is not an index of the 3 schemas"),
    ({"SCHEMA_COUNT": "3", "SCHEMA_INDEX": "-1"}, "is not an index of the 3 schemas"),
    ({"SCHEMA_COUNT": "2", "SCHEMA_INDEX": "0"}, "so that every schema gets a pod"),
    ({"SCHEMA_COUNT": "", "SCHEMA_INDEX": "0"}, "so that every schema gets a pod"),
])
def test_an_indexed_job_without_a_usable_index_never_migrates_every_schema(cli, environ, message):
    env = {"DB_HOST": "h", "SCHEMA_NAME": "a,e,c", **environ}
    result = cli("config", env=env)
    assert result.exit_code == 2 and message in one_error_line(result), result.output
    assert "schemas" not in result.stdout


def test_a_repeated_current_schema_is_refused():
    with pytest.raises(MigratorError) as err:
        resolve({"DB_URL": "jdbc:postgresql://h:5432/d1?currentSchema=a&user=u&currentSchema=e"})
    assert "sets currentSchema 2 times; set it once" in str(err.value) and err.value.exit_code == 2
    one = resolve({"DB_URL": "jdbc:postgresql://h:5432/d1?currentSchema=a&user=u"})
    assert one.schemas == ["a"]
    overridden = resolve({"DB_URL": "jdbc:postgresql://h:5432/d1?currentSchema=a", "SCHEMA_NAME": "b"})
    assert overridden.schemas == ["b"]
    assert any("currentSchema=a" in note and "ignored" in note and "SCHEMA_NAME" in note for note in overridden.notes)


@pytest.mark.parametrize("environ, user_from, password_from", [
    ({"DB_URL": "jdbc:postgresql://h/d", "DB_USER": "app2", "FLYWAY_PASSWORD": "pw"}, "DB_USER", "FLYWAY_PASSWORD"),
    ({"DB_URL": "jdbc:postgresql://h/d", "FLYWAY_USER": "app", "DB_PASSWORD": "pw"}, "FLYWAY_USER", "DB_PASSWORD"),
    ({"DB_URL": "jdbc:postgresql://h/d?user=app", "FLYWAY_PASSWORD": "pw"}, "DB_URL", "FLYWAY_PASSWORD"),
    ({"DB_HOST": "h", "DB_USER": "app2", "FLYWAY_PASSWORD": "pw"}, "DB_USER", "FLYWAY_PASSWORD"),
])
def test_a_user_and_password_from_different_settings_are_noted_not_refused(cli, environ, user_from, password_from):
    result = cli("config", env=environ)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() + result.stdout.splitlines()
             if line.startswith("note:") and "different settings" in line]
    assert len(notes) == 1, result.output
    assert f"user from {user_from}" in notes[0] and f"password from {password_from}" in notes[0]
    assert "pw" not in notes[0].replace("password", "")


@pytest.mark.parametrize("environ", [
    {"DB_URL": "jdbc:postgresql://h/d", "FLYWAY_USER": "app", "FLYWAY_PASSWORD": "pw"},
    {"DB_URL": "jdbc:postgresql://h/d?user=app&password=pw"},
    {"DB_HOST": "h", "DB_USER": "app", "DB_PASSWORD_FILE": "/dev/null", "DB_PASSWORD": "pw"},
    {"DATABASE_URL": "postgresql://app:pw@h/d", "FLYWAY_PASSWORD": "other"},
])
def test_credentials_from_one_place_give_no_note(cli, environ):
    result = cli("config", env=environ)
    assert result.exit_code == 0 and "different settings" not in result.output, result.output


# --- CREATE_SCHEMAS: --create-schemas for DIGIT's chart, which can set variables but not flags (attack16b 9) ---


def test_create_schemas_from_the_environment_creates_a_new_namespaces_schema(cli, db, sql_dir):
    env = {**db.db_env(), "SCHEMA_NAME": "health"}
    refused = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert refused.exit_code == 1 and "schema health does not exist" in refused.output
    config = cli("config", env={**env, "CREATE_SCHEMAS": "true"})
    assert re.search(r"note: CREATE_SCHEMAS \(environment\) is true: `migrate` creates", config.output), config.output
    result = cli("migrate", "--sql-dir", sql_dir, env={**env, "CREATE_SCHEMAS": "true"})
    assert result.exit_code == 0, result.output
    assert db.query("SELECT count(*) FROM health._yoyo_migration") == [(1,)]
    off = cli("migrate", "--sql-dir", sql_dir, env={**env, "SCHEMA_NAME": "other", "CREATE_SCHEMAS": "false"})
    assert off.exit_code == 1 and "schema other does not exist" in off.output
    bad = cli("config", env={**env, "CREATE_SCHEMAS": "maybe"})
    assert bad.exit_code == 2 and "CREATE_SCHEMAS (environment): 'maybe' is not a yes/no value" in one_error_line(bad)
    hyphen = cli("config", env={**env, "SCHEMA_NAME": "health-uat", "CREATE_SCHEMAS": "true"})
    assert hyphen.exit_code == 2 and "'health-uat' is not a tenant schema name" in one_error_line(hyphen)


# --- one source per connection, credentials never cross sources, unreadable secrets (issue 23 #3) ---------


def test_a_dotenv_url_never_receives_the_real_environments_password(cli, db, workdir, sql_dir, trap):
    """The issue's case: .env names another host, the real environment names DB_HOST and DB_PASSWORD."""
    (workdir / ".env").write_text(f"DATABASE_URL=postgresql://app@127.0.0.1:{trap.port}/prod\n")
    env = {**db.db_env()}
    env.setdefault("DB_PASSWORD", "Env-Secret-9")  # a trust-auth suite server ignores it; the trap would not
    result = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 0, result.output
    assert "hcm_report_metadata" in db.tables()  # the environment's database
    assert trap.connections == 0 and trap.passwords == []
    assert "DATABASE_URL (.env) ignored: the environment names the PostgreSQL connection" in result.output


@pytest.mark.parametrize("args, environ, dotenv, password_from, host_from", [
    # an option's host, .env's password (the environment names no connection: .env is the source)
    (["--db-host", "127.0.0.1", "--db-port", "{port}"], {}, "DB_PASSWORD=Dotenv-Secret-9\n",
     "DB_PASSWORD (.env)", "--db-host"),
    (["--database-url", "postgresql://app@127.0.0.1:{port}/prod"], {}, "DB_PASSWORD=Dotenv-Secret-9\n",
     "DB_PASSWORD (.env)", "--database-url"),
    # libpq's own PGPASSWORD (the real environment's) to a host .env names
    ([], {"PGPASSWORD": "Env-Secret-9"}, "DATABASE_URL=postgresql://app@127.0.0.1:{port}/prod\n",
     "PGPASSWORD (environment, read by libpq)", "DATABASE_URL (.env)"),
])
def test_a_password_is_never_sent_to_a_host_another_source_named(cli, workdir, trap, args, environ, dotenv,
                                                                 password_from, host_from):
    (workdir / ".env").write_text(dotenv.format(port=trap.port))
    result = cli("status", *[a.format(port=trap.port) for a in args], env=environ)
    line = one_error_line(result)
    assert result.exit_code == 2 and f"the password from {password_from} would be sent to the host named by " \
        f"{host_from}" in line, line
    assert "set the host and the password in the same place" in line
    assert trap.connections == 0 and trap.passwords == []
    assert "Secret-9" not in result.output


def test_a_host_and_its_own_password_from_dotenv_still_work(cli, workdir, trap):
    """The rule refuses crossings only: .env's host with .env's password goes there (the trap proves it)."""
    (workdir / ".env").write_text(f"DB_HOST=127.0.0.1\nDB_PORT={trap.port}\nDB_PASSWORD=Dotenv-Secret-9\n")
    result = cli("status", env={"SCHEMA_TABLE": "x"})  # a real-environment setting outside the connection
    assert result.exit_code == 1 and trap.passwords == ["Dotenv-Secret-9"], result.output
    assert "Dotenv-Secret-9" not in result.output


def test_the_environments_secret_name_wins_over_dotenvs_connection_for_both_stores():
    from migrator.settings import resolve_mongo
    from migrator.targets import MongoOptions

    with pytest.raises(MigratorError, match=r"AWS secret dev/db"):
        resolve({"DB_SECRET_NAME": "dev/db"}, {"DATABASE_URL": "postgresql://app:pw@other-host/prod"})
    env = Env({"MONGO_SECRET_NAME": "dev/mongo"}, {"MONGO_URL": "mongodb://app:pw@other-host/prod"})
    with pytest.raises(MigratorError, match=r"AWS secret dev/mongo"):
        resolve_mongo(MongoOptions(), env)
    assert any("MONGO_URL (.env) ignored" in note for note in env.take_notes())


def _fifo(tmp_path):
    import os

    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text(""), "is empty; put the value in it, or unset DB_PASSWORD_FILE"),
    (lambda p: p.write_text("\n"), "is empty"),
    (lambda p: p.write_bytes(b"pw\0rest"), "holds a NUL byte"),
    (lambda p: p.write_bytes("S3cret-pw".encode("utf-16")), "is UTF-16 text; save it as UTF-8"),
    (lambda p: p.write_bytes(b"\xff\xfepw"[2:] + b"\xe9t\xe9"), "is not UTF-8 text"),
    (lambda p: p.mkdir(), "is a directory, not a regular file"),
    (None, "is a FIFO (named pipe), not a regular file"),
    (lambda p: None, "does not exist; mount the Secret there or fix the path"),
])
def test_an_empty_or_unreadable_password_file_is_one_line_never_the_default_password(cli, tmp_path, make, message):
    import threading

    path = _fifo(tmp_path) if make is None else tmp_path / "password"
    if make is not None:
        make(path)
    results = []
    runner = threading.Thread(target=lambda: results.append(
        cli("config", env={"DB_HOST": "db.internal", "DB_PASSWORD_FILE": str(path)})), daemon=True)
    runner.start()
    runner.join(60)  # a FIFO opened for reading would block here for ever
    assert results, "config hung"
    line = one_error_line(results[0])
    assert results[0].exit_code == 2 and f"DB_PASSWORD_FILE (environment): {path} {message}" in line, line


@pytest.mark.parametrize("content, message", [
    ("DB_HOST=db.internal\nDB_PASSWORD=\"Open-quote\n".encode(), "DB_PASSWORD (.env line 2): the line cannot be parsed"),
    ("DB_HOST=db.internal\nexport 'DB_PASSWORD' = \"Open-quote\n".encode(), "DB_PASSWORD (.env line 2): the line cannot be parsed"),
    ("DB_HOST=db.internal\nDB_PASSWORD=S3cret\n".encode("utf-16"), ".env is UTF-16 text; save it as UTF-8"),
    (b"DB_HOST=db.internal\nDB_PASSWORD=S\0cret\n", ".env holds a NUL byte"),
])
def test_an_unreadable_dotenv_password_is_one_line_never_the_default_password(cli, workdir, content, message):
    (workdir / ".env").write_bytes(content)
    result = cli("config")
    line = one_error_line(result)
    assert result.exit_code == 2 and message in line, line
    assert "postgres:***@" not in result.output


def test_a_broken_dotenv_line_for_a_setting_the_environment_gives_is_not_in_the_way(cli, workdir):
    (workdir / ".env").write_text("DB_PASSWORD=\"Open-quote\nthis line is not a setting\n")
    result = cli("config", env={"DB_HOST": "db.internal", "DB_PASSWORD": "Env-pw-1"})
    assert result.exit_code == 0, result.output


def test_dotenv_expands_no_variable_of_the_real_environment(cli, workdir):
    (workdir / ".env").write_text("DATABASE_URL=postgresql://app:${PGPASSWORD}@other-host/prod\n")
    result = cli("config", env={"PGPASSWORD": "Env-Secret-9"})
    assert result.exit_code == 2, result.output  # taken literally: an unencoded $, { in the password
    assert "Env-Secret-9" not in result.output


# --- masking hides the password where it is one, and nothing else (issue 23 #5) -----------------------------


def test_a_user_named_like_its_password_stays_readable_in_the_servers_message(cli, make_db, password_role, pg):
    from migrator import output

    output.register_secret(password_role)
    assert output.scrub(f'FATAL: password authentication failed for user "{password_role}"') == \
        f'FATAL: password authentication failed for user "{password_role}"'
    assert output.scrub(f"password was {password_role} here") == "password was *** here"
    if not pg.enforces_passwords:
        pytest.skip("this server does not check passwords (trust authentication)")
    db = make_db(owner=password_role)
    result = cli("-v", "status", env={**db.db_env(), "DB_USER": password_role, "DB_PASSWORD": password_role})
    assert result.exit_code == 1 and f'for user "{password_role}"' in result.output, result.output
    assert 'user "***"' not in result.output


def test_dropped_jdbc_parameters_are_named_never_their_values():
    t = resolve({"DB_URL": "jdbc:postgresql://h:5432/d?user=u&sslfactoryarg=Factory-Secret-7&stringtype=unspecified"})
    (note,) = [n for n in t.notes if "JDBC-only" in n]
    assert "sslfactoryarg, stringtype not used by libpq" in note and "Factory-Secret-7" not in note


@pytest.mark.parametrize("insecure", [None, "true", "yes", "Unverified "])
def test_an_optional_ca_bundle_that_is_absent_needs_the_insecure_setting_spelled_out(tmp_path, insecure):
    environ = {"DB_HOST": "db.internal", "CA_BUNDLE": str(tmp_path / "absent.pem"), "CA_BUNDLE_OPTIONAL": "true"}
    if insecure:
        environ["DB_TLS_INSECURE"] = insecure
    with pytest.raises(MigratorError) as err:
        resolve(environ)
    assert "CA_BUNDLE_OPTIONAL alone does not allow unverified TLS" in str(err.value) and err.value.exit_code == 2
    t = resolve({**environ, "DB_TLS_INSECURE": "unverified"})
    assert t.params["sslmode"] == "require" and any(n.startswith("warning: INSECURE TLS") for n in t.notes)
    with pytest.raises(MigratorError, match=r"DB_TLS_INSECURE in .env does not count"):  # a repository's .env
        resolve({k: v for k, v in environ.items() if k != "DB_TLS_INSECURE"}, {"DB_TLS_INSECURE": "unverified"})


# --- timeouts on every network read (issue 23 #5) -----------------------------------------------------------


def _in_thread(call, limit: float = 120):
    """call()'s result; None when it has not returned within `limit` (a hang, where a timeout must end it)."""
    import threading

    results = []
    worker = threading.Thread(target=lambda: results.append(call()), daemon=True)
    worker.start()
    worker.join(limit)
    return results[0] if results else None


@pytest.mark.parametrize("command", ["status", "migrate"])  # migrate: its bookkeeping statements, before any file
def test_a_command_through_a_proxy_that_goes_silent_after_login_ends_in_one_line(cli, db, pg, sql_dir, command):
    from pg_wire import SilentProxy

    if not pg.host.startswith("/"):
        pytest.skip("the proxy relays to the suite's own server's Unix socket")
    proxy = SilentProxy(pg.host, pg.port)
    try:
        env = {**db.db_env(), "DB_HOST": "127.0.0.1", "DB_PORT": str(proxy.port), "DB_READ_TIMEOUT": "2"}
        result = _in_thread(lambda: cli(command, "--sql-dir", sql_dir, env=env), limit=60)
    finally:
        proxy.close()
    assert result is not None, f"{command} hung behind the silent proxy"
    assert proxy.silenced >= 1  # it did log in, then got no answer
    line = one_error_line(result)
    assert f"PostgreSQL at 127.0.0.1:{proxy.port}/{db.name}: no answer within 2 s" in line, line


@pytest.mark.parametrize("value", ["nan", "-5", "1e9", "soon"])
def test_a_read_timeout_that_is_not_a_number_of_seconds_is_refused(value):
    with pytest.raises(MigratorError, match=r"DB_READ_TIMEOUT \(environment\): .* is not a number of seconds"):
        resolve({"DB_HOST": "h", "DB_READ_TIMEOUT": value})
    assert resolve({"DB_HOST": "h"}).read_timeout == 60 and resolve({"DB_HOST": "h", "DB_READ_TIMEOUT": "0"}).read_timeout == 0


def test_config_names_the_file_a_credential_came_from_never_its_content(cli, tmp_path):
    password, user = tmp_path / "password", tmp_path / "username"
    password.write_text("File-Secret-3\n")
    user.write_text("app\n")
    result = cli("config", env={"DB_HOST": "db.internal", "DB_PASSWORD_FILE": str(password), "DB_USER_FILE": str(user)})
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert lines["password"].split()[1:] == ["***", "DB_PASSWORD_FILE", "(environment):", "file", str(password)]
    assert lines["user"].split()[1:] == ["app", "DB_USER_FILE", "(environment):", "file", str(user)]
    assert lines["host"].split()[1:] == ["db.internal", "DB_HOST", "(environment)"]
    assert "File-Secret-3" not in result.output


def test_an_environment_password_without_a_host_is_not_sent_anywhere_when_dotenv_names_the_host(cli, workdir, trap):
    (workdir / ".env").write_text(f"DATABASE_URL=postgresql://app@127.0.0.1:{trap.port}/prod\n")
    result = cli("status", env={"DB_PASSWORD": "Env-Secret-9"})
    line = one_error_line(result)
    assert "DB_PASSWORD (environment) names a password but the environment names no host, while DATABASE_URL " \
        "(.env) names one" in line, line
    assert trap.connections == 0 and "Env-Secret-9" not in result.output


@pytest.mark.parametrize("pgpass, query", [
    ("db.internal.example:{port}:prod:app:REAL-SECRET\n", "?hostaddr=127.0.0.1"),  # the host's line, another address
    ("*:*:*:app:REAL-SECRET\n", ""),  # a wildcard line matches any host .env names
])
def test_a_dotenv_host_never_gets_the_invokers_password_file(cli, workdir, trap, tmp_path, pgpass, query):
    """libpq's password file is the invoker's (an environment-sourced password): a host that .env chose
    must not receive it (the review's repro: hostaddr sent the db.internal line to a listener of .env's choosing)."""
    passfile = tmp_path / "pgpass"
    passfile.write_text(pgpass.format(port=trap.port))
    passfile.chmod(0o600)
    host = "db.internal.example" if query else "127.0.0.1"
    (workdir / ".env").write_text(f"DATABASE_URL=postgresql://app@{host}:{trap.port}/prod{query}\n")
    result = cli("status", env={"PGPASSFILE": str(passfile)})
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert trap.passwords == [], result.output


def test_a_passfile_in_a_dotenv_url_is_refused(cli, workdir, trap, tmp_path):
    passfile = tmp_path / "pgpass"
    passfile.write_text("*:*:*:*:REAL-SECRET\n")
    passfile.chmod(0o600)
    (workdir / ".env").write_text(f"DATABASE_URL=postgresql://app@127.0.0.1:{trap.port}/prod?passfile={passfile}\n")
    result = cli("status")
    line = one_error_line(result)
    assert result.exit_code == 2 and "DATABASE_URL (.env) names passfile=" in line, line
    assert trap.passwords == [] and trap.connections == 0


@pytest.mark.parametrize("environ, dotenv, origin", [
    ({"DB_PASSWORD": ""}, "", "DB_PASSWORD (environment)"),
    ({}, "DB_PASSWORD=\n", "DB_PASSWORD (.env)"),
    ({}, "DB_PASSWORD\n", "DB_PASSWORD (.env)"),
])
def test_an_empty_db_password_is_an_error_not_the_default_password(cli, workdir, trap, environ, dotenv, origin):
    """The review's repro: `DB_HOST=... DB_PASSWORD= status` sent the seed's `postgres` to that host."""
    where = {"DB_HOST": "127.0.0.1", "DB_PORT": str(trap.port)}
    if dotenv:
        (workdir / ".env").write_text("".join(f"{k}={v}\n" for k, v in where.items()) + dotenv)
    result = cli("status", env={**(where if not dotenv else {}), **environ})
    line = one_error_line(result)
    assert result.exit_code == 2 and f"{origin} is set but empty" in line, line
    assert trap.passwords == [] and trap.connections == 0


def test_the_default_password_to_a_remote_host_is_said(cli):
    result = cli("config", env={"DB_HOST": "db.example.internal"})
    assert "note: no password set (DB_PASSWORD): the seed's default password is used for host db.example.internal" \
        in result.output, result.output


@pytest.mark.parametrize("variables, url_host", [
    ({"PGHOSTADDR": "127.0.0.1"}, "127.0.0.3:{port}"),  # the address libpq dials instead of the URL's host
    ({"PGHOST": "127.0.0.1", "PGPORT": "{port}"}, ""),  # a URL without a host: libpq's PGHOST would fill it
    ({"PGSERVICE": "evil", "PGSERVICEFILE": "{service_file}"}, "127.0.0.3:{port}"),
])
def test_libpq_routing_variables_never_take_the_password_elsewhere(cli, workdir, trap, variables, url_host):
    """libpq reads PGHOST, PGHOSTADDR, PGPORT and PGSERVICE itself: left in place, they sent the URL's password
    to a host no setting of the runner named, while every message named the URL's host (attack23b 1)."""
    service_file = workdir / "pg_service.conf"
    service_file.write_text(f"[evil]\nhostaddr=127.0.0.1\nport={trap.port}\n")
    fill = {"port": trap.port, "service_file": service_file}
    env = {name: value.format(**fill) for name, value in variables.items()}
    env["DATABASE_URL"] = f"postgresql://app:Url-Secret-9@{url_host.format(**fill)}/prod"
    result = cli("status", env=env)
    assert trap.passwords == [] and trap.connections == 0, result.output
    assert result.exit_code != 0 and "Url-Secret-9" not in result.output
    assert f"{sorted(variables)[-1]} ignored" in result.output, result.output


@pytest.mark.parametrize("host, local", [("127.db.evil.example", False), ("127.0.0.1", True), ("127.8.9.10", True),
                                          ("::1", True), ("localhost", True), ("db.example.com", False)])
def test_only_loopback_addresses_count_as_a_local_server(host, local):
    """A host name that merely starts with 127. is a remote host: libpq's default TLS (prefer, or PGSSLMODE) would
    let the password travel in clear to it (attack23c 2)."""
    from migrator import tls

    mode, _ = tls.postgres_tls({}, host, None, None, None)
    assert (mode == "libpq default (local server)") is local, mode


def test_a_password_whose_source_names_no_host_is_sent_nowhere(cli, trap):
    """Only DB_PASSWORD and DB_PORT set: the password went to localhost, a host no setting named (attack23e 3)."""
    result = cli("status", env={"DB_PASSWORD": "Env-Secret-9", "DB_PORT": str(trap.port)})
    line = one_error_line(result)
    assert "DB_PASSWORD (environment) names a password but no setting names the host" in line, line
    assert "DB_HOST=localhost" in line
    assert trap.connections == 0 and trap.passwords == [] and "Env-Secret-9" not in result.output
    # named explicitly, localhost is fine; nothing configured stays the local development database
    assert resolve({"DB_HOST": "localhost", "DB_PASSWORD": "pw"}).host == "localhost"
    assert resolve({}).local_dev and resolve({"DB_PORT": "6000"}).password == "postgres"


@pytest.mark.parametrize("environ", [{"FLYWAY_USER": "app", "FLYWAY_PASSWORD": "Platform-Secret-1"},
                                     {"FLYWAY_PASSWORD": "Platform-Secret-1"}])
def test_platform_credentials_without_db_url_are_refused_not_ignored(environ):
    """They were silently ignored and the local development database used instead (attack23e 4)."""
    with pytest.raises(MigratorError, match=r"FLYWAY_.*\(environment\) set but no DB_URL .* names the server") as e:
        resolve(environ)
    assert "Platform-Secret-1" not in str(e.value)


def test_outside_text_shown_escapes_what_reorders_or_hides_characters():
    """attack 23e (low): a drift line's name with U+200B (zero width) or U+202E (right-to-left override) read as
    another name; visible() escapes them as it does line breaks and terminal controls."""
    from migrator.output import visible

    hidden = "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff\u061c"
    assert visible(f"t7.hcm_report{hidden}") == "t7.hcm_report" + "".join(ascii(c)[1:-1] for c in hidden)
    assert visible("t7.caf\u00e9 \u0430") == "t7.caf\u00e9 \u0430"  # (letters stay letters)


@pytest.mark.parametrize("mode", [[], ["-v"], ["--log-format", "json"]])
@pytest.mark.parametrize("command", ["status", "doctor"])
def test_a_password_put_in_db_port_is_never_quoted_back(cli, command, mode):
    """A mis-keyed secret (the password in DB_PORT) is refused in one line that does not show it (attack 23g)."""
    result = cli(*mode, command, env={"DB_HOST": "db.example", "DB_PORT": "Sekr3tG", "DB_PASSWORD": "Sekr3tG"})
    assert result.exit_code != 0
    assert "DB_PORT (environment): port" in result.output, result.output
    assert "Sekr3tG" not in result.output, result.output


@pytest.mark.parametrize("environ", [
    {"DATABASE_URL": "postgresql://app:Zq7xK9wPv@db.example/app", "DB_LOCK_TIMEOUT": "Zq7xK9wPv"},
    {"DATABASE_URL": "postgresql://app:Zq7xK9wPv@db.example/app", "DB_STATEMENT_TIMEOUT": "Zq7xK9wPv"},
    {"DB_URL": "jdbc:postgresql://db.example/app?user=app&password=Zq7xK9wPv", "FLYWAY_USER": "app",
     "DB_LOCK_TIMEOUT": "Zq7xK9wPv"},
    {"DB_HOST": "db.example", "MONGO_URL": "mongodb://m:Zq7xK9wPv@mongo.example/hcm", "DB_LOCK_TIMEOUT": "Zq7xK9wPv"},
    {"DB_HOST": "db.example", "DB_PASSWORD": "Zq7xK9wPv", "DB_LOCK_TIMEOUT": " Zq7xK9wPv "},
])
def test_every_password_the_run_knows_is_never_quoted_back(cli, environ, tmp_path):
    """attack23h mask_sweep: only DB_PASSWORD, FLYWAY_PASSWORD and PGPASSWORD were known before the settings were
    parsed, and only an exact quoted value was masked: a URL's password in another setting was quoted back."""
    result = cli("migrate", "--sql-dir", str(tmp_path), env=environ)
    assert result.exit_code != 0
    assert "TIMEOUT (environment)" in result.output, result.output
    assert "Zq7xK9wPv" not in result.output, result.output


def test_a_password_in_mongo_patch_timeout_is_named_by_its_variable_and_never_quoted_back(cli, tmp_path):
    """attack23h: click's validation quoted the value back (nothing registered yet) and named --patch-timeout."""
    result = cli("mongo", "apply", "--mongo-dir", str(tmp_path),
                 env={"DB_PASSWORD": "Zq7xK9wPv", "MONGO_PATCH_TIMEOUT": "Zq7xK9wPv"})
    assert result.exit_code != 0
    assert "MONGO_PATCH_TIMEOUT (environment): " in result.output, result.output
    assert "Zq7xK9wPv" not in result.output, result.output


def test_a_password_file_password_put_in_db_port_is_never_quoted_back(cli, tmp_path):
    """attack23h mask_sweep2: PGPASSFILE's passwords were not known before the settings were parsed."""
    passfile = tmp_path / "pgpass"
    passfile.write_text("# a comment\ndb.example:5432:*:app:Pw9\\:xQ7\n")
    passfile.chmod(0o600)
    result = cli("status", env={"DB_HOST": "db.example", "DB_PORT": "Pw9:xQ7", "PGPASSFILE": str(passfile)})
    assert result.exit_code != 0
    assert "DB_PORT (environment): port" in result.output, result.output
    assert "xQ7" not in result.output, result.output


@pytest.mark.parametrize("where", ["outside", "beside", ".git/config"])
@pytest.mark.parametrize("variable", ["DB_PASSWORD_FILE", "DB_USER_FILE", "DB_NAME_FILE"])
def test_a_dotenv_never_sends_a_file_it_names_to_a_host(cli, workdir, tmp_path, sql_dir, trap, variable, where):
    """attack23s 7 / attack23t 4 (HIGH): a .env naming its own host and a NAME_FILE at any of the invoker's files sent
    that file's content to the host: ~/.aws/credentials, and inside the .env's own folder too (CI's token in
    .git/config, .npmrc). A .env's NAME_FILE used as a setting is refused in one line, nothing sent."""
    private = {"outside": tmp_path / "credentials", "beside": workdir / ".npmrc",
               ".git/config": workdir / ".git" / "config"}[where]
    private.parent.mkdir(exist_ok=True)
    private.write_text("extraheader = AUTHORIZATION: basic Priv4te-Key-7\n")
    named = private if where == "outside" else private.relative_to(workdir)
    password = "" if variable == "DB_PASSWORD_FILE" else "DB_PASSWORD=x\n"
    (workdir / ".env").write_text(f"DB_HOST=127.0.0.1\nDB_PORT={trap.port}\n{password}{variable}={named}\n")
    result = cli("migrate", "--sql-dir", sql_dir)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert f"{variable} (.env): a .env may not name a file for a setting (a .env from elsewhere could send any of " \
           f"your files to the host it names); write the value itself in .env, or set {variable} in the real " \
           "environment" in line, line
    assert trap.connections == 0 and "Priv4te" not in result.output
