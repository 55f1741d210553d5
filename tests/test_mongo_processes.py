"""Exactly once, proven with real processes on a real server (FerretDB): `runner.py` processes racing, SIGKILLed
at every point of a patch's life, the server killed and restarted, the server paused past the lock's lifetime.

The points are hit by the test's own patch files, honestly: a patch's module-level code runs before the running
record, its run() runs after it; the patch writes a marker file at its point and waits there for the test's
SIGKILL. Nothing in the runner knows about these tests. The run after a kill (status, resolve, apply again), which
only reads what the killed one left, runs in-process (here: the suite's CLI fixture).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, running_ferretdb
from migrator.mongo import js_patch, lock, log


@pytest.fixture
def server(mongo):
    if not mongo.real:
        pytest.skip("needs a real Mongo server (FerretDB: install Go)")
    return mongo


def runner(mongo, *args, env=None) -> subprocess.Popen:
    """`runner.py ARGS` as a process of its own, pointed at the test's database."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO", "DB_", "DATABASE_URL"))}
    environment.update(mongo.env, **(env or {}))
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), *map(str, args)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def here(cli, mongo, *args) -> tuple[int, str, str]:
    """`runner.py ARGS` in-process (the suite's CLI fixture), pointed at the test's database: as finish(runner(...))."""
    result = cli(*args, env=mongo.env)
    return result.exit_code, result.stdout, result.stderr


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the runner ended before {path.name}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def counts(db) -> dict:
    return {d["_id"]: d["n"] for d in db.counter.find()}


# A patch that counts its applications: $inc on its own counter, so any second application shows.
COUNT = """
import time
def run(db, dry_run):
    time.sleep({sleep})
    if not dry_run:
        db.counter.update_one({{"_id": "{id}"}}, {{"$inc": {{"n": 1}}}}, upsert=True)
    return "counted"
"""


def count_patch(folder: Path, patch_id: str, sleep: float = 0.0) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{patch_id}.py").write_text(COUNT.format(id=patch_id, sleep=sleep))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, server):
    """The test's server on each of FerretDB's backends: SQLite serialises writers, PostgreSQL does not."""
    if request.param == "sqlite":
        yield server
        return
    import pymongo

    own = request.getfixturevalue("ferret_pg")
    client = pymongo.MongoClient(own.url, tz_aware=True)
    yield type(server)(own.url, server.name, client[server.name], own)
    client.drop_database(server.name)
    client.close()


def test_the_suites_ferretdb_is_its_own_with_telemetry_off(backend, tmp_path_factory):
    """Each backend's server: its own port (not 27017), its own state folder under the test's temporary root, and
    FerretDB's own record of its telemetry decision: off (never "undecided", which reports after a delay)."""
    import json

    own = backend.server
    assert own.port != 27017 and own.url == f"mongodb://127.0.0.1:{own.port}/"
    assert own.log.parent.is_relative_to(tmp_path_factory.getbasetemp())
    assert json.loads((own.log.parent / "state.json").read_text())["telemetry"] is False
    assert backend.db.client.admin.command("ping")["ok"] == 1


def test_ten_runner_processes_at_once_apply_three_patches_exactly_once(backend, tmp_path):
    server = backend  # on SQLite, which serialises writers, and on PostgreSQL, which does not
    folder = tmp_path / "mongo"
    for i, patch_id in enumerate(("0001_a", "0002_b", "0003_c")):
        count_patch(folder, patch_id, sleep=0.2 * i)
    procs = [runner(server, "mongo", "apply", "--run", "--mongo-dir", folder, "--lock-timeout", 120) for _ in range(10)]
    results = [finish(p) for p in procs]
    assert [code for code, _, _ in results] == [0] * 10, [err for _, _, err in results]
    assert counts(server.db) == {"0001_a": 1, "0002_b": 1, "0003_c": 1}
    records = list(server.db.applied_patches.find())
    assert sorted((r["patch"], r["status"]) for r in records) == [
        ("0001_a", "applied"), ("0002_b", "applied"), ("0003_c", "applied")]
    assert len({r["pid"] for r in records}) == 1  # one runner applied them; the nine others found them applied
    assert sum("applied 0001_a" in out for _, out, _ in results) == 1
    assert server.db[lock.COLLECTION].count_documents({}) == 0  # released


