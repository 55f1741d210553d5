"""Exactly once, or visibly not at all: the running record, the lock under concurrency, kills at every point.

On FerretDB (or TEST_MONGO_URL) concurrent runners here are threads with a real server between them (real
processes: test_mongo_processes.py). On mongomock (no Go), which lives in one process and does not make
single-document operations atomic, `atomic_mock` serialises its collection methods.
"""

from __future__ import annotations

import copy
import functools
import os
import signal
import threading
import time
from datetime import timedelta

import pytest

from conftest import one_error_line
from migrator.errors import MigratorError
from migrator.mongo import actions, lock, log, patches

COUNTER = """
import time

def run(db, dry_run):
    # Read, wait, write: a second application (or two at once) shows as a count of 2.
    doc = db.counter.find_one({{"_id": "c"}}) or {{"n": 0}}
    {hook}time.sleep({sleep})
    if not dry_run:
        db.counter.replace_one({{"_id": "c"}}, {{"_id": "c", "n": doc["n"] + 1}}, upsert=True)
    {after}return f"counted to {{doc['n'] + 1}}"
"""


def write_patch(folder, name, *, sleep=0.0, hook="", after=""):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(COUNTER.format(sleep=sleep, hook=hook, after=after))
    return folder


def counter(db) -> int:
    return (db.counter.find_one({"_id": "c"}) or {"n": 0})["n"]


def apply_all(db, folder, names=None, lock_wait=30.0):
    return list(actions.apply(db, None, patches.discover(folder), names, run=True, lock_wait=lock_wait,
                              echo=lambda line: None))


@pytest.fixture
def atomic_mock(mongo, monkeypatch):
    if mongo.real:
        return
    import mongomock.collection

    guard = threading.RLock()
    for name in ("insert_one", "find_one_and_update", "update_one", "delete_one", "replace_one", "find_one"):
        original = getattr(mongomock.collection.Collection, name)

        def serialised(*args, _original=original, **kwargs):
            with guard:
                return _original(*args, **kwargs)

        monkeypatch.setattr(mongomock.collection.Collection, name, functools.wraps(original)(serialised))


# --- the state machine -------------------------------------------------------------------------


def test_the_running_record_is_written_before_the_patch_runs(mongo, tmp_path):
    hook = "seen = db.applied_patches.find_one({'status': 'running'}); print('SEEN', seen['user'], seen['host'], seen['pid'], seen['checksum']); "
    folder = write_patch(tmp_path / "mongo", "0001_count", hook=hook)
    (folder / "0001_count.py").write_text((folder / "0001_count.py").read_text().replace(
        "return f", "db.seen.insert_one({k: seen[k] for k in ('user', 'host', 'pid', 'checksum', 'status', 'patch')}); return f"))
    apply_all(mongo.db, folder)
    seen = mongo.db.seen.find_one({}, {"_id": 0})
    (patch,) = patches.discover(folder)
    assert seen == {"user": seen["user"], "host": seen["host"], "pid": os.getpid(), "checksum": patch.checksum,
                    "status": "running", "patch": "0001_count"} and seen["user"] and seen["host"]
    (record,) = mongo.db.applied_patches.find()
    assert record["status"] == "applied" and record["comment"] == "counted to 1" and record["finished"] >= record["started"]


@pytest.mark.parametrize("body, described", [
    ("import sys\n    sys.exit(0)", "the patch called sys.exit(0)"),
    ("import sys\n    sys.exit(2)", "the patch called sys.exit(2)"),
    ("raise KeyboardInterrupt()", "KeyboardInterrupt"),
    ("raise GeneratorExit('odd')", "GeneratorExit: odd"),
])
def test_system_exit_and_any_base_exception_is_that_patchs_failure(cli, mongo, tmp_path, body, described):
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_quits.py").write_text(f"def run(db, dry_run):\n    db.partial.insert_one({{'x': 1}})\n    {body}\n")
    write_patch(folder, "0002_after")
    result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert result.exit_code == 1  # not 0 (sys.exit(0)), not 2 (a usage error)
    assert f"0001_quits.py:{3 + body.count(chr(10))}: 0001_quits failed: {described}" in one_error_line(result)
    (record,) = mongo.db.applied_patches.find()
    assert record["status"] == "failed" and described in record["error"]
    assert counter(mongo.db) == 0  # the later patch did not run


