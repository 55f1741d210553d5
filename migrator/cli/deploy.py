"""migrate, plan, status, config: the everyday commands, over both stores (and over tenant schemas)."""

from __future__ import annotations

import functools

import click

from migrator import output
from migrator.cli.help import HelpCommand
from migrator.cli.options import (CREATE_SCHEMAS, LOCK_TIMEOUT, REWRITE_THRESHOLD, SCRATCH_URL, STRICT,
                                  ddl_limit_options, ddl_limits,
                                  schema_run, settings_options)
from migrator.commands import deploy, tenants
from migrator.errors import USAGE, MigratorError
from migrator.reports import Lines


@click.command(cls=HelpCommand)
@settings_options(postgres=True, mongo=True, sql_dir=True)
@LOCK_TIMEOUT
@ddl_limits
@STRICT
@CREATE_SCHEMAS
@REWRITE_THRESHOLD
@schema_run
def migrate(settings):
    """Deploy: apply every pending SQL migration, then every never-applied Mongo patch (for real).

    Mongo runs only when a Mongo target is configured; otherwise it says so and skips it. Changes made
    to the schema outside migrations are said first (and refused with --strict).
    """
    tenants.migrate(settings)


@click.command(cls=HelpCommand)
@settings_options(postgres=True, mongo=True, sql_dir=True)
@click.option("--offline", is_flag=True, help="Print every migration without connecting to a database.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines (SQL, drift, lint; no Mongo dry runs).")
@click.option("--impact", is_flag=True,
              help="Measure each pending migration on a scratch database: locks taken (and what they block), tables "
                   "rewritten, live row counts and sizes; the live database is only read.")
@click.option("--markdown", is_flag=True, help="With --impact: Markdown tables, for a pull request.")
@SCRATCH_URL
@REWRITE_THRESHOLD
@schema_run
def plan(settings, offline, as_json, impact, markdown, scratch_url):
    """Print the SQL that `migrate` would run, in order, and dry-run the pending Mongo patches. Writes nothing.

    stdout: the exact SQL for a DBA or psql (Mongo in SQL comments, notes on stderr); --impact: what each
    migration locks, for how long, and rewrites.
    """
    if markdown and not impact:
        raise MigratorError("--markdown goes with --impact", USAGE)
    if impact:
        if offline or (as_json and markdown):
            raise MigratorError("--impact needs the database (not --offline), and one of --json and --markdown", USAGE)
        from migrator.commands import plan_impact  # (plan --impact's alone)

        report = plan_impact.impact(settings, scratch_url)
        output.report(Lines(report.markdown()) if markdown else report, as_json)
        raise click.exceptions.Exit(report.exit_code)
    settings.show = functools.partial(output.report, as_json=as_json)
    report = tenants.plan(settings, offline=offline, mongo_dry_run=not as_json)
    raise click.exceptions.Exit(report.exit_code)


@click.command(cls=HelpCommand)
@settings_options(postgres=True, mongo=True, sql_dir=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--exit-code", is_flag=True,
              help="Exit 1 while migrations are pending, 3 while an applied file has changed, 5 while the live "
                   "schema differs from the recorded one (for CI gates).")
@schema_run
def status(settings, as_json, exit_code):
    """List every SQL migration (applied, when, pending, changed since applied), schema drift and every Mongo patch.

    Also reports INVALID indexes left by a failed CREATE INDEX CONCURRENTLY. Writes nothing.
    """
    report = tenants.status(settings)
    output.report(report, as_json)
    raise click.exceptions.Exit(report.exit_code(exit_code))


@click.command(cls=HelpCommand)
@settings_options(postgres=True, mongo=True, sql_dir=True)
@ddl_limit_options
def config(settings):
    """Show the resolved connections and where each setting came from (passwords masked). Connects to nothing."""
    output.report(deploy.config(settings))
