#!/usr/bin/env python3
"""hcm-db-migrations: keeps the HCM reporting databases up to date.

This file only parses options, calls the `migrator` package and prints. Exit codes:
0 ok, 1 failed (or, with status --exit-code, pending), 2 usage or configuration error,
3 an applied migration's file has changed (drift), 4 lock held by another runner.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from pathlib import Path

import click

from migrator import output
from migrator.errors import DRIFT, FAILED, USAGE, MigratorError
from migrator.settings import (AwsOptions, Env, MongoOptions, MongoTarget, PostgresOptions, PostgresTarget,
                               resolve_ddl_limits, resolve_mongo, resolve_postgres)

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
mongo_dir_option = click.option(
    "--mongo-dir", type=click.Path(path_type=Path), default=PROJECT_ROOT / "mongo", show_default="mongo/ beside runner.py",
    envvar="MONGO_DIR", help="Folder of the Mongo patches (else MONGO_DIR).",
)
ddl_limit_options = [
    click.option("--ddl-lock-timeout", metavar="DURATION",
                 help="lock_timeout of every migration: fail fast instead of queueing traffic behind a lock "
                      "(else DB_LOCK_TIMEOUT, else 5s; 0 = wait forever)."),
    click.option("--statement-timeout", metavar="DURATION",
                 help="statement_timeout of every migration (else DB_STATEMENT_TIMEOUT, else 10min; 0 = none)."),
]
lock_timeout_option = click.option(
    "--lock-timeout", type=float, default=10, show_default=True, metavar="SECONDS",
    help="How long to wait for another runner's migration lock.",
)

PG_OPTIONS = [
    click.option("--database-url", metavar="URL", help="PostgreSQL URL; wins over every other setting."),
    click.option("--db-host", metavar="HOST", help="Server host (else DB_HOST, else localhost)."),
    click.option("--db-port", metavar="PORT", help="Server port (else DB_PORT, else 5432)."),
    click.option("--db-name", metavar="NAME", help="Database (else DB_NAME, else unifieddevdb)."),
    click.option("--db-user", metavar="USER", help="User (else DB_USER, else postgres); the password comes from DB_PASSWORD."),
]
AWS_OPTIONS = [
    click.option("--profile", "--profile_name", metavar="PROFILE", help="AWS profile for secrets (else AWS_PROFILE)."),
    click.option("--region", metavar="REGION", help="AWS region for secrets (else AWS_REGION)."),
    click.option("--ca-bundle", "--ca_bundle", metavar="FILE",
                 help="TLS root certificate(s), e.g. the RDS bundle: PostgreSQL verify-full, Mongo TLS (else CA_BUNDLE)."),
]
MONGO_OPTIONS = [
    click.option("--mongo-url", metavar="URL", help="MongoDB/DocumentDB URL (else MONGO_URL)."),
    click.option("--mongo-db", metavar="NAME", help="Mongo database (else MONGO_DB, the secret's, or the URL's)."),
    click.option("--mongo-timeout", type=float, default=10, show_default=True, metavar="SECONDS",
                 help="Give up on an unreachable Mongo server after this long."),
    click.option("--patch-timeout", type=click.FloatRange(min=0), default=0, envvar="MONGO_PATCH_TIMEOUT",
                 metavar="SECONDS", help="Stop a JavaScript patch (mongosh) running longer than this "
                                         "(else MONGO_PATCH_TIMEOUT; 0, the default: no limit)."),
    mongo_dir_option,
]
PG_SECRET = click.option("--secret-name", "--secret_name", "pg_secret", metavar="NAME",
                         help="AWS secret with host, port, username, password, dbname (else DB_SECRET_NAME).")
MONGO_SECRET = click.option("--mongo-secret-name", "mongo_secret", metavar="NAME",
                            help="AWS secret with the Mongo URL (else MONGO_SECRET_NAME).")
MONGO_SECRET_SEED = click.option(
    "--secret-name", "--secret_name", "mongo_secret", metavar="NAME",
    help="AWS secret with spring.data.mongodb.uri/.database, or DocumentDB's host, port, username, password, dbname "
         "(else MONGO_SECRET_NAME).")


def _with(options: list, command):
    for option in reversed(options):
        command = option(command)
    return command


def _aws(kwargs: dict, secret_name: str | None) -> AwsOptions:
    return AwsOptions(secret_name=secret_name, profile=kwargs.get("profile"), region=kwargs.get("region"))


def _pg_options(kwargs: dict) -> PostgresOptions:
    return PostgresOptions(
        database_url=kwargs.pop("database_url"), host=kwargs.pop("db_host"), port=kwargs.pop("db_port"),
        dbname=kwargs.pop("db_name"), user=kwargs.pop("db_user"), ca_bundle=kwargs.get("ca_bundle"),
        aws=_aws(kwargs, kwargs.pop("pg_secret")),
    )


def _mongo_options(kwargs: dict) -> MongoOptions:
    return MongoOptions(
        url=kwargs.pop("mongo_url"), database=kwargs.pop("mongo_db"), ca_bundle=kwargs.get("ca_bundle"),
        timeout=kwargs.pop("mongo_timeout"), patch_timeout=kwargs.pop("patch_timeout"), aws=_aws(kwargs, kwargs.pop("mongo_secret")),
    )


def _drop_aws(kwargs: dict) -> dict:
    for name in ("profile", "region", "ca_bundle"):
        kwargs.pop(name)
    return kwargs


def postgres_options(command):
    """The options of the PostgreSQL-only commands (README, 'Connection settings')."""

    @functools.wraps(command)
    def wrapper(**kwargs):
        pg = _pg_options(kwargs)
        return command(pg_options=pg, **_drop_aws(kwargs))

    return _with([verbose_option, *PG_OPTIONS, PG_SECRET, *AWS_OPTIONS, sql_dir_option], wrapper)


def both_stores_options(command):
    """migrate, plan and status: the PostgreSQL options plus the Mongo ones."""

    @functools.wraps(command)
    def wrapper(**kwargs):
        pg, mongo = _pg_options(kwargs), _mongo_options(kwargs)
        return command(pg_options=pg, mongo_options=mongo, **_drop_aws(kwargs))

    return _with([verbose_option, *PG_OPTIONS, PG_SECRET, *MONGO_OPTIONS, MONGO_SECRET, *AWS_OPTIONS, sql_dir_option], wrapper)


def mongo_options(command):
    """The `mongo` commands: --secret-name is the Mongo secret here, as in the team's patch scripts."""

    @functools.wraps(command)
    def wrapper(**kwargs):
        mongo = _mongo_options(kwargs)
        return command(mongo_options=mongo, **_drop_aws(kwargs))

    return _with([verbose_option, *MONGO_OPTIONS, MONGO_SECRET_SEED, *AWS_OPTIONS], wrapper)


