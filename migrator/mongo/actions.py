"""What the CLI calls on the Mongo side: status, apply, resolve, accept-changes.

`apply` is a dry run unless run=True. A dry run writes nothing at all: no lock, no log record,
Python patches get a read-only view and JS ones an immutable DRY_RUN. A real run takes the lock
(kept by a heartbeat), reads the log under it, writes a `running` record before each patch and
settles it after; it stops at the first failure, and refuses to start while a patch is blocked
(see state.py).
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from migrator import output
from migrator.errors import INTERRUPTED, LOCKED, USAGE, MigratorError, words
from migrator import interrupt
from migrator.mongo import js_patch, lock, log, patch_child, python_patch, state
from migrator.mongo.js_patch import JsPatchFailed
from migrator.mongo.patches import Patch, one_line
from migrator.targets import MongoTarget



class PatchFailed(MigratorError):
    """A patch's own failure; `reason` is what the log keeps, `where` its file (and line, when known)."""

    def __init__(self, patch: Patch, reason: str, advice: str, where: str | None = None):
        self.where = where or str(patch.path)
        super().__init__(f"{self.where}: {patch.id} failed: {reason}; {advice}")
        self.reason = reason


@dataclass
class Outcome:
    patch: Patch
    comment: str | None
    seconds: float


def pending(db, patches: list[Patch]) -> list[Patch]:
    """What an automatic run would apply now; one line (MigratorError) while a patch is blocked."""
    return state.pending(state.read(db, patches))


def apply(db, target: MongoTarget | None, patches: list[Patch], names: list[str] | None = None, *, run: bool,
          lock_wait: float, echo: Callable[[str], None]) -> Iterator[Outcome]:
    """Run the named patches (None: the pending ones) in order, yielding each outcome.

    Raises MigratorError at the first failure, after logging it.
    """
    from migrator.mongo.patches import select

    with interrupt.guard(ctrl_c=True) as guard:  # SIGTERM (a Job's deadline) or Ctrl-C: one line, the patch named
        if not run:
            yield from _dry_run(db, target, select(patches, names) if names else None, patches, guard, echo)
            return
        done: list[str] = []
        try:
            with lock.held(db, target.where if target else db.name, lock_wait) as held:
                try:
                    todo = select(patches, names) if names else pending(db, patches)  # read under the lock
                    for patch in todo:
                        guard.resume()  # its loading and its run can be stopped
                        guard.check()  # a signal that waited for the previous record and its line
                        outcome = _apply_one(db, target, patch, held, guard, echo)  # returns held: its record is settled
                        done.append(patch.id)
                        yield outcome
                finally:
                    guard.hold()  # the lock is released, and what happened is said, whatever comes now
            guard.check()
        except interrupt.Interrupted as exc:  # between patches (or before the first, after the last): none is half done
            applied = f"after applying {', '.join(done)} (logged)" if done else "before any patch started"
            raise MigratorError(f"{exc} {applied}; the remaining patches did not run", _exit_code(exc)) from exc


def _dry_run(db, target, chosen: list[Patch] | None, patches: list[Patch], guard: interrupt.Guard, echo):
    done: list[str] = []
    try:
        for patch in pending(db, patches) if chosen is None else chosen:
            guard.resume()
            guard.check()
            try:
                outcome = _run_one(db, target, patch, dry_run=True, echo=echo)  # returns held
            except interrupt.Interrupted as exc:
                raise MigratorError(f"{patch.path}: dry run of {patch.id} {exc} (nothing was written)",
                                    _exit_code(exc)) from exc
            done.append(patch.id)
            yield outcome
        guard.hold()
        guard.check()
    except interrupt.Interrupted as exc:
        after = f"after {', '.join(done)}" if done else "before any patch started"
        raise MigratorError(f"dry run {exc} {after}; the remaining patches did not run (nothing was written)",
                            _exit_code(exc)) from exc


def _exit_code(exc: interrupt.Interrupted) -> int:
    return 128 + signal.SIGINT if exc.signum == signal.SIGINT else INTERRUPTED  # as a shell reports Ctrl-C


