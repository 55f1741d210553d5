"""Interchangeable with real Flyway 10 on one database, both ways: a database Flyway migrated is taken over with
nothing re-applied, and after the runner applied more, Flyway's validate, info and migrate accept every row and
have nothing to do. Flyway's command line comes from Maven Central (`make flyway`, tools/flyway/pom.xml) into
.flyway/lib; without Java, or without Maven to fetch it, these tests skip saying so.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, ok
from test_flyway import rows, write
from tls_proxy import TlsFront

LIB = PROJECT_ROOT / ".flyway" / "lib"
JVM_QUICK_START = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")


def fetch_flyway() -> Path:
    """.flyway/lib, fetched with Maven when missing (as `make flyway`)."""
    if not shutil.which("java"):
        pytest.skip("java not found: the tests against real Flyway 10 need Java 17+")
    if not list(LIB.glob("flyway-commandline-10.*.jar")):
        if not shutil.which("mvn"):
            pytest.skip("mvn not found and .flyway/lib is empty: `make flyway` fetches Flyway 10 with Maven")
        subprocess.run(["make", "-C", str(PROJECT_ROOT), "flyway"], check=True, capture_output=True, timeout=600)
    return LIB


def class_archive(lib: Path) -> tuple[tuple[str, ...], Path | None]:
    """The JVM options for a class-data archive of Flyway's classes (CDS, made once by the first run that finds
    none), and the file that run writes: a run then maps the classes instead of loading and verifying them, ~0.7 s of
    CPU less a run. Java 17 has no auto-created archive, so the first run writes one at exit (under a lock: one per
    machine and jar set), to a partial file the caller renames once the JVM has ended (a killed run leaves none)."""
    java = Path(shutil.which("java")).resolve()
    key = hashlib.sha1(repr((str(java), java.stat().st_mtime, sorted(p.name for p in lib.glob("*.jar")))).encode())
    archive = lib.parent / f"classes-{key.hexdigest()[:12]}.jsa"
    quiet = "-Xlog:cds*=off"  # (its notes go to stdout, after Flyway's JSON)
    if archive.exists():
        return (f"-XX:SharedArchiveFile={archive}", quiet), None
    lock = open(lib.parent / ".classes.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another worker is writing it: this run goes without
        lock.close()
        return (), None
    _ARCHIVE_LOCK.append(lock)  # (held until this process ends)
    partial = Path(f"{archive}.part")
    return (f"-XX:ArchiveClassesAtExit={partial}", quiet), partial


_ARCHIVE_LOCK: list = []


@pytest.fixture(scope="module")
def front(pg):
    """A TCP front for the suite's PostgreSQL (which listens on a Unix socket only; JDBC speaks TCP)."""
    proxy = TlsFront(pg.host, pg.port, None)
    yield proxy
    proxy.close()


@pytest.fixture
def real_flyway(front, pg):
    lib = fetch_flyway()

    def run(db, folder: Path, command: str, *, schema: str | None = None, table: str | None = None,
            options: tuple[str, ...] = (), background: bool = False):
        url = f"jdbc:postgresql://127.0.0.1:{front.port}/{db.name}" + (f"?currentSchema={schema}" if schema else "")
        # A short-lived JVM: C1 only and the serial collector halve each run's start (~3.2 s to ~1.6 s measured);
        # what Flyway does to the database is the same.
        archive, made = ((), None) if background else class_archive(lib)
        args = ["java", *JVM_QUICK_START, *archive, "-cp", f"{lib}/*", "org.flywaydb.commandline.Main", f"-url={url}",
                f"-user={pg.user}",
                f"-locations=filesystem:{folder}", "-baselineOnMigrate=true", "-outOfOrder=true",
                "-outputType=json", *options, command]
        if pg.password:
            args.insert(-1, f"-password={pg.password}")
        if table:
            args.insert(-1, f"-table={table}")
        env = {**os.environ, "REDGATE_DISABLE_TELEMETRY": "true"}
        if background:  # (the caller waits for it)
            return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
        if made and made.exists():
            made.replace(made.with_suffix(""))  # (classes-<key>.jsa.part -> classes-<key>.jsa)
        result = json.loads(done.stdout[done.stdout.index("{"):])
        assert done.returncode == 0 and "error" not in result, done.stdout + done.stderr
        return result

    return run


