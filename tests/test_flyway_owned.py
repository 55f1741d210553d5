"""Services sharing one schema, each with its own history (SCHEMA_TABLE): a history owns (and moves in the schema's
record) only the objects its own files name as DDL targets, even while another service migrates at the same time or
a DBA changes a table meanwhile; accepting one service's drift leaves the others'. Real runner processes where runs
overlap (a paused holder, services started together); a run on its own or beside a paused one runs in-process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import ok
from migrator.errors import SCHEMA_DRIFT
from migrator.schema import targets
from test_flyway_locks import GATE, here, paused, runner, write


def owned(db) -> dict[str, set[str]]:
    return {history: set(objects) for history, objects in db.query("SELECT history, objects FROM _hcm_schema_owned")}


def status(cli, db, folder: Path, table: str):
    return cli("status", "--exit-code", "--sql-dir", folder, env={**db.db_env(), "SCHEMA_TABLE": table})


def test_a_run_paused_while_another_service_migrates_and_a_dba_changes_its_table_claims_neither(cli, db, tmp_path):
    plan, census = tmp_path / "plan", tmp_path / "census"
    write(plan, "V1__init.sql", "CREATE TABLE plan (id INT);\n")
    write(census, "V1__init.sql", "CREATE TABLE census (id INT);\n")
    for folder, table in ((plan, "plan_history"), (census, "census_history")):
        assert here(cli, db, folder, table, "migrate").exit_code == 0
    # plan's next file reads census (a view on another service's table is not a claim on it)
    write(plan, "V2__slow.sql", f"SELECT pg_advisory_xact_lock({GATE});\nCREATE TABLE plan_two (id INT);\n"
                                "CREATE VIEW plan_census AS SELECT id FROM census;\n")
    write(census, "V2__census_two.sql", "CREATE TABLE census_two (id INT);\n")
    with paused(db, plan, "plan_history"):  # plan's run has described the schema and waits inside its migration
        done = here(cli, db, census, "census_history", "migrate")
        assert done.exit_code == 0, done.output
        db.query("ALTER TABLE census ADD COLUMN hand INT")  # a hand change, during plan's run
    assert owned(db) == {"plan_history": {"table public.plan", "table public.plan_two", "view public.plan_census"},
                         "census_history": {"table public.census", "table public.census_two"}}
    assert ok(status(cli, db, plan, "plan_history"))
    drifted = status(cli, db, census, "census_history")  # the hand change is census's drift, not absorbed by plan's run
    assert drifted.exit_code == SCHEMA_DRIFT and "hand" in drifted.stdout, drifted.output


def test_services_started_together_each_own_only_their_objects(cli, make_db, tmp_path):
    for count in (2, 4):
        db = make_db()
        folders = {}
        for n in range(count):
            folders[n] = tmp_path / f"{count}svc{n}"
            write(folders[n], "V1__t.sql", f"CREATE TABLE svc{n}_t (id INT);\n")
            write(folders[n], "V2__more.sql", f"ALTER TABLE svc{n}_t ADD COLUMN name TEXT;\n"
                                              f"CREATE INDEX svc{n}_name ON svc{n}_t (name);\n"
                                              f"CREATE SEQUENCE svc{n}_seq;\nCREATE FUNCTION svc{n}_f() RETURNS INT "
                                              "LANGUAGE sql AS 'SELECT 1';\n")
        runs = [runner(db, folder, f"svc{n}_hist", "migrate") for n, folder in folders.items()]
        for run in runs:
            assert run.communicate(timeout=180) and run.returncode == 0
        assert owned(db) == {f"svc{n}_hist": {f"table public.svc{n}_t", f"sequence public.svc{n}_seq",
                                              f"function public.svc{n}_f()"} for n in folders}
        db.query("ALTER TABLE svc1_t ADD COLUMN hand INT")
        for n, folder in folders.items():
            result = status(cli, db, folder, f"svc{n}_hist")
            assert result.exit_code == (SCHEMA_DRIFT if n == 1 else 0), (n, result.output)


def test_accept_drift_of_one_service_leaves_the_others_drift(cli, db, tmp_path):
    folders = {}
    for n in (0, 1):
        folders[n] = tmp_path / f"svc{n}"
        write(folders[n], "V1__t.sql", f"CREATE TABLE svc{n}_t (id INT);\n")
        assert here(cli, db, folders[n], f"svc{n}_hist", "migrate").exit_code == 0
    db.query("ALTER TABLE svc0_t ADD COLUMN hand0 INT; ALTER TABLE svc1_t ADD COLUMN hand1 INT")
    accepted = ok(cli("sql", "accept-drift", "--sql-dir", folders[0], env={**db.db_env(), "SCHEMA_TABLE": "svc0_hist"}))
    assert "hand0" in accepted.stdout and "hand1" not in accepted.stdout, accepted.stdout
    assert "1 change(s) in objects this history (svc0_hist) does not own left as drift" in accepted.stdout, accepted.stdout
    assert ok(status(cli, db, folders[0], "svc0_hist"))
    left = status(cli, db, folders[1], "svc1_hist")
    assert left.exit_code == SCHEMA_DRIFT and "hand1" in left.stdout, left.output


def test_ddl_targets_are_what_a_file_changes_not_what_it_reads():
    found = targets.file_targets(
        "CREATE TABLE a.t (x INT REFERENCES other (id)); CREATE INDEX i1 ON t2 (x); DROP INDEX IF EXISTS i2;\n"
        "CREATE VIEW v AS SELECT * FROM read_only; COMMENT ON COLUMN tc.x IS 'a'; GRANT SELECT ON t3 TO PUBLIC;\n"
        "ALTER TABLE t4 RENAME TO t5; DROP FUNCTION f2(INT); CREATE TYPE ty AS ENUM ('a'); ALTER SEQUENCE s2 RESTART;\n"
        "CREATE TRIGGER tr AFTER INSERT ON t6 FOR EACH ROW EXECUTE FUNCTION trigger_fn();\n"
        "INSERT INTO rows_only VALUES (1); UPDATE other SET id = 2; CREATE TABLE t7 AS SELECT * FROM read_only;\n")
    assert found == {"t", "i1", "t2", "i2", "v", "tc", "t3", "t4", "t5", "f2", "ty", "s2", "tr", "t6", "t7"}


def test_a_data_files_rows_are_skipped_by_their_first_word_and_its_ddl_still_found():
    """file_targets builds no tree for a statement whose first word makes it data (INSERT, WITH ... INSERT, COPY...):
    the DDL between them, after a comment, or with a body holding an INSERT, is still found, as a whole parse finds."""
    from pglast import parse_sql

    text = ("INSERT INTO rows_a VALUES (1);\n-- a comment first\nCREATE TABLE t1 (id INT);\n"
            "WITH w AS (SELECT 1) INSERT INTO rows_b SELECT * FROM w;\n/* block */ ALTER TABLE t2 ADD COLUMN c INT;\n"
            "CREATE FUNCTION f1() RETURNS INT LANGUAGE sql BEGIN ATOMIC INSERT INTO rows_c VALUES (1); SELECT 1; END;\n"
            "values (1); select 1 into t_into_is_read; (SELECT 1); DELETE FROM rows_d; UPDATE rows_e SET x = 1;\n"
            "INSERT INTO rows_f VALUES (2);CREATE INDEX i1 ON t3 (x);copy rows_g from '/dev/null';"
            "CREATE TABLE t4 AS WITH w AS (SELECT 1) SELECT * FROM w;\n")
    whole = set()
    for raw in parse_sql(text):  # the reference: every statement's tree, the data ones too
        kind = type(raw.stmt).__name__
        if kind not in targets.NOT_DDL:
            for name in targets.FIELDS:
                if name not in targets.SKIP.get(kind, ()):
                    targets._collect(getattr(raw.stmt, name, None), whole)
    assert targets.file_targets(text) == whole == {"t1", "t2", "f1", "i1", "t3", "t4"}


def test_a_run_waits_for_the_schemas_bookkeeping_lock_after_its_migration_committed(cli, db, tmp_path):
    """Another service's run holds the shared bookkeeping lock when this one's migration commits: the snapshot
    update waits for it (not the 300 ms DDL lock_timeout), so the run succeeds and its change is not drift."""
    from migrator import pg_lock

    folder = tmp_path / "a"
    write(folder, "V1__a.sql", "CREATE TABLE a_t (id INT);\n")
    assert here(cli, db, folder, "a_hist", "migrate").exit_code == 0
    write(folder, "V2__c.sql", f"ALTER TABLE a_t ADD COLUMN c INT;\nSELECT pg_advisory_xact_lock({GATE});\n")
    key = pg_lock.lock_key(":bookkeeping public")
    holding = threading.Thread(target=db.query, args=("SELECT pg_advisory_xact_lock(%s), pg_sleep(2)", (key,)))
    with paused(db, folder, "a_hist") as process:  # the run waits inside V2, past every earlier bookkeeping step
        holding.start()  # another service's run records for 2 s, from the moment V2 commits
        while not db.poll("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                          "AND classid = %s AND objid = %s", (key >> 32, key & 0xFFFF_FFFF))[0][0]:
            time.sleep(0.05)
    holding.join()
    assert process.returncode == 0
    assert db.query("SELECT version, success FROM a_hist WHERE version IS NOT NULL ORDER BY installed_rank") == \
        [("1", True), ("2", True)]
    assert ok(status(cli, db, folder, "a_hist"))  # its own change is not drift


def test_a_bookkeeping_lock_held_too_long_is_named_in_one_line(cli, db, tmp_path):
    from migrator import pg_lock
    from migrator.errors import LOCKED

    folder = tmp_path / "a"
    write(folder, "V1__a.sql", "CREATE TABLE a_t (id INT);\n")
    with db.server.connect(db.name) as other, other.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", (pg_lock.lock_key(":bookkeeping public"),))
        done = here(cli, db, folder, "a_hist", "migrate", "--lock-timeout", "1")
    assert done.exit_code == LOCKED, done.output
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the shared bookkeeping lock of schema public (advisory lock ") and \
        "held by server pid" in line and "raise --lock-timeout" in line, line
    assert "a_t" not in db.tables()  # refused before anything ran


def test_overlapping_locations_read_each_file_once(cli, db, tmp_path):
    write(tmp_path / "sql" / "main", "V1__a.sql", "CREATE TABLE a (id INT);\n")
    write(tmp_path / "sql" / "seed", "V2__b.sql", "CREATE TABLE b (id INT);\n")
    main, top = tmp_path / "sql" / "main", tmp_path / "sql"
    for n, locations in enumerate((f"filesystem:{main},filesystem:{main}", f"filesystem:{top},filesystem:{main}")):
        env = {**db.db_env(), "FLYWAY_LOCATIONS": locations, "SCHEMA_TABLE": f"h{n}"}
        status = ok(cli("status", env=env))  # (before: "share the version 1", one file read twice)
        assert ("1 pending" if n == 0 else "2 pending") in status.stdout, status.stdout


def test_a_takeover_claims_the_tables_its_files_change_not_those_they_mention(cli, db, tmp_path):
    """Flyway migrated a service that only reads another's table (a view, an INSERT ... SELECT): the runner's first
    run claims its own objects only, so a hand change to the other table is not its drift."""
    db.query("CREATE TABLE plan (id INT)")  # another service's table, unowned
    folder = tmp_path / "census"
    write(folder, "V1__census.sql", "CREATE TABLE census (id INT);\n")
    write(folder, "V2__view.sql", "CREATE VIEW census_plan AS SELECT id FROM plan;\n-- plan is read, not changed\n")
    db.query("CREATE TABLE census (id INT); CREATE VIEW census_plan AS SELECT id FROM plan; "
             "CREATE TABLE census_history (installed_rank INT PRIMARY KEY, version VARCHAR(50), "
             "description VARCHAR(200) NOT NULL, type VARCHAR(20) NOT NULL, script VARCHAR(1000) NOT NULL, "
             "checksum INT, installed_by VARCHAR(100) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT now(), "
             "execution_time INT NOT NULL, success BOOLEAN NOT NULL)")
    from migrator.postgres import flyway
    for rank, name in ((1, "V1__census.sql"), (2, "V2__view.sql")):
        db.query("INSERT INTO census_history VALUES (%s, %s, %s, 'SQL', %s, %s, 'flyway', now(), 1, true)",
                 (rank, str(rank), flyway.description(name), name, flyway.checksum(folder / name)))
    ok(cli("migrate", "--sql-dir", folder, env={**db.db_env(), "SCHEMA_TABLE": "census_history"}))
    assert owned(db)["census_history"] == {"table public.census", "view public.census_plan"}
