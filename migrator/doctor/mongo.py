"""MongoDB checks, reads only, through the runner's own client (connection.connect) and log readers."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from migrator.doctor import FAIL, OK, WARN, Check, DoctorReport, failed, one_line
from migrator.errors import MigratorError
from migrator.targets import MongoTarget

UNAUTHORIZED = 13  # MongoDB's error code for a missing privilege


def check(report: DoctorReport, target: MongoTarget, mongo_dir: Path) -> list[str] | None:
    """The checks; returns the JavaScript patches a run would execute (pending or blocked), None when unknown."""
    from migrator.mongo import connection

    js: list[str] | None = None
    reached = False
    try:
        with connection.connect(target) as db:
            reached = True
            report.add(Check("mongo reachable", OK, f"{target.hosts} answers; TLS {target.tls}"))
            if _step(report, "mongo auth", target, _database, db, target):
                _step(report, "mongo applied_patches", target, _log, db)
                _step(report, "mongo lock", target, _lock, db, target)
                js = _step(report, "mongo patches", target, _patches, db, mongo_dir)
            _step(report, "mongo documentdb", target, _documentdb, db, target)
    except MigratorError as exc:  # connect() refused, or turned a driver error on the way out into one line
        report.add(failed("mongo" if reached else "mongo reachable", str(exc)))
    if reached:
        _dry_runs(report, target)
    return js


PROBE = "_hcm_readonly_probe"  # the scratch collection doctor tries to write through MONGO_READONLY_URL


def _dry_runs(report: DoctorReport, target: MongoTarget) -> None:
    """Whether the server refuses a dry run's writes: proven by a write through MONGO_READONLY_URL that it refuses."""
    from pymongo.errors import OperationFailure

    from migrator.mongo import connection, seal

    if not target.readonly_uri:
        report.add(Check("mongo dry-run", WARN, "not server-enforced: the runner's guards stop a careless patch, "
                         "not a deliberate one", "set MONGO_READONLY_URL to the URL of a read-only user: dry runs and "
                         "plan then use it, and the server refuses the runner's and a careless patch's writes"))
        return
    ro = target.for_dry_run()
    try:
        with connection.connect(ro) as db:
            db.list_collection_names()
            try:
                probe = db[PROBE].insert_one({"probe": "hcm doctor: a read-only user must not be able to write"})
            except OperationFailure:
                probe = None  # refused by the server: what a read-only user is
            if probe is not None:
                db[PROBE].drop()
                report.add(Check("mongo dry-run", FAIL, f"MONGO_READONLY_URL can write: doctor's probe insert into "
                                 f"{target.database}.{PROBE} as {ro.display_uri} succeeded (removed again)",
                                 f"revoke that user's write privileges on {target.database}, or unset "
                                 f"{ro.sources['url']}"))
                return
    except MigratorError as exc:
        report.add(failed("mongo dry-run", f"{ro.sources['url']}: {exc}"))
        return
    if _anonymous_write(ro):
        report.add(Check("mongo dry-run", WARN, f"not server-enforced: the read-only user of {ro.sources['url']} is "
                         f"refused, but doctor's probe insert into {target.database}.{PROBE} over a connection with no "
                         f"credentials at all to {target.hosts} succeeded (removed again): a deliberate dry-run patch "
                         "can connect so", "turn on authentication on the server (mongod: security.authorization; "
                         "FerretDB: a backend URL whose own user may not write, so that clients' credentials count)"))
        return
    report.add(Check("mongo dry-run", OK, f"server-enforced for the runner: dry runs and plan connect as the read-only "
                     f"user of {ro.sources['url']} ({ro.display_uri}), whose probe write the server refused; "
                     f"{seal.guarantee()}"))


def _anonymous_write(ro: MongoTarget) -> bool:
    """Whether the server lets a client with no credentials write (FerretDB with a credentialed backend URL does):
    then a dry run's patch could connect so, whatever MONGO_READONLY_URL's user may do."""
    import pymongo
    from pymongo.errors import PyMongoError

    parts = urlsplit(ro.uri)
    query = "&".join(p for p in parts.query.split("&") if p and not p.lower().startswith("auth"))
    uri = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, query, ""))
    try:
        with pymongo.MongoClient(uri, **ro.client_options()) as client:
            collection = client[ro.database][PROBE]
            collection.insert_one({"probe": "hcm doctor: a client without credentials must not be able to write"})
            collection.drop()
            return True
    except PyMongoError:
        return False  # refused (or no such connection at all): what an authenticating server does


