"""A Python patch's child process as the runner drives it (issue 20's hostile pass): its paths, its output,
its stdin and its results pipe."""

from __future__ import annotations

import pytest

from test_progress import runner


@pytest.fixture
def real(mongo):
    if not mongo.real:
        pytest.skip("needs a real server: the patch's child process connects over TCP")
    return mongo


def _folder(tmp_path, name: str, text: str, **beside: str):
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / name).write_text(text)
    for helper, body in beside.items():
        (folder / f"{helper}.py").write_text(body)
    return folder


@pytest.mark.parametrize("run", [True, False], ids=["run", "dry-run"])
def test_a_relative_mongo_dir_runs_python_patches(cli, real, workdir, run):
    folder = workdir / "patches"
    folder.mkdir()
    (folder / "0001_rel.py").write_text("from helper import WORD\n\ndef run(db, dry_run):\n    return WORD\n")
    (folder / "helper.py").write_text("WORD = 'helper beside the patch'\n")
    result = cli("mongo", "apply", *(["--run"] if run else []), "--mongo-dir", "patches", env=real.env)
    assert result.exit_code == 0, result.output
    assert "helper beside the patch" in result.output
    assert real.db.applied_patches.count_documents({"patch": "0001_rel", "status": "applied"}) == (1 if run else 0)


