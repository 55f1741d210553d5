"""The deploy commands: migrate, plan, status, config. The rules of a deploy live here."""

from __future__ import annotations

from migrator import output
from migrator.commands import mongo as mongo_commands
from migrator.commands.base import CommandSettings, locked_backend
from migrator.reports import MigrateReport, PlanReport, StatusReport


def migrate(settings: CommandSettings) -> MigrateReport:
    """Apply every pending SQL migration, then every pending Mongo patch, for real.

    Everything that can be refused is checked before PostgreSQL changes: the files, the Mongo
    settings and patches, the DDL limits; an edited applied migration (drift) refuses the run.
    """
    from migrator import postgres
    from migrator.mongo import patches

    migrations = postgres.read_migrations(settings.sql_dir)
    mongo_target = settings.mongo_target()
    mongo_patches = patches.discover(settings.mongo_dir) if mongo_target else []
    applied = []
    with locked_backend(settings, settings.limits()) as (backend, target):
        drift = postgres.reconcile(backend, migrations, settings.note)
        if drift:
            raise postgres.drift_error(drift, target)
        for migration, seconds in postgres.apply(backend, target, migrations):
            applied.append(migration.id)
            settings.echo(f"  applied {migration.id} ({seconds * 1000:.0f} ms)")
        states = postgres.status(backend, migrations)
    done = sum(1 for s in states if s.applied_at)
    mongo = None
    if mongo_target is not None:
        mongo = mongo_commands.run_patches(settings, mongo_target, mongo_patches, names=(), run=True)
    return MigrateReport(applied, done, len(migrations), mongo)


def plan(settings: CommandSettings, *, offline: bool, mongo_dry_run: bool = True) -> PlanReport:
    """What migrate would run, read-only: the pending SQL, drift, lint, and a dry run of the Mongo patches."""
    from migrator import lint, postgres
    from migrator.mongo import actions, connection, patches

    migrations = postgres.read_migrations(settings.sql_dir)  # only the files that will run are parsed
    mongo_target = None if offline else settings.mongo_target()
    drift = []
    if offline:
        todo, where = postgres.ordered(migrations), "offline: every migration, no database consulted"
        postgres.load_migrations(todo)
    else:
        target = settings.postgres_target()
        with postgres.connect(target, read_only=True) as backend:
            todo = postgres.pending(backend, migrations)
            drift = [s for s in postgres.status(backend, migrations) if s.changed]
        where = target.display_url
    findings, skipped = [], None
    if todo and lint.squawk_path() is None:
        skipped = "note: lint skipped: squawk is not installed here (`make install` brings it)"
        settings.note(skipped)
    elif todo:
        findings = lint.lint(todo)
    report = PlanReport(where, todo, drift, findings, skipped, mongo_dir_name=settings.mongo_dir.name)
    mongo_patches = patches.discover(settings.mongo_dir) if settings.mongo_dir.is_dir() else []
    if mongo_target is None or not mongo_dry_run:
        report.mongo_patch_ids = [p.id for p in mongo_patches]
        return report
    with connection.connect(mongo_target) as db:
        report.mongo_pending = len(actions.pending(db, mongo_patches))
        with output.patch_output(err=True):  # the patches' own output stays off the SQL on stdout
            report.mongo_outcomes = list(actions.apply(db, mongo_target, mongo_patches, run=False, lock_wait=0,
                                                       echo=settings.note))
    report.mongo_target = f"{mongo_target.display_uri} ({mongo_target.database})"
    return report


def status(settings: CommandSettings) -> StatusReport:
    """Every migration's state and every patch's, read-only."""
    from migrator import postgres

    migrations = postgres.read_migrations(settings.sql_dir)  # listing needs no parsing
    mongo_target = settings.mongo_target()
    target = settings.postgres_target()
    with postgres.connect(target, read_only=True) as backend:
        states = postgres.status(backend, migrations)
        invalid = postgres.invalid_indexes(backend)
    mongo = mongo_commands.patch_status(settings, mongo_target) if mongo_target else None
    return StatusReport(target.display_url, states, invalid, mongo)


def config(settings: CommandSettings) -> list[str]:
    """The resolved connections and where each setting came from; connects to nothing."""
    from migrator.settings import resolve_mongo, resolve_postgres

    env = settings.env
    mongo = resolve_mongo(settings.mongo, env)
    target = resolve_postgres(settings.postgres, env)
    lines = list(target.notes)
    if target.local_dev:
        from migrator import devdb

        lines.append(f"PostgreSQL: local development database in {devdb.data_dir(env)} "
                     "(nothing configured; started on first use)")
    else:
        lines.append(f"PostgreSQL: {target.display_url}")
        origin = target.sources.get("url")
        rows = [("host", "host", target.host or target.params.get("host")), ("port", "port", target.port),
                ("database", "dbname", target.dbname), ("user", "user", target.user),
                ("password", "password", "***" if target.password else "(none)")]
        for label, key, value in rows:
            lines.append(f"  {label:<9} {value!s:<30} {origin or target.sources.get(key, 'default')}")
        lines.append(f"  {'tls':<9} {target.tls}")
    lines.append(f"  {'sql dir':<9} {settings.sql_dir}")
    if mongo is None:
        return lines + ["MongoDB: not configured (set MONGO_URL and MONGO_DB, or MONGO_SECRET_NAME)"]
    lines += mongo.notes
    lines += [f"MongoDB: {mongo.display_uri}",
              f"  {'database':<9} {mongo.database:<30} {mongo.sources['database']}",
              f"  {'url':<9} {mongo.hosts:<30} {mongo.sources['url']}",
              f"  {'tls':<9} {mongo.tls}"]
    if mongo.documentdb:
        lines.append(f"  {'options':<9} retryWrites=false (DocumentDB)")
    return lines + [f"  {'mongo dir':<9} {settings.mongo_dir}"]
