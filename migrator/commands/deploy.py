"""The deploy commands: migrate, plan, status, config. The rules of a deploy live here."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from migrator import output, pg_lock, reports
from migrator.commands.base import PROJECT_ROOT, CommandSettings, locked_backend, watching
from migrator.errors import SCHEMA_DRIFT, USAGE, MigratorError
from migrator.reports import (MONGO_NOT_CONFIGURED, Lines, MigrateReport, MongoPlanReport, PlanReport, SqlMigrateReport,
                              StatusReport)


def migrate(settings: CommandSettings, checked: tuple | None = None) -> MigrateReport:
    """Apply every pending SQL migration, then every pending Mongo patch, for real; show each part when done.

    Everything that can be refused is checked before PostgreSQL changes: the files, the Mongo settings and patches,
    the DDL limits (`checked`: checks() made already). An edited applied migration refuses the run; live schema drift
    is said first, and refuses it with --strict. The recorded schema moves forward by what the migrations changed
    (drift stays drift, for `sql accept-drift`)."""
    migrations, mongo_target, mongo_patches = checked or checks(settings)
    sql = migrate_sql(settings, migrations)
    settings.show(sql)  # before the Mongo part: the Job's log says where PostgreSQL ended, whatever follows
    return MigrateReport(sql, migrate_mongo(settings, mongo_target, mongo_patches))


def checks(settings: CommandSettings) -> tuple:
    """(the SQL files, the Mongo target, its patches: read only where Mongo is configured), each checked."""
    from migrator import postgres

    migrations, mongo_target = postgres.read_migrations(settings.sql_dir), settings.mongo_target()
    if not mongo_target:
        return migrations, mongo_target, []
    from migrator.mongo import patches

    return migrations, mongo_target, patches.discover(settings.mongo_dir)


def migrate_sql(settings: CommandSettings, migrations) -> SqlMigrateReport:
    """migrate's PostgreSQL part, on the one target settings resolve (a tenant's schema: see tenants.py)."""
    from migrator import postgres

    applied = []
    with (_said_if_interrupted(settings, applied),
          locked_backend(settings, settings.limits(), migrating=True) as (backend, target)):
        if not target.schema:
            _say_other_histories(settings, backend)
        drift = postgres.reconcile(backend, migrations, settings.note)
        if drift:  # on the local development database, the redo of a migration not merged yet is suggested
            redo = postgres.redo_count(backend, migrations, drift) if target.local_dev else None
            raise postgres.drift_error(drift, target, redo=_redo_command(settings, target, redo))
        schema = check_schema_drift(settings, backend, refuse=settings.strict, refresh=True, migrations=migrations)
        # A drift check answered from a description read before the lock (a run over many tenants) leaves
        # nothing to describe when nothing is pending; else advancing_schema describes it, under the lock.
        if schema.live is not None or schema.recorded is None or backend.to_apply(migrations):
            _apply_pending(settings, backend, target, migrations, schema, applied)
            states = postgres.status(backend, migrations)
        else:  # nothing ran: the bookkeeping is as reconcile read it (unless it repaired some: read again)
            states = postgres.status(backend, migrations, postgres.reconciled(backend))
    done, no_file = postgres.applied_counts(states)
    return SqlMigrateReport(applied, done, len(migrations), no_file)


@contextlib.contextmanager
def _said_if_interrupted(settings: CommandSettings, applied: list) -> Iterator[None]:
    """SIGTERM outside the steps that say their own stop (connecting, the migration lock's row, the history,
    between the migrations): one line of what was (not) applied, never the default action's silent exit 143.
    A plain handler, not a guard: the steps with their own (the lock wait, the schema description, the
    migrations) install theirs over it and say more; a tenant run's guard is left alone."""
    import signal
    import threading

    from migrator import interrupt

    if interrupt.guarded() or threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = signal.signal(signal.SIGTERM, interrupt.stop)
    try:
        yield
    except interrupt.Interrupted as exc:
        done = (f"{len(applied)} migration(s) applied and committed ({', '.join(applied)}), no other started"
                if applied else "no migration was applied")
        raise MigratorError(f"{settings.postgres_target().where}: {exc} outside any migration: {done}; the migration "
                            "lock, if taken, ended with the session; run migrate again", 128 + exc.signum) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)


