"""The security review's findings, each as an attack: credentials in odd URLs, TLS that must not be
switched off, masking that hides passwords and nothing else, secrets from mounted files."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from conftest import PASSWORD_USER, SPECIAL_PASSWORD, _bin, one_error_line
from migrator import output
from migrator.env import Env
from migrator.errors import MigratorError
from migrator.settings import resolve_mongo
from migrator.targets import MongoOptions
from tls_proxy import make_pki

# --- URLs whose credentials are not URL-encoded -------------------------------------------------


@pytest.mark.parametrize("password", ["Tr0ub4dor#3", "pa/ss9word", "que?ry9word", "sp ace9word", "per%zzent9"])
@pytest.mark.parametrize("command", [["config"], ["status"], ["migrate"]])
def test_an_unencoded_postgres_password_is_refused_without_echoing_any_part(cli, password, command):
    result = cli(*command, env={"DATABASE_URL": f"postgresql://app:{password}@db.internal:5432/hcm"})
    line = one_error_line(result)
    assert result.exit_code == 2
    assert "DATABASE_URL (environment): the user name or password holds characters that must be URL-encoded" in line
    for fragment in (password, password[:5], password[-5:]):
        assert fragment not in result.output


@pytest.mark.parametrize("password", ["S3cret#x9", "S3/cret9", "S3@cret9"])
def test_an_unencoded_mongo_password_is_refused_without_echoing_any_part(cli, password):
    for command in (["config"], ["mongo", "status"]):
        result = cli(*command, env={"MONGO_URL": f"mongodb://admin:{password}@mongo.internal:27017/hcm"})
        if "@" in password[1:-1]:  # user:S3@cret9@host: the last @ ends the userinfo, and "@" must be encoded
            assert "must be URL-encoded" in one_error_line(result)
        else:
            assert "must be URL-encoded" in one_error_line(result)
        for fragment in (password, password[:4], password[-4:]):
            assert fragment not in result.output


def test_an_encoded_password_with_every_special_character_still_works(cli):
    from urllib.parse import quote

    url = f"postgresql://app:{quote(SPECIAL_PASSWORD, safe='')}@db.internal:6543/hcm?application_name=x"
    result = cli("config", env={"DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert "postgresql://app:***@db.internal:6543/hcm" in result.stdout
    assert "db.internal" in result.stdout and "6543" in result.stdout
    for form in (SPECIAL_PASSWORD, quote(SPECIAL_PASSWORD, safe="")):
        assert form not in result.output


# --- masking: passwords in URLs and DSNs of any length, nothing else rewritten --------------------


def test_short_passwords_are_masked_inside_urls_and_dsns():
    output.register_secret("a b")
    output.register_secret("z")
    assert output.mask("cannot reach mongodb://u:a b@h:27017/x") == "cannot reach mongodb://u:***@h:27017/x"
    assert output.mask("postgresql://u:z@h/d and host=h password=z") == "postgresql://u:***@h/d and host=h password=***"
    assert output.mask("jdbc:postgresql://h:5432/db?user=u&password=z&currentSchema=a") == \
        "jdbc:postgresql://h:5432/db?user=u&password=***&currentSchema=a"
    assert output.mask("a zebra and a b c") == "a zebra and a b c"  # free text is left alone


def test_a_known_unencoded_password_is_masked_whole_and_other_urls_stay_intact(cli):
    refused = cli("config", env={"DATABASE_URL": "postgresql://u:Tr0ub4dor#3/x@host/db"})  # registers it, refuses it
    assert refused.exit_code == 2
    assert output.mask("url postgresql://u:Tr0ub4dor#3/x@host/db") == "url postgresql://u:***@host/db"
    assert output.mask('{"u": "mongodb://a:p3@h/x", "v": "x@y"}') == '{"u": "mongodb://a:***@h/x", "v": "x@y"}'
    text = "see https://wiki.example.com:8443/x/page@v2; UPDATE users SET must_change_password = true"
    assert output.mask(text) == text


def test_scrub_hides_a_quoted_password_but_not_words_that_contain_it():
    output.register_secret("postgres")
    output.register_secret("S3cretPw!")
    text = 'relation "postgres_settings" in migrator/postgres.py via postgresql://h/d; value "S3cretPw!"; pw postgres'
    assert output.scrub(text) == 'relation "postgres_settings" in migrator/postgres.py via postgresql://h/d; value "***"; pw ***'


def test_masking_leaves_sql_ids_file_names_and_schemes_alone_with_the_seeds_password(cli, db, sql_dir, make_db):
    (sql_dir / "0002_postgres_notes.sql").write_text(
        "COMMENT ON TABLE hcm_report_metadata IS 'owned by postgres, see postgresql://docs';\n"
        "CREATE TABLE postgres_notes (postgres TEXT DEFAULT 'postgres');\n")
    (sql_dir / "0002_postgres_notes.rollback.sql").write_text("DROP TABLE postgres_notes;\n")
    env = {**db.db_env(), "DB_PASSWORD": "postgres"}
    plan = cli("plan", "--sql-dir", sql_dir, env=env)
    assert plan.exit_code == 0, plan.output
    assert "***" not in plan.stdout.split("\n", 1)[1]  # only the header's URL is masked
    assert "CREATE TABLE postgres_notes (postgres TEXT DEFAULT 'postgres');" in plan.stdout
    assert "-- " + str(sql_dir / "0002_postgres_notes.sql") in plan.stdout
    # plan | psql builds the same schema
    target = make_db()
    piped = subprocess.run([_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target.url],
                           input=plan.stdout, capture_output=True, text=True)
    assert piped.returncode == 0, piped.stderr
    assert target.query("SELECT column_default FROM information_schema.columns WHERE table_name = 'postgres_notes'") \
        == [("'postgres'::text",)]
    status = cli("status", "--json", "--sql-dir", sql_dir, env=env)
    import json

    report = json.loads(status.stdout)
    assert [m["id"] for m in report["migrations"]] == ["0001_create_hcm_report_metadata", "0002_postgres_notes"]
    assert report["migrations"][1]["file"] == str(sql_dir / "0002_postgres_notes.sql")
    assert report["target"].startswith("postgresql://postgres:***@")


# --- NAME_FILE: secrets from mounted files ------------------------------------------------------


def test_db_password_file_carries_a_special_password(cli, make_db, password_role, pg, tmp_path):
    if not pg.enforces_passwords:
        pytest.skip("this server does not check passwords (trust authentication)")
    database = make_db(owner=PASSWORD_USER)
    secret = tmp_path / "db-password"
    secret.write_text(SPECIAL_PASSWORD + "\n")  # a Secret file written with a final newline
    env = {**database.db_env(), "DB_USER": PASSWORD_USER, "DB_PASSWORD_FILE": str(secret)}
    migrated = cli("migrate", env=env)
    assert migrated.exit_code == 0, migrated.output
    assert "hcm_report_metadata" in database.tables()
    config = cli("config", env=env)
    assert "DB_PASSWORD_FILE (environment)" in config.stdout
    for run in (migrated, config):
        assert SPECIAL_PASSWORD not in run.output


def test_a_missing_optional_secret_file_is_said_and_a_directory_is_an_error(cli, tmp_path):
    missing = cli("config", env={"MONGO_URL_FILE": str(tmp_path / "absent" / "url")})
    assert missing.exit_code == 0
    assert f"MONGO_URL_FILE (environment) names {tmp_path / 'absent' / 'url'}, which does not exist" in missing.stdout
    assert "MongoDB: not configured" in missing.stdout
    broken = cli("config", env={"DB_PASSWORD_FILE": str(tmp_path)})
    assert f"DB_PASSWORD_FILE (environment): {tmp_path} is a directory, not a regular file" in one_error_line(broken)


def test_the_variable_wins_over_its_file(tmp_path):
    file = tmp_path / "url"
    file.write_text("mongodb://from-file/x")
    env = Env({"MONGO_URL": "mongodb://from-env/y", "MONGO_URL_FILE": str(file)})
    assert env.get("MONGO_URL") == ("mongodb://from-env/y", "MONGO_URL (environment)")
    assert Env({"MONGO_URL_FILE": str(file)}).get("MONGO_URL") == ("mongodb://from-file/x", "MONGO_URL_FILE (environment)")
    with pytest.raises(MigratorError, match=r"MONGO_URL_FILE \(\.env\): a \.env may not name a file"):
        Env({}, {"MONGO_URL_FILE": str(file)}).get("MONGO_URL")  # (attack23t 4: a .env's file could be any of yours)


# --- PostgreSQL TLS against the real server behind a TLS front ----------------------------------


def _url(pg, db, front, host: str, query: str = "") -> str:
    # hostaddr reaches the front while `host` is the name libpq checks the certificate against
    extra = f"&{query}" if query else ""
    return f"postgresql://{pg.user}@{host}:{front.port}/{db.name}?hostaddr=127.0.0.1{extra}"


def test_ca_bundle_means_verify_full_and_a_good_certificate_passes(cli, pg, db, front, tmp_path):
    pki = make_pki(tmp_path / "pki", ["db.hcm.test"])
    tls = front(pki)
    env = {"DATABASE_URL": _url(pg, db, tls, "db.hcm.test"), "CA_BUNDLE": str(pki.ca)}
    result = cli("migrate", env=env)
    assert result.exit_code == 0, result.output
    assert tls.handshakes >= 1 and "hcm_report_metadata" in db.tables()
    assert f"verify-full with {pki.ca} (CA_BUNDLE (environment))" in cli("config", env=env).stdout


def test_a_certificate_from_another_ca_or_for_another_host_is_refused(cli, pg, db, front, tmp_path):
    pki = make_pki(tmp_path / "pki", ["db.hcm.test"])
    stranger = make_pki(tmp_path / "other-ca", ["db.hcm.test"], ca_name="someone else")
    tls = front(pki)
    wrong_ca = cli("migrate", env={"DATABASE_URL": _url(pg, db, tls, "db.hcm.test"), "CA_BUNDLE": str(stranger.ca)})
    assert "TLS verification failed" in one_error_line(wrong_ca)
    wrong_host = cli("migrate", env={"DATABASE_URL": _url(pg, db, tls, "other.hcm.test"), "CA_BUNDLE": str(pki.ca)})
    line = one_error_line(wrong_host)
    assert "other.hcm.test" in line and "does not match" in line
    assert db.tables() == set()


def _remote_name() -> tuple[str, str]:
    """This machine's own name and address: a host that is not local by name, reached without hostaddr."""
    import socket

    name = socket.gethostname()
    return name, socket.gethostbyname(name)


