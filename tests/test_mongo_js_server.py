"""JavaScript dry runs on the real mongosh against a real server (FerretDB): every write route is refused and
the server's databases stay byte-identical; the same patch with --run writes, and is logged once."""

from __future__ import annotations

import contextlib
import shutil

import pytest

from pymongo.errors import OperationFailure

from migrator.mongo import js_patch

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (js_patch.LOCAL_MONGOSH.exists() or shutil.which("mongosh")),
    reason="needs Node.js and mongosh: `make mongosh` installs mongosh from npm",
)


@pytest.fixture
def server(mongo):
    if not mongo.real:
        pytest.skip("needs a real Mongo server (FerretDB: install Go)")
    return mongo


def dump(client) -> dict:
    """Every database, collection (with its options), index and document, as the server's raw BSON bytes."""
    import bson
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    raw = CodecOptions(document_class=RawBSONDocument)
    found = {}
    for name in sorted(client.list_database_names()):
        db = client.get_database(name, codec_options=raw)
        for info in sorted(db.list_collections(), key=lambda c: c["name"]):
            collection = db[info["name"]]
            found[f"{name}.{info['name']}"] = (
                bson.encode(dict(info)),
                sorted(bson.encode(dict(i)) for i in collection.list_indexes()),
                sorted(bytes(d.raw) for d in collection.find()),
            )
    return found


