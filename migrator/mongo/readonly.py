"""The read-only view a Python patch gets in a dry run.

Only reads pass: a patch that forgets to check `dry_run` still cannot write. Anything not known
to be a read is refused, so a pymongo method added tomorrow is refused too. No attribute hands
out a real object: cursors (`find().collection`, `aggregate(...)`), `.database` and `.client`
are views too, the real object is kept out of the instance's __dict__, and every `_` attribute is
refused on every view (the client view included, so pymongo's write path, which even
`Collection.insert_one(view, ...)` goes through, is out of reach). The views still pass
`isinstance(db, Database)`, so GridFS(db).get/exists/list/get_last_version read; GridFS and
GridFSBucket find/find_one need pymongo's private cursor API, so while `gridfs_reads()` is on (a
Python dry run) their cursor is built on the real collection and handed out as a view.

The threat model is a careless patch, not a malicious one: in-process Python can always reach a
real object by deliberate introspection (gc.get_objects(), frame and closure internals).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

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
    """$out/$merge anywhere: a stage, or inside $facet, $lookup or $unionWith sub-pipelines."""
    if _writes(pipeline):
        raise _refuse(f"{where}.aggregate with $out/$merge")


def _writes(value) -> bool:
    if isinstance(value, dict):
        return any(key in WRITE_STAGES or _writes(v) for key, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_writes(v) for v in value)
    return False


# Special names a view answers itself; every other `_` name is refused (no private route to a real object).
VIEW_DUNDERS = frozenset({"__class__", "__doc__", "__repr__", "__str__", "__eq__", "__ne__", "__hash__", "__iter__",
                          "__next__", "__enter__", "__exit__", "__getitem__", "__bool__", "__len__", "__dir__",
                          "__format__", "__getattr__", "__setattr__", "__init__", "__module__"})


class _View:
    """Passes isinstance checks for the object it wraps (type() still tells the truth).

    The real object sits in a slot (no instance __dict__, nothing for vars()), and every attribute
    starting with `_` is refused, so a patch cannot reach it by a private name, copy or pickle state.
    """

    __slots__ = ("_real",)

    def __init__(self, real):
        object.__setattr__(self, "_real", real)

    def __getattribute__(self, name: str):
        if name.startswith("_") and name not in VIEW_DUNDERS:
            raise AttributeError(f"{name}: private attributes are not available in a dry run")
        return object.__getattribute__(self, name)

    @property
    def __class__(self):
        return type(_real(self))

    def __setattr__(self, name, value):
        raise _refuse(f"setting {name}")

    def __reduce_ex__(self, protocol):
        raise TypeError("a dry-run view cannot be copied or pickled")

    def __copy__(self):
        return self  # a view is read-only: a copy may as well be itself

    def __deepcopy__(self, memo):
        return self


def _real(view):
    return object.__getattribute__(view, "_real")


class ReadOnlyCursor(_View):
    """A cursor whose `.collection` is the view; chained calls stay wrapped."""

    __slots__ = ("_collection_view",)

    def __init__(self, cursor, collection: "ReadOnlyCollection | None"):
        super().__init__(cursor)
        object.__setattr__(self, "_collection_view", collection)

    def __getattr__(self, name: str):
        cursor, view = _real(self), object.__getattribute__(self, "_collection_view")
        if name == "collection":
            return view
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(cursor, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            result = value(*args, **kwargs)
            if result is cursor:
                return self
            return ReadOnlyCursor(result, view) if hasattr(result, "collection") and hasattr(result, "next") else result
        return call

    def __iter__(self):
        return self

    def __next__(self):
        return next(_real(self))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _real(self).close()


class ReadOnlyCollection(_View):
    __slots__ = ()

    def __getattr__(self, name: str):
        collection = _real(self)
        if name in COLLECTION_READS:
            return getattr(collection, name)
        if name in CURSOR_METHODS:
            return lambda *a, **k: ReadOnlyCursor(getattr(collection, name)(*a, **k), self)
        if name in ("aggregate", "aggregate_raw_batches"):
            return lambda pipeline, *a, **k: _aggregate(self, name, pipeline, *a, **k)
        if name == "database":
            return ReadOnlyDatabase(collection.database)
        if name == "with_options":
            return lambda *a, **k: ReadOnlyCollection(collection.with_options(*a, **k))
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _collection_methods():
            raise _refuse(f"{collection.full_name}.{name}")
        return ReadOnlyCollection(collection[name])  # db.fs.files, as pymongo allows

    def __getitem__(self, name: str) -> "ReadOnlyCollection":
        return ReadOnlyCollection(_real(self)[name])

    def __repr__(self) -> str:
        return f"ReadOnlyCollection({_real(self).full_name!r})"


def _aggregate(view: ReadOnlyCollection, method: str, pipeline, *args, **kwargs):
    collection = _real(view)
    _check_pipeline(pipeline, collection.full_name)
    return ReadOnlyCursor(getattr(collection, method)(pipeline, *args, **kwargs), view)


class ReadOnlyClient(_View):
    """What `db.client` is in a dry run: a few read-only properties, and no way to write."""

    __slots__ = ()

    def __getattr__(self, name: str):
        if name not in CLIENT_READS:
            raise _refuse(f"client.{name}") if not name.startswith("_") else AttributeError(name)
        return getattr(_real(self), name)


class ReadOnlyDatabase(_View):
    __slots__ = ()

    def __getattr__(self, name: str):
        database = _real(self)
        if name in DATABASE_READS:
            return getattr(database, name)
        if name == "get_collection":
            return lambda *a, **k: ReadOnlyCollection(database.get_collection(*a, **k))
        if name == "with_options":
            return lambda *a, **k: ReadOnlyDatabase(database.with_options(*a, **k))
        if name == "command":
            return lambda command, *a, **k: _command(database, command, *a, **k)
        if name == "aggregate":
            return lambda pipeline, *a, **k: _database_aggregate(database, pipeline, *a, **k)
        if name == "client":
            return ReadOnlyClient(database.client) if _is_pymongo(database) else _refuse_now("db.client")
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _database_methods():
            raise _refuse(f"db.{name}")  # create_collection, drop_collection, cursor_command, ...
        return ReadOnlyCollection(database[name])  # db.enrollments, as pymongo allows

    def __getitem__(self, name: str) -> ReadOnlyCollection:
        return ReadOnlyCollection(_real(self)[name])

    def __repr__(self) -> str:
        return f"ReadOnlyDatabase({_real(self).name!r})"


def _command(database, command, *args, **kwargs):
    name = command if isinstance(command, str) else next(iter(command))
    if name.lower() == "aggregate":  # {"aggregate": ..., "pipeline": ...} or ("aggregate", coll, pipeline=...)
        pipeline = kwargs.get("pipeline") if isinstance(command, str) else command.get("pipeline")
        _check_pipeline(pipeline, f"db.command({name!r})")
    elif name.lower() not in READ_COMMANDS:
        raise _refuse(f"db.command({name!r})")
    return database.command(command, *args, **kwargs)


def _database_aggregate(database, pipeline, *args, **kwargs):
    _check_pipeline(pipeline, f"db {database.name}")
    return ReadOnlyCursor(database.aggregate(pipeline, *args, **kwargs), None)


@contextlib.contextmanager
def gridfs_reads() -> Iterator[None]:
    """GridFS(view).find()/find_one() and GridFSBucket(view).find() read: the GridOut cursor pymongo builds on a
    view (it needs the private client API a view refuses) is built on the real collection and wrapped as a
    view (its `.collection` is one, and so is every cursor chained from it). Writes still go through the view."""
    from gridfs.synchronous import grid_file

    real = grid_file.GridOutCursor  # mongomock's gridfs integration (tests) replaces this name too

    def cursor(collection, *args, **kwargs):
        if type(collection) is not ReadOnlyCollection:
            return real(collection, *args, **kwargs)
        return ReadOnlyCursor(real(_real(collection), *args, **kwargs), collection["files"])

    grid_file.GridOutCursor = cursor
    try:
        yield
    finally:
        grid_file.GridOutCursor = real


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
