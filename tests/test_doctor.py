"""runner.py doctor against the real PostgreSQL the suite starts: all ok on a good setup, and each broken
setup an operator meets in a new environment gives its FAIL line with what to do, changing nothing.

Not testable here: a server older than PostgreSQL 14 (the suite's server is 18; the connection itself
then fails with connection_error's "older than PostgreSQL 14" line, which test_errors covers by message).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from conftest import SPECIAL_PASSWORD

PY_PATCH = 'def run(db, dry_run):\n    return "nothing"\n'
JS_PATCH = 'print("hello");\n'


def lines(result) -> dict[str, list[str]]:
    """The check lines by check name (a name may have several lines)."""
    found: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line[:4].strip() in ("ok", "warn", "FAIL") and len(line) > 6:
            name = line[6:28].strip()
            found.setdefault(name, []).append(line)
    return found


def fails(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("FAIL")]


@pytest.fixture
def mongo_dir(tmp_path) -> Path:
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_touch.py").write_text(PY_PATCH)
    return folder


def test_a_good_setup_is_all_ok_and_nothing_is_written(cli, db, mongo, mongo_dir, sql_dir):
    before = mongo.snapshot()
    result = cli("doctor", "--sql-dir", sql_dir, "--mongo-dir", mongo_dir, env={**db.db_env(), **mongo.env})
    assert result.exit_code == 0, result.output
    assert fails(result) == []
    found = lines(result)
    assert found["postgres reachable"][0].startswith("ok")
    assert f"logged in to {db.server.host}:{db.server.port}/{db.name} as postgres" in found["postgres login"][0]
    assert "PostgreSQL 18" in found["postgres version"][0] and "supported" in found["postgres version"][0]
    assert "user postgres can create in schema public" in found["postgres schema"][0]
    assert "the migration lock is free" in found["postgres locks"][0]
    assert "0 of 6 tables present in public; the rest are created by the first migrate" in found["postgres bookkeeping"][0]
    assert "0 applied, 1 pending" in found["migrations"][0]
    assert found["mongo reachable"][0].startswith("ok") and "the patch lock is free" in found["mongo lock"][0]
    assert "1 patch(es), 1 never applied" in found["mongo patches"][0]
    assert "not needed: no JavaScript patch" in found["mongosh"][0]
    assert result.stdout.rstrip().splitlines()[-1].endswith("0 FAIL; ready")
    # Read-only: no bookkeeping table, no lock document, no log record.
    assert db.tables() == set()
    assert mongo.snapshot() == before


def test_after_migrate_bookkeeping_pending_and_drift(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    result = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 0, result.output
    found = lines(result)
    assert "1 applied, 0 pending" in found["migrations"][0]
    assert "tables present in public" in found["postgres bookkeeping"][0]
    assert found["drift"][0].startswith("ok")

    migration = next(sql_dir.glob("0001_*[!k].sql"))
    migration.write_text(migration.read_text() + "\n-- edited after it was applied\n")
    drifted = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    assert drifted.exit_code == 1
    [line] = fails(drifted)
    assert line.startswith("FAIL  drift") and "changed since applied" in line
    assert "-> restore the applied version, or after review run `runner.py sql accept-changes 0001_" in line


def test_wrong_password(cli, db, password_role, sql_dir):
    env = {**db.db_env(), "DB_USER": password_role, "DB_PASSWORD": "Wrong-pass-77"}
    result = cli("doctor", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 1
    [line] = fails(result)
    assert line.startswith("FAIL  postgres login")
    assert f"authentication failed for user {password_role} -> check the user and password" in line
    assert "DB_PASSWORD (environment)" in line
    assert "Wrong-pass-77" not in result.output


def test_missing_database(cli, db, sql_dir):
    result = cli("doctor", "--sql-dir", sql_dir, env={**db.db_env(), "DB_NAME": "no_such_db"})
    [line] = fails(result)
    assert line.startswith("FAIL  postgres login")
    assert "database no_such_db does not exist -> create it (createdb no_such_db) or fix the database name" in line


def test_unreachable_server(cli, sql_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = cli("doctor", "--sql-dir", sql_dir, env={"DB_HOST": "127.0.0.1", "DB_PORT": str(port)})
    [line] = fails(result)
    assert f"FAIL  postgres reachable    cannot reach 127.0.0.1:{port} (Connection refused)" in line
    assert "-> check the host and port, that the server runs, and the network or security group" in line
    assert "postgres login" not in lines(result)  # nothing more is tried on a server that does not answer


def test_no_create_privilege_pg15(cli, db, password_role, sql_dir):
    if int(db.query("SHOW server_version_num")[0][0]) < 150000:
        pytest.skip("before PostgreSQL 15 every user may create in schema public")
    env = {**db.db_env(), "DB_USER": password_role, "DB_PASSWORD": SPECIAL_PASSWORD}
    result = cli("doctor", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 1
    found = lines(result)
    assert found["postgres login"][0].startswith("ok")  # the special password travelled intact
    schema, bookkeeping = found["postgres schema"][0], found["postgres bookkeeping"][0]
    assert schema.startswith("FAIL") and f"user {password_role} lacks CREATE on schema public" in schema
    assert f"-> GRANT USAGE, CREATE ON SCHEMA public TO {password_role}" in schema
    assert bookkeeping.startswith("FAIL") and f"GRANT CREATE ON SCHEMA public TO {password_role}" in bookkeeping
    assert SPECIAL_PASSWORD not in result.output
    assert db.tables() == set()


def test_migration_lock_held_is_a_warning(cli, db, sql_dir):
    from migrator.pg_lock import LOCK_KEY

    with db.server.connect(db.name) as holder, holder.cursor() as cur:
        cur.execute("SET application_name = 'hcm-db-migrations otherhost:4242'")
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        result = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 0
    line = lines(result)["postgres locks"][0]
    assert line.startswith("warn") and "the migration lock is held by host otherhost pid 4242" in line


def test_ca_bundle_not_pem(cli, tmp_path):
    bundle = tmp_path / "bundle.txt"
    bundle.write_text("this is not a certificate\n")
    result = cli("doctor", "--ca-bundle", bundle, env={})
    assert result.exit_code == 1
    [line] = fails(result)  # the resolver's repeat of the same failure is not printed twice
    assert line.startswith("FAIL  ca bundle") and f"CA bundle {bundle} (--ca-bundle) holds no PEM certificate" in line
    assert "-> use the PEM bundle (https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem)" in line


def test_ca_bundle_with_a_broken_pem_block(cli, tmp_path):
    bundle = tmp_path / "broken.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    result = cli("doctor", env={"CA_BUNDLE": str(bundle)})
    line = lines(result)["ca bundle"][0]
    assert line.startswith("FAIL") and "holds no certificate that TLS can load" in line and "-> use the PEM bundle" in line


def test_ca_bundle_missing(cli, tmp_path):
    result = cli("doctor", env={"CA_BUNDLE": str(tmp_path / "nowhere.pem")})
    line = lines(result)["ca bundle"][0]
    assert line.startswith("FAIL") and "not found -> download the RDS bundle" in line


def test_a_good_ca_bundle_shows_its_expiry(cli, tmp_path):
    from tls_proxy import make_pki

    pki = make_pki(tmp_path / "pki", ["localhost"])
    result = cli("doctor", "--ca-bundle", pki.ca, env={})
    line = lines(result)["ca bundle"][0]
    assert line.startswith("ok") and "1 CA certificate(s), expiring" in line, result.output


def test_missing_secret(cli, aws, sql_dir):
    result = cli("doctor", "--sql-dir", sql_dir, env={"DB_SECRET_NAME": "hcm/absent"})
    assert result.exit_code == 1
    [line] = fails(result)
    assert line.startswith("FAIL  postgres secret")
    assert "AWS secret hcm/absent: not found: check the name and the region" in line
    assert "-> check the secret's name (DB_SECRET_NAME (environment)), --region/AWS_REGION and --profile" in line


def test_secret_without_the_rds_keys(cli, aws, sql_dir):
    aws("hcm/partial", {"host": "db.example.com", "port": 5432})
    result = cli("doctor", "--sql-dir", sql_dir, env={"DB_SECRET_NAME": "hcm/partial"})
    line = lines(result)["postgres secret"][0]
    assert line.startswith("FAIL") and "lacks username, password (has host, port)" in line
    assert "-> store the RDS layout: host, port, username, password, dbname" in line


def test_a_good_secret_shows_its_keys_and_region_never_values(cli, aws, db, sql_dir):
    aws("hcm/rds", {"host": db.server.host, "port": db.server.port, "username": "postgres",
                    "password": "Secret-Value-9x", "dbname": db.name})
    result = cli("doctor", "--sql-dir", sql_dir, env={"DB_SECRET_NAME": "hcm/rds"})
    assert result.exit_code == 0, result.output
    line = lines(result)["postgres secret"][0]
    assert "AWS secret hcm/rds (DB_SECRET_NAME (environment)), region ap-south-1: keys dbname, host, password, port, username" in line
    assert "Secret-Value-9x" not in result.output
    assert "0 applied, 1 pending" in lines(result)["migrations"][0]


def test_unreachable_mongo(cli, mongo_dir):
    # mongomock serves only its patched host; this one is a real pymongo client with nothing to reach.
    result = cli("doctor", "--mongo-dir", mongo_dir, "--mongo-timeout", "0.5",
                 env={"MONGO_URL": "mongodb://127.0.0.1:9/x", "MONGO_DB": "hcm"})
    assert result.exit_code == 1
    [line] = fails(result)
    assert line.startswith("FAIL  mongo reachable") and "cannot reach MongoDB at 127.0.0.1:9 within 0.5 s" in line
    assert "-> check the host and port, the network or security group, and TLS (--ca-bundle)" in line


def test_js_patch_without_mongosh(cli, mongo, mongo_dir, tmp_path):
    (mongo_dir / "0002_hello.js").write_text(JS_PATCH)
    env = {**mongo.env, "MONGOSH": str(tmp_path / "no-mongosh")}
    result = cli("doctor", "--mongo-dir", mongo_dir, env=env)
    assert result.exit_code == 1
    [line] = fails(result)
    assert line.startswith(f"FAIL  mongosh               mongosh not found at {tmp_path / 'no-mongosh'} (MONGOSH)")
    assert "-> fix MONGOSH or unset it" in line


def test_mongo_lock_held_and_documentdb_retry_writes(cli, mongo, mongo_dir):
    from datetime import datetime, timedelta, timezone

    since = datetime.now(timezone.utc)
    mongo.db["applied_patches_lock"].insert_one(
        {"_id": "mongo-patches", "owner": "x", "host": "job-7f9", "pid": 12, "since": since,
         "expires": since + timedelta(minutes=2)})
    before = mongo.snapshot()
    result = cli("doctor", "--mongo-dir", mongo_dir, env={**mongo.env, "MONGO_DOCUMENTDB": "true"})
    found = lines(result)
    assert found["mongo lock"][0].startswith("warn") and "held by job-7f9 pid 12 since" in found["mongo lock"][0]
    assert found["mongo documentdb"][0] == "ok    mongo documentdb      DocumentDB: retryWrites=false in effect"
    assert mongo.snapshot() == before  # the lock was read, not taken


def test_json_output_and_exit_codes(cli, db, password_role, sql_dir):
    env = {**db.db_env(), "DB_USER": password_role, "DB_PASSWORD": "Wrong-pass-77"}
    result = cli("doctor", "--json", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["counts"]["FAIL"] == 1
    [failure] = [c for c in data["checks"] if c["status"] == "FAIL"]
    assert failure["name"] == "postgres login" and failure["remedy"].startswith("check the user and password")
    assert "Wrong-pass-77" not in result.output
    assert cli("doctor", "--no-such-option").exit_code == 2


def test_the_one_off_doctor_job_is_the_job_with_another_command(tmp_path):
    """k8s/doctor.sed (README, Deploy): the Job's pod, same env and mounts, running `make doctor`; valid for 1.30."""
    import subprocess
    import sys

    import yaml

    from conftest import PROJECT_ROOT

    job_file = PROJECT_ROOT / "k8s" / "job.yaml"
    text = subprocess.run(["sed", "-f", str(PROJECT_ROOT / "k8s" / "doctor.sed"), str(job_file)],
                          capture_output=True, text=True, check=True).stdout
    (tmp_path / "doctor.yaml").write_text(text)
    validate = Path(sys.executable).parent / "kubernetes-validate"
    done = subprocess.run([str(validate), "--strict", "-k", "1.30.0", str(tmp_path / "doctor.yaml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    job, policy = [d for d in yaml.safe_load_all(text) if d]
    original, original_policy = [d for d in yaml.safe_load_all(job_file.read_text()) if d]
    assert job["metadata"]["name"] == "hcm-db-migrations-doctor" and job["spec"]["backoffLimit"] == 0
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["make", "doctor", "ARGS=--no-dev-tools"]
    # Everything else is the Job's own: the same pod but for the command, the same NetworkPolicy.
    container["command"] = original["spec"]["template"]["spec"]["containers"][0]["command"]
    assert job["spec"]["template"] == original["spec"]["template"]
    assert policy == original_policy
