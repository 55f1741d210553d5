"""`devdb ...`: the local development database (used when nothing is configured)."""

from __future__ import annotations

import click

from migrator import output
from migrator.cli.help import HelpGroup
from migrator.cli.app import verbose_option
from migrator.env import Env


@click.group(cls=HelpGroup)
def devdb():
    """The local development database (used when nothing is configured)."""


@devdb.command("start")
@verbose_option
def start():
    """Start it (if needed) and print its URLs: PostgreSQL (e.g. for psql), then Mongo (FerretDB, e.g. for mongosh)."""
    from migrator import devdb as local
    from migrator.ferretdb import NO_GO

    env = Env.load()
    output.result(local.ensure_running(env).display_url)
    mongo = local.ensure_mongo(env, output.note)
    output.result(f"{mongo.display_uri}{mongo.database}" if mongo else f"MongoDB: none ({NO_GO})")


@devdb.command("stop")
@verbose_option
def stop():
    """Stop it (PostgreSQL and FerretDB); its data stays in its folder, outside the clone."""
    from migrator import devdb as local

    output.result(local.stop(Env.load()))
