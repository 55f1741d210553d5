"""`mongo ...`: the MongoDB / DocumentDB data patches."""

from __future__ import annotations

import click

from migrator import output
from migrator.cli.help import HelpGroup
from migrator.cli.options import LOCK_TIMEOUT, MONGO_DIR, settings_options
from migrator.commands import mongo as commands


@click.group(cls=HelpGroup)
def mongo():
    """MongoDB / DocumentDB data patches in mongo/: status, apply (dry run unless --run), history, resolve,
    accept-changes, new."""


@mongo.command("status")
@settings_options(mongo=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def status(settings, as_json):
    """Each patch: never applied or applied N times, when last, the last outcome; and logged patches no longer on disk."""
    output.report(commands.patch_status(settings, commands.target(settings)), as_json)


@mongo.command("apply")
@settings_options(mongo=True)
@click.argument("names", nargs=-1, metavar="[PATCH]...")
@click.option("--run", is_flag=True, help="Apply for real and log it in applied_patches. Without it: a dry run.")
@LOCK_TIMEOUT
def apply(settings, names, run):
    """Run patches: with no PATCH, every patch never applied successfully, in order; named ones even if applied before.

    A dry run unless --run: Python patches get a read-only database and JavaScript ones DRY_RUN=true,
    and nothing is written, not even the log. Stops at the first failure (logged as failed with --run).
    """
    output.report(commands.apply(settings, names, run=run))


@mongo.command("history")
@settings_options(mongo=True)
@click.argument("patch", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def history(settings, patch, as_json):
    """The applied_patches log, newest first (of one PATCH if given)."""
    output.report(commands.history(settings, patch), as_json)


@mongo.command("resolve")
@settings_options(mongo=True)
@click.argument("patch")
@click.option("--applied", "applied", flag_value=True, default=None, help="Its writes are complete: count it as applied.")
@click.option("--not-applied", "applied", flag_value=False, help="Its writes were undone or never made: it is pending again.")
@click.option("--note", required=True, help="What you checked (logged with your user and host).")
@LOCK_TIMEOUT
def resolve(settings, patch, applied, note):
    """After a look at the data, settle a patch whose run failed or never finished (logged in applied_patches)."""
    output.report(commands.resolve(settings, patch, applied=applied, note=note))


@mongo.command("accept-changes")
@settings_options(mongo=True)
@click.argument("names", nargs=-1, required=True, metavar="PATCH...")
@click.option("--note", default="file change reviewed", show_default=True, help="Why (logged).")
@LOCK_TIMEOUT
def accept_changes(settings, names, note):
    """Accept the current file of applied patches that changed since (after review); they are not re-run."""
    output.report(commands.accept_changes(settings, list(names), note))


@mongo.command("new")
@click.argument("name")
@click.option("--py", "kind", flag_value="py", default=True, help="A Python (pymongo) patch (the default).")
@click.option("--js", "kind", flag_value="js", help="A JavaScript (mongosh) patch.")
@MONGO_DIR
def new(name, kind, mongo_dir):
    """Create the next numbered patch NAME from a template showing the dry-run contract."""
    output.report(commands.new(mongo_dir, name, kind))