def _redo_command(settings: CommandSettings, target, count: int | None) -> str | None:
    """make's redo of `count` migrations on exactly what this run targets: its schema (one schema's count: a
    tenant run's schemas each get their own) and its folder; None when the folder cannot be said in ARGS='...'
    (a path to quote, several Flyway locations)."""
    import shlex

    if not count or len(getattr(settings.sql_dir, "locations", ())) > 1:  # several Flyway locations: not one folder
        return None
    args = [f"--schema {target.schema}"] if target.schema else []
    folder = Path(settings.sql_dir).resolve()
    if folder != PROJECT_ROOT / "sql":
        shown = str(folder.relative_to(PROJECT_ROOT)) if folder.is_relative_to(PROJECT_ROOT) else str(folder)
        if shlex.quote(shown) != shown:
            return None
        args.append(f"--sql-dir {shown}")
    where = " ".join(args)
    return (f"make rollback ARGS='--count {count}{' ' + where if where else ''}' && make migrate"
            + (f" ARGS='{where}'" if where else ""))


def _say_other_histories(settings: CommandSettings, backend) -> None:
    """A run without schemas on a central instance migrates its own history only: say which tenants it leaves
    (a Job whose SCHEMA_NAME went missing would otherwise report success having migrated no tenant)."""
    others = backend.tenant_schemas  # (read when the connection was pinned)
    if others:
        settings.note(output.visible(  # (the catalogs' names: escaped, one line)
            f"note: schema(s) {others.replace(',', ', ')} hold their own histories (tenants'), which a run without "
            f"--schema / SCHEMA_NAME leaves alone; this run migrates {backend.bookkeeping_schema}'s history only"))


def _apply_pending(settings: CommandSettings, backend, target, migrations, schema, applied: list) -> None:
    from migrator import postgres
    from migrator.postgres import conforming, file_grants, file_paths, rewrites
    from migrator.postgres.apply import recheck

    todo = backend.to_apply(migrations)
    if todo:  # who may plant where a file resolves names, read once one will run (connect's planted_later)
        recheck(backend, target)
    postgres.load_migrations(todo)  # every pending file read and checked before the verdicts, and before anything runs
    conforming.refuse_before(backend.connection, todo, target.where)  # (read otherwise than judged: attack24q 3)
    file_paths.refuse_reach(backend, todo, target)  # (what the files reach beyond the checked path)
    file_grants.refuse(backend, todo, target)  # (a right a file grants, used before its next statement)
    refused = rewrites.refusal(rewrites.judge(backend.connection, todo, threshold=settings.rewrite_threshold(),
                                              schema=target.schema), target.where)
    if refused:
        raise MigratorError(refused, USAGE)

    built: list[str] = []  # indexes the applied files' CONCURRENTLY builds made: the runner's work, even one an
    # earlier, interrupted try left (already there before this run, so not a change this run made)
    with advancing_schema(settings, backend, "migrate", always=schema.recorded is None, before=schema.live,
                          claimed=built, files=todo) as changed:
        with watching(settings, backend, target):
            for migration, seconds in postgres.apply(backend, target, migrations):
                applied.append(migration.id)
                built.extend(getattr(migration, "built_indexes", []))
                settings.echo(f"  applied {migration.id} ({seconds * 1000:.0f} ms)")  # (said before its record)
                changed.append(migration.id)  # (recorded now: its built indexes first)


def migrate_mongo(settings: CommandSettings, mongo_target, mongo_patches):
    """migrate's Mongo part (shown), once per run whatever the schemas; None when Mongo is not configured."""
    if mongo_target is None:
        settings.show(MONGO_NOT_CONFIGURED)
        return None
    from migrator.commands import mongo as mongo_commands  # (Mongo's modules only when it is configured)

    mongo = mongo_commands.run_patches(settings, mongo_target, mongo_patches, names=(), run=True)
    settings.show(mongo)
    return mongo


def check_schema_drift(settings: CommandSettings, backend, *, refuse: bool, refresh: bool = False, migrations=()):
    """Live drift said before anything runs (a DBA's emergency index is allowed); refused when asked. `refresh`:
    a writing run under the lock records the catalog's fingerprint anew when the schema is as recorded. An index
    a pending migration's interrupted build made (`migrations`) is its work, not drift."""
    from migrator.schema import snapshot

    drift = snapshot.live_drift(backend.connection, backend.bookkeeping_schema, settings.described, refresh=refresh,
                                claimed=_pending_builds(backend, migrations))
    if drift.drifted:
        if refuse:
            raise MigratorError(f"--strict: the live schema changed outside migrations ({drift.to_json()['summary']}); "
                                "`runner.py status` lists it: keep it in a migration, undo it, or after review "
                                "`runner.py sql accept-drift`", SCHEMA_DRIFT)
        for line in drift.lines():
            settings.note(f"note: {line.strip()}")
    return drift