def test_a_remote_host_without_a_bundle_still_requires_tls_and_says_it_is_unverified(cli, pg, db, front, tmp_path):
    name, address = _remote_name()
    tls = front(make_pki(tmp_path / "pki", ["somewhere.else"]), address)
    result = cli("migrate", env={"DATABASE_URL": f"postgresql://{pg.user}@{name}:{tls.port}/{db.name}"})
    assert result.exit_code == 0, result.output
    assert tls.handshakes >= 1
    assert f"warning: TLS to PostgreSQL at {name} is encrypted but the server is not verified" in result.stderr
    plaintext = front(None, address)
    refused = cli("migrate", env={"DATABASE_URL": f"postgresql://{pg.user}@{name}:{plaintext.port}/{db.name}"})
    assert "SSL" in one_error_line(refused)


@pytest.mark.parametrize("url", ["postgresql://u@localhost/db?hostaddr=192.0.2.7", "postgresql://u@/db?host=db.remote.test"])
def test_hostaddr_and_a_query_host_count_when_deciding_what_is_remote(url):
    from migrator.settings import resolve_postgres
    from migrator.targets import PostgresOptions

    target = resolve_postgres(PostgresOptions(), Env({"DATABASE_URL": url}))
    assert target.params["sslmode"] == "require" and any("not verified" in n for n in target.notes)


