"""What the log says about each patch: pending, applied, changed since applied, or blocked.

A patch's records are read oldest first and each moves its state:
  applied (or a seed record) -> applied, with the checksum the file had
  running                    -> blocked: a run started and never settled (killed, lost its lock)
  failed                     -> blocked: its partial writes are kept
  cancelled                  -> no change: interrupted before the patch started
  resolved                   -> unblocked; `resolved_as: applied` also counts as an application
  accepted                   -> the applied checksum becomes the file's current one
A record matches a patch by its id in any old spelling, or (a renamed file) by checksum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from migrator import output
from migrator.errors import DRIFT, FAILED, MigratorError
from migrator.mongo import log
from migrator.mongo.patches import Patch, one_line, patch_key

PENDING, APPLIED, CHANGED, RUNNING, FAILED_STATE, ORPHAN = (
    "pending", "applied", "changed", "running", "failed", "not on disk")
BLOCKED = (RUNNING, FAILED_STATE, CHANGED)


@dataclass
class PatchState:
    id: str
    patch: Patch | None  # None: logged, but no longer on disk
    records: list[dict] = field(default_factory=list)
    applied_count: int = 0
    last_applied: datetime | None = None
    applied_checksum: str | None = None
    blocker: dict | None = None  # the running or failed record nobody has resolved
    renamed_from: str | None = None
    holder: dict | None = None  # the live lock holder, when it is the runner that wrote the running blocker

    @property
    def state(self) -> str:
        if self.patch is None:
            return ORPHAN
        if self.blocker is not None:
            return RUNNING if log.status_of(self.blocker) == log.RUNNING else FAILED_STATE
        if self.applied_count and self.applied_checksum and self.applied_checksum != self.patch.checksum:
            return CHANGED
        return APPLIED if self.applied_count else PENDING

    @property
    def last_outcome(self) -> str | None:
        return log.status_of(self.records[-1]) if self.records else None

    @property
    def label(self) -> str:
        """The state as status prints it."""
        if self.state == APPLIED:
            return f"applied {self.applied_count}x" + (f" (as {self.renamed_from})" if self.renamed_from else "")
        if self.state == RUNNING and self.holder:
            return "RUNNING NOW"
        return {PENDING: "never applied", RUNNING: "UNFINISHED", FAILED_STATE: "FAILED",
                CHANGED: "CHANGED"}.get(self.state, self.state)

    def record(self, record: dict) -> None:
        self.records.append(record)
        status = log.status_of(record)
        if status == log.APPLIED or (status == log.RESOLVED and record.get("resolved_as") == log.APPLIED):
            self.applied_count += 1
            self.applied_checksum = log.checksum_of(record) or self.applied_checksum
            self.last_applied = log.when(record) if status == log.RESOLVED else _applied_at(record)
            self.blocker = None
        elif status == log.RESOLVED:
            self.blocker = None
        elif status == log.ACCEPTED:
            self.applied_checksum = log.checksum_of(record)
        elif status != log.CANCELLED:  # running, failed, or a status this runner does not know: stop
            self.blocker = record


def _applied_at(record: dict) -> datetime | None:
    at = log.when({"applied": record.get("applied")})
    return None if at == log.EPOCH else at


def states(records: list[dict], patches: list[Patch]) -> list[PatchState]:
    """One state per patch on disk, in order, then one per id only the log knows."""
    by_key = {p.key: PatchState(p.id, p) for p in patches}
    by_checksum = {p.checksum: p.key for p in patches}
    orphans: dict = {}
    for record in records:  # oldest first
        key = patch_key(str(record.get("patch", "")))
        if key not in by_key and log.checksum_of(record) in by_checksum:  # renamed since
            key = by_checksum[log.checksum_of(record)]
            by_key[key].renamed_from = str(record.get("patch"))
        (by_key.get(key) or orphans.setdefault(key, PatchState(str(record.get("patch")), None))).record(record)
    return list(by_key.values()) + list(orphans.values())


def read(db, patches: list[Patch]) -> list[PatchState]:
    found = states(log.history(db), patches)
    holder = _live_holder(db)
    for s in found:
        if holder and s.state == RUNNING and s.blocker.get("lock_owner") == holder.get("owner"):
            s.holder = holder
    return found


def _live_holder(db) -> dict | None:
    """The lock document, while its holder keeps it (unexpired)."""
    from migrator.mongo import lock

    holder = lock.Lock(db).holder()
    if not holder or log.when({"started": holder.get("expires")}) <= lock.server_now(db) or lock.exited(holder):
        return None
    return holder


def pending(found: list[PatchState]) -> list[Patch]:
    """The patches an automatic run applies; refuses (one line) while any patch is blocked."""
    blocked = [s for s in found if s.state in BLOCKED]
    if blocked:
        others = f" (also blocked: {', '.join(s.id for s in blocked[1:])})" if blocked[1:] else ""
        raise MigratorError(explain(blocked[0]) + others, DRIFT if blocked[0].state == CHANGED else FAILED)
    return [s.patch for s in found if s.state == PENDING]


def settle_commands(patch_id: str) -> str:
    """How a person settles an unfinished or failed run (also said when the server went away mid-patch)."""
    return (f"look at the data, then re-run it deliberately (`runner.py mongo apply {patch_id} --run`) or mark it "
            f"resolved (`runner.py mongo resolve {patch_id} --applied` or `--not-applied`, with --note)")


def explain(s: PatchState) -> str:
    """Why a patch blocks the automatic run, and the commands that unblock it."""
    resolve = settle_commands(s.id)
    if s.state == CHANGED:
        return (f"patch {s.id} was applied but its file {s.patch.path} has changed since (checksum "
                f"{s.applied_checksum[:12]} -> {s.patch.checksum[:12]}); automatic runs stop until you restore the file, "
                f"or after review accept it (`runner.py mongo accept-changes {s.id}`); a patch is never re-run because it changed")
    r = s.blocker
    at = f"{log.when(r):%Y-%m-%d %H:%M:%S} UTC"
    where = f"on host {r.get('host', '?')} (pid {r.get('pid', '?')}, user {r.get('user', '?')})"
    status = log.status_of(r)
    if s.holder:
        h = s.holder
        return (f"patch {s.id} is running now on {h.get('host', '?')} pid {h.get('pid', '?')} since {at} (it holds "
                f"the patch lock); wait for it to finish, then see `runner.py mongo status`")
    if status not in log.KNOWN:
        return (f"patch {s.id} has a record with status {one_line(output.scrub(status))!r} (not written by this "
                f"runner) {at} {where}; it is not run automatically until someone decides: {resolve}")
    if s.state == RUNNING:
        from migrator.mongo.lock import alive, exited

        gone = f" (pid {r.get('pid')} on this host has exited)" if exited(r) else ""
        why = "killed, or it lost its lock"
        if alive(r):  # a runner that stalled past the lock's lifetime: its patch may be writing still
            why = (f"pid {r.get('pid')} on this host is still alive: it lost its lock and may still be writing; wait "
                   "for it to end, or stop it, before re-running or resolving")
        return (f"patch {s.id}: a run started {at} {where} never finished{gone} ({why}); "
                f"its writes may be partly applied, so it is not run again automatically: {resolve}")
    error = one_line(output.scrub(str(r.get("error") or ""))) or "no error text"
    return (f"patch {s.id} failed {at} {where}: {error}; its writes so far are kept, so it is not run again "
            f"automatically: {resolve}")
