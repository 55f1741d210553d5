"""The options of the commands, defined once, and the decorator that turns them into CommandSettings."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import click
from click.core import ParameterSource

from migrator import durations
from migrator.cli.app import log_format_option, verbose_option
from migrator.commands.base import LOCK_TIMEOUT as DEFAULT_LOCK_TIMEOUT, CommandSettings
from migrator.targets import AwsOptions, MongoOptions, PostgresOptions

PROJECT_ROOT = Path(__file__).resolve().parents[2]



def _locations(ctx, param, value):
    from migrator.postgres.flyway import locations  # (imported when used: --help stays fast)

    return locations(value) if value is not None else None


# Where a service's image built `FROM` this one puts its Flyway folder, as it did on egovio/flyway.
IMAGE_FLYWAY_SQL = Path("/flyway/sql")


def _default_sql_dir() -> str:
    return str(IMAGE_FLYWAY_SQL if IMAGE_FLYWAY_SQL.is_dir() and any(IMAGE_FLYWAY_SQL.iterdir()) else PROJECT_ROOT / "sql")


SQL_DIR = click.option(
    "--sql-dir", default=_default_sql_dir,
    callback=_locations,
    envvar=["SQL_DIR", "FLYWAY_LOCATIONS"], metavar="PATH",
    help="Folder of the .sql migrations, or Flyway locations filesystem:a,filesystem:b (else SQL_DIR, "
         "FLYWAY_LOCATIONS, /flyway/sql holding files, sql/).")
MONGO_DIR = click.option(
    "--mongo-dir", type=click.Path(path_type=Path), default=PROJECT_ROOT / "mongo",
    envvar="MONGO_DIR", help="Folder of the Mongo patches (else MONGO_DIR, else mongo/).")


class Seconds(click.ParamType):
    """A duration in seconds, checked as it is parsed (durations.seconds): `nan`, `-5` or `1e400` are a usage error."""

    name = "seconds"

    def __init__(self, zero: bool):
        self.zero = zero  # 0 means something (no limit, or try once)

    def convert(self, value, param, ctx):
        try:
            return durations.seconds(value, zero=self.zero)
        except ValueError as exc:
            if ctx is not None and param.envvar and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT:
                from migrator import credentials, env

                credentials.register_passwords(env.Env(os.environ))  # (a mis-keyed password is never quoted back)
                raise click.UsageError(f"{param.envvar} (environment): {exc}", ctx) from exc
            self.fail(str(exc), param, ctx)


class Whole(click.IntRange):
    """A whole number in a range, ASCII digits only (click's int() takes '５' and '1_0')."""

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if not (text.isascii() and text.isdigit()):
            self.fail(f"{value!r} is not a whole number (digits 0-9)", param, ctx)
        return super().convert(value, param, ctx)


def _pg_duration(_ctx, param, value: str | None) -> str | None:
    """--ddl-lock-timeout / --statement-timeout: PostgreSQL's units, within what it accepts (--lock-retry-budget:
    the runner's own, a bare number in seconds)."""
    unit = "s" if param.name == "lock_retry_budget" else ""
    try:
        return durations.pg_duration(value, unit) if value else value  # empty: as not given (the variable, else the default)
    except ValueError as exc:
        raise click.BadParameter(str(exc))


LOCK_TIMEOUT = click.option(
    "--lock-timeout", type=Seconds(zero=True), default=DEFAULT_LOCK_TIMEOUT, show_default=True, metavar="SECONDS",
    help="How long to wait for another runner's migration lock.")
STRICT = click.option("--strict", is_flag=True,
                      help="Refuse to migrate while the live schema differs from the recorded one (exit 5).")
SCRATCH_URL = click.option(
    "--scratch-url", metavar="URL", envvar="SCRATCH_DATABASE_URL",
    help="Server for scratch databases, never its own database (else SCRATCH_DATABASE_URL, else the local one).")
REWRITE_THRESHOLD = click.option(
    "--rewrite-threshold-rows", type=Whole(min=0), metavar="ROWS",
    help="Refuse rewriting or scanning a table of over ROWS rows under a lock that stops the application, "
         "unless its file accepts it (else REWRITE_THRESHOLD_ROWS, 10000).")
QUIET = click.option("--quiet", is_flag=True,
                     help="No live progress lines (elapsed time, index phase, blockers) while a statement runs.")
SHOW_BLOCKER_QUERY = click.option(
    "--show-blocker-query", is_flag=True,
    help="In the lines about a session blocking a migration, show its query too, with every literal replaced by ? "
         "(by default: pid, user, application, state and lock only, as the query may hold secrets).")
DDL_LIMITS = [
    click.option("--ddl-lock-timeout", metavar="DURATION", callback=_pg_duration,
                 help="lock_timeout of each try of a migration's statement: a try never queues traffic behind its "
                      "lock longer (else DB_LOCK_TIMEOUT, else 300ms; 0 = wait forever)."),
    click.option("--lock-retry-budget", metavar="DURATION", callback=_pg_duration,
                 help="Retry a statement whose try timed out on a lock, with backoff, for this long in all (else "
                      "DB_LOCK_RETRY_BUDGET, else 5min; 0 = no retry)."),
    click.option("--statement-timeout", metavar="DURATION", callback=_pg_duration,
                 help="statement_timeout of every migration (else DB_STATEMENT_TIMEOUT, else 10min; 0 = none)."),
]
POSTGRES = [
    click.option("--database-url", metavar="URL", help="PostgreSQL URL; wins over every other setting."),
    click.option("--db-host", metavar="HOST", help="Server host (else DB_HOST, else localhost)."),
    click.option("--db-port", metavar="PORT", help="Server port (else DB_PORT, else 5432)."),
    click.option("--db-name", metavar="NAME", help="Database (else DB_NAME, else unifieddevdb)."),
    click.option("--db-user", metavar="USER", help="User (else DB_USER, else postgres); the password comes from DB_PASSWORD."),
    click.option("--secret-name", "--secret_name", "pg_secret", metavar="NAME",
                 help="AWS secret with host, port, username, password, dbname (else DB_SECRET_NAME)."),
    click.option("--schema", "schemas", multiple=True, metavar="NAME",
                 help="Run per tenant schema, each with its own history (repeatable; else SCHEMA_NAME=a,b, else the "
                      "URL's currentSchema)."),
]
# How a run over several schemas goes (migrate, rollback, mark; --parallel also plan and status).
SCHEMA_RUN = [
    click.option("--fail-fast", is_flag=True, help="Over several schemas: stop at the first that fails."),
    click.option("--parallel", type=Whole(min=1, max=64), default=1, show_default=True, metavar="N",
                 help="Over several schemas: run up to N at once (each its own connection and lock)."),
]
CREATE_SCHEMAS = click.option("--create-schemas", is_flag=True,
                              help="Create a schema named by --schema / SCHEMA_NAME that does not exist yet.")
MONGO = [
    click.option("--mongo-url", metavar="URL", help="MongoDB/DocumentDB URL (else MONGO_URL)."),
    click.option("--mongo-db", metavar="NAME", help="Mongo database (else MONGO_DB, the secret's, or the URL's)."),
    click.option("--mongo-timeout", type=Seconds(zero=False), default=MongoOptions.timeout,
                 show_default=True,
                 metavar="SECONDS", help="Give up on an unreachable Mongo server after this long."),
    click.option("--patch-timeout", type=Seconds(zero=True), default=0, envvar="MONGO_PATCH_TIMEOUT",
                 metavar="SECONDS", help="Stop a patch (Python or mongosh) running longer than this "
                                         "(else MONGO_PATCH_TIMEOUT; 0, the default: no limit)."),
]
# Beside the PostgreSQL options the Mongo secret has its own name; on the `mongo` commands it is
# --secret-name, as in the team's old patch scripts.
MONGO_SECRET = click.option("--mongo-secret-name", "mongo_secret", metavar="NAME",
                            help="AWS secret with the Mongo URL (else MONGO_SECRET_NAME).")
MONGO_SECRET_SEED = click.option(
    "--secret-name", "--secret_name", "mongo_secret", metavar="NAME",
    help="AWS secret with spring.data.mongodb.uri/.database, or DocumentDB's host, port, username, password, dbname "
         "(else MONGO_SECRET_NAME).")
AWS = [
    click.option("--profile", "--profile_name", metavar="PROFILE", help="AWS profile for secrets (else AWS_PROFILE)."),
    click.option("--region", metavar="REGION", help="AWS region for secrets (else AWS_REGION)."),
    click.option("--ca-bundle", "--ca_bundle", metavar="FILE",
                 help="TLS root certificate(s), e.g. the RDS bundle: PostgreSQL verify-full, Mongo TLS (else CA_BUNDLE)."),
]


def settings_options(*, postgres: bool = False, mongo: bool = False, sql_dir: bool = False):
    """Add the connection options a command needs and hand it one CommandSettings (`settings`) built from them.

    Put the command's own options below this decorator, and LOCK_TIMEOUT / DDL_LIMITS / STRICT below those:
    the wrapper takes every option it knows from what click passes, wherever it was declared.
    """
    options = [verbose_option, log_format_option]
    if postgres:
        options += POSTGRES
    if mongo:
        options += [*MONGO, MONGO_DIR, MONGO_SECRET if postgres else MONGO_SECRET_SEED]
    if postgres or mongo:
        options += AWS
    if sql_dir:
        options.append(SQL_DIR)

    def decorate(command):
        @functools.wraps(command)
        def wrapper(**kwargs):
            return command(settings=_settings(kwargs), **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def schema_run(command):
    for option in reversed(SCHEMA_RUN):
        command = option(command)
    return command


def ddl_limit_options(command):
    """The DDL limits alone (`config` shows them)."""
    for option in reversed(DDL_LIMITS):
        command = option(command)
    return command


def ddl_limits(command):
    """--ddl-lock-timeout, --lock-retry-budget, --statement-timeout, --quiet and --show-blocker-query (the commands
    that run migrations)."""
    for option in reversed([*DDL_LIMITS, QUIET, SHOW_BLOCKER_QUERY]):
        command = option(command)
    return command


def _take(kwargs: dict, *names: str) -> dict:
    """The named options, removed from what the command itself receives (absent ones as None)."""
    return {name: kwargs.pop(name, None) for name in names}


def _settings(kwargs: dict) -> CommandSettings:
    aws = _take(kwargs, "profile", "region", "ca_bundle")
    pg = _take(kwargs, "database_url", "db_host", "db_port", "db_name", "db_user", "pg_secret", "schemas",
               "create_schemas")
    mongo = _take(kwargs, "mongo_url", "mongo_db", "mongo_timeout", "patch_timeout", "mongo_secret")
    other = _take(kwargs, "sql_dir", "mongo_dir", "lock_timeout", "ddl_lock_timeout", "statement_timeout",
                  "lock_retry_budget", "strict", "fail_fast", "parallel", "quiet", "rewrite_threshold_rows",
                  "show_blocker_query")
    settings = CommandSettings(
        postgres=PostgresOptions(
            database_url=pg["database_url"], host=pg["db_host"], port=pg["db_port"], dbname=pg["db_name"],
            user=pg["db_user"], ca_bundle=aws["ca_bundle"],
            aws=AwsOptions(pg["pg_secret"], aws["profile"], aws["region"]),
            schemas=tuple(pg["schemas"] or ()), create_schemas=bool(pg["create_schemas"])),
        mongo=MongoOptions(
            url=mongo["mongo_url"], database=mongo["mongo_db"], ca_bundle=aws["ca_bundle"],
            timeout=mongo["mongo_timeout"] or MongoOptions.timeout, patch_timeout=mongo["patch_timeout"] or 0.0,
            aws=AwsOptions(mongo["mongo_secret"], aws["profile"], aws["region"])),
        ddl_lock_timeout=other["ddl_lock_timeout"], statement_timeout=other["statement_timeout"],
        lock_retry_budget=other["lock_retry_budget"],
        strict=bool(other["strict"]), fail_fast=bool(other["fail_fast"]), parallel=other["parallel"] or 1,
        progress=not other["quiet"], rewrite_threshold_rows=other["rewrite_threshold_rows"],
        show_blocker_query=bool(other["show_blocker_query"]),
    )
    for name in ("sql_dir", "mongo_dir", "lock_timeout"):
        if other[name] is not None:
            setattr(settings, name, other[name])
    # This repository's mongo/ is not another service's: pointed at another SQL folder, the Mongo side is listed
    # only when its folder (--mongo-dir / MONGO_DIR) or its connection is given for the run.
    context = click.get_current_context(silent=True)
    given = context is not None and context.get_parameter_source("mongo_dir") not in (None, ParameterSource.DEFAULT)
    settings.mongo_listed = given or settings.sql_dir == PROJECT_ROOT / "sql"
    return settings
