"""The dry-run seal's reach found by issue 20's third hostile pass (attack20d), each closed: prlimit on another
process of the same user (a concurrent --run's runner, a server), a datagram socket pair that sends to any Unix
datagram socket by path, SysV IPC that outlives the dry run, listen(), file leases and the kernel keyring. Real
processes on FerretDB: the patch's sealed child acts on processes and sockets this test owns."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_mongo_child import _folder, real  # noqa: F401 (a fixture)
from test_mongo_seal_escapes import PROBES, _probes, _sealed

OTHERS = '''
RLIMIT_CPU, RLIMIT_NOFILE = 0, 7

class rlimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_ulong), ("max", ctypes.c_ulong)]

def run(db, dry_run):
    victim, low, old = {victim}, rlimit(1, 1), rlimit()
    probe("prlimit CPU other", lambda: libc.prlimit(victim, RLIMIT_CPU, ctypes.byref(low), None))
    probe("prlimit NOFILE other", lambda: libc.prlimit(victim, RLIMIT_NOFILE, ctypes.byref(rlimit(0, 0)), None))
    probe("prlimit read other", lambda: libc.prlimit(victim, RLIMIT_CPU, None, ctypes.byref(old)))
    probe("setpriority other", lambda: libc.setpriority(0, victim, 19))
    probe("setpriority user", lambda: libc.setpriority(2, 0, 19))  # PRIO_USER 0: all of this user's processes
    probe("sched_setattr other", lambda: libc.syscall(314, victim, (ctypes.c_uint32 * 14)(56), 0))
    probe("ioprio_set other", lambda: libc.syscall(251, 1, victim, (3 << 13)))
    probe("setrlimit self", lambda: libc.prlimit(0, RLIMIT_CPU, None, ctypes.byref(old)))  # glibc's own: kept
    probe("nice self", lambda: libc.setpriority(0, 0, 1))
    return "probed"
'''


def _limits(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        return f.read()


def test_a_dry_run_patch_cannot_change_the_limits_of_another_process_of_its_user(cli, real, tmp_path):
    _sealed()
    victim = subprocess.Popen(["sleep", "120"])  # as a concurrent --run's runner or a server would be
    try:
        before = _limits(victim.pid)
        folder = _folder(tmp_path, "0001_limits.py", PROBES.format(body=OTHERS.format(victim=victim.pid)))
        result = cli("mongo", "apply", "--mongo-dir", folder, env=real.env)
        after = _limits(victim.pid)
    finally:
        victim.kill()
        victim.wait()
    assert result.exit_code == 0 and "probed" in result.stdout, result.output
    assert after == before, after  # its CPU time and descriptors unlimited as they were
    probes = _probes(result.stdout)
    assert probes.pop("setrlimit self") == "DID" and probes.pop("nice self") == "DID", result.stdout
    assert set(probes.values()) == {"EPERM"} and len(probes) == 7, result.stdout


LOCAL = '''
def run(db, dry_run):
    def datagram(kind, how):
        def act():
            a, b = socket.socketpair(socket.AF_UNIX, kind)
            if how == "sendto":
                a.sendto(b"sent from a dry run", {path!r})
            else:
                a.connect({path!r})
                a.send(b"sent from a dry run")
        return act

    def stream():
        a, b = socket.socketpair()  # kept: asyncio and libuv's child stdio use one
        a.sendall(b"x")
        return 0 if b.recv(1) == b"x" else -1

    def shm():
        return libc.shmget(0x20F0D, 1 << 20, 0o1000 | 0o600)  # IPC_CREAT: a segment that outlives the dry run

    probe("dgram pair sendto", datagram(socket.SOCK_DGRAM, "sendto"))
    probe("dgram pair connect", datagram(socket.SOCK_DGRAM, "connect"))
    probe("seqpacket pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    probe("stream pair", stream)
    probe("shmget", shm)
    probe("semget", lambda: libc.semget(0x20F0D, 1, 0o1000 | 0o600))
    probe("msgget", lambda: libc.msgget(0x20F0D, 0o1000 | 0o600))
    probe("listen", lambda: socket.socket().listen(1))  # an ephemeral port on 0.0.0.0 without bind()
    fd = os.open(__file__, os.O_RDONLY)
    probe("lease", lambda: fcntl.fcntl(fd, 1024, fcntl.F_RDLCK))  # F_SETLEASE: its writers would stall
    probe("keyctl", lambda: libc.syscall(250, 0, -3, 0))  # KEYCTL_GET_KEYRING_ID of the session keyring
    probe("add_key", lambda: libc.syscall(248, b"user", b"hcm", b"x", 1, -3))
    return "probed"
'''


def _ipc_keys() -> str:
    return "".join(open(f"/proc/sysvipc/{kind}").read() for kind in ("shm", "sem", "msg"))


def test_a_dry_run_patch_cannot_reach_a_datagram_socket_or_leave_ipc_listen_lease_or_keys(cli, real, tmp_path):
    _sealed()
    path = str(tmp_path / "syslog.sock")  # as /dev/log or journald's socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(0.5)
        folder = _folder(tmp_path, "0001_local.py", PROBES.format(body=LOCAL.format(path=path)))
        result = cli("mongo", "apply", "--mongo-dir", folder, env=real.env)
        with pytest.raises(socket.timeout):
            listener.recv(100)  # nothing arrived
    assert result.exit_code == 0 and "probed" in result.stdout, result.output
    assert "20f0d" not in _ipc_keys(), _ipc_keys()  # no segment, semaphore or queue left behind (its key in hex)
    probes = _probes(result.stdout)
    assert probes.pop("stream pair") == "DID", result.stdout
    assert set(probes.values()) == {"EPERM"} and len(probes) == 10, result.stdout


def test_a_dry_run_refuses_a_patch_folder_that_holds_a_secret_file_named_in_dotenv(cli, real, workdir):
    _sealed()
    folder = workdir.parent / "patches"
    (folder / "sub").mkdir(parents=True)
    secret = folder / "sub" / "dbpass"
    secret.write_text("Dotenv-File-Secret-9\n")
    (workdir / ".env").write_text(f"DB_PASSWORD_FILE={secret}\n")  # .env only: not in the real environment
    (folder / "0001_reads_it.py").write_text(f"def run(db, dry_run):\n    return open({str(secret)!r}).read()\n")
    result = cli("mongo", "apply", "--mongo-dir", folder, env=real.env)
    assert result.exit_code == 2 and "Dotenv-File-Secret-9" not in result.output, result.output
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert f"holds {secret}" in line and "move the patches to a folder of their own" in line, line
    assert real.db.applied_patches.count_documents({}) == 0


@pytest.mark.parametrize("how", ["DB_PASSWORD in .env", "DB_PASSWORD_FILE in .env", "FLYWAY_PASSWORD_FILE in env"])
def test_a_patch_never_prints_a_password_the_settings_know_from_any_source(cli, real, workdir, how):
    password = "Known-Pass-4" + how.split()[0][:2]  # as a real run's patch could read it (.env, its file)
    file = workdir.parent / "password"
    file.write_text(password + "\n")
    name, _, where = how.partition(" in ")
    value = str(file) if name.endswith("_FILE") else password
    (workdir / ".env").write_text(f"{name}={value}\n" if where == ".env" else "")
    env = {**real.env, **({name: value} if where == "env" else {})}
    folder = workdir.parent / "patches"
    folder.mkdir()
    (folder / "0001_prints_it.py").write_text(f"def run(db, dry_run):\n    print('said {password}')\n"
                                              f"    return 'comment {password}'\n")
    result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=env)
    assert result.exit_code == 0 and "said ***" in result.output and "comment ***" in result.output, result.output
    assert password not in result.output
    assert password not in str(real.db.applied_patches.find_one({"_id": "0001_prints_it"}))


DAEMON_PY = '''import subprocess, sys, time

def run(db, dry_run):
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"DAEMON {{daemon.pid}}", flush=True)
    {end}
'''

DAEMON_JS = '''
const cp = require("child_process");
const daemon = cp.spawn("sleep", ["120"], {detached: true, stdio: "ignore"});
daemon.unref();
print("DAEMON " + daemon.pid);
'''


def _daemon_ended(output: str) -> bool:
    """Whether the process the patch printed as DAEMON is gone (killed, and reaped: not even a zombie is left)."""
    import os

    (pid,) = [int(line.split()[1]) for line in output.splitlines() if line.startswith("DAEMON ")]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    os.kill(pid, 9)  # left by the runner: not by this test
    return False


@pytest.mark.parametrize("case", ["dry run past --patch-timeout", "--run", "JS dry run"])
def test_a_process_a_patch_starts_in_a_session_of_its_own_ends_with_the_patch(cli, real, tmp_path, case):
    import shutil

    from migrator.mongo import js_patch

    if case.startswith("JS") and not (js_patch.LOCAL_MONGOSH.exists() or shutil.which("mongosh")):
        pytest.skip("needs Node.js and mongosh: `make mongosh` installs mongosh from npm")
    if case.startswith("JS"):
        folder = _folder(tmp_path, "0001_daemon.js", DAEMON_JS)
    else:
        end = "time.sleep(3600)" if "timeout" in case else "return 'started'"
        folder = _folder(tmp_path, "0001_daemon.py", DAEMON_PY.format(end=end))
    args = ["--patch-timeout", "3"] if "timeout" in case else ["--run"] if case == "--run" else []
    result = cli("mongo", "apply", "--mongo-dir", folder, *args, env=real.env)
    assert (result.exit_code != 0) == ("timeout" in case), result.output
    assert _daemon_ended(result.stdout), result.output


HOPPER_PY = '''import os, subprocess, sys, time
from pathlib import Path

HOP = """import os, sys
for n in range(300):
    if os.fork():
        os._exit(0)  # each exited parent is an orphan of the runner (a child subreaper while the patch runs)