def _apply_one(db, target, patch: Patch, held: lock.Lock, guard: interrupt.Guard, echo) -> Outcome:
    """Load, record, run and settle one patch. Every way it ends says which patch and whether it ran; it returns
    with the guard held (a signal since the patch returned waits for its record and its line)."""
    try:
        loaded = _prepare(patch, target if patch_child.used(db, target) else None)  # a patch that cannot load fails here: no record, nothing blocked
    except interrupt.Interrupted as exc:
        raise MigratorError(f"{patch.path}: {patch.id} {exc} while it loaded (it did not run, no record was "
                            "written); the remaining patches did not run", _exit_code(exc)) from exc
    where = target.where if target else db.name
    try:
        with guard.deferred(), _server_lost(
                where, patch, "before it started: it did not run, but its `running` record may have been written (if "
                f"`runner.py mongo status` shows it, `runner.py mongo resolve {patch.id} --not-applied --note ...` "
                "once the server is back)"):
            held.check()
            record = log.begin(db, patch, held.owner)
    except BaseException:
        with guard.deferred():
            if isinstance(loaded, patch_child.Child):
                loaded.kill()
        raise
    started = False
    try:
        guard.check()  # a SIGTERM while the record was written: the patch never starts
        started = True
        with held.stopping():  # the lock lost meanwhile: the patch's process is stopped then, not when it returns
            outcome = _run_one(db, target, patch, dry_run=False, echo=echo, loaded=loaded)  # returns held
    except BaseException as exc:  # SystemExit, SIGTERM, a bug in the patch: all failures of this patch
        with guard.deferred():  # (a signal now: the failure is settled and said first)
            if not started and isinstance(loaded, patch_child.Child):
                loaded.kill()  # loaded, never started: its process (and the runner's reaper) end here
            _settle_failure(db, where, record, patch, exc, started, held)
        raise  # not reached: _settle_failure raises
    guard.hold()
    returned = (f"after it returned (its writes are done), so its record is left `running`: once the server is back, "
                f"`runner.py mongo status`, check its writes, then `runner.py mongo resolve {patch.id} --applied --note ...`")
    try:
        with _server_lost(where, patch, returned):
            try:
                held.check()  # lost the lock while the patch ran: leave the record running, say so
            except MigratorError as exc:  # (the patch ran: never let the line read as if it had not; the server
                raise MigratorError(  # answered, it is the lock that is gone)
                    f"{exc}; patch {patch.id} ({patch.path}) had finished (its writes are done) when the lost lock was "
                    f"seen, its record is left `running` (this runner no longer holds the lock): check its "
                    f"writes, then `runner.py mongo resolve {patch.id} --applied --note ...`", exc.exit_code) from exc
            log.settle(db, record, log.APPLIED, comment=outcome.comment)
    except MigratorError as exc:
        if guard.pending is None:
            raise
        stopped = interrupt.Interrupted(guard.pending)
        raise MigratorError(f"{stopped} after {patch.id} ran; {exc}", _exit_code(stopped)) from exc
    return outcome


@contextlib.contextmanager
def _server_lost(where: str, patch: Patch, known: str, at: str | None = None) -> Iterator[None]:
    """The server went away (or refused) around a patch's record: one line naming the server, the patch's file and
    what is known of its state, rather than only the server (the CLI's connection line)."""
    from pymongo.errors import PyMongoError

    try:
        yield
    except PyMongoError as exc:
        said = _driver_words(one_line(output.scrub(words(exc))))
        raise MigratorError(f"MongoDB at {where}: {said}; patch {patch.id} ({at or patch.path}) {known}") from exc


# pymongo's additions to a connection error, which say nothing the line needs (and its topology runs to 500 chars).
DRIVER_NOISE = re.compile(r" \(configured timeouts:[^)]*\)|, Timeout: .*$")


def _driver_words(text: str) -> str:
    return DRIVER_NOISE.sub("", text)


def _prepare(patch: Patch, target: MongoTarget | None):
    """Load a Python patch in its child process (its module-level code runs), or check mongosh and a JS file:
    one line, exit 2. With no target (tests on an in-memory database) the patch loads in this process."""
    if patch.kind == "py":
        return patch_child.Child(patch, target, dry_run=False) if target else python_patch.load(patch, dry_run=False)
    js_patch.check(patch)
    return None


def _settle_failure(db, where: str, record, patch: Patch, exc: BaseException, started: bool, held) -> None:
    """Called with the guard deferred: a signal meanwhile waits until the record is written and the line said."""
    if isinstance(exc, lock.Lost):  # its record is another runner's business now: left `running`, said
        raise MigratorError(
            f"lost the patch lock on {where} ({exc}) while patch {patch.id} ({patch.path}) ran: its process was "
            f"stopped then; its writes until then are kept and its record is left `running`: `runner.py mongo status`, "
            f"check its writes, then `runner.py mongo resolve {patch.id} --applied` or `--not-applied` (with --note)",
            LOCKED) from exc
    status = log.FAILED if started else log.CANCELLED
    error = exc.reason if isinstance(exc, PatchFailed) else str(exc) if isinstance(exc, MigratorError) else _describe(exc)
    lost = ""
    known = (f"failed ({_driver_words(error)}) and its record is left `running`: its writes may be partly applied; once the server "
             f"is back, {state.settle_commands(patch.id)}" if started else
             f"did not start, but its record is left `running`: once the server is back, `runner.py mongo resolve "
             f"{patch.id} --not-applied --note ...`")
    with _server_lost(where, patch, known, exc.where if isinstance(exc, PatchFailed) else None):
        renewed = held.renew()
        if renewed:
            log.settle(db, record, status, error=error)
    if not renewed:
        lost = f"; the lock was lost meanwhile ({held.lost_at}), so its record stays `running`: see `runner.py mongo status`"
    if isinstance(exc, interrupt.Interrupted):
        written = "it had not started" if not started else "its writes so far are kept; the next run stops at it"
        raise MigratorError(f"{patch.path}: {patch.id} {exc} ({written}){lost}", _exit_code(exc)) from exc
    if isinstance(exc, MigratorError):
        raise MigratorError(f"{exc}{lost}", exc.exit_code) from exc
    raise MigratorError(f"{patch.path}: {patch.id} failed: {error}{lost}") from exc


