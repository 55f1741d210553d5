#!/usr/bin/env python3
"""hcm-db-migrations: keeps the HCM reporting databases up to date.

This file only parses options, calls the `migrator` package and prints. Exit codes:
0 ok, 1 failed, 2 usage or configuration error, 4 migration lock held by another runner.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from migrator import output
from migrator.errors import FAILED, USAGE, MigratorError
from migrator.settings import AwsOptions, Env, PostgresOptions, PostgresTarget, resolve_postgres

PROJECT_ROOT = Path(__file__).resolve().parent


class Runner(click.Group):
    """Turns a MigratorError into one line and its exit code; tracebacks only with -v."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MigratorError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug: say so, keep the traceback for -v
            _fail(ctx, f"unexpected {exc.__class__.__name__}: {exc}; rerun with -v for the traceback", FAILED)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    if ctx.find_root().meta.get("verbose"):
        click.echo(output.traceback_text(), err=True)
    output.error(message)
    ctx.exit(code)


def _set_verbose(ctx: click.Context, _param, value: bool) -> bool:
    if value:
        ctx.find_root().meta["verbose"] = True
        yoyo_log = logging.getLogger("yoyo")
        if _YOYO_HANDLER not in yoyo_log.handlers:
            yoyo_log.addHandler(_YOYO_HANDLER)
        yoyo_log.setLevel(logging.INFO)
    return value


class _MaskingFormatter(logging.Formatter):
    def format(self, record):
        return output.mask(super().format(record))


_YOYO_HANDLER = logging.StreamHandler()
_YOYO_HANDLER.setFormatter(_MaskingFormatter("%(name)s: %(message)s"))


verbose_option = click.option(
    "-v", "--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_set_verbose,
    help="Show tracebacks on errors and each migration step as it runs (passwords stay masked).",
)


sql_dir_option = click.option(
    "--sql-dir", type=click.Path(path_type=Path), default=PROJECT_ROOT / "sql", show_default="sql/ beside runner.py",
    envvar="SQL_DIR", help="Folder of the .sql migrations (else SQL_DIR).",
)

lock_timeout_option = click.option(
    "--lock-timeout", type=float, default=10, show_default=True, metavar="SECONDS",
    help="How long to wait for another runner's migration lock.",
)


def postgres_options(command):
    """The connection options every PostgreSQL command takes (see README, 'Connection settings')."""
    options = [
        verbose_option,
        click.option("--database-url", metavar="URL", help="PostgreSQL URL; wins over every other setting."),
        click.option("--db-host", metavar="HOST", help="Server host (else DB_HOST, else localhost)."),
        click.option("--db-port", metavar="PORT", help="Server port (else DB_PORT, else 5432)."),
        click.option("--db-name", metavar="NAME", help="Database (else DB_NAME, else unifieddevdb)."),
        click.option("--db-user", metavar="USER", help="User (else DB_USER, else postgres); the password comes from DB_PASSWORD."),
        click.option("--secret-name", "--secret_name", metavar="NAME",
                     help="AWS Secrets Manager secret with host, port, username, password, dbname (else DB_SECRET_NAME)."),
        click.option("--profile", "--profile_name", metavar="PROFILE", help="AWS profile for the secret (else AWS_PROFILE)."),
        click.option("--region", metavar="REGION", help="AWS region for the secret (else AWS_REGION)."),
        click.option("--ca-bundle", "--ca_bundle", metavar="FILE",
                     help="TLS root certificate(s), e.g. the RDS bundle: turns on sslmode=verify-full (else CA_BUNDLE)."),
        sql_dir_option,
    ]
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def wrapper(database_url, db_host, db_port, db_name, db_user, secret_name, profile, region, ca_bundle, **kwargs):
        pg_options = PostgresOptions(
            database_url=database_url, host=db_host, port=db_port, dbname=db_name, user=db_user,
            ca_bundle=ca_bundle, aws=AwsOptions(secret_name=secret_name, profile=profile, region=region),
        )
        return command(pg_options=pg_options, **kwargs)

    return wrapper


