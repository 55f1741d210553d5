"""Adopt an existing database by comparison, not by faith: build each prefix of the history on a
scratch database and find the newest migration N whose schema equals the live database's.

Another tool's bookkeeping (Alembic's `alembic_version`) is left out of the comparison. Only the
schema is compared: a migration that changes no schema (a data load) matches like its predecessor,
so the report names such migrations for the operator to check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from migrator import postgres
from migrator.schema import snapshot
from migrator.schema.describe import describe
from migrator.schema.diff import diff
from migrator.schema.scratch import scratch
from migrator.targets import PostgresTarget

OTHER_TOOLS_TABLES = {"public.alembic_version"}
EMPTY = "(no migration)"


@dataclass
class AdoptReport:
    matched: str | None  # the newest migration whose prefix equals the live schema
    same_schema: list[str] = field(default_factory=list)  # earlier ids matching too (they change no schema)
    closest: str | None = None  # when nothing matched: the prefix with the fewest differences
    changes: list[str] = field(default_factory=list)  # closest prefix -> live database
    to_mark: list[str] = field(default_factory=list)  # 1..N not yet marked applied on the live database
    already: list[str] = field(default_factory=list)  # 1..N already marked
    newest_match: str | None = None  # when refused: the newest prefix that matched
    refused: str = ""  # why nothing may be marked although a prefix matched (said in one line)
    ambiguous: list[str] = field(default_factory=list)  # matching prefixes separated by schema-changing ones

    @property
    def ok(self) -> bool:
        return self.matched is not None

    def lines(self) -> list[str]:
        if self.refused:
            return [f"adopt: {self.refused}; nothing marked"]
        if self.matched == EMPTY:
            return ["adopt: the database matches no migration (the empty history): nothing to mark"]
        if self.matched is None:
            return ([f"adopt: no prefix of the history matches the database; closest: up to {self.closest} "
                     f"({len(self.changes)} difference(s), history -> database):"]
                    + [f"  {line}" for line in self.changes]
                    + ["adopt: nothing marked; make the database match (or write a migration), then adopt again"])
        lines = [f"adopt: the database matches the history up to {self.matched}"]
        if self.same_schema:
            lines.append(f"  note: {', '.join(self.same_schema)} change no schema (the comparison cannot tell "
                         "whether their data is there): check before marking")
        if self.already:
            lines.append(f"  already marked applied: {', '.join(self.already)}")
        lines.append(f"  to mark applied: {', '.join(self.to_mark)}" if self.to_mark else "  nothing to mark")
        return lines

    def to_json(self) -> dict:
        return {"matched": self.matched, "same_schema": self.same_schema, "closest": self.closest,
                "changes": self.changes, "to_mark": self.to_mark, "already": self.already, "refused": self.refused,
                "ambiguous": self.ambiguous}


def adopt(backend, server: PostgresTarget, migrations, schema: str | None = None) -> AdoptReport:
    """Compare the live database (a yoyo backend, read-only is enough) with each prefix of the history, built on a
    scratch database on `server`'s server. Writes nothing to the live database. With a tenant's `schema`
    (the backend's), the prefixes are built as a tenant run builds them, in a schema of that name."""
    others = OTHER_TOOLS_TABLES | ({f"{schema}.alembic_version"} if schema else set())
    live = describe(backend.connection, backend.bookkeeping_schema).without_tables(others)
    todo = list(postgres.ordered(migrations))
    with scratch(server, schema) as db:
        prefixes = [(EMPTY, db.describe())]  # (id, description), the empty history first
        for migration in todo:
            db.apply(migration)
            prefixes.append((migration.id, db.describe()))
    matching = [i for i, (_, description) in enumerate(prefixes) if description == live]
    if not matching:
        scored = [(len(diff(d, live)), -i, mid, d) for i, (mid, d) in enumerate(prefixes)]
        _, _, closest, description = min(scored)
        return AdoptReport(None, closest=closest, changes=diff(description, live))
    newest = matching[-1]
    run = newest  # the contiguous run of matches ending at the newest: migrations in it change no schema
    while run - 1 in matching:
        run -= 1
    marked = set(postgres.applied_ids(backend, migrations))
    ids = [mid for mid, _ in prefixes[1: newest + 1]]
    report = AdoptReport(prefixes[newest][0], same_schema=[prefixes[i][0] for i in matching if i != newest and i > 0],
                         to_mark=[i for i in ids if i not in marked], already=[i for i in ids if i in marked])
    if matching[0] < run:
        report.ambiguous = [prefixes[i][0] for i in matching]
        report.refused = (f"the match is ambiguous: the database equals the history up to each of "
                          f"{', '.join(report.ambiguous)}, and migrations between them change the schema; "
                          "mark the right ones with `runner.py sql mark`")
    later = [mid for mid, _ in prefixes[newest + 1:] if mid in marked]
    if later:
        report.refused = (f"{', '.join(later)} {'is' if len(later) == 1 else 'are'} marked applied but the database "
                          f"does not have {'its' if len(later) == 1 else 'their'} schema (it matches up to "
                          f"{report.matched}); check them (`runner.py sql rollback` or re-create what they made)")
    if report.refused:  # matched None: the commands mark nothing and exit non-zero
        report.newest_match, report.matched, report.to_mark = report.matched, None, []
    elif newest == 0:
        report.matched, report.to_mark, report.already = EMPTY, [], []
    return report


def mark_adopted(backend, migrations, report: AdoptReport) -> list[str]:
    """`sql adopt --yes`, under the migration lock: mark the report's migrations applied (as `sql
    mark` does, checksums included) and record the schema. Returns the ids marked."""
    if not report.ok or not report.to_mark:
        return []
    already = set(postgres.applied_ids(backend, migrations))
    selected = postgres.select_by_id(migrations, [i for i in report.to_mark if i not in already])
    postgres.mark(backend, selected)
    snapshot.record(backend.connection, backend.bookkeeping_schema, "adopt")
    return [m.id for m in selected]
