"""doctor: everything a real run needs, checked in the order a run meets it, changing nothing.

Settings first (they need no network), then each store over read-only connections, then the tools.
A store whose settings FAIL is not connected to; nothing configured means the local development
database, which doctor does not start.
"""

from __future__ import annotations

from migrator.commands.base import CommandSettings, with_history
from migrator.doctor import DoctorReport


def doctor(settings: CommandSettings, *, dev_tools: bool = True) -> DoctorReport:
    from migrator.doctor import environment, mongo, postgres  # (ssl, subprocess: not for every command's start)

    report = DoctorReport()
    env = settings.env
    environment.dotenv(report, env)
    environment.ca_bundle(report, settings.postgres.ca_bundle, env)
    pg_target = environment.postgres_settings(report, settings.postgres, env)
    mongo_target = environment.mongo_settings(report, settings.mongo, env, settings.patch_dir)
    if pg_target is not None and not pg_target.local_dev:
        postgres.check(report, with_history(pg_target, settings.sql_dir), settings.sql_dir)
    js_to_run = mongo.check(report, mongo_target, settings.mongo_dir) if mongo_target is not None else None
    environment.mongosh(report, settings.mongo_dir if mongo_target else settings.patch_dir, mongo_target is not None,
                        js_to_run)
    if dev_tools:
        environment.squawk(report)
    return report