def _target(pg_options: PostgresOptions, env: Env) -> PostgresTarget:
    """Resolve and, when nothing is configured, start the local database, saying so loudly."""
    from migrator import postgres

    target = resolve_postgres(pg_options, env)
    for line in target.ignored:
        output.note(f"note: {line}")
    if target.local_dev:
        target = postgres.resolve_target(target, env)
        output.note(f"no database configured: using the local development database at {target.display_url} "
                    "(set DATABASE_URL or DB_HOST to use another; `make db-stop` stops it)")
    return target


@click.group(cls=Runner, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@verbose_option
@click.version_option(package_name=None, version=__import__("migrator").__version__, prog_name="hcm-db-migrations")
def cli():
    """Keep the HCM reporting PostgreSQL schema up to date from the .sql files in sql/.

    Settings come from options, then DATABASE_URL, then DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD,
    then an AWS secret (--secret-name); .env in the working directory is read too. With nothing
    configured, a local development database is used.
    """


@cli.command()
@postgres_options
@lock_timeout_option
def migrate(pg_options, sql_dir, lock_timeout):
    """Apply every pending migration in order, each in its own transaction."""
    from migrator import postgres

    env = Env.load()
    migrations = postgres.read_migrations(sql_dir)
    target = _target(pg_options, env)
    output.note(f"PostgreSQL: {target.display_url}")
    with postgres.connect(target, read_only=False) as backend, postgres.locked(backend, target, lock_timeout):
        applied = 0
        for migration, seconds in postgres.apply(backend, target, migrations):
            applied += 1
            output.result(f"  applied {migration.id} ({seconds * 1000:.0f} ms)")
        states = postgres.status(backend, migrations)
    done = sum(1 for s in states if s.applied_at)
    if applied:
        output.result(f"PostgreSQL: applied {applied}; {done} of {len(migrations)} migrations applied")
    else:
        output.result(f"PostgreSQL: up to date ({done} of {len(migrations)} migrations applied)")


@cli.command()
@postgres_options
@click.option("--offline", is_flag=True, help="Print every migration without connecting to a database.")
def plan(pg_options, sql_dir, offline):
    """Print the SQL that `migrate` would run, in order; writes nothing.

    The output is the files' exact SQL with BEGIN;/COMMIT; around transactional migrations,
    so a DBA can review it or feed it to psql. Notes go to stderr.
    """
    from migrator import postgres

    migrations = postgres.read_migrations(sql_dir)
    if offline:
        todo, where = list(migrations), "offline: every migration, no database consulted"
    else:
        target = _target(pg_options, Env.load())
        with postgres.connect(target, read_only=True) as backend:
            todo = postgres.pending(backend, migrations)
        where = target.display_url
    output.result(f"-- plan for {where}: {len(todo)} pending migration(s); nothing below has been run")
    for migration in todo:
        output.result()
        output.result(postgres.plan_text(migration))


@cli.command()
@postgres_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def status(pg_options, sql_dir, as_json):
    """List every migration: applied (and when) or pending. Writes nothing."""
    from migrator import postgres

    migrations = postgres.read_migrations(sql_dir)
    target = _target(pg_options, Env.load())
    with postgres.connect(target, read_only=True) as backend:
        states = postgres.status(backend, migrations)
    applied = sum(1 for s in states if s.applied_at)
    pending = sum(1 for s in states if not s.applied_at)
    if as_json:
        output.result(json.dumps({
            "target": target.display_url,
            "migrations": [
                {"id": s.id, "status": s.state, "applied_at": s.applied_at.isoformat() if s.applied_at else None,
                 "file": str(s.path) if s.path else None}
                for s in states
            ],
            "applied": applied,
            "pending": pending,
        }, indent=2))
        return
    output.result(f"PostgreSQL {target.display_url}")
    width = max((len(s.id) for s in states), default=0)
    for s in states:
        when = s.applied_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.applied_at else ""
        output.result(f"  {s.id:<{width}}  {s.state:<8}  {when}".rstrip())
    output.result(f"PostgreSQL: {applied} applied, {pending} pending")


@cli.command()
@postgres_options
def config(pg_options, sql_dir):
    """Show the resolved connection and where each setting came from (password masked)."""
    target = resolve_postgres(pg_options, Env.load())
    for line in target.ignored:
        output.result(f"note: {line}")
    if target.local_dev:
        from migrator import devdb

        output.result(f"PostgreSQL: local development database in {devdb.data_dir(Env.load())} "
                      "(nothing configured; started on first use)")
    else:
        output.result(f"PostgreSQL: {target.display_url}")
        origin = target.sources.get("url")
        rows = [("host", target.host or target.params.get("host")), ("port", target.port), ("database", target.dbname),
                ("user", target.user), ("password", "***" if target.password else "(none)")]
        keys = ["host", "port", "dbname", "user", "password"]
        for (label, value), key in zip(rows, keys):
            output.result(f"  {label:<9} {value!s:<30} {origin or target.sources.get(key, 'default')}")
        if "tls" in target.sources:
            output.result(f"  {'tls':<9} {'verify-full, ' + target.params['sslrootcert']:<30} {target.sources['tls']}")
    output.result(f"  {'sql dir':<9} {sql_dir}")


@cli.group()
def sql():
    """Manage the SQL migrations: rollback, new, mark, break-lock."""


@sql.command()
@postgres_options
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Roll back the last N migrations.")
@click.option("--to", "to", metavar="ID", help="Roll back every migration applied after ID (ID stays applied).")
@click.option("--all", "all_", is_flag=True, help="Roll back every applied migration.")
@lock_timeout_option
def rollback(pg_options, sql_dir, count, to, all_, lock_timeout):
    """Roll back applied migrations through their .rollback.sql files (default: the last one)."""
    from migrator import postgres

    if sum(x is not None and x is not False for x in (count, to, all_)) > 1:
        raise MigratorError("give one of --count, --to and --all", USAGE)
    migrations = postgres.read_migrations(sql_dir)
    target = _target(pg_options, Env.load())
    output.note(f"PostgreSQL: {target.display_url}")
    with postgres.connect(target, read_only=False) as backend, postgres.locked(backend, target, lock_timeout):
        selected = postgres.select_rollback(backend, migrations, count=count, to=to, all_=all_)
        for migration, seconds in postgres.rollback(backend, target, selected):
            output.result(f"  rolled back {migration.id} ({seconds * 1000:.0f} ms)")
        states = postgres.status(backend, migrations)
    output.result(f"PostgreSQL: rolled back {len(selected)}; "
                  f"{sum(1 for s in states if s.applied_at)} of {len(migrations)} migrations applied")


@sql.command()
@click.argument("name")
@sql_dir_option
def new(name, sql_dir):
    """Create the next numbered NAME.sql and NAME.rollback.sql pair, with a header to fill in."""
    from migrator import postgres

    for path in postgres.new(sql_dir, name):
        output.result(f"created {path}")


@sql.command()
@postgres_options
@click.argument("ids", nargs=-1, required=True)
@lock_timeout_option
def mark(pg_options, sql_dir, ids, lock_timeout):
    """Record migrations IDS as applied without running them (adopting an existing database)."""
    from migrator import postgres

    migrations = postgres.read_migrations(sql_dir)
    selected = postgres.select_by_id(migrations, list(ids))
    target = _target(pg_options, Env.load())
    with postgres.connect(target, read_only=False) as backend, postgres.locked(backend, target, lock_timeout):
        already = set(postgres.applied_ids(backend))
        todo = [m for m in selected if m.id not in already]
        postgres.mark(backend, todo)
    for migration in selected:
        output.result(f"  {'already applied' if migration.id in already else 'marked applied'}: {migration.id}")


@sql.command("break-lock")
@postgres_options
def break_lock(pg_options, sql_dir):
    """Remove a migration lock left behind by a runner that died."""
    from migrator import postgres

    target = _target(pg_options, Env.load())
    with postgres.connect(target, read_only=False) as backend:
        postgres.break_lock(backend)
    output.result(f"removed the migration lock on {target.where}")


@cli.group()
def devdb():
    """The local development database (used when nothing is configured)."""


@devdb.command("start")
@verbose_option
def devdb_start():
    """Start it (if needed) and print its URL, e.g. for psql."""
    from migrator import devdb as local

    output.result(local.ensure_running(Env.load()).display_url)


@devdb.command("stop")
@verbose_option
def devdb_stop():
    """Stop it; its data stays in .devdb/."""
    from migrator import devdb as local

    output.result(local.stop(Env.load()))


if __name__ == "__main__":
    cli()