@pytest.fixture
def service(tmp_path: Path) -> Path:
    """Every shape of the platform's names, plus a CRLF file and one with a byte order mark (Flyway's checksum
    ignores both; the runner's must agree)."""
    folder = tmp_path / "main"
    write(folder, "V20230101120000__create_plan.sql", "CREATE TABLE plan (id INT PRIMARY KEY, name TEXT);\n")
    write(folder, "V202301011300__create_facility.sql", "CREATE TABLE facility (id INT PRIMARY KEY);\n")
    write(folder, "V20242109141800__add_plan_status.sql", "ALTER TABLE plan ADD COLUMN status TEXT;\n")
    write(folder, "V20242112141500__alter plan_facility_add_column.sql", "ALTER TABLE facility ADD COLUMN plan_id INT;\n")
    (folder / "V20242112141501__add-plan-index.sql").write_bytes(
        b"-- windows line ends\r\nCREATE INDEX plan_name_idx\r\n  ON plan (name);\r\n")
    (folder / "V20242412090311.1__dotted_version.sql").write_bytes(
        "\ufeff-- a byte order mark, and ü\nALTER TABLE plan ADD COLUMN dotted INT;\n".encode())
    write(folder, "R__plan_view.sql", "CREATE OR REPLACE VIEW plan_view AS SELECT id, name FROM plan;\n")
    return folder


def more(folder: Path) -> None:
    """What a service adds later: a new version, an older one (a late branch), a changed repeatable."""
    write(folder, "V20250101000000__create_census.sql", "CREATE TABLE census (id INT);\n")
    write(folder, "V20240101000000__late_branch.sql", "CREATE TABLE late (id INT);\n")
    write(folder, "R__plan_view.sql", "CREATE OR REPLACE VIEW plan_view AS SELECT id, name, status FROM plan;\n")


def assert_flyway_has_nothing_to_do(real_flyway, db, folder: Path, **where) -> None:
    real_flyway(db, folder, "validate", **where)
    info = real_flyway(db, folder, "info", **where)
    assert {m["state"] for m in info["migrations"]} <= {"Success", "Out of Order", "Superseded"}, info["migrations"]
    assert real_flyway(db, folder, "migrate", **where)["migrationsExecuted"] == 0


def test_a_database_flyway_migrated_is_taken_over_with_nothing_reapplied(cli, db, real_flyway, service):
    real_flyway(db, service, "migrate")
    flyways = rows(db)
    status = ok(cli("status", "--sql-dir", service, env=db.db_env()))
    assert "7 applied, 0 pending" in status.stdout, status.stdout
    taken = ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    assert "took over 7 migration(s) applied by Flyway" in taken.stderr
    assert rows(db) == flyways  # nothing re-applied, nothing re-recorded
    more(service)
    done = ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    assert "V20240101000000__late_branch older than the newest applied version" in done.stderr
    assert [r[4] for r in rows(db)][7:] == ["V20240101000000__late_branch.sql", "V20250101000000__create_census.sql",
                                            "R__plan_view.sql"]
    assert_flyway_has_nothing_to_do(real_flyway, db, service)


def test_after_the_runner_flyway_accepts_every_row_and_has_nothing_to_do(cli, db, real_flyway, service):
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    assert_flyway_has_nothing_to_do(real_flyway, db, service)
    more(service)
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    assert_flyway_has_nothing_to_do(real_flyway, db, service)
    # and Flyway's next file is the runner's next one too
    write(service, "V20250201000000__by_flyway.sql", "CREATE TABLE by_flyway (id INT);\n")
    assert real_flyway(db, service, "migrate")["migrationsExecuted"] == 1
    status = ok(cli("status", "--sql-dir", service, env=db.db_env()))
    assert "10 applied, 0 pending" in status.stdout, status.stdout


def test_a_tenant_schema_with_schema_table_is_flyways_currentschema_and_table(cli, db, real_flyway, service):
    env = {**db.db_env(), "SCHEMA_NAME": "pb", "SCHEMA_TABLE": "plan_service_history", "CREATE_SCHEMAS": "true"}
    ok(cli("migrate", "--sql-dir", service, env=env))
    assert len(rows(db, "plan_service_history", "pb")) == 7
    assert_flyway_has_nothing_to_do(real_flyway, db, service, schema="pb", table="plan_service_history")


