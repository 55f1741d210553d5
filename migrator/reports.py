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


# --- per schema (a DIGIT central instance's tenants; commands/tenants.py) ----------------------------


@dataclass
class SchemaOutcome:
    """One schema's part of a run: its report, or the one line it failed with."""

    schema: str
    report: Any = None
    error: str | None = None
    exit_code: int = OK
    seconds: float = 0.0
    ran: bool = False  # False: --fail-fast stopped the run before it

    @property
    def state(self) -> str:
        return "FAILED" if self.error else "ok" if self.ran else "not run"

    def to_json(self) -> dict[str, Any]:
        report = self.report.to_json() if hasattr(self.report, "to_json") else None
        return {"state": self.state, "error": self.error, "seconds": round(self.seconds, 3), "report": report}


def _exit_code(outcomes: list[SchemaOutcome]) -> int:
    codes = {o.exit_code for o in outcomes if o.error}
    return codes.pop() if len(codes) == 1 else FAILED


@dataclass
class SchemasReport:
    """migrate / rollback / mark over schemas: the summary table (each schema's lines came as it ran)."""

    command: str
    outcomes: list[SchemaOutcome]

    @property
    def failed(self) -> list[SchemaOutcome]:
        return [o for o in self.outcomes if o.state != "ok"]

    @property
    def exit_code(self) -> int:
        return _exit_code(self.outcomes)

    def error_line(self) -> str:
        failed = [o.schema for o in self.outcomes if o.error]
        not_run = [o.schema for o in self.outcomes if not o.ran]
        line = f"{self.command} failed in {len(failed)} of {len(self.outcomes)} schema(s): {', '.join(failed)}"
        if not_run:
            line += f"; not run (--fail-fast): {', '.join(not_run)}"
        return line + "; each schema's error is above; fix it and run again (done schemas are a no-op)"

    def _row(self, outcome: SchemaOutcome) -> tuple[str, str]:
        report = outcome.report
        done = getattr(report, "applied", getattr(report, "rolled_back", None))
        changed = str(len(done)) if done is not None else "-"
        pending = str(report.total - report.done) if hasattr(report, "total") else "-"
        return changed, pending

    def lines(self) -> list[str]:
        width = max([len(o.schema) for o in self.outcomes] + [6])
        verb = {"rollback": "rolled back", "mark": "marked"}.get(self.command, "applied")
        lines = [f"{'schema':<{width}}  {verb:>11}  {'pending':>7}  {'failed':<7}  time"]
        for outcome in self.outcomes:
            changed, pending = self._row(outcome)
            lines.append(f"{outcome.schema:<{width}}  {changed:>11}  {pending:>7}  "
                         f"{'' if outcome.state == 'ok' else outcome.state:<7}  {outcome.seconds:.2f} s")
        ok = len(self.outcomes) - len(self.failed)
        lines.append(f"PostgreSQL: {self.command} done in {ok} of {len(self.outcomes)} schema(s)"
                     + (f"; {len(self.failed)} failed or not run" if self.failed else ""))
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "schemas": {o.schema: o.to_json() for o in self.outcomes}}


@dataclass
class SchemasStatusReport:
    """status / plan over schemas: each schema's report in order, keyed by schema in JSON; Mongo once."""

    target: str
    outcomes: list[SchemaOutcome]
    mongo: PatchStatusReport | None
    plan = False

    def exit_code(self, gate: bool = True) -> int:
        if any(o.error for o in self.outcomes):
            return _exit_code(self.outcomes)
        codes = [o.report.exit_code if self.plan else o.report.exit_code(gate) for o in self.outcomes]
        return next((code for code in (DRIFT, SCHEMA_DRIFT, FAILED) if code in codes), OK)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"target": self.target, "schemas": {}}
        for o in self.outcomes:
            data["schemas"][o.schema] = o.report.to_json() if o.report else {"error": o.error}
        if not self.plan:
            data["mongo"] = self.mongo.to_json() if self.mongo else None
        return data

    def lines(self) -> list[str]:
        lines: list[str] = []
        for o in self.outcomes:
            if self.plan:
                lines += ["", f"-- schema {o.schema} (for psql: PGOPTIONS='-c search_path={o.schema},public')"]
            else:
                lines.append(f"== schema {o.schema}")
            if o.error:
                lines.append(f"{'-- ' if self.plan else ''}FAILED: {o.error}")
                continue
            body = o.report.lines()
            lines += body if self.plan else body[:-1] if body and body[-1] == "MongoDB: not configured" else body
        if not self.plan:
            lines += self.mongo.lines() if self.mongo else ["MongoDB: not configured"]
        return lines


class SchemasPlanReport(SchemasStatusReport):
    """plan over schemas (no Mongo part: plan shows its dry run after)."""

    plan = True

    @property
    def exit_code(self) -> int:  # as PlanReport's: 3 while an applied file changed, 1 when a schema failed
        return SchemasStatusReport.exit_code(self)
