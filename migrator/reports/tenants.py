"""The reports of a run over tenant schemas (commands/tenants.py): the summary table, per-schema status and plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from migrator.errors import DRIFT, FAILED, OK, SCHEMA_DRIFT
from migrator.output import visible
from migrator.reports.base import Lines
from migrator.reports.mongo import PatchStatusReport


@dataclass
class CountedLines(Lines):
    """A maintenance command's lines (mark, accept-*, break-lock) and how many things it changed: its column
    in the summary over schemas."""

    changed: int = 0


@dataclass
class SchemaOutcome:
    """One schema's part of a run: its report, or the one line it failed with."""

    schema: str
    report: Any = None
    error: str | None = None
    excerpt: tuple[str, ...] = ()  # the failed statement's line and a caret, shown above the schema's error
    exit_code: int = OK
    seconds: float = 0.0
    ran: bool = False  # False: --fail-fast or SIGTERM stopped the run before it
    waited: bool = False  # SIGTERM came while it waited for its lock: nothing of it ran

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

    @property
    def ok(self) -> bool:
        return not self.failed

    def error_line(self) -> str:
        failed = [o.schema for o in self.outcomes if o.error]
        not_run = [o.schema for o in self.outcomes if not o.ran]
        line = f"{self.command} failed in {len(failed)} of {len(self.outcomes)} schema(s): {', '.join(failed)}"
        if not_run:
            line += f"; not run (--fail-fast): {', '.join(not_run)}"
        return line + f"; each schema's error is above; {self.rerun()}"

    def rerun(self, fix: str = "fix it and ") -> str:
        """What to run next, true for this command: a re-run over the schemas done is a no-op only for some."""
        done = [o.schema for o in self.outcomes if o.state == "ok"]
        rest = " ".join(f"--schema {o.schema}" for o in self.outcomes if o.state != "ok")
        if self.command == "rollback" and not done:  # (a schema that failed part-way keeps what it rolled back)
            return (f"{fix}roll back what its line says is still applied, with --to ID (`runner.py status` lists "
                    "them), not the same --count again")
        if self.command not in _RERUN or not done:
            return f"{fix}run {self.command} again" + (" (done schemas are a no-op)" if done and fix else "")
        return (f"{self.command} is done in {', '.join(done)}; {fix}run it again only for the rest "
                f"(`{rest}`): {_RERUN[self.command]}")

    def _row(self, outcome: SchemaOutcome) -> tuple[str, str]:
        report = outcome.report
        done = getattr(report, "applied", getattr(report, "rolled_back", getattr(report, "to_mark", None)))
        changed = str(len(done)) if done is not None else str(report.changed) if hasattr(report, "changed") else "-"
        pending = str(report.total - report.done) if hasattr(report, "total") else "-"
        return changed, pending

    def lines(self) -> list[str]:
        width = max([len(o.schema) for o in self.outcomes] + [6])
        verb = {"rollback": "rolled back", "mark": "marked", "adopt": "to mark", "accept-changes": "accepted",
                "accept-drift": "accepted", "break-lock": "removed"}.get(self.command, "applied")
        counted = self.command in ("migrate", "rollback")  # the others have no pending count
        lines = [f"{'schema':<{width}}  {verb:>11}  " + (f"{'pending':>7}  " if counted else "") + f"{'failed':<7}  time"]
        for outcome in self.outcomes:
            changed, pending = self._row(outcome)
            lines.append(f"{outcome.schema:<{width}}  {changed:>11}  " + (f"{pending:>7}  " if counted else "")
                         + f"{'' if outcome.state == 'ok' else outcome.state:<7}  {outcome.seconds:.2f} s")
        ok = len(self.outcomes) - len(self.failed)
        lines.append(f"PostgreSQL: {self.command} done in {ok} of {len(self.outcomes)} schema(s)"
                     + (f"; {len(self.failed)} failed or not run" if self.failed else ""))
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "schemas": {o.schema: o.to_json() for o in self.outcomes}}


# What re-running a command does in a schema where it is done (migrate, mark, adopt, break-lock: nothing).
_RERUN = {
    "rollback": "over a done schema it would roll back further (or give --to ID: a re-run over every schema then "
                "stops at ID)",
    "accept-drift": "over a done schema it would record the schema as it is then, with any change made since",
    "accept-changes": "over a done schema it would record the files as they are then, with any edit made since",
}


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
                lines.append(f"-- FAILED: {visible(o.error)}" if self.plan else f"FAILED: {o.error}")
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