def test_resolve_after_a_look_is_logged_and_unblocks(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_fails.py").write_text("def run(db, dry_run):\n    raise RuntimeError('half done')\n")
    write_patch(folder, "0002_count")
    assert cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env).exit_code == 1
    nothing = cli("mongo", "resolve", "0002_count", "--applied", "--note", "x", "--mongo-dir", folder, env=mongo.env)
    assert nothing.exit_code == 2 and "patch 0002_count is never applied: nothing to resolve" in one_error_line(nothing)
    done = cli("mongo", "resolve", "0001", "--not-applied", "--note", "checked: nothing written",
               "--mongo-dir", folder, env=mongo.env)
    assert done.exit_code == 0 and "resolved 0001 as not applied" in done.stdout
    decision = mongo.db.applied_patches.find_one({"status": "resolved"})
    assert decision["resolved_as"] == "not applied" and decision["comment"] == "checked: nothing written"
    assert decision["user"] and decision["host"] and decision["resolves"]["status"] == "failed"
    # Resolved as not applied: pending again, so the next deploy runs it (and it fails again, visibly).
    again = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert "0001_fails failed: RuntimeError: half done" in one_error_line(again)
    cli("mongo", "resolve", "0001_fails", "--applied", "--note", "done by hand", "--mongo-dir", folder, env=mongo.env)
    last = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert last.exit_code == 0 and "applied 0002_count" in last.stdout and "0001_fails" not in last.stdout
    status = cli("mongo", "status", "--mongo-dir", folder, env=mongo.env).stdout
    assert "0001_fails" in status and "last outcome: resolved" in status and "blocked" not in status


# --- the lock: pending read under it, heartbeat, loss --------------------------------------------


@pytest.mark.parametrize("runners", [2, 10])
def test_concurrent_runners_apply_each_patch_exactly_once(mongo, tmp_path, atomic_mock, runners):
    folder = write_patch(tmp_path / "mongo", "0001_count", sleep=0.3)
    write_patch(folder, "0002_count_again", sleep=0.1)
    errors, outcomes = [], []

    def runner(delay):
        time.sleep(delay)
        try:
            outcomes.extend(o.patch.id for o in apply_all(mongo.db, folder))
        except MigratorError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=runner, args=(i * 0.05,)) for i in range(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(outcomes) == ["0001_count", "0002_count_again"]  # one runner applied both, the others none
    assert counter(mongo.db) == 2
    assert sorted(r["patch"] for r in mongo.db.applied_patches.find({"status": "applied"})) == sorted(outcomes)
    assert mongo.db.applied_patches.count_documents({}) == 2


def test_a_patch_longer_than_the_ttl_keeps_the_lock_by_heartbeat(mongo, tmp_path, atomic_mock, monkeypatch):
    monkeypatch.setattr(lock, "TTL", timedelta(seconds=0.4))
    folder = write_patch(tmp_path / "mongo", "0001_slow", sleep=2.5)
    first = threading.Thread(target=apply_all, args=(mongo.db, folder))
    first.start()
    time.sleep(0.3)
    with pytest.raises(MigratorError) as err:  # 1.2 s of trying, three TTLs: the heartbeat keeps it
        apply_all(mongo.db, folder, lock_wait=1.2)
    first.join()
    assert "the patch lock on" in str(err.value) and err.value.exit_code == 4
    assert counter(mongo.db) == 1 and mongo.db.applied_patches.count_documents({}) == 1


def test_a_runner_that_loses_the_lock_stops_before_its_next_write(mongo, tmp_path, atomic_mock):
    steal = ("db.applied_patches_lock.update_one({'_id': 'mongo-patches'}, {'$set': {'owner': 'other', 'host': 'pod-9', 'pid': 9}}); ")
    folder = write_patch(tmp_path / "mongo", "0001_count", hook=steal)
    write_patch(folder, "0002_next")
    with pytest.raises(MigratorError) as err:
        apply_all(mongo.db, folder)
    assert err.value.exit_code == 4
    assert "lost the patch lock" in str(err.value) and "now held by pod-9 pid 9" in str(err.value)
    # its patch had returned, and the server answered: the line says so (not "once the server is back", attack20j)
    said = str(err.value)
    assert "patch 0001_count (" in said and ") had finished (its writes are done) when the lost lock was seen" in said
    assert "once the server is back" not in said and "runner.py mongo resolve 0001_count --applied" in said
    (record,) = mongo.db.applied_patches.find()  # not settled by a runner that no longer holds the lock
    assert record["patch"] == "0001_count" and record["status"] == "running"
    assert counter(mongo.db) == 1  # 0002 never started
    assert mongo.db[lock.COLLECTION].find_one()["owner"] == "other"  # the new holder's lock is left alone


# --- kills at every point ------------------------------------------------------------------------

POINTS = ["before the running record", "after the running record", "mid-patch", "after the patch's writes",
          "before the settle"]


class Killed(BaseException):
    """SIGKILL: nothing after it runs; the database stays as it was at that instant."""


def _snapshot(db) -> dict:
    return {name: copy.deepcopy(list(db[name].find())) for name in db.list_collection_names()}


def _restore(db, snapshot: dict) -> None:
    for name in db.list_collection_names():
        db[name].drop()
    for name, docs in snapshot.items():
        if docs:
            db[name].insert_many(docs)


def _inject(monkeypatch, point: str, action) -> str:
    """Call action() at `point`; returns the patch hook/after code for the points inside the patch."""
    if point == "before the running record":
        real = log.begin
        monkeypatch.setattr(log, "begin", lambda *a, **k: (action(), real(*a, **k))[1])
    elif point == "after the running record":
        real = log.begin
        monkeypatch.setattr(log, "begin", lambda *a, **k: (real(*a, **k), action())[0])
    elif point == "before the settle":
        real = log.settle
        monkeypatch.setattr(log, "settle", lambda db, rec, status, **k: (
            action() if status == log.APPLIED else None, real(db, rec, status, **k))[1])
    return point


def _patch_hooks(point: str, call: str = "__import__('test_mongo_state').ACTION(); ") -> dict:
    return {"hook": call if point == "mid-patch" else "", "after": call if point == "after the patch's writes" else ""}


ACTION = None


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_any_point_never_leads_to_a_silent_second_application(mongo, tmp_path, monkeypatch, cli, point):
    global ACTION
    folder = write_patch(tmp_path / "mongo", "0001_count", **_patch_hooks(point))
    died = {}

    def kill():
        died["state"] = _snapshot(mongo.db)
        raise Killed()

    ACTION = kill
    with monkeypatch.context() as m:
        _inject(m, point, kill)
        with pytest.raises((Killed, MigratorError)):  # inside the patch, the runner sees a failure; moot:
            apply_all(mongo.db, folder)                 # the process is gone, only the snapshot counts
    assert "state" in died
    _restore(mongo.db, died["state"])  # what a killed process leaves: its lock too, until it expires
    mongo.db[lock.COLLECTION].update_many({}, {"$set": {"expires": log.utcnow() - timedelta(seconds=1)}})
    ACTION = lambda: None
    written = counter(mongo.db)
    result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    if point == "before the running record":  # nothing ran, nothing recorded: it runs now, once
        assert result.exit_code == 0 and counter(mongo.db) == 1, result.output
    else:
        line = one_error_line(result)
        assert result.exit_code == 1 and "patch 0001_count: a run started" in line and "never finished" in line
        assert f"pid {os.getpid()}" in line and "`runner.py mongo resolve 0001_count --applied`" in line
        assert counter(mongo.db) == written  # not applied again
        assert "UNFINISHED" in cli("mongo", "status", "--mongo-dir", folder, env=mongo.env).stdout
    assert cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env).exit_code in (0, 1)
    assert counter(mongo.db) <= 1


