"""SIGTERM and Ctrl-C around a patch's record, with real processes on the suite's FerretDB (attack 20h).

Between a patch's return and its `applied` record the runner renews its lock and writes the record: two round trips
to the server. The test pauses the server (SIGSTOP) right after the patch returned, so the runner waits there, and
signals the runner then: the signal must wait for the record (or, the server gone, the line must say the patch ran
and how to settle it), never "did not run". A burst of Ctrl-C 10 ms apart must not cut that short either.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import running_ferretdb
from test_mongo_processes import finish, runner, server, wait_for  # noqa: F401 (a fixture)

RETURNS = """
import time
from pathlib import Path

def run(db, dry_run):
    db.w.insert_one({{"w": 1}})
    Path({marks!r}, "written").touch()
    while not Path({marks!r}, "server paused").exists():
        time.sleep(0.01)
    return "wrote"
"""


def _patches(tmp_path: Path) -> tuple[Path, Path]:
    folder, marks = tmp_path / "mongo", tmp_path / "marks"
    folder.mkdir()
    marks.mkdir()
    (folder / "0001_first.py").write_text("def run(db, dry_run):\n    return 'first'\n")
    (folder / "0002_w.py").write_text(RETURNS.format(marks=str(marks)))
    return folder, marks


def _patch_process_ended(pid: int, timeout: float = 60) -> None:
    """The runner's children (the patch's process) are gone: it is past the patch's return, in its cleanup or its
    record (the patch's marker alone comes before the runner has read the outcome)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        assert time.monotonic() < deadline, "the patch's process never ended"
        time.sleep(0.02)
    time.sleep(0.5)  # into the renewal, which waits for the paused server (paused since the patch's marker)


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("signum, presses", [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGINT, 5)],
                         ids=["sigterm", "ctrl-c", "ctrl-c-burst"])
def test_a_signal_after_a_patch_returned_waits_for_its_applied_record(server, tmp_path, signum, presses):
    folder, marks = _patches(tmp_path)
    proc = runner(server, "mongo", "apply", "--run", "--mongo-dir", folder)
    wait_for(marks / "written", proc)
    os.kill(server.server.process.pid, signal.SIGSTOP)
    try:
        (marks / "server paused").touch()  # the patch returns now
        _patch_process_ended(proc.pid)
        for _ in range(presses):
            proc.send_signal(signum)
            time.sleep(0.01)
        time.sleep(1)
    finally:
        os.kill(server.server.process.pid, signal.SIGCONT)
    code, out, err = finish(proc)
    name = signal.Signals(signum).name
    assert code == 128 + signum, err
    assert _errors(err) == [f"error: interrupted by {name} after applying 0001_first, 0002_w (logged); the remaining "
                            "patches did not run"], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert server.db.w.count_documents({}) == 1
    assert sorted((r["patch"], r["status"]) for r in server.db.applied_patches.find()) == [
        ("0001_first", "applied"), ("0002_w", "applied")]
    assert server.db.applied_patches_lock.count_documents({}) == 0  # released, signal or not


def test_a_sigterm_that_waits_for_a_server_gone_says_the_patch_ran_and_how_to_settle_it(server, tmp_path):
    folder, marks = _patches(tmp_path)
    (folder / "0001_first.py").unlink()
    with running_ferretdb(tmp_path / "ferretdb-state", sqlite_dir=tmp_path / "ferretdb-data") as own:
        import pymongo

        target = type(server)(own.url, server.name, pymongo.MongoClient(own.url, tz_aware=True)[server.name])
        proc = runner(target, "mongo", "apply", "--run", "--mongo-dir", folder, "--mongo-timeout", 3)
        wait_for(marks / "written", proc)
        os.kill(own.process.pid, signal.SIGSTOP)
        (marks / "server paused").touch()
        _patch_process_ended(proc.pid)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        own.process.kill()  # the server is gone while the signal waits for the record
        own.process.wait()
        code, out, err = finish(proc)
        target.db.client.close()
    (line,) = _errors(err)
    assert code == 143 and "Traceback" not in err, err
    assert line.startswith("error: interrupted by SIGTERM after 0002_w ran; MongoDB at " + own.where), line
    assert f"patch 0002_w ({folder / '0002_w.py'}) after it returned (its writes are done), so its record is left " \
           "`running`" in line, line
    assert "`runner.py mongo status`" in line and "`runner.py mongo resolve 0002_w --applied --note ...`" in line
    assert "did not run" not in line and "before any patch started" not in line


RUNS = """
import sys, time

def run(db, dry_run):
    if not dry_run:
        db.w.insert_one({"w": 1})
    sys.stderr.write("patch started\\n")
    time.sleep(60)
"""


