"""What the database says was applied, read without writing, and repairs made under the lock."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from yoyo.migrations import get_migration_hash

from migrator import checksums, forged_marks, history_trust, output
from migrator.errors import DRIFT, USAGE, MigratorError
from migrator.postgres import flyway
from migrator.postgres.connection import MIGRATION_TABLE
from migrator.postgres.errors import nothing_committed
from migrator.postgres.migration import load_migrations, ordered
from migrator.targets import PostgresTarget

if TYPE_CHECKING:  # (history: a Flyway folder's, loaded only for one)
    from migrator.postgres import history


@dataclass
class MigrationState:
    id: str
    path: Path | None
    applied_at: datetime | None
    changed: bool = False  # applied, and the file differs from what was applied
    failure: str | None = None  # a non-transactional file (or rollback) stopped part-way: what it left committed
    unfilled: bool = False  # pending, and still the template `sql new` wrote
    rollback_unfilled: bool = False  # its rollback file is still the template `sql new` wrote
    forged: str | None = None  # marked by no run (forged_marks.forged's sign): not applied

    @property
    def state(self) -> str:
        if self.forged:
            return "pending, FORGED mark?"
        if self.path is None:
            return "applied, file missing"
        if self.changed:
            return "applied, CHANGED since"
        if self.applied_at:
            return "applied, PARTLY rolled back" if self.failure else "applied"
        if self.failure and nothing_committed(self.failure):
            return "pending, interrupted"  # (what it says: nothing committed, or an INVALID index it may have left)
        if self.failure:
            return "pending, PARTLY applied"
        return "pending, UNFILLED template" if self.unfilled else "pending"


@dataclass
class Bookkeeping:
    applied: dict[str, datetime]  # id -> applied_at (yoyo's marks)
    sums: dict[str, str]  # id -> recorded sha256
    failures: dict[str, str]  # id -> what a failed non-transactional run left committed
    marked: set[str] = field(default_factory=set)  # yoyo's own marks (applied also counts Flyway's table)
    flyway: history.FlywayBooks | None = None  # a Flyway folder's history of record
    # [id, hash] of yoyo's marks whose migration_hash is not yoyo's hash of their id: such a row marks another
    # migration applied for yoyo (keyed by hash) while status reads its id (attack23s 4); refused by reconcile.
    # (A Flyway file's mark is keyed by its history's table, flyway.history_hash, which a schema's other
    # services' marks differ in: a Flyway-shaped id is let pass only with that key of this history's table or a key
    # none of this folder's migrations has; one counting another of them applied is refused, attack23t 2.)
    mismatched: list[tuple[str, str]] = field(default_factory=list)
    migrations: object = None  # this folder's (keyed's)
    table: str = "flyway_schema_history"  # its Flyway history's, which keys a Flyway file's mark

    @cached_property
    def keyed(self) -> dict[str, str]:
        """yoyo's key (migration_hash) -> this folder's migration id; read only where a mark needs it or a review
        does (cost follows the work: a hash per file)."""
        return {_key(self.table, m.id): m.id for m in self.migrations or ()}


def bookkeeping(backend, migrations=None) -> Bookkeeping:
    """Read-only (yoyo's own reader may create its tables). A checksum without a mark is a migration
    committed but not marked. Flyway's table (a Flyway folder's history of record) counts too: what it
    records applied is applied, its failed rows are failures (history.books)."""
    names = {"marks": backend.qualified(MIGRATION_TABLE), "sums": backend.qualified(checksums.TABLE),
             "failures": backend.qualified(checksums.FAILURES)}
    has_marks, has_sums, has_failures, old = backend.execute(
        "SELECT to_regclass(:marks) IS NOT NULL, to_regclass(:sums) IS NOT NULL, to_regclass(:failures) IS NOT NULL, "
        "NOT EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid = to_regclass(:marks) "
        "AND attname = 'migration_hash')", names).fetchone()
    if has_marks and old:  # yoyo < 6's (id, ctime): refused in one line (layout.py)
        from migrator.postgres import layout

        layout.current(backend, False)
    marks = sums = failures = []
    if has_marks:
        marks = backend.execute(f"SELECT migration_id, applied_at_utc, migration_hash FROM {names['marks']} "
                                "ORDER BY applied_at_utc").fetchall()
    if has_sums:
        sums = backend.execute(f"SELECT migration_id, sha256 FROM {names['sums']}").fetchall()
    if has_failures:
        failures = backend.execute(f"SELECT migration_id, what FROM {names['failures']}").fetchall()
    books = Bookkeeping({i: at for i, at, _ in marks}, {i: sha.strip() for i, sha in sums}, dict(failures),
                        {i for i, _, _ in marks}, migrations=migrations,
                        table=getattr(backend, "flyway_table", None) or "flyway_schema_history")
    books.mismatched = [(i, h) for i, _, h in marks if h != get_migration_hash(i) and h != _key(books.table, i)
                        and (not flyway.parse(i + ".sql") or h in books.keyed)]
    flyway_folder = flyway.is_flyway(migrations) if migrations is not None else bool(backend.history)
    if flyway_folder:  # (without the files: when this run's backend already met its Flyway folder)
        from migrator.postgres import history

        books.flyway = history.books(backend, migrations)
    if migrations is not None and flyway_folder:
        history.scope_drift(backend, migrations, books.flyway, books.marked)  # its own objects' drift only
    if flyway_folder and migrations is not None:
        # A Flyway folder's record is Flyway's table alone (none yet: an empty history): yoyo's marks and the
        # runner's checksums of another service in the same schema (a file name both use) are not this folder's.
        books.applied, books.sums = dict(books.flyway.applied) if books.flyway else {}, {}
    if books.flyway is not None:
        for script_id in books.flyway.stale:
            books.applied.pop(script_id, None)
        books.applied.update(books.flyway.applied)
        for script_id, row in books.flyway.failed.items():
            books.failures.setdefault(script_id, f"{books.flyway.table} records {row.script} as FAILED "
                                                 f"(installed_rank {row.rank}): what it left committed is unknown")
    return books


def _key(table: str, migration_id: str) -> str:
    """yoyo's key of a migration's mark: a Flyway file's is per history table (connection._per_history)."""
    return flyway.history_hash(table, migration_id) if flyway.parse(migration_id + ".sql") \
        else get_migration_hash(migration_id)


