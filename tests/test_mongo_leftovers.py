"""What a Python patch's processes leave behind when the patch's own process dies or the runner is stopped (issue 20's
sixth hostile pass): the runner ends, kills them all and frees the lock. Real runner processes on the real server."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from test_mongo_child import _folder, real  # noqa: F401 (a fixture)
from test_mongo_child_protocol import _run
from test_progress import read_until, runner
from migrator.mongo import lock


def _running(pid: int) -> bool:
    """The process runs (not gone, not a zombie waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _survivors(pids) -> list[int]:
    """Those of `pids` still running after a moment (SIGKILL is delivered at once, the reaping may take a moment)."""
    for _ in range(50):
        left = [pid for pid in pids if _running(pid)]
        if not left:
            break
        time.sleep(0.1)
    return left


def _marked(mark: str) -> list[int]:
    """The processes whose command line holds `mark`."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if mark.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# The patch's process forks a worker (os.fork; multiprocessing's fork workers do the same), which holds the results
# pipe, then dies without a result (the OOM killer, a segfault: SIGKILL to itself).
CRASH = """import os, signal, time


def crash():
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    print(f"worker={{pid}}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
{call}
"""


@pytest.mark.parametrize("run", [True, False], ids=["run", "dry-run"])
@pytest.mark.parametrize("at", ["import", "run"])
def test_a_patch_whose_process_dies_beside_a_live_fork_fails_and_the_fork_is_killed(real, tmp_path, run, at):
    call = "crash()\n\ndef run(db, dry_run):\n    return 'never'" if at == "import" else \
        "def run(db, dry_run):\n    crash()"
    folder = _folder(tmp_path, "0001_crash.py", CRASH.format(call=call))
    code, out, err = _run("mongo", "apply", *(["--run"] if run else []), "--mongo-dir", folder, env=real.env,
                          timeout=90)  # before: the runner waited for the pipe's end forever
    worker = int(re.search(r"worker=(\d+)", out).group(1))
    alive = _survivors([worker])
    _kill_all(alive)
    if at == "import":
        assert code == 2, out + err
        assert "0001_crash.py cannot be loaded: the patch's process ended (exit -9) before it was loaded" in err, err
    else:
        assert code == 1, out + err
        assert "0001_crash failed: the patch's process ended (exit -9) before run() returned" in err, err
    assert len(_errors(err)) == 1, err
    assert alive == []
    records = list(real.db.applied_patches.find({"patch": "0001_crash"}))
    assert [r["status"] for r in records] == (["failed"] if run and at == "run" else [])
    assert real.db[lock.COLLECTION].count_documents({"_id": lock.LOCK_ID}) == 0  # the next runner is not kept out


# A chain of nested processes in a session of their own (each a `sleep` whose only child is the next link), longer
# than the 1000 generations the runner used to kill: the ones below outlived the run, with the runner's environment.
CHAIN = """import os, time
DEPTH, MARK = {depth}, {mark!r}

def run(db, dry_run):
    if os.fork() == 0:
        os.setsid()  # out of the patch's process group: only the runner's sweep of what it left can end them
        for _ in range(DEPTH):
            if os.fork():
                os.execv("/bin/sleep", ["sleep", MARK])  # a link holding the rest of the chain
        open({done!r}, "w").close()
        os.execv("/bin/sleep", ["sleep", MARK])
    while not os.path.exists({done!r}):
        time.sleep(0.05)
    return "chain built"
"""


def test_a_chain_of_nested_daemons_longer_than_a_thousand_ends_with_the_run(real, tmp_path):
    mark = f"3600.{time.time_ns() % 10**6}"  # (a survivor must outlive the test's look)
    folder = _folder(tmp_path, "0001_chain.py", CHAIN.format(depth=1100, mark=mark, done=str(tmp_path / "done")))
    try:
        code, out, err = _run("mongo", "apply", "--run", "--mongo-dir", folder, env=real.env, timeout=300)
        assert code == 0, out + err
        assert "applied 0001_chain" in out + err, out + err
        assert _survivors(_marked(mark)) == []
    finally:
        _kill_all(_marked(mark))


def test_sigterm_to_a_dry_run_kills_the_patchs_daemon_and_says_so_in_one_line(real, tmp_path):
    folder = _folder(tmp_path, "0001_daemon.py", "import subprocess, sys, time\n\ndef run(db, dry_run):\n"
                     "    p = subprocess.Popen(['sleep', '3600'], start_new_session=True)\n"
                     "    sys.stderr.write(f'daemon={p.pid}\\n')\n    time.sleep(60)\n")
    proc = runner("mongo", "apply", "--mongo-dir", folder, env=real.env)
    try:
        lines = read_until(proc, lambda line: "daemon=" in line, 60)
        daemon = int(re.search(r"daemon=(\d+)", "".join(lines)).group(1))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    alive = _survivors([daemon])
    _kill_all(alive)
    assert proc.returncode == 143, err
    assert _errors(err) == [f"error: {folder / '0001_daemon.py'}: dry run of 0001_daemon interrupted by "
                                        "SIGTERM (nothing was written)"], err
    assert alive == []


# A --run patch with a helper writing in a session of its own and a fan of processes below another (the runner's
# cleanup stops each of them); the operator sends SIGTERM twice, the second while the cleanup runs: it used to abort
# it (raised in proc.wait() or Orphans.end()), and the helper kept writing (or stayed stopped) after the runner exited.
# The helper writes every 0.2 s (five a second: the 1 s look after the run sees a live one) and the patch asks the server
# for the count only once the fan is built: a count and a write every 50 ms through the fan's build cost FerretDB ~7 s.
TWICE = """import os, subprocess, sys, time
HELPER = '''
import os, time, pymongo
ticks = pymongo.MongoClient(os.environ["MONGO_URL"])[os.environ["MONGO_DB"]].ticks
while True:
    ticks.insert_one({{"t": time.time()}}); time.sleep(0.2)
'''

def run(db, dry_run):
    helper = subprocess.Popen([sys.executable, "-c", HELPER], start_new_session=True)
    fan = os.fork()
    if fan == 0:
        os.setsid()
        for _ in range({fan}):
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", {mark!r}])
        open({done!r}, "w").close()
        os.execv("/bin/sleep", ["sleep", {mark!r}])
    while not os.path.exists({done!r}) or db.ticks.count_documents({{}}) < 3:
        time.sleep(0.05)
    sys.stderr.write(f"helper={{helper.pid}} patch={{os.getpid()}}\\n")
    time.sleep(120)
"""


def _killed(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True  # reaped already


def test_a_second_sigterm_during_the_cleanup_does_not_leave_the_patchs_helper_writing(real, tmp_path):
    mark = f"3600.{time.time_ns() % 10**6}"
    folder = _folder(tmp_path, "0001_twice.py", TWICE.format(fan=2000, mark=mark, done=str(tmp_path / "done")))
    proc = runner("mongo", "apply", "--run", "--mongo-dir", folder, env=real.env)
    helper = None
    try:
        lines = read_until(proc, lambda line: "helper=" in line, 120)
        helper, patch = map(int, re.search(r"helper=(\d+) patch=(\d+)", "".join(lines)).groups())
        proc.send_signal(signal.SIGTERM)
        while not _killed(patch):  # the cleanup has begun (it kills the patch's process first): the second one now
            pass
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        alive = _survivors([helper, *_marked(mark)])
        ticks = real.db.ticks.count_documents({})
        time.sleep(1)
        assert (alive, real.db.ticks.count_documents({})) == ([], ticks)  # nothing left, nothing writes any more
        assert proc.returncode in (143, -signal.SIGTERM), err  # (a second one after the run's end: SIGTERM's own)
        assert _errors(err) == [f"error: {folder / '0001_twice.py'}: 0001_twice interrupted by SIGTERM (its writes "
                                "so far are kept; the next run stops at it)"], err
    finally:
        proc.kill()
        proc.wait()
        _kill_all(([helper] if helper else []) + _marked(mark))