@pytest.mark.parametrize("point", POINTS)
def test_sigterm_at_any_point_is_handled_and_never_silently_reapplied(mongo, tmp_path, monkeypatch, cli, point):
    """A real SIGTERM to this process, through the runner's own handler."""
    global ACTION
    # On a server the patch runs in a process of its own: it signals its runner, then waits to be killed.
    hooks = _patch_hooks(point, "__import__('os').kill(__import__('os').getppid(), 15); __import__('time').sleep(60); ") if mongo.real \
        else _patch_hooks(point)
    folder = write_patch(tmp_path / "mongo", "0001_count", **hooks)
    write_patch(folder, "0002_next")
    ACTION = lambda: os.kill(os.getpid(), signal.SIGTERM)
    with monkeypatch.context() as m:
        _inject(m, point, ACTION)
        result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    ACTION = lambda: None
    line = one_error_line(result)
    assert result.exit_code == 143 and "interrupted by SIGTERM" in line
    records = list(mongo.db.applied_patches.find())
    assert all(r["status"] != "running" for r in records)  # every record settled
    assert mongo.db[lock.COLLECTION].count_documents({}) == 0  # and the lock released
    if point in POINTS[:2]:
        assert [r["status"] for r in records] == ["cancelled"] and "(it had not started)" in line
        assert counter(mongo.db) == 0
    elif point == "before the settle":
        assert [r["status"] for r in records] == ["applied"] and "after applying 0001_count (logged)" in line
    else:
        assert [r["status"] for r in records] == ["failed"] and "its writes so far are kept" in line
        assert "interrupted by SIGTERM" in records[0]["error"]
    written = counter(mongo.db)
    again = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    if point in ("mid-patch", "after the patch's writes"):
        assert again.exit_code == 1 and "patch 0001_count failed" in one_error_line(again)
        assert counter(mongo.db) == written
    else:  # never started, or applied and logged: the next run goes on from there
        assert again.exit_code == 0, again.output
        assert counter(mongo.db) == 2  # 0001 once, 0002 once


