"""JavaScript patches through the real mongosh (`mongosh --nodb`: no server can run here).

mongosh comes from npm (`make mongosh`, pinned, in .mongosh/); these tests skip, saying why,
only when Node.js or mongosh is missing.
"""

import json
import subprocess

import pytest

from conftest import needs_mongosh, one_error_line
from migrator.mongo import actions
from migrator.mongo import js_patch as js_patch_module
from migrator.mongo.js_patch import JsPatchFailed, run_js
from migrator.mongo.patches import Patch

pytestmark = needs_mongosh


def js_patch(tmp_path, name: str, body: str) -> Patch:
    path = tmp_path / f"{name}.js"
    path.write_text(body)
    return Patch(name, path, "js")


@pytest.mark.parametrize("dry_run", [True, False])
def test_dry_run_reaches_the_file(tmp_path, dry_run):
    patch = js_patch(tmp_path, "0001_echo", 'print("first line");\npatchComment(`DRY_RUN was ${DRY_RUN}`);\n'
                                            'print(`DRY_RUN is ${DRY_RUN}`);\nprintjson({a: 1});\n')
    seen = []
    comment = run_js(patch, None, dry_run, seen.append)
    assert seen == ["first line", f"DRY_RUN is {str(dry_run).lower()}", "{", "  a: 1", "}"]  # streamed, in order
    assert comment == f"DRY_RUN was {str(dry_run).lower()}"  # the declared comment, not the last line ("}")


def test_a_thrown_error_is_a_failure_with_its_message(tmp_path):
    patch = js_patch(tmp_path, "0001_throws", 'print("working");\nthrow new Error("campaign C-42 not found");\n')
    with pytest.raises(JsPatchFailed) as err:
        run_js(patch, None, False, lambda line: None)
    assert err.value.code == 1
    assert str(err.value) == "mongosh exit 1: Error: campaign C-42 not found"


def test_exit_codes_map_through(tmp_path):
    patch = js_patch(tmp_path, "0001_quits", 'print("giving up");\nquit(3);\n')
    with pytest.raises(JsPatchFailed) as err:
        run_js(patch, None, True, lambda line: None)
    assert err.value.code == 3
    assert run_js(js_patch(tmp_path, "0002_ok", 'patchComment("fine");\nquit(0);\n'), None, True, lambda line: None) == "fine"
    assert run_js(js_patch(tmp_path, "0003_silent", 'print("no comment declared");\n'), None, True, lambda line: None) is None


def test_a_syntax_error_names_itself(tmp_path):
    patch = js_patch(tmp_path, "0001_typo", "const x = ;\n")
    with pytest.raises(JsPatchFailed) as err:
        run_js(patch, None, False, lambda line: None)
    assert "SyntaxError" in str(err.value)


def test_real_runs_are_logged_with_the_last_line_as_comment_and_failures_as_failed(tmp_path, mongo):
    ok = js_patch(tmp_path, "0001_ok", 'patchComment(DRY_RUN ? "would count" : "counted 7");\n')
    bad = js_patch(tmp_path, "0002_bad", 'throw new Error("boom");\n')
    dry = list(actions.apply(mongo.db, None, [ok], run=False, lock_wait=1, echo=lambda line: None))
    assert dry[0].comment == "would count" and mongo.db.applied_patches.count_documents({}) == 0
    from migrator.errors import MigratorError

    with pytest.raises(MigratorError) as err:
        list(actions.apply(mongo.db, None, [ok, bad], run=True, lock_wait=1, echo=lambda line: None))
    assert f"{bad.path}: 0002_bad failed: mongosh exit 1: Error: boom" in str(err.value)
    records = {r["patch"]: r for r in mongo.db.applied_patches.find()}
    assert records["0001_ok"]["comment"] == "counted 7" and records["0001_ok"]["kind"] == "js"
    assert records["0002_bad"]["status"] == "failed" and "Error: boom" in records["0002_bad"]["error"]


