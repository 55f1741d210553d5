"""The SQL maintenance commands: rollback, new, mark, accept-changes, accept-drift, verify, adopt, lint, break-lock."""

from __future__ import annotations

from pathlib import Path

from migrator.commands.base import CommandSettings, locked_backend, scratch_server, watching
from migrator.commands.deploy import advancing_schema, check_schema_drift, record_schema
from migrator.errors import USAGE, MigratorError
from migrator import output, reports
from migrator.reports import Lines, RollbackReport


def rollback(settings: CommandSettings, *, count: int | None, to: str | None, all_: bool) -> RollbackReport:
    """Roll back through the .rollback.sql files, newest first (default: the last one)."""
    from migrator import postgres
    from migrator.postgres import file_grants, file_paths

    if sum(x is not None and x is not False for x in (count, to, all_)) > 1:
        raise MigratorError("give one of --count, --to and --all", USAGE)
    migrations = postgres.read_migrations(settings.sql_dir)
    done = []
    with locked_backend(settings, settings.limits()) as (backend, target):
        selected = postgres.select_rollback(backend, migrations, count=count, to=to, all_=all_, notify=settings.note)
        file_paths.refuse_reach(backend, selected, target, rollback=True)  # (past the checked path)
        file_grants.refuse(backend, selected, target, rollback=True)
        schema = check_schema_drift(settings, backend, refuse=False)
        with advancing_schema(settings, backend, "rollback", before=schema.live, files=selected) as changed, \
                watching(settings, backend, target):
            for migration, seconds in postgres.rollback(backend, target, selected):
                done.append(migration.id)
                settings.echo(f"  rolled back {migration.id} ({seconds * 1000:.0f} ms)")  # (said before its record)
                changed.append(migration.id)
        states = postgres.status(backend, migrations)
    applied, no_file = postgres.applied_counts(states)
    return RollbackReport(done, applied, len(migrations), no_file)


def new(sql_dir: Path, name: str) -> Lines:
    from migrator import postgres

    lines = [f"created {path}" for path in postgres.new(sql_dir, name)]
    if postgres.slug(name) != name:  # said, not done silently: `Add Report` is looked for as add_report
        dropped = postgres.dropped_letters(name)
        lines.insert(0, f"note: name {name!r} written as {postgres.slug(name)} (lower case, _ between words"
                        + (f"; dropped {' '.join(dropped)}: a file name takes a-z, 0-9 and _" if dropped else "") + ")")
    return Lines(lines)


def mark(settings: CommandSettings, ids: list[str]) -> reports.CountedLines:
    """Record migrations as applied without running them (adopting a database by trust; see adopt)."""
    from migrator import postgres

    migrations = postgres.read_migrations(settings.sql_dir)
    selected = postgres.select_by_id(migrations, ids)
    with locked_backend(settings, settings.limits()) as (backend, target):  # (its writes bounded by lock_timeout)
        already = set(postgres.applied_ids(backend, migrations))
        todo = [m for m in selected if m.id not in already]
        schema = check_schema_drift(settings, backend, refuse=False)
        postgres.mark(backend, todo, target.where)
        if todo:  # not over drift: what changed by hand is shown and accepted only after review (accept-drift)
            record_schema(settings, backend, "mark", schema)
    return reports.CountedLines(
        [f"  {'already applied' if m.id in already else 'marked applied'}: {m.id}" for m in selected], len(todo))


