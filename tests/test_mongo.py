"""Mongo patches through the CLI: dry runs write nothing, real runs apply and log, the lock, the seed's records.

Runs on FerretDB (or the server at TEST_MONGO_URL; mongomock where Go is missing).
"""

import hashlib
import json
import os
import py_compile
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, one_error_line, psql_file
from migrator.mongo import lock

NOW = datetime.now(timezone.utc)
PATCH_0001 = "0001_close_expired_enrollments"


def enrollment(_id, *, status="ACTIVE", cycles=2, days=7, started_days_ago=100, reminder=None):
    doc = {"_id": _id, "status": status, "cycles": cycles, "daysInCycle": days,
           "txStartDate": NOW - timedelta(days=started_days_ago)}
    if reminder is not None:
        doc["reminderStartDate"] = reminder
    return doc


def seed_enrollments(db):
    db.enrollments.insert_many([
        enrollment("expired"),                                            # 100 days ago + 14 days: over
        enrollment("running", started_days_ago=3),                        # 3 days ago + 14 days: not over
        enrollment("reminder-later", reminder=NOW - timedelta(days=5)),   # reminder date wins: not over
        enrollment("reminder-empty", reminder=""),                        # empty reminder: txStartDate, over
        enrollment("no-cycles", cycles=0),                                # cycles 0: out of scope
        enrollment("paused", status="PAUSED"),                            # not ACTIVE: out of scope
    ])


@pytest.fixture
def mongo_dir(tmp_path) -> Path:
    """A copy of the project's mongo/ (only the Python patch, unless a test adds more)."""
    target = tmp_path / "mongo"
    target.mkdir()
    shutil.copy2(PROJECT_ROOT / "mongo" / f"{PATCH_0001}.py", target)
    return target


def statuses(db) -> dict:
    return {d["_id"]: d["status"] for d in db.enrollments.find()}