open(sys.argv[1], "w").close()
"""

def run(db, dry_run):
    subprocess.Popen([sys.executable, "-c", HOP, {hopped!r}], start_new_session=True)
    for _ in range(1200):  # until the test has looked at the runner's children
        if Path({looked!r}).exists():
            return "hopped"
        time.sleep(0.05)
    return "never looked"
'''


def _zombie_children(pid: int) -> int:
    """How many of `pid`'s children have exited and are still waiting to be reaped (state Z)."""
    import os

    count = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                try:
                    with open(f"/proc/{child}/stat", "rb") as stat:
                        count += stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
                except OSError:
                    pass  # reaped meanwhile
    return count


def test_the_processes_a_patch_orphans_are_reaped_while_it_still_runs(cli, real, tmp_path):
    """attack20e: a patch that forks and lets each parent exit left one zombie of the runner per fork until the
    patch ended: unbounded, the host's pid space is exhausted. The runner (here the test's process) reaps them."""
    import os
    import threading
    import time

    hopped, looked = tmp_path / "hopped", tmp_path / "looked"
    folder = _folder(tmp_path, "0001_hopper.py", HOPPER_PY.format(hopped=str(hopped), looked=str(looked)))
    results = []
    worker = threading.Thread(target=lambda: results.append(cli("mongo", "apply", "--run", "--mongo-dir", folder,
                                                                 env=real.env)), daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while not hopped.exists() and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hopped.exists(), results
    seen = [_zombie_children(os.getpid())]
    while seen[-1] > 5 and time.monotonic() < deadline:  # the last hops may still be exiting
        time.sleep(0.2)
        seen.append(_zombie_children(os.getpid()))
    looked.touch()
    worker.join(120)
    assert results and results[0].exit_code == 0 and "hopped" in results[0].output, results
    assert seen[-1] <= 5, f"zombies of the runner while the patch ran: {seen[0]} at first, {seen[-1]} at last"


CLONE3 = '''import subprocess

def run(db, dry_run):
    def clone3():  # with CLONE_INTO_CGROUP and an O_PATH descriptor it would move its child into any cgroup
        args = (ctypes.c_uint64 * 11)()
        args[4] = 17  # exit_signal SIGCHLD
        pid = libc.syscall(435, args, 88)
        if pid == 0:
            libc._exit(0)
        if pid > 0:
            os.waitpid(pid, 0)
        return pid

    def fork():
        pid = os.fork()
        if pid == 0:
            libc._exit(7)
        return 0 if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7 else -1

    probe("clone3", clone3)
    probe("fork", fork)
    probe("subprocess", lambda: 0 if subprocess.run(["true"]).returncode == 0 else -1)
    probe("node child", lambda: 0 if subprocess.run(["node", "-e", NODE]).returncode == 0 else -1)
    return "probed"

NODE = "process.exit(require('child_process').spawnSync('true').status)"
'''


def test_a_dry_run_patch_cannot_clone3_yet_still_starts_processes(cli, real, tmp_path):
    """attack20e: clone3(CLONE_INTO_CGROUP) put a sealed process's child into any cgroup v2 folder (another
    service's: its memory and pid limits). clone3 is refused with ENOSYS, as in Docker's default profile: glibc,
    Python and Node fall back to clone, so a patch still starts processes."""
    import shutil

    _sealed()
    folder = _folder(tmp_path, "0001_clone3.py", PROBES.format(body=CLONE3))
    result = cli("mongo", "apply", "--mongo-dir", folder, env=real.env)
    assert result.exit_code == 0 and "probed" in result.stdout, result.output
    probes = _probes(result.stdout)
    if not shutil.which("node"):
        probes.pop("node child")
    assert probes.pop("clone3") == "ENOSYS", result.stdout
    assert set(probes.values()) == {"DID"}, result.stdout


SAYS_HOME = '''import os, time

def run(db, dry_run):
    print("HOME " + os.getcwd(), flush=True)  # a patch's working folder is its HOME
    time.sleep(120)
'''


def test_the_home_a_sigkilled_runner_left_is_removed_by_the_next_run_but_not_a_live_ones(cli, real, tmp_path):
    """attack20e: a runner killed by SIGKILL left its /tmp/hcm-patch-* HOME (a patch's files, up to what it wrote
    there) behind for good. The next run removes it; a live runner's (held) HOME stays."""
    import fcntl
    import os
    import select
    import tempfile
    import time

    from test_progress import runner

    killed = runner("mongo", "apply", "--mongo-dir", _folder(tmp_path, "0001_home.py", SAYS_HOME), env=real.env)
    try:
        ready, _, _ = select.select([killed.stdout], [], [], 60)
        line = killed.stdout.readline() if ready else ""
    finally:
        killed.kill()
        killed.wait()
    assert line.startswith("HOME "), line
    left = line.split(" ", 1)[1].strip()
    live = tempfile.mkdtemp(prefix=f"hcm-patch-{killed.pid}-")  # a pid in its name, as a runner's
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as a runner running a patch holds its HOME
    try:
        assert os.path.isdir(left)  # the SIGKILLed runner could not remove it
        long_ago = time.time() - 3600
        for folder in (left, live):
            os.utime(folder, (long_ago, long_ago))
        (tmp_path / "next").mkdir()
        ok = _folder(tmp_path / "next", "0001_ok.py", "def run(db, dry_run):\n    return 'ok'\n")
        result = cli("mongo", "apply", "--mongo-dir", ok, env=real.env)
        assert result.exit_code == 0, result.output
        assert not os.path.exists(left) and os.path.isdir(live)
    finally:
        os.close(held)
        os.rmdir(live)


def test_the_reaper_ends_with_the_patchs_process_and_never_takes_a_later_childs_exit_code():
    """A reaper left running after its patch (one loaded, then never started) reaped the runner's later children:
    their Popen then read exit code 0 (ECHILD), so a failing process of the runner looked successful."""
    from migrator.mongo.orphans import Orphans

    orphans = Orphans()
    if not orphans.on:
        pytest.skip("needs Linux's PR_SET_CHILD_SUBREAPER")
    patch = subprocess.Popen(["true"])  # exits at once and stays a zombie for its Popen, as a finished patch's does
    try:
        orphans.reap(patch.pid)
        time.sleep(0.3)  # the reaper's look (every 20 ms) sees the patch's process has exited
        later = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
        time.sleep(0.5)  # a reaper still running would reap it meanwhile
        assert later.wait() == 3
    finally:
        patch.wait()
        orphans.end()


ORPHANS_IN = """
import subprocess, sys
sys.path.insert(0, {root!r})
from migrator.mongo import orphans
o = orphans.Orphans()
{setup}
patch = subprocess.Popen(["sh", "-c", {patch!r}])
o.reap(patch.pid)
patch.wait()
o.end()
print("ended", o.on, "left", sorted(orphans.children()))
"""


def _end_orphans(prefix: list[str], setup: str = "", patch: str = "sleep 30 & exit 0") -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parent.parent)
    script = ORPHANS_IN.format(root=root, setup=setup, patch=patch)  # (by default it leaves a process behind)
    # A hang is the failure: end() looping forever on pids it cannot end (killed with its process group)
    return subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_as_pid_1_without_its_own_proc_ending_orphans_says_so_and_returns():
    """As PID 1 of a PID namespace without its own /proc, /proc/{getpid()} was the host's init: end() chased the
    host's processes (kill and waitpid failing on pids not in the namespace) and spun forever."""
    if not sys.platform.startswith("linux") or subprocess.run(["unshare", "--pid", "--fork", "true"]).returncode:
        pytest.skip("needs Linux and unshare --pid (root)")
    done = _end_orphans(["unshare", "--pid", "--fork"])
    assert done.returncode == 0 and "ended False" in done.stdout, done.stdout + done.stderr
    assert "/proc is not this process's" in done.stderr and "--mount-proc" in done.stderr
    with_proc = _end_orphans(["unshare", "--pid", "--fork", "--mount-proc"])  # its own /proc: orphans are ended
    assert with_proc.returncode == 0 and "ended False left []" in with_proc.stdout, with_proc.stdout + with_proc.stderr
    assert "/proc is not" not in with_proc.stderr and "could not end" not in with_proc.stderr


def test_a_process_that_cannot_be_ended_is_named_and_the_ending_stops():
    """end() looped for as long as /proc listed a child it could neither kill nor reap (as with the host's /proc):
    now a bounded number of passes, then one line naming what is left. Here /proc is made to list this test's own
    process (not the script's child: waitpid fails) and every kill is a no-op."""
    setup = ("import os; orphans._signal = lambda pid, signum: False\n"
             "orphans.children = lambda pid=None: set() if pid else {os.getppid()}")
    done = _end_orphans([], setup=setup, patch="exit 0")
    assert done.returncode == 0 and "ended False" in done.stdout, done.stdout + done.stderr
    assert f"could not end process(es) {os.getpid()} that the patch left behind" in done.stderr, done.stderr