TAKE = """
import sys, time
import pymongo
from migrator.mongo import lock
client = pymongo.MongoClient(sys.argv[1], tz_aware=True)
client.admin.command("ping")
for round, name in enumerate(sys.argv[3:]):  # all ten ask at the same instants, once per round
    time.sleep(max(0.0, float(sys.argv[2]) + round * 0.5 - time.time()))
    print("TAKEN" if lock.Lock(client[name]).try_take() else "REFUSED", flush=True)
"""
ROUNDS = 5


@pytest.mark.parametrize("expired", [False, True], ids=["free", "expired"])
def test_the_lock_is_taken_by_exactly_one_of_ten_racing_processes(backend, expired):
    """The duplicate-key insert (a free lock) and the takeover of an expired one, on the real server: ten
    processes race, five rounds (a database each)."""
    client = backend.db.client
    names = [f"{backend.name}_{n}" for n in range(ROUNDS)]
    if expired:
        for name in names:
            client[name][lock.COLLECTION].insert_one({"_id": lock.LOCK_ID, "owner": "dead", "host": "gone", "pid": 1,
                                                      "since": log.utcnow(), "expires": log.utcnow() - timedelta(seconds=5)})
    at = time.time() + 4
    environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", TAKE, backend.url, str(at), *names], env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(10)]
    outcomes = [finish(p) for p in procs]
    try:
        assert [code for code, _, _ in outcomes] == [0] * 10, [err for _, _, err in outcomes]
        rounds = list(zip(*(out.split() for _, out, _ in outcomes)))
        assert [sorted(r) for r in rounds] == [["REFUSED"] * 9 + ["TAKEN"]] * ROUNDS
        assert all(client[name][lock.COLLECTION].find_one({"_id": lock.LOCK_ID})["owner"] != "dead" for name in names)
    finally:
        for name in names:
            client.drop_database(name)


