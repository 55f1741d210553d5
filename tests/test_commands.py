"""The command API called directly (no CLI): the deploy rules and the reports both renderings come from."""

import json

import pytest

from migrator.commands import deploy, sql
from migrator.commands.base import CommandSettings
from migrator.env import Env
from migrator.errors import DRIFT, FAILED, OK, USAGE, MigratorError


def settings_for(db, sql_dir, **environ) -> tuple[CommandSettings, list[str], list[str]]:
    """Settings pointing at `db` with the given sql/, and the lines its sinks received (echo and shown reports,
    in order; notes)."""
    echoed, noted = [], []
    settings = CommandSettings(env=Env({**db.db_env(), **environ}), sql_dir=sql_dir, echo=echoed.append,
                               note=noted.append, show=lambda report: echoed.extend(report.lines()))
    return settings, echoed, noted


def add(sql_dir, name, text, rollback="SELECT 1;"):
    (sql_dir / f"{name}.sql").write_text(text)
    (sql_dir / f"{name}.rollback.sql").write_text(rollback)


def test_migrate_reports_what_it_applied_and_streams_each_migration(db, sql_dir):
    add(sql_dir, "0002_extra", "CREATE TABLE extra (id int);", "DROP TABLE extra;")
    settings, echoed, noted = settings_for(db, sql_dir)
    report = deploy.migrate(settings)
    assert report.sql.applied == ["0001_create_hcm_report_metadata", "0002_extra"]
    assert (report.sql.done, report.sql.total, report.mongo) == (2, 2, None)
    assert [line.split(" (")[0] for line in echoed] == [
        "  applied 0001_create_hcm_report_metadata", "  applied 0002_extra",
        "PostgreSQL: applied 2; 2 of 2 migrations applied", "MongoDB: not configured, skipped"]
    assert any(line.startswith("PostgreSQL: postgresql://") for line in noted)
    again = deploy.migrate(settings)
    assert again.sql.applied == [] and again.sql.lines() == ["PostgreSQL: up to date (2 of 2 migrations applied)"]


def test_bad_mongo_settings_stop_migrate_before_postgres_changes(db, sql_dir):
    settings, _, _ = settings_for(db, sql_dir, MONGO_URL="mysql://h/x")
    with pytest.raises(MigratorError) as err:
        deploy.migrate(settings)
    assert err.value.exit_code == USAGE and "is not a MongoDB URL" in str(err.value)
    assert db.tables() == set()


def test_status_exit_codes_follow_pending_and_drift(db, sql_dir):
    settings, _, _ = settings_for(db, sql_dir)
    fresh = deploy.status(settings)
    assert [s.id for s in fresh.pending] == ["0001_create_hcm_report_metadata"]
    assert (fresh.exit_code(gate=False), fresh.exit_code(gate=True)) == (OK, FAILED)
    deploy.migrate(settings)
    assert deploy.status(settings).exit_code(gate=True) == OK
    path = sql_dir / "0001_create_hcm_report_metadata.sql"
    path.write_text(path.read_text() + "\n-- edited after it was applied\n")
    drifted = deploy.status(settings)
    assert [s.id for s in drifted.changed] == ["0001_create_hcm_report_metadata"]
    assert drifted.exit_code(gate=True) == DRIFT and drifted.to_json()["changed"] == ["0001_create_hcm_report_metadata"]
    assert any("CHANGED since applied" in line for line in drifted.lines())
    with pytest.raises(MigratorError) as err:
        deploy.migrate(settings)
    assert err.value.exit_code == DRIFT


def test_plan_report_text_and_json_describe_the_same_pending_sql(db, sql_dir):
    add(sql_dir, "0002_extra", "CREATE TABLE extra (id int);")
    settings, _, _ = settings_for(db, sql_dir)
    report = deploy.plan(settings, offline=False)
    data = json.loads(json.dumps(report.to_json()))
    assert [p["id"] for p in data["pending"]] == ["0001_create_hcm_report_metadata", "0002_extra"]
    text = "\n".join(report.lines())
    for pending in data["pending"]:
        assert pending["sql"].strip() in text
    assert report.exit_code == OK and db.tables() == set()  # read-only


def test_rollback_and_mark_through_the_api(db, sql_dir):
    add(sql_dir, "0002_extra", "CREATE TABLE extra (id int);", "DROP TABLE extra;")
    settings, echoed, _ = settings_for(db, sql_dir)
    deploy.migrate(settings)
    report = sql.rollback(settings, count=None, to=None, all_=False)
    assert report.rolled_back == ["0002_extra"] and (report.done, report.total) == (1, 2)
    assert "extra" not in db.tables()
    assert sql.mark(settings, ["0002_extra"]).lines() == ["  marked applied: 0002_extra"]
    assert sql.mark(settings, ["0002_extra"]).lines() == ["  already applied: 0002_extra"]
    with pytest.raises(MigratorError, match="give one of --count, --to and --all"):
        sql.rollback(settings, count=1, to="0001_create_hcm_report_metadata", all_=False)