def test_the_uri_travels_in_the_environment_not_the_command_line(tmp_path, monkeypatch):
    """What `ps` would show: mongosh's argv has no URI and no password."""
    from migrator.targets import MongoTarget

    for name, value in {"DB_PASSWORD": "pg-secret", "AWS_SECRET_ACCESS_KEY": "aws", "MONGO_URL": "mongodb://x"}.items():
        monkeypatch.setenv(name, value)
    seen = {}
    real_popen = subprocess.Popen

    def spy(command, **kwargs):
        seen["argv"], seen["env"] = command, kwargs["env"]
        return real_popen(["true"], **{k: v for k, v in kwargs.items() if k != "env"})

    monkeypatch.setattr(subprocess, "Popen", spy)
    target = MongoTarget("mongodb://app:Js-Secret-5@docdb.example:27017/", "hcm", documentdb=True, ca_file="/ca.pem")
    run_js(js_patch(tmp_path, "0001_x", "print(1);\n"), target, True, lambda line: None)
    assert "Js-Secret-5" not in " ".join(seen["argv"]) and "mongodb://" not in " ".join(seen["argv"])
    assert seen["argv"][1:4] == ["--nodb", "--norc", "--quiet"]
    assert "db = connect(process.env.HCM_MONGO_URI);" in seen["argv"][5]
    # Nothing else of the runner's environment: no password, no AWS key, no MONGO_URL; telemetry off.
    assert set(seen["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LANGUAGE", "TZ", "LC_ALL", "LC_CTYPE", "LC_MESSAGES",
                                "HCM_MONGO_URI", "HCM_PINNED", "MONGOSH_FORCE_DISABLE_TELEMETRY_FOR_TESTING"}
    uri = seen["env"]["HCM_MONGO_URI"]
    assert uri.startswith("mongodb://app:Js-Secret-5@docdb.example:27017/hcm?")
    assert "tls=true" in uri and "tlsCAFile=/ca.pem" in uri and "retryWrites=false" in uri


def test_the_example_patch_counts_by_status_in_mongosh_syntax(tmp_path):
    """The shipped JS example at least parses and runs up to its first database call."""
    from conftest import PROJECT_ROOT

    source = (PROJECT_ROOT / "mongo" / "0002_report_enrollment_statuses.js").read_text()
    # mongosh guards the global `db`, so the stand-in database comes in as a parameter.
    stub = '{ getCollection: () => ({ aggregate: () => ({ toArray: () => [{_id: "ACTIVE", n: 2}, {_id: "COMPLETED", n: 5}] }) }) }'
    patch = js_patch(tmp_path, "0002_example", f"(function (db) {{\n{source}\n}})({stub});\n")
    seen = []
    assert run_js(patch, None, True, seen.append) == "dry run: enrollments by status: ACTIVE=2, COMPLETED=5"
    assert seen == ["enrollments by status: ACTIVE=2, COMPLETED=5"]
    assert run_js(patch, None, False, lambda line: None) == "enrollments by status: ACTIVE=2, COMPLETED=5"


def test_a_wrong_mongosh_setting_is_one_line(cli, mongo, tmp_path, monkeypatch):
    monkeypatch.setenv("MONGOSH", str(tmp_path / "no-mongosh-here"))
    (tmp_path / "mongo").mkdir()
    (tmp_path / "mongo" / "0001_x.js").write_text("print(1);\n")
    result = cli("mongo", "apply", "--mongo-dir", tmp_path / "mongo", env=mongo.env)
    assert result.exit_code == 2
    assert f"mongosh not found at {tmp_path / 'no-mongosh-here'} (MONGOSH); fix MONGOSH or unset it" in one_error_line(result)


@pytest.mark.parametrize("attempt", ["var DRY_RUN = false;", "let DRY_RUN = false;", "const DRY_RUN = false;",
                                     "DRY_RUN = false;", "globalThis.DRY_RUN = false;",
                                     'Object.defineProperty(globalThis, "DRY_RUN", {value: false});'])
def test_a_patch_cannot_turn_its_dry_run_off(tmp_path, attempt):
    patch = js_patch(tmp_path, "0001_sneaky", f"try {{ {attempt} }} catch (e) {{ print('refused: ' + e.name); }}\n"
                                              "patchComment(`DRY_RUN is ${DRY_RUN}`);\n")
    try:
        comment = run_js(patch, None, True, lambda line: None)
    except JsPatchFailed as exc:  # refused outright (a SyntaxError) is as good: it did not run as a real run
        assert "DRY_RUN" in str(exc) or "SyntaxError" in str(exc)
        return
    assert comment == "DRY_RUN is true"


def test_mongosh_runs_with_telemetry_off_and_a_home_of_its_own(tmp_path):
    patch = js_patch(tmp_path, "0001_env", 'patchComment(`telemetry=${config.get("enableTelemetry")} '
                                           'home=${process.env.HOME} pw=${process.env.DB_PASSWORD}`);\n')
    comment = run_js(patch, None, True, lambda line: None)
    assert comment.startswith("telemetry=false home=/") and "hcm-mongosh-" in comment and comment.endswith("pw=undefined")


def test_mongosh_is_stopped_after_the_timeout_and_fails_the_patch(tmp_path):
    import time

    patch = js_patch(tmp_path, "0001_hangs", 'print("working");\nsleep(60000);\n')
    started = time.monotonic()
    with pytest.raises(JsPatchFailed) as err:
        run_js(patch, None, False, lambda line: None, timeout=3)
    assert time.monotonic() - started < 20
    assert "stopped after 3 s (--patch-timeout / MONGO_PATCH_TIMEOUT)" in str(err.value)


# A syntax error is found by mongosh itself before the `running` record: nothing of the patch runs, so
# nothing may be logged (a `failed` record would block every later deploy). Top-level await and return
# pass JavaScript's AsyncFunction constructor but not mongosh --file: the check must be mongosh's own.
SYNTAX_ERRORS = {
    "unexpected token": ('print("a");\n\nconst x = ;\n', 3, "SyntaxError: Unexpected token"),
    "top-level await": ('print("a");\nconst n = await Promise.resolve(1);\n', 2,
                        "SyntaxError: 'await' is only allowed within async functions"),
    "top-level return": ('print("a");\nif (true) {\n  return;\n}\n', 3, "SyntaxError: 'return' outside of function."),
    "redeclared": ('const x = 1;\nprint(x);\nconst x = 2;\n', 3, "SyntaxError: Identifier 'x' has already been declared."),
    "invalid regex (V8's own check)": ('print("a");\nconst r = /(/;\n', 2,
                                       "SyntaxError: Invalid regular expression: /(/: Unterminated group"),
}


@pytest.mark.parametrize("case", SYNTAX_ERRORS)
def test_a_syntax_error_is_one_line_before_any_record_and_blocks_nothing(cli, mongo, tmp_path, case):
    body, line, message = SYNTAX_ERRORS[case]
    folder = tmp_path / "mongo"
    folder.mkdir()
    path = folder / "0001_typo.js"
    path.write_text(f"db.getCollection('marks').insertOne({{ ran: true }});\n{body}")  # line 1 would write
    body_line = line + 1
    result = cli("mongo", "apply", "--mongo-dir", folder, "--run", env=mongo.env)
    assert result.exit_code == 2
    error = one_error_line(result)
    assert error.startswith(f"error: {path}:{body_line}: {message}")
    assert error.endswith("; fix it (nothing ran, nothing was logged)")
    assert mongo.db.applied_patches.count_documents({}) == 0  # no `running`, no `failed`: nothing to resolve
    # The next deploy is not blocked: once fixed, it is pending and runs.
    path.write_text('patchComment(DRY_RUN ? "would fix" : "fixed");\n')
    from migrator.mongo.patches import discover

    patches = discover(folder)
    assert [p.id for p in actions.pending(mongo.db, patches)] == ["0001_typo"]
    (applied,) = actions.apply(mongo.db, None, patches, run=True, lock_wait=1, echo=lambda line: None)
    assert applied.comment == "fixed"
    assert [(r["patch"], r["status"]) for r in mongo.db.applied_patches.find()] == [("0001_typo", "applied")]


# The check runs on plain node with the rewriter mongosh itself loads (a tenth of a mongosh start); mongosh's own
# `--exposeAsyncRewriter` is the reference: every case gets the same verdict and line from both.
SAME_VERDICT = {
    **{case: (body, line) for case, (body, line, _message) in SYNTAX_ERRORS.items()},
    "top-level await deep in the file": ("function f() { return 1; }\n" * 30 + "await f();\n", 31),
    "implicit await of a promise-returning call": ('const n = db.getCollection("a").countDocuments({});\nprint(n + 1);\n',
                                                   None),
    "a syntax error deep in the file": ("".join(f"print({i});\n" for i in range(1, 40)) + "if (x {\n}\n", 40),
    "only the rewriter's wrapping rejects it (await as a name)": ("var await = 1;\nprint(await);\n", "no line"),
}


@pytest.fixture(scope="module")
def mongoshs_verdicts(tmp_path_factory):
    """mongosh's own check (`--exposeAsyncRewriter`, the same syntax_check.js) of every SAME_VERDICT case, all in one
    mongosh (~1.2 CPU-s a start): each case's file `load()`ed in turn, as `--file` loads one; the loads share nothing
    but mongosh's rewriter, as every file one mongosh loads does. The one-case test below holds it to the product's
    own one-file `_run_check`."""
    folder = tmp_path_factory.mktemp("verdicts")
    files = []
    for number, (body, _line) in enumerate(SAME_VERDICT.values()):
        files.append(folder / f"{number:04d}_case.js")
        files[-1].write_text(body)
    driver = folder / "driver.js"
    driver.write_text(f"for (const file of {json.dumps([str(f) for f in files])}) {{\n  process.env.HCM_PATCH_FILE = file;\n"
                      f"  load({json.dumps(str(js_patch_module.SYNTAX_CHECK))});\n}}\n")
    command = [js_patch_module.mongosh_path(), "--nodb", "--norc", "--quiet", "--exposeAsyncRewriter", "--file", str(driver)]
    home = folder / "home"
    home.mkdir()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=js_patch_module.mongosh_environment(str(home)))
    mark = js_patch_module.SYNTAX_MARK
    marked = [json.loads(line[len(mark):]) for line in done.stdout.split("\n") if line.startswith(mark)]
    assert done.returncode == 0 and len(marked) == len(SAME_VERDICT), done.stdout + done.stderr
    return dict(zip(SAME_VERDICT, marked))


