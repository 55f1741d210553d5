"""The dry-run view: reads pass, every kind of write is refused before it reaches the server."""

import pytest

from conftest import one_error_line

from migrator.mongo.readonly import DryRunWriteError, ReadOnlyCollection, ReadOnlyDatabase, gridfs_reads

WRITES = {
    "insert_one": lambda c: c.insert_one({"x": 1}),
    "insert_many": lambda c: c.insert_many([{"x": 1}]),
    "update_one": lambda c: c.update_one({}, {"$set": {"x": 2}}),
    "update_many": lambda c: c.update_many({}, {"$set": {"x": 2}}),
    "replace_one": lambda c: c.replace_one({}, {"x": 3}),
    "delete_one": lambda c: c.delete_one({}),
    "delete_many": lambda c: c.delete_many({}),
    "bulk_write": lambda c: c.bulk_write([]),
    "find_one_and_update": lambda c: c.find_one_and_update({}, {"$set": {"x": 2}}),
    "find_one_and_replace": lambda c: c.find_one_and_replace({}, {"x": 2}),
    "find_one_and_delete": lambda c: c.find_one_and_delete({}),
    "drop": lambda c: c.drop(),
    "create_index": lambda c: c.create_index("x"),
    "create_indexes": lambda c: c.create_indexes([]),
    "drop_index": lambda c: c.drop_index("x_1"),
    "drop_indexes": lambda c: c.drop_indexes(),
    "rename": lambda c: c.rename("other"),
    "aggregate $out": lambda c: c.aggregate([{"$match": {}}, {"$out": "copy"}]),
    "aggregate $merge": lambda c: c.aggregate([{"$merge": {"into": "copy"}}]),
    "sub-collection write": lambda c: c["sub"].insert_one({}),
    "with_options write": lambda c: c.with_options().insert_one({}),
    "database from collection": lambda c: c.database.drop_collection("things"),
}
DB_WRITES = {
    "create_collection": lambda db: db.create_collection("new"),
    "drop_collection": lambda db: db.drop_collection("things"),
    "command drop": lambda db: db.command("drop", "things"),
    "command dict": lambda db: db.command({"insert": "things", "documents": [{}]}),
    "client": lambda db: db.client.drop_database(db.name),
    "get_collection write": lambda db: db.get_collection("things").insert_one({}),
    "attribute collection write": lambda db: db.things.delete_many({}),
    "assignment": lambda db: setattr(db, "things", None),
}


@pytest.fixture
def view(mongo):
    mongo.db.things.insert_many([{"_id": 1, "x": 1, "k": "a"}, {"_id": 2, "x": 2, "k": "b"}])
    return ReadOnlyDatabase(mongo.db)


@pytest.mark.parametrize("write", list(WRITES))
def test_collection_writes_are_refused(view, mongo, write):
    before = mongo.snapshot()
    with pytest.raises(DryRunWriteError, match="not allowed in a dry run"):
        WRITES[write](view.things)
    assert mongo.snapshot() == before


@pytest.mark.parametrize("write", list(DB_WRITES))
def test_database_writes_are_refused(view, mongo, write):
    before = mongo.snapshot()
    with pytest.raises(DryRunWriteError):
        DB_WRITES[write](view)
    assert mongo.snapshot() == before


def test_reads_pass_through(view):
    assert view.things.count_documents({}) == 2
    assert view["things"].find_one({"_id": 2})["x"] == 2
    assert [d["_id"] for d in view.get_collection("things").find().sort("_id", -1)] == [2, 1]
    assert sorted(view.things.distinct("k")) == ["a", "b"]
    assert list(view.things.aggregate([{"$group": {"_id": None, "n": {"$sum": "$x"}}}]))[0]["n"] == 3
    assert "things" in view.list_collection_names()
    assert view.command("ping")["ok"] == 1
    assert view.name == view.things.database.name


def test_the_error_names_the_collection_and_method(view):
    with pytest.raises(DryRunWriteError) as err:
        view.things.update_many({}, {"$set": {"x": 0}})
    assert str(err.value).startswith(f"{view.name}.things.update_many is not allowed in a dry run")