def _target(pg_options: PostgresOptions, env: Env) -> PostgresTarget:
    """Resolve and, when nothing is configured, start the local database, saying so loudly."""
    from migrator import postgres

    target = resolve_postgres(pg_options, env)
    for line in target.notes:
        output.note(line)
    if target.local_dev:
        target = postgres.resolve_target(target, env)
        output.note(f"no database configured: using the local development database at {target.display_url} "
                    "(set DATABASE_URL or DB_HOST to use another; `make db-stop` stops it)")
    return target


@contextlib.contextmanager
def _locked_backend(pg_options: PostgresOptions, env: Env, lock_timeout: float, limits=None):
    """(backend, target) for a command that changes the database: connected, and holding the lock."""
    from migrator import postgres

    target = _target(pg_options, env)
    output.note(f"PostgreSQL: {target.display_url}")
    with (postgres.connect(target, read_only=False, limits=limits) as backend,
          postgres.locked(backend, target, lock_timeout, output.note)):
        yield backend, target


@click.group(cls=Runner, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@verbose_option
@click.version_option(package_name=None, version=__import__("migrator").__version__, prog_name="hcm-db-migrations")
def cli():
    """Keep the HCM reporting databases up to date: PostgreSQL from sql/, MongoDB patches from mongo/.

    Settings come from options, then DATABASE_URL, then DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD,
    then an AWS secret (--secret-name); .env in the working directory is read too. With nothing
    configured, a local development database is used.
    """


@cli.command()
@both_stores_options
@lock_timeout_option
@ddl_limit_options[0]
@ddl_limit_options[1]
def migrate(pg_options, mongo_options, sql_dir, mongo_dir, lock_timeout, ddl_lock_timeout, statement_timeout):
    """Deploy: apply every pending SQL migration, then every never-applied Mongo patch (for real).

    Mongo runs only when a Mongo target is configured; otherwise it says so and skips it.
    """
    from migrator import postgres
    from migrator.mongo import patches

    env = Env.load()
    migrations = postgres.read_migrations(sql_dir)
    mongo_target = resolve_mongo(mongo_options, env)  # bad Mongo settings fail before PostgreSQL changes
    for line in mongo_target.notes if mongo_target else ():
        output.note(line)
    mongo_patches = patches.discover(mongo_dir) if mongo_target else []
    limits = resolve_ddl_limits(ddl_lock_timeout, statement_timeout, env)
    with _locked_backend(pg_options, env, lock_timeout, limits) as (backend, target):
        drift = postgres.reconcile(backend, migrations, output.note)
        if drift:
            raise postgres.drift_error(drift, target)
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
    if mongo_target is None:
        output.result("MongoDB: not configured, skipped")
        return
    _apply_patches(mongo_target, mongo_patches, names=(), run=True, lock_wait=lock_timeout)


@cli.command()
@both_stores_options
@click.option("--offline", is_flag=True, help="Print every migration without connecting to a database.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines (SQL, drift, lint; no Mongo dry runs).")
def plan(pg_options, mongo_options, sql_dir, mongo_dir, offline, as_json):
    """Print the SQL that `migrate` would run, in order, and dry-run the pending Mongo patches. Writes nothing.

    stdout is the files' exact SQL with BEGIN;/COMMIT; around transactional migrations, so a DBA can
    review it or feed it to psql; the Mongo part is in SQL comments; notes and patch output go to stderr.
    """
    from migrator import postgres
    from migrator.mongo import actions, connection, patches

    env = Env.load()
    migrations = postgres.read_migrations(sql_dir)  # only the files that will run are parsed
    mongo_target = None if offline else resolve_mongo(mongo_options, env)
    drift = []
    if offline:
        todo, where = postgres.ordered(migrations), "offline: every migration, no database consulted"
        postgres.load_migrations(todo)
    else:
        target = _target(pg_options, env)
        with postgres.connect(target, read_only=True) as backend:
            todo = postgres.pending(backend, migrations)
            drift = [s for s in postgres.status(backend, migrations) if s.changed]
        where = target.display_url
    findings, lint_note = _lint_or_note(todo)
    if as_json:
        output.result(json.dumps({
            "target": where,
            "pending": [{"id": m.id, "file": str(m.path), "transactional": postgres.is_transactional(m),
                         "sql": postgres.plan_text(m)} for m in todo],
            "drift": [{"id": d.id, "file": str(d.path)} for d in drift],
            "lint": [vars(f) for f in findings] if lint_note is None else None,
        }, indent=2))
        if drift:
            raise click.exceptions.Exit(DRIFT)
        return
    output.result(f"-- plan for {where}: {len(todo)} pending migration(s); nothing below has been run")
    for d in drift:
        output.result(f"-- DRIFT: {d.path} changed since it was applied; `migrate` will refuse to run")
    for finding in findings:
        output.result(f"-- lint: {finding}")
    if lint_note:
        output.note(lint_note)
    for migration in todo:
        output.result()
        output.result(postgres.plan_text(migration))

    mongo_patches = patches.discover(mongo_dir) if mongo_dir.is_dir() else []
    if mongo_target is None:
        names = ", ".join(p.id for p in mongo_patches) or "none"
        output.result(f"-- MongoDB: not configured; patches in {mongo_dir.name}/: {names}")
        if drift:
            raise click.exceptions.Exit(DRIFT)
        return
    with connection.connect(mongo_target) as db:
        pending = actions.pending(db, mongo_patches)
        output.result(f"-- MongoDB {mongo_target.display_uri} ({mongo_target.database}): "
                      f"{len(pending)} pending patch(es), dry-run below; nothing was written")
        with output.patch_output(err=True):  # the patches' own output stays off the SQL on stdout
            outcomes = list(actions.apply(db, mongo_target, mongo_patches, run=False, lock_wait=0, echo=output.note))
    for outcome in outcomes:
        output.result(f"--   {outcome.patch.id} ({outcome.patch.kind}): {outcome.comment or '(no comment)'}")
    if drift:
        raise click.exceptions.Exit(DRIFT)


@cli.command()
@both_stores_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--exit-code", is_flag=True,
              help="Exit 1 while migrations are pending and 3 while an applied file has changed (for CI gates).")
