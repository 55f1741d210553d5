"""A server-enforced dry run: MONGO_READONLY_URL, a read-only user, is what dry runs and plan connect as.

On FerretDB's PostgreSQL backend a Mongo user is a PostgreSQL role (FerretDB passes the credentials through,
PLAIN), so a role with only SELECT on the database's tables is a read-only Mongo user."""

from __future__ import annotations

import uuid

import pytest

from conftest import FERRETDB_PG_DATABASE, one_error_line
from migrator.doctor.mongo import PROBE

READER, READER_PASSWORD = "hcm_mongo_reader", "Read-only-pw-1"

# Deliberate circumvention: the runner's real Database object, found through the garbage collector (by the runner's
# appname: the test's own handle on the database, a superuser's, is in the same process, and which one gc lists
# first depends on what ran before on the worker).
CIRCUMVENTS = """
import gc

def run(db, dry_run):
    gc.collect()  # the earlier run's closed clients
    real = next(o for o in gc.get_objects() if type(o).__name__ == "Database" and getattr(o, "name", None) == db.name
                and o.client.options.pool_options.metadata.get("application") == {"name": "hcm-db-migrations"})
    real.things.insert_one({"written": "by a dry run"})
    return "wrote behind the runner's back"
"""


ANONYMOUS, ANONYMOUS_PASSWORD = "hcm_ferret_anonymous", "Anonymous-pw-1"


@pytest.fixture(scope="session")
def ferret_strict(tmp_path_factory, pg, ferret_pg):
    """A FerretDB on the same backend whose own PostgreSQL user may do nothing: a client without credentials is
    refused, one with credentials acts as its own role (what a server with authentication on does)."""
    from conftest import running_ferretdb

    with pg.connect(FERRETDB_PG_DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ANONYMOUS,))
        if not cur.fetchone():
            cur.execute(f"CREATE ROLE {ANONYMOUS} LOGIN PASSWORD %s", (ANONYMOUS_PASSWORD,))
    where = f"/{FERRETDB_PG_DATABASE}?host={pg.host}&port={pg.port}" if pg.host.startswith("/") else \
        f"{pg.host}:{pg.port}/{FERRETDB_PG_DATABASE}"
    url = f"postgres://{ANONYMOUS}:{ANONYMOUS_PASSWORD}@{where}"
    with running_ferretdb(tmp_path_factory.mktemp("ferretdb-strict"), postgresql_url=url) as server:
        yield server


@pytest.fixture
def readonly(ferret_pg, pg):
    """(env with MONGO_URL and MONGO_READONLY_URL, the database) on FerretDB's PostgreSQL backend."""
    import pymongo

    name = "hcm_ro_" + uuid.uuid4().hex[:8]
    client = pymongo.MongoClient(ferret_pg.url, tz_aware=True)
    client[name].things.insert_one({"_id": 1, "seeded": True})  # the database's schema and tables exist now
    client[name].applied_patches.insert_one({"patch": "0000_old", "status": "applied"})
    with pg.connect(FERRETDB_PG_DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER,))
        if not cur.fetchone():
            cur.execute(f"CREATE ROLE {READER} LOGIN PASSWORD %s", (READER_PASSWORD,))
        cur.execute(f"GRANT USAGE ON SCHEMA {name} TO {READER}; GRANT SELECT ON ALL TABLES IN SCHEMA {name} TO {READER}")
    env = {"MONGO_URL": ferret_pg.url, "MONGO_DB": name,
           "MONGO_READONLY_URL": f"mongodb://{READER}:{READER_PASSWORD}@{ferret_pg.where}/?authMechanism=PLAIN&authSource=$external"}
    yield env, client[name]
    with pg.connect(FERRETDB_PG_DATABASE) as conn, conn.cursor() as cur:
        cur.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {name} FROM {READER}; REVOKE USAGE ON SCHEMA {name} FROM {READER}")
    client.drop_database(name)
    client.close()


@pytest.mark.parametrize("command", [("mongo", "apply"), ("plan",)], ids=["mongo-apply", "plan"])
def test_a_dry_run_cannot_write_even_by_deliberate_circumvention(cli, readonly, tmp_path, request, command):
    env, db = readonly
    if command == ("plan",):  # plan dry-runs the patches too, after the SQL: the same read-only connection
        env = {**env, **request.getfixturevalue("db").db_env()}
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_circumvents.py").write_text(CIRCUMVENTS)
    without = cli(*command, "--mongo-dir", folder, env={k: v for k, v in env.items() if k != "MONGO_READONLY_URL"})
    assert without.exit_code == 0 and db.things.count_documents({"written": "by a dry run"}) == 1  # the runner alone: it wrote
    db.things.delete_many({"written": "by a dry run"})

    result = cli(*command, "--mongo-dir", folder, env=env)
    assert result.exit_code == 1, result.output
    if command == ("mongo", "apply"):  # (plan's header, printed after its dry runs, is not reached)
        assert "as the read-only user from MONGO_READONLY_URL (environment) (that the server refuses its writes" in result.stderr
        assert "a patch runs sealed in a process of its own" in result.stderr
    assert "0001_circumvents.py:8: 0001_circumvents failed" in result.stderr
    assert "permission denied" in result.stderr and READER_PASSWORD not in result.output
    assert db.things.count_documents({"written": "by a dry run"}) == 0  # refused by the server
    assert db.applied_patches.count_documents({}) == 1  # nothing logged either


