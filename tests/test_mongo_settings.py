"""Mongo connection settings and every way they can fail: one line, non-zero exit, no password."""

import socket
import time

import pytest

from conftest import one_error_line
from migrator.errors import MigratorError
from migrator.env import Env
from migrator.settings import resolve_mongo
from migrator.targets import MongoOptions


def resolve(environ=None, **options):
    return resolve_mongo(MongoOptions(**options), Env(environ or {}))


def test_nothing_configured_means_no_mongo():
    assert resolve({"DB_HOST": "x"}) is None


def test_url_and_database_with_their_sources():
    t = resolve({"MONGO_URL": "mongodb://app:Pw-1@h1:27017,h2:27017/?replicaSet=rs0", "MONGO_DB": "hcm"})
    assert (t.database, t.hosts, t.where) == ("hcm", "h1:27017,h2:27017", "h1:27017,h2:27017/hcm")
    assert t.sources == {"url": "MONGO_URL (environment)", "database": "MONGO_DB (environment)"}
    assert t.display_uri == "mongodb://app:***@h1:27017,h2:27017/?replicaSet=rs0"
    assert "retryWrites" not in t.client_options()
    assert t.client_options()["serverSelectionTimeoutMS"] == 10000


def test_options_win_and_the_database_can_come_from_the_url_path():
    t = resolve({"MONGO_URL": "mongodb://env-host/envdb"}, url="mongodb://opt-host/optdb")
    assert (t.hosts, t.database, t.sources["database"]) == ("opt-host", "optdb", "--mongo-url (path)")
    assert resolve({"MONGO_URL": "mongodb://h/x", "MONGO_DB": "y"}, database="z").database == "z"


def test_documentdb_gets_retry_writes_off_and_tls_with_the_ca_bundle(tmp_path):
    bundle = tmp_path / "rds-combined-ca-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    t = resolve({"MONGO_URL": "mongodb://u:p@hcm.cluster-abc.ap-south-1.docdb.amazonaws.com:27017/hcm"}, ca_bundle=str(bundle))
    assert t.documentdb
    options = t.client_options()
    assert options["retryWrites"] is False and options["tls"] is True and options["tlsCAFile"] == str(bundle)
    assert "retryWrites=false" in t.shell_uri() and f"tlsCAFile={bundle}" in t.shell_uri()


@pytest.mark.parametrize("environ, message", [
    ({"MONGO_URL": "mongodb://h:27017"}, "no MongoDB database named: set MONGO_DB"),
    ({"MONGO_URL": "postgresql://h/db"}, "MONGO_URL (environment) is not a MongoDB URL"),
    ({"MONGO_URL": "mongodb:///db"}, "MONGO_URL (environment) names no host"),
])
def test_bad_settings(environ, message):
    with pytest.raises(MigratorError) as err:
        resolve(environ)
    assert message in str(err.value) and err.value.exit_code == 2


def test_missing_ca_bundle_is_one_line(cli, tmp_path):
    result = cli("mongo", "status", "--ca_bundle", tmp_path / "rds-combined-ca-bundle.pem",
                 env={"MONGO_URL": "mongodb://h/x"})
    assert result.exit_code == 2
    assert f"CA bundle {tmp_path / 'rds-combined-ca-bundle.pem'} (--ca-bundle) not found" in one_error_line(result)


def test_an_unreachable_server_fails_quickly_naming_host_and_port(cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = cli("mongo", "status", "--mongo-timeout", "1",
                 env={"MONGO_URL": f"mongodb://app:Unreach-pw-3@127.0.0.1:{port}/hcm"})
    assert time.monotonic() - started < 10
    line = one_error_line(result)
    assert f"cannot reach MongoDB at 127.0.0.1:{port} within 1 s" in line
    assert "Unreach-pw-3" not in result.output


# --- secrets (moto) ------------------------------------------------------------------------


def test_seed_secret_layout(cli, aws, mongo):
    name = aws("dev/ht-api", {"spring.data.mongodb.uri": mongo.url, "spring.data.mongodb.database": mongo.name})
    result = cli("mongo", "status", "--secret_name", name)  # the seed's spelling
    assert result.exit_code == 0, result.output
    assert f"MongoDB {mongo.url} ({mongo.name})" in result.stdout
    assert "never applied" in result.stdout


def test_documentdb_secret_layout(cli, aws, mock_mongo):
    mongo = mock_mongo  # the secret's host and password: mongomock serves mongo.test and ignores credentials
    secret = {"host": "mongo.test", "port": 27017, "username": "app", "password": "Doc-Db-pw-4",
              "dbname": mongo.name, "ssl": False}
    name = aws("dev/docdb", secret)
    refused = one_error_line(cli("config", "--mongo-secret-name", name))
    assert "says ssl=False: DocumentDB without TLS sends the password in clear" in refused
    assert "MONGO_ALLOW_PLAINTEXT=true" in refused and "Doc-Db-pw-4" not in refused
    config = cli("config", "--mongo-secret-name", name, env={"MONGO_ALLOW_PLAINTEXT": "true"})
    assert config.exit_code == 0, config.output
    assert "mongodb://app:***@mongo.test:27017/?retryWrites=false" in config.stdout
    assert "retryWrites=false (DocumentDB)" in config.stdout
    status = cli("mongo", "status", "--secret-name", name, env={"MONGO_ALLOW_PLAINTEXT": "true"})
    assert status.exit_code == 0, status.output
    for run in (config, status):
        assert "Doc-Db-pw-4" not in run.output


@pytest.mark.parametrize("value, message", [
    ("{not json", "is not JSON"),
    ({"spring.data.mongodb.database": "x"}, "has neither spring.data.mongodb.uri nor the DocumentDB keys"),
    ({"host": "h", "username": "u"}, "(missing password)"),
])
def test_malformed_mongo_secrets(cli, aws, value, message):
    name = aws("dev/bad-mongo", value)
    assert message in one_error_line(cli("mongo", "status", "--secret-name", name))


def test_mongo_secret_not_found(cli, aws):
    line = one_error_line(cli("mongo", "status", "--secret-name", "dev/missing"))
    assert "AWS secret dev/missing: not found" in line


def test_every_pymongo_wait_is_bounded_and_a_silent_server_ends_in_one_line(cli):
    """issue 23 #5: socketTimeoutMS too (an operation a server stops answering), never below a patch's limit."""
    from migrator.targets import MONGO_SOCKET_TIMEOUT_MS, MongoTarget

    options = MongoTarget("mongodb://h/x", "x", timeout=3).client_options()
    assert (options["serverSelectionTimeoutMS"], options["connectTimeoutMS"]) == (3000, 3000)
    assert options["socketTimeoutMS"] == MONGO_SOCKET_TIMEOUT_MS
    assert MongoTarget("mongodb://h/x", "x", patch_timeout=3600).client_options()["socketTimeoutMS"] == 3_600_000
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never says a word (not even to hello)
    held = []
    import threading

    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(20)], daemon=True).start()
    port = listener.getsockname()[1]
    result = cli("mongo", "status", "--mongo-timeout", "1", env={"MONGO_URL": f"mongodb://127.0.0.1:{port}/hcm"})
    listener.close()
    assert held and f"cannot reach MongoDB at 127.0.0.1:{port} within 1 s" in one_error_line(result)
