"""A bookkeeping table planted after the connect-time check is refused before its first use (sixth review, #1).

The runner verifies its tables at connect (trust.py) and creates missing ones later. A role with CREATE
on the schema that makes one in between (made deterministic here as in the review: it holds the schema's
":bookkeeping" advisory lock until the runner waits on it, plants, lets go) must be refused in one line, and its
trigger never runs as the migration role.
"""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from test_planted_objects import hits, hits_table, low, refusal, writable_by  # noqa: F401 (low: a fixture)

SHAPES = {
    "yoyo_lock": "locked INT DEFAULT 1, ctime TIMESTAMP, pid INT NOT NULL, runner TEXT, PRIMARY KEY (locked)",
    "_hcm_migration_checksum": "migration_id VARCHAR(255) PRIMARY KEY, sha256 CHAR(64) NOT NULL, "
                               "recorded_at TIMESTAMP NOT NULL DEFAULT now()",
    "flyway_schema_history": "installed_rank INT PRIMARY KEY, version VARCHAR(50), description VARCHAR(200), "
                             "type VARCHAR(20), script VARCHAR(1000), checksum INT, installed_by VARCHAR(100), "
                             "installed_on TIMESTAMP DEFAULT now(), execution_time INT, success BOOLEAN",
    "_hcm_schema_snapshot": "id BOOLEAN PRIMARY KEY DEFAULT true, description JSONB NOT NULL, sha256 CHAR(64) NOT NULL, "
                            "last_migration VARCHAR(255), recorded_at TIMESTAMP NOT NULL DEFAULT now(), "
                            "recorded_by TEXT NOT NULL, reason TEXT NOT NULL, fingerprint TEXT",
    "_hcm_migration_failure": "migration_id VARCHAR(255) PRIMARY KEY, failed_at TIMESTAMP NOT NULL DEFAULT now(), "
                              "what TEXT NOT NULL",
}


def planted(schema: str, table: str) -> str:
    """`table` with a trigger recording who writes it, and a row-level policy recording who reads it."""
    return f"""
        CREATE TABLE {schema}.{table} ({SHAPES[table]});
        GRANT ALL ON {schema}.{table} TO PUBLIC;
        CREATE FUNCTION {schema}.planted_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO {schema}.planted_hits VALUES (current_user, 'trigger'); RETURN NEW; END $$;
        CREATE FUNCTION {schema}.planted_policy() RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO {schema}.planted_hits VALUES (current_user, 'policy'); RETURN true; END $$;
        CREATE TRIGGER planted BEFORE INSERT OR UPDATE OR DELETE ON {schema}.{table}
            FOR EACH ROW EXECUTE FUNCTION {schema}.planted_trigger();
        ALTER TABLE {schema}.{table} ENABLE ROW LEVEL SECURITY;
        CREATE POLICY planted ON {schema}.{table} USING ({schema}.planted_policy()) WITH CHECK (true)"""


def race(db, low: str, schema: str, table: str, run):
    """`run()` while `low` holds the schema's bookkeeping lock; once the runner waits on it, `low` plants
    `table` and lets go. Returns run()'s result."""
    from migrator.pg_lock import lock_key

    key = lock_key(f":bookkeeping {schema}")
    evil = psycopg2.connect(dbname=db.name, user=low, host=db.server.host, port=db.server.port)
    evil.autocommit = True
    cursor = evil.cursor()
    cursor.execute("SELECT pg_advisory_lock(%s)", (key,))
    errors = []

    def plant():
        try:
            # the runner polls the lock (pg_try_advisory_lock): it waits once its try on that key is seen
            tried = f"%pg_try_advisory_%lock({key})%"
            for _ in range(1200):
                if db.query("SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                            (tried,))[0][0]:
                    break
                time.sleep(0.05)
            cursor.execute(planted(schema, table))
        except Exception as exc:  # (said by the test, not lost in the thread)
            errors.append(exc)
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", (key,))

    planter = threading.Thread(target=plant)
    planter.start()
    try:
        result = run()
    finally:
        planter.join()
        evil.close()
    assert not errors, errors
    assert db.query(f"SELECT relowner::regrole::text FROM pg_class WHERE oid = '{schema}.{table}'::regclass") == [
        (low,)], "the planter made the table while the runner waited"
    return result


@pytest.mark.parametrize("schema, table", [("rs", "yoyo_lock"), ("rs", "_hcm_migration_checksum"),
                                           ("public", "yoyo_lock")])  # (public: plain mode, PUBLIC may CREATE)
def test_a_table_planted_while_the_runner_waits_to_create_it_is_refused(cli, db, sql_dir, low, schema, table):
    writable_by(db, schema, low)
    db.query(hits_table(schema, low))
    args = [] if schema == "public" else ["--schema", schema]
    result = race(db, low, schema, table, lambda: cli("migrate", "--sql-dir", sql_dir, *args, env=db.db_env()))
    line = refusal(result)
    assert f"refusing the migration history in schema {schema}" in line, line
    assert f"{schema}.{table} is owned by role {low}" in line and "has trigger planted" in line, line
    assert hits(db, schema) == [], "the planted trigger or policy ran as the migration role"
    assert db.query(f"SELECT to_regclass('{schema}.hcm_report_metadata')") == [(None,)], "no migration ran"


def test_a_flyway_history_planted_while_the_runner_waits_is_refused(cli, db, tmp_path, low):
    folder = tmp_path / "flyway"
    folder.mkdir()
    (folder / "V20240101120000__create_x.sql").write_text("CREATE TABLE rf_x (id int);\n")
    writable_by(db, "rf", low)
    db.query(hits_table("rf", low))
    result = race(db, low, "rf", "flyway_schema_history",
                  lambda: cli("migrate", "--sql-dir", str(folder), "--schema", "rf", env=db.db_env()))
    line = refusal(result)
    assert f"rf.flyway_schema_history is owned by role {low}" in line and "has row-level security" in line, line
    assert hits(db, "rf") == [], "the planted trigger or policy ran as the migration role"
    assert db.query("SELECT to_regclass('rf.rf_x')") == [(None,)], "no migration ran"


def test_a_snapshot_table_planted_after_connect_is_refused_at_its_first_record(cli, db, sql_dir, low):
    """No lock trick: the snapshot's table is made at the first record, as the first migration lands; one
    planted meanwhile (here: by that migration, as a stand-in for another session) is refused."""
    from conftest import add_migration

    writable_by(db, "rn", low)
    db.query(hits_table("rn", low))
    body = planted("rn", "_hcm_schema_snapshot")
    add_migration(sql_dir, "0000_plant", f"SET ROLE {low};\n{body};\nRESET ROLE;\n", "SELECT 1;\n")  # (the first)
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "rn", env=db.db_env())
    line = refusal(result)
    assert f"rn._hcm_schema_snapshot is owned by role {low}" in line, line
    assert hits(db, "rn") == [], "the planted trigger or policy ran as the migration role"