def test_reads_and_the_real_run_use_their_own_connections(cli, readonly, tmp_path):
    env, db = readonly
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_reads.py").write_text(
        "def run(db, dry_run):\n"
        "    n = db.things.count_documents({'seeded': True})\n"
        "    if not dry_run:\n        db.things.insert_one({'_id': 2})\n"
        "    return f'{n} seeded'\n")
    dry = cli("mongo", "apply", "--mongo-dir", folder, env=env)
    assert dry.exit_code == 0 and "dry run 0001_reads" in dry.stdout and "1 seeded" in dry.stdout, dry.output
    status = cli("mongo", "status", "--mongo-dir", folder, env=env)  # the log, read as ever
    assert status.exit_code == 0 and "0000_old" in status.stdout
    run = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=env)  # the writable URL
    assert run.exit_code == 0 and "applied 0001_reads" in run.stdout, run.output
    assert db.things.count_documents({"_id": 2}) == 1


def test_doctor_says_whether_dry_runs_are_server_enforced(cli, readonly, ferret_pg, ferret_strict, pg, tmp_path):
    env, db = readonly
    folder = tmp_path / "mongo"
    folder.mkdir()
    anonymous = cli("doctor", "--mongo-dir", folder, env=env)  # the suite's FerretDB: its backend URL's user writes
    (line,) = [l for l in anonymous.stdout.splitlines() if "mongo dry-run" in l]
    assert line.startswith("warn") and "not server-enforced" in line and "no credentials at all" in line, line
    assert "server-enforced for the runner" not in line and READER_PASSWORD not in anonymous.output
    assert db[PROBE].count_documents({}) == 0  # the probe removed again
    # the same database through a FerretDB whose own user may do nothing: anonymous writes refused
    writer = f"{pg.user}:{pg.password or 'any'}@{ferret_strict.where}/?authMechanism=PLAIN&authSource=$external"
    env = {**env, "MONGO_URL": f"mongodb://{writer}",
           "MONGO_READONLY_URL": env["MONGO_READONLY_URL"].replace(ferret_pg.where, ferret_strict.where)}
    enforced = cli("doctor", "--mongo-dir", folder, env=env)
    (line,) = [l for l in enforced.stdout.splitlines() if "mongo dry-run" in l]
    assert line.startswith("ok") and "server-enforced for the runner" in line and f"{READER}:***@" in line
    assert "probe write the server refused" in line and "a patch runs sealed in a process of its own" in line
    assert READER_PASSWORD not in enforced.output
    plain = cli("doctor", "--mongo-dir", folder, env={k: v for k, v in env.items() if k != "MONGO_READONLY_URL"})
    (line,) = [l for l in plain.stdout.splitlines() if "mongo dry-run" in l]
    assert line.startswith("warn") and "not server-enforced" in line and "MONGO_READONLY_URL" in line


def test_a_readonly_url_as_the_writer_or_on_another_server_is_refused(cli, readonly, ferret, tmp_path):
    env, db = readonly
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_reads.py").write_text("def run(db, dry_run):\n    return 'read'\n")
    same = {**env, "MONGO_READONLY_URL": env["MONGO_URL"]}
    doctor = cli("doctor", "--mongo-dir", folder, env=same)
    assert "server-enforced" not in doctor.stdout
    (line,) = [l for l in doctor.stdout.splitlines() if l.startswith("FAIL") and "MONGO_READONLY_URL" in l]
    assert "connects as the same user as MONGO_URL" in line
    dry = cli("mongo", "apply", "--mongo-dir", folder, env=same)
    assert dry.exit_code == 2 and "connects as the same user as MONGO_URL" in dry.stderr and "server" not in dry.stdout
    elsewhere = {**env, "MONGO_READONLY_URL": ferret.url}  # another server: its log is not this one's
    other = cli("mongo", "apply", "--mongo-dir", folder, env=elsewhere)
    assert other.exit_code == 2 and f"points at {ferret.where}" in other.stderr, other.output
    assert "dry run 0001_reads" not in other.stdout


def test_doctor_fails_a_readonly_user_that_can_write(cli, readonly, pg, ferret_pg, tmp_path):
    env, db = readonly
    writer, password = "hcm_mongo_not_reader", "Writes-too-pw-1"
    with pg.connect(FERRETDB_PG_DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (writer,))
        if not cur.fetchone():
            cur.execute(f"CREATE ROLE {writer} LOGIN SUPERUSER PASSWORD %s", (password,))
    url = f"mongodb://{writer}:{password}@{ferret_pg.where}/?authMechanism=PLAIN&authSource=$external"
    folder = tmp_path / "mongo"
    folder.mkdir()
    doctor = cli("doctor", "--mongo-dir", folder, env={**env, "MONGO_READONLY_URL": url})
    (line,) = [l for l in doctor.stdout.splitlines() if "mongo dry-run" in l]
    assert line.startswith("FAIL") and "MONGO_READONLY_URL can write" in line and "server-enforced" not in line
    assert doctor.exit_code != 0 and password not in doctor.output
    assert "_hcm_readonly_probe" not in db.list_collection_names()  # the probe removed its write



def test_an_unsupported_auth_mechanism_is_said_with_the_servers_words(cli, readonly, tmp_path):
    env, db = readonly
    url = f"mongodb://{READER}:{READER_PASSWORD}@{env['MONGO_URL'].split('//')[1].strip('/')}/?authMechanism=SCRAM-SHA-1"
    result = cli("mongo", "status", "--mongo-dir", tmp_path, env={"MONGO_URL": url, "MONGO_DB": env["MONGO_DB"]})
    assert result.exit_code != 0
    line = one_error_line(result)
    assert 'Unsupported authentication mechanism "SCRAM-SHA-1"' in line and "authMechanism=PLAIN" in line, line
    assert READER_PASSWORD not in result.output