@pytest.mark.parametrize("url, message", [
    ("postgresql://u@/db?host=localhost,db.remote.test", "?host= is not one host name"),
    ("postgresql://u@localhost/db?host=db.remote.test", "gives host twice"),
    ("postgresql://u@h:5432/db?port=5433", "gives port twice"),
    ("postgresql://u@h/db?user=other", "gives user twice"),
    ("postgresql://u@h/db?dbname=other", "gives dbname twice"),
    ("postgresql://u:Pw-One-1@h/db?password=Pw-Two-2", "gives password twice"),
])
def test_a_connection_field_given_twice_or_a_host_list_in_the_query_is_refused(cli, url, message):
    result = cli("config", env={"DATABASE_URL": url})
    assert message in one_error_line(result) and result.exit_code == 2
    assert "Pw-One-1" not in result.output and "Pw-Two-2" not in result.output


@pytest.mark.parametrize("key", ["dsn", "service"])
def test_a_url_cannot_swap_the_connection_through_dsn_or_service(cli, key):
    result = cli("config", env={"DATABASE_URL": f"postgresql://u@localhost/db?{key}=host%3Devil.test"})
    assert f"sets {key}=, which would replace the connection" in one_error_line(result)


@pytest.mark.parametrize("host", ["127.0.0.1:5439/postgres?sslmode=disable#", "db.internal/other", "u:pw@db"])
def test_a_host_setting_cannot_carry_a_port_path_or_query(cli, tmp_path, host):
    pki = make_pki(tmp_path / "pki", ["db.hcm.test"])
    result = cli("status", env={"DB_HOST": host, "DB_PASSWORD": "hunter2x", "CA_BUNDLE": str(pki.ca)})
    line = one_error_line(result)
    assert "DB_HOST (environment): not a host name, IP address or socket folder" in line and "hunter2x" not in line