def status(pg_options, mongo_options, sql_dir, mongo_dir, as_json, exit_code):
    """List every SQL migration (applied, when, pending, changed since applied) and every Mongo patch. Writes nothing.

    Also reports INVALID indexes left by a failed CREATE INDEX CONCURRENTLY.
    """
    from migrator import postgres

    env = Env.load()
    migrations = postgres.read_migrations(sql_dir)  # listing needs no parsing
    mongo_target = resolve_mongo(mongo_options, env)
    target = _target(pg_options, env)
    with postgres.connect(target, read_only=True) as backend:
        states = postgres.status(backend, migrations)
        invalid = postgres.invalid_indexes(backend)
    pending = any(not s.applied_at for s in states)
    changed = any(s.changed for s in states)
    mongo = _patch_summaries(mongo_target, mongo_dir) if mongo_target else None
    _status_output(target, states, invalid, mongo_target, mongo, as_json)
    if exit_code and changed:
        raise click.exceptions.Exit(DRIFT)
    if exit_code and pending:
        raise click.exceptions.Exit(FAILED)


def _status_output(target, states, invalid, mongo_target, mongo, as_json) -> None:
    applied = sum(1 for s in states if s.applied_at)
    pending = sum(1 for s in states if not s.applied_at)
    changed = [s for s in states if s.changed]
    if as_json:
        output.result(json.dumps({
            "target": target.display_url,
            "migrations": [
                {"id": s.id, "status": s.state, "applied_at": s.applied_at.isoformat() if s.applied_at else None,
                 "file": str(s.path) if s.path else None, "failure": s.failure}
                for s in states
            ],
            "applied": applied,
            "pending": pending,
            "changed": [s.id for s in changed],
            "invalid_indexes": [f"{schema}.{index}" for schema, index, _ in invalid],
            "mongo": None if mongo is None else {
                "target": mongo_target.display_uri, "database": mongo_target.database,
                "patches": [_summary_json(p) for p in mongo],
            },
        }, indent=2))
        return
    output.result(f"PostgreSQL {target.display_url}")
    width = max((len(s.id) for s in states), default=0)
    for s in states:
        when = s.applied_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.applied_at else ""
        output.result(f"  {s.id:<{width}}  {s.state:<8}  {when}".rstrip())
        if s.failure:
            output.result(f"    {s.failure}")
    output.result(f"PostgreSQL: {applied} applied, {pending} pending" + (f", {len(changed)} CHANGED since applied" if changed else ""))
    if changed:
        ids = " ".join(s.id for s in changed)
        output.result(f"  changed files block `migrate`: restore them, or after review `runner.py sql accept-changes {ids}`")
    for schema, index, table in invalid:
        output.result(f"  INVALID index {schema}.{index} on {table} (a failed CREATE INDEX CONCURRENTLY): "
                      f"DROP INDEX CONCURRENTLY {schema}.{index}; then run migrate again")
    if mongo is None:
        output.result("MongoDB: not configured")
    else:
        _print_patch_summaries(mongo_target, mongo)


