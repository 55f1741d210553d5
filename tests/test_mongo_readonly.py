"""The dry-run view: reads pass, every kind of write is refused before it reaches the server."""

import pytest

from migrator.mongo.readonly import DryRunWriteError, ReadOnlyDatabase

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
