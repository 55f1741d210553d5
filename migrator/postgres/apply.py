"""Changing the database: apply, roll back, mark; each migration through yoyo, each in its own session."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from migrator import checksums, pg_lock
from migrator.errors import USAGE, MigratorError
from migrator.postgres.errors import StatementFailed, migration_error
from migrator.postgres.migration import load_migrations, rollback_path
from migrator.postgres.state import bookkeeping
from migrator.targets import PostgresTarget


@contextmanager
def locked(backend, target: PostgresTarget, timeout: float, notify) -> Iterator[None]:
    """The crash-safe migration lock (pg_lock), with the checksum table ready under it."""
    with pg_lock.held(backend, target, timeout, notify):
        checksums.ensure_table(backend)
        yield


def _run_one(backend, target: PostgresTarget, migration, verb: str, path: Path, run) -> float:
    """Run yoyo's apply/rollback of one migration; a failure becomes one true line."""
    started = time.perf_counter()
    try:
        run()
    except StatementFailed as exc:
        if not exc.transactional and exc.index and verb == "apply":
            checksums.record_failure(backend, migration.id, f"{exc.path}:{exc.line}: {exc.committed()}")
        raise migration_error(exc, migration, target.where, verb, path)
    except backend.DatabaseError as exc:
        failed = exc.__context__ if isinstance(exc.__context__, StatementFailed) else exc
        raise migration_error(failed, migration, target.where, verb, path)
    return time.perf_counter() - started


def apply(backend, target: PostgresTarget, migrations) -> Iterator[tuple[object, float]]:
    """Apply each pending migration in yoyo's order, each in its own transaction and session;
    yield (migration, seconds) as each lands. Every pending file is read and checked first."""
    from yoyo.migrations import MigrationList

    todo = backend.to_apply(migrations)
    load_migrations(todo)
    failures = bookkeeping(backend).failures
    for migration in todo:
        seconds = _run_one(backend, target, migration, "apply", Path(migration.path),
                           lambda: backend.apply_migrations(MigrationList([migration])))
        if migration.id in failures:
            checksums.clear_failures(backend, [migration.id])
        yield migration, seconds


def select_rollback(backend, migrations, *, count: int | None, to: str | None, all_: bool) -> list:
    """The applied migrations to roll back, newest first; checks their rollback files first."""
    applied = list(backend.to_rollback(migrations))
    if to is not None:
        ids = [m.id for m in applied]
        if to not in ids:
            known = ", ".join(reversed(ids)) or "none"
            raise MigratorError(f"--to {to}: no applied migration has that id (applied: {known})", USAGE)
        selected = applied[: ids.index(to)]
    elif all_:
        selected = applied
    else:
        selected = applied[: count if count is not None else 1]
    for migration in selected:
        migration.load()
        migration.rollback_statements()
    return selected


def rollback(backend, target: PostgresTarget, selected) -> Iterator[tuple[object, float]]:
    from yoyo.migrations import MigrationList

    for migration in selected:
        yield migration, _run_one(backend, target, migration, "roll back", rollback_path(migration),
                                  lambda: backend.rollback_migrations(MigrationList([migration])))


def select_by_id(migrations, ids: list[str]) -> list:
    by_id = {m.id: m for m in migrations}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise MigratorError(f"unknown migration id {', '.join(unknown)}; `runner.py status` lists the ids", USAGE)
    return [by_id[i] for i in ids]


def mark(backend, selected) -> None:
    from yoyo.migrations import MigrationList

    backend.mark_migrations(MigrationList(selected))
    checksums.accept(backend, selected)
    checksums.clear_failures(backend, [m.id for m in selected])


def break_lock(backend) -> None:
    backend.break_lock()
