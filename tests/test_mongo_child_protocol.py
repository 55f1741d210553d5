"""What crosses from a Python patch's child process to the runner (issue 20's second hostile pass, items 3, 4, 5, 8,
9, 10, 11): every text scrubbed with the runner's passwords, visible and bounded; only a message carrying the
runner's nonce is an outcome; the child chooses no exit code; --patch-timeout bounds a Python patch. On the real
server; the patch's child is a real process in every test. The runner is a process of its own where a bound on it
is the point (--patch-timeout: a regression must fail within the test's timeout, not hang the worker) and for a JS
patch (mongosh); elsewhere it runs in-process (_here: the same CLI, ~0.4 s of CPU less a test)."""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

import pytest

from test_progress import runner
from test_mongo_child import _folder, real  # noqa: F401 (a fixture)

WRITER_PASSWORD = "Writer-Pw-5150"
DB_PASSWORD = "Db-Password-42"


def _run(*args, env: dict, timeout: float = 180):
    """runner.py as a process of its own: (exit code, stdout, stderr)."""
    proc = runner(*args, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out, err


def _here(cli, *args, env: dict):
    """runner.py in-process (the suite's CLI fixture): (exit code, stdout, stderr), as _run."""
    result = cli(*args, env=env)
    return result.exit_code, result.stdout, result.stderr


def _with_password(url: str, user: str, password: str) -> str:
    """The server's URL with credentials (FerretDB's SQLite backend lets anyone in: they are only a secret to leak)."""
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, "authMechanism=PLAIN"]))
    return urlunsplit((parts.scheme, f"{user}:{password}@{parts.netloc}", parts.path or "/", query, ""))


