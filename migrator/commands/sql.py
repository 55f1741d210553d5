"""The SQL maintenance commands: rollback, new, mark, accept-changes, lint, break-lock."""

from __future__ import annotations

from pathlib import Path

from migrator.commands.base import CommandSettings, locked_backend
from migrator.errors import USAGE, MigratorError
from migrator.reports import RollbackReport


def rollback(settings: CommandSettings, *, count: int | None, to: str | None, all_: bool) -> RollbackReport:
    """Roll back through the .rollback.sql files, newest first (default: the last one)."""
    from migrator import postgres

    if sum(x is not None and x is not False for x in (count, to, all_)) > 1:
        raise MigratorError("give one of --count, --to and --all", USAGE)
    migrations = postgres.read_migrations(settings.sql_dir)
    done = []
    with locked_backend(settings, settings.limits()) as (backend, target):
        selected = postgres.select_rollback(backend, migrations, count=count, to=to, all_=all_)
        for migration, seconds in postgres.rollback(backend, target, selected):
            done.append(migration.id)
            settings.echo(f"  rolled back {migration.id} ({seconds * 1000:.0f} ms)")
        states = postgres.status(backend, migrations)
    return RollbackReport(done, sum(1 for s in states if s.applied_at), len(migrations))


def new(sql_dir: Path, name: str) -> tuple[Path, Path]:
    from migrator import postgres

    return postgres.new(sql_dir, name)


def mark(settings: CommandSettings, ids: list[str]) -> list[tuple[str, bool]]:
    """Record migrations as applied without running them: (id, was it already applied)."""
    from migrator import postgres

    migrations = postgres.read_migrations(settings.sql_dir)
    selected = postgres.select_by_id(migrations, ids)
    with locked_backend(settings) as (backend, _):
        already = set(postgres.applied_ids(backend))
        postgres.mark(backend, [m for m in selected if m.id not in already])
    return [(m.id, m.id in already) for m in selected]


def accept_changes(settings: CommandSettings, ids: list[str]) -> list:
    """After review, record the current content of applied migrations as what was applied."""
    from migrator import checksums, postgres

    migrations = postgres.read_migrations(settings.sql_dir)
    selected = postgres.select_by_id(migrations, ids)
    with locked_backend(settings) as (backend, target):
        applied = postgres.applied_ids(backend)
        not_applied = [m.id for m in selected if m.id not in applied]
        if not_applied:
            raise MigratorError(f"{', '.join(not_applied)} not applied on {target.where}: nothing to accept "
                                "(a pending file may change freely)", USAGE)
        return checksums.accept(backend, selected)


def lint(sql_dir: Path) -> tuple[list, int]:
    """(findings, number of migrations) of squawk over the migrations, each as the runner will run it."""
    from migrator import lint as squawk, postgres

    migrations = postgres.read_migrations(sql_dir)
    return squawk.lint(migrations), len(migrations)


def break_lock(settings: CommandSettings) -> str:
    from migrator import postgres

    target = settings.postgres_target()
    with postgres.connect(target, read_only=False) as backend:
        postgres.break_lock(backend)
    return target.where