@pytest.mark.parametrize("run", [True, False], ids=["run", "dry-run"])
def test_a_burst_of_ctrl_c_during_a_patch_names_it_once_without_a_traceback(server, tmp_path, run):
    from test_progress import read_until

    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_long.py").write_text(RUNS)
    proc = runner(server, "mongo", "apply", *(["--run"] if run else []), "--mongo-dir", folder)
    assert any("patch started" in line for line in read_until(proc, lambda line: "patch started" in line, 60))
    for _ in range(5):  # Ctrl-C pressed five times, 10 ms apart
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    code, out, err = finish(proc)
    assert code == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    patch = folder / "0001_long.py"
    if run:
        assert _errors(err) == [f"error: {patch}: 0001_long interrupted by SIGINT (its writes so far are kept; the "
                                "next run stops at it)"], err
        assert [(r["patch"], r["status"]) for r in server.db.applied_patches.find()] == [("0001_long", "failed")]
    else:
        assert _errors(err) == [f"error: {patch}: dry run of 0001_long interrupted by SIGINT (nothing was written)"], err
        assert server.db.applied_patches.count_documents({}) == 0


AFTER_STOP = """
import os, signal, sys
sys.path.insert(0, {root!r})
from migrator import interrupt

interrupt.after_stop()  # as runner.py does
try:
    with interrupt.guard(ctrl_c=True):
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C stops the run
except interrupt.Interrupted as exc:
    print("stopped:", exc)
os.kill(os.getpid(), signal.{late})  # pressed again while the runner says what happened, after its guard
print("said it")
"""


