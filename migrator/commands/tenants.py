"""A DIGIT central instance: the same migrations run per tenant schema, each with its own history.

Each schema gets the single-schema command (deploy.migrate_sql, deploy.plan, deploy.status,
sql.rollback, sql.mark) with the settings pinned to that schema's target, so nothing here knows
how a migration runs. A schema's failure is its own: the others go on (unless --fail-fast), every
schema ends in the summary, and the run fails if any did. --parallel N runs N schemas at once, each
on its own connections under its own lock; their lines are prefixed with the schema.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from migrator.commands import deploy
from migrator.commands import sql as sql_commands
from migrator.commands.base import CommandSettings
from migrator.errors import FAILED, MigratorError
from migrator.reports import MigrateReport, SchemaOutcome, SchemasPlanReport, SchemasReport, SchemasStatusReport

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
    from migrator import postgres
    from migrator.mongo import patches

    postgres.read_migrations(settings.sql_dir)  # a bad file name refuses the run before any schema
    mongo_target = settings.mongo_target()
    mongo_patches = patches.discover(settings.mongo_dir) if mongo_target else []
    target = tenant_target(settings)
    if target is None:
        return deploy.migrate(settings)
    summary = SchemasReport("migrate", run(settings, target, _migrate_one, writes=True))
    settings.show(summary)
    if summary.failed:
        settings.note("MongoDB: skipped: a schema failed (run migrate again once it is fixed)")
        raise MigratorError(summary.error_line(), summary.exit_code)
    return MigrateReport(summary, deploy.migrate_mongo(settings, mongo_target, mongo_patches))


def _migrate_one(settings: CommandSettings):
    from migrator import postgres

    report = deploy.migrate_sql(settings, postgres.read_migrations(settings.sql_dir))
    settings.echo(report.lines()[0])
    return report


def rollback(settings: CommandSettings, **how) -> SchemasReport | object:
    target = tenant_target(settings)
    if target is None:
        return sql_commands.rollback(settings, **how)
    return _finished(settings, SchemasReport("rollback", run(settings, target, lambda s: _said(
        s, sql_commands.rollback(s, **how)), writes=True)))


def mark(settings: CommandSettings, ids: list[str]):
    target = tenant_target(settings)
    if target is None:
        return sql_commands.mark(settings, ids)
    return _finished(settings, SchemasReport("mark", run(settings, target, lambda s: _said(
        s, sql_commands.mark(s, ids)), writes=True)))


def status(settings: CommandSettings):
    """Every schema's status (read-only), keyed by schema, and the Mongo patches once."""
    target = tenant_target(settings)
    if target is None:
        return deploy.status(settings)
    mongo_target = settings.mongo_target()
    outcomes = run(settings, target, lambda s: deploy.status(dataclasses.replace(s, mongo_off=True)), writes=False)
    from migrator.commands import mongo as mongo_commands

    mongo = mongo_commands.patch_status(settings, mongo_target) if mongo_target else None
    return SchemasStatusReport(target.display_url, outcomes, mongo)


def plan(settings: CommandSettings, *, offline: bool, mongo_dry_run: bool = True):
    """Each schema's plan (shown in schema order), then the Mongo dry run once; JSON keyed by schema."""
    target = None if offline else tenant_target(settings)
    if target is None:
        return deploy.plan(settings, offline=offline, mongo_dry_run=mongo_dry_run)
    show = settings.show
    outcomes = run(dataclasses.replace(settings, show=lambda report: None), target,
                   lambda s: deploy.plan(s, offline=False, mongo_dry_run=False), writes=False)
    report = SchemasPlanReport(target.display_url, outcomes, None)
    show(report)
    if mongo_dry_run:
        show(deploy._mongo_plan(settings, settings.mongo_target()))  # plan's own Mongo part, once
    return report


def _said(settings: CommandSettings, report):
    for line in report.lines():
        settings.echo(line)
    return report


def _finished(settings: CommandSettings, summary: SchemasReport) -> SchemasReport:
    """The summary, for the CLI to print; on a failure it is shown here, before the error line."""
    if summary.failed:
        settings.show(summary)
        raise MigratorError(summary.error_line(), summary.exit_code)
    return summary


def run(settings: CommandSettings, target, work: Callable[[CommandSettings], object], *, writes: bool) -> list[SchemaOutcome]:
    """`work` once per schema, in order or `settings.parallel` at a time; every schema gets an outcome."""
    from migrator import postgres

    missing = set(postgres.missing_schemas(target, target.schemas, create=writes and target.create_schemas))
    outcomes = {schema: SchemaOutcome(schema) for schema in target.schemas}
    stop = threading.Event()

    def one(schema: str) -> None:
        outcome = outcomes[schema]
        if stop.is_set():
            return  # --fail-fast: stays "not run"
        if schema in missing:
            outcome.error, outcome.exit_code = (f"schema {schema} does not exist on {target.where}; create it, or "
                                                "pass --create-schemas to `migrate`"), FAILED
        else:
            started = time.perf_counter()
            try:
                outcome.report = work(_for_schema(settings, target, schema))
            except MigratorError as exc:
                outcome.error, outcome.exit_code = str(exc), exc.exit_code
            outcome.seconds = time.perf_counter() - started
        outcome.ran = True
        if outcome.error:
            _print(settings.note, schema, f"FAILED: {outcome.error}")
            if settings.fail_fast:
                stop.set()

    if settings.parallel > 1:
        with ThreadPoolExecutor(max_workers=settings.parallel, thread_name_prefix="schema") as pool:
            for future in [pool.submit(one, schema) for schema in target.schemas]:
                future.result()
    else:
        for schema in target.schemas:
            one(schema)
    return [outcomes[schema] for schema in target.schemas]


def _for_schema(settings: CommandSettings, target, schema: str) -> CommandSettings:
    """The settings of one schema: its target pinned, its lines prefixed with its name."""
    return dataclasses.replace(settings, pinned=target.for_schema(schema),
                               echo=lambda line: _print(settings.echo, schema, line),
                               note=lambda line: _print(settings.note, schema, line),
                               show=lambda report: None)


def _print(sink, schema: str, line: str) -> None:
    with _printing:
        sink(f"[{schema}] {line.strip()}")