def accept_changes(settings: CommandSettings, ids: list[str]) -> reports.CountedLines:
    """After review, record the current content of applied migrations as what was applied."""
    from migrator import checksums, postgres
    from migrator.postgres import flyway, history

    migrations = postgres.read_migrations(settings.sql_dir)
    selected = postgres.select_by_id(migrations, ids)
    with locked_backend(settings, settings.limits()) as (backend, target):  # (its writes bounded by lock_timeout)
        applied = postgres.applied_ids(backend, migrations)
        not_applied = [m.id for m in selected if m.id not in applied]
        if not_applied:
            raise MigratorError(f"{', '.join(not_applied)} not applied on {target.where}: nothing to accept "
                                "(a pending file may change freely)", USAGE)
        try:
            changes = checksums.accept(backend, selected)
            if flyway.is_flyway(selected):  # Flyway's table too (as `flyway repair` realigns checksums)
                history.accept(backend, selected)
        except Exception as exc:  # a bookkeeping table another session holds: one line, as mark's
            from migrator.postgres import bookkeeping_busy

            ids, table = " ".join(m.id for m in selected), bookkeeping_busy.table(exc, backend.bookkeeping_schema,
                                                                                 backend.flyway_table)
            if table is None:
                raise
            raise bookkeeping_busy.error(backend.connection, table, f"sql accept-changes on {target.where}",
                                         "nothing was accepted (its transaction rolled back)",
                                         f"run `runner.py sql accept-changes {ids}` again once that session has let go"
                                         ) from exc
    return reports.CountedLines([f"  accepted {c.id}: sha256 {c.current[:12]} (was {c.recorded[:12] or 'nothing'})"
                                 for c in changes], len(changes))


def repair(settings: CommandSettings, ids: list[str]) -> reports.CountedLines:
    """A Flyway folder: remove the failed rows (of IDS, else all) from Flyway's table, as `flyway repair` does,
    so the next migrate runs those files again (after what they left was undone by hand)."""
    from migrator import postgres
    from migrator.postgres import flyway, history

    migrations = postgres.read_migrations(settings.sql_dir)
    if not flyway.is_flyway(migrations):
        raise MigratorError(f"{settings.sql_dir} is not a Flyway folder: `sql repair` removes failed rows from "
                            "Flyway's table; the runner's own failures are settled by migrate or `sql mark`", USAGE)
    selected = postgres.select_by_id(migrations, ids) if ids else []
    with locked_backend(settings) as (backend, _):
        with backend.transaction():
            removed = history.forget_failed(backend, selected)
    return reports.CountedLines([f"  removed {removed} failed row(s) from {history.table_name(backend)}"], removed)


def accept_drift(settings: CommandSettings) -> reports.CountedLines:
    """After review, record the live schema as the expected one (clears schema drift)."""
    from migrator import postgres
    from migrator.postgres import history
    from migrator.schema import snapshot

    flyway_folder = history.flyway.is_flyway(postgres.read_migrations(settings.sql_dir))
    with locked_backend(settings) as (backend, _):
        if flyway_folder:  # one service's history among several in the schema: its own objects' drift only
            history.scope_drift(backend)
        before = snapshot.live_drift(backend.connection, backend.bookkeeping_schema)
        recorded, left = snapshot.accept(backend.connection, backend.bookkeeping_schema, "accept-drift")
    accepted = [f"  accepted: {line}" for line in before.changes]
    others = ([f"schema: {left} change(s) in objects this history ({backend.history}) does not own left as drift "
               "(their own service's `sql accept-drift` reviews them)"] if left else [])
    line = (f"schema: recorded as it is now (sha256 {recorded.sha256[:12]}, last migration "
            f"{recorded.last_migration or 'none'})")
    return reports.CountedLines(accepted + [line] + others, len(before.changes))


def verify(settings: CommandSettings, *, from_id: str | None, scratch_url: str | None, schema: str | None = None):
    """Up-down-up proof of the migrations on a scratch database; exit 1 at the first rollback that lies.
    With a tenant's `schema`, the files run in a schema of that name, as a tenant's run runs them."""
    from migrator import postgres
    from migrator.schema import verify as proof

    migrations = postgres.read_migrations(settings.sql_dir)
    postgres.load_migrations(list(migrations))
    return proof.verify(scratch_server(settings, scratch_url), migrations, from_id, schema)


def adopt(settings: CommandSettings, *, yes: bool, scratch_url: str | None):
    """Find the newest migration whose history prefix equals the live schema; with yes, mark 1..N applied."""
    return adopt_on(settings, scratch_server(settings, scratch_url), yes=yes)


def adopt_on(settings: CommandSettings, server, *, yes: bool):
    """adopt, its prefixes built on `server`; a tenant's (settings pinned to its schema) in that schema."""
    from migrator import postgres
    from migrator.schema import adopt as adoption

    migrations = postgres.read_migrations(settings.sql_dir)
    postgres.load_migrations(list(migrations))
    target = settings.postgres_target()
    with postgres.connect(target, read_only=True) as backend:
        report = adoption.adopt(backend, server, migrations, target.schema)
    settings.show(report)
    if yes and report.matched and report.to_mark:
        with locked_backend(settings) as (backend, _):
            marked = adoption.mark_adopted(backend, migrations, report)
        settings.show(Lines([f"adopt: marked {', '.join(marked)} applied"]))
    elif report.matched and report.to_mark:
        settings.show(Lines(["adopt: nothing marked yet: run again with --yes to mark them applied"]))
    return report