@pytest.mark.parametrize("case", SAME_VERDICT)
def test_the_node_check_gives_mongoshs_own_verdict_and_line(tmp_path, mongoshs_verdicts, case):
    body, line = SAME_VERDICT[case]
    patch = js_patch(tmp_path, "0001_case", body)
    mongosh = js_patch_module.mongosh_path()
    node = js_patch_module._node_of(mongosh)
    assert node, "the npm mongosh is a node script: the cheap check applies"
    cheap, reference = js_patch_module._run_check(mongosh, patch, node), mongoshs_verdicts[case]
    assert cheap == reference
    if line is None:
        assert cheap is None
    else:
        assert cheap["name"] == "SyntaxError" and cheap["line"] == (None if line == "no line" else line)


@pytest.mark.parametrize("case", ["implicit await of a promise-returning call", "a syntax error deep in the file"])
def test_mongoshs_verdicts_in_one_mongosh_are_its_one_file_checks(tmp_path, mongoshs_verdicts, case):
    patch = js_patch(tmp_path, "0001_case", SAME_VERDICT[case][0])
    assert js_patch_module._run_check(js_patch_module.mongosh_path(), patch, None) == mongoshs_verdicts[case]


@pytest.mark.parametrize("script", ["node_modules/.bin/mongosh", "node_modules/mongosh/bin/mongosh.js"])  # (image's)
def test_the_check_starts_node_not_mongosh(tmp_path, monkeypatch, script):
    monkeypatch.setenv("MONGOSH", str(js_patch_module.LOCAL_MONGOSH.parents[2] / script))
    started = []
    run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: started.append(command) or run(command, **kw))
    js_patch_module.check(js_patch(tmp_path, "0001_fine", "print(1);\n"))
    with pytest.raises(Exception, match=r":2: SyntaxError: Unexpected token"):
        js_patch_module.check(js_patch(tmp_path, "0002_typo", "print(1);\nconst y = );\n"))
    assert [command[1:] for command in started] == [[str(js_patch_module.SYNTAX_CHECK)]] * 2
    assert all(command[0] == js_patch_module._node_of(js_patch_module.mongosh_path()) for command in started)


