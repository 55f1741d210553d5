"""The applied_patches collection: one record per real application, never one for a dry run.

Records in the seed's shape ({patch, comment, applied}) have no status and count as applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from migrator import __version__, whoami
from migrator.mongo.patches import Patch, patch_key

COLLECTION = "applied_patches"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def append(db, patch: Patch, *, status: str, comment: str | None, started: datetime, error: str | None = None) -> dict:
    finished = utcnow()
    record = {
        "patch": patch.id,
        "comment": comment or "",
        "applied": finished,
        "status": status,
        "kind": patch.kind,
        "checksum": patch.checksum,
        "started": started,
        "finished": finished,
        "duration_ms": int((finished - started).total_seconds() * 1000),
        "host": whoami.host(),
        "user": whoami.user(),
        "runner_version": __version__,
    }
    if error is not None:
        record["error"] = error
    db[COLLECTION].insert_one(record)
    return record


def succeeded(record: dict) -> bool:
    return record.get("status", "applied") == "applied"


def history(db, patch_id: str | None = None) -> list[dict]:
    """The log, newest first; for one patch, its records under any zero padding of its id."""
    records = list(db[COLLECTION].find({}, {"_id": 0}).sort([("applied", -1), ("_id", -1)]))
    if patch_id is not None:
        key = patch_key(patch_id)
        records = [r for r in records if patch_key(str(r.get("patch", ""))) == key]
    return records


@dataclass
class PatchSummary:
    id: str
    patch: Patch | None  # None: logged, but no longer on disk
    applied_count: int = 0
    last_applied: datetime | None = None
    last_outcome: str | None = None

    @property
    def state(self) -> str:
        if self.patch is None:
            return "not on disk"
        return f"applied {self.applied_count}x" if self.applied_count else "never applied"


def summarise(records: list[dict], patches: list[Patch]) -> list[PatchSummary]:
    """One line per patch on disk, then one per patch id that only the log knows."""
    by_key = {p.key: PatchSummary(p.id, p) for p in patches}
    orphans: dict = {}
    for record in sorted(records, key=lambda r: r.get("applied") or datetime.min):
        key = patch_key(str(record.get("patch", "")))
        summary = by_key.get(key) or orphans.setdefault(key, PatchSummary(str(record.get("patch")), None))
        summary.last_outcome = record.get("status", "applied")
        if succeeded(record):
            summary.applied_count += 1
            summary.last_applied = record.get("applied")
    return list(by_key.values()) + list(orphans.values())
