"""Settings from AWS Secrets Manager, served by moto's server mode so boto3 makes real HTTP calls."""

import pytest

from conftest import PASSWORD_USER, SPECIAL_PASSWORD, one_error_line


def rds_secret(db, password=None, user=None) -> dict:
    server = db.server
    return {"host": server.host, "port": server.port, "dbname": db.name,
            "username": user or server.user, "password": password or server.password or "unused-Pw-1"}


def test_migrate_with_an_rds_secret(cli, db, aws):
    name = aws("dev/hcm-db", rds_secret(db))
    result = cli("migrate", "--secret-name", name)
    assert result.exit_code == 0, result.output
    assert "hcm_report_metadata" in db.tables()
    config = cli("config", "--secret_name", name)  # the seed's spelling
    assert f"secret {name}" in config.stdout and db.name in config.stdout


def test_secret_from_db_secret_name_with_a_special_password(cli, make_db, aws, password_role, pg):
    if not pg.enforces_passwords:
        pytest.skip("this server does not check passwords (trust authentication)")
    db = make_db(owner=PASSWORD_USER)
    name = aws("dev/hcm-app", rds_secret(db, SPECIAL_PASSWORD, PASSWORD_USER))
    result = cli("status", env={"DB_SECRET_NAME": name})
    assert result.exit_code == 0, result.output
    assert "0 applied, 1 pending" in result.stdout
    assert SPECIAL_PASSWORD not in result.output


@pytest.mark.parametrize("value, message", [
    ("not json at all", "is not JSON"),
    ('["a", "list"]', "is JSON but not an object"),
    ({"host": "h", "port": 5432}, "lacks username, password"),
])
def test_malformed_secrets(cli, aws, value, message):
    name = aws("dev/broken", value)
    line = one_error_line(cli("migrate", "--secret-name", name))
    assert f"AWS secret {name}" in line or f"secret {name}" in line
    assert message in line


def test_secret_not_found(cli, aws):
    line = one_error_line(cli("migrate", "--secret-name", "dev/does-not-exist"))
    assert "AWS secret dev/does-not-exist: not found: check the name and the region" in line


def test_unknown_profile(cli, aws):
    line = one_error_line(cli("migrate", "--secret-name", "x", "--profile_name", "no-such-profile"))
    assert "AWS profile 'no-such-profile' not found" in line


def test_no_credentials(cli, aws, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    line = one_error_line(cli("migrate", "--secret-name", "x"))
    assert "no AWS credentials" in line


def test_no_region(cli, aws, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    line = one_error_line(cli("migrate", "--secret-name", "x"))
    assert "AWS secret x: no AWS region; pass --region or set AWS_REGION" in line


def test_a_secrets_manager_endpoint_that_never_answers_ends_in_one_line(cli, tmp_path):
    """issue 23 #5: boto3's default read timeout (60 s, retried) kept a run waiting for minutes. The wait is
    SECRETS_READ_TIMEOUT's (default 10 s a try): 1 s here, so the test does not wait out the default."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(10)], daemon=True).start()
    env = {"DB_SECRET_NAME": "dev/silent", "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{listener.getsockname()[1]}",
           "SECRETS_READ_TIMEOUT": "1"}
    results = []
    worker = threading.Thread(target=lambda: results.append(cli("config", env=env)), daemon=True)
    worker.start()
    worker.join(90)
    listener.close()
    assert results, "config hung on a silent Secrets Manager endpoint"
    line = one_error_line(results[0])
    assert "AWS secret dev/silent: Secrets Manager did not answer in time" in line, line
    assert held  # it did connect: the read, not the connection, timed out
    assert "1 s a try, SECRETS_READ_TIMEOUT" in line, line


@pytest.mark.parametrize("value", ["0", "ten", "-1", "10s"])
def test_a_secrets_read_timeout_that_is_not_seconds_is_one_line(cli, aws, value):
    aws("dev/db", {"host": "h", "username": "u", "password": "p", "dbname": "d"})
    result = cli("config", env={"DB_SECRET_NAME": "dev/db", "SECRETS_READ_TIMEOUT": value})
    line = one_error_line(result)
    assert f"SECRETS_READ_TIMEOUT (environment): {value!r} is not a number of seconds above 0" in line, line


# --- a secret passed over: never the seed's default password instead (attack23r #7) -------------------------------


@pytest.mark.parametrize("args, environ, dotenv, named", [
    ([], {"DB_SECRET_NAME": "prod/pwonly", "DB_HOST": "127.0.0.1", "DB_PORT": "{port}"}, "",
     "DB_SECRET_NAME (environment)"),
    ([], {"DB_HOST": "127.0.0.1", "DB_PORT": "{port}"}, "DB_SECRET_NAME=prod/pwonly\n", "DB_SECRET_NAME (.env)"),
    (["--secret-name", "prod/pwonly"], {"DB_HOST": "127.0.0.1", "DB_PORT": "{port}"}, "", "--secret-name"),
    (["--secret-name", "prod/pwonly", "--db-host", "127.0.0.1", "--db-port", "{port}"], {}, "", "--secret-name"),
])
def test_a_secret_passed_over_never_sends_the_default_password(cli, workdir, aws, trap, args, environ, dotenv, named):
    """The operator named the secret (holding only a password, as a DBA may store it) and a host: the host wins
    the settings order, and the seed's user/password/database went to it on a note. Refused, nothing sent."""
    aws("prod/pwonly", {"password": "Sm-Secret-7"})
    (workdir / ".env").write_text(dotenv)
    result = cli("status", *[a.format(port=trap.port) for a in args],
                 env={k: v.format(port=trap.port) for k, v in environ.items()})
    line = one_error_line(result)
    assert result.exit_code == 2 and f"{named} names a secret, but it comes after " in line, result.output
    assert "the seed's default password would go to 127.0.0.1; set DB_PASSWORD" in line
    assert trap.connections == 0 and trap.passwords == []


def test_a_secret_passed_over_beside_a_password_of_the_winning_settings_is_noted(cli, workdir, aws, trap):
    aws("prod/pwonly", {"password": "Sm-Secret-7"})
    result = cli("status", env={"DB_SECRET_NAME": "prod/pwonly", "DB_HOST": "127.0.0.1", "DB_PORT": str(trap.port),
                                "DB_PASSWORD": "Env-Pw-9"})
    assert "note: secret prod/pwonly (DB_SECRET_NAME (environment)) ignored" in result.output
    assert trap.passwords == ["Env-Pw-9"]  # the environment's own password with the environment's own host
    assert "Env-Pw-9" not in result.output
