"""`runner.py doctor` over several tenant schemas, on the real PostgreSQL the suite starts.

The server's checks run once; each schema's checks (privileges, bookkeeping, its lock, migrations,
drift, schema drift, its INVALID indexes) run schema by schema in the order given, each line naming its
schema; the summary names the failing schemas; nothing is written.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import test_doctor
from conftest import PROJECT_ROOT, SPECIAL_PASSWORD, _bin, add_migration
from test_doctor import ROLE_PASSWORD, as_role, fails, lines
from migrator.targets import where_name

role = test_doctor.role  # the fixture: plain login roles, dropped after the test

SERVER_CHECKS = ("postgres reachable", "postgres login", "postgres version", "postgres tls", "postgres writable")


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def doctor_json(cli, env, *args) -> dict:
    result = cli("doctor", "--json", "--no-dev-tools", *args, env=env)
    return json.loads(result.stdout)


def of_schema(report: dict, schema: str) -> list[tuple[str, str, str]]:
    return [(c["status"], c["name"], c["detail"]) for c in report["checks"] if c.get("schema") == schema]


def whole_dump(db) -> str:
    """Everything in the database, schema and data (bookkeeping included), to prove doctor wrote nothing."""
    return subprocess.run([_bin("pg_dump"), "--restrict-key=fixed", "-d", db.url], capture_output=True, text=True,
                          check=True).stdout


def three_tenants(cli, db, sql_dir):
    """a: up to date; b: 0001 applied from an older text (drift), 0002 pending, a table made by hand; c: missing."""
    migration = next(sql_dir.glob("0001_*[!k].sql"))
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "b", "--create-schemas", env=db.db_env()))
    migration.write_text(migration.read_text() + "\n-- edited after b applied it\n")
    add_migration(sql_dir, "0002_notes", "CREATE TABLE notes (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--create-schemas", env=db.db_env()))
    db.query("CREATE TABLE b.made_by_hand (id int)")


def test_three_schemas_one_fine_one_pending_and_drifted_one_missing(cli, db, sql_dir, tmp_path):
    three_tenants(cli, db, sql_dir)
    before = whole_dump(db)
    (tmp_path / "no-patches").mkdir()
    result = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, "--mongo-dir", tmp_path / "no-patches",
                 "--schema", "a", "--schema", "b", "--schema", "c", env=db.db_env())
    assert whole_dump(db) == before, "doctor over several schemas wrote nothing"
    assert db.query("SELECT count(*) FROM pg_namespace WHERE nspname = 'c'") == [(0,)]
    assert result.exit_code == 1, result.output
    found = lines(result)
    for name in SERVER_CHECKS:  # once, not per schema
        assert len(found[name]) == 1 and found[name][0].startswith("ok"), found[name]
    assert not any(name.startswith("[") for name in found if "reachable" in name or "login" in name)
    # a: every check ok, about schema a.
    assert "user postgres can create in schema a" in found["[a] postgres schema"][0]
    assert re.search(r"(all 7|6 of 7) tables present in a", found["[a] postgres bookkeeping"][0])
    assert "the migration lock is free" in found["[a] postgres locks"][0]
    assert "2 applied, 0 pending" in found["[a] migrations"][0]
    assert found["[a] drift"][0].startswith("ok") and found["[a] schema drift"][0].startswith("ok")
    # b: one pending, its applied file changed (FAIL), its live schema changed (warn).
    assert "1 applied, 1 pending" in found["[b] migrations"][0]
    drift = found["[b] drift"][0]
    assert drift.startswith("FAIL") and "changed since applied to" in drift and "schema b" in drift
    assert "accept-changes 0001_create_hcm_report_metadata" in drift
    assert found["[b] schema drift"][0].startswith("warn") and "made_by_hand" in found["[b] schema drift"][0]
    # c: missing, one line that says what to do; nothing else is claimed about it.
    [missing] = found["[c] postgres schema"]
    assert missing.startswith("FAIL") and "schema c does not exist on" in missing
    assert "-> create it (CREATE SCHEMA c AUTHORIZATION postgres), or run `migrate --create-schemas`" in missing
    assert [name for name in found if name.startswith("[c]")] == ["[c] postgres schema"]
    assert len(fails(result)) == 2
    # Schema by schema, in the order given, after the server's checks.
    names = [m[1] for m in re.finditer(r"^(?:ok|warn|FAIL) +(\S.*?)  ", result.stdout, re.M)]
    order = [n[1] for n in names if n.startswith("[")]
    assert order == sorted(order, key="abc".index) and names.index("[a] postgres schema") > names.index("postgres writable")
    oks = sum(1 for line in result.stdout.splitlines() if line.startswith("ok "))
    assert result.stdout.rstrip().splitlines()[-1] == (
        f"doctor: {oks} ok, 1 warn, 2 FAIL (schemas b, c); a real run would fail: fix the FAIL lines")
    # What doctor says of b is what a real run does: migrate refuses b for its drift, and fails on c.
    run = cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--schema", "b", "--schema", "c", env=db.db_env())
    assert run.exit_code != 0 and "failed in 2 of 3 schema(s): b, c" in run.stderr


def test_per_schema_json_is_what_doctor_says_of_that_schema_alone(cli, db, sql_dir):
    three_tenants(cli, db, sql_dir)
    env = {**db.db_env(), "SCHEMA_NAME": "a,b,c"}
    report = doctor_json(cli, env, "--sql-dir", sql_dir)
    assert report["ok"] is False and report["failed_schemas"] == ["b", "c"]
    assert report["counts"]["FAIL"] == 2
    server = [c for c in report["checks"] if c["name"] in SERVER_CHECKS]
    assert len(server) == 5 and all("schema" not in c for c in server)
    assert [c["schema"] for c in report["checks"] if "schema" in c] == sorted(
        (c["schema"] for c in report["checks"] if "schema" in c), key="abc".index)
    assert of_schema(report, "c")[0][:2] == ("FAIL", "postgres schema")
    for schema in ("a", "b"):  # the same checks as `doctor --schema NAME` gives for that schema alone
        alone = doctor_json(cli, db.db_env(), "--sql-dir", sql_dir, "--schema", schema)
        names = {name for _, name, _ in of_schema(report, schema)}
        assert names >= {"postgres schema", "postgres bookkeeping", "postgres locks", "migrations", "drift", "schema drift"}
        assert of_schema(report, schema) == [(c["status"], c["name"], c["detail"]) for c in alone["checks"]
                                             if c["name"] in names]
        assert "failed_schemas" not in alone and all("schema" not in c for c in alone["checks"])


def migrated_for_a_role(cli, db, role, sql_dir) -> str:
    """Schemas a, b, c migrated by the owner; a plain login role granted what a migration role needs on each."""
    ok(cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env={**db.db_env(), "SCHEMA_NAME": "a,b,c"}))
    name = role()
    for schema in ("a", "b", "c"):
        db.query(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {name}; "
                 f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {name}")
    return name


def test_a_role_without_create_on_one_schema_fails_for_that_schema_only(cli, db, role, sql_dir):
    name = migrated_for_a_role(cli, db, role, sql_dir)
    db.query(f"REVOKE CREATE ON SCHEMA b FROM {name}")
    env = {**as_role(db, name), "SCHEMA_NAME": "a,b,c"}
    result = cli("doctor", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 1
    line, book = fails(result)  # b's alone: CREATE on it, and the bookkeeping table a first failure creates there
    assert line.startswith("FAIL  [b] postgres schema") and f"user {name} lacks CREATE on schema b" in line
    assert f"-> GRANT USAGE, CREATE ON SCHEMA b TO {name}" in line
    assert book.startswith("FAIL  [b] postgres bookkeeping") and f"-> GRANT CREATE ON SCHEMA b TO {name}" in book
    found = lines(result)
    assert f"user {name} can create in schema a" in found["[a] postgres schema"][0]
    assert f"user {name} can create in schema c" in found["[c] postgres schema"][0]
    assert "FAIL (schema b);" in result.stdout.splitlines()[-1]
    as_json = cli("doctor", "--json", "--sql-dir", sql_dir, env=env)
    assert json.loads(as_json.stdout)["failed_schemas"] == ["b"]
    for output in (result.output, as_json.output):
        assert ROLE_PASSWORD not in output and "***" in output  # the settings line shows the URL masked
    # The FAIL is true: a real run as that role migrates a, then fails in b on CREATE.
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_reports (id int);\n")
    run = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert run.exit_code != 0 and "[a] applied 0002_more" in run.stdout and "[b] applied" not in run.stdout
    assert "[c] applied 0002_more" in run.stdout, "b's failure is b's alone: c still migrates"
    b_failed = [line for line in run.stderr.splitlines() if line.startswith("[b] FAILED")]
    assert len(b_failed) == 1 and "0002_more" in b_failed[0] and "permission denied for schema b" in b_failed[0]
    assert "Traceback" not in run.output and "unexpected" not in run.stderr
    assert run.stderr.splitlines()[-1].startswith("error: ") and " b" in run.stderr.splitlines()[-1]


def test_each_remedy_names_what_is_missing_once(cli, db, role, sql_dir):
    """attack16b 14: the schema said once per line, USAGE asked for where USAGE is missing (doctor and migrate),
    and a schema-drift line that lists its changes once."""
    name = role()
    db.query("CREATE SCHEMA nousage; CREATE SCHEMA nocreate")
    db.query(f"GRANT USAGE ON SCHEMA nocreate TO {name}; GRANT CREATE ON DATABASE {db.name} TO {name}")
    env = {**as_role(db, name), "SCHEMA_NAME": "nousage,nocreate"}
    found = lines(cli("doctor", "--sql-dir", sql_dir, env=env))
    [schema] = found["[nocreate] postgres schema"]
    assert "lacks CREATE on schema nocreate on " in schema and schema.lower().count("schema nocreate") == 2, schema
    [schema] = found["[nousage] postgres schema"]
    assert "lacks USAGE and CREATE on schema nousage" in schema and schema.lower().count("schema nousage") == 2, schema
    [book] = found["[nousage] postgres bookkeeping"]
    assert book.endswith(f"-> GRANT USAGE, CREATE ON SCHEMA nousage TO {name}"), book
    [book] = found["[nocreate] postgres bookkeeping"]
    assert book.endswith(f"-> GRANT CREATE ON SCHEMA nocreate TO {name}"), book
    run = cli("migrate", "--sql-dir", sql_dir, env=env)
    failed = {line.split("]")[0][1:]: line for line in run.stderr.splitlines() if " FAILED: " in line}
    assert f"user {name} has no USAGE or CREATE on schema nousage on " in failed["nousage"], failed
    assert f"GRANT USAGE, CREATE ON SCHEMA nousage TO {name}" in failed["nousage"], failed
    assert failed["nousage"].lower().count("schema nousage") == 2, failed  # the problem and the remedy, not the address
    assert f"user {name} cannot create tables in schema nocreate" in failed["nocreate"], failed
    # a schema drift line: the count and the changes, once
    owner = {**db.db_env(), "SCHEMA_NAME": "nocreate"}
    ok(cli("migrate", "--sql-dir", sql_dir, env=owner))
    db.query("CREATE TABLE nocreate.by_hand (x int)")
    [drift] = lines(cli("doctor", "--sql-dir", sql_dir, env=owner))["schema drift"]
    assert " 2 changes: column nocreate.by_hand.x added; table nocreate.by_hand added -> " in drift, drift


def test_another_runner_holding_one_schemas_lock_is_a_warning_for_that_schema_only(cli, db, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env={**db.db_env(), "SCHEMA_NAME": "a,b,c"}))
    add_migration(sql_dir, "0002_wait", "SELECT pg_advisory_xact_lock(4711);\n")  # blocks while the test holds 4711
    from migrator.pg_lock import lock_key

    with db.server.connect(db.name) as gate, gate.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(4711)")
        runner = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), "migrate", "--sql-dir", str(sql_dir),
                                   "--schema", "b", "--ddl-lock-timeout", "60s"], cwd=PROJECT_ROOT,
                                  env={"PATH": "/usr/bin:/bin", **db.db_env()}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            key = lock_key("b")
            deadline = time.monotonic() + 30
            while not db.poll("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                              "AND classid = %s AND objid = %s", (key >> 32, key & 0xFFFF_FFFF))[0][0]:
                assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
                time.sleep(0.1)
            result = cli("doctor", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_NAME": "a,b,c"})
        finally:
            cursor.execute("SELECT pg_advisory_unlock(4711)")
            out, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, out + err
    assert result.exit_code == 0, result.output
    found = lines(result)
    held = found["[b] postgres locks"][0]
    assert held.startswith("warn") and f"the migration lock is held by host {socket.gethostname()} pid {runner.pid}" in held
    assert found["[a] postgres locks"][0].startswith("ok") and found["[c] postgres locks"][0].startswith("ok")
    assert [line for line in result.stdout.splitlines() if line.startswith("warn  [")] == [held]


def test_create_schemas_is_ok_only_when_the_user_may_create_on_the_database(cli, db, role, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "a", "--create-schemas", env=db.db_env()))
    name = role()
    db.query(f"GRANT USAGE, CREATE ON SCHEMA a TO {name}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA a TO {name}")
    env = {**as_role(db, name), "SCHEMA_NAME": "a,n"}

    without = cli("doctor", "--sql-dir", sql_dir, "--create-schemas", env=env)
    assert without.exit_code == 1
    [line] = fails(without)
    assert line.startswith("FAIL  [n] postgres schema")
    assert f"schema n does not exist on {where_name(db.server.host, db.server.port, db.name)}, and user {name} lacks CREATE on " \
           f"database {db.name}: migrate --create-schemas cannot create it" in line
    assert f"-> GRANT CREATE ON DATABASE {db.name} TO {name}, or create it as its owner (CREATE SCHEMA n AUTHORIZATION {name})" in line
    refused = cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env=env)  # true: the real run cannot either
    assert refused.exit_code != 0 and "cannot create schema n" in refused.stderr
    assert db.query("SELECT count(*) FROM pg_namespace WHERE nspname = 'n'") == [(0,)]

    db.query(f"GRANT CREATE ON DATABASE {db.name} TO {name}")
    allowed = cli("doctor", "--sql-dir", sql_dir, "--create-schemas", env=env)
    assert allowed.exit_code == 0, allowed.output
    line = lines(allowed)["[n] postgres schema"][0]
    assert line.startswith("ok") and "schema n does not exist" in line and "migrate will create it" in line
    assert f"user {name} may CREATE on database {db.name}" in line
    assert db.query("SELECT count(*) FROM pg_namespace WHERE nspname = 'n'") == [(0,)], "doctor itself creates nothing"
    plain = cli("doctor", "--sql-dir", sql_dir, env=env)  # without --create-schemas a missing schema still FAILs
    assert plain.exit_code == 1 and "or run `migrate --create-schemas`" in fails(plain)[0]
    ok(cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env=env))  # true: the real run creates it
    assert db.query("SELECT count(*) FROM n._yoyo_migration") == [(1,)]
    for result in (without, allowed, plain):
        assert ROLE_PASSWORD not in result.output


def test_invalid_indexes_are_each_schemas_own(cli, db, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env={**db.db_env(), "SCHEMA_NAME": "a,b"}))
    for row in ("'r1', 'f1'", "'r1', 'f2'"):  # a duplicate: a unique index built concurrently fails, left INVALID
        db.query("INSERT INTO b.hcm_report_metadata (dag_run_id, dag_name, campaign_number, report_name, "
                 f"trigger_frequency, trigger_date, filestore_id) VALUES ({row.split(',')[0]}, 'd', 'c', 'n', 'daily', "
                 f"now(), {row.split(',')[1]})")
    try:
        db.query("CREATE UNIQUE INDEX CONCURRENTLY idx_one_run ON b.hcm_report_metadata (dag_run_id)")
    except Exception as exc:
        assert "could not create unique index" in str(exc)
    assert db.query("SELECT count(*) FROM pg_index WHERE NOT indisvalid AND indexrelid = 'b.idx_one_run'::regclass") == [(1,)]
    result = cli("doctor", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_NAME": "a,b"})
    found = lines(result)
    assert "[a] invalid index" not in found
    [line] = found["[b] invalid index"]
    assert line.startswith("warn") and "b.idx_one_run on hcm_report_metadata is INVALID" in line


def test_the_platforms_settings_over_several_schemas_never_print_the_password(cli, make_db, password_role, sql_dir):
    """DB_URL as a JDBC URL with credentials in its query (the egov-config way), SCHEMA_NAME with one schema missing."""
    db = make_db(owner=password_role)  # the owner may CREATE on its database: --create-schemas is ok
    url = (f"jdbc:postgresql:///{db.name}?host={db.server.host}&port={db.server.port}"
           f"&user={password_role}&password={quote(SPECIAL_PASSWORD, safe='')}")
    ok(cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env={"DB_URL": url, "SCHEMA_NAME": "pb,mz"}))
    env = {"DB_URL": url, "SCHEMA_NAME": "pb,mz,ng"}
    text = cli("doctor", "--sql-dir", sql_dir, "--create-schemas", env=env)
    as_json = cli("doctor", "--json", "--sql-dir", sql_dir, env=env)
    assert text.exit_code == 0, text.output
    found = lines(text)
    assert f"logged in to {where_name(db.server.host, db.server.port, db.name)} as {password_role}" in found["postgres login"][0]
    assert "1 applied, 0 pending" in found["[pb] migrations"][0] and "1 applied, 0 pending" in found["[mz] migrations"][0]
    assert "migrate will create it" in found["[ng] postgres schema"][0]
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and report["failed_schemas"] == ["ng"]  # without --create-schemas
    for output in (text.output, as_json.output):
        assert SPECIAL_PASSWORD not in output and quote(SPECIAL_PASSWORD, safe="") not in output
        assert "***" in output


def test_a_refusal_nothing_foresaw_in_one_schema_is_that_schemas_failure_not_the_runs(cli, db, role, sql_dir):
    """A DBA revoked the runner's SELECT on one tenant's history (the server would refuse a read deep in yoyo).
    That schema fails, in one line that says where; the others migrate; no traceback."""
    name = migrated_for_a_role(cli, db, role, sql_dir)
    db.query(f"REVOKE SELECT ON b._yoyo_migration FROM {name}")
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_reports (id int);\n")
    run = cli("migrate", "--sql-dir", sql_dir, env={**as_role(db, name), "SCHEMA_NAME": "a,b,c"})
    assert run.exit_code != 0
    assert "[a] applied 0002_more" in run.stdout and "[c] applied 0002_more" in run.stdout
    b_failed = [line for line in run.stderr.splitlines() if line.startswith("[b] FAILED")]
    # now foreseen (issue 23): which table, which privilege, the GRANT
    assert len(b_failed) == 1 and f"user {name} lacks SELECT on b._yoyo_migration" in b_failed[0], run.stderr
    assert f"run GRANT SELECT ON b._yoyo_migration TO {name}" in b_failed[0], run.stderr
    assert "Traceback" not in run.output and ROLE_PASSWORD not in run.output
    assert run.stderr.splitlines()[-1].startswith("error: ")