def drift_of(migrations, books: Bookkeeping) -> list:
    """Applied files changed since: the runner's sha256, or Flyway's checksum where Flyway's table has one."""
    crcs = books.flyway.crcs if books.flyway else {}
    drift = checksums.drifted(migrations, set(books.applied), {i: s for i, s in books.sums.items() if i not in crcs})
    if books.flyway is None:
        return drift
    from migrator.postgres import history

    return drift + history.drifted(migrations, books.flyway)


def applied_ids(backend, migrations=None) -> dict[str, datetime]:
    return bookkeeping(backend, migrations).applied


def status(backend, migrations, books: Bookkeeping | None = None) -> list[MigrationState]:
    """`books`: the bookkeeping as read a moment ago (reconciled()), else read now."""
    books = books or bookkeeping(backend, migrations)
    changed = {d.id for d in drift_of(migrations, books)}
    forged = forged_marks.forged(backend, books)  # (attack23v 2: counted pending, the sign shown)
    states = [MigrationState(m.id, Path(m.path), None if m.id in forged else books.applied.get(m.id),
                             m.id in changed, _failure(books, m.id), forged=forged.get(m.id))
              for m in ordered(migrations)]
    on_disk = {m.id for m in migrations}
    states += [MigrationState(id_, None, at) for id_, at in books.applied.items() if id_ not in on_disk]
    return states


def applied_counts(states: list[MigrationState]) -> tuple[int, list[str]]:
    """(how many of the files are applied, the applied ids whose file is gone): counts of files never
    include a migration without one (so "N of M applied" stays within M)."""
    return (sum(1 for s in states if s.applied_at and s.path is not None),
            [s.id for s in states if s.path is None])


def _failure(books: Bookkeeping, migration_id: str) -> str | None:
    """A pending migration's partial apply, or an applied one's partial rollback."""
    what = books.failures.get(migration_id)
    if what is None or (migration_id in books.applied) != what.startswith(checksums.ROLLBACK):
        return None
    return what


def pending(backend, migrations):
    """The migrations `migrate` would run, in its order, loaded (so refusals show before anything runs)."""
    applied = applied_ids(backend, migrations)
    todo = ordered(migrations.filter(lambda m: m.id not in applied))
    load_migrations(todo)
    return todo


# The bookkeeping reconcile read, per backend, when it changed none of it: a migrate that then runs nothing reports
# from it rather than read it again (nothing was written since: the run holds the lock). Taken once (reconciled).
_unchanged: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def reconciled(backend) -> Bookkeeping | None:
    """The bookkeeping the last reconcile on `backend` read and left as it was, once; None when it changed any."""
    return _unchanged.pop(backend, None)


def reconcile(backend, migrations, notify) -> list:
    """Under the lock, before migrating: repair and record what earlier runs left, return the drift.

    A checksum without yoyo's mark is a migration that committed before its runner died: mark it
    (a non-transactional file records its checksum only after all its statements committed).
    Applied migrations without a checksum predate drift detection: record today's files.
    """
    _unchanged.pop(backend, None)
    books = bookkeeping(backend, migrations)
    if books.flyway is None and not flyway.is_flyway(migrations):
        return _reconcile_plain(backend, migrations, notify, books)
    from migrator.postgres import history  # (a Flyway folder's history of record)

    if books.flyway is None:
        history.refuse_other_table(backend, migrations, notify)
        history.ensure_table(backend)  # the history of record from the first run on, as Flyway would make it
        history_trust.own_rows_only(backend.connection, backend.bookkeeping_schema, [history.table_name(backend)], "script")
        books = bookkeeping(backend, migrations)
    if books.flyway is not None:
        taken = history.sync(backend, migrations, books.flyway, notify)
        history.take_over(backend, migrations, books.flyway, taken)
        pending_ids = {m.id for m in migrations if m.id not in books.applied}
        history.refuse_failed(books.flyway, pending_ids, backend.bookkeeping_schema)
        history.refuse_renamed(books.flyway, migrations)
        history.out_of_order(migrations, books.flyway, [m for m in migrations if m.id in pending_ids], notify,
                             backend.out_of_order)
        return drift_of(migrations, books)
    return _reconcile_plain(backend, migrations, notify, books)


