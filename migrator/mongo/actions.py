"""What the CLI calls on the Mongo side: pending, apply, status, history.

`apply` is a dry run unless run=True. A dry run writes nothing at all: no lock, no log record,
and Python patches get a read-only view. A real run takes the lock, logs every application
(failed ones too) and stops at the first failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from migrator.errors import MigratorError
from migrator.mongo import lock, log
from migrator.mongo.patches import JsPatchFailed, Patch, patch_key, run_js, run_python
from migrator.settings import MongoTarget


@dataclass
class Outcome:
    patch: Patch
    comment: str | None
    seconds: float


def pending(db, patches: list[Patch]) -> list[Patch]:
    """Patches never applied successfully (seed-shaped records count as successes)."""
    done = {patch_key(str(r.get("patch", ""))) for r in log.history(db) if log.succeeded(r)}
    return [p for p in patches if p.key not in done]


def apply(db, target: MongoTarget | None, patches: list[Patch], *, run: bool, lock_wait: float,
          echo: Callable[[str], None]) -> Iterator[Outcome]:
    """Run the patches in order, yielding each outcome; raise MigratorError at the first failure."""
    if not run:
        for patch in patches:
            yield _run_one(db, target, patch, dry_run=True, echo=echo)
        return
    with lock.held(db, target.where if target else db.name, lock_wait) as held:
        for patch in patches:
            held.renew()
            started = log.utcnow()
            try:
                outcome = _run_one(db, target, patch, dry_run=False, echo=echo)
            except MigratorError as exc:
                log.append(db, patch, status="failed", comment=None, started=started, error=str(exc))
                raise
            log.append(db, patch, status="applied", comment=outcome.comment, started=started)
            yield outcome


def _run_one(db, target: MongoTarget | None, patch: Patch, *, dry_run: bool, echo: Callable[[str], None]) -> Outcome:
    from migrator.mongo.readonly import DryRunWriteError

    started = time.perf_counter()
    mode = "dry run of " if dry_run else ""
    try:
        if patch.kind == "py":
            comment = run_python(patch, db, dry_run)
        else:
            comment = run_js(patch, target, dry_run, echo)
    except MigratorError:
        raise
    except DryRunWriteError as exc:
        raise MigratorError(f"{patch.path}: {mode}{patch.id} tried to write: {exc}") from exc
    except JsPatchFailed as exc:
        raise MigratorError(f"{patch.path}: {mode}{patch.id} failed ({exc}); fix the patch and apply it again") from exc
    except Exception as exc:  # the patch's own error: name it, keep the traceback for -v
        raise MigratorError(
            f"{patch.path}: {mode}{patch.id} failed: {exc.__class__.__name__}: {exc}; fix the patch and apply it again"
        ) from exc
    return Outcome(patch, comment, time.perf_counter() - started)


def status(db, patches: list[Patch]) -> list[log.PatchSummary]:
    return log.summarise(log.history(db), patches)