# Every write route a patch could take; each in its own try, so one refusal does not hide the next.
WRITES = r"""
const other = db.getSiblingDB(db.getName() + "_other");
const viaMongo = db.getMongo().getDB(db.getName() + "_third");
const c = db.getCollection("people");
const routes = {
  insertOne: () => c.insertOne({_id: 99, name: "new"}),
  insertMany: () => c.insertMany([{_id: 98}, {_id: 97}]),
  insert: () => c.insert({_id: 96}),
  updateOne: () => c.updateOne({_id: 1}, {$set: {name: "changed"}}),
  updateMany: () => c.updateMany({}, {$set: {touched: true}}),
  update: () => c.update({_id: 1}, {$set: {name: "changed"}}),
  replaceOne: () => c.replaceOne({_id: 1}, {name: "replaced"}),
  deleteOne: () => c.deleteOne({_id: 1}),
  deleteMany: () => c.deleteMany({}),
  remove: () => c.remove({_id: 2}),
  findOneAndUpdate: () => c.findOneAndUpdate({_id: 1}, {$set: {name: "fou"}}),
  findOneAndReplace: () => c.findOneAndReplace({_id: 1}, {name: "for"}),
  findOneAndDelete: () => c.findOneAndDelete({_id: 1}),
  findAndModify: () => c.findAndModify({query: {_id: 1}, update: {$set: {name: "fam"}}}),
  bulkWrite: () => c.bulkWrite([{insertOne: {document: {_id: 95}}}]),
  orderedBulk: () => { const b = c.initializeOrderedBulkOp(); b.insert({_id: 94}); return b.execute(); },
  unorderedBulk: () => { const b = c.initializeUnorderedBulkOp(); b.find({_id: 1}).updateOne({$set: {b: 1}}); return b.execute(); },
  createIndex: () => c.createIndex({name: 1}),
  createIndexes: () => c.createIndexes([{age: 1}]),
  dropIndex: () => c.dropIndex("by_name"),
  dropIndexes: () => c.dropIndexes(),
  createCollection: () => db.createCollection("created"),
  renameCollection: () => c.renameCollection("renamed"),
  drop: () => db.getCollection("scratch").drop(),
  dropDatabase: () => other.dropDatabase(),
  aggregateOut: () => c.aggregate([{$match: {}}, {$out: "copied"}]).toArray(),
  aggregateMerge: () => c.aggregate([{$merge: {into: "merged"}}]).toArray(),
  dbAggregateOut: () => db.aggregate([{$documents: [{a: 1}]}, {$out: "fromdb"}]).toArray(),
  runCommandInsert: () => db.runCommand({insert: "people", documents: [{_id: 93}]}),
  runCommandUpdate: () => db.runCommand({update: "people", updates: [{q: {_id: 1}, u: {$set: {x: 1}}}]}),
  runCommandDelete: () => db.runCommand({delete: "people", deletes: [{q: {}, limit: 0}]}),
  runCommandCreate: () => db.runCommand({create: "viacommand"}),
  runCommandDrop: () => db.runCommand({drop: "scratch"}),
  runCommandFindAndModify: () => db.runCommand({findAndModify: "people", query: {_id: 1}, remove: true}),
  runCommandAggregateOut: () => db.runCommand({aggregate: "people", pipeline: [{$out: "cmdout"}], cursor: {}}),
  adminCommandRename: () => db.adminCommand({renameCollection: db.getName() + ".people", to: db.getName() + ".moved"}),
  siblingInsert: () => other.getCollection("x").insertOne({a: 1}),
  siblingUpdate: () => other.getCollection("x").updateOne({}, {$set: {a: 2}}, {upsert: true}),
  getMongoGetDBInsert: () => viaMongo.getCollection("y").insertOne({a: 1}),
  getMongoGetDBCreate: () => viaMongo.createCollection("z"),
  sessionInsert: () => db.getMongo().startSession().getDatabase(db.getName()).getCollection("people").insertOne({_id: 92}),
  propertyInsert: () => db.people.insertOne({_id: 91}),
  collectionRunCommand: () => c.runCommand("insert", {documents: [{_id: 90}]}),
  bulkUpsertReplace: () => { const b = c.initializeOrderedBulkOp(); b.find({_id: 5}).upsert().replaceOne({a: 1}); return b.execute(); },
  createView: () => db.createView("people_view", "people", [{$match: {}}]),
  createUser: () => db.createUser({user: "hcm_dry", pwd: "x", roles: []}),
  changeUserPassword: () => db.changeUserPassword("hcm_dry", "y"),
  createSearchIndex: () => c.createSearchIndex({name: "s", definition: {mappings: {dynamic: true}}}),
  facetMerge: () => c.aggregate([{$facet: {a: [{$match: {}}]}}, {$merge: {into: "facetmerged"}}]).toArray(),
  lookupOut: () => c.aggregate([{$lookup: {from: "scratch", pipeline: [{$out: "lookedup"}], as: "x"}}]).toArray(),
  runCommandString: () => other.runCommand("dropDatabase"),
  runCommandCreateIndexes: () => db.runCommand({createIndexes: "people", indexes: [{key: {age: 1}, name: "age_1"}]}),
  runCommandDropIndexes: () => db.runCommand({dropIndexes: "people", index: "by_name"}),
  runCommandCollMod: () => db.runCommand({collMod: "people", validator: {name: {$exists: true}}}),
  runCommandAggregateMerge: () => db.runCommand({aggregate: "people", pipeline: [{$merge: {into: "cmdmerged"}}], cursor: {}}),
  siblingRunCommand: () => other.runCommand({insert: "x", documents: [{a: 1}]}),
  siblingRename: () => other.getCollection("x").renameCollection("y"),
  getMongoGetDBDrop: () => viaMongo.dropDatabase(),
  getMongoGetDBRunCommand: () => viaMongo.runCommand({create: "w"}),
  ensureIndex: () => c.ensureIndex({legacy: 1}),
  ensureIndexUnique: () => c.ensureIndex({name: 1}, {unique: true}),
  siblingEnsureIndex: () => other.getCollection("x").ensureIndex({a: 1}),
  getMongoGetDBEnsureIndex: () => viaMongo.getCollection("y").ensureIndex({a: 1}, {unique: true}),
  // Below the shell's names: mongosh's service provider itself (each its own collection: in --run these race).
  providerInsertOne: () => db.getMongo()._serviceProvider.insertOne(db.getName(), "provided1", {a: 1}),
  providerCreateIndexes: () => db.getMongo()._serviceProvider.createIndexes(db.getName(), "provided2", [{key: {a: 1}}]),
  providerRunCommand: () => db.getMongo()._serviceProvider.runCommandWithCheck(db.getName(), {insert: "provided3", documents: [{a: 1}]}),
  providerUpdateMany: () => db.getMongo()._serviceProvider.updateMany(db.getName(), "people", {}, {$set: {p: 1}}),
  newConnection: () => connect(db.getMongo()._uri || "mongodb://127.0.0.1:1/x"),
  // (its own server, as newConnection's: in --run a refused port's client, closed by the driver's fail-fast while
  // still connecting, could reject at mongosh's exit: MongoClientClosedError crashed mongosh, exit 1; flake24a 4)
  newMongo: () => new Mongo(db.getMongo()._uri || "mongodb://127.0.0.1:1"),
};
let wrote = 0, refused = 0, failed = [];
for (const [name, route] of Object.entries(routes)) {
  try {
    route();
    wrote += 1;
    print(`WROTE ${name}`);
  } catch (e) {
    if (/not allowed in a dry run/.test(String(e.message))) refused += 1;
    else failed.push(`${name}: ${e.message}`);
  }
}
for (const f of failed) print(`FAILED ${f}`);
// The reads the README promises: they work in a dry run.
const reads = [
  c.find({}).toArray().length, (c.findOne({_id: 1}) || {}).name, c.countDocuments({}), c.estimatedDocumentCount(),
  c.distinct("name").length, c.aggregate([{$match: {_id: {$gte: 1}}}, {$count: "n"}]).toArray().concat([{}])[0].n,
  c.getIndexes().length, db.getCollectionNames().includes("people"), db.runCommand({ping: 1}).ok,
  db.runCommand({listCollections: 1}).ok, db.runCommand({count: "people"}).n, db.stats().ok,
  other.getCollectionNames().length >= 0,
];
print(`READS ${JSON.stringify(reads)}`);
patchComment(`${DRY_RUN ? "dry" : "run"}: wrote ${wrote}, refused ${refused}, failed ${failed.length}`);
"""