# --- no real object by any attribute; legitimate reads work --------------------------------------

LEAKS = {
    "find().collection": lambda v: v.things.find().collection.insert_one({}),
    "find().sort().collection": lambda v: v.things.find().sort("_id").limit(1).collection.delete_many({}),
    "aggregate cursor": lambda v: v.things.aggregate([]).collection.drop(),
    "collection.database.client": lambda v: v.things.database.client.drop_database(v.name),
    "client write path": lambda v: v.client._retryable_write,
    "raw batches + $out": lambda v: v.things.aggregate_raw_batches([{"$out": "copy"}]),
    "command string aggregate $merge": lambda v: v.command("aggregate", "things", pipeline=[{"$merge": "c"}], cursor={}),
    "$out inside $facet": lambda v: v.things.aggregate([{"$facet": {"a": [{"$out": "copy"}]}}]),
    "$merge inside $unionWith": lambda v: v.things.aggregate([{"$unionWith": {"coll": "x", "pipeline": [{"$merge": "c"}]}}]),
    "private insert": lambda v: v.things._insert_one,
}


@pytest.mark.parametrize("leak", list(LEAKS))
def test_no_attribute_hands_out_a_real_object(view, mongo, leak):
    before = mongo.snapshot()
    with pytest.raises((DryRunWriteError, AttributeError)):
        LEAKS[leak](view)
    assert mongo.snapshot() == before


def test_legitimate_reads_work_in_a_dry_run(view, mongo):
    mongo.db.fs.files.insert_one({"_id": "f", "filename": "report.csv"})
    assert [d["filename"] for d in view.fs.files.find()] == ["report.csv"]
    assert view.things.find().collection.name == "things"  # the view, still readable
    assert view.things.index_information()["_id_"]
    assert [d["n"] for d in view.things.aggregate([{"$group": {"_id": None, "n": {"$sum": 1}}}])] == [2]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the refused GridFS cursor's __del__
def test_pymongo_views_pass_isinstance_and_gridfs_reads_without_a_write_path():
    """A real pymongo Database (no server needed until a query runs): isinstance, GridFS(db), refused writes."""
    import gridfs
    import pymongo
    from pymongo.database import Database

    client = pymongo.MongoClient("mongodb://127.0.0.1:9", connect=False, serverSelectionTimeoutMS=200)
    view = ReadOnlyDatabase(client["hcm"])
    assert isinstance(view, Database) and type(view) is ReadOnlyDatabase
    fs = gridfs.GridFS(view)  # pymongo's own type check passes
    bucket = gridfs.GridFSBucket(view)
    with pytest.raises(AttributeError):  # outside a dry run's gridfs_reads(): the cursor needs the private client API
        next(iter(fs.find({"filename": "x"})))
    from pymongo.collection import Collection

    # Reads get past the view and reach pymongo's read path (here: no server, so a timeout, not a refusal).
    with gridfs_reads():
        assert type(fs.find().sort("uploadDate").collection) is ReadOnlyCollection  # no real collection handed out
        for read in (lambda: view.command("aggregate", "things", pipeline=[{"$match": {}}], cursor={}),
                     lambda: fs.get("x"), lambda: fs.exists("x"), lambda: view.things.find().sort("_id").next(),
                     lambda: list(view.things.aggregate_raw_batches([])), lambda: next(iter(fs.find({"filename": "x"}))),
                     lambda: fs.find_one(), lambda: fs.list(), lambda: fs.get_last_version("x"),
                     lambda: next(iter(bucket.find())), lambda: bucket.open_download_stream_by_name("x")):
            with pytest.raises(pymongo.errors.ServerSelectionTimeoutError):
                read()
        for write in (lambda: fs.delete("id"), lambda: view.fs.files.create_index("filename"),
                      lambda: Collection.insert_one(view.things, {"x": 1}),  # unbound: still through the client view
                      lambda: view.client.drop_database("hcm"), lambda: bucket.delete("id"),
                      lambda: bucket.rename("id", "y"), lambda: fs.find().collection.insert_one({})):
            # (put/new_file/upload_* read the files collection first: refused on mongomock, below)
            with pytest.raises((DryRunWriteError, AttributeError)):  # refused before any network (not a timeout)
                write()