def _describe(exc: BaseException) -> str:
    """A patch's exception as one scrubbed line (its text comes from outside the runner)."""
    return str(exc) if isinstance(exc, patch_child.PatchError) else python_patch.describe(exc)


def _run_one(db, target: MongoTarget | None, patch: Patch, *, dry_run: bool, echo: Callable[[str], None],
             loaded=None) -> Outcome:
    from migrator.mongo.readonly import DryRunWriteError

    output.event("patch_started", patch=patch.id, language=patch.kind, dry_run=dry_run)
    started = time.perf_counter()
    advice = "fix the patch, then see `runner.py mongo status`" if not dry_run else "fix the patch"
    try:
        try:
            if isinstance(loaded, patch_child.Child):
                comment = loaded.go()
            elif patch.kind == "py" and patch_child.used(db, target):  # a dry run: its own sealed child
                comment = patch_child.Child(patch, target, dry_run=True, client=db.client).go()
            elif patch.kind == "py":
                comment = python_patch.run(patch, db, dry_run, loaded)
            else:
                comment = js_patch.run_js(patch, target, dry_run, echo, timeout=target.patch_timeout if target else None,
                                          client=getattr(db, "client", None))
        finally:
            interrupt.hold()  # the patch's run ended: a signal now waits for its record (the others hold earlier)
    except (MigratorError, interrupt.Interrupted, lock.Lost):
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C reaches the runner, not the patch's process: not the patch's failure
        raise interrupt.Interrupted(signal.SIGINT) from exc
    except DryRunWriteError as exc:
        raise MigratorError(f"{patch.path}: dry run of {patch.id} tried to write: {_describe(exc)}") from exc
    except JsPatchFailed as exc:
        raise PatchFailed(patch, one_line(output.scrub(str(exc))), advice) from exc
    except BaseException as exc:  # the patch's own error, sys.exit included: name it, keep the traceback for -v
        line = exc.line if isinstance(exc, patch_child.PatchError) else None
        raise PatchFailed(patch, _describe(exc), advice, python_patch.located(patch, exc, line)) from exc
    # printed and logged alike: scrubbed with the runner's passwords, visible, bounded
    return Outcome(patch, None if comment is None else log.clean(comment), time.perf_counter() - started)


def status(db, patches: list[Patch]) -> list[state.PatchState]:
    return state.read(db, patches)


def resolve(db, patches: list[Patch], name: str, *, applied: bool, note: str, lock_wait: float) -> dict:
    """Mark a failed or unfinished patch as applied or not applied, after someone looked: logged."""
    from migrator.mongo.patches import select

    (patch,) = select(patches, [name])
    with lock.held(db, db.name, lock_wait) as held:
        found = next(s for s in state.read(db, patches) if s.patch == patch)
        if found.state not in (state.RUNNING, state.FAILED_STATE):
            raise MigratorError(f"patch {patch.id} is {found.label}: nothing to resolve (only failed or unfinished "
                                "runs are)", USAGE)
        held.check()
        return log.decide(db, patch.id, log.RESOLVED, note, patch.checksum,
                          resolved_as=log.APPLIED if applied else "not applied",
                          resolves={"status": log.status_of(found.blocker), "started": log.when(found.blocker),
                                    "host": found.blocker.get("host")})


def accept_changes(db, patches: list[Patch], names: list[str], *, note: str, lock_wait: float) -> list[dict]:
    """Record the current checksum of applied patches whose file changed (after review): logged."""
    from migrator.mongo.patches import select

    chosen = select(patches, names)
    with lock.held(db, db.name, lock_wait) as held:
        by_patch = {s.patch: s for s in state.read(db, patches) if s.patch}
        unchanged = [p.id for p in chosen if by_patch[p].state != state.CHANGED]
        if unchanged:
            raise MigratorError(f"not changed since applied: {', '.join(unchanged)}; nothing to accept", USAGE)
        held.check()
        return [log.decide(db, p.id, log.ACCEPTED, note, p.checksum, previous_checksum=by_patch[p].applied_checksum)
                for p in chosen]