def _reconcile_plain(backend, migrations, notify, books: Bookkeeping) -> list:
    """reconcile's repairs of yoyo's marks and the runner's checksums."""
    from yoyo.migrations import MigrationList

    if books.mismatched:
        raise MigratorError(mismatch_error(backend.qualified(MIGRATION_TABLE), books.mismatched, books.keyed), USAGE)
    forged = forged_marks.forged(backend, books)  # (before record_missing would give it a checksum row)
    if forged:
        raise MigratorError(output.visible(f"refusing to migrate: {backend.qualified(MIGRATION_TABLE)} holds a mark "
                                           f"no run wrote (forged?): {'; '.join(forged.values())}"), USAGE)
    applied = set(books.marked)
    committed = [m for m in migrations if m.id in books.sums and m.id not in applied]
    if committed:
        backend.mark_migrations(MigrationList(committed))
        applied |= {m.id for m in committed}
        notify(f"note: marked {', '.join(m.id for m in committed)} applied: committed by a runner that died before marking it")
    recorded_now = checksums.record_missing(backend, migrations, applied, books.sums)
    if recorded_now:
        notify(f"note: recorded the checksums of {len(recorded_now)} migration(s) applied before drift detection")
    settled = [i for i, what in books.failures.items() if i in applied and not what.startswith(checksums.ROLLBACK)]
    checksums.clear_failures(backend, settled)
    books.applied = {i: at for i, at in books.applied.items() if i in applied}
    if not (committed or recorded_now or settled):
        _unchanged[backend] = books
    return drift_of(migrations, books)


def mismatch_error(table: str, mismatched: list[tuple[str, str]], keyed: dict[str, str]) -> str:
    """The one line refusing marks whose hash is not their id's (hand-edited or forged); `keyed`: Bookkeeping's."""
    said = "; ".join(f"migration_id {i} with migration_hash {h}, the hash of {keyed.get(h, 'no migration here')}"
                     for i, h in mismatched)
    return output.visible(
        f"refusing to migrate: {table} holds marks whose migration_hash is not yoyo's hash of their migration_id ({said}): "
        f"yoyo would treat another migration as applied than the one status shows; check what really ran, then "
        f"DELETE FROM {table} WHERE migration_hash = '<that hash>' for each such row")


def drift_error(drift: list, target: PostgresTarget, verb: str = "migrate refuses to run",
                redo: str | None = None) -> MigratorError:
    """`redo`: on the local development database, the commands that take back every changed file and apply it
    again, on exactly what this run targeted (a migration still being written, not merged yet, is redone)."""
    files = ", ".join(str(d.path) for d in drift)
    ids = " ".join(d.id for d in drift)
    local = (f"; not merged yet? redo it on this local database: `{redo}` (its rollback file must undo what was "
             "applied)") if redo else ""
    return MigratorError(
        f"{verb}: {files} changed since applied to {target.where}; restore the applied version, or after review "
        f"run `runner.py sql accept-changes {ids}` (new changes belong in a new migration){local}",
        DRIFT,
    )


def lacking_privileges(backend, schema: str | None, wanted: tuple[str, ...]) -> tuple[str, str, list[str]]:
    """(user, database, the privileges of `wanted` the user lacks on `schema`, or on the database when None)."""
    check = ("has_schema_privilege(:schema, :privilege)" if schema is not None
             else "has_database_privilege(current_database(), :privilege)")
    lacking = [p for p in wanted
               if not backend.execute(f"SELECT {check}", {"schema": schema, "privilege": p}).fetchone()[0]]
    user, database = backend.execute("SELECT current_user, current_database()").fetchone()
    return user, database, lacking


class InvalidIndex(tuple):
    """(schema, index, table); `partitioned`: a partitioned table's index, INVALID until every partition's index is
    attached (CREATE INDEX ... ON ONLY), which DROP INDEX CONCURRENTLY refuses."""

    partitioned: bool = False


def invalid_indexes(backend) -> list[tuple[str, str, str]]:
    """(schema, index, table) of indexes left INVALID, e.g. by a failed CREATE INDEX CONCURRENTLY (InvalidIndex)."""
    found = []
    for schema, index, table, partitioned in backend.execute(
        """
        SELECT n.nspname, c.relname, t.relname, c.relkind = 'I' FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        ORDER BY 1, 2
        """
    ).fetchall():
        found.append(InvalidIndex((schema, index, table)))
        found[-1].partitioned = partitioned
    return found