def test_a_tenant_schema_flyway_created_is_taken_over_without_its_schema_row(cli, db, real_flyway, service):
    real_flyway(db, service, "migrate", schema="mz", table="plan_service_history")  # creates mz: a SCHEMA row first
    assert rows(db, "plan_service_history", "mz")[0][3] == "SCHEMA"
    env = {**db.db_env(), "SCHEMA_NAME": "mz", "SCHEMA_TABLE": "plan_service_history"}
    status = ok(cli("status", "--sql-dir", service, env=env))
    assert "7 applied, 0 pending" in status.stdout and "missing" not in status.stdout, status.stdout
    ok(cli("migrate", "--sql-dir", service, env=env))
    assert len(rows(db, "plan_service_history", "mz")) == 8


def test_a_file_edited_after_flyway_applied_it_is_drift(cli, db, real_flyway, service):
    real_flyway(db, service, "migrate")
    write(service, "V20242109141800__add_plan_status.sql", "ALTER TABLE plan ADD COLUMN status VARCHAR(20);\n")
    result = cli("migrate", "--sql-dir", service, env=db.db_env())
    assert result.exit_code != 0 and "V20242109141800__add_plan_status.sql changed since applied" in result.stderr
    # after review, accepted as `flyway repair` would: Flyway's validate agrees with the new checksum
    ok(cli("sql", "accept-changes", "V20242109141800__add_plan_status", "--sql-dir", service, env=db.db_env()))
    real_flyway(db, service, "validate")


def test_a_failed_flyway_row_blocks_migrate_until_repaired(cli, db, real_flyway, tmp_path):
    folder = tmp_path / "main"
    write(folder, "V1__create_a.sql", "CREATE TABLE a (id INT);\n")
    # Flyway runs a file of CONCURRENTLY statements outside a transaction: the second fails, the first stays
    write(folder, "V2__half.sql", "CREATE INDEX CONCURRENTLY a_idx ON a (id);\nCREATE INDEX CONCURRENTLY b_idx ON a (nope);\n")
    with pytest.raises(AssertionError):  # (its session lock would make CONCURRENTLY wait for Flyway itself)
        real_flyway(db, folder, "migrate", options=("-postgresql.transactional.lock=false",))
    assert rows(db)[-1][4] == "V2__half.sql" and rows(db)[-1][6] is False
    result = cli("migrate", "--sql-dir", folder, env=db.db_env())
    assert result.exit_code != 0 and "records V2__half.sql as FAILED" in result.stderr
    write(folder, "V2__half.sql", "-- transactional: false\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\n")  # done by hand
    ok(cli("sql", "mark", "V2__half", "--sql-dir", folder, env=db.db_env()))
    assert [r[6] for r in rows(db)] == [True, True]
    assert_flyway_has_nothing_to_do(real_flyway, db, folder)


def test_flyway_and_the_runner_at_once_apply_a_migration_once(cli, db, real_flyway, tmp_path):
    """The runner takes Flyway 10's own advisory lock on the history (its key computed as Flyway does) and reads
    the history under it: a Flyway migrate in progress is waited for, and what it applied is not applied again."""
    from migrator import pg_lock

    folder = tmp_path / "main"
    write(folder, "V1__create_a.sql", "CREATE TABLE a (id INT);\n")
    write(folder, "V2__slow.sql", "SELECT pg_sleep(4);\nINSERT INTO a VALUES (2);\n")
    key = pg_lock.flyway_lock_key("public", "flyway_schema_history")
    flyway_run = real_flyway(db, folder, "migrate", background=True)
    try:
        for _ in range(600):  # until Flyway holds its lock (V2 sleeping in it): the key is Flyway's own
            if db.poll(f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                       f"AND classid = {key >> 32} AND objid = {key & 0xFFFFFFFF}") == [(1,)]:
                break
            assert flyway_run.poll() is None, flyway_run.communicate()
            time.sleep(0.1)
        else:
            pytest.fail("Flyway never took the advisory lock the runner computes")
        ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    finally:
        out, err = flyway_run.communicate(timeout=300)
    assert flyway_run.returncode == 0, out + err
    assert db.query("SELECT count(*) FROM a WHERE id = 2") == [(1,)]
    assert [(r[1], r[6]) for r in rows(db)] == [("1", True), ("2", True)]