def test_an_ipv6_host_is_bracketed_and_a_broken_one_is_one_line(cli):
    config = cli("config", env={"DB_HOST": "fd00::2", "DB_PASSWORD": "pw"})
    assert "postgresql://postgres:***@[fd00::2]:5432/unifieddevdb" in config.stdout
    broken = cli("config", env={"DATABASE_URL": "postgresql://u:pw@[fd00::2/db"})
    assert "the host is not a host name, IP address or [IPv6 address]" in one_error_line(broken)
    assert broken.exit_code == 2


@pytest.mark.parametrize("url", ["mongodb://app:Sup3rSecret/db", "postgresql://app:Sup3rSecret/db"])
def test_a_url_missing_its_at_sign_does_not_print_the_password(cli, url):
    variable = "MONGO_URL" if url.startswith("mongodb") else "DATABASE_URL"
    result = cli("config", env={variable: url})
    assert result.exit_code == 2 and "Sup3rSecret" not in result.output and "Sup3r" not in result.output
    assert "is the @ after user:password missing" in one_error_line(result)


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require", "verify-ca"])
def test_with_a_bundle_no_url_can_weaken_verification(cli, tmp_path, mode):
    pki = make_pki(tmp_path / "pki", ["db.hcm.test"])
    result = cli("migrate", env={"DATABASE_URL": f"postgresql://u@db.hcm.test/hcm?sslmode={mode}", "CA_BUNDLE": str(pki.ca)})
    assert f"asks for sslmode={mode}, which would not verify the server" in one_error_line(result)
    assert result.exit_code == 2


def test_an_explicit_weak_mode_without_a_bundle_is_honoured_with_a_warning(cli, pg, db, front):
    name, address = _remote_name()
    plaintext = front(None, address)
    result = cli("migrate", env={"DATABASE_URL": f"postgresql://{pg.user}@{name}:{plaintext.port}/{db.name}?sslmode=disable"})
    assert result.exit_code == 0, result.output
    assert "is not required (sslmode=disable" in result.stderr


def test_a_ca_bundle_that_is_not_pem_is_refused(cli, tmp_path):
    bogus = tmp_path / "bundle.pem"
    bogus.write_text("this is not a certificate\n")
    assert "holds no PEM certificate" in one_error_line(cli("config", env={"DB_HOST": "h", "CA_BUNDLE": str(bogus)}))


# --- MongoDB TLS: nothing may switch verification off under a bundle ----------------------------


def _bundle(tmp_path: Path) -> str:
    return str(make_pki(tmp_path / "mongo-pki", ["mongo.hcm.test"]).ca)


@pytest.mark.parametrize("option", ["tlsInsecure=true", "tlsAllowInvalidCertificates=true", "appName=x;tlsInsecure=true",
                                    "tlsAllowInvalidHostnames=true", "ssl=false", "tls=false",
                                    "TLSALLOWINVALIDHOSTNAMES=true"])
