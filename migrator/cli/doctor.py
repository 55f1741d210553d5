"""doctor: check a new environment before the first real run."""

from __future__ import annotations

import click

from migrator import output
from migrator.cli.help import HelpCommand
from migrator.cli.options import CREATE_SCHEMAS, settings_options


@click.command(cls=HelpCommand)
@settings_options(postgres=True, mongo=True, sql_dir=True)
@CREATE_SCHEMAS
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--no-dev-tools", is_flag=True, help="Skip the developer tools (squawk); the Job's image has none.")
def doctor(settings, as_json, no_dev_tools):
    """Check everything a real run needs, changing nothing: one line per check, ok / warn / FAIL and what to do.

    Settings and where they came from, .env, the AWS secrets (key names only), the CA bundle, PostgreSQL
    (reachable, login, version, TLS, privileges, bookkeeping, pending, drift), MongoDB (reachable, auth,
    database, applied_patches, the patch lock, DocumentDB), mongosh, squawk. Over several schemas
    (--schema, SCHEMA_NAME) the schema-level checks run per schema, each line naming it; with
    --create-schemas a missing schema is ok when the user may create it. Read-only connections; no
    lock is taken. Exit 0 when nothing FAILs, 1 otherwise.
    """
    from migrator.commands import doctor as commands  # (its checks and report: loaded by doctor alone)

    report = commands.doctor(settings, dev_tools=not no_dev_tools)
    output.report(report, as_json)
    raise click.exceptions.Exit(report.exit_code)
