"""The Mongo commands: patch status, apply (a dry run unless run=True), history, resolve, accept-changes, new.

A patch's own print() reaches the terminal through output.patch_output (masked), not through the sinks:
it is the patch's output, not the runner's."""

from __future__ import annotations

from pathlib import Path

from migrator import output
from migrator.commands.base import CommandSettings
from migrator.errors import USAGE, MigratorError
from migrator.reports import HistoryReport, Lines, PatchRunReport, PatchStatusReport
from migrator.targets import MongoTarget


def target(settings: CommandSettings) -> MongoTarget:
    """The configured Mongo target, said on stderr; an error when there is none."""
    found = settings.mongo_target(required=True)
    settings.note(f"MongoDB: {found.display_uri} (database {found.database})")
    return found


def patch_status(settings: CommandSettings, mongo: MongoTarget) -> PatchStatusReport:
    from migrator.mongo import actions, connection, patches

    found = patches.discover(settings.mongo_dir)
    with connection.connect(mongo) as db:
        return PatchStatusReport(mongo.display_uri, mongo.database, actions.status(db, found))


def run_patches(settings: CommandSettings, mongo: MongoTarget, found: list, names, *, run: bool) -> PatchRunReport:
    """Run the named patches, or every pending one; each is printed as it finishes."""
    from migrator.mongo import actions, connection, seal

    if not run:
        mongo = mongo.for_dry_run()
        # not checked here (a probe write would be a write): doctor's probe proves the server refuses them
        enforced = (f"; as the read-only user from {mongo.sources['url']} (that the server refuses its writes, and "
                    f"those of a client without credentials, is unchecked here: `runner.py doctor` checks it; "
                    f"{seal.guarantee()})" if mongo.read_only else "")
        settings.note(f"dry run: nothing will be written (add --run to apply){enforced}")
    report = PatchRunReport(run, found=len(found))
    with connection.connect(mongo) as db, output.patch_output():
        try:
            for outcome in actions.apply(db, mongo, found, list(names) or None, run=run,
                                         lock_wait=settings.lock_timeout, echo=settings.echo):
                report.ran.append(outcome.patch.id)
                verb = "applied" if run else "dry run"
                output.event("patch_applied" if run else "patch_dry_run", patch=outcome.patch.id,
                             duration_ms=round(outcome.seconds * 1000), comment=outcome.comment)
                settings.echo(f"  {verb} {outcome.patch.id} ({outcome.seconds * 1000:.0f} ms): "
                              f"{outcome.comment or '(no comment)'}")
        except MigratorError as exc:
            output.event("patch_failed", run=run, after=report.ran, error=str(exc))
            raise
    return report


def apply(settings: CommandSettings, names, *, run: bool) -> PatchRunReport:
    from migrator.mongo import patches

    mongo = target(settings)
    return run_patches(settings, mongo, patches.discover(settings.mongo_dir), names, run=run)


def history(settings: CommandSettings, patch: str | None) -> HistoryReport:
    """The applied_patches log, newest first (of one patch if given)."""
    from migrator.mongo import connection, log

    with connection.connect(target(settings)) as db:
        return HistoryReport(log.history(db, patch)[::-1])


def resolve(settings: CommandSettings, patch: str, *, applied: bool | None, note: str) -> Lines:
    from migrator.mongo import actions, connection, patches

    if applied is None:
        raise MigratorError("say what you found: --applied (its writes are complete) or --not-applied", USAGE)
    with connection.connect(target(settings)) as db:
        actions.resolve(db, patches.discover(settings.mongo_dir), patch, applied=applied, note=note,
                        lock_wait=settings.lock_timeout)
    return Lines([f"resolved {patch} as {'applied' if applied else 'not applied'}"])


def accept_changes(settings: CommandSettings, names: list[str], note: str) -> Lines:
    from migrator.mongo import actions, connection, patches

    with connection.connect(target(settings)) as db:
        done = actions.accept_changes(db, patches.discover(settings.mongo_dir), names, note=note,
                                      lock_wait=settings.lock_timeout)
    return Lines([f"accepted the changed file of {r['patch']} (checksum {r['checksum'][:12]})" for r in done])


def new(mongo_dir: Path, name: str, kind: str) -> Lines:
    from migrator.mongo import patches

    return Lines([f"created {patches.new(mongo_dir, name, kind)}"])