def test_with_a_bundle_no_mongo_url_option_turns_checks_off(cli, tmp_path, option):
    env = {"MONGO_URL": f"mongodb://u:Pw-12345@mongo.hcm.test:27017/hcm?{option}", "CA_BUNDLE": _bundle(tmp_path)}
    for command in (["config"], ["mongo", "status"]):
        result = cli(*command, env=env)
        assert result.exit_code == 2
        line = one_error_line(result)
        assert "MONGO_URL (environment)" in line and "Pw-12345" not in result.output


def test_with_a_bundle_no_secret_option_turns_checks_off(cli, aws, tmp_path):
    name = aws("dev/mongo-insecure", {"spring.data.mongodb.uri": "mongodb://u:Pw-12345@mongo.hcm.test/?tlsInsecure=true",
                                      "spring.data.mongodb.database": "hcm"})
    result = cli("mongo", "status", "--secret-name", name, "--ca-bundle", _bundle(tmp_path))
    assert "secret dev/mongo-insecure sets tlsInsecure=true" in one_error_line(result)


def test_config_shows_the_mongo_tls_mode_actually_used(cli, tmp_path):
    bundle = _bundle(tmp_path)
    def tls_line(env):
        out = cli("config", env=env).stdout
        return next(line for line in out.splitlines() if line.strip().startswith("tls") and "Mongo" not in line)
    assert f"verified with {bundle}" in tls_line({"MONGO_URL": "mongodb://h/x", "CA_BUNDLE": bundle})
    assert "off (plaintext)" in tls_line({"MONGO_URL": "mongodb://h/x"})
    assert "verified with the system's CAs" in tls_line({"MONGO_URL": "mongodb://h/x?tls=true"})
    insecure = cli("config", env={"MONGO_URL": "mongodb://h/x?tls=true&tlsInsecure=true"})
    assert "NOT verified (tlsInsecure=true" in insecure.stdout and "warning: MongoDB TLS certificates are not verified" in insecure.stdout


def test_the_bundle_reaches_pymongo_and_mongosh(tmp_path):
    bundle = _bundle(tmp_path)
    target = resolve_mongo(MongoOptions(ca_bundle=bundle), Env({"MONGO_URL": "mongodb://u:p@mongo.hcm.test/hcm"}))
    assert target.client_options()["tls"] is True and target.client_options()["tlsCAFile"] == bundle
    query = dict(parse_qsl(urlsplit(target.shell_uri()).query))
    assert query["tls"] == "true" and query["tlsCAFile"] == bundle


# --- mongosh authenticates as pymongo does ------------------------------------------------------


@pytest.mark.parametrize("url, auth_source", [
    ("mongodb://u:p@h/?tls=true", "admin"),  # no path: pymongo authenticates against admin
    ("mongodb://u:p@h/authdb", "authdb"),  # the path is the auth database
    ("mongodb://u:p@h/authdb?authSource=other", "other"),  # an explicit authSource wins
])
def test_the_shell_uri_keeps_the_auth_database_and_targets_the_patch_database(url, auth_source):
    target = resolve_mongo(MongoOptions(database="hcm"), Env({"MONGO_URL": url}))
    parts = urlsplit(target.shell_uri())
    assert parts.path == "/hcm"
    assert [v for k, v in parse_qsl(parts.query) if k == "authSource"] == [auth_source]


def test_the_shell_uri_keeps_repeated_keys_and_adds_no_auth_source_without_credentials():
    url = "mongodb://h1,h2/?replicaSet=rs0&readPreference=secondaryPreferred&readPreferenceTags=dc:a&readPreferenceTags="
    target = resolve_mongo(MongoOptions(database="hcm"), Env({"MONGO_URL": url}))
    pairs = parse_qsl(urlsplit(target.shell_uri()).query, keep_blank_values=True)
    assert [v for k, v in pairs if k == "readPreferenceTags"] == ["dc:a", ""]
    assert not any(k == "authSource" for k, _ in pairs)


