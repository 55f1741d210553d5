"""The deploy reports: migrate, rollback, status, plan (and its Mongo part)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from migrator import lazy_re
from migrator.errors import DRIFT, FAILED, OK, SCHEMA_DRIFT
from migrator.output import visible
from migrator.reports.base import Lines, SqlText, _time
from migrator.reports.mongo import PatchRunReport, PatchStatusReport

REINDEX_COPY = lazy_re.compile(r'_cc(new|old)[0-9]*"?$')  # the copies REINDEX ... CONCURRENTLY makes
# (status and doctor) a partitioned index made ON ONLY whose partitions' indexes are not all attached yet
PARTITIONED_INVALID = ("its partitions' indexes are not all attached yet (CREATE INDEX ... ON ONLY): CREATE INDEX "
                       "CONCURRENTLY on each partition left and ALTER INDEX {0} ATTACH PARTITION it, or DROP INDEX {0} "
                       "(not CONCURRENTLY: PostgreSQL refuses that on a partitioned index)")


@dataclass
class SqlMigrateReport:
    """The PostgreSQL part of `migrate` (each migration was printed as it landed)."""

    applied: list[str]
    done: int  # of the files, those applied on the database now
    total: int
    no_file: list[str] = field(default_factory=list)  # applied migrations whose file is gone

    def lines(self) -> list[str]:
        gone = _without_file(self.no_file)
        if self.applied:
            return [f"PostgreSQL: applied {len(self.applied)}; {self.done} of {self.total} migrations applied"
                    + (f" ({gone})" if gone else "")]
        return [f"PostgreSQL: up to date ({self.done} of {self.total} migrations applied" + (f"; {gone})" if gone else ")")]


def _without_file(ids: list[str]) -> str:
    """The applied migrations whose file is gone (never counted among the files), in words; "" if none."""
    if not ids:
        return ""
    names = ", ".join(visible(i) for i in ids)  # (ids from history rows: Flyway's, anyone's who wrote them)
    return f"{len(ids)} applied migration{'s have' if len(ids) > 1 else ' has'} no file: {names}"


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
    no_file: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        gone = _without_file(self.no_file)
        return [f"PostgreSQL: rolled back {len(self.rolled_back)}; {self.done} of {self.total} migrations applied"
                + (f" ({gone})" if gone else "")]


@dataclass
class StatusReport:
    target: str
    states: list  # postgres.MigrationState
    invalid_indexes: list[tuple[str, str, str]]
    schema: Any  # schema.snapshot.DriftReport
    mongo: PatchStatusReport | None
    rebuilt: dict = field(default_factory=dict)  # INVALID index -> the pending migration whose build names it, ...

    @property
    def changed(self) -> list:
        return [s for s in self.states if s.changed]

    @property
    def pending(self) -> list:
        return [s for s in self.states if not s.applied_at]

    def exit_code(self, gate: bool) -> int:
        """With --exit-code: 3 while an applied file has changed, 5 while the live schema drifted, 1 while
        migrations are pending or an INVALID index exists; else 0."""
        if not gate:
            return OK
        if self.changed:
            return DRIFT
        if self.schema.drifted:
            return SCHEMA_DRIFT
        return FAILED if self.pending or self.invalid_indexes else OK

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "migrations": [{"id": s.id, "status": "pending" if s.unfilled else s.state, "unfilled_template": s.unfilled,
                            "unfilled_rollback": s.rollback_unfilled, "applied_at": _time(s.applied_at),
                            "file": str(s.path) if s.path else None, "failure": s.failure, "forged": s.forged}
                           for s in self.states],
            "applied": len(self.states) - len(self.pending),
            "pending": len(self.pending),
            "changed": [s.id for s in self.changed],
            "invalid_indexes": [f"{schema}.{index}" for schema, index, _ in self.invalid_indexes],
            "schema": self.schema.to_json(),
            "mongo": self.mongo.to_json() if self.mongo else None,
        }

    def lines(self) -> list[str]:
        lines = [f"PostgreSQL {self.target}"]
        ids = [visible(s.id) for s in self.states]  # (an id of a history row without its file: one line)
        width = max((len(i) for i in ids), default=0)
        for s, id_ in zip(self.states, ids):
            when = s.applied_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.applied_at else ""
            lines.append(f"  {id_:<{width}}  {s.state:<8}  {when}".rstrip())
            if s.failure or s.forged:
                lines.append(f"    {visible(s.failure or s.forged)}")  # server text: it may hold line breaks
        changed = self.changed
        lines.append(f"PostgreSQL: {len(self.states) - len(self.pending)} applied, {len(self.pending)} pending"
                     + (f", {len(changed)} CHANGED since applied" if changed else ""))
        unfilled = [s.id for s in self.states if s.unfilled]
        if unfilled:
            lines.append(f"  unfilled templates block `migrate`: add the SQL of {', '.join(unfilled)} (and their "
                         "rollbacks'), or delete the pairs")
        unfilled_rollbacks = [s.id for s in self.states if s.rollback_unfilled and not s.unfilled]
        if unfilled_rollbacks:
            lines.append(f"  unfilled rollback templates: {', '.join(unfilled_rollbacks)} cannot be rolled back "
                         "until their rollback's SQL is added")
        if changed:
            ids = " ".join(s.id for s in changed)
            lines.append(f"  changed files block `migrate`: restore them, or after review `runner.py sql accept-changes {ids}`")
        for item in self.invalid_indexes:
            schema, index, table = item
            name, table = visible(f"{schema}.{index}"), visible(table)  # (anyone's names: one line each)
            if getattr(item, "partitioned", False):
                lines.append(f"  INVALID index {name} on partitioned table {table}: {PARTITIONED_INVALID.format(name)}")
                continue
            if REINDEX_COPY.search(index):  # the rerun of the migration that ran it drops it
                lines.append(f"  INVALID index {name} on {table} (left by an interrupted REINDEX ... "
                             "CONCURRENTLY): run migrate again if a pending migration ran it, else "
                             f"DROP INDEX CONCURRENTLY {name}")
                continue
            if index in self.rebuilt:
                lines.append(f"  INVALID index {name} on {table} " + _rebuilt(name, *self.rebuilt[index]))
                continue
            lines.append(f"  INVALID index {name} on {table} (a failed CREATE INDEX CONCURRENTLY "
                         "or an interrupted DROP INDEX CONCURRENTLY): "
                         f"DROP INDEX CONCURRENTLY {name}; then run migrate again" + self._maybe_pending())
        lines += self.schema.lines()
        return lines + (self.mongo.lines() if self.mongo else ["MongoDB: not configured"])

    def _maybe_pending(self) -> str:
        """What status cannot tell of an INVALID index no pending build names where status resolves it: a pending
        migration stopped part-way may have left it under a path only its session knows (attack24x 3)."""
        stopped = [s.id for s in self.states if not s.applied_at and s.failure]
        return (f" (or, if an interrupted build of pending {', '.join(stopped)} left it under a search_path its file "
                "sets in a way status cannot read (a DO block, a computed set_config), `runner.py migrate` drops it "
                "and builds it again)") if stopped else ""


def _rebuilt(name: str, migration: str, failed: bool, verdict) -> str:
    """What a pending migration's rerun does with an INVALID index under its build's name, as migrate decides it
    (index_claims.rebuilt_by: the definition compared, attack24t 8)."""
    if verdict == "drop":  # (index_claims.FINISHES)
        return (f"(left by pending {migration}'s interrupted DROP INDEX CONCURRENTLY): `runner.py migrate` finishes "
                "the drop")
    if verdict is False:
        return (f"(not what pending {migration}'s CONCURRENTLY build makes: another definition under its name): "
                f"migrate will not drop it; look at it, then DROP INDEX CONCURRENTLY {name} yourself or rename the "
                "build in the file")
    then = " (fix what made that build fail first: its record above)" if failed else ""
    if verdict is None:
        return (f"(under the name of pending {migration}'s CONCURRENTLY build; its definition is compared as migrate "
                "runs, on a temporary copy of the table): `runner.py migrate` drops it and builds it again if it is "
                "what the build makes, else stops and says so" + then)
    return (f"(left by an earlier try of pending {migration}'s CONCURRENTLY build): `runner.py migrate` drops it and "
            "builds it again" + then)


@dataclass
class PlanReport:
    """`plan`'s PostgreSQL part: the SQL migrate would run (as it is, for psql), drift, lint."""

    target: str
    pending: list  # yoyo migrations, in the order migrate runs them
    drift: list  # postgres.MigrationState that changed
    findings: list  # lint.Finding
    lint_skipped: bool  # squawk is not installed here
    schema: Any = None  # schema.snapshot.DriftReport, None offline
    rewrites: list = field(default_factory=list)  # postgres.rewrites.Verdict: what migrate refuses (or a file accepts)

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
            "rewrites": [v.to_json() for v in self.rewrites],
        }

    def lines(self) -> list[str]:
        from migrator import postgres

        # Every comment line is made one line (visible): a name in it must not end the comment for psql.
        lines = [f"-- plan for {visible(self.target)}: {len(self.pending)} pending migration(s); nothing below has been run"]
        lines += [f"-- DRIFT: {visible(str(d.path))} changed since it was applied; `migrate` will refuse to run"
                  for d in self.drift]
        if self.schema is not None and self.schema.drifted:
            lines += [f"-- {visible(line)}" for line in self.schema.lines()]
        lines += [f"-- lint: {visible(str(finding))}" for finding in self.findings]
        lines += [f"-- {'REFUSED by migrate' if v.refused else 'accepted'}: {visible(v.line())}" for v in self.rewrites]
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
        if self.target is None and not self.folder:  # another service's SQL folder: no Mongo folder for this run
            return ["-- MongoDB: not configured, skipped"]
        if self.target is None:
            return [f"-- MongoDB: not configured; patches in {visible(self.folder)}/: "
                    f"{visible(', '.join(self.on_disk)) or 'none'}"]
        return ([f"-- MongoDB {visible(self.target)}: {self.pending} pending patch(es), dry-run below; nothing was written"]
                + [f"--   {visible(o.patch.id)} ({o.patch.kind}): {visible(o.comment or '(no comment)')}"
                   for o in self.outcomes])
