"""MongoDB checks, reads only, through the runner's own client (connection.connect) and log readers."""

from __future__ import annotations

import contextlib
from pathlib import Path

from migrator.doctor import FAIL, OK, WARN, Check, DoctorReport, failed
from migrator.errors import MigratorError
from migrator.targets import MongoTarget


def check(report: DoctorReport, target: MongoTarget, mongo_dir: Path) -> None:
    from migrator.mongo import connection

    with contextlib.ExitStack() as stack:
        try:
            db = stack.enter_context(connection.connect(target))
        except MigratorError as exc:
            report.add(failed("mongo reachable", str(exc)))
            return
        report.add(Check("mongo reachable", OK, f"{target.hosts} answers; TLS {target.tls}"))
        try:
            if _database(report, db, target):
                _log_and_lock(report, db, target, mongo_dir)
            _documentdb(report, db, target)
        except MigratorError as exc:  # connect() turns a driver error inside into one line
            report.add(failed("mongo", str(exc)))


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


def _log_and_lock(report: DoctorReport, db, target: MongoTarget, mongo_dir: Path) -> None:
    from migrator.mongo import lock, log, patches, state

    records = log.collection(db).count_documents({})
    report.add(Check("mongo applied_patches", OK, f"{log.COLLECTION} readable ({records} record(s))"))
    holder = lock.Lock(db, target.where).holder()  # read only: the lock is never taken
    if holder is None:
        report.add(Check("mongo lock", OK, "the patch lock is free"))
    else:
        since, expires = holder.get("since"), holder.get("expires")
        who = f"{holder.get('host', '?')} pid {holder.get('pid', '?')} since {since:%Y-%m-%d %H:%M:%S} UTC" if since else "?"
        if expires and expires < log.utcnow():
            report.add(Check("mongo lock", WARN, f"left by {who}, expired: a dead runner's",
                             "nothing to do: the next run takes it over"))
        else:
            report.add(Check("mongo lock", WARN, f"held by {who}",
                             "a runner is applying patches now; a run would wait for it (--lock-timeout)"))
    if not mongo_dir.is_dir():
        return
    try:
        found = state.read(db, patches.discover(mongo_dir))
    except MigratorError as exc:
        report.add(failed("mongo patches", str(exc)))
        return
    blocked = [s for s in found if s.state in state.BLOCKED]
    todo = sum(1 for s in found if s.state == state.PENDING)
    if blocked:
        report.add(failed("mongo patches", state.explain(blocked[0])))
    else:
        report.add(Check("mongo patches", OK, f"{len(found)} patch(es), {todo} never applied ({mongo_dir})"))


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