def test_documentdb_can_be_declared_for_a_host_without_the_aws_suffix():
    env = {"MONGO_URL": "mongodb://u:p@docdb-tunnel.internal:27017/hcm", "MONGO_DOCUMENTDB": "true"}
    target = resolve_mongo(MongoOptions(), Env(env))
    assert target.documentdb and target.client_options()["retryWrites"] is False
    assert ("retryWrites", "false") in parse_qsl(urlsplit(target.shell_uri()).query)
    assert not resolve_mongo(MongoOptions(), Env({**env, "MONGO_DOCUMENTDB": "false"})).documentdb


# --- make new: a name is data, never shell or make code ---------------------------------------


@pytest.mark.parametrize("name", ['a"; touch PWNED; echo "b', "x$(shell touch PWNED)", "x`touch PWNED`", "--help"])
def test_make_new_takes_its_name_as_data(tmp_path, name):
    import shutil
    import sys

    from conftest import PROJECT_ROOT

    project = tmp_path / "project"
    project.mkdir()
    for part in ("Makefile", "runner.py", "migrator", "sql"):
        source = PROJECT_ROOT / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, project / part)
    done = subprocess.run(["make", "-s", "new", f"PYTHON={sys.executable}", f"NAME={name}"], cwd=project,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list(project.rglob("PWNED")) and not (Path("/tmp") / "PWNED").exists()
    created = sorted(p.name for p in (project / "sql").glob("0002_*.sql"))
    assert len(created) == 2 and created[0].endswith(".rollback.sql")


def test_a_setting_file_drops_its_bom_and_line_breaks_and_refuses_huge_files(tmp_path):
    file = tmp_path / "password"
    file.write_bytes("\ufeffS3cret pw\r\n".encode())
    assert Env({"DB_PASSWORD_FILE": str(file)}).get("DB_PASSWORD")[0] == "S3cret pw"
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (65 * 1024))
    from migrator.errors import MigratorError

    with pytest.raises(MigratorError, match="is larger than 64 KiB, not a setting"):
        Env({"DB_PASSWORD_FILE": str(huge)}).get("DB_PASSWORD")


@pytest.mark.parametrize("args, env, message", [
    (["migrate", "--lock-timeout", "abc"], {}, "Invalid value for '--lock-timeout': 'abc' is not a number of seconds from 0"),
    (["mongo", "status"], {"MONGO_PATCH_TIMEOUT": "abc"}, "MONGO_PATCH_TIMEOUT (environment): 'abc' is not a number of seconds"),
    (["migrate", "--no-such-option"], {}, "No such option '--no-such-option'."),
    (["no-such-command"], {}, "No such command 'no-such-command'."),
])
def test_usage_errors_are_one_line_with_exit_2(cli, args, env, message):
    result = cli(*args, env=env)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert message in line and "--help" in line and "Usage:" not in result.output


def test_a_documentdb_secret_cannot_smuggle_options_through_its_host(cli, aws):
    name = aws("dev/docdb-host", {"host": "cl.docdb.amazonaws.com/?tls=false&appName=", "username": "app",
                                  "password": "pw123456", "dbname": "hcm"})
    result = cli("config", env={"MONGO_SECRET_NAME": name})
    assert "secret dev/docdb-host key host: not a host name" in one_error_line(result)
    assert "pw123456" not in result.output


def test_a_secret_with_a_password_under_port_never_prints_it(cli, aws):
    name = aws("dev/miskeyed", {"host": "db.internal", "port": "Hunter2Secret", "username": "app", "password": "x"})
    result = cli("config", env={"DB_SECRET_NAME": name})
    assert "secret dev/miskeyed key port: port is not a number" in one_error_line(result)
    assert "Hunter2Secret" not in result.output


# --- a password where the URL parser does not expect it (attack16b 6) ---------------------------------
#
# A password typed into the wrong part of a URL (a `;` list, an `&` without `?`, a second `?`, an
# encoded `=`) used to become part of the database name, the user or a query key, and `config` and
# `doctor` printed it re-encoded (`password%3D...`), past the masking. Such a URL is refused in one
# line that never shows it, from every setting that takes a URL, in every output format.