def test_every_takeover_of_an_expired_lock_has_exactly_one_winner(backend):
    """Many rounds of ten runners (threads, each its own Lock and connection, started at one barrier): with a
    conditional findOneAndUpdate, FerretDB let several win most rounds (it reads, then writes by _id)."""
    import threading

    import pymongo

    winners = []
    for round in range(20):
        name = f"{backend.name}_t{round}"
        clients = [pymongo.MongoClient(backend.url, tz_aware=True) for _ in range(10)]
        clients[0][name][lock.COLLECTION].insert_one({"_id": lock.LOCK_ID, "owner": "dead", "since": log.utcnow(),
                                                       "expires": log.utcnow() - timedelta(seconds=5)})
        barrier, taken = threading.Barrier(10), []
        locks = [lock.Lock(c[name]) for c in clients]

        def take(one):
            barrier.wait()
            taken.append(one.try_take())

        threads = [threading.Thread(target=take, args=(one,)) for one in locks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        holder = clients[0][name][lock.COLLECTION].find_one({"_id": lock.LOCK_ID})
        winners.append((taken.count(True), sum(holder["owner"] == one.owner for one in locks)))
        clients[0].drop_database(name)
        for c in clients:
            c.close()
    assert winners == [(1, 1)] * 20


# --- SIGKILL at each point of a patch's life ---------------------------------------------------------

# The patch: two writes (a counter per write), a marker file and a wait at the point the test names.
POINTED = '''
import os, time
from pathlib import Path
POINT, MARKS = os.environ.get("HCM_TEST_POINT", "none"), Path({marks!r})

def reached(point):
    if POINT == point:
        (MARKS / point).touch()
        time.sleep(float(os.environ.get("HCM_TEST_WAIT", "60")))

reached("before the running record")  # module level: loaded before its running record is written

def run(db, dry_run):
    reached("after the running record")
    db.counter.update_one({{"_id": "first"}}, {{"$inc": {{"n": 1}}}}, upsert=True)
    reached("mid-patch")
    db.counter.update_one({{"_id": "second"}}, {{"$inc": {{"n": 1}}}}, upsert=True)
    reached("after the patch's writes")
    return "two writes"
'''

POINTS = ["before the running record", "after the running record", "mid-patch", "after the patch's writes",
          "while renewing the lock"]


def pointed_patch(tmp_path: Path) -> tuple[Path, Path]:
    folder, marks = tmp_path / "mongo", tmp_path / "marks"
    folder.mkdir()
    marks.mkdir()
    (folder / "0001_two_writes.py").write_text(POINTED.format(marks=str(marks)))
    return folder, marks


def expire_lock(db) -> None:
    """What time does to a killed runner's lock (TTL after its last heartbeat), without waiting for it."""
    db[lock.COLLECTION].update_many({}, {"$set": {"expires": log.utcnow() - timedelta(seconds=1)}})


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_point_never_leads_to_a_silent_second_application(cli, server, tmp_path, point):
    folder, marks = pointed_patch(tmp_path)
    if point == "while renewing the lock":
        # The patch returns after its writes; the runner then renews the lock (held.check) before it settles.
        # The server is paused at that moment, so the renewal hangs, and the runner is killed inside it.
        proc = runner(server, "mongo", "apply", "--run", "--mongo-dir", folder,
                      env={"HCM_TEST_POINT": "after the patch's writes", "HCM_TEST_WAIT": "1"})
        wait_for(marks / "after the patch's writes", proc)
        os.kill(server.server.process.pid, signal.SIGSTOP)
        try:
            time.sleep(3)  # the patch's 1 s wait ends: the runner is in its renewal, waiting for the server
            proc.kill()
            proc.wait()
        finally:
            os.kill(server.server.process.pid, signal.SIGCONT)
    else:
        proc = runner(server, "mongo", "apply", "--run", "--mongo-dir", folder, env={"HCM_TEST_POINT": point})
        wait_for(marks / point, proc)
        proc.kill()
        proc.wait()
    finish(proc)
    written = counts(server.db)
    expire_lock(server.db)
    code, out, err = here(cli, server, "mongo", "apply", "--run", "--mongo-dir", folder)
    if point == "before the running record":  # nothing was recorded or written: it runs now, once
        assert code == 0 and "applied 0001_two_writes" in out, err
        assert counts(server.db) == {"first": 1, "second": 1}
        return
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 1 and "patch 0001_two_writes: a run started" in line and "never finished" in line, err
    assert "`runner.py mongo resolve 0001_two_writes --applied`" in line and "runner.py mongo apply 0001_two_writes --run" in line
    assert counts(server.db) == written  # not applied again
    (record,) = server.db.applied_patches.find()
    assert record["status"] == "running"
    # Settled by a person, it is not run again either.
    code, out, err = here(cli, server, "mongo", "resolve", "0001_two_writes", "--applied", "--note", "checked",
                          "--mongo-dir", folder)
    assert code == 0, err
    code, out, err = here(cli, server, "mongo", "apply", "--run", "--mongo-dir", folder)
    assert code == 0 and counts(server.db) == written, err


# The same two writes in JavaScript, for mongosh (a real run's mongosh may write files: the marker).
POINTED_JS = """
db.counter.updateOne({{_id: "first"}}, {{$inc: {{n: 1}}}}, {{upsert: true}});
require("fs").writeFileSync({marks!r} + "/mid-patch", "");
sleep(2000);
db.counter.updateOne({{_id: "second"}}, {{$inc: {{n: 1}}}}, {{upsert: true}});
"""


@pytest.mark.parametrize("kind, point", [("py", "mid-patch"), ("js", "mid-patch"), ("py", "after the patch's writes"),
                                         ("py", "before the running record")],
                         ids=["py-mid-patch", "js-mid-patch", "py-after-its-writes", "py-before-its-record"])
def test_the_server_killed_mid_patch_and_restarted(cli, server, tmp_path, kind, point):
    """One line naming host:port, the patch and what is known of it; after the restart the patch is blocked, not
    applied again."""
    from migrator import ferretdb

    folder, marks = pointed_patch(tmp_path)
    patch = folder / f"0001_two_writes.{kind}"
    if kind == "js":
        if not js_patch.LOCAL_MONGOSH.exists() and not shutil.which("mongosh"):
            pytest.skip("needs mongosh (make mongosh)")
        (folder / "0001_two_writes.py").unlink()
        patch.write_text(POINTED_JS.format(marks=str(marks)))
    data, state = tmp_path / "ferretdb-data", tmp_path / "ferretdb-state"
    with running_ferretdb(state, sqlite_dir=data) as own:
        import pymongo

        target = type(server)(own.url, server.name, pymongo.MongoClient(own.url, tz_aware=True)[server.name])
        proc = runner(target, "mongo", "apply", "--run", "--mongo-dir", folder, "--mongo-timeout", 3,
                      env={"HCM_TEST_POINT": point, "HCM_TEST_WAIT": "2"})
        wait_for(marks / point, proc)
        own.process.kill()
        own.process.wait()
        code, out, err = finish(proc)
        (line,) = [l for l in err.splitlines() if l.startswith("error:")]
        assert code == 1 and own.where in line, err
        assert err.rstrip().splitlines()[-1] == line and "Traceback" not in err
        assert "Topology Description" not in line and "configured timeouts" not in line  # pymongo's noise, 500 chars
        # ... and the patch, where it failed, and what is known of it: started, record left running, how to settle
        if point == "mid-patch":  # its second write failed: where, and that it may be half done
            at = f"{patch}:17" if kind == "py" else str(patch)  # mongosh's rewriter hides a JS patch's line
            assert f"patch 0001_two_writes ({at}) failed (" in line, line
            assert "record is left `running`: its writes may be partly applied" in line
            assert "`runner.py mongo resolve 0001_two_writes --applied` or `--not-applied`" in line
        elif point == "after the patch's writes":  # it returned; its record could not be settled
            assert f"patch 0001_two_writes ({patch}) after it returned (its writes are done)" in line, line
            assert "`runner.py mongo resolve 0001_two_writes --applied --note ...`" in line
        else:  # loaded, then the server went away before its record: it never ran
            assert f"patch 0001_two_writes ({patch}) before it started: it did not run" in line, line
        written = {"first": 1} if point == "mid-patch" else {"first": 1, "second": 1}
    with running_ferretdb(state, sqlite_dir=data, port=own.port) as again:
        target.db.client.close()
        target = type(server)(again.url, server.name, pymongo.MongoClient(again.url, tz_aware=True)[server.name])
        if point == "before the running record":  # no record, nothing written: the next run applies it, once
            expire_lock(target.db)
            assert counts(target.db) == {} and target.db.applied_patches.count_documents({}) == 0
            code, out, err = here(cli, target, "mongo", "apply", "--run", "--mongo-dir", folder)
            assert code == 0 and counts(target.db) == written, err
            target.db.client.close()
            return
        code, out, err = here(cli, target, "mongo", "status", "--mongo-dir", folder)  # the lock not yet expired
        assert "running now" not in out + err and f"pid {proc.pid} on this host has exited" in out + err, out + err
        expire_lock(target.db)
        assert counts(target.db) == written
        code, out, err = here(cli, target, "mongo", "apply", "--run", "--mongo-dir", folder)
        assert code == 1 and "patch 0001_two_writes: a run started" in err, err
        assert counts(target.db) == written
        target.db.client.close()
    assert ferretdb.BINARY.exists()


# --- the lock lost while the server was paused -------------------------------------------------------

# The first runner's lock lives 2 s once its patch starts (a sitecustomize on its PYTHONPATH: a patch runs in a
# process of its own, so it cannot shorten the runner's). Its heartbeat, started with a TTL of 20 s, beats every
# 5 s (it used to be the usual TTL's 30 s, which the test waited out): each renewal leaves the lock 2 s to live, so
# it expires between beats and the second runner takes it over. The patch writes, waits for the test; a second
# patch follows.
SHORT_TTL_RUNNER = """
from datetime import timedelta
from migrator.mongo import lock, log
lock.TTL = timedelta(seconds=20)  # the heartbeat's interval is TTL / 4, read when it starts
real_begin = log.begin
def begin(*args, **kwargs):
    lock.TTL = timedelta(seconds=2)
    return real_begin(*args, **kwargs)
log.begin = begin
"""
SHORT_TTL = '''
import time
from pathlib import Path
MARKS = Path({marks!r})

def run(db, dry_run):
    db.counter.update_one({{"_id": "first"}}, {{"$inc": {{"n": 1}}}}, upsert=True)
    (MARKS / "running").touch()
    while not (MARKS / "go on").exists():
        time.sleep(0.05)
    return "done"
'''


def test_a_runner_that_lost_its_lock_while_the_server_was_paused_stops_before_its_next_write(server, tmp_path):
    folder, marks = tmp_path / "mongo", tmp_path / "marks"
    folder.mkdir()
    marks.mkdir()
    (folder / "0001_slow.py").write_text(SHORT_TTL.format(marks=str(marks)))
    count_patch(folder, "0002_next")
    (tmp_path / "short_ttl").mkdir()
    (tmp_path / "short_ttl" / "sitecustomize.py").write_text(SHORT_TTL_RUNNER)
    first = runner(server, "mongo", "apply", "--run", "--mongo-dir", folder, env={"PYTHONPATH": f"{tmp_path / 'short_ttl'}:{PROJECT_ROOT}"})
    wait_for(marks / "running", first)
    pid = server.server.process.pid
    os.kill(pid, signal.SIGSTOP)  # the server is paused past the lock's lifetime (2 s)
    try:
        time.sleep(3)
    finally:
        os.kill(pid, signal.SIGCONT)
    # Another runner takes the expired lock over, finds the unsettled run and stops (releasing the lock). The first
    # runner is frozen meanwhile (still stalled, as a frozen VM is): the second says it is alive on this host and may
    # still be writing (attack 20j: its advice, followed then, applied the patch twice).
    os.kill(first.pid, signal.SIGSTOP)
    try:
        code2, out2, err2 = finish(runner(server, "mongo", "apply", "--run", "--mongo-dir", folder, "--lock-timeout", 60))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert code2 == 1 and "patch 0001_slow: a run started" in err2, err2
    assert f"never finished (pid {first.pid} on this host is still alive: it lost its lock and may still be writing; " \
           "wait for it to end, or stop it, before re-running or resolving)" in err2, err2
    # The first runner's heartbeat finds its lock lost while its patch still runs (it waits for "go on", never
    # given): the patch is stopped then, not left running until it returns.
    code, out, err = finish(first)
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 4 and "lost the patch lock" in line and "stopped before writing anything more" not in line, err
    # why, in words: the runner that took it over, the lock removed (the other runner released it), or renewals
    # the paused server never answered (test_mongo_lock_reason.py: never the driver's private class name)
    assert any(why in line for why in (" UTC, now held by ", " UTC, removed)", "the server did not answer (")), err
    assert f"while patch 0001_slow ({folder / '0001_slow.py'}) ran: its process was stopped then; its writes until " \
           "then are kept and its record is left `running`" in line, line
    assert "`runner.py mongo resolve 0001_slow --applied` or `--not-applied`" in line, line
    (record,) = server.db.applied_patches.find()
    assert record["patch"] == "0001_slow" and record["status"] == "running"  # the first did not settle it
    assert counts(server.db) == {"first": 1}  # 0002 never ran
    assert "Traceback" not in err and not list(marks.glob("go on"))


# The runner's heartbeat beats every second (TTL 4 s), and notes when it finds the lock lost.
FAST_BEAT_RUNNER = """
import time
from datetime import timedelta
from migrator.mongo import lock
lock.TTL = timedelta(seconds=4)
real_lost = lock.Lock._lost
def _lost(self):
    open({marks!r} + "/lost at", "w").write(repr(time.time()))
    return real_lost(self)
lock.Lock._lost = _lost
"""
# attack 20j's unlock_long: the lock is lost while the patch has a minute of writes left (here it removes the lock
# document itself; in life another runner took it over after a stall).
UNLOCK_LONG = """
import time
def run(db, dry_run):
    db.applied_patches_lock.delete_many({})
    for i in range(600):
        db.m.insert_one({"i": i, "at": time.time()})
        time.sleep(0.1)
    db.m.insert_one({"done": True})
    return "600 writes"
"""


@pytest.mark.parametrize("kind", ["py", "js"])
def test_a_patch_whose_runner_lost_the_lock_is_stopped_at_once_not_when_it_returns(server, tmp_path, kind):
    folder, marks, site = tmp_path / "mongo", tmp_path / "marks", tmp_path / "fast_beat"
    for made in (folder, marks, site):
        made.mkdir()
    if kind == "js":
        if not js_patch.LOCAL_MONGOSH.exists() and not shutil.which("mongosh"):
            pytest.skip("needs mongosh (make mongosh)")
        (folder / "0001_unlock_long.js").write_text(
            "db.applied_patches_lock.deleteMany({});\nfor (let i = 0; i < 600; i++) {\n"
            "  db.m.insertOne({i: i, at: Date.now() / 1000});\n  sleep(100);\n}\ndb.m.insertOne({done: true});\n")
    else:
        (folder / "0001_unlock_long.py").write_text(UNLOCK_LONG)
    count_patch(folder, "0002_next")
    (site / "sitecustomize.py").write_text(FAST_BEAT_RUNNER.format(marks=str(marks)))
    code, out, err = finish(runner(server, "mongo", "apply", "--run", "--mongo-dir", folder,
                                   env={"PYTHONPATH": f"{site}:{PROJECT_ROOT}"}))
    written = server.db.m.count_documents({})
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 4 and "Traceback" not in err, err
    patch = folder / f"0001_unlock_long.{kind}"
    assert line.startswith(f"error: lost the patch lock on {server.server.where}/{server.name} (") and " UTC, removed)" in line, line
    assert f"while patch 0001_unlock_long ({patch}) ran: its process was stopped then; its writes until then are " \
           "kept and its record is left `running`: `runner.py mongo status`, check its writes, then `runner.py mongo " \
           "resolve 0001_unlock_long --applied` or `--not-applied` (with --note)" in line, line
    assert "stopped before writing anything more" not in line
    # no write after the runner found the lock lost (the one in flight at that instant aside), none after it ended
    lost = float((marks / "lost at").read_text())
    late = [d["i"] for d in server.db.m.find({"at": {"$gt": lost + 1.0}})]
    assert late == [] and server.db.m.count_documents({"done": True}) == 0 and 0 < written < 600, (late, written)
    time.sleep(1.5)
    assert server.db.m.count_documents({}) == written
    assert [(r["patch"], r["status"]) for r in server.db.applied_patches.find()] == [("0001_unlock_long", "running")]
    assert counts(server.db) == {}  # 0002 never ran
    # the next run refuses to re-run it silently, naming it and the commands
    code, out, err = finish(runner(server, "mongo", "apply", "--run", "--mongo-dir", folder))
    assert code == 1 and "patch 0001_unlock_long: a run started" in err and "has exited" in err, err
    assert server.db.m.count_documents({}) == written


def test_renewals_the_server_never_answered_are_said_in_words_never_as_the_drivers_private_class():
    """A server paused past the lock's lifetime (attack 20g: 135 s) fails the heartbeat's renewal with pymongo's
    `_OperationCancelled` when the pool resets: the lost-lock line quotes what the driver said, not that name."""
    from pymongo.errors import AutoReconnect, _OperationCancelled

    from migrator.mongo import lock

    assert lock._reason(_OperationCancelled("operation cancelled")) == "operation cancelled"
    assert lock._reason(AutoReconnect("127.0.0.1:27017: timed out")) == "AutoReconnect: 127.0.0.1:27017: timed out"
    assert lock._reason(_OperationCancelled("")) == "no reason given"


# --- mongosh dies with its runner ---------------------------------------------------------------------------------

# Inserts once a second for a minute: a mongosh that outlives its runner keeps writing.
TICKS = """
for (let i = 0; i < 60; i++) {
  db.ticks.insertOne({i: i});
  sleep(1000);
}
"""


def test_a_js_patch_dies_with_its_sigkilled_runner(cli, server, tmp_path):
    if not __import__("shutil").which("mongosh") and not (PROJECT_ROOT / ".mongosh").exists():
        pytest.skip("needs mongosh (make mongosh)")
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_ticks.js").write_text(TICKS)
    proc = runner(server, "mongo", "apply", "--run", "--mongo-dir", folder)
    deadline = time.monotonic() + 60
    while server.db.ticks.count_documents({}) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.5)  # mongosh's in-flight insert, then its death (PR_SET_DEATHSIG at once; the prelude's check in 1 s)
    after_kill = server.db.ticks.count_documents({})
    time.sleep(3)
    assert server.db.ticks.count_documents({}) == after_kill  # no insert from an orphaned mongosh
    # the next run names the JS patch and the commands to settle it, and does not run it again
    expire_lock(server.db)
    code, out, err = here(cli, server, "mongo", "apply", "--run", "--mongo-dir", folder)
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 1 and "patch 0001_ticks: a run started" in line and "never finished" in line, err
    assert "`runner.py mongo resolve 0001_ticks --applied` or `--not-applied`" in line
    assert server.db.ticks.count_documents({}) == after_kill


# --- clock skew: every runner compares lock expiries on the server's clock ---------------------------------------

def test_a_runner_whose_clock_runs_ahead_does_not_take_over_a_live_lock(server, monkeypatch):
    from datetime import datetime, timezone

    from migrator.mongo import state

    holder = lock.Lock(server.db, "test")
    assert holder.try_take()
    try:
        ahead = lambda: datetime.now(timezone.utc) + lock.TTL * 5  # noqa: E731 - this client's clock is wrong
        monkeypatch.setattr(lock, "utcnow", ahead)
        monkeypatch.setattr(log, "utcnow", ahead)
        assert not lock.Lock(server.db, "test").try_take()  # the holder renewed it a moment ago, by the server
        assert state._live_holder(server.db) is not None  # and status still says it runs
    finally:
        monkeypatch.undo()
        holder.release()
