"""The Mongo reports: patch status, a patch run, the history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from migrator.reports.base import _time


@dataclass
class PatchStatusReport:
    """Each patch's state, for `mongo status` and the Mongo part of `status`."""

    target: str  # masked URI
    database: str
    patches: list  # mongo.state.PatchState

    def to_json(self) -> dict[str, Any]:
        from migrator.mongo import state

        return {"target": self.target, "database": self.database, "patches": [
            {"id": s.id, "state": s.label, "applied_count": s.applied_count, "last_applied": _time(s.last_applied),
             "last_outcome": s.last_outcome, "file": str(s.patch.path) if s.patch else None,
             "blocked": s.state in state.BLOCKED} for s in self.patches]}

    def lines(self) -> list[str]:
        from migrator.mongo import state
        from migrator.output import visible  # outcomes and reasons hold a patch's own error text

        summaries = self.patches
        lines = [f"MongoDB {self.target} ({self.database})"]
        width = max((len(s.id) for s in summaries), default=0)
        for s in summaries:
            last = f"last {s.last_applied:%Y-%m-%d %H:%M:%S} UTC" if s.last_applied else ""
            outcome = f"last outcome: {visible(s.last_outcome)}" if s.last_outcome else ""
            lines.append(f"  {s.id:<{width}}  {s.label:<14}  {last:<27}  {outcome}".rstrip())
        applied = sum(1 for s in summaries if s.applied_count and s.patch)
        never = sum(1 for s in summaries if s.state == state.PENDING)
        orphans = sum(1 for s in summaries if not s.patch)
        lines.append(f"MongoDB: {applied} applied, {never} never applied"
                     + (f", {orphans} logged but not on disk" if orphans else ""))
        lines += [f"  blocked: {visible(state.explain(s))}" for s in summaries if s.state in state.BLOCKED]
        return lines


@dataclass
class PatchRunReport:
    """`mongo apply` and the Mongo part of `migrate`: how many ran (each was printed as it ran)."""

    run: bool
    ran: list[str] = field(default_factory=list)
    found: int = 0

    def lines(self) -> list[str]:
        if not self.ran:
            return [f"MongoDB: up to date ({self.found} patch(es), all applied)"]
        if self.run:
            return [f"MongoDB: applied {len(self.ran)} patch(es)"]
        return [f"MongoDB: dry run of {len(self.ran)} patch(es); nothing was written"]


@dataclass
class HistoryReport:
    """The applied_patches log, newest first. Every text from the records is scrubbed in both renderings."""

    records: list[dict]

    def to_json(self) -> list[dict]:
        from migrator import output
        from migrator.mongo import log

        return [{k: output.scrub(v) if isinstance(v, str) else v for k, v in log.printable(r).items()}
                for r in self.records]

    def lines(self) -> list[str]:
        from migrator import output
        from migrator.mongo import log

        lines = []
        for r in self.records:
            at = log.when(r)
            when = f"{at:%Y-%m-%d %H:%M:%S} UTC" if at != log.EPOCH else "(no date)"
            who = f"{r.get('user', '')}@{r.get('host', '')}" if r.get("host") else "(seed record)"
            comment = output.one_line(str(r.get("error") or r.get("comment") or ""))  # from outside the runner
            lines.append(output.scrub(f"{when}  {r.get('patch')}  {log.status_of(r)}  {who}  {comment}"))
        return lines + [f"{len(self.records)} record(s)"]