@pytest.mark.parametrize("late", ["SIGINT", "SIGTERM"])
def test_a_signal_after_the_run_was_stopped_does_not_cut_the_message_short(late):
    """The guard's handlers end with the run; a burst's later signals then met Python's own: a KeyboardInterrupt
    traceback (or "error: interrupted" instead of the line naming the patch), or SIGTERM's silent exit."""
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    done = subprocess.run([sys.executable, "-c", AFTER_STOP.format(root=str(PROJECT_ROOT), late=late)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "stopped: interrupted by SIGINT\nsaid it\n", done
    assert "KeyboardInterrupt" not in done.stderr


@pytest.mark.parametrize("pid1", [False, True], ids=["process", "pid-1-of-a-container"])
def test_a_sigterm_before_the_patches_guard_stops_the_run_in_one_line(server, tmp_path, pid1):
    """A SIGTERM while the runner still connects (the server slow to answer) met Python's default action: a
    silent exit -15; as a container's PID 1 (the Job) that default is ignored, and the run went on to apply the
    patch as if never told (attack 20i)."""
    import shutil
    import subprocess

    folder, marks = tmp_path / "mongo", tmp_path / "marks"
    folder.mkdir()
    marks.mkdir()
    (folder / "0001_never.py").write_text(f"from pathlib import Path\n\ndef run(db, dry_run):\n"
                                          f"    Path({str(marks)!r}, 'ran').touch()\n    return 'ran'\n")
    wrapper = ["unshare", "--pid", "--fork", "--kill-child"] if pid1 else []
    if pid1 and (not shutil.which("unshare") or subprocess.run([*wrapper, "true"]).returncode != 0):
        pytest.skip("needs unshare --pid (root, or user namespaces)")
    paused = server.server.process.pid
    os.kill(paused, signal.SIGSTOP)  # the runner's connect waits for the server: the window before any guard
    try:
        proc = (_as_pid_1(server, folder, wrapper) if pid1 else
                runner(server, "mongo", "apply", "--run", "--mongo-dir", folder))
        header = proc.stderr.readline()
        assert header.startswith("MongoDB:"), header
        time.sleep(0.3)  # (past the header: connecting)
        os.kill(_runner_pid(proc, pid1), signal.SIGTERM)
        time.sleep(0.3)
    finally:
        os.kill(paused, signal.SIGCONT)
    code, _, err = finish(proc)
    assert code == 128 + signal.SIGTERM, err
    (line,) = _errors(header + err)
    assert "interrupted by SIGTERM outside any migration or patch" in line, line
    assert not (marks / "ran").exists() and server.db.applied_patches.count_documents({}) == 0


def _as_pid_1(server, folder: Path, wrapper: list[str], entry: tuple[str, ...] = ("runner.py",)):
    import subprocess
    import sys

    from test_mongo_processes import PROJECT_ROOT

    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO", "DB_", "DATABASE_URL"))}
    environment.update(server.env)
    return subprocess.Popen([*wrapper, sys.executable, *entry, "mongo", "apply", "--run",
                             "--mongo-dir", str(folder)], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)


def _runner_pid(proc, pid1: bool) -> int:
    """The runner's own pid: under unshare, the child it forked (PID 1 inside its namespace)."""
    if not pid1:
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return int(children[0])


@pytest.mark.parametrize("entry", [("runner.py",), ("-m", "migrator.image")], ids=["runner.py", "image-command"])
def test_a_sigterm_while_the_cli_loads_as_pid_1_stops_the_run_in_one_line(server, tmp_path, entry):
    """As a container's PID 1 the kernel drops a SIGTERM that finds no handler: one sent while runner.py still imported
    the CLI (before main() installed its handler) was lost, and both patches were applied, exit 0 (attack 20j); the
    image's CMD (`-m migrator.cli.image`: the CLI package loaded before any handler) likewise (attack 20k).
    The moment is the CLI's own import of click (Python's import profile, on stderr): no handler was there before."""
    import re
    import shutil
    import subprocess

    from test_progress import read_until

    wrapper = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if not shutil.which("unshare") or subprocess.run([*wrapper, "true"]).returncode != 0:
        pytest.skip("needs unshare --pid --mount-proc (root, or user namespaces)")
    folder, marks = tmp_path / "mongo", tmp_path / "marks"
    folder.mkdir()
    marks.mkdir()
    for name in ("0001_a", "0002_b"):
        (folder / f"{name}.py").write_text(f"from pathlib import Path\n\ndef run(db, dry_run):\n"
                                           f"    Path({str(marks)!r}, {name!r}).touch()\n    return 'ran'\n")
    os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # (read by _as_pid_1's copy of the environment)
    try:
        proc = _as_pid_1(server, folder, wrapper, entry)
    finally:
        del os.environ["PYTHONPROFILEIMPORTTIME"]
    seen = read_until(proc, lambda line: re.search(r"\|\s+click$", line.rstrip()), 60)
    assert seen and re.search(r"\|\s+click$", seen[-1].rstrip()), seen[-5:]
    os.kill(_runner_pid(proc, True), signal.SIGTERM)
    code, _, err = finish(proc)
    (line,) = _errors(err)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert line == "error: interrupted by SIGTERM before the command started: nothing was run", line
    assert list(marks.iterdir()) == [] and server.db.applied_patches.count_documents({}) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_while_the_runner_exits_after_its_work_prints_no_traceback(server, tmp_path, signum):
    """Once `mongo apply --run` said what it applied, the process exits (pymongo's atexit joins its threads, half a
    second): a SIGTERM or Ctrl-C then printed "Exception ignored in atexit callback" and a traceback (attack 20j)."""
    import subprocess
    import sys

    from test_mongo_processes import PROJECT_ROOT

    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_w.py").write_text("def run(db, dry_run):\n    db.w.insert_one({'w': 1})\n    return 'wrote'\n")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO", "DB_", "DATABASE_URL"))}
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), "mongo", "apply", "--run", "--mongo-dir",
                             str(folder)], env={**environment, **server.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (as a terminal's)
    for line in proc.stdout:  # what it applied is said: it exits now
        if line.startswith("MongoDB: applied"):
            break
    time.sleep(0.05)  # (into the exit)
    proc.send_signal(signum)
    code, out, err = finish(proc)
    assert code == 0 and "Traceback" not in err and "Exception ignored" not in err, err
    assert [(r["patch"], r["status"]) for r in server.db.applied_patches.find()] == [("0001_w", "applied")]
    assert server.db.w.count_documents({}) == 1 and server.db.applied_patches_lock.count_documents({}) == 0


def test_the_images_default_command_as_pid_1_stops_on_a_sigterm_while_it_connects(server, db, tmp_path):
    """The image's CMD (`python3 -m migrator.image migrate`, DIGIT's init container: the pod's PID 1) called the
    CLI without runner.py's signal handling: a SIGTERM while it connected to Mongo found no handler and was dropped,
    and the patch was applied after the server answered."""
    import select
    import shutil
    import subprocess
    import sys

    from test_mongo_processes import PROJECT_ROOT

    wrapper = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if not shutil.which("unshare") or subprocess.run([*wrapper, "true"]).returncode != 0:
        pytest.skip("needs unshare --pid --mount-proc (root, or user namespaces)")
    folder, marks, sql = tmp_path / "mongo", tmp_path / "marks", tmp_path / "sql"
    for made in (folder, marks, sql):
        made.mkdir()
    (folder / "0001_never.py").write_text(f"from pathlib import Path\n\ndef run(db, dry_run):\n"
                                          f"    Path({str(marks)!r}, 'ran').touch()\n    return 'ran'\n")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO", "DB_", "DATABASE_URL"))}
    environment.update(server.env, DATABASE_URL=db.url, ARGS=f"--sql-dir {sql} --mongo-dir {folder}")
    paused = server.server.process.pid
    os.kill(paused, signal.SIGSTOP)  # its connect waits for the server
    try:
        proc = subprocess.Popen([*wrapper, sys.executable, "-m", "migrator.image", "migrate"], env=environment,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
        assert select.select([proc.stdout], [], [], 60)[0], "the SQL part never ended"
        said = proc.stdout.readline()  # the SQL part's report: the Mongo part starts, its server checked for 10 s
        time.sleep(0.5)
        os.kill(_runner_pid(proc, True), signal.SIGTERM)
        time.sleep(0.3)
    finally:
        os.kill(paused, signal.SIGCONT)
    code, _, err = finish(proc)
    (line,) = _errors(err)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert said.startswith("PostgreSQL") and "interrupted by SIGTERM outside any migration or patch" in line, (said, line)
    assert not (marks / "ran").exists() and server.db.applied_patches.count_documents({}) == 0
