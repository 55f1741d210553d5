"""`sql ...`: rollback, new, mark, accept-changes, lint, break-lock."""

from __future__ import annotations

import click

from migrator import output
from migrator.cli.app import verbose_option
from migrator.cli.options import SQL_DIR, settings_options
from migrator.commands import sql as commands
from migrator.errors import FAILED


@click.group()
def sql():
    """Manage the SQL migrations: rollback, new, mark, accept-changes, lint, break-lock."""


@sql.command()
@settings_options(postgres=True, sql_dir=True, lock=True, ddl=True)
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Roll back the last N migrations.")
@click.option("--to", "to", metavar="ID", help="Roll back every migration applied after ID (ID stays applied).")
@click.option("--all", "all_", is_flag=True, help="Roll back every applied migration.")
def rollback(settings, count, to, all_):
    """Roll back applied migrations through their .rollback.sql files (default: the last one)."""
    output.report(commands.rollback(settings, count=count, to=to, all_=all_))


@sql.command()
@click.argument("name")
@SQL_DIR
def new(name, sql_dir):
    """Create the next numbered NAME.sql and NAME.rollback.sql pair, with a header to fill in."""
    for path in commands.new(sql_dir, name):
        output.result(f"created {path}")


@sql.command()
@settings_options(postgres=True, sql_dir=True, lock=True)
@click.argument("ids", nargs=-1, required=True)
def mark(settings, ids):
    """Record migrations IDS as applied without running them (adopting an existing database)."""
    for migration_id, already in commands.mark(settings, list(ids)):
        output.result(f"  {'already applied' if already else 'marked applied'}: {migration_id}")


@sql.command("accept-changes")
@settings_options(postgres=True, sql_dir=True, lock=True)
@click.argument("ids", nargs=-1, required=True)
def accept_changes(settings, ids):
    """After review, record the current content of applied migrations IDS as what was applied."""
    for change in commands.accept_changes(settings, list(ids)):
        output.result(f"  accepted {change.id}: sha256 {change.current[:12]} (was {change.recorded[:12] or 'nothing'})")


@sql.command("lint")
@verbose_option
@SQL_DIR
def lint(sql_dir):
    """Lint the migrations with squawk and .squawk.toml, each as the runner will run it; exit 1 on findings."""
    findings, count = commands.lint(sql_dir)
    for finding in findings:
        output.result(str(finding))
    if findings:
        output.error(f"lint: {len(findings)} finding(s) in {len({f.path for f in findings})} file(s); "
                     "fix them, or exclude a rule in .squawk.toml with the reason beside it")
        raise click.exceptions.Exit(FAILED)
    output.result(f"lint: {count} migration(s) clean")


@sql.command("break-lock")
@settings_options(postgres=True, sql_dir=True)
def break_lock(settings):
    """Remove a yoyo lock row left behind, e.g. by a bare `yoyo` CLI run that died.

    runner.py itself clears such a row on its own while it holds the advisory lock, so this is rarely needed.
    """
    output.result(f"removed the migration lock on {commands.break_lock(settings)}")