ROUTES = WRITES.count(": () =>")
READS = '[3,"ada",3,3,3,3,2,true,1,1,3,1,true]'


def seed(server) -> None:
    server.db.people.insert_many([{"_id": 1, "name": "ada"}, {"_id": 2, "name": "bob"}, {"_id": 3, "name": "cy"}])
    server.db.people.create_index("name", name="by_name")
    server.db.scratch.insert_one({"_id": 1})


def test_a_dry_run_js_patch_trying_every_write_route_leaves_the_server_byte_identical(cli, server, tmp_path):
    seed(server)
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_every_write.js").write_text(WRITES)
    before = dump(server.db.client)
    result = cli("mongo", "apply", "--mongo-dir", folder, env=server.env)
    assert result.exit_code == 0, result.output
    assert "WROTE" not in result.stdout and "FAILED" not in result.stdout, result.stdout
    assert f"READS {READS}" in result.stdout
    assert f"dry: wrote 0, refused {ROUTES}, failed 0" in result.stdout
    assert dump(server.db.client) == before  # not one byte changed, in any database
    assert server.db.applied_patches.count_documents({}) == 0

    real = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=server.env)
    assert real.exit_code == 0, real.output
    assert "WROTE insertOne" in real.stdout and "WROTE siblingInsert" in real.stdout and "WROTE getMongoGetDBInsert" in real.stdout
    assert dump(server.db.client) != before
    (record,) = server.db.applied_patches.find()
    assert record["status"] == "applied" and record["comment"].startswith("run: wrote ")
    with contextlib.suppress(OperationFailure):  # the run's createUser, where the server has users
        server.db.command("dropUser", "hcm_dry")
    client = server.db.client
    for suffix in ("_other", "_third"):
        client.drop_database(server.name + suffix)


def test_mongosh_crashing_after_the_patch_wrote_fails_it_and_keeps_its_writes(cli, server, tmp_path):
    """mongosh ending non-zero after the patch's last line (an error thrown once the script is done, as the driver's
    late MongoClientClosedError was): the patch is failed, not applied, its writes kept and said so; never run
    again by itself."""
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_late_crash.js").write_text(
        'db.people.insertOne({_id: 7, name: "kept"});\npatchComment("wrote one");\n'
        'setTimeout(() => { throw Object.assign(new Error("Operation interrupted because client was closed"), '
        '{name: "MongoClientClosedError"}); }, 0);\n')
    result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=server.env)
    assert result.exit_code != 0, result.output
    assert "0001_late_crash failed: mongosh exit 1: Error [MongoClientClosedError]: Operation interrupted because " \
           "client was closed; fix the patch, then see `runner.py mongo status`" in result.stderr, result.output
    assert server.db.people.count_documents({"_id": 7}) == 1
    (record,) = server.db.applied_patches.find()
    assert record["status"] == "failed"
    status = cli("mongo", "status", "--mongo-dir", folder, env=server.env)
    assert "0001_late_crash failed" in status.output and "its writes so far are kept" in status.output, status.output
    again = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=server.env)
    assert again.exit_code != 0 and server.db.people.count_documents({}) == 1, again.output