def _step(report: DoctorReport, name: str, target: MongoTarget, step, *args):
    """One check; a driver error (a privilege, the server going away) is its FAIL line, and the others still run."""
    from pymongo.errors import OperationFailure, PyMongoError

    try:
        return step(report, *args)
    except OperationFailure as exc:
        remedy = (f"grant the user readWrite on {target.database} (the runner reads and writes applied_patches and "
                  "its lock there)" if exc.code == UNAUTHORIZED else "fix what the server says, then run doctor again")
        report.add(Check(name, FAIL, f"{target.where}: {one_line(_message(exc))} (code {exc.code})", remedy))
    except PyMongoError as exc:
        report.add(Check(name, FAIL, f"{target.where}: {exc.__class__.__name__}: {one_line(exc)}",
                         "check the server and the network, then run doctor again"))
    return None


def _database(report: DoctorReport, db, target: MongoTarget) -> bool:
    """Auth is proven by a command that needs it (ping does not)."""
    from pymongo.errors import OperationFailure

    try:
        collections = db.list_collection_names()
    except OperationFailure as exc:
        report.add(Check("mongo auth", FAIL, f"cannot list the collections of {target.where}: {_message(exc)}",
                         f"grant the user readWrite on {target.database}, or fix the user ({target.sources['url']})"))
        return False
    try:
        exists = target.database in db.client.list_database_names()
    except OperationFailure:  # a user limited to one database may not list them all
        exists = bool(collections)
    report.add(Check("mongo auth", OK, f"the user may read {target.database}"))
    if exists:
        report.add(Check("mongo database", OK, f"{target.database} exists ({len(collections)} collection(s))"))
    else:
        report.add(Check("mongo database", WARN, f"{target.database} does not exist on {target.hosts} yet",
                         f"check the name ({target.sources['database']}); the first patch would create it"))
    return True


def _log(report: DoctorReport, db) -> bool:
    from migrator.mongo import log

    records = log.collection(db).count_documents({})
    report.add(Check("mongo applied_patches", OK, f"{log.COLLECTION} readable ({records} record(s))"))
    return True


def _lock(report: DoctorReport, db, target: MongoTarget) -> None:
    """Read only: the lock is never taken. A document the runner would not have written is said as it is."""
    from migrator.mongo import lock, log

    holder = lock.Lock(db, target.where).holder()
    if holder is None:
        report.add(Check("mongo lock", OK, "the patch lock is free"))
        return
    since, expires = holder.get("since"), holder.get("expires")
    odd = [f"{key} {value!r} is not a date" for key, value in (("since", since), ("expires", expires))
           if value is not None and not isinstance(value, datetime)]
    where = f"the lock document {holder.get('_id')!r} in {lock.COLLECTION}"
    if odd:
        report.add(Check("mongo lock", FAIL, f"{where} is malformed: {', '.join(odd)}",
                         "remove it after checking no runner is alive (no runner wrote it)"))
        return
    who = f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"
    who += f" since {since:%Y-%m-%d %H:%M:%S} UTC" if since else " (since unknown)"
    if expires is None:
        report.add(Check("mongo lock", FAIL, f"lock document without expiry (held by {who}): a run would wait forever",
                         "remove it after checking no runner is alive"))
    elif _aware(expires) < lock.server_now(db):  # the server's clock, as the runners compare it
        report.add(Check("mongo lock", WARN, f"left by {who}, expired: a dead runner's",
                         "nothing to do: the next run takes it over"))
    else:
        report.add(Check("mongo lock", WARN, f"held by {who}",
                         "a runner is applying patches now; a run would wait for it (--lock-timeout)"))


def _patches(report: DoctorReport, db, mongo_dir: Path) -> list[str] | None:
    from migrator.mongo import patches, state

    if not mongo_dir.is_dir():
        return []
    try:
        found = state.read(db, patches.discover(mongo_dir))
    except MigratorError as exc:
        report.add(failed("mongo patches", str(exc)))
        return None
    blocked = [s for s in found if s.state in state.BLOCKED]
    todo = [s for s in found if s.state == state.PENDING]
    if blocked:
        report.add(failed("mongo patches", state.explain(blocked[0])))
    else:
        report.add(Check("mongo patches", OK, f"{len(found)} patch(es), {len(todo)} never applied ({mongo_dir})"))
    return [s.id for s in blocked + todo if s.patch is not None and s.patch.path.suffix == ".js"]


def _aware(at: datetime) -> datetime:
    """A naive date (a client without tz_aware) is UTC, as the runner writes it."""
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _documentdb(report: DoctorReport, db, target: MongoTarget) -> None:
    if not target.documentdb:
        return
    retry = getattr(getattr(db.client, "options", None), "retry_writes", None)
    if not isinstance(retry, bool):  # a client without pymongo's ClientOptions (mongomock): what the runner passes
        retry = target.client_options().get("retryWrites", True)
    if retry is False:
        report.add(Check("mongo documentdb", OK, "DocumentDB: retryWrites=false in effect"))
    else:
        report.add(Check("mongo documentdb", FAIL, "DocumentDB with retryWrites on: every write would fail",
                         "remove retryWrites=true from the URL or the secret"))


def _message(exc) -> str:
    return (exc.details or {}).get("errmsg") or str(exc)