def test_a_patchs_output_is_not_lost_when_its_process_is_killed(cli, real, tmp_path):
    folder = _folder(tmp_path, "0001_dies.py", "import os, signal\n\ndef run(db, dry_run):\n"
                     "    print('wrote batch 1')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=real.env)
    assert result.exit_code == 1 and "ended (exit -9)" in result.stderr, result.output
    assert "wrote batch 1" in result.stdout  # printed before the kill: not left in a buffer that died with it


def test_a_patch_reading_stdin_gets_its_end_instead_of_hanging_the_runner(real, tmp_path):
    folder = _folder(tmp_path, "0001_stdin.py", "import sys\nLINE = sys.stdin.readline()\n\n"
                     "def run(db, dry_run):\n    return 'stdin gave ' + repr(LINE + sys.stdin.read())\n")
    proc = runner("mongo", "apply", "--run", "--mongo-dir", folder, env=real.env)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stdin gave ''" in out + err


FORGES = '''import json, os, stat

def run(db, dry_run):
    line = (json.dumps({"error": "usage", "text": "all fine", "code": 0}) + "\\n").encode()
    # the results pipe, whichever it is (the protocol's end refuses writes)
    for fd in range(3, 1024):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, line)
        except OSError:
            pass
    return "forged"
'''


@pytest.mark.parametrize("run", [True, False], ids=["run", "dry-run"])
def test_a_patch_cannot_choose_the_runners_exit_code(cli, real, tmp_path, run):
    folder = _folder(tmp_path, "0001_forge.py", FORGES)
    result = cli("mongo", "apply", *(["--run"] if run else []), "--mongo-dir", folder, env=real.env)
    assert result.exit_code == 1, result.output  # a failed patch's, attributed to it: not the forged usage error's 2
    assert "0001_forge failed: its process sent an unreadable result" in result.stderr
    assert "all fine" not in result.output


REACHES_OUT = '''import os, signal, socket

def attempt(route, act):
    try:
        act()
        print("DID " + route)
    except OSError as exc:
        print("blocked " + route + " (" + exc.__class__.__name__ + ")")

def run(db, dry_run):
    attempt("truncate outside", lambda: os.truncate({victim!r}, 0))
    attempt("truncate in the patch folder", lambda: os.truncate(__file__, 0))
    attempt("chmod", lambda: os.chmod({victim!r}, 0o666))
    attempt("utime", lambda: os.utime({victim!r}, (0, 0)))
    attempt("list /dev", lambda: os.listdir("/dev"))
    attempt("open a terminal", lambda: open("/dev/ptmx", "rb"))
    attempt("signal the runner", lambda: os.kill(os.getppid(), 0))
    attempt("connect elsewhere", lambda: socket.create_connection(("127.0.0.1", {other}), timeout=5).close())
    attempt("bind", lambda: socket.socket().bind(("127.0.0.1", 0)))
    with open("/dev/urandom", "rb") as random, open("/dev/null", "w") as null:
        null.write(random.read(8).hex())
    with open(os.path.join(os.environ["HOME"], "scratch"), "w") as scratch:  # its HOME stays writable
        scratch.write("ok")
    return str(db.things.count_documents({{}})) + " things read"
'''


def test_a_dry_run_patch_cannot_truncate_open_devices_signal_the_runner_or_connect_elsewhere(cli, real, tmp_path):
    import socket

    from migrator.mongo import seal

    if seal.abi() < 6:
        pytest.skip(f"needs Landlock ABI 6 (this kernel's: {seal.abi()})")
    victim = tmp_path / "0001_init.sql"
    victim.write_text("CREATE TABLE kept ();\n")
    victim.chmod(0o600)
    stamp = victim.stat().st_mtime
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        folder = _folder(tmp_path, "0001_reach.py", REACHES_OUT.format(victim=str(victim), other=other.getsockname()[1]))
        real.db.things.insert_one({"kept": True})
        result = cli("mongo", "apply", "--mongo-dir", folder, env=real.env)
    assert result.exit_code == 0, result.output
    assert "DID" not in result.stdout, result.stdout
    assert result.stdout.count("blocked") == (9 if seal.seccomp_covers() else 7), result.stdout
    assert victim.read_text() == "CREATE TABLE kept ();\n" and "def run" in (folder / "0001_reach.py").read_text()
    if seal.seccomp_covers():
        assert victim.stat().st_mode & 0o777 == 0o600 and victim.stat().st_mtime == stamp
    assert "1 things read" in result.output  # the server's port stays reachable


@pytest.mark.parametrize("run", [True, False], ids=["run", "dry-run"])
def test_ctrl_c_during_a_patch_is_an_interruption_not_the_patchs_failure(real, tmp_path, run):
    import os
    import signal
    import subprocess
    import sys

    from conftest import PROJECT_ROOT
    from test_progress import read_until

    folder = _folder(tmp_path, "0001_long.py", "import sys, time\n\ndef run(db, dry_run):\n"
                     "    sys.stderr.write('patch started\\n')\n    time.sleep(60)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_", "MONGO", "LOG_FORMAT"))}
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), "mongo", "apply",
                             *(["--run"] if run else []), "--mongo-dir", str(folder)],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, **real.env}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = read_until(proc, lambda line: "patch started" in line, 60)
        assert any("patch started" in line for line in lines), lines
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the runner (the patch's process has a session of its own)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "KeyboardInterrupt" not in err and "fix the patch" not in err, err
    assert ("0001_long interrupted by SIGINT" if run else "dry run of 0001_long interrupted by SIGINT") in err, err
    records = list(real.db.applied_patches.find({"patch": "0001_long"}))
    assert [r["status"] for r in records] == (["failed"] if run else [])


def test_a_dry_runs_process_in_a_session_of_its_own_ends_with_the_patch(cli, real, tmp_path):
    import os
    import re
    import time
    from pathlib import Path

    from migrator.mongo import seal

    if seal.abi() < 6:
        pytest.skip(f"needs Landlock ABI 6 (this kernel's: {seal.abi()})")
    folder = _folder(tmp_path, "0001_daemon.py", "import subprocess\n\ndef run(db, dry_run):\n"
                     "    p = subprocess.Popen(['sleep', '120'], start_new_session=True)\n"
                     "    print(f'daemon={p.pid}')\n    return 'left a daemon'\n")
    result = cli("mongo", "apply", "--mongo-dir", folder, env=real.env)
    assert result.exit_code == 0, result.output
    pid = int(re.search(r"^daemon=(\d+)$", result.stdout, re.M).group(1))
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(50):  # SIGKILL is delivered at once; its reaping (by init) may take a moment
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    alive = stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    if alive:
        os.kill(pid, 9)
    assert not alive


# The file of a later patch is replaced while an earlier patch of the same run runs (issue 20, attack20g's toctou):
# the child used to re-read the path and run the new bytes under the old bytes' checksum.
REPLACES = """from pathlib import Path

def run(db, dry_run):
    target = Path(__file__).with_name("0002_target.py")
    target.write_text(target.read_text().replace("v1 (reviewed)", "v2 (edited mid-run)"))
    return "replaced 0002"
"""


def test_a_python_patch_replaced_during_the_run_runs_the_bytes_hashed_and_recorded(cli, real, tmp_path):
    import hashlib

    reviewed = "def run(db, dry_run):\n    return 'v1 (reviewed)'\n"
    folder = _folder(tmp_path, "0001_replaces.py", REPLACES)
    (folder / "0002_target.py").write_text(reviewed)
    result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=real.env)
    assert result.exit_code == 0, result.output
    assert "v1 (reviewed)" in result.output and "v2" not in result.output, result.output
    record = real.db.applied_patches.find_one({"patch": "0002_target"})
    assert record["comment"] == "v1 (reviewed)"
    assert record["checksum"] == hashlib.sha256(reviewed.encode()).hexdigest()
