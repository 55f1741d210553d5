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
    for fd in range(3, 64):  # the results pipe, whichever it is (the protocol's end refuses writes)
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
    assert result.exit_code == 2, result.output
