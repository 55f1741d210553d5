"""`plan --impact` (postgres.impact measures, reports.ImpactReport renders): each pending migration measured on a
scratch database; a note when that scratch server is not the live database's (another PostgreSQL version measures
other locks, rewrites and speeds)."""

from __future__ import annotations

from migrator import reports
from migrator.commands.base import CommandSettings
from migrator.commands.deploy import check_schema_drift
from migrator.errors import USAGE, MigratorError


def impact(settings: CommandSettings, scratch_url: str | None) -> reports.ImpactReport:
    """`plan --impact`: each pending migration measured on a scratch database built to the live database's
    applied state; the live database is only read (row estimates, sizes, open transactions). One schema
    per run. SIGTERM drops the scratch database and says so."""
    from migrator import interrupt, lint, postgres
    from migrator.commands.base import scratch_server
    from migrator.postgres import impact as measure

    migrations = postgres.read_migrations(settings.sql_dir)
    target = settings.postgres_target().one_schema("plan --impact")
    with postgres.connect(target, read_only=True) as backend:
        if target.schema and not _schema_exists(backend, target.schema):
            raise MigratorError(f"--schema {target.schema}: no such schema on {target.where}; "
                                "check --schema (or SCHEMA_NAME)", USAGE)
        todo = postgres.pending(backend, migrations)
        if not todo:  # nothing to measure: no scratch database
            return reports.ImpactReport(target.display_url, "", [])
        postgres.load_migrations(todo)
        drifted = [s.id for s in postgres.status(backend, migrations) if s.changed]
        if drifted:
            settings.note(f"note: applied migrations changed since they ran: {', '.join(drifted)}; the scratch database "
                          "is built from the files as they are now, so it may differ from the live schema")
        check_schema_drift(settings, backend, refuse=False)
        skipped = lint.squawk_path() is None
        if skipped:
            settings.note("note: lint skipped: squawk is not installed here (`make install` brings it)")
        findings = [] if skipped else lint.lint(todo)
        server = scratch_server(settings, scratch_url, target.user)
        note = scratch_note(server, target, backend.connection.server_version)
        with interrupt.guard():
            try:
                found = measure.measure(server, backend, migrations, todo, findings, target.schema)
            except interrupt.Interrupted as exc:
                raise MigratorError(f"plan --impact: {exc}: stopped; the scratch database on "
                                    f"{measure.server_name(server)} was "
                                    "dropped and the live database was only read", 128 + exc.signum)
    return reports.ImpactReport(target.display_url, measure.server_name(server), found, skipped,
                                [m.id for m in todo[len(found):]], note)


def _schema_exists(backend, schema: str) -> bool:
    with backend.connection.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (schema,))
        return cur.fetchone() is not None




def scratch_note(server, target, live_version: int) -> str:
    """The note when the scratch server is not the live database's: which versions each runs."""
    from migrator.postgres import impact as measure

    if server.server == target.server:
        return ""
    conn = measure.psycopg2_connect(server.url)
    try:
        version = conn.server_version
    finally:
        conn.close()
    differs = version // 10000 != live_version // 10000
    return (f"note: measured on {measure.server_name(server)} (PostgreSQL {_version(version)}), not on the live "
            f"database's server (PostgreSQL {_version(live_version)})"
            + (": another major version, whose locks and rewrites may differ from the live server's" if differs
               else ": the durations are that machine's speed")
            + "; --scratch-url a server like the live one (its version, its hardware) to measure what it will do")


def _version(number: int) -> str:
    return f"{number // 10000}.{number % 10000}"