LEAK = "Sup3r#Secr3t/pw"
ENCODED_LEAK = quote(LEAK, safe="")
MISPLACED_PASSWORDS = [
    f"jdbc:postgresql://127.0.0.1:5491/d1;user=app;password={ENCODED_LEAK}",
    f"jdbc:postgresql://127.0.0.1:5491/d1&user=app&password={ENCODED_LEAK}",
    f"jdbc:postgresql://127.0.0.1:5491/d1?user=app?password={ENCODED_LEAK}",
    f"jdbc:postgresql://127.0.0.1:5491/d1?user=app&password%3D{ENCODED_LEAK}",
    f"jdbc:postgresql://127.0.0.1:5491/d1?user=app&password%3d{ENCODED_LEAK}&ssl=true",
    f"jdbc:postgresql://127.0.0.1:5491/d1?stringtype=unspecified?password={ENCODED_LEAK}",
    f"jdbc:postgresql://127.0.0.1:5491/d1?loglevel=2;password%3D{ENCODED_LEAK}",
    f"jdbc:postgresql://127.0.0.1:5491/d1%3Fpassword%3D{ENCODED_LEAK}",
    f"jdbc:postgresql://127.0.0.1:5491/d1?ApplicationName=x%26password%3D{ENCODED_LEAK}",
    f"postgresql://127.0.0.1:5491/d1;password={ENCODED_LEAK}",
    f"postgresql://127.0.0.1:5491/d1&password={ENCODED_LEAK}",
    f"postgresql://app;password={ENCODED_LEAK}@127.0.0.1:5491/d1",
    f"postgresql://app%3Fpassword%3D{ENCODED_LEAK}@127.0.0.1:5491/d1",
    f"postgresql://127.0.0.1:5491/d1?user=app?password={ENCODED_LEAK}",
    f"postgresql://127.0.0.1:5491/d1?sslmode=require?password={ENCODED_LEAK}",
    f"postgresql://127.0.0.1:5491/d1?passwd={ENCODED_LEAK}",
    f"postgresql://127.0.0.1:5491/d1?application_name=a&pass={ENCODED_LEAK}",
    f"postgresql://127.0.0.1:5491/d1?password={ENCODED_LEAK}?sslmode=disable",
]
COMMANDS = [["config"], ["doctor", "--no-dev-tools"], ["doctor", "--no-dev-tools", "--json"], ["status"],
            ["migrate"], ["plan"]]


def _leaks(text: str) -> list[str]:
    """Every form of the password found in `text`: raw, %-encoded (any case), +-encoded, re-encoded."""
    from urllib.parse import quote_plus

    forms = {LEAK, ENCODED_LEAK, quote_plus(LEAK), quote(ENCODED_LEAK, safe=""), "Secr3t", "Sup3r"}
    return [form for form in forms if form.lower() in text.lower()]


@pytest.mark.parametrize("url", MISPLACED_PASSWORDS)
def test_a_password_out_of_place_in_a_url_is_refused_in_one_line_and_never_printed(cli, tmp_path, url):
    url_file = tmp_path / "url"
    url_file.write_text(url + "\n")
    # No JavaScript patch in MONGO_DIR: doctor then skips `mongosh --version` (~2 s of Node per call, 36 calls a
    # case), which reads nothing of the URL; every command still resolves and refuses the URL as before.
    no_js = {"MONGO_DIR": str(tmp_path)}
    sources = [({"DATABASE_URL": url}, [], "DATABASE_URL"), ({"DB_URL": url}, [], "DB_URL"),
               ({}, ["--database-url", url], "--database-url"),
               ({"DATABASE_URL_FILE": str(url_file)}, [], "DATABASE_URL_FILE"),
               ({"DB_URL_FILE": str(url_file), "SCHEMA_NAME": "a,e", "FLYWAY_PASSWORD": "other"}, [], "DB_URL_FILE")]
    for env, option, origin in sources:
        for command in COMMANDS:
            for flags in ([], ["-v"], ["--log-format", "json"]):
                result = cli(*command, *option, *flags, env={**no_js, **env})
                shown = f"{origin} {command} {flags}: {result.output}"
                assert _leaks(result.output) == [], shown
                assert result.exit_code in (1, 2), shown  # refused (doctor: a FAIL), never run
                assert flags == ["-v"] or "Traceback" not in result.output, shown
                if command == ["config"] and not flags:
                    line = one_error_line(result)
                    assert result.exit_code == 2 and origin in line, shown
                    assert "not shown" in line or "which libpq does not know" in line, shown
                    assert "PostgreSQL:" not in result.stdout


