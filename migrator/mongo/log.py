"""The applied_patches collection: every real application, and what became of it.

A real run writes a `running` record before the patch starts and settles it after: `applied`,
`failed`, or `cancelled` (interrupted before the patch started). A person's decisions are records
too: `resolved` (after a failed or unfinished run) and `accepted` (a changed file). Records keep
the seed's fields `patch`, `comment`, `applied`; the seed's records (no status) count as applied.
Old records come in many shapes (no `applied`, a string date, a `.py` suffix, hyphens): reading
never fails on them.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from migrator import __version__, output, whoami
from migrator.mongo.patches import Patch

COLLECTION = "applied_patches"
RUNNING, APPLIED, FAILED, CANCELLED, RESOLVED, ACCEPTED = (
    "running", "applied", "failed", "cancelled", "resolved", "accepted")
EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def collection(db):
    """The log, always read from and written to the primary (a lagging secondary would hide records)."""
    from pymongo import ReadPreference

    return db.get_collection(COLLECTION, read_preference=ReadPreference.PRIMARY)


def _who() -> dict:
    return {"user": whoami.user(), "host": whoami.host(), "pid": os.getpid(), "runner_version": __version__}


def begin(db, patch: Patch, lock_owner: str) -> dict:
    """The `running` record, written before the patch starts (everything that can fail happens here)."""
    now = utcnow()
    record = {"patch": patch.id, "comment": "", "applied": now, "status": RUNNING, "kind": patch.kind,
              "checksum": patch.checksum, "started": now, "lock_owner": lock_owner, **_who()}
    record["_id"] = collection(db).insert_one(record).inserted_id
    return record


def settle(db, record: dict, status: str, *, comment: str | None = None, error: str | None = None) -> None:
    """Complete a `running` record: applied, failed or cancelled. Comments and errors come from the patch: clean()
    before they are stored."""
    finished = utcnow()
    fields = {"status": status, "comment": clean(comment or ""), "applied": finished, "finished": finished,
              "duration_ms": int((finished - record["started"]).total_seconds() * 1000)}
    if error is not None:
        fields["error"] = clean(error)
    collection(db).update_one({"_id": record["_id"], "status": RUNNING}, {"$set": fields})


def clean(text: str) -> str:
    """A patch's text as the log keeps it and the runner prints it: scrubbed with the runner's passwords (the patch's
    process knows none), on one line, control characters as escapes, and bounded (a record must fit the server)."""
    from migrator.mongo.patches import bounded, one_line

    return bounded(output.visible(one_line(output.scrub(str(text)))))


def decide(db, patch_id: str, status: str, note: str, checksum: str | None, **extra) -> dict:
    """A person's decision about a patch (resolved, accepted), logged like a run."""
    now = utcnow()
    record = {"patch": patch_id, "comment": clean(note), "applied": now, "status": status,
              "checksum": checksum, "started": now, "finished": now, **extra, **_who()}
    collection(db).insert_one(record)
    record.pop("_id", None)
    return record


# --- reading ---------------------------------------------------------------------------------


def when(record: dict) -> datetime:
    """When a record's run started: `started`, else `applied` (a datetime or an ISO string), else the epoch."""
    for field in ("started", "applied"):
        value = record.get(field)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                value = None
        if isinstance(value, datetime):  # naive: UTC (as pymongo returns it); with an offset: converted
            return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return EPOCH


KNOWN = (RUNNING, APPLIED, FAILED, CANCELLED, RESOLVED, ACCEPTED)


def status_of(record: dict) -> str:
    """A known status in any case ("APPLIED" is applied); any other value as it is (it blocks)."""
    status = record.get("status")
    if status is None or status == "":
        return APPLIED  # the seed's records have no status: applications
    text = str(status)
    return text.strip().lower() if text.strip().lower() in KNOWN else text


def checksum_of(record: dict) -> str | None:
    """The recorded checksum, if it is one (old scripts stored ints, lists, None)."""
    value = record.get("checksum")
    return value if isinstance(value, str) and value else None


def history(db, patch_id: str | None = None) -> list[dict]:
    """The log, oldest first in the order written; for one patch, its records under any spelling of its id."""
    from migrator.mongo.patches import patch_key

    records = list(collection(db).find({}).sort("_id", 1))  # ObjectIds: insertion order
    records.sort(key=when)  # stable: records of the same instant keep their insertion order
    if patch_id is not None:
        key = patch_key(patch_id)
        records = [r for r in records if patch_key(str(r.get("patch", ""))) == key]
    return records


def printable(record: dict) -> dict:
    """A record for --json: no _id, dates as ISO text."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in record.items() if k != "_id"}
