"""The read-only view a Python patch gets in a dry run.

Only reads pass: a patch that forgets to check `dry_run` still cannot write. Anything not known
to be a read is refused, so a pymongo method added tomorrow is refused too. No attribute hands
out a real object: cursors (`find().collection`, `aggregate(...)`), `.database` and `.client`
are views too, and the client view refuses pymongo's write path (`_retryable_write`), which every
write, even one called as `Collection.insert_one(view, ...)`, goes through. The views still pass
`isinstance(db, Database)`, so GridFS(db) reads work.
"""

from __future__ import annotations

COLLECTION_READS = frozenset({
    "find_one", "count_documents", "estimated_document_count", "distinct",
    "list_indexes", "index_information", "list_search_indexes", "options", "watch",
    "name", "full_name", "codec_options", "read_preference", "write_concern", "read_concern",
})
DATABASE_READS = frozenset({
    "name", "list_collection_names", "list_collections", "dereference", "watch",
    "codec_options", "read_preference", "write_concern", "read_concern",
})
CURSOR_METHODS = frozenset({"find", "find_raw_batches"})  # their cursors are wrapped
CLIENT_READS = frozenset({"options", "codec_options", "read_preference", "read_concern", "write_concern", "address",
                          "topology_description", "primary", "is_primary", "nodes"})
CLIENT_WRITE_PATHS = frozenset({"_retryable_write", "_retry_with_session"})
READ_COMMANDS = frozenset(c.lower() for c in (
    "ping", "hello", "isMaster", "buildInfo", "serverStatus", "hostInfo", "connectionStatus", "dbStats",
    "collStats", "count", "distinct", "find", "listCollections", "listIndexes", "explain",
))
WRITE_STAGES = ("$out", "$merge")


class DryRunWriteError(RuntimeError):
    """A patch tried to write during a dry run."""


def _refuse(what: str) -> DryRunWriteError:
    return DryRunWriteError(f"{what} is not allowed in a dry run (it writes, or may); check dry_run before writing")


def _check_pipeline(pipeline, where: str) -> None:
    for stage in pipeline or ():
        if any(key in stage for key in WRITE_STAGES):
            raise _refuse(f"{where}.aggregate with $out/$merge")


class _View:
    """Passes isinstance checks for the object it wraps (type() still tells the truth)."""

    @property
    def __class__(self):
        return type(object.__getattribute__(self, "_target"))

    def __setattr__(self, name, value):
        raise _refuse(f"setting {name}")


class ReadOnlyCursor(_View):
    """A cursor whose `.collection` is the view; chained calls stay wrapped."""

    def __init__(self, cursor, collection: "ReadOnlyCollection"):
        object.__setattr__(self, "_target", cursor)
        object.__setattr__(self, "_view", collection)

    def __getattr__(self, name: str):
        if name == "collection":
            return self._view
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            result = value(*args, **kwargs)
            if result is self._target:
                return self
            return ReadOnlyCursor(result, self._view) if hasattr(result, "collection") and hasattr(result, "next") else result
        return call

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._target)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._target.close()


class ReadOnlyCollection(_View):
    def __init__(self, collection):
        object.__setattr__(self, "_target", collection)
        object.__setattr__(self, "_collection", collection)

    def __getattr__(self, name: str):
        collection = self._collection
        if name in COLLECTION_READS:
            return getattr(collection, name)
        if name in CURSOR_METHODS:
            return lambda *a, **k: ReadOnlyCursor(getattr(collection, name)(*a, **k), self)
        if name in ("aggregate", "aggregate_raw_batches"):
            return lambda pipeline, *a, **k: self._aggregate(name, pipeline, *a, **k)
        if name == "database":
            return ReadOnlyDatabase(collection.database)
        if name == "with_options":
            return lambda *a, **k: ReadOnlyCollection(collection.with_options(*a, **k))
        if name in ("_read_preference_for", "_timeout"):  # what pymongo's Cursor reads from its collection
            return getattr(collection, name)
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _collection_methods():
            raise _refuse(f"{collection.full_name}.{name}")
        return ReadOnlyCollection(collection[name])  # db.fs.files, as pymongo allows

    def __getitem__(self, name: str) -> "ReadOnlyCollection":
        return ReadOnlyCollection(self._collection[name])

    def __setattr__(self, name, value):
        raise _refuse(f"setting {name}")

    def _aggregate(self, method: str, pipeline, *args, **kwargs):
        _check_pipeline(pipeline, self._collection.full_name)
        return ReadOnlyCursor(getattr(self._collection, method)(pipeline, *args, **kwargs), self)

    def __repr__(self) -> str:
        return f"ReadOnlyCollection({self._collection.full_name!r})"