@cli.command()
@both_stores_options
def config(pg_options, mongo_options, sql_dir, mongo_dir):
    """Show the resolved connections and where each setting came from (passwords masked). Connects to nothing."""
    env = Env.load()
    mongo = resolve_mongo(mongo_options, env)
    target = resolve_postgres(pg_options, env)
    for line in target.notes:
        output.result(line)
    if target.local_dev:
        from migrator import devdb

        output.result(f"PostgreSQL: local development database in {devdb.data_dir(env)} "
                      "(nothing configured; started on first use)")
    else:
        output.result(f"PostgreSQL: {target.display_url}")
        origin = target.sources.get("url")
        rows = [("host", "host", target.host or target.params.get("host")), ("port", "port", target.port),
                ("database", "dbname", target.dbname), ("user", "user", target.user),
                ("password", "password", "***" if target.password else "(none)")]
        for label, key, value in rows:
            output.result(f"  {label:<9} {value!s:<30} {origin or target.sources.get(key, 'default')}")
        output.result(f"  {'tls':<9} {target.tls}")
    output.result(f"  {'sql dir':<9} {sql_dir}")
    if mongo is None:
        output.result("MongoDB: not configured (set MONGO_URL and MONGO_DB, or MONGO_SECRET_NAME)")
        return
    for line in mongo.notes:
        output.result(line)
    output.result(f"MongoDB: {mongo.display_uri}")
    output.result(f"  {'database':<9} {mongo.database:<30} {mongo.sources['database']}")
    output.result(f"  {'url':<9} {mongo.hosts:<30} {mongo.sources['url']}")
    output.result(f"  {'tls':<9} {mongo.tls}")
    if mongo.documentdb:
        output.result(f"  {'options':<9} retryWrites=false (DocumentDB)")
    output.result(f"  {'mongo dir':<9} {mongo_dir}")