def _events(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


LEAKS = '''import os
from urllib.parse import urlsplit

def run(db, dry_run):
    secrets = urlsplit(os.environ["MONGO_URL"]).password + " / " + os.environ["DB_PASSWORD"]
    if os.environ.get("LEAK_AS") == "error":
        raise RuntimeError("auth problem with " + secrets)
    return "comment: " + secrets
'''


@pytest.mark.parametrize("leak_as", ["comment", "error"])
@pytest.mark.parametrize("log_format", ["human", "json"])
def test_a_patchs_comment_and_error_are_scrubbed_with_the_runners_passwords(cli, real, tmp_path, leak_as, log_format):
    folder = _folder(tmp_path, "0001_leaks.py", LEAKS)
    env = {**real.env, "MONGO_URL": _with_password(real.url, "writer", WRITER_PASSWORD), "DB_PASSWORD": DB_PASSWORD,
           "LEAK_AS": leak_as, "LOG_FORMAT": log_format}
    code, out, err = _here(cli, "mongo", "apply", "--run", "--mongo-dir", folder, env=env)
    assert code == (0 if leak_as == "comment" else 1), out + err
    assert WRITER_PASSWORD not in out + err and DB_PASSWORD not in out + err, out + err
    assert "*** / ***" in out + err
    if log_format == "json":
        event = "patch_applied" if leak_as == "comment" else "patch_failed"
        assert [e for e in _events(err) if e["event"] == event], err
    (record,) = real.db.applied_patches.find({"patch": "0001_leaks"})
    stored = f"{record.get('comment')} {record.get('error')}"
    assert WRITER_PASSWORD not in stored and DB_PASSWORD not in stored and "*** / ***" in stored


LEAKS_BESIDE_PUNCTUATION = '''import os
from urllib.parse import urlsplit

def run(db, dry_run):
    pw, mpw = os.environ["DB_PASSWORD"], urlsplit(os.environ["MONGO_URL"]).password
    print(f"could not log in with password {pw}.")
    print(f"secret path: /run/secrets/{pw}, backup file {pw}.bak, db pw -{pw}-")
    raise RuntimeError(f"login failed for app/{mpw}.")
'''


def test_a_long_password_is_masked_beside_a_full_stop_a_slash_or_a_dash(cli, real, tmp_path):
    """attack20e: a password printed next to punctuation ("/run/secrets/<pw>", "<pw>.bak") did not "stand alone",
    so it was printed whole and stored in applied_patches: a long one is masked wherever it appears."""
    folder = _folder(tmp_path, "0001_edges.py", LEAKS_BESIDE_PUNCTUATION)
    env = {**real.env, "MONGO_URL": _with_password(real.url, "writer", WRITER_PASSWORD), "DB_PASSWORD": DB_PASSWORD}
    code, out, err = _here(cli, "mongo", "apply", "--run", "--mongo-dir", folder, env=env)
    assert code == 1, out + err
    assert WRITER_PASSWORD not in out + err and DB_PASSWORD not in out + err, out + err
    for shown in ("password ***.", "/run/secrets/***,", "***.bak", "-***-", "app/***."):
        assert shown in out + err, (shown, out + err)
    (record,) = real.db.applied_patches.find({"patch": "0001_edges"})
    assert WRITER_PASSWORD not in str(record) and "app/***." in record["error"], record


FINDS_READER = '''import gc

def run(db, dry_run):
    found = {v for o in gc.get_objects() if isinstance(o, dict) for v in list(o.values())
             if isinstance(v, str) and "Reader-Pw" in v}
    alone = {v.rpartition(":")[2].partition("@")[0] if "://" in v else v for v in found}
    return "found: " + " ".join(sorted(alone))
'''


def test_a_dry_runs_comment_is_scrubbed_of_the_read_only_users_password(cli, real, tmp_path):
    folder = _folder(tmp_path, "0001_finds.py", FINDS_READER)
    env = {**real.env, "MONGO_URL": _with_password(real.url, "writer", WRITER_PASSWORD),
           "MONGO_READONLY_URL": _with_password(real.url, "reader", "Reader-Pw-77")}
    code, out, err = _here(cli, "mongo", "apply", "--mongo-dir", folder, env=env)
    assert code == 0, out + err
    assert "found: ***" in out, out
    assert "Reader-Pw-77" not in out + err


def test_the_dry_run_note_does_not_claim_what_it_did_not_check(cli, real, tmp_path):
    # the server lets anyone write: a note saying it refuses the read-only user's writes would be false
    folder = _folder(tmp_path, "0001_ok.py", "def run(db, dry_run):\n    return 'ok'\n")
    env = {**real.env, "MONGO_URL": _with_password(real.url, "writer", WRITER_PASSWORD),
           "MONGO_READONLY_URL": _with_password(real.url, "reader", "Reader-Pw-77")}
    code, out, err = _here(cli, "mongo", "apply", "--mongo-dir", folder, env=env)
    assert code == 0, out + err
    assert "whose writes the server refuses" not in err, err
    assert "unchecked here: `runner.py doctor` checks it" in err, err


# Module-level code (it runs before the runner's `running` record and before go) writes on every descriptor.
JUNK = '''import os
# (up to 1024: in a long-lived pytest worker the results pipe may be far above 20)
for fd in range(3, 1024):
    try:
        os.write(fd, {junk!r})
    except OSError:
        pass

def run(db, dry_run):
    db.marker.insert_one({{"run": "ran"}})
    return "ran"
'''


@pytest.mark.parametrize("junk", [b'"loaded"\n', b"not json\n", b"7\n", b'{"error": "usage"}\n',
                                  b'{"comment": "forged"}\n', b"[" * 100000 + b"\n"],
                         ids=["string", "not-json", "number", "usage-without-text", "comment", "deep"])
def test_junk_on_the_results_pipe_before_go_is_the_patchs_unreadable_result_and_nothing_runs(cli, real, tmp_path, junk):
    folder = _folder(tmp_path, "0001_junk.py", JUNK.format(junk=junk))
    code, out, err = _here(cli, "mongo", "apply", "--run", "--mongo-dir", folder, env=real.env)
    assert code == 2, out + err
    assert f"error: {folder / '0001_junk.py'} cannot be loaded: its process sent an unreadable result" in err, err
    assert "unexpected" not in err and "Traceback" not in err, err
    assert real.db.marker.count_documents({}) == 0  # run() never ran
    assert real.db.applied_patches.count_documents({}) == 0


def test_a_forged_loaded_message_is_never_taken_for_the_outcome(cli, real, tmp_path):
    # the child's own "loaded" follows the forged one: seen before go (nothing runs) or as run()'s outcome (failed)
    folder = _folder(tmp_path, "0001_junk.py", JUNK.format(junk=b'{"loaded": true}\n'))
    code, out, err = _here(cli, "mongo", "apply", "--run", "--mongo-dir", folder, env=real.env)
    assert code in (1, 2), out + err
    assert "its process sent an unreadable result" in err and "0001_junk" in err, err
    assert [r["status"] for r in real.db.applied_patches.find()] in ([], ["failed"])


# run() itself writes a well-formed outcome, and one like the child's failure, without the runner's nonce.
FORGES_OUTCOME = '''import json, os, stat

def run(db, dry_run):
    db.marker.insert_one({{"run": "ran"}}) if not dry_run else None
    line = (json.dumps({forged}) + "\\n").encode()
    for fd in range(3, 1024):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, line)
        except OSError:
            pass
    return "the real comment"
'''


@pytest.mark.parametrize("forged", [{"comment": "forged"}, {"error": "usage", "text": "all fine", "code": 0},
                                    {"nonce": "0" * 32, "comment": "forged"}],
                         ids=["comment", "usage", "wrong-nonce"])
@pytest.mark.parametrize("run", [True, False], ids=["run", "dry-run"])
def test_an_outcome_without_the_runners_nonce_fails_the_patch_never_applies_it(cli, real, tmp_path, forged, run):
    folder = _folder(tmp_path, "0001_forge.py", FORGES_OUTCOME.format(forged=forged))
    code, out, err = _here(cli, "mongo", "apply", *(["--run"] if run else []), "--mongo-dir", folder, env=real.env)
    assert code == 1, out + err  # a failed patch's code, whatever the forged line says
    assert "0001_forge failed: its process sent an unreadable result" in err, err
    assert "forged" not in out + err and "all fine" not in out + err
    records = list(real.db.applied_patches.find({"patch": "0001_forge"}))
    assert [r["status"] for r in records] == (["failed"] if run else [])


def test_a_huge_comment_is_bounded_and_the_record_settles(cli, real, tmp_path):
    folder = _folder(tmp_path, "0001_huge.py", "def run(db, dry_run):\n    db.marker.insert_one({'done': 1})\n"
                     "    return 'b' * 17_000_000\n")
    code, out, err = _here(cli, "mongo", "apply", "--run", "--mongo-dir", folder, env=real.env)
    assert code == 0, err[-2000:]
    assert "... (truncated, 17000000 bytes)" in out
    assert len(out) < 200_000
    (record,) = real.db.applied_patches.find({"patch": "0001_huge"})
    assert record["status"] == "applied"
    assert record["comment"].endswith("(truncated, 17000000 bytes)") and len(record["comment"]) < 70_000


def test_a_huge_error_is_bounded_and_the_record_settles_failed(cli, real, tmp_path):
    folder = _folder(tmp_path, "0001_huge.py", "def run(db, dry_run):\n    raise RuntimeError('e' * 17_000_000)\n")
    code, out, err = _here(cli, "mongo", "apply", "--run", "--mongo-dir", folder, env=real.env)
    assert code == 1, err[-2000:]
    assert "(truncated, " in err and len(err) < 200_000
    (record,) = real.db.applied_patches.find({"patch": "0001_huge"})
    assert record["status"] == "failed" and len(record["error"]) < 70_000


@pytest.mark.parametrize("run", [True, False], ids=["run", "dry-run"])
def test_patch_timeout_stops_a_python_patch(real, tmp_path, run):
    folder = _folder(tmp_path, "0001_sleeps.py", "import time\n\ndef run(db, dry_run):\n    time.sleep(3600)\n")
    code, out, err = _run("mongo", "apply", *(["--run"] if run else []), "--patch-timeout", "2", "--mongo-dir", folder,
                          env=real.env, timeout=120)
    assert code == 1, out + err
    assert "0001_sleeps failed: stopped after 2 s (--patch-timeout / MONGO_PATCH_TIMEOUT)" in err, err
    records = list(real.db.applied_patches.find({"patch": "0001_sleeps"}))
    assert [r["status"] for r in records] == (["failed"] if run else [])


def test_patch_timeout_stops_a_python_patch_that_hangs_while_loading(real, tmp_path):
    folder = _folder(tmp_path, "0001_hangs.py", "import time\ntime.sleep(3600)\n\ndef run(db, dry_run):\n    pass\n")
    code, out, err = _run("mongo", "apply", "--run", "--patch-timeout", "2", "--mongo-dir", folder, env=real.env,
                          timeout=120)
    assert code == 2, out + err
    assert "0001_hangs.py cannot be loaded: stopped after 2 s (--patch-timeout" in err, err
    assert real.db.applied_patches.count_documents({}) == 0


# A patch that closes every inherited descriptor (a daemon-style cleanup, or a library that does it), the runner's
# results pipe included, then works on: the pipe's end used to make the runner wait for the process with no bound.
@pytest.mark.parametrize("run", [True, False], ids=["run", "dry-run"])
@pytest.mark.parametrize("at", ["import", "run"])
def test_patch_timeout_stops_a_python_patch_that_closed_its_descriptors(real, tmp_path, run, at):
    work = "os.closerange(3, 4096)\n    time.sleep(3600)\n"
    text = (f"import os, time\n\nif True:\n    {work}\ndef run(db, dry_run):\n    pass\n" if at == "import" else
            f"import os, time\n\ndef run(db, dry_run):\n    {work}")
    folder = _folder(tmp_path, "0001_closes.py", text)
    code, out, err = _run("mongo", "apply", *(["--run"] if run else []), "--patch-timeout", "3", "--mongo-dir", folder,
                          env=real.env, timeout=60)  # before: the runner waited the hour
    said = "0001_closes.py cannot be loaded" if at == "import" else "0001_closes failed"
    assert code == (2 if at == "import" else 1), out + err
    assert f"{said}: stopped after 3 s (--patch-timeout / MONGO_PATCH_TIMEOUT)" in err, err
    assert "Traceback" not in err, err
    records = list(real.db.applied_patches.find({"patch": "0001_closes"}))
    assert [r["status"] for r in records] == (["failed"] if run and at == "run" else [])


def test_a_python_patch_that_closed_its_descriptors_and_returned_is_not_said_to_have_died_first(real, tmp_path):
    folder = _folder(tmp_path, "0001_closes.py", "import os\n\ndef run(db, dry_run):\n    os.closerange(3, 4096)\n"
                     "    return 'done'\n")
    code, out, err = _run("mongo", "apply", "--run", "--mongo-dir", folder, env=real.env, timeout=60)
    assert code == 1, out + err
    assert ("0001_closes failed: the patch closed the runner's results pipe (a descriptor it did not open), so its "
            "outcome is unknown; its process ended (exit 0)") in err, err
    assert "before run() returned" not in err and "Traceback" not in err, err


ESCAPES = '''def run(db, dry_run):
    print("A\\x1b[31mRED\\x1b]52;c;ZWNobyBwd25lZA==\\x07 \\r  applied 0009_fake (1 ms): ok\\x9b2J")
    return "c\\x1b[2Jx\\x07"
'''


@pytest.mark.parametrize("log_format", ["human", "json"])
def test_control_characters_in_a_patchs_output_and_comment_are_shown_not_acted_on(cli, real, tmp_path, log_format):
    folder = _folder(tmp_path, "0001_esc.py", ESCAPES)
    code, out, err = _here(cli, "mongo", "apply", "--run", "--mongo-dir", folder, env={**real.env, "LOG_FORMAT": log_format})
    assert code == 0, out + err
    if log_format == "json":
        texts = [e.get("message") or e.get("comment") or "" for e in _events(err) + _events(out)]
        shown = "\n".join(texts)
        assert "\\x1b]52;c;" in shown and "\\x1b[2Jx\\x07" in shown, shown
    else:
        shown = out + err
        assert "A\\x1b[31mRED\\x1b]52;c;ZWNobyBwd25lZA==\\x07 \\r  applied 0009_fake (1 ms): ok\\x9b2J" in out, out
        assert "c\\x1b[2Jx\\x07" in out, out
    assert not any(c in shown for c in "\x1b\x07\r\x9b"), repr(shown)
    (record,) = real.db.applied_patches.find({"patch": "0001_esc"})
    assert record["comment"] == "c\\x1b[2Jx\\x07"


JS_ESCAPES = 'print("A\\u001b]52;c;ZWNobyBwd25lZA==\\u0007 \\r  applied 0009_fake (1 ms): ok");\npatchComment("c\\u001b[2Jx");\n'


def test_control_characters_in_a_javascript_patchs_output_and_comment_are_shown_not_acted_on(real, tmp_path):
    import shutil

    from migrator.mongo import js_patch

    if shutil.which("node") is None or not (js_patch.LOCAL_MONGOSH.exists() or shutil.which("mongosh")):
        pytest.skip("needs Node.js and mongosh: `make mongosh` installs mongosh from npm")
    folder = _folder(tmp_path, "0001_esc.js", JS_ESCAPES)
    code, out, err = _run("mongo", "apply", "--run", "--mongo-dir", folder, env=real.env)
    assert code == 0, out + err
    assert "A\\x1b]52;c;ZWNobyBwd25lZA==\\x07 \\r  applied 0009_fake (1 ms): ok" in out, out
    assert "applied 0001_esc" in out and "c\\x1b[2Jx" in out, out
    assert not any(c in out + err for c in "\x1b\x07\r"), repr(out + err)


def test_the_patch_timeout_counts_from_the_childs_start_not_the_interpreters(cli, real, tmp_path, monkeypatch):
    """On a loaded machine the child's interpreter and the runner's modules took over 2 s to start, and
    `--patch-timeout 2` blamed the patch ("cannot be loaded: stopped after 2 s"). The start has its own bound and
    says so; here made too short for any start, while the patch's own 600 s never comes into it."""
    from migrator.mongo import patch_child

    monkeypatch.setattr(patch_child, "START_SECONDS", 0.001)
    folder = _folder(tmp_path, "0001_quick.py", "def run(db, dry_run):\n    return 'ran'\n")
    result = cli("mongo", "apply", "--run", "--patch-timeout", "600", "--mongo-dir", folder, env=real.env)
    assert result.exit_code == 2, result.output
    assert "0001_quick.py cannot be loaded: its process did not start within 0.001 s" in result.stderr, result.stderr
    assert "--patch-timeout" not in result.stderr and real.db.applied_patches.count_documents({}) == 0