def test_doctor_says_one_fail_naming_a_view_planted_as_the_flyway_history(cli, db, tmp_path, low):
    """A view named as the Flyway table: one FAIL naming it and its owner, nothing read from it, no second FAIL
    from a write doctor's read-only session cannot make."""
    folder = tmp_path / "flyway"
    folder.mkdir()
    (folder / "V1__a.sql").write_text("CREATE TABLE fw1 (id int);\n")
    writable_by(db, "fw", low)
    db.query(hits_table("fw", low) + f"""; SET ROLE {low};
        CREATE FUNCTION fw.f() RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO fw.planted_hits VALUES (current_user, 'view'); RETURN true; END $$;
        CREATE VIEW fw.flyway_schema_history AS SELECT 1 installed_rank, '1'::varchar version,
            'a'::varchar description, 'SQL'::varchar type, 'V1__a.sql'::varchar script, 0 checksum,
            'x'::varchar installed_by, now()::timestamp installed_on, 1 execution_time, fw.f() success;
        GRANT SELECT ON fw.flyway_schema_history TO PUBLIC; RESET ROLE""")
    doctor = cli("doctor", "--sql-dir", str(folder), "--schema", "fw", env=db.db_env())
    assert doctor.exit_code == 1, doctor.output
    fails = [line for line in doctor.output.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1, doctor.output
    assert f"fw.flyway_schema_history is owned by role {low}" in fails[0] and "not a plain table" in fails[0], fails
    assert "read-only transaction" not in doctor.output, doctor.output
    assert hits(db, "fw") == [], "doctor read the planted view"


def test_a_failure_table_planted_while_the_runner_waits_is_refused_at_the_first_failure(cli, db, sql_dir, low):
    """The failure table is made lazily, when a non-transactional file first fails part-way."""
    from conftest import add_migration

    add_migration(sql_dir, "0002_half", "-- transactional: false\nCREATE TABLE rh_one (id int);\nSELECT 1/0;\n",
                  "-- transactional: false\nDROP TABLE rh_one;\n")
    writable_by(db, "rh", low)
    db.query(hits_table("rh", low))
    result = race(db, low, "rh", "_hcm_migration_failure",
                  lambda: cli("migrate", "--sql-dir", sql_dir, "--schema", "rh", env=db.db_env()))
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert f"rh._hcm_migration_failure is owned by role {low}" in result.output, result.output
    assert hits(db, "rh") == [], "the planted trigger or policy ran as the migration role"


def test_a_session_holding_the_bookkeeping_lock_is_named_and_waited_for_within_lock_timeout(cli, db, sql_dir, low):
    """Any role that can connect can take the schema's bookkeeping lock (its key is no secret): the run waits
    --lock-timeout, then says which lock and who holds it, with the held-lock exit code; never "cannot connect"."""
    from migrator.pg_lock import lock_key

    holder = psycopg2.connect(dbname=db.name, user=low, host=db.server.host, port=db.server.port,
                              application_name="squatter")
    holder.autocommit = True
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (lock_key(":bookkeeping bk"),))
    try:
        result = cli("migrate", "--sql-dir", sql_dir, "--schema", "bk", "--create-schemas", "--lock-timeout", "1",
                     env=db.db_env())
    finally:
        holder.close()
    line = next((line for line in result.stderr.splitlines() if line.startswith("[bk] FAILED")), result.output)
    assert result.exit_code == 4 and "cannot connect" not in line, result.output
    assert "shared bookkeeping lock of schema bk" in line and "squatter" in line and "within 1 s" in line, line