# --- the Mongo side ---------------------------------------------------------------------------


def _mongo_target(mongo_options: MongoOptions) -> MongoTarget:
    target = resolve_mongo(mongo_options, Env.load())
    if target is None:
        raise MigratorError("MongoDB is not configured: set MONGO_URL (and MONGO_DB), or pass --secret-name", USAGE)
    for line in target.notes:
        output.note(line)
    output.note(f"MongoDB: {target.display_uri} (database {target.database})")
    return target


def _apply_patches(target: MongoTarget, found: list, names, run: bool, lock_wait: float) -> None:
    from migrator.mongo import actions, connection

    if not run:
        output.note("dry run: nothing will be written (add --run to apply)")
    count = 0
    with connection.connect(target) as db, output.patch_output():
        for outcome in actions.apply(db, target, found, list(names) or None, run=run, lock_wait=lock_wait,
                                     echo=output.result):
            count += 1
            verb = "applied" if run else "dry run"
            output.result(f"  {verb} {outcome.patch.id} ({outcome.seconds * 1000:.0f} ms): {outcome.comment or '(no comment)'}")
    if not count:
        output.result(f"MongoDB: up to date ({len(found)} patch(es), all applied)")
    elif run:
        output.result(f"MongoDB: applied {count} patch(es)")
    else:
        output.result(f"MongoDB: dry run of {count} patch(es); nothing was written")


def _patch_summaries(target: MongoTarget, mongo_dir: Path):
    from migrator.mongo import actions, connection, patches

    found = patches.discover(mongo_dir)
    with connection.connect(target) as db:
        return actions.status(db, found)


def _summary_json(summary) -> dict:
    return {"id": summary.id, "state": summary.label, "applied_count": summary.applied_count,
            "last_applied": summary.last_applied.isoformat() if summary.last_applied else None,
            "last_outcome": summary.last_outcome, "file": str(summary.patch.path) if summary.patch else None,
            "blocked": summary.state in ("running", "failed", "changed")}


def _print_patch_summaries(target: MongoTarget, summaries) -> None:
    from migrator.mongo import state

    output.result(f"MongoDB {target.display_uri} ({target.database})")
    width = max((len(s.id) for s in summaries), default=0)
    for s in summaries:
        last = f"last {s.last_applied:%Y-%m-%d %H:%M:%S} UTC" if s.last_applied else ""
        outcome = f"last outcome: {s.last_outcome}" if s.last_outcome else ""
        output.result(f"  {s.id:<{width}}  {s.label:<14}  {last:<27}  {outcome}".rstrip())
    never = sum(1 for s in summaries if s.state == state.PENDING)
    output.result(f"MongoDB: {sum(1 for s in summaries if s.applied_count and s.patch)} applied, {never} never applied"
                  + (f", {sum(1 for s in summaries if not s.patch)} logged but not on disk" if any(not s.patch for s in summaries) else ""))
    for s in summaries:
        if s.state in state.BLOCKED:
            output.result(f"  blocked: {state.explain(s)}")


@cli.group()
def mongo():
    """MongoDB / DocumentDB data patches in mongo/: status, apply (dry run unless --run), history, new."""