def test_subfolders_are_read_as_flyway_reads_them_and_recorded_with_their_path(cli, db, real_flyway, tmp_path):
    """Flyway reads a location's subfolders recursively and records `seed/V2__seed.sql`: so does the runner,
    including the image's layout (/flyway/sql holding main/)."""
    location = tmp_path / "sql"
    write(location / "main", "V1__create_a.sql", "CREATE TABLE a (id INT);\n")
    write(location / "main" / "seed", "V2__seed.sql", "INSERT INTO a VALUES (2);\n")
    real_flyway(db, location, "migrate")
    by_flyway = [r[4] for r in rows(db)]
    assert by_flyway == ["main/V1__create_a.sql", "main/seed/V2__seed.sql"]
    status = ok(cli("status", "--sql-dir", location, env=db.db_env()))
    assert "2 applied, 0 pending" in status.stdout, status.stdout
    write(location / "main" / "seed", "V3__more.sql", "INSERT INTO a VALUES (3);\n")
    ok(cli("migrate", "--sql-dir", location, env=db.db_env()))
    assert rows(db)[-1][4] == "main/seed/V3__more.sql"
    assert db.query("SELECT count(*) FROM a") == [(2,)]
    assert_flyway_has_nothing_to_do(real_flyway, db, location)


def test_names_flyway_accepts_are_taken_and_recorded_as_flyway_records_them(cli, db, real_flyway, tmp_path):
    folder = tmp_path / "main"
    write(folder, "V1__a.sql", "CREATE TABLE a (id INT);\n")
    write(folder, "V2__upper.SQL", "INSERT INTO a VALUES (2);\n")
    write(folder, "V3__créer_table.sql", "CREATE TABLE créée (id INT);\n")
    write(folder, "V10__a&b.sql", "INSERT INTO a VALUES (10);\n")
    write(folder, "V11___lead.sql", "INSERT INTO a VALUES (11);\n")
    write(folder, "V12__.sql", "INSERT INTO a VALUES (12);\n")
    real_flyway(db, folder, "migrate", schema="fw", table="hist")
    ok(cli("migrate", "--sql-dir", folder, env={**db.db_env(), "SCHEMA_NAME": "rn", "SCHEMA_TABLE": "hist",
                                                "CREATE_SCHEMAS": "true"}))
    by_flyway = [r[1:] for r in rows(db, "hist", "fw") if r[3] != "SCHEMA"]
    assert [r[1:] for r in rows(db, "hist", "rn")] == by_flyway
    assert len(by_flyway) == 6
    assert_flyway_has_nothing_to_do(real_flyway, db, folder, schema="rn", table="hist")


def test_what_flyway_applies_after_the_runner_is_this_historys_work_not_drift(cli, db, real_flyway, tmp_path):
    folder = tmp_path / "m"
    env = {**db.db_env(), "SCHEMA_TABLE": "h"}
    write(folder, "V1__t.sql", "CREATE TABLE t (id INT);\n")
    write(folder, "R__v.sql", "CREATE OR REPLACE VIEW v AS SELECT 1 AS a;\n")
    ok(cli("migrate", "--sql-dir", folder, env=env))
    write(folder, "V2__c.sql", "ALTER TABLE t ADD COLUMN c INT;\n")
    write(folder, "R__v.sql", "CREATE OR REPLACE VIEW v AS SELECT 2 AS a;\n")
    assert real_flyway(db, folder, "migrate", table="h")["migrationsExecuted"] == 2
    before = ok(cli("status", "--exit-code", "--sql-dir", folder, env=env))  # read-only: the next run takes it over
    assert "schema: as recorded" in before.stdout, before.stdout
    strict = ok(cli("migrate", "--strict", "--sql-dir", folder, env=env))  # taken over, not refused as drift
    assert "took over 1 migration(s) applied by Flyway (h)" in strict.stderr, strict.output  # (and R__v re-run)
    ok(cli("status", "--exit-code", "--sql-dir", folder, env=env))
    db.query("ALTER TABLE t ADD COLUMN hand INT")  # a hand change afterwards is still drift
    assert cli("status", "--exit-code", "--sql-dir", folder, env=env).exit_code == 5
