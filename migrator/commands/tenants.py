"""A DIGIT central instance: the same migrations run per tenant schema, each with its own history.

Each schema gets the single-schema command (deploy.migrate_sql, deploy.plan, deploy.status,
sql.rollback, sql.mark) with the settings pinned to that schema's target, so nothing here knows
how a migration runs. A schema's failure is its own: the others go on (unless --fail-fast), every
schema ends in the summary, and the run fails if any did. --parallel N runs N schemas at once, each
on its own connections under its own lock; their lines are prefixed with the schema.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Callable

from migrator import output, pg_lock, reports
from migrator.commands import deploy
from migrator.commands import sql as sql_commands
from migrator.commands.base import CommandSettings
from migrator.errors import FAILED, USAGE, MigratorError
from migrator.reports import MigrateReport

_printing = threading.Lock()  # one line at a time from parallel schemas


def tenant_target(settings: CommandSettings):
    """Resolve the PostgreSQL target once (pinned for what follows); it, when it names schemas, else None."""
    if settings.pinned is None:
        settings.pinned = settings.postgres_target()
    return settings.pinned if settings.pinned.schemas else None


def lint_schemas(given: tuple[str, ...]) -> list[str]:
    """The tenant schemas `sql lint` checks names against: --schema, else SCHEMA_NAME (checked as a run's)."""
    from migrator.env import Env
    from migrator.settings import tenant_schemas

    return tenant_schemas(given, Env.load())


def migrate(settings: CommandSettings) -> MigrateReport:
    """`migrate`: per schema its PostgreSQL part, one summary, then the Mongo part once (not after a failure)."""
    checked = deploy.checks(settings)  # a bad file name refuses the run before any schema
    _, mongo_target, mongo_patches = checked
    target = tenant_target(settings)
    if target is None:
        return deploy.migrate(settings, checked)
    refuse_outside_tenant(settings.sql_dir, target)
    # --strict refuses on drift: its check must see the schema as it is under the lock, not as the run began.
    summary = reports.SchemasReport("migrate", run(settings, target, _migrate_one, writes=True,
                                                   pre_read=not settings.strict))
    settings.show(summary)
    _stop_if_interrupted(summary)
    if summary.failed:
        settings.note("MongoDB: skipped: a schema failed (run migrate again once it is fixed)")
        raise MigratorError(summary.error_line(), summary.exit_code)
    return MigrateReport(summary, deploy.migrate_mongo(settings, mongo_target, mongo_patches))


def _migrate_one(settings: CommandSettings):
    from migrator import postgres
    from migrator.reports import SqlMigrateReport

    migrations, applied = postgres.read_migrations(settings.sql_dir), []

    def echo(line: str) -> None:
        if line.strip().startswith("applied "):
            applied.append(line.split()[1])
        settings.echo(line)

    try:
        report = deploy.migrate_sql(dataclasses.replace(settings, echo=echo), migrations)
    except MigratorError as exc:  # the summary shows what committed before the failure, read back
        exc.partial = SqlMigrateReport(applied, *_applied_of(settings, migrations))
        raise
    settings.echo(report.lines()[0])
    return report


def _applied_of(settings: CommandSettings, migrations) -> tuple[int, int]:
    """(applied, total) of a schema, read again after a failure; (0, total) if that fails too."""
    import psycopg2

    from migrator import postgres

    try:  # (its locks waited for as the run's: a table still locked must not hold the summary up for a minute)
        with postgres.connect(settings.pinned, read_only=True, limits=settings.limits()) as backend:
            return len(set(postgres.applied_ids(backend, migrations)) & {m.id for m in migrations}), len(migrations)
    except (MigratorError, psycopg2.Error):
        return 0, len(migrations)


def refuse_outside_tenant(sql_dir, target=None, *, rollbacks: bool = False) -> None:
    """Before any schema runs: a migration (or rollback) file reaching outside the tenant's schema is refused
    (not when the only schema is public: SCHEMA_NAME=public is the plain history, as a run without schemas)."""
    from pathlib import Path

    from migrator import postgres
    from migrator.postgres import files

    if target is not None and target.schemas == ["public"]:
        return
    for migration in postgres.read_migrations(sql_dir):
        paths = [Path(migration.path)] + ([postgres.rollback_path(migration)] if rollbacks else [])
        for path in (p for p in paths if p.is_file()):
            for line, problem in files.tenant_problems(path)[:1]:
                raise MigratorError(f"{path}:{line}: {problem} (tenant schemas; nothing was run)", USAGE)


def adopt(settings: CommandSettings, *, yes: bool, scratch_url: str | None):
    """`sql adopt` per schema: each tenant's prefixes are built as a tenant run builds them (a scratch
    database per schema, the files run in a schema of the tenant's name) and compared with that
    tenant's schema; with --yes each schema's match is marked under its own lock."""
    from migrator.commands.base import scratch_server

    target = tenant_target(settings)
    if target is None:
        return sql_commands.adopt(settings, yes=yes, scratch_url=scratch_url)
    refuse_outside_tenant(settings.sql_dir, target)
    server = scratch_server(settings, scratch_url, target.user)  # resolved once (the local one started once)

    def one(schema_settings: CommandSettings):
        report = sql_commands.adopt_on(dataclasses.replace(schema_settings, show=lambda r: _said(schema_settings, r)),
                                       server, yes=yes)
        if not report.matched:
            exc = MigratorError(report.lines()[0].removeprefix("adopt: ").rstrip(":"), FAILED)
            exc.partial = report
            raise exc
        return report

    return _finished(settings, reports.SchemasReport("adopt", run(settings, target, one, writes=False)), show=True)


def verify(settings: CommandSettings, *, from_id: str | None, scratch_url: str | None, schemas: tuple[str, ...]):
    """`sql verify` with tenant schemas (--schema, else SCHEMA_NAME): the files are the same in every
    tenant, so the proof runs once, in a schema named as the first tenant, as a tenant's run runs them."""
    from migrator.settings import tenant_schemas

    names = tenant_schemas(schemas, settings.env)
    if names and names != ["public"]:
        refuse_outside_tenant(settings.sql_dir, rollbacks=True)
    return sql_commands.verify(settings, from_id=from_id, scratch_url=scratch_url, schema=names[0] if names else None)


def _stop_if_interrupted(summary: reports.SchemasReport) -> None:
    """SIGTERM stopped the run: the summary was shown; one line says what ran and what did not."""
    from migrator import interrupt

    signum = interrupt.requested()
    if signum is None:
        return
    name = signal.Signals(signum).name
    not_run = [o.schema for o in summary.outcomes if not o.ran and not o.waited]  # (a waiting one is named below)
    stopped = [o.schema for o in summary.outcomes if o.error]
    stopped += [f"{o.schema} (waiting for its lock: nothing of it ran)" for o in summary.outcomes if o.waited]
    raise MigratorError(f"{summary.command} interrupted by {name}: stopped in {', '.join(stopped) or 'no schema'}"
                        f"; not run: {', '.join(not_run) or 'none'}; schemas shown done are committed; "
                        f"{summary.rerun(fix='')}", 128 + signum)


def rollback(settings: CommandSettings, **how) -> reports.SchemasReport | object:
    target = tenant_target(settings)
    if target is not None:
        refuse_outside_tenant(settings.sql_dir, target, rollbacks=True)
    return _each(settings, "rollback", lambda s: sql_commands.rollback(s, **how))


def mark(settings: CommandSettings, ids: list[str]):
    return _each(settings, "mark", lambda s: sql_commands.mark(s, ids))


def accept_changes(settings: CommandSettings, ids: list[str]):
    return _each(settings, "accept-changes", lambda s: sql_commands.accept_changes(s, ids))


def accept_drift(settings: CommandSettings):
    return _each(settings, "accept-drift", sql_commands.accept_drift)


def trust_history(settings: CommandSettings, yes: bool):
    return _each(settings, "trust-history", lambda s: sql_commands.trust_history(s, yes))


def break_lock(settings: CommandSettings):
    return _each(settings, "break-lock", sql_commands.break_lock)


def _each(settings: CommandSettings, command: str, work: Callable[[CommandSettings], object]):
    """`work` (a single-schema command, which takes its schema's lock where it takes one) once per
    schema, its lines prefixed, then one summary; without schemas, the command as ever."""
    target = tenant_target(settings)
    if target is None:
        return work(settings)
    return _finished(settings, reports.SchemasReport(command, run(settings, target, lambda s: _said(s, work(s)),
                                                          writes=True)))


def status(settings: CommandSettings):
    """Every schema's status (read-only), keyed by schema, and the Mongo patches once."""
    target = tenant_target(settings)
    if target is None:
        return deploy.status(settings)
    mongo_target = settings.mongo_target()
    outcomes = run(settings, target, pre_read=True, work=lambda s: _own_indexes(s.pinned.schema, deploy.status(
        dataclasses.replace(s, mongo_off=True))), writes=False)
    from migrator.commands import mongo as mongo_commands

    mongo = mongo_commands.patch_status(settings, mongo_target) if mongo_target else None
    return reports.SchemasStatusReport(target.display_url, outcomes, mongo)


def plan(settings: CommandSettings, *, offline: bool, mongo_dry_run: bool = True):
    """Each schema's plan (shown in schema order), then the Mongo dry run once; JSON keyed by schema."""
    target = None if offline else tenant_target(settings)
    if target is None:
        return deploy.plan(settings, offline=offline, mongo_dry_run=mongo_dry_run)
    refuse_outside_tenant(settings.sql_dir, target)
    show = settings.show
    outcomes = run(dataclasses.replace(settings, show=lambda report: None), target, _planned, writes=False,
                   pre_read=True)
    report = reports.SchemasPlanReport(target.display_url, outcomes, None)
    show(report)
    if mongo_dry_run:
        show(deploy._mongo_plan(settings, settings.mongo_target()))  # plan's own Mongo part, once
    return report


def _own_indexes(schema: str, report):
    """A tenant's status lists its own INVALID indexes, not the other tenants' (public's, the plain history's:
    every non-tenant schema's, as a run without schemas lists them)."""
    if schema != "public":
        report.invalid_indexes = [i for i in report.invalid_indexes if i[0] == schema]
    return report


def _planned(settings: CommandSettings):
    """A tenant's plan: its pending files' text sets the tenant's search_path, so `plan | psql` lands there."""
    report = deploy.plan(settings, offline=False, mongo_dry_run=False)
    for migration in report.pending:
        migration.tenant_schema = settings.pinned.schema
    return report


def _said(settings: CommandSettings, report):
    for line in report.lines():
        settings.echo(line)
    return report


def _finished(settings: CommandSettings, summary: reports.SchemasReport, show: bool = False) -> reports.SchemasReport:
    """The summary, for the CLI to print (shown here with `show`); on a failure it is shown here, before
    the error line."""
    if summary.failed or show:
        settings.show(summary)
    if summary.failed:
        _stop_if_interrupted(summary)
        raise MigratorError(summary.error_line(), summary.exit_code)
    return summary


def run(settings: CommandSettings, target, work: Callable[[CommandSettings], object], *, writes: bool,
        pre_read: bool = False) -> list[reports.SchemaOutcome]:
    """`work` once per schema, in order or `settings.parallel` at a time; every schema gets an outcome.
    SIGTERM stops the run: the running schemas stop (after their current statement), the rest stay
    "not run", and the caller shows the summary (interrupt.requested() says it happened). `writes`: the
    command changes the schemas (--create-schemas applies; a schema's failure for want of USAGE names CREATE too)."""
    import psycopg2

    from migrator import interrupt, postgres

    # pre_read: every schema described in one catalog read now, which answers each schema's drift check when
    # nothing differs. Only for reports (status, plan) and migrate without --strict, whose drift check only speaks:
    # a check that guards what is recorded (mark, rollback, accept-*) or refused (--strict) reads under its lock.
    missing, described = postgres.survey_schemas(target, target.schemas, create=False, describe=pre_read)
    refused = _create(target, missing) if writes and target.create_schemas else {
        schema: (f"schema {schema} does not exist on {target.where}; create it, or pass --create-schemas to `migrate`")
        for schema in missing}
    outcomes = {schema: reports.SchemaOutcome(schema) for schema in target.schemas}
    stop = threading.Event()

    def one(schema: str) -> None:
        with output.event_fields(schema=schema):  # every event of this part says its schema
            _one(schema)

    def _one(schema: str) -> None:
        outcome = outcomes[schema]
        if stop.is_set() or interrupt.requested() is not None:
            return  # --fail-fast or SIGTERM: stays "not run"
        if schema in refused:
            outcome.error, outcome.exit_code = refused[schema], FAILED
        else:
            started = time.perf_counter()
            try:
                outcome.report = work(_for_schema(settings, target, schema, described.get(schema)))
            except pg_lock.LockWaitInterrupted:  # SIGTERM while it waited for its lock: nothing of it ran
                outcome.waited, outcome.seconds = True, time.perf_counter() - started
                return
            except MigratorError as exc:
                outcome.error, outcome.exit_code, outcome.excerpt = str(exc), exc.exit_code, exc.excerpt
                outcome.report = getattr(exc, "partial", None)
            except psycopg2.Error as exc:  # the server refused what nothing foresaw: this schema's failure, not the run's
                outcome.error, outcome.exit_code = (f"the server refused: {output.one_line(output.scrub(str(exc)))} "
                                                    f"(on {target.for_schema(schema).where})"), FAILED
            if outcome.error:  # a schema the user cannot use says which privilege, not what failed for want of it
                outcome.error = _lacking(target, schema, writes=writes) or outcome.error
            outcome.seconds = time.perf_counter() - started
        outcome.ran = True
        if outcome.error:
            for line in outcome.excerpt:  # kept whole: _print strips, and the caret's indent is its position
                with _printing:
                    settings.note(f"[{schema}] {output.visible(line)}")
            _print(settings.note, schema, f"FAILED: {outcome.error}")
            if settings.fail_fast:
                stop.set()

    with interrupt.guard() as guard, guard.deferred():  # a signal between schemas is recorded, not raised
        if settings.parallel > 1:
            from concurrent.futures import ThreadPoolExecutor  # (threads and queues: only for --parallel)

            with ThreadPoolExecutor(max_workers=settings.parallel, thread_name_prefix="schema") as pool:
                futures = [pool.submit(one, schema) for schema in target.schemas]
                while not all(future.done() for future in futures):
                    time.sleep(0.05)  # the main thread stays free to take the signal
                for future in futures:
                    future.result()
        else:
            for schema in target.schemas:
                one(schema)
    return [outcomes[schema] for schema in target.schemas]


def _create(target, missing: list[str]) -> dict[str, str]:
    """--create-schemas: the missing schemas created, in one go; when that is refused, one at a time, so a
    schema the user cannot create is that schema's failure alone. Returns schema -> why it was not created."""
    from migrator import postgres

    if not missing:
        return {}
    try:
        postgres.survey_schemas(target, missing, create=True, describe=False)
        return {}
    except MigratorError:
        pass
    refused = {}
    for schema in missing:
        try:
            postgres.survey_schemas(target, [schema], create=True, describe=False)
        except MigratorError as exc:
            refused[schema] = _cannot_create(target, schema) or str(exc)
    return refused


def _cannot_create(target, schema: str) -> str | None:
    """Why `schema` cannot be created, when it is the database's CREATE privilege: with the exact GRANT."""
    user, database, lacking = _privileges(target, schema, None, ("CREATE",))
    if not lacking:
        return None
    return (f"user {user} cannot create schema {schema} on {target.where}: it lacks CREATE on database {database}; "
            f"run GRANT CREATE ON DATABASE {database} TO {user}, or create the schema as the database's owner")


def _lacking(target, schema: str, *, writes: bool) -> str | None:
    """After a schema's failure: when the user lacks USAGE on it (which nothing it runs can do without), the
    privileges it lacks of those the command needs (CREATE too, to write), with the exact GRANT; else None."""
    user, _, lacking = _privileges(target, schema, schema, ("USAGE", "CREATE") if writes else ("USAGE",))
    if "USAGE" not in lacking:
        return None
    return (f"user {user} has no {' or '.join(lacking)} on schema {schema} on {target.where} (USAGE to reach "
            f"its tables{', CREATE to create them and the bookkeeping' if 'CREATE' in lacking else ''}); run "
            f"GRANT {', '.join(lacking)} ON SCHEMA {schema} TO {user}, or connect as the schema's owner")


def _privileges(target, schema: str, on: str | None, wanted: tuple[str, ...]) -> tuple[str, str, list[str]]:
    """(user, database, what it lacks of `wanted` on schema `on`, or the database): read only to explain a
    failure, so one that cannot be read (or a SIGTERM) leaves the failure as it was: nothing lacking."""
    import psycopg2

    from migrator import interrupt, postgres

    if interrupt.requested() is not None:
        return "", "", []
    try:
        with postgres.connect(target.for_schema(schema), read_only=True) as backend:
            return postgres.lacking_privileges(backend, on, wanted)
    except (MigratorError, psycopg2.Error):
        return "", "", []


def _for_schema(settings: CommandSettings, target, schema: str, described) -> CommandSettings:
    """The settings of one schema: its target pinned, its lines prefixed with its name, its schema as read
    at the start of the run (the drift check's fast path)."""
    return dataclasses.replace(settings, pinned=target.for_schema(schema), described=described,
                               echo=lambda line: _print(settings.echo, schema, line),
                               note=lambda line: _print(settings.note, schema, line),
                               show=lambda report: None)


def _print(sink, schema: str, line: str) -> None:
    with _printing:
        sink(f"[{schema}] {line.strip()}")
