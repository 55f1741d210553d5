"""The JS dry-run shim and mongosh's process hygiene (mongosh --nodb; no server exists here).

The shim is loaded exactly as a dry run loads it, after a `db` whose classes have mongosh's method
names and record every call that would reach the server; a write must throw before any such call.
"""

import os
import subprocess
import time

import pytest

from conftest import needs_mongosh

from migrator.mongo import js_patch
from migrator.mongo.js_patch import JsPatchFailed, run_js
from migrator.mongo.patches import Patch

pytestmark = needs_mongosh

STAND_IN = """
globalThis.net = [];
const call = (name) => function (...args) { net.push(name); return name === "find" ? [] : {ok: 1}; };
class ShellApiClass { help() {} }
class Collection extends ShellApiClass {}
for (const n of ["insertOne", "insertMany", "insert", "updateOne", "updateMany", "update", "deleteOne", "deleteMany",
                 "remove", "replaceOne", "findOneAndUpdate", "findOneAndReplace", "findOneAndDelete", "findAndModify",
                 "bulkWrite", "initializeOrderedBulkOp", "initializeUnorderedBulkOp", "drop", "dropIndex", "dropIndexes",
                 "createIndex", "createIndexes", "renameCollection", "hideIndex", "unhideIndex", "aggregate",
                 "runCommand", "find", "findOne", "countDocuments", "distinct", "getIndexes"]) {
  Collection.prototype[n] = call(n);
}
class Database extends ShellApiClass {
  getCollection(name) { return new Collection(); }
  getSiblingDB(name) { return new Database(); }
  getMongo() { return new MongoStandIn(); }
}
for (const n of ["runCommand", "adminCommand", "aggregate", "dropDatabase", "createCollection", "createView",
                 "createUser", "getCollectionNames", "stats"]) {
  Database.prototype[n] = call(n);
}
class MongoStandIn { getDB(name) { return new Database(); } }
MongoStandIn.prototype.setReadPref = call("setReadPref");
globalThis.hcmShimTarget = new Database();
globalThis.sdb = hcmShimTarget;
"""

WRITES = [
    "sdb.getCollection('c').insertOne({})", "db.c_insertMany", "sdb.getCollection('c').updateMany({}, {$set: {a: 1}})",
    "sdb.getCollection('c').deleteMany({})", "sdb.getCollection('c').replaceOne({}, {})",
    "sdb.getCollection('c').findOneAndUpdate({}, {$set: {a: 1}})", "sdb.getCollection('c').findAndModify({})",
    "sdb.getCollection('c').bulkWrite([])", "sdb.getCollection('c').initializeUnorderedBulkOp()",
    "sdb.getCollection('c').drop()", "sdb.getCollection('c').createIndex({a: 1})", "sdb.getCollection('c').dropIndex('a_1')",
    "sdb.getCollection('c').hideIndex('a_1')", "sdb.getCollection('c').renameCollection('d')",
    "sdb.getCollection('c').aggregate([{$out: 'copy'}])", "sdb.getCollection('c').aggregate([{$match: {}}, {$merge: 'x'}])",
    "sdb.getCollection('c').aggregate([{$facet: {a: [{$out: 'copy'}]}}])",
    "sdb.getCollection('c').aggregate([{$lookup: {from: 'x', pipeline: [{$merge: 'y'}], as: 'z'}}])",
    "sdb.getCollection('c').aggregate([{$unionWith: {coll: 'x', pipeline: [{$out: 'y'}]}}])",
    "sdb.aggregate([{$documents: [{}]}, {$out: 'copy'}])",
    "sdb.runCommand({insert: 'c', documents: [{}]})", "sdb.runCommand('dropDatabase')",
    "sdb.adminCommand({shutdown: 1})", "sdb.runCommand({aggregate: 'c', pipeline: [{$out: 'x'}], cursor: {}})",
    "sdb.dropDatabase()", "sdb.createCollection('x')", "sdb.createUser({})",
    "sdb.getSiblingDB('other').getCollection('c').insertOne({})", "sdb.getMongo().getDB('x').dropDatabase()",
    "connect('mongodb://localhost/x')", "new Mongo('mongodb://localhost/x')",
]
WRITES[1] = "sdb.getCollection('c').insertMany([{}])"
READS = ["sdb.getCollection('c').find({})", "sdb.getCollection('c').countDocuments({})",
         "sdb.getCollection('c').aggregate([{$match: {}}, {$group: {_id: null}}])", "sdb.runCommand({ping: 1})",
         "sdb.runCommand({count: 'c'})", "sdb.adminCommand({listDatabases: 1})", "sdb.getMongo().setReadPref('secondary')",
         "sdb.getCollection('c').distinct('a')"]


def mongosh_with_shim(tmp_path, body: str) -> subprocess.CompletedProcess:
    test = tmp_path / "test.js"
    test.write_text(body)
    command = [js_patch.mongosh_path(), "--nodb", "--norc", "--quiet", "--eval", STAND_IN + " void 0;",
               "--file", str(js_patch.SHIM), "--file", str(test)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env=js_patch.mongosh_environment(str(tmp_path)))


