"""What the commands return: plain data, and its two renderings (text lines, a JSON-able dict) side by side.

The CLI prints `lines()` or `json.dumps(to_json())` of the same object (output.report), so the two cannot
disagree. Progress lines (a migration applied, a patch run) are printed by the commands as they happen;
these are the summaries. A line that is SQL for psql is a `SqlText`: printed exactly as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from migrator.errors import DRIFT, FAILED, OK, SCHEMA_DRIFT


class SqlText(str):
    """A line of SQL a DBA feeds to psql: output.report prints it unmasked but for registered passwords."""


def _time(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


@dataclass
class Lines:
    """A report that is just lines (config, mark, accept-changes, resolve...)."""

    text: list[str]

    def lines(self) -> list[str]:
        return self.text


# --- MongoDB ---------------------------------------------------------------------------------------


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

        summaries = self.patches
        lines = [f"MongoDB {self.target} ({self.database})"]
        width = max((len(s.id) for s in summaries), default=0)
        for s in summaries:
            last = f"last {s.last_applied:%Y-%m-%d %H:%M:%S} UTC" if s.last_applied else ""
            outcome = f"last outcome: {s.last_outcome}" if s.last_outcome else ""
            lines.append(f"  {s.id:<{width}}  {s.label:<14}  {last:<27}  {outcome}".rstrip())
        applied = sum(1 for s in summaries if s.applied_count and s.patch)
        never = sum(1 for s in summaries if s.state == state.PENDING)
        orphans = sum(1 for s in summaries if not s.patch)
        lines.append(f"MongoDB: {applied} applied, {never} never applied"
                     + (f", {orphans} logged but not on disk" if orphans else ""))
        lines += [f"  blocked: {state.explain(s)}" for s in summaries if s.state in state.BLOCKED]
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


# --- PostgreSQL and both stores -----------------------------------------------------------------------


@dataclass
class SqlMigrateReport:
    """The PostgreSQL part of `migrate` (each migration was printed as it landed)."""

    applied: list[str]
    done: int  # migrations applied on the database now
    total: int

    def lines(self) -> list[str]:
        if self.applied:
            return [f"PostgreSQL: applied {len(self.applied)}; {self.done} of {self.total} migrations applied"]
        return [f"PostgreSQL: up to date ({self.done} of {self.total} migrations applied)"]


@dataclass
class MigrateReport:
    """Both parts of a deploy; each was shown as soon as it was done."""

    sql: SqlMigrateReport
    mongo: PatchRunReport | None  # None: Mongo not configured


MONGO_NOT_CONFIGURED = Lines(["MongoDB: not configured, skipped"])


@dataclass
class RollbackReport:
    rolled_back: list[str]
    done: int
    total: int

    def lines(self) -> list[str]:
        return [f"PostgreSQL: rolled back {len(self.rolled_back)}; {self.done} of {self.total} migrations applied"]


@dataclass
class StatusReport:
    target: str
    states: list  # postgres.MigrationState
    invalid_indexes: list[tuple[str, str, str]]
    schema: Any  # schema.snapshot.DriftReport
    mongo: PatchStatusReport | None

    @property
    def changed(self) -> list:
        return [s for s in self.states if s.changed]

    @property
    def pending(self) -> list:
        return [s for s in self.states if not s.applied_at]

    def exit_code(self, gate: bool) -> int:
        """With --exit-code: 3 while an applied file has changed, 5 while the live schema drifted, 1 while
        migrations are pending; else 0."""
        if not gate:
            return OK
        if self.changed:
            return DRIFT
        if self.schema.drifted:
            return SCHEMA_DRIFT
        return FAILED if self.pending else OK

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "migrations": [{"id": s.id, "status": s.state, "applied_at": _time(s.applied_at),
                            "file": str(s.path) if s.path else None, "failure": s.failure} for s in self.states],
            "applied": len(self.states) - len(self.pending),
            "pending": len(self.pending),
            "changed": [s.id for s in self.changed],
            "invalid_indexes": [f"{schema}.{index}" for schema, index, _ in self.invalid_indexes],
            "schema": self.schema.to_json(),
            "mongo": self.mongo.to_json() if self.mongo else None,
        }

    def lines(self) -> list[str]:
        lines = [f"PostgreSQL {self.target}"]
        width = max((len(s.id) for s in self.states), default=0)
        for s in self.states:
            when = s.applied_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.applied_at else ""
            lines.append(f"  {s.id:<{width}}  {s.state:<8}  {when}".rstrip())
            if s.failure:
                lines.append(f"    {s.failure}")
        changed = self.changed
        lines.append(f"PostgreSQL: {len(self.states) - len(self.pending)} applied, {len(self.pending)} pending"
                     + (f", {len(changed)} CHANGED since applied" if changed else ""))
        if changed:
            ids = " ".join(s.id for s in changed)
            lines.append(f"  changed files block `migrate`: restore them, or after review `runner.py sql accept-changes {ids}`")
        for schema, index, table in self.invalid_indexes:
            lines.append(f"  INVALID index {schema}.{index} on {table} (a failed CREATE INDEX CONCURRENTLY): "
                         f"DROP INDEX CONCURRENTLY {schema}.{index}; then run migrate again")
        lines += self.schema.lines()
        return lines + (self.mongo.lines() if self.mongo else ["MongoDB: not configured"])


@dataclass
class PlanReport:
    """`plan`'s PostgreSQL part: the SQL migrate would run (as it is, for psql), drift, lint."""

    target: str
    pending: list  # yoyo migrations, in the order migrate runs them
    drift: list  # postgres.MigrationState that changed
    findings: list  # lint.Finding
    lint_skipped: bool  # squawk is not installed here
    schema: Any = None  # schema.snapshot.DriftReport, None offline

    @property
    def exit_code(self) -> int:
        return DRIFT if self.drift else OK

    def to_json(self) -> dict[str, Any]:
        from migrator import postgres

        return {
            "target": self.target,
            "pending": [{"id": m.id, "file": str(m.path), "transactional": postgres.is_transactional(m),
                         "sql": SqlText(postgres.plan_text(m))} for m in self.pending],
            "drift": [{"id": d.id, "file": str(d.path)} for d in self.drift],
            "schema": self.schema.to_json() if self.schema else None,
            "lint": None if self.lint_skipped else [vars(f) for f in self.findings],
        }

    def lines(self) -> list[str]:
        from migrator import postgres

        lines = [f"-- plan for {self.target}: {len(self.pending)} pending migration(s); nothing below has been run"]
        lines += [f"-- DRIFT: {d.path} changed since it was applied; `migrate` will refuse to run" for d in self.drift]
        if self.schema is not None and self.schema.drifted:
            lines += [f"-- {line}" for line in self.schema.lines()]
        lines += [f"-- lint: {finding}" for finding in self.findings]
        for migration in self.pending:
            lines += ["", SqlText(postgres.plan_text(migration))]
        return lines