@pytest.fixture
def gridfs_mongo(mongo):
    """GridFS on the test database: mongomock needs its gridfs integration (a real server does not)."""
    import os
    from unittest import mock

    if mongo.real:
        yield mongo
        return
    from mongomock.gridfs import enable_gridfs_integration

    enable_gridfs_integration()
    yield mongo
    mock.patch.stopall()


def test_gridfs_reads_work_in_a_dry_run_and_its_writes_are_refused(gridfs_mongo):
    import time

    import gridfs

    mongo = gridfs_mongo
    real = gridfs.GridFS(mongo.db)
    a = real.put(b"alpha", filename="a.csv")
    real.put(b"beta v1", filename="b.csv")
    time.sleep(0.01)  # uploadDate has millisecond resolution: v2 must be the later one
    real.put(b"beta v2", filename="b.csv")
    before = mongo.snapshot()
    view = ReadOnlyDatabase(mongo.db)
    with gridfs_reads():
        fs = gridfs.GridFS(view)  # (GridFSBucket needs db.client, which a mongomock view refuses: tested above)
        assert sorted(f.filename for f in fs.find({})) == ["a.csv", "b.csv", "b.csv"]  # (mongomock needs a filter)
        assert fs.find_one({"filename": "a.csv"}).read() == b"alpha"
        newest = fs.find({"filename": "b.csv"}).sort("_id", -1).limit(1)
        assert type(newest.collection) is ReadOnlyCollection and [f.read() for f in newest] == [b"beta v2"]
        assert fs.get(a).read() == b"alpha" and fs.exists(a) and not fs.exists(filename="c.csv")
        assert sorted(fs.list()) == ["a.csv", "b.csv"] and fs.get_last_version("b.csv").read() == b"beta v2"
        for write in (lambda: fs.put(b"new", filename="c.csv"), lambda: fs.delete(a),
                      lambda: fs.new_file(filename="c.csv").close(), lambda: fs.find({}).collection.insert_one({})):
            with pytest.raises((DryRunWriteError, AttributeError)):
                write()
    assert mongo.snapshot() == before


def test_a_python_dry_run_reads_gridfs(cli, gridfs_mongo, tmp_path):
    import gridfs

    gridfs.GridFS(gridfs_mongo.db).put(b"alpha", filename="a.csv")
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_files.py").write_text(
        "import gridfs\n"
        "def run(db, dry_run):\n"
        "    names = [f.filename for f in gridfs.GridFS(db).find({})]\n"
        "    return f'would rename {names}'\n")
    before = gridfs_mongo.snapshot()
    result = cli("mongo", "apply", "--mongo-dir", folder, env=gridfs_mongo.env)
    assert result.exit_code == 0, result.output
    assert "would rename ['a.csv']" in result.stdout
    assert gridfs_mongo.snapshot() == before


def test_a_python_dry_run_sees_no_secret_and_cannot_build_a_client(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    folder.mkdir()
    (folder / "0001_sneaky.py").write_text(
        "import os, sys\n"
        "def run(db, dry_run):\n"
        "    print('ENV', sorted(k for k in os.environ if 'MONGO' in k or 'PASSWORD' in k or 'AWS' in k))\n"
        "    print('oops: mongodb://u:Hidden-Pw-77@h/', file=sys.stderr)\n"
        "    import pymongo\n"
        "    pymongo.MongoClient('mongodb://elsewhere').hcm.things.insert_one({})\n")
    env = {**mongo.env, "DB_PASSWORD": "Hidden-Pw-77", "AWS_SECRET_ACCESS_KEY": "aws-key-123"}
    result = cli("mongo", "apply", "--mongo-dir", folder, env=env)
    assert "ENV []" in result.stdout
    assert "Hidden-Pw-77" not in result.stderr and "mongodb://u:***@h/" in result.stderr
    assert "a new MongoClient is not allowed in a dry run" in one_error_line(result)