def lint(sql_dir: Path, schemas: list[str] | None = None, *, pending: bool = False) -> tuple[list, int]:
    """(findings, number of migrations) of squawk over the migrations, each as the runner will run it;
    with tenant schemas, also the names qualified with public or a tenant's schema. With `pending`, only the
    files the database (each tenant's schema) has not applied: files applied years ago are not CI's concern."""
    from migrator import lint as squawk, postgres

    migrations = postgres.read_migrations(sql_dir)
    if pending:
        migrations = migrations.filter(lambda m: m.id in _pending_ids(CommandSettings(sql_dir=sql_dir), migrations))
    findings = squawk.lint(migrations)
    if schemas:
        findings = sorted(findings + squawk.tenant_findings(migrations, schemas), key=lambda f: (f.path, f.line, f.column))
    return findings, len(migrations)


def _pending_ids(settings: CommandSettings, migrations) -> set[str]:
    from migrator import postgres

    target = settings.postgres_target()
    ids: set[str] = set()
    for one in [target.for_schema(s) for s in target.schemas] or [target]:
        with postgres.connect(one, read_only=True) as backend:
            applied = postgres.applied_ids(backend, migrations)
        ids |= {m.id for m in migrations if m.id not in applied}
    return ids


def break_lock(settings: CommandSettings) -> reports.CountedLines:
    """Remove the lock row a dead runner left; a live runner's lock is refused (naming it)."""
    from migrator import pg_lock, postgres

    target = settings.postgres_target()
    with postgres.connect(target, read_only=False, unconfirmed_ok=True) as backend:  # (a lock row: no history)
        removed = pg_lock.break_dead(backend, target)
        where = pg_lock.place(backend, target)
    return reports.CountedLines([f"removed the migration lock on {where}" if removed
                                 else f"no migration lock to remove on {where}"], int(removed))


def trust_history(settings: CommandSettings, yes: bool) -> reports.CountedLines:
    """Show the history others could write until a run took their rights, and what it records as applied; with
    `yes`, confirm it (history_trust.py): migrate trusts its rows again. Nothing standing: nothing to do."""
    from migrator import history_review, history_trust, postgres

    migrations = postgres.read_migrations(settings.sql_dir)
    with locked_backend(settings, unconfirmed_ok=True) as (backend, _):
        schema, standing = backend.bookkeeping_schema, backend.distrusted
        others = [output.visible(f"  not this folder's: {schema}.{table} is unconfirmed too: confirm it with its own "
                                 "folder's trust-history") for table in sorted(backend.others_distrusted)]
        if not standing:
            return reports.CountedLines([f"history in schema {schema} is not marked unconfirmed: nothing to confirm",
                                         *others], 0)
        books = postgres.bookkeeping(backend, migrations)
        removed = history_review.removed(backend, books)
        lines = [output.visible(f"  unconfirmed: {schema}.{table} (could be written by "
                                f"{', '.join(found.get('roles', ['others']))} until {found.get('revoked_at', 'a run')})")
                 for table, found in sorted(standing.items())] + others + history_review.lines(books, removed)
        if books.flyway is None and backend.flyway_table in standing:
            lines += history_review.flyway_rows(backend, backend.flyway_table)
        if not yes:
            return reports.CountedLines(lines + [
                "nothing confirmed yet: check each migration above really ran (its objects exist), delete the rows "
                "of those that did not, then run again with --yes"], 0)
        refused = history_review.blocked(schema, books, getattr(backend, "fresh_distrust", {}), removed)
        if refused:
            raise MigratorError(refused, USAGE)
        with backend.transaction():
            history_trust.confirm(backend.connection, schema, backend.verified[10], sorted(standing))
    return reports.CountedLines(lines + [f"confirmed the history in schema {schema}: migrate trusts its rows again"],
                                len(standing))