@mongo.command("status")
@mongo_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def mongo_status(mongo_options, mongo_dir, as_json):
    """Each patch: never applied or applied N times, when last, the last outcome; and logged patches no longer on disk."""
    target = _mongo_target(mongo_options)
    summaries = _patch_summaries(target, mongo_dir)
    if as_json:
        output.result(json.dumps({"target": target.display_uri, "database": target.database,
                                  "patches": [_summary_json(s) for s in summaries]}, indent=2))
    else:
        _print_patch_summaries(target, summaries)


@mongo.command("apply")
@mongo_options
@click.argument("names", nargs=-1, metavar="[PATCH]...")
@click.option("--run", is_flag=True, help="Apply for real and log it in applied_patches. Without it: a dry run.")
@lock_timeout_option
def mongo_apply(mongo_options, mongo_dir, names, run, lock_timeout):
    """Run patches: with no PATCH, every patch never applied successfully, in order; named ones even if applied before.

    A dry run unless --run: Python patches get a read-only database and JavaScript ones DRY_RUN=true,
    and nothing is written, not even the log. Stops at the first failure (logged as failed with --run).
    """
    from migrator.mongo import patches

    target = _mongo_target(mongo_options)
    _apply_patches(target, patches.discover(mongo_dir), names, run, lock_timeout)


