"""Changing the database: apply, roll back, mark; each migration through yoyo, each in its own session."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from migrator import bookkeeping_lock, checksums, interrupt, output, pg_lock, trust
from migrator.errors import USAGE, MigratorError
from migrator.postgres import failures, flyway
from migrator.postgres.errors import RunSessionLost, StatementFailed, TransactionEnded, migration_error, progress
from migrator.postgres.migration import load_migrations, rollback_path
from migrator.postgres.state import bookkeeping
from migrator.targets import PostgresTarget


@contextmanager
def locked(backend, target: PostgresTarget, timeout: float, notify) -> Iterator[None]:
    """The crash-safe migration lock (pg_lock), with the checksum table ready under it."""
    with pg_lock.held(backend, target, timeout, notify):
        checksums.ensure_table(backend)
        yield


@contextmanager
def lost_before_migrations(backend, target: PostgresTarget) -> Iterator[None]:
    """Around migrate's steps from its lock to its first migration (the lock, the history, the drift check, the
    pending files, the rewrite judge, the schema's description, the failure records): the connection lost there
    (a failover) is one line, nothing applied, whichever read met it. Once a migration began, its own error says;
    one lost after, outside any migration (the schema's record), is one line saying what is committed."""
    try:
        yield
    except (backend.DatabaseError, backend.driver.InterfaceError) as exc:
        if (busy := _bookkeeping_busy(backend, exc)) is not None:  # (its own line, before or after the migrations)
            raise _busy_outside_files(backend, target, busy) from exc
        if not backend.connection.closed:
            raise
        if backend.started:  # (a migration's own loss is its own line: this one came after, as the run recorded)
            raise bookkeeping_lock.lost_after_migrations(target.where, exc) from exc
        raise bookkeeping_lock.lost_before_migrations(target.where, exc, "before the first migration") from exc


def _run_one(backend, target: PostgresTarget, migration, verb: str, path: Path, run) -> float:
    """Run yoyo's apply/rollback of one migration; a failure or SIGTERM becomes one true line."""
    started = time.perf_counter()
    backend.started = migration.id  # (a new session's refusal names it: server_session.checking)
    prefix = checksums.ROLLBACK if verb == "roll back" else ""
    what = "rollback" if prefix else "migration"
    if backend.watcher is not None:
        backend.watcher.label = migration.id
    output.event(f"{what}_started", migration=migration.id, file=str(path))
    try:
        _run_and_say(backend, target, migration, verb, path, run, prefix)
    except BaseException as exc:
        excerpt = list(getattr(exc, "excerpt", ()))  # the file's line and the caret, as the error event has them
        fields = _event_fields(exc)
        if fields and isinstance(exc, MigratorError):
            exc.event_fields = fields  # (the final error event's too: cli.app)
        output.event(f"{what}_failed", migration=migration.id, file=str(path),
                     duration_ms=round((time.perf_counter() - started) * 1000), error=str(exc),
                     **({"excerpt": excerpt} if excerpt else {}), **fields)
        raise
    seconds = time.perf_counter() - started
    output.event(f"{what}_{'rolled_back' if prefix else 'applied'}", migration=migration.id,
                 duration_ms=round(seconds * 1000))
    return seconds


def _event_fields(exc: BaseException) -> dict:
    """The structured fields a failure's cause carries for the JSON log (retry.gave_up: tries, budget, per-try
    timeout, blockers), found along the chain of exceptions that said it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "event_fields", None):
            return dict(exc.event_fields)
        exc = exc.__cause__ or exc.__context__
    return {}


def _run_and_say(backend, target: PostgresTarget, migration, verb: str, path: Path, run, prefix: str) -> None:
    try:
        run()
    except StatementFailed as exc:
        if backend.watcher is not None:  # what it last waited for, if statement_timeout ended a wait (errors.py)
            exc.waited = backend.watcher.waited(exc.statement.text) or getattr(exc, "waited", None)  # (or the probe's)
        if not exc.transactional or isinstance(exc, TransactionEnded):  # (what may have committed: status says)
            try:
                _record_failed(backend, migration, exc, prefix)
            except (backend.DatabaseError, backend.driver.InterfaceError):  # the run's own session lost (by the
                if not backend.connection.closed:  # file itself, say): its last progress record stays
                    raise
        raise migration_error(exc, migration, target.where, verb, path)
    except RunSessionLost as exc:
        raise _lost_mid_file(target, migration, verb, path, exc) from exc
    except failures.NoAnswer as exc:
        raise _silent(backend, path, exc) from exc
    except interrupt.Interrupted as exc:
        raise _interrupted(backend, target, migration, verb, path, exc)
    except (backend.DatabaseError, backend.driver.InterfaceError) as exc:  # Interface: yoyo's rollback on a lost connection
        failed = exc.__context__ if isinstance(exc.__context__, StatementFailed) else exc
        if isinstance(exc.__context__, interrupt.Interrupted):
            raise _interrupted(backend, target, migration, verb, path, exc.__context__)
        if isinstance(exc.__context__, failures.NoAnswer):  # (yoyo's rollback on the session cut off)
            raise _silent(backend, path, exc.__context__) from exc
        if getattr(migration, "steps_committed", False) and backend.connection.closed:
            raise _unrecorded(target, migration, verb, path, exc) from exc
        busy = failed is exc and _bookkeeping_busy(backend, exc)  # (not a file's own statement: StatementFailed)
        if busy and (said := _busy_in_file(backend, target, migration, verb, path, busy)):
            raise said from exc
        raise migration_error(failed, migration, target.where, verb, path)
    if migration.record_after_commit:  # it made its transaction read-only, so it could not record itself
        checksums.record_after_commit(backend, migration.id, None if prefix else checksums.file_sha256(Path(migration.path)))
        if flyway.parse(Path(migration.path).name):  # Flyway's row likewise
            from migrator.postgres import history

            history.record_after_commit(backend, Path(migration.path), rolled_back=bool(prefix))
    if migration.earlier_failure is not None or not migration.use_transactions or prefix:
        checksums.clear_failures(backend, [migration.id])


def _bookkeeping_busy(backend, exc) -> str | None:
    """The bookkeeping table a lock timeout of the runner's own statement names (bookkeeping_busy), else None."""
    from migrator.postgres import bookkeeping_busy

    return bookkeeping_busy.table(exc, backend.bookkeeping_schema, getattr(backend, "flyway_table", None))


def _busy_in_file(backend, target: PostgresTarget, migration, verb: str, path: Path, table: str) -> MigratorError | None:
    """A bookkeeping table locked by another session stopped the runner's own statement about this file: after its
    session committed (yoyo's history rows), inside its transaction (its checksum, Flyway's row) or after a
    non-transactional file's last statement (its checksum). None: another record of a non-transactional file (its
    progress, Flyway's row): the file's own line says what committed."""
    from migrator.postgres import bookkeeping_busy

    rolling = verb == "roll back"
    what = f"the rollback of {migration.id}" if rolling else migration.id
    transactional = migration.rollback_transactional() if rolling else migration.use_transactions
    if not getattr(migration, "steps_committed", False):
        if not transactional and (rolling or not table.endswith(f'."{checksums.TABLE}"')):
            return None  # (a progress record's table: what committed is the file's own line)
        if not transactional:  # its checksum, recorded once its last statement committed
            committed = f"not transactional: its statements all ran and COMMITTED, but recording {what} as applied timed out"
            then = (f"the next migrate would run it again, so run `runner.py sql mark {migration.id}` (it must not run "
                    "twice) once that session has let go, then migrate again")
        else:
            committed, then = f"nothing of {what} committed (its transaction rolled back)", "run the command again"
    elif rolling:
        committed, then = f"{what} COMMITTED, but recording it timed out", _unmark(migration)
    elif getattr(migration, "record_after_commit", False):
        committed = f"{migration.id} COMMITTED, but recording it as applied timed out"
        then = f"run `runner.py sql mark {migration.id}` (it must not run twice), then migrate again"
    else:
        committed = f"{migration.id} COMMITTED, but recording it as applied timed out"
        then = ("the next migrate records it from the checksum it committed with, without running it again: run "
                "migrate again once that session has let go")
    return bookkeeping_busy.error(backend.connection, table, f"{path} ({verb} on {target.where})", committed, then)


def _busy_outside_files(backend, target: PostgresTarget, table: str) -> MigratorError:
    """A bookkeeping table locked by another session stopped migrate outside any file: before the first (nothing
    applied) or after the last (the schema's new description, say)."""
    from migrator.postgres import bookkeeping_busy

    if not backend.started:
        committed, then = "nothing was applied", "run migrate again once that session has let go"
    elif table.endswith('."_hcm_schema_snapshot"'):
        committed = "the migrations reported applied above are committed and recorded, but the schema's new description was not"
        then = ("until one is recorded, status and the next migrate report what they changed as drift: after review, "
                "`runner.py sql accept-drift` once that session has let go")
    else:
        committed = "the migrations reported applied above are committed and recorded"
        then = "run migrate again once that session has let go"
    return bookkeeping_busy.error(backend.connection, table, f"migrate on {target.where}", committed, then)


def _silent(backend, path: Path, exc: failures.NoAnswer) -> MigratorError:
    """A migration's session went silent (failures.guard_session): located at the file's statement, else it was
    the COMMIT or the bookkeeping in that session. Its server side is ended from the side connection."""
    ended = _end_cut_off(backend, exc.in_transaction)
    where = str(exc) if str(exc).startswith(f"{path}:") else f"{path}: {exc}, waiting for its COMMIT or its record"
    return MigratorError(f"{where}; {failures.outcome(exc.in_transaction, ended)}")


def _end_cut_off(backend, in_transaction: bool) -> str | None:
    """What became of the migration's session on the server, if a silent path cut it off (watch.Watcher)."""
    return backend.watcher.end_cut_off(in_transaction) if backend.watcher is not None else None


def _record_failed(backend, migration, exc: StatementFailed, prefix: str) -> None:
    """On the run's own connection: what a failed non-transactional file left committed (or that it left nothing)."""
    from migrator.postgres import backfill_progress, concurrently

    backfill = getattr(exc.cause, "backfill_committed", None)  # (a backfill's batches: this run's, earlier runs')
    if exc.done or backfill and backfill[1] or concurrently.is_concurrent(exc.statement.text) \
            or getattr(exc, "left_pending", None):  # (its INVALID index: the rerun's to drop)
        committed = backfill_progress.as_record(exc.committed(), backfill)  # (the total: the next run adds to it)
        checksums.record_failure(backend, migration.id, f"{prefix}{exc.path}:{exc.line}: {committed}")
    elif migration.earlier_failure is None:  # only this run's "started" record: nothing committed
        checksums.clear_failures(backend, [migration.id])


def _interrupted(backend, target: PostgresTarget, migration, verb: str, path: Path, exc) -> MigratorError:
    transactional = migration.rollback_transactional() if verb == "roll back" else migration.use_transactions
    ended = _end_cut_off(backend, transactional)  # (a silent path: the cancel reached an idle session)
    if transactional:
        committed = f"nothing of it was applied: {ended or 'its transaction rolled back'}"
    else:
        recorded = bookkeeping(backend).failures.get(migration.id, "")
        committed = recorded.removeprefix(checksums.ROLLBACK) or "not transactional: `runner.py status` shows what committed"
        if recorded and recorded == migration.earlier_failure:  # unchanged: each commit of this run would update it
            committed = f"this run committed none of its statements; an earlier run left: {committed}"
            from migrator.postgres import concurrently

            if verb == "apply" and any(concurrently.is_concurrent(s.text) for s in migration.steps[0].statements):
                committed += ("; a CONCURRENTLY build stopped part-way leaves its index INVALID: the next migrate "
                              "drops it and builds it again")
    if ended and not transactional:
        committed += f"; {ended}"
    return MigratorError(f"{path}: {exc} while it was running ({verb} on {target.where}); {committed}; "
                         "migrations reported done before it are committed; run the command again", 128 + exc.signum)


def _lost(target: PostgresTarget, exc, before: str) -> str:
    why = (output.scrub(str(exc)).strip().splitlines() or [type(exc).__name__])[0]
    return f"the runner's own connection to {target.where} was lost {before} ({why})"


def _unmark(migration, checksum: bool = False) -> str:
    """`checksum`: its checksum row stayed too (a non-transactional rollback, whose file removes it as it ends)."""
    rows, tables = ("rows", f"_yoyo_migration and {checksums.TABLE}") if checksum else ("row", "_yoyo_migration")
    return (f"the history still lists it as applied though its objects are gone; delete its {rows} (migration_id "
            f"'{migration.id}') from {tables} so that migrate applies it again, rather than rolling it back twice")


def _lost_mid_file(target: PostgresTarget, migration, verb: str, path: Path, exc: RunSessionLost) -> MigratorError:
    """The run's own connection was lost while the file ran in its session (at the bookkeeping lock before its
    COMMIT, at a progress record): what of it committed, and what the next run does about it."""
    rolling = verb == "roll back"
    if not exc.done:  # (None: its transaction, never committed, rolled back when the run stopped)
        nothing = "its transaction rolled back" if exc.done is None else "not transactional: no statement of it ran"
        what = f"the rollback of {migration.id}" if rolling else migration.id
        then = (f"{migration.id} is still applied; run the same `runner.py sql rollback` again" if rolling
                else "run migrate again")
        return MigratorError(f"{path}: {_lost(target, exc.cause, f'before {what} committed')}: nothing of this file "
                             f"committed ({nothing}); {then}")
    if exc.done < len(exc.statements):
        again = "sql rollback" if rolling else "migrate"
        then = (f"the next {again} runs this file again from its first statement: make it safe to re-run "
                f"({'IF EXISTS' if rolling else 'IF NOT EXISTS'}) or undo what committed, then run {again} again")
    elif rolling:
        then = _unmark(migration, checksum=True)
    else:
        then = (f"the next migrate would run it all again, so run `runner.py sql mark {migration.id}` (it must not "
                "run twice), then migrate again")
    committed = progress(exc.statements, exc.done, "").removesuffix("; ")
    return MigratorError(f"{path}: {committed}, but {_lost(target, exc.cause, 'before it recorded that')}; {then}")


def _unrecorded(target: PostgresTarget, migration, verb: str, path: Path, exc) -> MigratorError:
    """The file committed in its own session, then the run's own connection was lost (killed by an admin, a
    failover) before the history said so: what is true, and what the next run does about it."""
    lost = _lost(target, exc, "before it recorded that")
    if verb == "roll back":
        return MigratorError(f"{path}: the rollback of {migration.id} COMMITTED, but {lost}: {_unmark(migration)}")
    if getattr(migration, "record_after_commit", False):  # a read-only file's checksum was to be written there too
        then = (f"it left no record the next run can see, so run `runner.py sql mark {migration.id}` (it must not "
                "run twice), then migrate again")
    else:
        then = ("`status` shows it pending until the next `migrate`, which marks it applied from the checksum it "
                "committed with, without running it again; run migrate again")
    return MigratorError(f"{path}: {migration.id} was applied and COMMITTED, but {lost}; {then}")


def _stop_if_interrupted(guard, target: PostgresTarget, migration, verb: str) -> None:
    try:
        guard.check()
    except interrupt.Interrupted as exc:
        raise MigratorError(f"{exc} before {migration.id} started ({verb} on {target.where}): nothing of it ran; "
                            "migrations reported done before it are committed; run the command again", 128 + exc.signum)


def apply(backend, target: PostgresTarget, migrations) -> Iterator[tuple[object, float]]:
    """Apply each pending migration in yoyo's order, each in its own transaction and session;
    yield (migration, seconds) as each lands. Every pending file is read and checked first.
    SIGTERM stops it in order: the running migration fails (its work as any failure leaves it), one line says so."""
    from yoyo.migrations import MigrationList

    todo = backend.to_apply(migrations)
    load_migrations(todo)
    failures = bookkeeping(backend).failures
    with interrupt.guard() as guard, guard.deferred():
        for done, migration in enumerate(todo):
            _stop_if_interrupted(guard, target, migration, "apply")
            if done:  # (the first's check was connect's)
                _recheck(backend, target, migration, [m.id for m in todo[:done]])
            migration.earlier_failure = failures.get(migration.id)
            seconds = _run_one(backend, target, migration, "apply", Path(migration.path),
                               lambda: backend.apply_migrations(MigrationList([migration])))
            yield migration, seconds


def _recheck(backend, target: PostgresTarget, migration, committed: list[str], verb: str = "committed") -> None:
    """The connect check's planted rule again before `migration` (trust.recheck), its refusal saying what committed
    (or was `verb`)."""
    from dataclasses import replace

    try:
        trust.recheck(backend, target.schema or backend.bookkeeping_schema, replace(target, schema=None).where,
                      target.creators_trusted)
    except MigratorError as exc:
        raise MigratorError(f"before {migration.id} (nothing of it ran; {verb} by this run: "
                            f"{', '.join(committed)}): {exc}", exc.exit_code) from None


def select_rollback(backend, migrations, *, count: int | None, to: str | None, all_: bool,
                    notify=lambda _line: None) -> list:
    """The applied migrations to roll back, newest first; checks their rollback files first."""
    found = bookkeeping(backend, migrations).flyway
    if found is not None:  # a Flyway folder's applied files are its table's, by version (a renamed file too)
        from migrator.postgres import history

        history.take_over(backend, migrations, found, history.sync(backend, migrations, found, notify))
    # A repeatable (R__) has no rollback and is re-run when it changes: rollbacks step over it, as Flyway's undo.
    applied = [m for m in backend.to_rollback(migrations) if not flyway.is_repeatable(m)]
    if to is not None:
        to = getattr(flyway.by_version(migrations, to), "id", to)  # an ID given as a Flyway version
        ids = [m.id for m in applied]
        if to not in ids:
            known = ", ".join(reversed(ids)) or "none"
            raise MigratorError(f"--to {to}: no applied migration has that id (applied: {known})", USAGE)
        selected = applied[: ids.index(to)]
    elif all_:
        selected = applied
    else:
        selected = applied[: count if count is not None else 1]
    for migration in selected:
        migration.load()
        migration.rollback_statements()
    return selected


def redo_count(backend, migrations, drift) -> int | None:
    """How many `rollback --count` takes back to reach every migration of `drift` (as select_rollback counts)."""
    ids = [m.id for m in backend.to_rollback(migrations) if not flyway.is_repeatable(m)]
    return max(ids.index(d.id) for d in drift) + 1 if all(d.id in ids for d in drift) else None


def rollback(backend, target: PostgresTarget, selected) -> Iterator[tuple[object, float]]:
    from yoyo.migrations import MigrationList

    failures = bookkeeping(backend).failures
    with interrupt.guard() as guard, guard.deferred():
        for done, migration in enumerate(selected):
            _stop_if_interrupted(guard, target, migration, "roll back")
            if done:  # (as apply's: a rollback file's GRANT is used before the next one)
                _recheck(backend, target, migration, [m.id for m in selected[:done]], "rolled back")
            migration.earlier_failure = failures.get(migration.id)
            yield migration, _run_one(backend, target, migration, "roll back", rollback_path(migration),
                                      lambda: backend.rollback_migrations(MigrationList([migration])))


def select_by_id(migrations, ids: list[str]) -> list:
    by_id = {m.id: m for m in migrations}
    found = {i: by_id.get(i) or flyway.by_version(migrations, i) for i in ids}  # or a Flyway version
    unknown = [i for i, m in found.items() if m is None]
    if unknown:
        raise MigratorError(f"unknown migration id {', '.join(unknown)}; `runner.py status` lists the ids", USAGE)
    return [found[i] for i in ids]


def mark(backend, selected, where: str = "") -> None:
    """Record `selected` as applied; a bookkeeping table another session holds past lock_timeout: its one line
    (bookkeeping_busy), saying what was recorded and what to do."""
    from yoyo.migrations import MigrationList

    marked = False
    try:
        backend.mark_migrations(MigrationList(selected))  # (one transaction: yoyo's history and log rows)
        marked = True
        if flyway.is_flyway(selected):  # a Flyway folder's record: a success row each (a failed row replaced)
            from migrator.postgres import history

            history.mark(backend, selected)
        checksums.accept(backend, selected)
        checksums.clear_failures(backend, [m.id for m in selected])
    except Exception as exc:
        table = _bookkeeping_busy(backend, exc)
        if table is None:
            raise
        raise _busy_marking(backend, where, table, " ".join(m.id for m in selected), marked) from exc


def _busy_marking(backend, where: str, table: str, ids: str, marked: bool) -> MigratorError:
    from migrator.postgres import bookkeeping_busy

    if not marked:
        committed = "nothing was marked (its transaction rolled back)"
        then = f"run `runner.py sql mark {ids}` again once that session has let go"
    else:
        committed = f"{ids} are recorded as applied, but not yet in {output.visible(table)}"
        then = (f"once that session has let go, run `runner.py sql accept-changes {ids}` (it records their checksums) "
                "and check `runner.py status`")
    return bookkeeping_busy.error(backend.connection, table, f"sql mark on {where}", committed, then)