def test_a_syntax_error_stops_the_run_after_the_patches_before_it(tmp_path, mongo):
    from migrator.errors import MigratorError

    ok = js_patch(tmp_path, "0001_ok", 'patchComment("done");\n')
    bad = js_patch(tmp_path, "0002_typo", "print(1);\nconst y = );\nprint(y);\n")
    later = js_patch(tmp_path, "0003_later", 'patchComment("later");\n')
    with pytest.raises(MigratorError) as err:
        list(actions.apply(mongo.db, None, [ok, bad, later], run=True, lock_wait=1, echo=lambda line: None))
    assert err.value.exit_code == 2 and str(err.value).startswith(f"{bad.path}:2: SyntaxError: ")
    assert [(r["patch"], r["status"]) for r in mongo.db.applied_patches.find()] == [("0001_ok", "applied")]
    assert [p.id for p in actions.pending(mongo.db, [ok, bad, later])] == ["0002_typo", "0003_later"]


@pytest.mark.parametrize("body", ["#!/usr/bin/env mongosh\nprint(1);\n", "\ufeffprint(1);\n",
                                  "// only a comment, no final newline", "const f = async () => await 1;\nf();\n",
                                  'const {a, ...rest} = {a: 1, b: 2};\nprint(`${a}`, rest); // destructuring, a template\n'])