# --- drift, renames, old records, names, read preference -------------------------------------------


def test_an_edited_applied_patch_is_reported_blocks_and_can_be_accepted(cli, mongo, tmp_path):
    folder = write_patch(tmp_path / "mongo", "0001_count")
    assert cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env).exit_code == 0
    (folder / "0001_count.py").write_text((folder / "0001_count.py").read_text() + "# edited\n")
    write_patch(folder, "0002_next")
    status = cli("mongo", "status", "--mongo-dir", folder, env=mongo.env).stdout
    assert "0001_count" in status and "CHANGED" in status and "runner.py mongo accept-changes 0001_count" in status
    blocked = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert blocked.exit_code == 3 and "has changed since" in one_error_line(blocked) and counter(mongo.db) == 1
    accepted = cli("mongo", "accept-changes", "0001_count", "--mongo-dir", folder, env=mongo.env)
    assert accepted.exit_code == 0 and "accepted the changed file of 0001_count" in accepted.stdout
    assert mongo.db.applied_patches.find_one({"status": "accepted"})["previous_checksum"]
    done = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert done.exit_code == 0 and "applied 0002_next" in done.stdout and counter(mongo.db) == 2  # 0001 not re-run


def test_a_renamed_patch_is_matched_by_checksum_and_not_rerun(cli, mongo, tmp_path):
    folder = write_patch(tmp_path / "mongo", "0001_count")
    cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    (folder / "0001_count.py").rename(folder / "0001_count_things.py")
    again = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert again.exit_code == 0 and "up to date" in again.stdout and counter(mongo.db) == 1
    assert "applied 1x (as 0001_count)" in cli("mongo", "status", "--mongo-dir", folder, env=mongo.env).stdout


def test_old_records_in_every_shape_are_read_and_matched(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    for name in ("0001_close_expired", "0002_fix_cycles", "0003_move_users", "0004_dated", "0005_new"):
        write_patch(folder, name)
    mongo.db.applied_patches.insert_many([
        {"patch": "001_close_expired.py", "comment": "suffix"},                        # no date at all
        {"patch": "002-fix-cycles", "comment": "hyphens", "applied": "2023-05-01T10:00:00Z"},  # a string date
        {"_id": "custom-id", "patch": "3_MOVE_USERS", "applied": "not a date"},        # an odd _id, odd case
        {"patch": "0004_dated", "comment": "naive", "applied": __import__("datetime").datetime(2022, 1, 1)},
    ])
    status = cli("mongo", "status", "--mongo-dir", folder, env=mongo.env)
    assert status.exit_code == 0, status.output
    assert "4 applied, 1 never applied" in status.stdout
    history = cli("mongo", "history", "--mongo-dir", folder, env=mongo.env)
    assert history.exit_code == 0 and "4 record(s)" in history.stdout and "2023-05-01 10:00:00 UTC" in history.stdout
    assert history.stdout.count("(no date)") == 2
    assert cli("mongo", "history", "--json", "--mongo-dir", folder, env=mongo.env).exit_code == 0
    run = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert run.exit_code == 0 and "applied 0005_new" in run.stdout and counter(mongo.db) == 1


@pytest.mark.parametrize("name", ["0003-fix.py", "12_bad name.js", "0004_fix.v2.py"])
def test_a_badly_named_patch_is_refused_before_anything_reads_it(cli, mongo, tmp_path, name):
    folder = write_patch(tmp_path / "mongo", "0001_count")
    (folder / name).write_text("raise SystemExit('must never be read')\n")
    (folder / "README.md").write_text("helpers are ignored")
    (folder / "__init__.py").write_text("")
    result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert result.exit_code == 2 and f"{folder / name}: not a valid patch name" in one_error_line(result)
    assert counter(mongo.db) == 0 and mongo.db.applied_patches.count_documents({}) == 0


def test_the_log_and_lock_are_read_from_the_primary(mongo):
    from pymongo import ReadPreference

    secondary = mongo.db.client.get_database(mongo.name, read_preference=ReadPreference.SECONDARY_PREFERRED)
    assert log.collection(secondary).read_preference == ReadPreference.PRIMARY
    assert lock.Lock(secondary).collection.read_preference == ReadPreference.PRIMARY


def test_error_texts_in_the_log_are_masked(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_leaks.py").write_text(
        "def run(db, dry_run):\n    raise RuntimeError('cannot reach mongodb://app:Sup3r-Secret@other:27017/x')\n")
    result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert "Sup3r-Secret" not in result.stderr
    (record,) = mongo.db.applied_patches.find()
    assert "Sup3r-Secret" not in record["error"] and "mongodb://app:***@other:27017/x" in record["error"]