def test_dry_run_shows_what_it_would_do_and_writes_nothing(cli, mongo, mongo_dir):
    seed_enrollments(mongo.db)
    before = mongo.snapshot()
    result = cli("mongo", "apply", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 0, result.output
    assert "dry run: nothing will be written (add --run to apply)" in result.stderr
    assert "Dry run, not changing expired" in result.stdout
    assert (f"dry run {PATCH_0001}" in result.stdout
            and "Would modify 2 enrollment records out of 2 expired enrollment records. "
                "Total number of ACTIVE enrollments in the database is 4" in result.stdout)
    assert mongo.snapshot() == before  # no change, no log record, no lock document
    assert [p.name for p in mongo_dir.iterdir()] == [f"{PATCH_0001}.py"]  # nor a __pycache__ beside the patch


def test_run_applies_and_logs_the_seed_fields_and_the_new_ones(cli, mongo, mongo_dir):
    seed_enrollments(mongo.db)
    started = datetime.now(timezone.utc)  # (not NOW, taken when the module was collected, maybe minutes ago)
    result = cli("mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 0, result.output
    assert statuses(mongo.db) == {"expired": "COMPLETED", "running": "ACTIVE", "reminder-later": "ACTIVE",
                                  "reminder-empty": "COMPLETED", "no-cycles": "ACTIVE", "paused": "PAUSED"}
    (record,) = list(mongo.db.applied_patches.find())
    assert record["patch"] == PATCH_0001
    assert record["comment"].startswith("Modified 2 enrollment records out of 2 expired")
    assert record["status"] == "applied" and record["kind"] == "py"
    assert record["checksum"] == hashlib.sha256((mongo_dir / f"{PATCH_0001}.py").read_bytes()).hexdigest()
    assert record["started"] <= record["finished"] and record["applied"] == record["finished"]
    assert started - timedelta(seconds=1) <= record["applied"] <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert isinstance(record["duration_ms"], int) and record["host"] and record["user"]
    assert record["runner_version"] and "error" not in record
    assert mongo.db[lock.COLLECTION].count_documents({}) == 0  # released


def test_a_patch_runs_from_its_own_source_never_from_a_pycache_beside_it(cli, mongo, tmp_path):
    """The record's checksum is the source's: a bytecode file beside it (stale, or planted with the source's
    mtime and size, which is all Python's import checks) must not run instead, and a run writes none there."""
    folder = tmp_path / "mongo"
    folder.mkdir()
    patch = folder / "0001_marker.py"
    patch.write_text('def run(db, dry_run):\n    return "ran a planted!"\n')
    os.utime(patch, (1_700_000_000, 1_700_000_000))
    cached = folder / "__pycache__" / f"0001_marker.{sys.implementation.cache_tag}.pyc"  # (beside it, as -I looks)
    py_compile.compile(str(patch), cfile=str(cached), doraise=True)
    patch.write_text('def run(db, dry_run):\n    return "ran the source"\n')  # the same size
    os.utime(patch, (1_700_000_000, 1_700_000_000))
    result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert result.exit_code == 0, result.output
    (record,) = list(mongo.db.applied_patches.find())
    assert record["comment"] == "ran the source", record
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "0001_marker.py", "__pycache__", cached.relative_to(folder).as_posix()]


def test_applied_patches_are_not_rerun_unless_named(cli, mongo, mongo_dir):
    cli("mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    again = cli("mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    assert again.exit_code == 0 and "MongoDB: up to date (1 patch(es), all applied)" in again.stdout
    assert mongo.db.applied_patches.count_documents({}) == 1
    named = cli("mongo", "apply", PATCH_0001, "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    assert named.exit_code == 0 and f"applied {PATCH_0001}" in named.stdout
    assert mongo.db.applied_patches.count_documents({"patch": PATCH_0001}) == 2
    by_number = cli("mongo", "apply", "0001", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    assert by_number.exit_code == 0
    assert mongo.db.applied_patches.count_documents({}) == 3


def test_seed_shaped_records_count_as_applications(cli, mongo, mongo_dir):
    applied_at = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
    mongo.db.applied_patches.insert_many([
        {"patch": "001_close_expired_enrollments", "comment": "Modified 3 enrollment records out of 4 ...", "applied": applied_at},
        {"patch": "000_removed_long_ago", "comment": "old", "applied": applied_at},
    ])
    result = cli("mongo", "status", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert "applied 1x" in lines[PATCH_0001] and "2024-03-01 12:00:00 UTC" in lines[PATCH_0001]
    assert "last outcome: applied" in lines[PATCH_0001]
    assert "not on disk" in lines["000_removed_long_ago"]
    assert "1 applied, 0 never applied, 1 logged but not on disk" in result.stdout
    # ... so deploying does not apply it again.
    deploy = cli("mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    assert "up to date" in deploy.stdout and mongo.db.applied_patches.count_documents({}) == 2


def test_a_failing_patch_is_logged_as_failed_and_stops_the_rest(cli, mongo, mongo_dir):
    (mongo_dir / "0002_broken.py").write_text("def run(db, dry_run):\n    raise ValueError('no such campaign: C-42')\n")
    (mongo_dir / "0003_after.py").write_text("def run(db, dry_run):\n    db.marker.insert_one({'ran': True})\n")
    result = cli("mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    line = one_error_line(result)
    assert f"{mongo_dir}/0002_broken.py:2: 0002_broken failed: ValueError: no such campaign: C-42" in line
    assert result.exit_code == 1
    records = {r["patch"]: r for r in mongo.db.applied_patches.find()}
    assert records[PATCH_0001]["status"] == "applied"
    assert records["0002_broken"]["status"] == "failed" and "no such campaign: C-42" in records["0002_broken"]["error"]
    assert "0003_after" not in records and mongo.db.marker.count_documents({}) == 0
    status = cli("mongo", "status", "--mongo-dir", mongo_dir, env=mongo.env)
    assert "0002_broken" in status.stdout and "last outcome: failed" in status.stdout
    # A failed patch is not retried by the next deploy (its partial writes are kept): one line says how to go on.
    (mongo_dir / "0002_broken.py").write_text("def run(db, dry_run):\n    db.marker.insert_one({'fixed': 1})\n    return 'fixed'\n")
    again = cli("mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    line = one_error_line(again)
    assert again.exit_code == 1 and "patch 0002_broken failed 20" in line and "ValueError: no such campaign: C-42" in line
    assert "`runner.py mongo apply 0002_broken --run`" in line and "`runner.py mongo resolve 0002_broken --applied`" in line
    assert mongo.db.marker.count_documents({}) == 0
    # Re-run deliberately by name, then the deploy goes on with the rest.
    named = cli("mongo", "apply", "0002_broken", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    assert named.exit_code == 0, named.output
    again = cli("mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    assert again.exit_code == 0, again.output
    assert "applied 0003_after" in again.stdout and "0002_broken" not in again.stdout
    assert mongo.db.marker.count_documents({}) == 2


def test_a_careless_patch_cannot_write_in_a_dry_run(cli, mongo, mongo_dir):
    (mongo_dir / "0002_careless.py").write_text(
        "def run(db, dry_run):\n    db.enrollments.update_many({}, {'$set': {'status': 'GONE'}})\n")
    seed_enrollments(mongo.db)
    before = mongo.snapshot()
    result = cli("mongo", "apply", "0002_careless", "--mongo-dir", mongo_dir, env=mongo.env)
    line = one_error_line(result)
    assert "0002_careless.py: dry run of 0002_careless tried to write:" in line
    assert f"{mongo.name}.enrollments.update_many is not allowed in a dry run" in line
    assert mongo.snapshot() == before


def test_a_held_lock_makes_the_second_runner_wait_then_fail_naming_the_holder(cli, mongo, mongo_dir):
    now = datetime.now(timezone.utc)  # (not NOW: collected a long run's minutes ago, the lock would have expired)
    mongo.db[lock.COLLECTION].insert_one({"_id": lock.LOCK_ID, "owner": "other", "host": "pod-7", "pid": 4242,
                                          "since": now, "expires": now + timedelta(minutes=10)})
    result = cli("mongo", "apply", "--run", "--lock-timeout", "0.5", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 4
    line = one_error_line(result)
    assert "the patch lock on" in line and "is held by pod-7 pid 4242 since" in line
    assert mongo.db.applied_patches.count_documents({}) == 0


def test_a_lock_held_by_a_pid_gone_from_this_host_says_so(cli, mongo, mongo_dir):
    import subprocess

    from migrator import whoami

    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names no process (a runner killed by SIGKILL, or ended on a lost connection)
    now = datetime.now(timezone.utc)  # (not NOW, as above)
    mongo.db[lock.COLLECTION].insert_one({"_id": lock.LOCK_ID, "owner": "killed", "host": whoami.host(),
                                          "pid": gone.pid, "since": now, "expires": now + timedelta(minutes=10)})
    result = cli("mongo", "apply", "--run", "--lock-timeout", "0.5", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 4
    line = one_error_line(result)
    assert f"pid {gone.pid} no longer exists on this host (that runner ended without releasing it)" in line, line
    assert "killed" not in line, line  # attack20e: it may have ended on an error (the server gone), not been killed
    assert "wait for it to finish" not in line, line


def test_an_expired_lock_is_taken_over(cli, mongo, mongo_dir):
    mongo.db[lock.COLLECTION].insert_one({"_id": lock.LOCK_ID, "owner": "dead", "host": "pod-1", "pid": 1,
                                          "since": NOW - timedelta(hours=2), "expires": NOW - timedelta(hours=1)})
    result = cli("mongo", "apply", "--run", "--lock-timeout", "0.5", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 0, result.output
    assert mongo.db[lock.COLLECTION].count_documents({}) == 0


def test_only_one_of_two_runners_holds_the_lock(mongo):
    first, second = lock.Lock(mongo.db), lock.Lock(mongo.db)
    assert first.try_take() is True
    assert second.try_take() is False
    assert second.holder()["owner"] == first.owner
    second.release()  # not the owner: releases nothing
    assert first.holder()["owner"] == first.owner
    first.release()
    assert second.try_take() is True


def test_history_newest_first_and_per_patch(cli, mongo, mongo_dir):
    mongo.db.applied_patches.insert_one({"patch": "001_close_expired_enrollments", "comment": "seed era",
                                         "applied": datetime(2024, 1, 1, tzinfo=timezone.utc)})
    (mongo_dir / "0002_other.py").write_text("def run(db, dry_run):\n    return 'other done'\n")
    cli("mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)  # 0001 counts as applied: 0002 only
    cli("mongo", "apply", "0002", "0001", "--run", "--mongo-dir", mongo_dir, env=mongo.env)  # named: in that order
    result = cli("mongo", "history", "--mongo-dir", mongo_dir, env=mongo.env)
    lines = [line for line in result.stdout.splitlines() if "UTC" in line]
    assert [line.split()[3] for line in lines] == [PATCH_0001, "0002_other", "0002_other", "001_close_expired_enrollments"]
    assert [line.split()[4] for line in lines] == ["applied"] * 4
    assert len(lines) == 4 and lines[-1].startswith("2024-01-01 00:00:00 UTC  001_close_expired_enrollments  applied  (seed record)  seed era")
    one = cli("mongo", "history", PATCH_0001, "--json", "--mongo-dir", mongo_dir, env=mongo.env)
    records = json.loads(one.stdout)
    assert [r["patch"] for r in records] == [PATCH_0001, "001_close_expired_enrollments"]


def test_migrate_applies_patches_when_mongo_is_configured(cli, db, mongo, mongo_dir):
    seed_enrollments(mongo.db)
    result = cli("migrate", "--mongo-dir", mongo_dir, env={**db.db_env(), **mongo.env})
    assert result.exit_code == 0, result.output
    assert "applied 0001_create_hcm_report_metadata" in result.stdout
    assert f"applied {PATCH_0001}" in result.stdout and "MongoDB: applied 1 patch(es)" in result.stdout
    assert statuses(mongo.db)["expired"] == "COMPLETED"
    again = cli("migrate", "--mongo-dir", mongo_dir, env={**db.db_env(), **mongo.env})
    assert "MongoDB: up to date" in again.stdout and mongo.db.applied_patches.count_documents({}) == 1


def test_migrate_without_mongo_says_skipped(cli, db):
    result = cli("migrate", env=db.db_env())
    assert result.exit_code == 0
    assert result.stdout.rstrip().endswith("MongoDB: not configured, skipped")


def test_plan_dry_runs_pending_patches_and_writes_nothing(cli, db, mongo, mongo_dir):
    seed_enrollments(mongo.db)
    before = mongo.snapshot()
    result = cli("plan", "--mongo-dir", mongo_dir, env={**db.db_env(), **mongo.env})
    assert result.exit_code == 0, result.output
    assert "1 pending patch(es), dry-run below; nothing was written" in result.stdout
    assert f"--   {PATCH_0001} (py): Would modify 2 enrollment records" in result.stdout
    assert "Dry run, not changing expired" in result.stderr  # the patch's own output stays off the SQL
    assert mongo.snapshot() == before and db.tables() == set()
    # stdout, Mongo part included, is still SQL that psql runs.
    script = mongo_dir.parent / "plan.sql"
    script.write_text(result.stdout)
    done = psql_file(db, script)
    assert done.returncode == 0, done.stderr
    assert "hcm_report_metadata" in db.tables()


def test_status_shows_both_stores(cli, db, mongo, mongo_dir):
    result = cli("status", "--mongo-dir", mongo_dir, env={**db.db_env(), **mongo.env})
    assert result.exit_code == 0, result.output
    assert "PostgreSQL: 0 applied, 1 pending" in result.stdout
    assert f"{PATCH_0001}" in result.stdout and "never applied" in result.stdout
    data = json.loads(cli("status", "--json", "--mongo-dir", mongo_dir, env={**db.db_env(), **mongo.env}).stdout)
    assert data["mongo"]["patches"][0] == {"id": PATCH_0001, "state": "never applied", "applied_count": 0,
                                           "last_applied": None, "last_outcome": None,
                                           "file": str(mongo_dir / f"{PATCH_0001}.py"), "blocked": False}
    assert "MongoDB: not configured" in cli("status", env=db.db_env()).stdout


def test_new_patch_numbering_and_templates_that_refuse_to_run_unedited(cli, mongo, mongo_dir):
    assert "0002_fix_cycles.py" in cli("mongo", "new", "Fix cycles", "--mongo-dir", mongo_dir).stdout
    assert "0003_count_things.js" in cli("mongo", "new", "count things", "--js", "--mongo-dir", mongo_dir).stdout
    assert "def run(db, dry_run):" in (mongo_dir / "0002_fix_cycles.py").read_text()
    assert "DRY_RUN" in (mongo_dir / "0003_count_things.js").read_text()
    result = cli("mongo", "apply", "0002", "--mongo-dir", mongo_dir, env=mongo.env)
    assert "NotImplementedError: 0002_fix_cycles: write this patch, then delete this line" in one_error_line(result)


def test_mongo_commands_need_a_target(cli, db, mongo_dir):
    result = cli("mongo", "status", "--mongo-dir", mongo_dir, env=db.db_env())  # (nothing at all: the local Mongo)
    assert result.exit_code == 2
    assert "MongoDB is not configured: set MONGO_URL (and MONGO_DB), or pass --secret-name" in one_error_line(result)


def test_unknown_patch_name(cli, mongo, mongo_dir):
    result = cli("mongo", "apply", "0099_nope", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 2
    assert f"unknown patch 0099_nope (patches: {PATCH_0001})" in one_error_line(result)


def test_the_port_updates_in_batches_and_counts_across_them(cli, mongo, mongo_dir):
    """More expired enrollments than one batch (1000): every one closed, the count exact. 1,065 expired: a full batch
    and a short one (FerretDB writes each updated document in a transaction of its own, so no more than that)."""
    mongo.db.enrollments.insert_many([enrollment(i, started_days_ago=100 if i % 3 else 1) for i in range(1600)])
    mongo.db.enrollments.update_one({"_id": 4}, {"$set": {"status": "PAUSED"}})  # changed meanwhile: left alone
    result = cli("mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 0, result.output
    expired = sum(1 for i in range(1600) if i % 3 and i != 4)
    assert expired > 1000  # more than one batch
    assert mongo.db.enrollments.count_documents({"status": "COMPLETED"}) == expired
    (record,) = list(mongo.db.applied_patches.find())
    assert record["comment"].startswith(f"Modified {expired} enrollment records out of {expired} expired")


def test_json_log_of_patches_one_event_per_line_with_their_output(cli, mongo, mongo_dir):
    seed_enrollments(mongo.db)
    (mongo_dir / "0002_broken.py").write_text(
        "def run(db, dry_run):\n    print('looking at C-42')\n    raise ValueError('no such campaign: C-42')\n")
    result = cli("--log-format", "json", "mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 1
    stdout = [json.loads(line) for line in result.stdout.splitlines()]  # the patches' output and results
    events = [json.loads(line) for line in result.stderr.splitlines()]  # every line is one JSON object
    kinds = [(e["event"], e.get("patch")) for e in events if e["event"].startswith("patch_")]
    assert kinds == [("patch_started", PATCH_0001), ("patch_applied", PATCH_0001),
                     ("patch_started", "0002_broken"), ("patch_failed", None)]
    assert [e["message"] for e in stdout if e["event"] == "patch_output"][-1] == "looking at C-42"
    failed = next(e for e in events if e["event"] == "patch_failed")
    assert failed["after"] == [PATCH_0001] and "no such campaign: C-42" in failed["error"]
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 1