@dataclass
class MongoPlanReport:
    """`plan`'s Mongo part: the pending patches, dry-run, or the patches on disk when Mongo is not configured."""

    target: str | None  # None: Mongo not configured
    pending: int = 0
    outcomes: list = field(default_factory=list)  # mongo.actions.Outcome of the dry run
    on_disk: list[str] = field(default_factory=list)
    folder: str = "mongo"

    def lines(self) -> list[str]:
        if self.target is None:
            return [f"-- MongoDB: not configured; patches in {self.folder}/: {', '.join(self.on_disk) or 'none'}"]
        return ([f"-- MongoDB {self.target}: {self.pending} pending patch(es), dry-run below; nothing was written"]
                + [f"--   {o.patch.id} ({o.patch.kind}): {o.comment or '(no comment)'}" for o in self.outcomes])


@dataclass
class ImpactReport:
    """`plan --impact`: per pending migration, per statement, the locks taken and the rewrites (postgres.impact)."""

    target: str  # masked live URL
    scratch: str  # where it was measured
    migrations: list  # postgres.impact.MigrationImpact
    lint_skipped: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "measured_on": self.scratch, "migrations": [
            {"id": m.id, "file": m.path, "transactional": m.transactional,
             "lint": None if self.lint_skipped else [vars(f) for f in m.findings],
             "statements": [{"line": s.line, "sql": SqlText(s.text), "locks": [lock.to_json() for lock in s.locks],
                             "rewrites": [r.relation for r in s.rewrites], "waits_for": s.waits_for, "error": s.error}
                            for s in m.statements]} for m in self.migrations]}

    def _head(self) -> str:
        return (f"impact of {len(self.migrations)} pending migration(s) on {self.target}: measured on a scratch "
                f"database on {self.scratch} (rolled back, then dropped); sizes from the live database")

    def lines(self) -> list[str]:
        lines = [self._head()]
        for m in self.migrations:
            held = "every lock below is held until its COMMIT" if m.transactional else "each statement commits alone"
            lines.append(f"{m.id} ({'transactional' if m.transactional else 'not transactional'}: {held})")
            for s in m.statements:
                lines.append(f"  line {s.line}: {s.summary}")
                lines += [f"    {lock}" for lock in s.locks]
                lines += [f"    rewrites {r.kind} {r.relation}" + (f" ({r.size()})" if r.size() else "")
                          + ": reads and writes wait until it finishes" for r in s.rewrites]
                lines += [f"    waits for {w}" for w in s.waits_for]
            lines += [f"  lint: {f}" for f in m.findings]
        return lines

    def markdown(self) -> list[str]:
        """A table per migration, lint findings beside the statement they are about: for a pull request."""
        lines = [f"## Migration impact", "", self._head().replace(self.target, f"`{self.target}`"), ""]
        for m in self.migrations:
            held = "locks held until COMMIT" if m.transactional else "not transactional: each statement commits alone"
            lines += [f"### {m.id} ({held})", "", "| line | statement | locks | rewrites | lint |", "|---|---|---|---|---|"]
            for index, s in enumerate(m.statements):
                cells = [str(s.line), f"`{_cell(' '.join(s.text.split())[:120])}`",
                         "<br>".join(_cell(str(lock)) for lock in s.locks) or ("failed: " + _cell(s.error) if s.error else "none"),
                         "<br>".join(_cell(f"**{r.relation}**" + (f" ({r.size()})" if r.size() else "")) for r in s.rewrites)
                         or "no",
                         "<br>".join(_cell(f"{f.rule}: {f.message}") for f in m.findings_at(index)) or ""]
                lines.append("| " + " | ".join(cells) + " |")
                if s.waits_for:
                    lines.append(f"| | waits for | {_cell('; '.join(s.waits_for))} | | |")
            lines.append("")
        if self.lint_skipped:
            lines.append("_lint skipped: squawk is not installed here_")
        return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
