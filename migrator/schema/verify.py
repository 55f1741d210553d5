"""Up-down-up proof: on a scratch database, apply each migration, roll it back, re-apply it, and
check that the rollback restores exactly the schema before it and the re-application gives exactly
the schema of the first application."""

from __future__ import annotations

from dataclasses import dataclass, field

from migrator import postgres
from migrator.errors import USAGE, MigratorError
from migrator.schema.diff import diff
from migrator.schema.scratch import scratch
from migrator.targets import PostgresTarget

OK, IRREVERSIBLE, ROLLBACK_DIFFERS, REAPPLY_DIFFERS = "ok", "irreversible", "rollback differs", "re-apply differs"
REAPPLY_FAILS = "re-apply fails"
FAILURES = (ROLLBACK_DIFFERS, REAPPLY_DIFFERS, REAPPLY_FAILS)


@dataclass
class Step:
    id: str
    outcome: str
    changes: list[str] = field(default_factory=list)  # for a mismatch: expected -> found

    def lines(self) -> list[str]:
        if self.outcome == OK:
            return [f"  {self.id}: up, down, up: ok"]
        if self.outcome == IRREVERSIBLE:
            return [f"  {self.id}: irreversible (no rollback file): applied, not rolled back (allowed)"]
        what = {ROLLBACK_DIFFERS: "its rollback does not restore the schema before it",
                REAPPLY_DIFFERS: "applied again after its rollback, it gives a different schema",
                REAPPLY_FAILS: "applied again after its rollback, it fails (the rollback did not undo everything it made, "
                               "or undid it in a way the description does not show)"}[self.outcome]
        return [f"  {self.id}: FAILED: {what}:"] + [f"    {line}" for line in self.changes]


@dataclass
class VerifyReport:
    server: str
    applied_first: list[str]  # applied without checks (before --from)
    steps: list[Step]
    schema: str | None = None  # tenant schemas: the schema name the files ran in, as a tenant's run

    @property
    def failure(self) -> Step | None:
        return next((s for s in self.steps if s.outcome in FAILURES), None)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def lines(self) -> list[str]:
        head = [f"verify on a scratch database on {self.server}" + (
            f", in schema {self.schema} as a tenant's run (search_path = {self.schema}, public; the files are "
            "the same in every tenant)" if self.schema else "")]
        if self.applied_first:
            head.append(f"  applied without checks: {self.applied_first[0]} .. {self.applied_first[-1]}")
        checked = [s for s in self.steps if s.outcome == OK]
        irreversible = [s.id for s in self.steps if s.outcome == IRREVERSIBLE]
        tail = (f"verify: FAILED at {self.failure.id}" if self.failure else
                f"verify: ok: {len(checked)} migration(s) roll back and re-apply exactly"
                + (f"; irreversible: {', '.join(irreversible)}" if irreversible else ""))
        return head + [line for s in self.steps for line in s.lines()] + [tail]

    def to_json(self) -> dict:
        return {"server": self.server, "schema": self.schema, "ok": self.ok, "applied_first": self.applied_first,
                "steps": [{"id": s.id, "outcome": s.outcome, "changes": s.changes} for s in self.steps],
                "failed": self.failure.id if self.failure else None}


def verify(server: PostgresTarget, migrations, from_id: str | None = None, schema: str | None = None) -> VerifyReport:
    """Check each migration (from `from_id` on) on a scratch database on `server`'s server; stop at
    the first mismatch. A migration that fails to apply raises its usual one-line error. With a
    tenant's `schema`, the files run there as a tenant's run runs them."""
    todo = list(postgres.ordered(migrations))
    ids = [m.id for m in todo]
    if from_id is not None and from_id not in ids:
        raise MigratorError(f"--from {from_id}: no migration has that id (known: {', '.join(ids) or 'none'})", USAGE)
    start = ids.index(from_id) if from_id else 0
    report = VerifyReport(server.server, ids[:start], [], schema)
    with scratch(server, schema) as db:
        for migration in todo[:start]:
            db.apply(migration)
        for migration in todo[start:]:
            step = _up_down_up(db, migration)
            report.steps.append(step)
            if step.outcome in FAILURES:
                break
    return report


def _up_down_up(db, migration) -> Step:
    before = db.describe()
    db.apply(migration)
    first = db.describe()
    if not postgres.rollback_path(migration).is_file():
        return Step(migration.id, IRREVERSIBLE)
    db.rollback(migration)
    after_rollback = db.describe()
    if after_rollback != before:
        return Step(migration.id, ROLLBACK_DIFFERS, diff(before, after_rollback))
    try:
        db.apply(migration)
    except MigratorError as exc:
        return Step(migration.id, REAPPLY_FAILS, [str(exc)])
    again = db.describe()
    if again != first:
        return Step(migration.id, REAPPLY_DIFFERS, diff(first, again))
    return Step(migration.id, OK)
