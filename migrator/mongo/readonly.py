"""The read-only view a Python patch gets in a dry run.

Only reads pass: a patch that forgets to check `dry_run` still cannot write. Anything not known
to be a read is refused, so a pymongo method added tomorrow is refused too.
"""

from __future__ import annotations

COLLECTION_READS = frozenset({
    "find", "find_one", "find_raw_batches", "count_documents", "estimated_document_count", "distinct",
    "list_indexes", "index_information", "list_search_indexes", "options", "watch",
    "name", "full_name", "codec_options", "read_preference", "write_concern", "read_concern",
})
DATABASE_READS = frozenset({
    "name", "list_collection_names", "list_collections", "dereference", "watch",
    "codec_options", "read_preference", "write_concern", "read_concern",
})
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


class ReadOnlyCollection:
    def __init__(self, collection):
        object.__setattr__(self, "_collection", collection)

    def __getattr__(self, name: str):
        collection = self._collection
        if name in COLLECTION_READS:
            return getattr(collection, name)
        if name == "aggregate":
            return self._aggregate
        if name == "database":
            return ReadOnlyDatabase(collection.database)
        if name == "with_options":
            return lambda *a, **k: ReadOnlyCollection(collection.with_options(*a, **k))
        if name.startswith("_"):
            raise AttributeError(name)
        raise _refuse(f"{collection.full_name}.{name}")

    def __getitem__(self, name: str) -> "ReadOnlyCollection":
        return ReadOnlyCollection(self._collection[name])

    def __setattr__(self, name, value):
        raise _refuse(f"setting {name}")

    def _aggregate(self, pipeline, *args, **kwargs):
        _check_pipeline(pipeline, self._collection.full_name)
        return self._collection.aggregate(pipeline, *args, **kwargs)

    def __repr__(self) -> str:
        return f"ReadOnlyCollection({self._collection.full_name!r})"


class ReadOnlyDatabase:
    def __init__(self, database):
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
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _database_methods():
            raise _refuse(f"db.{name}")  # create_collection, drop_collection, client, cursor_command, ...
        return ReadOnlyCollection(database[name])  # db.enrollments, as pymongo allows

    def __getitem__(self, name: str) -> ReadOnlyCollection:
        return ReadOnlyCollection(self._database[name])

    def __setattr__(self, name, value):
        raise _refuse(f"setting {name}")

    def _command(self, command, *args, **kwargs):
        name = command if isinstance(command, str) else next(iter(command))
        if name.lower() not in READ_COMMANDS:
            if name.lower() == "aggregate" and not isinstance(command, str):
                _check_pipeline(command.get("pipeline"), f"db.command({name!r})")
                return self._database.command(command, *args, **kwargs)
            raise _refuse(f"db.command({name!r})")
        return self._database.command(command, *args, **kwargs)

    def _aggregate(self, pipeline, *args, **kwargs):
        _check_pipeline(pipeline, f"db {self._database.name}")
        return self._database.aggregate(pipeline, *args, **kwargs)

    def __repr__(self) -> str:
        return f"ReadOnlyDatabase({self._database.name!r})"


def _database_methods() -> frozenset[str]:
    """Public attributes of pymongo's Database: with a name outside this set, db.NAME is a collection."""
    from pymongo.database import Database

    return frozenset(n for n in dir(Database) if not n.startswith("_"))
