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


@dataclass
class AdoptReport:
    matched: str | None  # the newest migration whose prefix equals the live schema
    same_schema: list[str] = field(default_factory=list)  # earlier ids matching too (they change no schema)
    closest: str | None = None  # when nothing matched: the prefix with the fewest differences
    changes: list[str] = field(default_factory=list)  # closest prefix -> live database
    to_mark: list[str] = field(default_factory=list)  # 1..N not yet marked applied on the live database
    already: list[str] = field(default_factory=list)  # 1..N already marked

    def lines(self) -> list[str]:
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
                "changes": self.changes, "to_mark": self.to_mark, "already": self.already}


def adopt(backend, server: PostgresTarget, migrations) -> AdoptReport:
    """Compare the live database (a yoyo backend, read-only is enough) with each prefix of the history, built on a
    scratch database on `server`'s server. Writes nothing to the live database."""
    live = describe(backend.connection, backend.bookkeeping_schema).without_tables(OTHER_TOOLS_TABLES)
    todo = list(postgres.ordered(migrations))
    prefixes = []  # (id, description), oldest first
    with scratch(server) as db:
        for migration in todo:
            db.apply(migration)
            prefixes.append((migration.id, db.describe()))
    matching = [i for i, (_, description) in enumerate(prefixes) if description == live]
    if not matching:
        if not prefixes:
            return AdoptReport(None, closest="(no migrations)", changes=[])
        scored = [(len(diff(d, live)), -i, mid, d) for i, (mid, d) in enumerate(prefixes)]
        _, _, closest, description = min(scored)
        return AdoptReport(None, closest=closest, changes=diff(description, live))
    newest = matching[-1]
    marked = set(postgres.applied_ids(backend))
    ids = [mid for mid, _ in prefixes[: newest + 1]]
    return AdoptReport(prefixes[newest][0], same_schema=[prefixes[i][0] for i in matching[1:]],
                       to_mark=[i for i in ids if i not in marked], already=[i for i in ids if i in marked])


def mark_adopted(backend, migrations, report: AdoptReport) -> list[str]:
    """`sql adopt --yes`, under the migration lock: mark the report's migrations applied (as `sql
    mark` does, checksums included) and record the schema. Returns the ids marked."""
    if report.matched is None:
        return []
    already = set(postgres.applied_ids(backend))
    selected = postgres.select_by_id(migrations, [i for i in report.to_mark if i not in already])
    postgres.mark(backend, selected)
    snapshot.record(backend.connection, backend.bookkeeping_schema, "adopt")
    return [m.id for m in selected]