# A careless patch in the old shell's words: ensureIndex (mongosh's legacy createIndex), a unique one, on `db` and
# on another database; a shell method the shim's names do not know (_createIndexes), refused by the service provider
# under it; a deliberate one through the Node driver. The dry run fails, one clear line; nothing is created.
CARELESS = {
    "ensureIndex": ('db.people.ensureIndex({email: 1}, {unique: true});\n'
                    'db.getSiblingDB(db.getName() + "_ens").things.ensureIndex({a: 1});\n',
                    "collection.ensureIndex is not allowed in a dry run"),
    "siblingEnsureIndex": ('db.getSiblingDB(db.getName() + "_ens").things.ensureIndex({a: 1});\n',
                           "collection.ensureIndex is not allowed in a dry run"),
    "privateCreateIndexes": ("db.people._createIndexes([{legacy: 1}]);\n",
                             "mongosh's createIndexes (a write) is not allowed in a dry run"),
    # deliberate: the Node driver under the provider; its connection lets only reads through
    "driverInsert": ('db.getMongo()._serviceProvider.mongoClient.db(db.getName()).collection("raw").insertOne({a: 1});\n',
                     "the driver's command(\"insert\") is not allowed in a dry run"),
    "driverCreateIndex": ('db.getMongo()._serviceProvider.db(db.getName()).collection("people").createIndex({p: 1});\n',
                          "the driver's command(\"createIndexes\") is not allowed in a dry run"),
    # the seals cannot be taken off: the provider's prototype is frozen, the driver's writeCommand fixed
    "providerUndone": ("const sp = Object.getPrototypeOf(db.getMongo()._serviceProvider);\n"
                       "try { Object.defineProperty(sp, 'createIndexes', {value: () => ['x']}); } catch (e) {}\n"
                       "try { delete sp.createIndexes; Object.setPrototypeOf(sp, {}); } catch (e) {}\n"
                       "db.people._createIndexes([{undone: 1}]);\n",
                       "mongosh's createIndexes (a write) is not allowed in a dry run"),
    "driverUndone": ("const server = db.getMongo()._serviceProvider.mongoClient.topology.s.servers.values().next().value;\n"
                     "let p = Object.getPrototypeOf(server.monitor.connection);\n"
                     "while (!Object.getOwnPropertyNames(p).includes('writeCommand')) p = Object.getPrototypeOf(p);\n"
                     "try { Object.defineProperty(p, 'writeCommand', {value: async () => {}}); } catch (e) {}\n"
                     "try { delete p.writeCommand; } catch (e) {}\n"
                     "db.getMongo()._serviceProvider.mongoClient.db(db.getName()).collection('raw').insertOne({a: 1});\n",
                     "the driver's command(\"insert\") is not allowed in a dry run"),
    # deliberate: an object whose toBSON() the serializer calls, so the bytes sent are another command (attack 20k)
    "toBSONCommand": ('db.runCommand({ping: 1, toBSON() { return {insert: "people", documents: [{x: 1}], '
                      '$db: db.getName()}; }});\n', "toBSON() is not allowed in a dry run"),
    "toBSONStage": ('db.people.aggregate([{$match: {}, toBSON() { return {$out: "copied"}; }}]).toArray();\n',
                    "toBSON() is not allowed in a dry run"),
}


@pytest.mark.parametrize("case", CARELESS)
def test_a_careless_ensure_index_fails_the_dry_run_and_writes_nothing(cli, server, tmp_path, case):
    body, said = CARELESS[case]
    seed(server)
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_ensure.js").write_text(body + 'patchComment("indexes: " + db.people.getIndexes().length);\n')
    before = dump(server.db.client)
    result = cli("mongo", "apply", "--mongo-dir", folder, env=server.env)
    assert result.exit_code != 0 and said in result.output, result.output
    assert "indexes: " not in result.output
    assert dump(server.db.client) == before
    assert server.name + "_ens" not in server.db.client.list_database_names()


# mongosh's idiom for a helper beside the script: `load(__dirname + "/helper.js")`. The patch runs as a private copy
# of its checked bytes in its own HOME (issue 20): the helpers come along, or the idiom fails, the run left FAILED.
JSDIR = """load(__dirname + "/helper_lib.js");
patchComment("helper says " + HELPER_SAYS + (DRY_RUN ? " (dry)" : ""));
"""


def test_a_js_patch_loads_a_helper_beside_it_through_dirname(cli, server, tmp_path):
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_jsdir.js").write_text(JSDIR)
    (folder / "helper_lib.js").write_text('var HELPER_SAYS = "hello from beside the patch";\n')
    dry = cli("mongo", "apply", "--mongo-dir", folder, env=server.env)
    assert dry.exit_code == 0, dry.output
    assert "helper says hello from beside the patch (dry)" in dry.output
    run = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=server.env)
    assert run.exit_code == 0, run.output
    (record,) = server.db.applied_patches.find()
    assert record["status"] == "applied" and record["comment"] == "helper says hello from beside the patch"