class ReadOnlyClient(_View):
    """What `db.client` is in a dry run: enough for pymongo's read path, and no way to write."""

    def __init__(self, client):
        object.__setattr__(self, "_target", client)

    def __getattr__(self, name: str):
        if name in CLIENT_WRITE_PATHS or not (name in CLIENT_READS or name.startswith("_")):
            raise _refuse(f"client.{name}")
        if name == "get_database":
            return lambda *a, **k: ReadOnlyDatabase(self._target.get_database(*a, **k))
        return getattr(self._target, name)


class ReadOnlyDatabase(_View):
    def __init__(self, database):
        object.__setattr__(self, "_target", database)
        object.__setattr__(self, "_database", database)

    def __getattr__(self, name: str):
        database = self._database
        if name in DATABASE_READS:
            return getattr(database, name)
        if name == "get_collection":
            return lambda *a, **k: ReadOnlyCollection(database.get_collection(*a, **k))
        if name == "with_options":
            return lambda *a, **k: ReadOnlyDatabase(database.with_options(*a, **k))
        if name == "command":
            return self._command
        if name == "aggregate":
            return self._aggregate
        if name == "client":  # pymongo's own read path needs it; the client view refuses every write
            return ReadOnlyClient(database.client) if _is_pymongo(database) else _refuse_now("db.client")
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _database_methods():
            raise _refuse(f"db.{name}")  # create_collection, drop_collection, cursor_command, ...
        return ReadOnlyCollection(database[name])  # db.enrollments, as pymongo allows

    def __getitem__(self, name: str) -> ReadOnlyCollection:
        return ReadOnlyCollection(self._database[name])

    def __setattr__(self, name, value):
        raise _refuse(f"setting {name}")

    def _command(self, command, *args, **kwargs):
        name = command if isinstance(command, str) else next(iter(command))
        if name.lower() == "aggregate":  # {"aggregate": ..., "pipeline": ...} or ("aggregate", coll, pipeline=...)
            pipeline = kwargs.get("pipeline") if isinstance(command, str) else command.get("pipeline")
            _check_pipeline(pipeline, f"db.command({name!r})")
        elif name.lower() not in READ_COMMANDS:
            raise _refuse(f"db.command({name!r})")
        return self._database.command(command, *args, **kwargs)

    def _aggregate(self, pipeline, *args, **kwargs):
        _check_pipeline(pipeline, f"db {self._database.name}")
        return ReadOnlyCursor(self._database.aggregate(pipeline, *args, **kwargs), None)

    def __repr__(self) -> str:
        return f"ReadOnlyDatabase({self._database.name!r})"


def _refuse_now(what: str):
    raise _refuse(what)


def _is_pymongo(database) -> bool:
    return type(database).__module__.startswith("pymongo")  # not mongomock's: its client has no write path to guard


def _collection_methods() -> frozenset[str]:
    """Public attributes of pymongo's Collection: with a name outside this set, coll.NAME is a sub-collection."""
    from pymongo.collection import Collection

    return frozenset(n for n in dir(Collection) if not n.startswith("_"))


def _database_methods() -> frozenset[str]:
    """Public attributes of pymongo's Database: with a name outside this set, db.NAME is a collection."""
    from pymongo.database import Database

    return frozenset(n for n in dir(Database) if not n.startswith("_"))