def test_what_mongosh_runs_passes_the_check(tmp_path, body):
    patch = js_patch(tmp_path, "0001_fine", body)
    js_patch_module.check(patch)  # no error
    run_js(patch, None, True, lambda line: None)  # and mongosh does run it


@pytest.mark.parametrize("name, script", [
    ("old-mongosh", "#!/bin/sh\necho 'Error: unknown option --exposeAsyncRewriter' >&2\nexit 1\n"),
    # a node script with no @mongosh packages beside it: mongosh's own --exposeAsyncRewriter decides (here: refused)
    ("mongosh.js", "#!/usr/bin/env node\nconsole.error('Error: unknown option ' + process.argv[5]);\nprocess.exit(1);\n"),
], ids=["not-node", "node-without-the-rewriter-package"])
def test_a_mongosh_that_cannot_check_is_one_line_not_a_failed_patch(tmp_path, mongo, monkeypatch, name, script):
    from migrator.errors import MigratorError

    fake = tmp_path / name
    fake.write_text(script)
    fake.chmod(0o755)
    monkeypatch.setenv("MONGOSH", str(fake))
    patch = js_patch(tmp_path, "0001_fine", "print(1);\n")
    with pytest.raises(MigratorError) as err:
        list(actions.apply(mongo.db, None, [patch], run=True, lock_wait=1, echo=lambda line: None))
    assert err.value.exit_code == 2
    assert str(err.value) == (f"{fake} could not check the syntax of {patch.path}: Error: unknown option "
                              f"--exposeAsyncRewriter; use mongosh {js_patch_module.MONGOSH_VERSION} (`make mongosh`) "
                              "or fix MONGOSH (nothing ran, nothing was logged)")
    assert mongo.db.applied_patches.count_documents({}) == 0


@pytest.mark.parametrize("dry_run", [True, False])
def test_mongosh_runs_the_bytes_that_were_checked_and_hashed(tmp_path, dry_run):
    """The patch is checked and hashed, then run: a file replaced in between (a local writer racing the run) does
    not run, nor is its checksum what the record says (attack 23g low)."""
    patch = js_patch(tmp_path, "0001_swap", 'print("checked");\n')
    js_patch_module.check(patch)
    checksum = patch.checksum
    patch.path.write_text('print("swapped in");\n')
    seen = []
    run_js(patch, None, dry_run, seen.append)
    assert seen == ["checked"] and patch.checksum == checksum
