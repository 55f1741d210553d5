"""`devdb ...`: the local development database (used when nothing is configured)."""

from __future__ import annotations

import click

from migrator import output
from migrator.cli.app import verbose_option
from migrator.env import Env


@click.group()
def devdb():
    """The local development database (used when nothing is configured)."""


@devdb.command("start")
@verbose_option
def start():
    """Start it (if needed) and print its URL, e.g. for psql."""
    from migrator import devdb as local

    output.result(local.ensure_running(Env.load()).display_url)


@devdb.command("stop")
@verbose_option
def stop():
    """Stop it; its data stays in .devdb/."""
    from migrator import devdb as local

    output.result(local.stop(Env.load()))
