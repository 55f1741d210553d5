"""Flyway folders as they are (V/U/R files, several locations) and Flyway 10's history table, read and written.

The samples are written here, one per shape seen in the platform's folders: 14-digit timestamps, invalid dates
used as numbers, 12- and 14-digit versions mixed, dotted versions, descriptions with spaces and `-`.
The tests against real Flyway 10 (tests/test_flyway_real.py) prove the two interchangeable.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import one_error_line, ok
from migrator.errors import MigratorError
from migrator.postgres import flyway

HISTORY = "flyway_schema_history"


def write(folder: Path, name: str, sql: str = "SELECT 1;\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql)
    return folder / name


def rows(db, table: str = HISTORY, schema: str = "public") -> list[tuple]:
    return db.query(f'SELECT installed_rank, version, description, type, script, checksum, success '
                    f'FROM "{schema}"."{table}" ORDER BY installed_rank')


@pytest.fixture
def service(tmp_path: Path) -> Path:
    """A service's folder: every naming shape of the platform's, in an order text sorting would get wrong."""
    folder = tmp_path / "db" / "migration" / "main"
    write(folder, "V20230101120000__create_plan.sql", "CREATE TABLE plan (id INT PRIMARY KEY, name TEXT);\n")
    write(folder, "V202301011300__create_facility.sql", "CREATE TABLE facility (id INT PRIMARY KEY);\n")  # 12 digits
    write(folder, "V20242109141800__add_plan_status.sql", "ALTER TABLE plan ADD COLUMN status TEXT;\n")  # not a date
    write(folder, "V20242112141500__alter plan_facility_add_column.sql", "ALTER TABLE facility ADD COLUMN plan_id INT;\n")
    write(folder, "V20242112141501__add-plan-index.sql", "CREATE INDEX plan_name_idx ON plan (name);\n")
    write(folder, "V20242412090311.1__dotted_version.sql", "ALTER TABLE plan ADD COLUMN dotted INT;\n")
    write(folder, "U20242412090311.1__dotted_version.sql", "ALTER TABLE plan DROP COLUMN dotted;\n")
    write(folder, "R__plan_view.sql", "CREATE OR REPLACE VIEW plan_view AS SELECT id, name FROM plan;\n")
    return folder


def test_versions_compare_part_by_part_as_integers():
    assert flyway.version_key("1.10") > flyway.version_key("1.9")
    assert flyway.version_key("1_2") == flyway.version_key("1.2")
    assert flyway.version_key("1.0.0") == flyway.version_key("1")
    assert flyway.version_key("202301011300") < flyway.version_key("20230101120000")  # 12 before 14 digits
    assert flyway.version_key("20242412090311.1") > flyway.version_key("20242412090311")


def test_a_service_folder_is_read_in_flyways_order(service):
    names = [p.name for p in flyway.check_names(service)]
    assert names == ["V202301011300__create_facility.sql", "V20230101120000__create_plan.sql",
                     "V20242109141800__add_plan_status.sql", "V20242112141500__alter plan_facility_add_column.sql",
                     "V20242112141501__add-plan-index.sql", "V20242412090311.1__dotted_version.sql",
                     "R__plan_view.sql"]
    assert flyway.description("V20242112141500__alter plan_facility_add_column.sql") == "alter plan facility add column"


@pytest.mark.parametrize("first, second", [("V1__a.sql", "V1__b.sql"), ("V1.0__a.sql", "V1__b.sql"),
                                           ("V1_2__a.sql", "V1.2__b.sql")])
def test_two_files_of_one_version_are_refused_naming_both(tmp_path, first, second):
    write(tmp_path, first)
    write(tmp_path, second)
    with pytest.raises(MigratorError) as refused:
        flyway.check_names(tmp_path)
    assert first in str(refused.value) and second in str(refused.value)


@pytest.mark.parametrize("name, complaint", [
    ("V1_create.sql", "not a valid Flyway migration file name"),
    ("V1__bad\nname.sql", "not a valid Flyway migration file name"),
    ("U3__orphan.sql", "an undo file without its migration V3__*.sql"),
    ("0002_old_style.sql", "mixes the runner's NNNN_name.sql files (0002_old_style.sql) with Flyway's"),
    ("afterMigrate.sql", "afterMigrate.sql: a Flyway callback"),
    ("beforeMigrate__grants.sql", "the runner does not run callbacks"),
    ("V2__it's.sql", "no quote, backslash or control character"),
    ("V2__a\u202eb.sql", "not a valid Flyway migration file name"),  # a bidirectional override
])
def test_misnamed_files_and_mixed_folders_are_refused_in_one_line(cli, tmp_path, name, complaint):
    write(tmp_path, "V1__init.sql")
    write(tmp_path, name)
    line = one_error_line(cli("plan", "--sql-dir", tmp_path, "--database-url", "postgresql://x@127.0.0.1:1/x"))
    assert complaint in line


def test_migrate_applies_in_version_order_and_writes_flyways_rows(cli, db, service):
    result = ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    assert [r[4] for r in rows(db)] == [p.name for p in flyway.check_names(service)]
    first = rows(db)[0]
    assert first[:4] == (1, "202301011300", "create facility", "SQL")
    assert first[5] == flyway.checksum(service / first[4]) and first[6] is True
    assert rows(db)[-1][1:4] == (None, "plan view", "SQL")  # the repeatable, last, without a version
    assert db.query("SELECT count(*) FROM plan_view") == [(0,)]
    status = ok(cli("status", "--sql-dir", service, env=db.db_env()))
    assert "7 applied, 0 pending" in status.stdout, status.stdout


def test_a_repeatable_runs_again_only_when_its_checksum_changed(cli, db, service):
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    assert len(rows(db)) == 7
    write(service, "R__plan_view.sql", "CREATE OR REPLACE VIEW plan_view AS SELECT id, name, status FROM plan;\n")
    plan = ok(cli("plan", "--sql-dir", service, env=db.db_env()))
    assert "R__plan_view" in plan.stdout and "V2023" not in plan.stdout
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    assert [r[4] for r in rows(db)][-2:] == ["R__plan_view.sql", "R__plan_view.sql"]
    assert db.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'plan_view'") == [(3,)]


def test_an_edited_applied_file_is_drift_by_flyways_checksum(cli, db, service):
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    write(service, "V20242109141800__add_plan_status.sql", "ALTER TABLE plan ADD COLUMN status VARCHAR(9);\n")
    line = one_error_line(cli("migrate", "--sql-dir", service, env=db.db_env()))
    assert "V20242109141800__add_plan_status.sql changed since applied" in line
    ok(cli("sql", "accept-changes", "V20242109141800__add_plan_status", "--sql-dir", service, env=db.db_env()))
    assert db.query(f"SELECT checksum FROM {HISTORY} WHERE version = '20242109141800'") == [
        (flyway.checksum(service / "V20242109141800__add_plan_status.sql"),)]
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))


def test_an_older_version_is_applied_out_of_order_with_a_note_or_refused(cli, db, service):
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    write(service, "V20230601000000__late_branch.sql", "CREATE TABLE late (id INT);\n")
    refused = cli("migrate", "--sql-dir", service, env={**db.db_env(), "FLYWAY_OUT_OF_ORDER": "false"})
    assert "V20230601000000__late_branch older than the newest applied version" in one_error_line(refused)
    done = ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    assert "applied out of order" in done.stderr
    assert "late" in db.tables()


def test_rollback_runs_the_u_file_and_removes_flyways_row(cli, db, tmp_path):
    write(tmp_path, "V1__create_a.sql", "CREATE TABLE a (id INT);\n")
    write(tmp_path, "V1.1__create_b.sql", "CREATE TABLE b (id INT);\n")
    write(tmp_path, "U1.1__drop_b.sql", "DROP TABLE b;\n")
    write(tmp_path, "R__a_view.sql", "CREATE OR REPLACE VIEW a_view AS SELECT id FROM a;\n")  # applied last, no undo
    ok(cli("migrate", "--sql-dir", tmp_path, env=db.db_env()))
    ok(cli("sql", "rollback", "--sql-dir", tmp_path, env=db.db_env()))
    assert "b" not in db.tables() and [r[4] for r in rows(db)] == ["V1__create_a.sql", "R__a_view.sql"]
    ok(cli("migrate", "--sql-dir", tmp_path, env=db.db_env()))
    assert [r[4] for r in rows(db)] == ["V1__create_a.sql", "R__a_view.sql", "V1.1__create_b.sql"]


def test_several_flyway_locations_are_merged_in_version_order(cli, db, tmp_path):
    write(tmp_path / "main", "V2__create_b.sql", "CREATE TABLE b (id INT);\n")
    write(tmp_path / "main", "V10__fill_b.sql", "INSERT INTO b SELECT id FROM seed_a;\n")
    write(tmp_path / "seed", "V3__seed_a.sql", "CREATE TABLE seed_a AS SELECT 1 AS id;\n")
    locations = f"filesystem:{tmp_path / 'main'},filesystem:{tmp_path / 'seed'}"
    ok(cli("migrate", env={**db.db_env(), "FLYWAY_LOCATIONS": locations}))
    assert [r[4] for r in rows(db)] == ["V2__create_b.sql", "V3__seed_a.sql", "V10__fill_b.sql"]
    assert db.query("SELECT id FROM b") == [(1,)]


def test_sql_new_in_a_flyway_folder_writes_a_utc_timestamp_and_its_undo(cli, tmp_path):
    tmp_path = tmp_path / "sql"
    write(tmp_path, "V20230101120000__create_plan.sql")
    before = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    result = ok(cli("sql", "new", "add census", "--sql-dir", tmp_path))
    created = sorted(p.name for p in tmp_path.iterdir() if p.name != "V20230101120000__create_plan.sql")
    assert len(created) == 2 and created[0].startswith("U") and created[1].startswith("V"), created
    stamp = re.match(r"V(\d{14})__add_census\.sql$", created[1])[1]
    assert stamp >= before and created[0] == f"U{stamp}__add_census.sql"
    assert created[1] in result.stdout


def test_services_sharing_a_schema_keep_their_own_histories_even_for_one_file_name(cli, db, tmp_path):
    plan, census = tmp_path / "plan", tmp_path / "census"
    write(plan, "V1__init.sql", "CREATE TABLE plan (id INT);\n")
    write(census, "V1__init.sql", "CREATE TABLE census (id INT);\n")
    write(census, "V2__census_view.sql", "CREATE VIEW census_plans AS SELECT p.id FROM plan p;\n")  # reads plan's
    ok(cli("migrate", "--sql-dir", plan, env={**db.db_env(), "SCHEMA_TABLE": "plan_history"}))
    ok(cli("migrate", "--sql-dir", census, env={**db.db_env(), "SCHEMA_TABLE": "census_history"}))
    assert {"plan", "census", "census_plans"} <= db.tables()
    # yoyo's marks are per history too: neither service's run takes the other's away
    assert db.query("SELECT count(*) FROM _yoyo_migration WHERE migration_id = 'V1__init'") == [(2,)]
    assert [r[4] for r in rows(db, "plan_history")] == ["V1__init.sql"]
    assert [r[4] for r in rows(db, "census_history")] == ["V1__init.sql", "V2__census_view.sql"]
    status = ok(cli("status", "--sql-dir", plan, env={**db.db_env(), "SCHEMA_TABLE": "plan_history"}))
    assert "1 applied, 0 pending" in status.stdout, status.stdout
    write(plan, "V2__plan_name.sql", "ALTER TABLE plan ADD COLUMN name TEXT;\n")
    plan_run = ok(cli("migrate", "--sql-dir", plan, env={**db.db_env(), "SCHEMA_TABLE": "plan_history"}))
    assert "V2__plan_name" in plan_run.stdout and "census" not in plan_run.stdout
    assert [r[4] for r in rows(db, "census_history")] == ["V1__init.sql", "V2__census_view.sql"]


def test_doctor_reports_the_flyway_history_and_what_the_next_migrate_does(cli, db, service):
    before = cli("doctor", "--sql-dir", service, env=db.db_env())
    assert "no public.flyway_schema_history yet: the next migrate creates it in Flyway 10's format" in before.stdout, \
        before.output
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    write(service, "V20250101000000__create_census.sql", "CREATE TABLE census (id INT);\n")
    after = cli("doctor", "--sql-dir", service, env=db.db_env())
    assert ("public.flyway_schema_history: 7 row(s), newest version 20242412090311.1; the next migrate takes them as "
            "applied (nothing re-applied) and applies 1 pending") in after.stdout, after.output


def test_another_services_folder_does_not_list_this_repositorys_mongo_patches(cli, db, service, tmp_path):
    plan = ok(cli("plan", "--sql-dir", service, env=db.db_env()))
    assert "-- MongoDB: not configured, skipped" in plan.stdout and "patches in mongo/" not in plan.stdout
    doctor = cli("doctor", "--sql-dir", service, env=db.db_env())
    assert "not configured, and no patches: Mongo is skipped" in doctor.stdout, doctor.output
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "0001_fix.js").write_text("db.x.insertOne({});\n")
    given = ok(cli("plan", "--sql-dir", service, "--mongo-dir", tmp_path / "patches", env=db.db_env()))
    assert "patches in patches/: 0001_fix" in given.stdout


def test_lint_pending_lints_only_the_files_not_yet_applied(cli, db, tmp_path):
    from migrator.lint import squawk_path

    if squawk_path() is None:
        pytest.skip("squawk is not installed (`make install` brings it)")
    write(tmp_path / "sql", "V1__old.sql", "CREATE INDEX old_idx ON plan (name);\n")  # blocking: a finding
    write(tmp_path / "sql", "V0__plan.sql", "CREATE TABLE plan (name TEXT);\n")
    ok(cli("migrate", "--sql-dir", tmp_path / "sql", env=db.db_env()))
    write(tmp_path / "sql", "V2__new.sql", "CREATE INDEX new_idx ON plan (name);\n")
    everything = cli("sql", "lint", "--sql-dir", tmp_path / "sql", env=db.db_env())
    assert "V1__old.sql" in everything.stdout and "V2__new.sql" in everything.stdout, everything.output
    pending = cli("sql", "lint", "--pending", "--sql-dir", tmp_path / "sql", env=db.db_env())
    assert pending.exit_code == 1 and "V2__new.sql" in pending.stdout and "V1__old.sql" not in pending.stdout


def test_a_flyway_file_of_concurrently_statements_runs_without_a_transaction_as_flyway_does(cli, db, tmp_path):
    write(tmp_path / "sql", "V1__create_a.sql", "CREATE TABLE a (id INT);\n")
    write(tmp_path / "sql", "V2__index_a.sql", "CREATE INDEX CONCURRENTLY a_idx ON a (id);\n")
    plan = ok(cli("plan", "--sql-dir", tmp_path / "sql", env=db.db_env()))
    assert "V2__index_a.sql (not transactional)" in plan.stdout
    ok(cli("migrate", "--sql-dir", tmp_path / "sql", env=db.db_env()))
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'a_idx'::regclass") == [(True,)]


def test_verify_and_adopt_work_on_a_flyway_folder(cli, pg, db, tmp_path):
    folder = tmp_path / "sql"
    write(folder, "V1__create_a.sql", "CREATE TABLE a (id INT);\n")
    write(folder, "U1__drop_a.sql", "DROP TABLE a;\n")
    write(folder, "V1.1__create_b.sql", "CREATE TABLE b (id INT);\n")
    write(folder, "U1.1__drop_b.sql", "DROP TABLE b;\n")
    verified = cli("sql", "verify", "--sql-dir", folder, "--scratch-url", pg.scratch_url())
    assert verified.exit_code == 0 and "V1.1__create_b: up, down, up: ok" in verified.stdout, verified.output
    db.query("CREATE TABLE a (id INT)")  # made by hand, as V1 makes it
    adopted = cli("sql", "adopt", "--yes", "--sql-dir", folder, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert adopted.exit_code == 0 and "adopt: marked V1__create_a applied" in adopted.stdout, adopted.output
    assert [(r[1], r[4], r[6]) for r in rows(db)] == [("1", "V1__create_a.sql", True)]  # Flyway's row, as repair+insert
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert [r[4] for r in rows(db)] == ["V1__create_a.sql", "V1.1__create_b.sql"]


def test_a_services_drift_is_its_own_objects_never_another_services(cli, db, tmp_path):
    plan, census = tmp_path / "plan", tmp_path / "census"
    write(plan, "V1__create_plan.sql", "CREATE TABLE plan (id INT);\n")
    write(census, "V1__create_census.sql", "CREATE TABLE census (id INT);\n")
    plan_env, census_env = ({**db.db_env(), "SCHEMA_TABLE": t} for t in ("plan_history", "census_history"))
    ok(cli("migrate", "--sql-dir", plan, env=plan_env))
    ok(cli("migrate", "--sql-dir", census, env=census_env))
    db.query("CREATE TABLE census_extra (id INT)")  # another service's change, made as real Flyway would
    db.query("CREATE INDEX census_id ON census (id)")
    assert cli("status", "--exit-code", "--sql-dir", plan, env=plan_env).exit_code == 0  # not plan's drift
    ok(cli("migrate", "--strict", "--sql-dir", plan, env=plan_env))
    db.query("ALTER TABLE plan ADD COLUMN by_hand INT")  # a hand change to one of plan's own tables
    status = cli("status", "--exit-code", "--sql-dir", plan, env=plan_env)
    assert status.exit_code == 5 and "column plan.by_hand added" in status.stdout, status.output
    assert "census" not in status.stdout


def test_a_history_taken_over_from_flyway_owns_the_objects_its_files_name(cli, db, tmp_path):
    folder = tmp_path / "plan"
    write(folder, "V1__create_plan.sql", "CREATE TABLE plan (id INT);\n")
    db.query("CREATE TABLE plan (id INT); CREATE TABLE census (id INT)")  # census: another service's
    ok(cli("sql", "mark", "V1__create_plan", "--sql-dir", folder, env=db.db_env()))  # as Flyway would have recorded
    db.query("DELETE FROM _yoyo_migration; DROP TABLE IF EXISTS _hcm_schema_owned")  # (as only Flyway ran it)
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    db.query("ALTER TABLE census ADD COLUMN x INT")
    assert cli("status", "--exit-code", "--sql-dir", folder, env=db.db_env()).exit_code == 0
    db.query("ALTER TABLE plan ADD COLUMN x INT")
    assert cli("status", "--exit-code", "--sql-dir", folder, env=db.db_env()).exit_code == 5


def test_plan_impact_on_a_database_flyway_migrated_measures_only_the_new_file(cli, pg, db, tmp_path):
    folder = tmp_path / "sql"
    write(folder, "V1__create_plan.sql", "CREATE TABLE plan (id INT);\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    db.query("DELETE FROM _yoyo_migration")  # as a database only Flyway ran: its table alone says V1 is applied
    write(folder, "V2__index_plan.sql", "CREATE INDEX plan_id ON plan (id);\n")
    result = ok(cli("plan", "--impact", "--json", "--sql-dir", folder, "--scratch-url", pg.scratch_url(),
                    env=db.db_env()))
    assert [m["id"] for m in json.loads(result.stdout)["migrations"]] == ["V2__index_plan"], result.stdout


def test_a_read_only_flyway_file_gets_its_row_after_the_commit(cli, db, tmp_path):
    write(tmp_path / "sql", "V1__check.sql", "SET TRANSACTION READ ONLY;\nSELECT 1;\n")
    ok(cli("migrate", "--sql-dir", tmp_path / "sql", env=db.db_env()))
    assert [(r[4], r[6]) for r in rows(db)] == [("V1__check.sql", True)]
    assert "0 pending" in ok(cli("status", "--sql-dir", tmp_path / "sql", env=db.db_env())).stdout


def test_an_applied_file_renamed_is_never_applied_again_and_a_new_description_is_refused(cli, db, tmp_path):
    """A history row belongs to its version (Flyway's key), not its script name: `V1` renamed `V01` is the same
    migration; a new description is refused in one line, as Flyway's validate does."""
    folder = tmp_path / "main"
    first = write(folder, "V1__x.sql", "CREATE TABLE x (id INT);\n")
    write(folder, "V2__seed_a.sql", "INSERT INTO x VALUES (1);\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    first.rename(folder / "V01__x.sql")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert [r[1] for r in rows(db)] == ["1", "2"]
    (folder / "V2__seed_a.sql").rename(folder / "V2__seed_table_a.sql")
    status = cli("status", "--sql-dir", folder, env=db.db_env())
    assert "2 applied, 0 pending" in status.stdout, status.output
    refused = cli("migrate", "--sql-dir", folder, env=db.db_env())
    line = one_error_line(refused)
    assert "V2__seed_table_a.sql" in line and "version 2" in line and "'seed a'" in line and "V2__seed_a.sql" in line
    assert db.query("SELECT count(*) FROM x") == [(1,)] and len(rows(db)) == 2
    ok(cli("sql", "accept-changes", "V2__seed_table_a", "--sql-dir", folder, env=db.db_env()))
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert rows(db)[1][2:5] == ("seed table a", "SQL", "V2__seed_table_a.sql")
    assert db.query("SELECT count(*) FROM x") == [(1,)]


def test_a_missing_history_table_is_an_empty_history_for_every_command(cli, db, tmp_path):
    """A new service with no history yet: another service's yoyo marks of the same file name are not its own."""
    runner_d, service_e = tmp_path / "d", tmp_path / "e"
    write(runner_d, "V1__init.sql", "CREATE TABLE d (id INT);\n")
    write(service_e, "V1__init.sql", "CREATE TABLE e (id INT);\n")
    ok(cli("migrate", "--sql-dir", runner_d, env={**db.db_env(), "SCHEMA_TABLE": "hist_d"}))
    status = cli("status", "--sql-dir", service_e, env={**db.db_env(), "SCHEMA_TABLE": "hist_e"})
    assert "0 applied, 1 pending" in status.stdout and "CHANGED" not in status.stdout, status.output
    plan = ok(cli("plan", "--sql-dir", service_e, env={**db.db_env(), "SCHEMA_TABLE": "hist_e"}))
    assert "CREATE TABLE e" in plan.stdout


def test_a_wrong_schema_table_is_named_when_another_history_records_this_folder(cli, db, service):
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    wrong = {**db.db_env(), "SCHEMA_TABLE": "wrong_name"}
    status = cli("status", "--sql-dir", service, env=wrong)
    assert "0 applied, 7 pending" in status.stdout, status.output
    doctor = cli("doctor", "--sql-dir", service, env=wrong)
    assert "but flyway_schema_history records V202301011300__create_facility.sql of this folder applied" in \
        doctor.stdout and doctor.exit_code != 0, doctor.output
    refused = cli("migrate", "--sql-dir", service, env=wrong)
    assert "set SCHEMA_TABLE=flyway_schema_history" in one_error_line(refused)
    assert db.query("SELECT to_regclass('public.wrong_name') IS NULL") == [(True,)]


def test_a_new_services_first_run_never_calls_another_services_history_or_objects_drift(cli, db, tmp_path):
    service_d, service_f = tmp_path / "d", tmp_path / "f"
    write(service_d, "V1__d.sql", "CREATE TABLE d_things (id INT);\n")
    write(service_f, "V1__f.sql", "CREATE TABLE f_things (id INT);\n")
    ok(cli("migrate", "--sql-dir", service_d, env={**db.db_env(), "SCHEMA_TABLE": "hist_d"}))
    f_env = {**db.db_env(), "SCHEMA_TABLE": "hist_f"}
    status = cli("status", "--exit-code", "--sql-dir", service_f, env=f_env)
    assert "DRIFT" not in status.stdout and "hist_d" not in status.stdout, status.output
    ok(cli("migrate", "--strict", "--sql-dir", service_f, env=f_env))
    d_status = cli("status", "--exit-code", "--sql-dir", service_d, env={**db.db_env(), "SCHEMA_TABLE": "hist_d"})
    assert d_status.exit_code == 0 and "hist_f" not in d_status.stdout, d_status.output
    db.query("ALTER TABLE f_things ADD COLUMN by_hand INT")  # F's own table changed by hand: still F's drift
    drifted = cli("status", "--exit-code", "--sql-dir", service_f, env=f_env)
    assert drifted.exit_code == 5 and "f_things.by_hand added" in drifted.stdout, drifted.output


def test_a_sql_file_in_a_subfolder_of_a_runner_folder_is_refused_not_skipped(cli, db, tmp_path):
    folder = tmp_path / "sql"
    write(folder, "0001_a.sql", "CREATE TABLE a (id INT);\n")
    write(folder / "later", "0002_b.sql", "CREATE TABLE b (id INT);\n")
    line = one_error_line(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert "later/0002_b.sql: a migration in a subfolder" in line and "a" not in db.tables()


def test_sql_new_three_times_in_one_second_writes_three_free_versions_across_every_location(tmp_path):
    main, seed = tmp_path / "main", tmp_path / "seed"
    write(main, "V1__init.sql")
    write(seed / "nested", "V20250101120001__seed.sql")  # the next second is taken in another location
    folder = flyway.locations(f"filesystem:{main},filesystem:{seed}")
    moment = datetime(2025, 1, 1, 12, 0, 0, 500, tzinfo=timezone.utc)
    written = [flyway.new(folder, f"step_{i}", moment)[0].name for i in range(3)]
    assert written == ["V20250101120000__step_0.sql", "V20250101120002__step_1.sql", "V20250101120003__step_2.sql"]
    assert len(flyway.check_names(folder)) == 5


def test_a_comment_only_flyway_file_is_an_empty_migration_recorded_as_flyway_does(cli, db, tmp_path):
    folder = tmp_path / "main"
    write(folder, "V1__a.sql", "CREATE TABLE a (id INT);\n")
    write(folder, "V2__placeholder.sql", "-- nothing yet\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert [(r[1], r[4], r[6]) for r in rows(db)] == [("1", "V1__a.sql", True), ("2", "V2__placeholder.sql", True)]
    runner_folder = tmp_path / "sql"
    write(runner_folder, "0001_placeholder.sql", "-- nothing yet\n")  # the runner's own folder: still refused
    assert "holds no SQL statement" in one_error_line(cli("migrate", "--sql-dir", runner_folder, env=db.db_env()))


def test_a_flyway_placeholder_is_refused_in_one_line_naming_it(cli, db, tmp_path):
    folder = tmp_path / "main"
    path = write(folder, "V1__ph.sql", "-- grants\nCREATE TABLE ${flyway:defaultSchema}.t (id INT);\n")
    line = one_error_line(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert f"{path}:2: ${{flyway:defaultSchema}} is a Flyway placeholder, which the runner does not substitute" in line
    assert "unqualified names" in line and "t" not in db.tables()


def test_a_single_location_with_a_trailing_newline_is_trimmed(cli, db, tmp_path):
    folder = tmp_path / "main"
    write(folder, "V1__a.sql", "CREATE TABLE a (id INT);\n")
    ok(cli("migrate", env={**db.db_env(), "FLYWAY_LOCATIONS": f"filesystem:{folder}\n"}))
    assert "a" in db.tables()


def test_status_names_this_historys_last_migration_never_another_services(cli, db, tmp_path):
    service_a, service_b = tmp_path / "a", tmp_path / "b"
    write(service_b, "V1__b.sql", "CREATE TABLE b (id INT);\n")
    write(service_a, "V20230101000000__a3.sql", "CREATE TABLE a (id INT);\n")
    ok(cli("migrate", "--sql-dir", service_b, env={**db.db_env(), "SCHEMA_TABLE": "hist_b"}))
    ok(cli("migrate", "--sql-dir", service_a, env={**db.db_env(), "SCHEMA_TABLE": "hist_a"}))
    status = ok(cli("status", "--sql-dir", service_b, env={**db.db_env(), "SCHEMA_TABLE": "hist_b"}))
    assert "(last migration V1__b)" in status.stdout and "V20230101000000__a3" not in status.stdout, status.stdout


def test_plan_warns_when_flyway_out_of_order_false_will_make_migrate_refuse(cli, db, service):
    ok(cli("migrate", "--sql-dir", service, env=db.db_env()))
    write(service, "V20230601000000__late_branch.sql", "CREATE TABLE late (id INT);\n")
    plan = ok(cli("plan", "--sql-dir", service, env={**db.db_env(), "FLYWAY_OUT_OF_ORDER": "false"}))
    assert "warning: migrate will refuse: V20230601000000__late_branch older than the newest applied" in plan.stderr
    quiet = ok(cli("plan", "--sql-dir", service, env=db.db_env()))
    assert "migrate will refuse" not in quiet.stderr


def test_a_flyway_migrate_holding_its_lock_is_waited_for_within_the_lock_timeout_and_named(cli, db, pg, tmp_path):
    from migrator import pg_lock

    folder = tmp_path / "main"
    write(folder, "V1__a.sql", "CREATE TABLE a (id INT);\n")
    key = pg_lock.flyway_lock_key("public", "plan_history")
    with pg.connect(db.name) as flyway_session, flyway_session.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", (key,))  # as Flyway 10 takes it for public.plan_history
        refused = cli("migrate", "--lock-timeout", "1", "--sql-dir", folder,
                      env={**db.db_env(), "SCHEMA_TABLE": "plan_history"})
    line = one_error_line(refused)
    assert "holds Flyway's lock on the history public.plan_history" in line and f"advisory lock {key}" in line
    assert "a" not in db.tables()
    ok(cli("migrate", "--sql-dir", folder, env={**db.db_env(), "SCHEMA_TABLE": "plan_history"}))


def test_an_unfilled_sql_new_template_in_a_flyway_folder_is_refused_not_applied(cli, db, tmp_path):
    """Status said it blocks migrate, yet plan showed it and migrate applied and recorded it, empty (attack 22)."""
    folder = tmp_path / "sql"
    write(folder, "V1__init.sql", "CREATE TABLE t (id int);\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    ok(cli("sql", "new", "add thing", "--sql-dir", folder))
    (template,) = folder.glob("V2*__add_thing.sql")
    assert "pending, UNFILLED template" in ok(cli("status", "--sql-dir", folder, env=db.db_env())).stdout
    said = f"{template} is still the template `make new` wrote: add its SQL (and its rollback's), or delete the pair"
    assert said in one_error_line(cli("plan", "--sql-dir", folder, env=db.db_env()))
    assert said in one_error_line(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert [r[4] for r in rows(db)] == ["V1__init.sql"]  # nothing recorded
    # An empty Flyway file that is not the template is still applied, as Flyway does.
    template.write_text("-- nothing here on purpose\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert [r[4] for r in rows(db)] == ["V1__init.sql", template.name]


def test_a_history_rows_script_name_is_printed_on_one_line_by_status(cli, db, tmp_path):
    """attack23m flyway_notes: a row written by the table's owner (or Flyway) whose script holds a line break: status
    printed its second half at column 0 ("error: forged-in-status ... applied, file missing"), and so did the schema
    line's "last migration". Every id read from a history row is escaped, as doctor does."""
    folder = tmp_path / "svc"
    write(folder, "V1__a.sql", "CREATE TABLE a (id int);\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    db.query(f"INSERT INTO public.{HISTORY} (installed_rank, version, description, type, script, checksum, "
             "installed_by, execution_time, success) VALUES (2, '3', 'c', 'SQL', "
             "E'V3__c\\nerror: forged-in-status.sql', 1, 'x', 1, true)")
    ok(cli("sql", "accept-drift", "--sql-dir", folder, env=db.db_env()))  # (the schema line names the row's id)
    status = cli("status", "--sql-dir", folder, env=db.db_env())
    assert not [line for line in status.output.splitlines() if line.startswith("error:")], status.output
    assert "V3__c\\nerror: forged-in-status" in status.stdout, status.stdout
