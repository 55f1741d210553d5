"""`sql ...`: rollback, new, mark, accept-changes, accept-drift, verify, adopt, lint, break-lock, trust-history."""

from __future__ import annotations

import functools

import click

from migrator import output
from migrator.cli.help import HelpGroup
from migrator.cli.app import verbose_option
from migrator.cli.options import (LOCK_TIMEOUT, SCHEMA_RUN, SCRATCH_URL, SQL_DIR, Whole, ddl_limits, schema_run,
                                  settings_options)
from migrator.commands import sql as commands, tenants
from migrator.errors import FAILED

FAIL_FAST = SCHEMA_RUN[0]  # break-lock: one quick statement per schema, nothing worth running at once


@click.group(cls=HelpGroup)
def sql():
    """Manage the SQL migrations: rollback, new, mark, accept-changes, accept-drift, verify, adopt, lint, break-lock,
    trust-history."""


@sql.command()
@settings_options(postgres=True, sql_dir=True)
@click.option("--count", type=Whole(min=1), metavar="N", help="Roll back the last N migrations.")
@click.option("--to", "to", metavar="ID", help="Roll back every migration applied after ID (ID stays applied).")
@click.option("--all", "all_", is_flag=True, help="Roll back every applied migration.")
@LOCK_TIMEOUT
@ddl_limits
@schema_run
def rollback(settings, count, to, all_):
    """Roll back applied migrations through their .rollback.sql files (default: the last one)."""
    output.report(tenants.rollback(settings, count=count, to=to, all_=all_))


@sql.command()
@click.argument("name")
@SQL_DIR
def new(name, sql_dir):
    """Create the next numbered NAME.sql and NAME.rollback.sql pair, with a header to fill in."""
    output.report(commands.new(sql_dir, name))


@sql.command()
@settings_options(postgres=True, sql_dir=True)
@click.argument("ids", nargs=-1, required=True)
@LOCK_TIMEOUT
@schema_run
def mark(settings, ids):
    """Record migrations IDS as applied without running them (adopting an existing database; see adopt)."""
    output.report(tenants.mark(settings, list(ids)))


@sql.command("accept-changes")
@settings_options(postgres=True, sql_dir=True)
@click.argument("ids", nargs=-1, required=True)
@LOCK_TIMEOUT
@schema_run
def accept_changes(settings, ids):
    """After review, record the current content of applied migrations IDS as what was applied."""
    output.report(tenants.accept_changes(settings, list(ids)))


@sql.command()
@settings_options(postgres=True, sql_dir=True)
@click.argument("ids", nargs=-1)
@LOCK_TIMEOUT
def repair(settings, ids):
    """A Flyway folder: remove the failed rows of IDS (else all) from Flyway's table, as `flyway repair` does."""
    output.report(commands.repair(settings, list(ids)))


@sql.command("accept-drift")
@settings_options(postgres=True, sql_dir=True)
@LOCK_TIMEOUT
@schema_run
def accept_drift(settings):
    """After review, record the live schema as the expected one: `status` no longer reports those changes."""
    output.report(tenants.accept_drift(settings))


@sql.command()
@settings_options(sql_dir=True)
@click.option("--from", "from_id", metavar="ID", help="Check from migration ID on (the earlier ones are only applied).")
@SCRATCH_URL
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--schema", "schemas", multiple=True, metavar="NAME",
              help="Tenant schemas are in use (else SCHEMA_NAME): run the files as a tenant's run, in a schema "
                   "named as the first, once (refusing files that reach outside their schema).")
def verify(settings, from_id, scratch_url, as_json):
    """Prove each migration's rollback: on a scratch database apply it, roll it back, apply it again.

    Fails (exit 1) at the first migration whose rollback does not restore the schema before it exactly,
    or whose re-application gives another schema; a migration without a rollback file is reported as
    irreversible (allowed). The scratch database is dropped after.
    """
    report = tenants.verify(settings, from_id=from_id, scratch_url=scratch_url, schemas=settings.postgres.schemas)
    output.report(report, as_json)
    raise click.exceptions.Exit(0 if report.ok else FAILED)


@sql.command()
@settings_options(postgres=True, sql_dir=True)
@click.option("--yes", is_flag=True, help="Mark the matching migrations applied (without it: only show the match).")
@SCRATCH_URL
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@LOCK_TIMEOUT
@schema_run
def adopt(settings, yes, scratch_url, as_json):
    """Adopt an existing database by comparison: find the newest migration whose history equals its schema.

    Builds each prefix of the history on a scratch database; with --yes marks 1..N applied. When nothing
    matches, shows the closest prefix and the differences, marks nothing and exits 1. Over tenant
    schemas, each schema is compared with the history built as a tenant's run builds it.
    """
    settings.show = functools.partial(output.report, as_json=as_json)
    if as_json:  # over schemas, each schema's lines go to stderr: stdout holds the JSON alone
        settings.echo = output.note
    report = tenants.adopt(settings, yes=yes, scratch_url=scratch_url)
    raise click.exceptions.Exit(0 if report.ok else FAILED)


@sql.command("lint")
@verbose_option
@SQL_DIR
@click.option("--schema", "schemas", multiple=True, metavar="NAME",
              help="Tenant schemas are in use (else SCHEMA_NAME): also flag names qualified with public or a tenant.")
@click.option("--pending", is_flag=True,
              help="Only the migrations not yet applied to the database (DATABASE_URL / DB_* / DB_URL; over tenant "
                   "schemas, pending in any): what CI wants on a long-applied folder.")
def lint(sql_dir, schemas, pending):
    """Lint the migrations with squawk and .squawk.toml, each as the runner will run it; exit 1 on findings."""
    findings, count = commands.lint(sql_dir, tenants.lint_schemas(schemas), pending=pending)
    for finding in findings:
        output.result(str(finding))
    if findings:
        output.error(f"lint: {len(findings)} finding(s) in {len({f.path for f in findings})} file(s); "
                     "fix them, or exclude a rule in .squawk.toml with the reason beside it")
        raise click.exceptions.Exit(FAILED)
    output.result(f"lint: {count} migration(s) clean")


@sql.command("break-lock")
@settings_options(postgres=True, sql_dir=True)
@FAIL_FAST
def break_lock(settings):
    """Remove a yoyo lock row left behind, e.g. by a bare `yoyo` CLI run that died.

    runner.py itself clears such a row on its own while it holds the advisory lock, so this is rarely needed.
    """
    output.report(tenants.break_lock(settings))


@sql.command("trust-history")
@settings_options(postgres=True, sql_dir=True)
@click.option("--yes", is_flag=True, help="Confirm the history (without it: only show what would be confirmed).")
@LOCK_TIMEOUT
@schema_run
def trust_history(settings, yes):
    """After review, confirm a history other roles could write until a run revoked their rights.

    Until then every command that writes refuses (its rows may be forged: a migration marked applied that never
    ran). Shows the unconfirmed tables and what they record as applied; with --yes confirms them.
    """
    output.report(tenants.trust_history(settings, yes))