@pytest.mark.parametrize("url", MISPLACED_PASSWORDS[:4])
def test_the_refusal_happens_before_any_connection_and_in_the_resolver(url):
    from migrator.settings import resolve_postgres
    from migrator.targets import PostgresOptions

    with pytest.raises(MigratorError) as err:
        resolve_postgres(PostgresOptions(), Env({"DB_URL": url}))
    assert err.value.exit_code == 2 and _leaks(str(err.value)) == []


@pytest.mark.parametrize("url", [
    "postgresql://u:p@h:5432/db?application_name=a%3Fb",  # a ? inside a value of a harmless parameter
    "postgresql://u:p@h:5432/db?options=-c%20statement_timeout%3D5s",  # libpq's options hold =
    "jdbc:postgresql://h:5432/db?user=u&password=a%3Bb%26c%3Fd%3De",  # a password may hold anything, encoded
    "postgresql://u:a%3Bb%26c%3Fd%3De@h:5432/db",
])
def test_well_formed_urls_with_those_characters_in_their_right_place_still_work(url):
    from migrator.settings import resolve_postgres
    from migrator.targets import PostgresOptions

    target = resolve_postgres(PostgresOptions(), Env({"DATABASE_URL": url}))
    assert target.dbname == "db" and target.user == "u"
    assert "a;b&c?d=e" not in target.display_url and quote("a;b&c?d=e", safe="") not in target.display_url


# --- secrets not called `password` (attack16c 4) --------------------------------------------------------------

OTHER_SECRETS = [
    ({"DATABASE_URL": "postgresql://app:pw1@127.0.0.1:1/h1?sslpassword=Secr3tS1&sslmode=disable"}, "Secr3tS1"),
    ({"DB_URL": "jdbc:postgresql://127.0.0.1:1/h1?user=app&password=pw2&sslpassword=Secr3tS2"}, "Secr3tS2"),
    ({"MONGO_URL": "mongodb://app:pw3@127.0.0.1:1/x?tls=true&tlsCertificateKeyFile=/tmp/none.pem"
                   "&tlsCertificateKeyFilePassword=Secr3tX", "MONGO_DB": "x"}, "Secr3tX"),
    ({"MONGO_URL": "mongodb://app:pw4@127.0.0.1:1/x?proxyHost=localhost&proxyUsername=u&proxyPassword=Secr3tY",
      "MONGO_DB": "x"}, "Secr3tY"),
    ({"MONGO_URL": "mongodb://app@127.0.0.1:1/x?authMechanism=MONGODB-AWS"
                   "&authMechanismProperties=AWS_SESSION_TOKEN:Secr3tH", "MONGO_DB": "x"}, "Secr3tH"),
]


@pytest.mark.parametrize("env, secret", OTHER_SECRETS)
def test_secrets_in_options_not_called_password_are_never_printed(cli, tmp_path, env, secret):
    """libpq's sslpassword; pymongo's tlsCertificateKeyFilePassword, proxyPassword, an AWS session token."""
    # doctor gives up on the unreachable Mongo after 1 s, not 10 (a proxy host is retried until the timeout).
    runs = [("config",), ("-v", "--log-format", "json", "config"),
            ("doctor", "--json", "--no-dev-tools", "--mongo-timeout", "1"),
            ("-v", "doctor", "--no-dev-tools", "--mongo-timeout", "1")]
    for args in runs:  # MONGO_DIR without a .js patch: doctor skips `mongosh --version` (~2 s), unrelated here
        result = cli(*args, env={"DATABASE_URL": "postgresql://app:pw0@127.0.0.1:1/h0", "MONGO_DIR": str(tmp_path), **env})
        assert secret not in result.output, (args, result.output)
        assert secret.lower() not in result.output.lower()
    assert output.mask(f"x?{secret}") == f"x?{secret}", "only values of the secret options are masked"
