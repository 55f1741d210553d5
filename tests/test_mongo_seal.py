"""A Python patch runs in a child process: a dry run's child cannot reach the writer's credentials (its
environment, the runner's /proc files and memory, `.env`), and a patch's threads die with its child."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import needs_mongosh

from test_mongo_readonly_user import READER_PASSWORD, readonly  # noqa: F401 (the fixture)

WRITER_PASSWORD = "Writer-pw-Sealed-7"

HOSTILE = '''
import gc, os, re, subprocess, sys  # noqa: E401

SECRETS = {secrets!r}

def leaked(route, data):
    if any(s.encode() in data for s in SECRETS):
        print("LEAK via " + route)
        return data.decode("latin-1")
    print("blocked " + route)
    return ""

def attempt(route, read):
    try:
        return leaked(route, read())
    except Exception as exc:
        print("blocked " + route + " (" + exc.__class__.__name__ + ")")
        return ""

def memory(pid):
    found = b""
    with open(f"/proc/{{pid}}/maps") as maps, open(f"/proc/{{pid}}/mem", "rb") as mem:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if "rw" in line.split()[1] and end - start < 64 << 20:
                try:
                    mem.seek(start)
                    found += mem.read(end - start)
                except OSError:
                    pass
    return found

def run(db, dry_run):
    if not dry_run:
        db.things.insert_one({{"written": "by the real run"}})
        return "wrote as the writer"
    text = attempt("environ", lambda: repr(dict(os.environ)).encode())
    for pid in ("self", os.getppid()):
        text += attempt(f"/proc/{{pid}}/environ", lambda: open(f"/proc/{{pid}}/environ", "rb").read())
        text += attempt(f"/proc/{{pid}}/mem", lambda: memory(pid))
    text += attempt(".env", lambda: open({dotenv!r}, "rb").read())
    real = [o for o in gc.get_objects() if type(o).__name__ == "MongoClient"]
    for client in real:  # the child's own client: the read-only user's
        try:
            client[db.name].things.insert_one({{"written": "through the child's client"}})
            print("WROTE through the child's client")
        except Exception as exc:
            print("refused through the child's client (" + exc.__class__.__name__ + ")")
    for url in set(re.findall(r"mongodb://[^\\s'\\"\\\\\\x00]+", text)):  # a writer URL found anywhere: a fresh process
        done = subprocess.run([sys.executable, "-c", "import pymongo, sys; pymongo.MongoClient(sys.argv[1])"
                               "[sys.argv[2]].things.insert_one({{'written': 'with a found URL'}})", url, db.name])
        print("WROTE with a found URL" if done.returncode == 0 else "refused with a found URL")
    return "tried"
'''


def test_a_dry_run_patch_cannot_reach_the_writers_credentials(cli, readonly, pg, workdir, tmp_path):  # noqa: F811
    env, db = readonly
    writer = env["MONGO_URL"].replace("mongodb://", f"mongodb://{pg.user}:{WRITER_PASSWORD}@") + "?authMechanism=PLAIN"
    dotenv = workdir / ".env"
    dotenv.write_text(f"MONGO_URL={writer}\nMONGO_DB={env['MONGO_DB']}\nMONGO_READONLY_URL={env['MONGO_READONLY_URL']}\n")
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_hostile.py").write_text(HOSTILE.format(secrets=[WRITER_PASSWORD, "Db-pw-Sealed-7"],
                                                           dotenv=str(dotenv)))
    before = sorted(map(repr, db.things.find()))
    result = cli("mongo", "apply", "--mongo-dir", folder, env={"DB_PASSWORD": "Db-pw-Sealed-7"})
    assert result.exit_code == 0 and "dry run 0001_hostile" in result.stdout, result.output
    for route in ("environ", "/proc/self/environ", "/proc/self/mem", ".env"):
        assert f"blocked {route}" in result.stdout, result.output
    assert "LEAK" not in result.output and "WROTE" not in result.output, result.output
    assert "refused through the child's client" in result.stdout  # it did try: the server refused
    assert WRITER_PASSWORD not in result.output
    assert sorted(map(repr, db.things.find())) == before and db.applied_patches.count_documents({}) == 1

    # the same patch, applied: a real run keeps the runner's environment (and writes)
    run = cli("mongo", "apply", "--run", "--mongo-dir", folder, env={"DB_PASSWORD": "Db-pw-Sealed-7"})
    assert run.exit_code == 0 and "applied 0001_hostile" in run.stdout, run.output
    assert db.things.count_documents({"written": "by the real run"}) == 1


STRAY = '''
import os, threading, time

def run(db, dry_run):
    def later():
        while not os.path.exists({go!r}):
            time.sleep(0.05)
        db.things.insert_one({{"late": True}})  # after run() returned: must never happen

    threading.Thread(target=later).start()
    print(f"pid={{os.getpid()}}")
    return "left a thread behind"
'''


@pytest.mark.parametrize("run", [True, False], ids=["run", "dry-run"])
def test_a_patchs_stray_thread_dies_with_its_process_before_the_record_is_settled(cli, mongo, tmp_path, run):
    if not mongo.real:
        pytest.skip("needs a real server: the patch's child process connects over TCP")
    folder = tmp_path / "mongo"
    folder.mkdir()
    go = tmp_path / "go"
    (folder / "0001_stray.py").write_text(STRAY.format(go=str(go)))
    result = cli("mongo", "apply", *(["--run"] if run else []), "--mongo-dir", folder, env=mongo.env)
    assert result.exit_code == 1 and "threads still running after run() returned" in result.stderr, result.output
    pid = int(re.search(r"^pid=(\d+)$", result.stdout, re.M).group(1))
    assert pid != os.getpid() and not Path(f"/proc/{pid}").exists()  # the patch's process is gone (reaped)
    go.write_text("")
    records = list(mongo.db.applied_patches.find({"patch": "0001_stray"}))
    assert [r["status"] for r in records] == (["failed"] if run else [])
    assert mongo.db.things.count_documents({"late": True}) == 0


SERVICE_PROVIDER = '''
const name = db.getName();
const sp = db.getMongo()._serviceProvider;
const routes = {
  "serviceProvider.insertOne": () => sp.insertOne(name, "things", {written: "serviceProvider"}),
  "db._mongo._serviceProvider.runCommandWithCheck": () =>
    db._mongo._serviceProvider.runCommandWithCheck(name, {insert: "things", documents: [{written: "runCommand"}]}),
  "the Node driver's client": () => sp.mongoClient.db(name).collection("things").insertOne({written: "driver"}),
};
let done = false;
(async () => {
  for (const [route, write] of Object.entries(routes)) {
    try { await write(); print("WROTE via " + route); } catch (e) { print("refused via " + route + ": " + e.message); }
  }
})().finally(() => { done = true; });
while (!done) sleep(50);  // mongosh's sleep lets the driver's promises settle
'''


@needs_mongosh
def test_a_dry_run_js_patch_through_mongoshs_internals_cannot_write_as_the_readonly_user(cli, readonly, tmp_path):  # noqa: F811
    env, db = readonly
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_internals.js").write_text(SERVICE_PROVIDER)
    snapshot = lambda: {n: sorted(map(repr, db[n].find())) for n in sorted(db.list_collection_names())}  # noqa: E731
    before = snapshot()
    result = cli("mongo", "apply", "--mongo-dir", folder, env=env)
    assert result.exit_code == 0 and "WROTE" not in result.stdout, result.output
    assert result.stdout.count("refused via") == 3, result.output
    assert snapshot() == before  # byte-identical: the server refused every route
    # without MONGO_READONLY_URL only the shim stands there: it seals mongosh's service provider and the driver's
    # connection under it too (attack20j), so these routes are refused (only the socket itself is left: doctor warns)
    plain = cli("mongo", "apply", "--mongo-dir", folder, env={k: v for k, v in env.items() if k != "MONGO_READONLY_URL"})
    assert plain.exit_code == 0 and "WROTE via" not in plain.stdout, plain.output
    assert plain.stdout.count("is not allowed in a dry run") == 3, plain.output
    assert snapshot() == before


@pytest.mark.parametrize("run", [True, False], ids=["run", "dry-run"])
@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "-v"])
def test_a_patch_error_from_its_process_names_the_patch_and_its_line(cli, mongo, tmp_path, run, verbose):
    if not mongo.real:
        pytest.skip("needs a real server: the patch's child process connects over TCP")
    folder = tmp_path / "mongo"
    folder.mkdir()
    path = folder / "0001_fails.py"
    (folder / "helper.py").write_text("def check(plan):\n    raise ValueError(f'no such plan: {plan}')\n")
    path.write_text("import helper\ndef run(db, dry_run):\n    print('about to fail')\n    helper.check('P-7')\n")
    result = cli(*(["-v"] if verbose else []), "mongo", "apply", *(["--run"] if run else []), "--mongo-dir", folder,
                 env=mongo.env)
    assert result.exit_code == 1 and "about to fail" in result.stdout, result.output
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    # the patch's own line that led to the error (not the helper's), without -v; the traceback only with -v
    assert f"{path}:4: 0001_fails failed: ValueError: no such plan: P-7" in line
    assert (f'File "{path}", line 4, in run' in result.stderr) == verbose, result.stderr


READS_SECRETS_JS = '''
const fs = require("fs");
for (const path of [{dotenv!r}, "/proc/" + process.ppid + "/environ"]) {{
  try {{
    const text = fs.readFileSync(path, "latin1");
    print((text.includes({secret!r}) ? "LEAK via " : "read without the secret: ") + path);
  }} catch (e) {{ print("blocked " + path + " (" + e.code + ")"); }}
}}
'''


@needs_mongosh
def test_a_dry_run_js_patch_cannot_read_dotenv_or_the_runners_environ(cli, mongo, workdir, tmp_path):
    if not mongo.real:
        pytest.skip("needs a real server for mongosh")
    dotenv = workdir / ".env"
    dotenv.write_text(f"DB_PASSWORD={WRITER_PASSWORD}\n")
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_reads.js").write_text(READS_SECRETS_JS.format(dotenv=str(dotenv), secret=WRITER_PASSWORD))
    result = cli("mongo", "apply", "--mongo-dir", folder, env={**mongo.env, "DB_PASSWORD": WRITER_PASSWORD})
    assert result.exit_code == 0 and "dry run 0001_reads" in result.stdout, result.output
    assert result.stdout.count("blocked ") == 2 and "LEAK" not in result.stdout, result.output
