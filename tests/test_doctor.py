"""runner.py doctor against the real PostgreSQL the suite starts: all ok on a good setup, and each broken
setup an operator meets in a new environment gives its FAIL line with what to do, changing nothing.

Not testable here: a server older than PostgreSQL 14 (the suite's server is 18; the connection itself
then fails with connection_error's "older than PostgreSQL 14" line, which test_errors covers by message).
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from pathlib import Path

import pytest

from conftest import SPECIAL_PASSWORD
from migrator.targets import where_name

PY_PATCH = 'def run(db, dry_run):\n    return "nothing"\n'
JS_PATCH = 'print("hello");\n'


def lines(result) -> dict[str, list[str]]:
    """The check lines by check name (a name may have several lines)."""
    found: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"(ok|warn|FAIL) +(\S.*?)(  |$)", line)
        if match:
            found.setdefault(match[2], []).append(line)
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
    assert f"logged in to {where_name(db.server.host, db.server.port, db.name)} as postgres" in found["postgres login"][0]
    assert "PostgreSQL 18" in found["postgres version"][0] and "supported" in found["postgres version"][0]
    assert "user postgres can create in schema public" in found["postgres schema"][0]
    assert "the migration lock is free" in found["postgres locks"][0]
    assert "0 of 7 tables present in public; the rest are created by the first migrate" in found["postgres bookkeeping"][0]
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
        pid = holder.get_backend_pid()
        result = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 0
    line = lines(result)["postgres locks"][0]
    # a name any session may give itself, without a runner's lock row: not believed (issue 23)
    assert line.startswith("warn") and "the migration lock is held by an unverified session (server pid" in line
    assert "calling itself 'hcm-db-migrations otherhost:4242'" in line and "held by host" not in line
    # (attack23u 14: the advice said "a runner is migrating now" of a session nothing proves a runner's)
    assert "a runner is migrating now" not in line and "not proven a runner's" in line, line
    assert f"if it is not a runner's, end it: SELECT pg_terminate_backend({pid})" in line, line


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
    assert re.match(rf"FAIL  mongosh +mongosh not found at {re.escape(str(tmp_path / 'no-mongosh'))} \(MONGOSH\)", line)
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
    assert re.fullmatch(r"ok    mongo documentdb +DocumentDB: retryWrites=false in effect", found["mongo documentdb"][0])
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
    """k8s/doctor.sed (README, Deploy): the Job's pod, same env and mounts, running the runner's doctor directly
    (its exit code is doctor's: `make doctor` would turn a FAIL's 1 into make's 2); valid for 1.30."""
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
    assert container["command"] == ["python3", "runner.py", "doctor", "--no-dev-tools"]
    # Everything else is the Job's own: the same pod but for the command, the same NetworkPolicy.
    container["command"] = original["spec"]["template"]["spec"]["containers"][0]["command"]
    assert job["spec"]["template"] == original["spec"]["template"]
    assert policy == original_policy


# --- hostile setups: read-only servers, missing privileges, a lock held by another role, drift ----------

ROLE_PASSWORD = "Role-pass-31"


@pytest.fixture
def role(db):
    """A factory of plain login roles (no superuser, no privileges) for this test's database; dropped after."""
    made: list[str] = []

    def make() -> str:
        name = "r_" + uuid.uuid4().hex[:10]
        db.query(f"CREATE ROLE {name} LOGIN PASSWORD '{ROLE_PASSWORD}'")
        made.append(name)
        return name

    yield make
    for name in made:
        db.query(f"DROP OWNED BY {name}")
        db.query(f"DROP ROLE {name}")


def as_role(db, name: str) -> dict[str, str]:
    return {**db.db_env(), "DB_USER": name, "DB_PASSWORD": ROLE_PASSWORD}


def test_a_database_read_only_by_default_fails_with_the_writer_endpoint(cli, db, sql_dir):
    db.query(f"ALTER DATABASE {db.name} SET default_transaction_read_only = on")
    result = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 1, result.output
    [line] = fails(result)
    assert line.startswith("FAIL  postgres writable")
    assert f"default_transaction_read_only set on database {db.name}" in line and "-> point DB_HOST" in line
    assert "writer endpoint" in line


def test_a_role_read_only_by_default_fails(cli, db, role, sql_dir):
    name = role()
    db.query(f"ALTER ROLE {name} SET default_transaction_read_only = true")
    result = cli("doctor", "--sql-dir", sql_dir, env=as_role(db, name))
    line = lines(result)["postgres writable"][0]
    assert line.startswith("FAIL") and f"set on role {name}" in line


def test_a_writable_server_says_so(cli, db, sql_dir):
    result = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    assert lines(result)["postgres writable"][0].startswith("ok")


def test_no_select_on_yoyo_table_is_a_fail_line_and_the_report_goes_on(cli, db, role, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    name = role()
    db.query(f"GRANT USAGE, CREATE ON SCHEMA public TO {name}")
    db.query(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}")
    db.query(f"REVOKE ALL ON public._yoyo_migration FROM {name}")
    result = cli("doctor", "--sql-dir", sql_dir, env=as_role(db, name))
    assert result.exit_code == 1
    assert "unexpected" not in result.output and "Traceback" not in result.output
    found = lines(result)
    book = found["postgres bookkeeping"][0]
    assert book.startswith("FAIL") and f"user {name} lacks SELECT, INSERT, UPDATE, DELETE on _yoyo_migration" in book
    assert f"-> GRANT SELECT, INSERT, UPDATE, DELETE ON public._yoyo_migration TO {name}" in book
    assert found["migrations"][0].startswith("FAIL") and "cannot read _yoyo_migration" in found["migrations"][0]
    assert found["postgres locks"][0].startswith("ok")  # the checks after it still ran
    assert result.stdout.rstrip().splitlines()[-1].startswith("doctor: ")


def test_no_usage_on_the_bookkeeping_schema_is_a_fail_line(cli, db, role, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "books", "--create-schemas", env=db.db_env()).exit_code == 0
    name = role()
    result = cli("doctor", "--sql-dir", sql_dir, "--schema", "books", env=as_role(db, name))
    assert result.exit_code == 1
    assert "unexpected" not in result.output and "permission denied" not in result.output
    found = lines(result)
    assert f"user {name} lacks USAGE and CREATE on schema books" in found["postgres schema"][0]
    assert f"-> GRANT USAGE, CREATE ON SCHEMA books TO {name}" in found["postgres schema"][0]
    assert found["migrations"][0].startswith("FAIL") and "cannot read schema books" in found["migrations"][0]


def test_doctor_checks_one_schema_and_each_of_several(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--schema", "books", "--create-schemas", env=db.db_env()).exit_code == 0
    one = cli("doctor", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_NAME": "books"})
    assert one.exit_code == 0, one.output
    assert re.search(r"\d of 7 tables present in books|all 7 tables present in books", lines(one)["postgres bookkeeping"][0])
    assert "1 applied, 0 pending" in lines(one)["migrations"][0]
    several = cli("doctor", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_NAME": "books,ledger"})
    assert several.exit_code == 1
    assert "1 applied, 0 pending" in lines(several)["[books] migrations"][0]  # more in test_doctor_tenants.py
    [line] = fails(several)
    assert line.startswith("FAIL  [ledger] postgres schema") and "schema ledger does not exist" in line


def test_bookkeeping_without_update_or_on_the_snapshot_table_is_a_fail(cli, db, role, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    assert "_hcm_schema_snapshot" in db.tables()
    name = role()
    db.query(f"GRANT USAGE, CREATE ON SCHEMA public TO {name}")
    db.query(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}")
    db.query(f"REVOKE UPDATE ON public._hcm_migration_checksum FROM {name}")
    db.query(f"REVOKE ALL ON public._hcm_schema_snapshot FROM {name}")
    result = cli("doctor", "--sql-dir", sql_dir, env=as_role(db, name))
    assert result.exit_code == 1
    book = lines(result)["postgres bookkeeping"][0]
    assert "lacks UPDATE on _hcm_migration_checksum" in book
    assert "SELECT, INSERT, UPDATE, DELETE on _hcm_schema_snapshot" in book
    assert "ON public._hcm_migration_checksum, public._hcm_schema_snapshot TO" in book


def test_lock_held_by_another_role_seen_by_a_plain_user(cli, db, role, sql_dir):
    from migrator.pg_lock import LOCK_KEY

    name = role()
    db.query(f"GRANT USAGE, CREATE ON SCHEMA public TO {name}")
    with db.server.connect(db.name) as holder, holder.cursor() as cur:
        cur.execute("SET application_name = 'psql'")
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        result = cli("doctor", "--sql-dir", sql_dir, env=as_role(db, name))
        migrate = cli("migrate", "--sql-dir", sql_dir, "--lock-timeout", "1", env=as_role(db, name))
    line = lines(result)["postgres locks"][0]
    assert line.startswith("warn") and "the migration lock is held by a session of another role (server pid" in line
    assert "(since unknown)" in line
    assert migrate.exit_code != 0 and "unexpected" not in migrate.output
    assert "a session holds the migration lock" in migrate.stderr and "(since unknown)" in migrate.stderr


def test_schema_drift_is_a_warning(cli, db, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    assert lines(cli("doctor", "--sql-dir", sql_dir, env=db.db_env()))["schema drift"][0].startswith("ok")
    db.query("CREATE TABLE made_by_hand (id int)")
    result = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 0
    line = lines(result)["schema drift"][0]
    assert line.startswith("warn") and "made_by_hand" in line and "accept-drift" in line


# --- Mongo: privileges after connecting, odd lock documents, mongosh only when JavaScript would run ---------

def test_mongo_not_authorized_on_applied_patches_is_one_fail_line_and_postgres_stays(cli, db, mongo, mongo_dir,
                                                                                       sql_dir, monkeypatch):
    import mongomock
    from pymongo.errors import OperationFailure

    if not isinstance(mongo.db, mongomock.Database):
        pytest.skip("a real server's privileges are set by its admin, not patched")

    def refuse(self, *args, **kwargs):
        raise OperationFailure(f"not authorized on {mongo.name} to execute command {{ count: \"applied_patches\" }}",
                               code=13, details={"errmsg": f"not authorized on {mongo.name} to execute command"})

    monkeypatch.setattr(mongomock.collection.Collection, "count_documents", refuse)
    result = cli("doctor", "--sql-dir", sql_dir, "--mongo-dir", mongo_dir, env={**db.db_env(), **mongo.env})
    assert result.exit_code == 1
    [line] = fails(result)
    assert line.startswith("FAIL  mongo applied_patches") and f"not authorized on {mongo.name}" in line and "(code 13)" in line
    assert f"-> grant the user readWrite on {mongo.name}" in line
    found = lines(result)
    assert found["postgres login"][0].startswith("ok") and "0 applied, 1 pending" in found["migrations"][0]
    assert found["mongo lock"][0].startswith("ok") and found["mongo patches"][0].startswith("ok")


@pytest.mark.parametrize("document, said", [
    ({"since": "yesterday"}, "is malformed: since 'yesterday' is not a date"),
    ({"expires": "x"}, "is malformed: expires 'x' is not a date"),
    ({"expires": None}, "lock document without expiry (held by job-1 pid 7"),
])
def test_a_malformed_mongo_lock_document_is_one_fail_line(cli, mongo, mongo_dir, document, said):
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    record = {"_id": "mongo-patches", "owner": "x", "host": "job-1", "pid": 7, "since": now,
              "expires": now + timedelta(minutes=2), **document}
    if record["expires"] is None:
        del record["expires"]
    mongo.db["applied_patches_lock"].insert_one(record)
    result = cli("doctor", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 1
    [line] = fails(result)
    assert line.startswith("FAIL  mongo lock") and said in line
    assert "remove it after checking no runner is alive" in line


def test_mongosh_missing_is_a_warning_when_every_js_patch_is_applied(cli, mongo, mongo_dir, tmp_path):
    from migrator.mongo import log, patches

    (mongo_dir / "0002_hello.js").write_text(JS_PATCH)
    env = {**mongo.env, "MONGOSH": str(tmp_path / "no-mongosh")}
    js = next(p for p in patches.discover(mongo_dir) if p.path.suffix == ".js")
    log.decide(mongo.db, js.id, log.APPLIED, "applied by an earlier runner", js.checksum)
    result = cli("doctor", "--mongo-dir", mongo_dir, env=env)
    assert result.exit_code == 0, result.output
    line = lines(result)["mongosh"][0]
    assert line.startswith("warn") and "all 1 .js patch(es) applied: no run needs it now" in line


def test_the_exit_codes_as_the_one_off_pod_and_make_give_them(tmp_path):
    """A FAIL is exit 1 from the runner (the pod's command), and 2 through make (README says both)."""
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    bad = {"PATH": "/usr/bin:/bin", "CA_BUNDLE": str(tmp_path / "nowhere.pem"), "HOME": str(tmp_path)}
    direct = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner.py"), "doctor", "--no-dev-tools"],
                            capture_output=True, text=True, env=bad, cwd=tmp_path)
    assert direct.returncode == 1 and "FAIL  ca bundle" in direct.stdout
    made = subprocess.run(["make", "-s", "-C", str(PROJECT_ROOT), "doctor", "ARGS=--no-dev-tools",
                           f"PYTHON={sys.executable}"], capture_output=True, text=True, env=bad)
    assert made.returncode == 2 and "FAIL  ca bundle" in made.stdout


def test_a_missing_password_file_fails_naming_it_never_the_default_password(cli, db, sql_dir, tmp_path):
    env = {key: value for key, value in db.db_env().items() if key != "DB_PASSWORD"}
    env["DB_PASSWORD_FILE"] = str(tmp_path / "secrets" / "password")
    result = cli("doctor", "--sql-dir", sql_dir, env=env)
    failed = [line for line in lines(result)["postgres settings"] if line.startswith("FAIL")]
    assert result.exit_code != 0 and any(
        f"DB_PASSWORD_FILE (environment): {tmp_path / 'secrets' / 'password'} does not exist" in line
        for line in failed), result.output


# --- the minor findings: CA dates and kinds, .env syntax, plaintext Mongo, the column, the origins ---------

def _certificate(folder: Path, name: str, *, ca: bool, start_days: int, end_days: int) -> str:
    """A self-signed certificate as PEM text, made with `cryptography` (a CA, or a server's own)."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now + timedelta(days=start_days))
            .not_valid_after(now + timedelta(days=end_days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_ca_not_valid_yet_is_not_ok(cli, tmp_path):
    bundle = tmp_path / "future.pem"
    bundle.write_text(_certificate(tmp_path, "Future CA", ca=True, start_days=30, end_days=400))
    line = lines(cli("doctor", "--ca-bundle", bundle, env={}))["ca bundle"][0]
    assert line.startswith("FAIL") and "none valid today (1 not valid yet)" in line and "check the clock" in line
    bundle.write_text(bundle.read_text() + _certificate(tmp_path, "Today CA", ca=True, start_days=-1, end_days=400))
    line = lines(cli("doctor", "--ca-bundle", bundle, env={}))["ca bundle"][0]
    assert line.startswith("warn") and "2 CA certificate(s)" in line and "1 not valid yet" in line


def test_a_bundle_of_server_certificates_says_so(cli, tmp_path):
    bundle = tmp_path / "leaf.pem"
    bundle.write_text(_certificate(tmp_path, "db.example.com", ca=False, start_days=-1, end_days=90))
    line = lines(cli("doctor", "--ca-bundle", bundle, env={}))["ca bundle"][0]
    assert line.startswith("FAIL") and "no CA certificate among its 1 certificate(s)" in line
    assert "none valid today" not in line


def test_an_unparsable_env_line_is_a_warning(cli, workdir):
    (workdir / ".env").write_text("DB_NAME=hcm\nthis line is not a setting\nDB_USER=app\n")
    line = lines(cli("doctor", env={}))[".env"][0]
    assert line.startswith("warn") and "line(s) 2 cannot be parsed and are ignored (2 setting(s) read)" in line


def test_plaintext_mongo_with_credentials_to_a_remote_host_warns_and_origins_read_well(cli, mongo_dir):
    env = {"MONGO_URL": "mongodb://app:Mongo-pw-5@127.0.0.1:9,10.0.0.9:9/hcm"}
    result = cli("doctor", "--mongo-dir", mongo_dir, "--mongo-timeout", "0.2", env=env)
    settings = lines(result)["mongo settings"]
    assert "database hcm (from the path of MONGO_URL (environment))" in settings[0]
    assert any(line.startswith("warn") and "TLS to MongoDB at 127.0.0.1:9,10.0.0.9:9 is off: the password travels in clear"
               in line for line in settings)
    assert "Mongo-pw-5" not in result.output
    local = cli("doctor", "--mongo-dir", mongo_dir, "--mongo-timeout", "0.2",
                env={"MONGO_URL": "mongodb://app:Mongo-pw-5@127.0.0.1:9/hcm"})
    assert not any("in clear" in line for line in lines(local)["mongo settings"])


def test_the_check_names_line_up_with_mongo_applied_patches(cli, mongo, mongo_dir):
    result = cli("doctor", "--mongo-dir", mongo_dir, env=mongo.env)
    checks = [line for line in result.stdout.splitlines() if re.match(r"(ok|warn|FAIL) ", line)]
    assert any("mongo applied_patches  applied_patches readable" in line for line in checks)
    columns = {len(re.match(r"(ok|warn|FAIL) +\S+(?: \S+)? +", line)[0]) for line in checks}
    assert columns == {6 + len("mongo applied_patches") + 2}, checks