def test_every_write_throws_before_reaching_the_server_and_reads_pass(tmp_path):
    checks = "".join(
        f"try {{ {w}; print('WROTE ' + {w!r}); }} catch (e) {{ print((String(e.message).includes('not allowed in a "
        f"dry run') ? 'REFUSED ' : 'OTHER ' + e.message + ' ') + {w!r}); }}\n" for w in WRITES)
    checks += "print('NET ' + JSON.stringify(net));\n"
    checks += "".join(f"{r}; print('READ ' + {r!r});\n" for r in READS)
    result = mongosh_with_shim(tmp_path, checks)
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith(("WROTE", "OTHER"))] == [], result.stdout + result.stderr
    assert len([line for line in lines if line.startswith("REFUSED")]) == len(WRITES)
    assert "NET []" in lines  # no write reached the stand-in's network calls
    assert len([line for line in lines if line.startswith("READ")]) == len(READS), result.stdout + result.stderr


@pytest.mark.parametrize("undo", [
    "Object.getPrototypeOf(sdb.getCollection('c')).insertOne = function () { net.push('x'); }",
    "Object.defineProperty(Object.getPrototypeOf(sdb.getCollection('c')), 'insertOne', {value: () => net.push('x')})",
    "delete Object.getPrototypeOf(sdb.getCollection('c')).insertOne",
    "Object.setPrototypeOf(Object.getPrototypeOf(sdb.getCollection('c')), {})",
    "connect = function () { return db; }",
])
def test_the_shim_cannot_be_removed(tmp_path, undo):
    result = mongosh_with_shim(tmp_path, f"try {{ {undo}; }} catch (e) {{}}\n"
                                         "try { sdb.getCollection('c').insertOne({}); } catch (e) { print(e.message); }\n"
                                         "try { connect('mongodb://h/x'); } catch (e) { print(e.message); }\n"
                                         "print('NET ' + JSON.stringify(net));\n")
    assert "collection.insertOne is not allowed in a dry run" in result.stdout, result.stdout + result.stderr
    assert "connect() is not allowed in a dry run" in result.stdout
    assert "NET []" in result.stdout


def test_shadowing_dry_run_does_not_unlock_writes(tmp_path):
    result = mongosh_with_shim(tmp_path, 'eval("var DRY_RUN = false");\n'
                                         "if (!DRY_RUN) { try { sdb.getCollection('c').updateMany({}, {$set: {a: 1}}); }"
                                         " catch (e) { print(e.message); } }\nprint('NET ' + JSON.stringify(net));\n")
    assert "collection.updateMany is not allowed in a dry run" in result.stdout, result.stdout + result.stderr
    assert "NET []" in result.stdout


def test_a_dry_run_refuses_connect_and_a_real_run_does_not_load_the_shim(tmp_path):
    path = tmp_path / "0001_connects.js"
    path.write_text("try { connect('mongodb://127.0.0.1:9/x?serverSelectionTimeoutMS=200'); } catch (e) { print(e.message); }\n")
    patch = Patch("0001_connects", path, "js")
    seen = []
    run_js(patch, None, True, seen.append)
    assert any("connect() is not allowed in a dry run" in line for line in seen)
    seen.clear()
    run_js(patch, None, False, seen.append)
    assert not any("dry run" in line for line in seen)


# --- process hygiene: the whole group is killed at the timeout, reading stops ----------------------

@pytest.mark.parametrize("detached", ["false", "true"])
def test_the_timeout_bounds_a_patch_whose_child_keeps_the_pipe_open(tmp_path, detached):
    marker = tmp_path / "child.pid"
    path = tmp_path / "0001_spawns.js"
    path.write_text(
        "const cp = require('child_process');\n"
        f"const child = cp.spawn('sh', ['-c', 'echo $$ > {marker}; exec sleep 60'], "
        f"{{stdio: 'inherit', detached: {detached}}});\n"
        "sleep(60000);\n")
    started = time.monotonic()
    # The timeout leaves mongosh time to start and spawn its child on a loaded machine (3 s did not, at load 15);
    # the patch and its child would hold the pipe for 60 s.
    with pytest.raises(JsPatchFailed) as err:
        run_js(Patch("0001_spawns", path, "js"), None, False, lambda line: None, timeout=8)
    assert time.monotonic() - started < 30
    assert "stopped after 8 s" in str(err.value)
    assert marker.exists(), "mongosh had not spawned its child within the 8 s timeout"
    child = int(marker.read_text())
    time.sleep(0.3)
    alive = os.path.exists(f"/proc/{child}") and "Z" not in open(f"/proc/{child}/stat").read().split()[2]
    if detached == "false":
        assert not alive  # same process group: killed with mongosh
    elif alive:
        os.kill(child, 9)  # a child that starts its own session escapes the group (documented)


def test_a_comment_and_output_with_a_password_are_scrubbed(tmp_path):
    from migrator import output

    output.register_secret("Hidden-Pw-77")
    try:
        path = tmp_path / "0001_leaks.js"
        path.write_text('print("pw=Hidden-Pw-77");\npatchComment("pw=Hidden-Pw-77\\nsecond");\n')
        seen = []
        comment = run_js(Patch("0001_leaks", path, "js"), None, True, seen.append)
    finally:
        output.forget_secrets()
    assert comment == "pw=*** | second"
    assert seen == ["pw=***"]