def _pending_builds(backend, migrations, states=None):
    """live_drift's `claimed`: the indexes pending migrations' interrupted builds made (index_claims.explained)."""
    def claimed() -> set:  # (called only when drift is found: a no-op imports none of it)
        from migrator import postgres
        from migrator.postgres import index_claims

        return index_claims.explained(backend.connection, states or postgres.status(backend, migrations),
                                      backend.bookkeeping_schema, _failures(backend)) if migrations else set()
    return claimed


def _failures(backend) -> str:
    """The failures table, qualified: its records tell an interrupted try's index (index_definition.made_since)."""
    from migrator import checksums

    return backend.qualified(checksums.FAILURES)


@contextlib.contextmanager
def advancing_schema(settings: CommandSettings, backend, reason: str, *, always: bool = False,
                     before=None, claimed: list | None = None, files=()) -> Iterator[list]:
    """Around the runner's own changes: the recorded schema moves forward by exactly what they changed, so drift
    found before stays drift and the runner's work never reads as drift. The block appends each id it changed to
    the list it is given. The first change takes the schema's bookkeeping lock before it can commit
    (bookkeeping_lock.Recording: another session holding that lock stops the change uncommitted, never leaves it
    unrecorded). The record is written after each change, so a run SIGKILLed during its next file leaves the files it
    applied recorded (attack24x 2); the lock is held to the end of the block, or, in a schema several histories
    share (services migrating at once), released after each record, so another service waits for one record at
    most. After a failure what is left is recorded too (a non-transactional file may have committed part); with no
    change, no failure and not `always`, nothing is.
    `files`: the migrations the block may run; what the ones it ran (after a failure: any of them) name as DDL
    targets is this history's work, in a schema shared by several histories (snapshot.advance)."""
    from migrator.schema import snapshot

    if before is None:  # (the drift check's description, when it made one, is the same moment's)
        before = snapshot.live_description(backend.connection, backend.bookkeeping_schema)
    recording = backend.recording = pg_lock.Recording(backend.connection, backend.bookkeeping_schema)
    seen, done, shared = [before], [], bool(snapshot.history(backend.connection))

    def record(failed: bool = False) -> None:
        ran = [m for m in files if m.id in changed[len(done):] or (failed and m.id not in done)]
        snapshot.advance(backend.connection, backend.bookkeeping_schema, seen[-1], reason, claimed or (),
                         _named(ran), seen)
        done[:] = changed
        if shared:  # (one history's schema: kept to the end, as no other history records here)
            recording.release()

    changed = _Recorded(record)
    try:
        yield changed
    except BaseException as exc:
        # Refused: nothing of the change that asked for the lock committed, all before it is recorded. Not held:
        # nothing committed since the last record (each commit takes it first), so no wait for it (another
        # session may hold it) to record nothing.
        if recording.refused or not recording.held:
            raise
        try:
            record(failed=True)
        except Exception as error:
            settings.note(f"note: the schema description could not be recorded after the failure "
                          f"({output.scrub(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)}); "
                          "`runner.py status` may list this run's changes as drift until the next migrate")
        raise
    else:
        if len(changed) > len(done) or (always and not done):
            record()
    finally:
        recording.release()
        backend.recording = None


class _Recorded(list):
    """The ids a block changed; each recorded as it is appended (advancing_schema)."""

    def __init__(self, record):
        super().__init__()
        self._record = record

    def append(self, item) -> None:
        super().append(item)
        self._record()


def _named(ran) -> set[str]:
    from migrator.postgres.migration import rollback_path
    from migrator.schema import targets

    return targets.named([Path(m.path) for m in ran] + [rollback_path(m) for m in ran])


