"""Schema truth through the CLI: drift in status/plan/migrate, --strict, accept-drift, verify, adopt."""

import json

from conftest import one_error_line, psql_file

T = "hcm_report_metadata"


def test_drift_is_reported_by_status_and_plan_refused_by_strict_and_accepted_after_review(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    clean = cli("status", "--exit-code", "--sql-dir", sql_dir, env=env)
    assert clean.exit_code == 0 and "schema: as recorded since migrate" in clean.stdout

    db.query(f"CREATE INDEX idx_emergency ON {T} (tenant_id)")  # a DBA's emergency index
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=env)
    assert status.exit_code == 5
    assert "schema: DRIFT since migrate" in status.stdout and f"index idx_emergency ON {T} added" in status.stdout
    assert json.loads(cli("status", "--json", "--sql-dir", sql_dir, env=env).stdout)["schema"]["changes"] == [
        f"index idx_emergency ON {T} added"]
    plan = cli("plan", "--sql-dir", sql_dir, env=env)
    assert "-- schema: DRIFT since migrate" in plan.stdout and plan.exit_code == 0  # said, not refused

    (sql_dir / "0002_more.sql").write_text("CREATE TABLE more_reports (id int);\n")
    (sql_dir / "0002_more.rollback.sql").write_text("DROP TABLE more_reports;\n")
    strict = cli("migrate", "--strict", "--sql-dir", sql_dir, env=env)
    assert strict.exit_code == 5 and "--strict: the live schema changed outside migrations" in one_error_line(strict)
    assert "more_reports" not in db.tables()
    lenient = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert lenient.exit_code == 0 and "more_reports" in db.tables()
    assert f"index idx_emergency ON {T} added" in lenient.stderr  # said before anything ran
    after = json.loads(cli("status", "--json", "--sql-dir", sql_dir, env=env).stdout)["schema"]
    assert after["changes"] == [f"index idx_emergency ON {T} added"]  # still drift; the migration's table is not

    accepted = cli("sql", "accept-drift", "--sql-dir", sql_dir, env=env)
    assert accepted.exit_code == 0 and f"accepted: index idx_emergency ON {T} added" in accepted.stdout
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 0


def test_a_failed_migrate_records_what_it_did_and_only_hand_made_changes_are_drift(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    (sql_dir / "0002_b.sql").write_text("CREATE TABLE b (id int);\n")
    (sql_dir / "0003_c.sql").write_text("CREATE TABLE c (id int);\nSELECT 1/0;\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 1  # 0002 applied, 0003 failed
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 1  # pending, no drift
    (sql_dir / "0003_c.sql").write_text("CREATE TABLE c (id int);\n")
    assert cli("migrate", "--strict", "--sql-dir", sql_dir, env=env).exit_code == 0
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 0


def test_rollback_and_mark_record_the_schema(cli, db, sql_dir):
    env = db.db_env()
    (sql_dir / "0002_more.sql").write_text("CREATE TABLE more_reports (id int);\n")
    (sql_dir / "0002_more.rollback.sql").write_text("DROP TABLE more_reports;\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    assert cli("sql", "rollback", "--sql-dir", sql_dir, env=env).exit_code == 0
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 1  # pending, no drift
    assert "schema: as recorded since rollback" in cli("status", "--sql-dir", sql_dir, env=env).stdout
    db.query("CREATE TABLE more_reports (id int)")  # made by hand, then adopted by mark
    marked = cli("sql", "mark", "0002_more", "--sql-dir", sql_dir, env=env)
    assert marked.exit_code == 0 and "table more_reports added" in marked.stderr  # shown, not absorbed
    assert "was not re-recorded" in marked.stderr
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 5
    assert cli("sql", "accept-drift", "--sql-dir", sql_dir, env=env).exit_code == 0  # after review
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 0


def test_sql_verify_passes_on_this_repository_and_fails_on_a_lying_rollback(cli, pg, sql_dir, workdir):
    scratch = pg.scratch_url()
    good = cli("sql", "verify", "--sql-dir", sql_dir, "--scratch-url", scratch)
    assert good.exit_code == 0, good.output
    assert "0001_create_hcm_report_metadata: up, down, up: ok" in good.stdout
    (sql_dir / "0002_lies.sql").write_text(f"CREATE INDEX idx_lies ON {T} (tenant_id);\n")
    (sql_dir / "0002_lies.rollback.sql").write_text("SELECT 1;\n")  # forgets the index
    bad = cli("sql", "verify", "--sql-dir", sql_dir, "--scratch-url", scratch, "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert report["failed"] == "0002_lies" and report["ok"] is False


def test_sql_adopt_marks_the_matching_prefix_only_with_yes(cli, pg, db, sql_dir, workdir):
    assert psql_file(db, sql_dir / "0001_create_hcm_report_metadata.sql").returncode == 0  # made without the runner
    env = db.db_env()
    scratch = pg.scratch_url()
    shown = cli("sql", "adopt", "--sql-dir", sql_dir, "--scratch-url", scratch, env=env)
    assert shown.exit_code == 0 and "matches the history up to 0001_create_hcm_report_metadata" in shown.stdout
    assert "run again with --yes" in shown.stdout
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 1  # nothing marked yet
    done = cli("sql", "adopt", "--yes", "--sql-dir", sql_dir, "--scratch-url", scratch, env=env)
    assert done.exit_code == 0 and "adopt: marked 0001_create_hcm_report_metadata applied" in done.stdout
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 0


def test_sql_adopt_marks_nothing_on_a_hand_made_difference(cli, pg, db, sql_dir, workdir):
    text = (sql_dir / "0001_create_hcm_report_metadata.sql").read_text()
    (workdir / "legacy.sql").write_text(text.replace("campaign_number", "campaign_name"))
    assert psql_file(db, workdir / "legacy.sql").returncode == 0
    result = cli("sql", "adopt", "--yes", "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(), env=db.db_env())
    assert result.exit_code == 1 and "no prefix of the history matches" in result.stdout
    assert "campaign_name" in result.stdout and "nothing marked" in result.stdout
    assert "_yoyo_migration" not in db.tables()  # not even the bookkeeping was created