@mongo.command("history")
@mongo_options
@click.argument("patch", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def mongo_history(mongo_options, mongo_dir, patch, as_json):
    """The applied_patches log, newest first (of one PATCH if given)."""
    from migrator.mongo import connection, log

    target = _mongo_target(mongo_options)
    with connection.connect(target) as db:
        records = log.history(db, patch)[::-1]
    if as_json:
        output.result(json.dumps([log.printable(r) for r in records], indent=2, default=str))
        return
    for r in records:
        at = log.when(r)
        when = f"{at:%Y-%m-%d %H:%M:%S} UTC" if at != log.EPOCH else "(no date)"
        who = f"{r.get('user', '')}@{r.get('host', '')}" if r.get("host") else "(seed record)"
        comment = str(r.get("error") or r.get("comment") or "")  # from outside the runner: scrubbed, one line
        output.result(output.scrub(" ".join(f"{when}  {r.get('patch')}  {log.status_of(r)}  {who}  {comment}".split("\n"))))
    output.result(f"{len(records)} record(s)")


@mongo.command("resolve")
@mongo_options
@click.argument("patch")
@click.option("--applied", "applied", flag_value=True, default=None, help="Its writes are complete: count it as applied.")
@click.option("--not-applied", "applied", flag_value=False, help="Its writes were undone or never made: it is pending again.")
@click.option("--note", required=True, help="What you checked (logged with your user and host).")
@lock_timeout_option
def mongo_resolve(mongo_options, mongo_dir, patch, applied, note, lock_timeout):
    """After a look at the data, settle a patch whose run failed or never finished (logged in applied_patches)."""
    from migrator.mongo import actions, connection, patches

    if applied is None:
        raise MigratorError("say what you found: --applied (its writes are complete) or --not-applied", USAGE)
    target = _mongo_target(mongo_options)
    with connection.connect(target) as db:
        actions.resolve(db, patches.discover(mongo_dir), patch, applied=applied, note=note, lock_wait=lock_timeout)
    output.result(f"resolved {patch} as {'applied' if applied else 'not applied'}")


@mongo.command("accept-changes")
@mongo_options
@click.argument("names", nargs=-1, required=True, metavar="PATCH...")
@click.option("--note", default="file change reviewed", show_default=True, help="Why (logged).")
@lock_timeout_option
def mongo_accept_changes(mongo_options, mongo_dir, names, note, lock_timeout):
    """Accept the current file of applied patches that changed since (after review); they are not re-run."""
    from migrator.mongo import actions, connection, patches

    target = _mongo_target(mongo_options)
    with connection.connect(target) as db:
        done = actions.accept_changes(db, patches.discover(mongo_dir), list(names), note=note, lock_wait=lock_timeout)
    for record in done:
        output.result(f"accepted the changed file of {record['patch']} (checksum {record['checksum'][:12]})")


@mongo.command("new")
@click.argument("name")
@click.option("--py", "kind", flag_value="py", default=True, help="A Python (pymongo) patch (the default).")
@click.option("--js", "kind", flag_value="js", help="A JavaScript (mongosh) patch.")
@mongo_dir_option
def mongo_new(name, kind, mongo_dir):
    """Create the next numbered patch NAME from a template showing the dry-run contract."""
    from migrator.mongo import patches

    output.result(f"created {patches.new(mongo_dir, name, kind)}")


@cli.group()
def sql():
    """Manage the SQL migrations: rollback, new, mark, accept-changes, lint, break-lock."""


@sql.command()
@postgres_options
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Roll back the last N migrations.")
@click.option("--to", "to", metavar="ID", help="Roll back every migration applied after ID (ID stays applied).")
@click.option("--all", "all_", is_flag=True, help="Roll back every applied migration.")
@lock_timeout_option
@ddl_limit_options[0]
@ddl_limit_options[1]
def rollback(pg_options, sql_dir, count, to, all_, lock_timeout, ddl_lock_timeout, statement_timeout):
    """Roll back applied migrations through their .rollback.sql files (default: the last one)."""
    from migrator import postgres

    if sum(x is not None and x is not False for x in (count, to, all_)) > 1:
        raise MigratorError("give one of --count, --to and --all", USAGE)
    env = Env.load()
    migrations = postgres.read_migrations(sql_dir)
    limits = resolve_ddl_limits(ddl_lock_timeout, statement_timeout, env)
    with _locked_backend(pg_options, env, lock_timeout, limits) as (backend, target):
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
    with _locked_backend(pg_options, Env.load(), lock_timeout) as (backend, _):
        already = set(postgres.applied_ids(backend))
        todo = [m for m in selected if m.id not in already]
        postgres.mark(backend, todo)
    for migration in selected:
        output.result(f"  {'already applied' if migration.id in already else 'marked applied'}: {migration.id}")


@sql.command("accept-changes")
@postgres_options
@click.argument("ids", nargs=-1, required=True)
@lock_timeout_option
def accept_changes(pg_options, sql_dir, ids, lock_timeout):
    """After review, record the current content of applied migrations IDS as what was applied."""
    from migrator import checksums, postgres

    migrations = postgres.read_migrations(sql_dir)
    selected = postgres.select_by_id(migrations, list(ids))
    with _locked_backend(pg_options, Env.load(), lock_timeout) as (backend, target):
        applied = postgres.applied_ids(backend)
        not_applied = [m.id for m in selected if m.id not in applied]
        if not_applied:
            raise MigratorError(f"{', '.join(not_applied)} not applied on {target.where}: nothing to accept "
                                "(a pending file may change freely)", USAGE)
        changes = checksums.accept(backend, selected)
    for change in changes:
        was = change.recorded[:12] or "nothing"
        output.result(f"  accepted {change.id}: sha256 {change.current[:12]} (was {was})")


@sql.command("lint")
@verbose_option
@sql_dir_option
def lint_command(sql_dir):
    """Lint the migrations with squawk and .squawk.toml, each as the runner will run it; exit 1 on findings."""
    from migrator import lint, postgres

    migrations = postgres.read_migrations(sql_dir)
    findings = lint.lint(migrations)
    for finding in findings:
        output.result(str(finding))
    if findings:
        output.error(f"lint: {len(findings)} finding(s) in {len({f.path for f in findings})} file(s); "
                     "fix them, or exclude a rule in .squawk.toml with the reason beside it")
        raise click.exceptions.Exit(FAILED)
    output.result(f"lint: {len(migrations)} migration(s) clean")


def _lint_or_note(migrations) -> tuple[list, str | None]:
    """Lint findings for `plan`; without squawk (the runner image), a note instead."""
    from migrator import lint

    if not migrations:
        return [], None
    if lint.squawk_path() is None:
        return [], "note: lint skipped: squawk is not installed here (`make install` brings it)"
    return lint.lint(migrations), None


@sql.command("break-lock")
@postgres_options
def break_lock(pg_options, sql_dir):
    """Remove a yoyo lock row left behind, e.g. by a bare `yoyo` CLI run that died.

    runner.py itself clears such a row on its own while it holds the advisory lock, so this is rarely needed.
    """
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