def record_schema(settings: CommandSettings, backend, reason: str, drift_before) -> None:
    """Record the schema after a change the runner made; never over drift it found (that needs a review)."""
    from migrator.schema import snapshot

    if drift_before is not None and drift_before.drifted:
        settings.note("note: the schema description was not re-recorded: it had drifted before this run; "
                      "after review, `runner.py sql accept-drift` records the current schema")
        return
    snapshot.record(backend.connection, backend.bookkeeping_schema, reason)


def plan(settings: CommandSettings, *, offline: bool, mongo_dry_run: bool = True) -> PlanReport:
    """What migrate would run, read-only: the pending SQL, drift, lint (shown), then the Mongo dry run (shown).

    The SQL part is shown before the Mongo dry run, so a failing patch never hides it. JSON (mongo_dry_run
    False) has no Mongo part.
    """
    from migrator import lint, postgres
    from migrator.postgres import conforming, rewrites
    from migrator.postgres.files import UNFILLED_ROLLBACK
    from migrator.schema import snapshot

    migrations = postgres.read_migrations(settings.sql_dir)  # only the files that will run are parsed
    mongo_target = settings.mongo_target() if mongo_dry_run and not offline else None
    drift, schema, verdicts = [], None, []
    if offline:
        todo, where = postgres.ordered(migrations), "offline: every migration, no database consulted"
        postgres.load_migrations(todo)
    else:
        target = settings.postgres_target()
        with postgres.connect(target, read_only=True) as backend:
            todo = postgres.pending(backend, migrations)
            drift = [s for s in postgres.status(backend, migrations) if s.changed]
            _warn_out_of_order(settings, backend, migrations, todo)
            schema = snapshot.live_drift(backend.connection, backend.bookkeeping_schema, settings.described)
            postgres.load_migrations(todo)
            verdicts = rewrites.judge(backend.connection, todo, threshold=settings.rewrite_threshold(),
                                      schema=target.schema)
            if unread := conforming.pending_unread(backend.connection, todo):  # (what migrate refuses: attack24q 3)
                settings.note(f"warning: migrate refuses this: {unread}")
        where = target.display_url
    for migration in todo:  # found now, not at the rollback that needs it
        rollback = postgres.rollback_path(migration)
        if rollback.is_file() and postgres.unfilled(rollback):
            settings.note(f"warning: {rollback} {UNFILLED_ROLLBACK}")
    skipped = bool(todo) and lint.squawk_path() is None
    if skipped:
        settings.note("note: lint skipped: squawk is not installed here (`make install` brings it)")
    report = PlanReport(where, todo, drift, [] if skipped or not todo else lint.lint(todo), skipped, schema, verdicts)
    settings.show(report)
    if mongo_dry_run:
        settings.show(_mongo_plan(settings, mongo_target))
    return report


def _warn_out_of_order(settings: CommandSettings, backend, migrations, todo) -> None:
    """FLYWAY_OUT_OF_ORDER=false: plan says now what migrate will refuse."""
    from migrator import postgres
    from migrator.postgres import history

    if not backend.out_of_order and history.flyway.is_flyway(migrations):
        older = history.older_than_applied(migrations, postgres.applied_ids(backend, migrations), todo)
        if older:
            settings.note(f"warning: migrate will refuse: {history.out_of_order_refusal(older)}")


def _mongo_plan(settings: CommandSettings, mongo_target) -> MongoPlanReport:
    from migrator.mongo import actions, connection, patches

    if mongo_target is None:
        found = patches.discover(settings.patch_dir) if settings.patch_dir and settings.patch_dir.is_dir() else []
        return MongoPlanReport(None, on_disk=[p.id for p in found],
                               folder=settings.patch_dir.name if settings.patch_dir else "")
    found = patches.discover(settings.mongo_dir) if settings.mongo_dir.is_dir() else []
    mongo_target = mongo_target.for_dry_run()  # a read-only user, when one is set
    with connection.connect(mongo_target) as db:
        pending = len(actions.pending(db, found))
        with output.patch_output(err=True):  # the patches' own output stays off the SQL on stdout
            outcomes = list(actions.apply(db, mongo_target, found, run=False, lock_wait=0, echo=settings.note))
    return MongoPlanReport(f"{mongo_target.display_uri} ({mongo_target.database})", pending, outcomes)


def status(settings: CommandSettings) -> StatusReport:
    """Every migration's state, the live schema against the recorded one, and every patch's state; read-only."""
    from migrator import postgres
    from migrator.postgres import index_claims
    from migrator.schema import snapshot

    migrations = postgres.read_migrations(settings.sql_dir)  # listing needs no parsing
    mongo_target = settings.mongo_target()
    target = settings.postgres_target()
    with postgres.connect(target, read_only=True) as backend:
        states = postgres.status(backend, migrations)
        for state in states:  # only the pending files are read: migrate refuses a template never filled in
            state.unfilled = not state.applied_at and state.path is not None and postgres.unfilled(state.path)
            rollback = postgres.rollback_path(state) if state.path is not None else None
            state.rollback_unfilled = rollback is not None and rollback.is_file() and postgres.unfilled(rollback)
        invalid = postgres.invalid_indexes(backend)
        schema = snapshot.live_drift(backend.connection, backend.bookkeeping_schema, settings.described,
                                     claimed=_pending_builds(backend, migrations, states))
        rebuilt = index_claims.rebuilt_by(backend.connection, states, invalid, backend.bookkeeping_schema,
                                          _failures(backend))
    from migrator.commands import mongo as mongo_commands

    mongo = mongo_commands.patch_status(settings, mongo_target) if mongo_target else None
    return StatusReport(target.display_url, states, invalid, schema, mongo, rebuilt)


def _limit_lines(settings: CommandSettings) -> list[str]:
    """Each try's lock_timeout, the lock retry budget, statement_timeout and the other limits, each with its unit
    (a bare number is shown in the unit it is read in) and where it came from."""
    from migrator.durations import with_unit
    from migrator.limits import read_timeout

    limits, env = settings.limits(), settings.env
    rows = [("lock_timeout", with_unit(limits.lock_timeout, "ms"), settings.ddl_lock_timeout, "--ddl-lock-timeout",
             "DB_LOCK_TIMEOUT", "each try's wait for its locks"),
            ("lock retry", with_unit(limits.lock_retry_budget, "s"), settings.lock_retry_budget, "--lock-retry-budget",
             "DB_LOCK_RETRY_BUDGET", "how long a statement blocked by a lock is retried"),
            ("statement_timeout", with_unit(limits.statement_timeout, "ms"), settings.statement_timeout,
             "--statement-timeout", "DB_STATEMENT_TIMEOUT", ""),
            ("rewrite threshold", f"{settings.rewrite_threshold()} rows", settings.rewrite_threshold_rows,
             "--rewrite-threshold-rows", "REWRITE_THRESHOLD_ROWS", "a rewrite of a larger live table is refused"),
            ("backfill batches", f"{limits.backfill_max_batches} batches", None, "", "BACKFILL_MAX_BATCHES",
             "the most runs of a `-- backfill: batch` statement"),
            ("read timeout", f"{read_timeout(env):g}s", None, "", "DB_READ_TIMEOUT", "status, plan and doctor reads")]
    lines = []
    for label, value, option, option_name, variable, what in rows:
        origin = option_name if option is not None else (env.get(variable)[1] or "default")
        lines.append(f"  {label:<17} {value:<22} {origin}" + (f" ({what})" if what else ""))
    return lines + [f"  note: {text}" for text in limits.notes]  # (limits._notes: lock_timeout 0, or clamped)


def config(settings: CommandSettings) -> Lines:
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
            lines.append(f"  {label:<9} {value!s:<30} {env.describe_origin(target.sources.get(key) or origin or 'default')}")
        lines.append(f"  {'tls':<9} {target.tls}")
    if target.schemas:
        lines.append(f"  {'schemas':<9} {','.join(target.schemas):<30} {target.sources['schemas']}")
    lines.append(f"  {'sql dir':<9} {settings.sql_dir}")
    lines += _limit_lines(settings)
    if mongo is None:
        return Lines(lines + ["MongoDB: not configured (set MONGO_URL and MONGO_DB, or MONGO_SECRET_NAME)"])
    lines += mongo.notes
    lines += [f"MongoDB: {mongo.display_uri}",
              f"  {'database':<9} {mongo.database:<30} {mongo.sources['database']}",
              f"  {'url':<9} {mongo.hosts:<30} {mongo.sources['url']}",
              f"  {'tls':<9} {mongo.tls}"]
    if mongo.documentdb:
        lines.append(f"  {'options':<9} retryWrites=false (DocumentDB)")
    return Lines(lines + [f"  {'mongo dir':<9} {settings.mongo_dir}"])
