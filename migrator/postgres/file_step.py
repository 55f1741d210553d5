"""A migration's one step: the whole file in its fresh session (with the lock retries, the progress of a
non-transactional file, a tenant's file kept in its schema), then its checksum and Flyway's row.

Imported when a file is to run (migration.py's load()): a no-op deploy never loads the running machinery.
"""

from __future__ import annotations

import time
from pathlib import Path

from yoyo.migrations import StepBase

from migrator import checksums, output, server_session
from migrator.bookkeeping_lock import BookkeepingBusy
from migrator.postgres import backfill, file_grants, file_paths, files, flyway, history, retry
from migrator.postgres.backfill_progress import Tally
from migrator.postgres.errors import RunSessionLost, StatementFailed, TransactionEnded, progress
from migrator.postgres.files import rollback_path
from migrator.postgres.running import SearchPathGuard, SearchPathMoved, run_retrying


# Objects this transaction created or changed (catalog rows it wrote: their xmin is one of its own xids, the
# only in-progress ones a snapshot can see) in a schema other than the tenant's, an extension's members aside.
# A qualified or run-time-built name (EXECUTE format('%I.t', 'b'), a path set and restored inside one DO block)
# is caught here whatever the text looked like. Not seen: data written elsewhere, and drops.
MADE_OUTSIDE = """
WITH me AS (SELECT (pg_catalog.pg_current_xact_id()::text::bigint %% 4294967296)::text::xid AS xid,
                   pg_catalog.pg_current_xact_id()::text::bigint AS top),
written AS (
    SELECT n.nspname, c.relname::text AS name, c.xmin, 'pg_class'::regclass AS catalog, c.oid
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    UNION ALL
    SELECT n.nspname, p.proname::text || '()', p.xmin, 'pg_proc'::regclass, p.oid
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    UNION ALL
    SELECT n.nspname, t.typname::text, t.xmin, 'pg_type'::regclass, t.oid
    FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
    UNION ALL
    SELECT n.nspname, '(the schema)', n.xmin, 'pg_namespace'::regclass, n.oid FROM pg_catalog.pg_namespace n
)
SELECT DISTINCT pg_catalog.quote_ident(w.nspname) || '.' || w.name
FROM written w, me
WHERE w.nspname <> %(tenant)s AND w.nspname <> 'information_schema' AND NOT pg_catalog.starts_with(w.nspname::pg_catalog.text, 'pg_')
  -- written since this transaction began (few rows; CASE: only those reach pg_xact_status), and still in
  -- progress: ours or our subtransactions', which come at or after our top-level xid (the 64-bit xid rebuilt)
  AND CASE WHEN pg_catalog.age(w.xmin) <= pg_catalog.age(me.xid) THEN pg_catalog.pg_xact_status(
        (me.top + ((w.xmin::text::bigint - me.top %% 4294967296) %% 4294967296 + 4294967296) %% 4294967296)::text::xid8)
        = 'in progress' ELSE false END
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = w.catalog AND d.objid = w.oid AND d.deptype = 'e')
ORDER BY 1 LIMIT 5
"""


def made_outside(connection, tenant: str) -> list[str]:
    """What this (tenant's, transactional) migration created or changed outside its schema, before it commits."""
    with connection.cursor() as cursor:
        cursor.execute(MADE_OUTSIDE, {"tenant": tenant})
        return [row[0] for row in cursor.fetchall()]


class ReachedOutside(StatementFailed):
    """A tenant's file created or changed objects in another schema: its transaction rolls back."""

    def __init__(self, outside: list[str], tenant: str, path: Path, statements):
        cause = RuntimeError(
            f"it created or changed {', '.join(outside)} outside tenant {tenant}'s schema (a qualified name, or one "
            "built at run time); write names unqualified so each tenant's objects stay in its schema (extensions: "
            "CREATE EXTENSION ... SCHEMA public)")
        super().__init__(cause, path, statements, len(statements) - 1, True, 0, None)

    def committed(self) -> str:
        return "nothing of it was committed: its transaction rolled back"


def _on_run_session(connection, statements, done: int | None, call) -> None:
    """`call()` on the run's own connection; its loss (an admin's pg_terminate_backend, a failover) said as such."""
    from psycopg2 import InterfaceError, OperationalError

    try:
        call()
    except (InterfaceError, OperationalError) as exc:
        if not connection.closed:
            raise
        raise RunSessionLost(exc, statements, done) from exc


class Progress:
    """A non-transactional file's progress, recorded on the run's own connection (autocommit) before
    it starts and as each statement commits: whatever stops the run, `status` then says the truth."""

    def __init__(self, backend, migration, statements, rollback: bool):
        self.backend, self.migration, self.statements = backend, migration, statements
        self.prefix = checksums.ROLLBACK if rollback else ""
        earlier = migration.earlier_failure or ""  # (an earlier run's batches count if it ran the same way)
        self.tally = Tally(earlier if earlier.startswith(checksums.ROLLBACK) == rollback else None, self.batched)

    def start(self) -> None:
        if self.migration.earlier_failure is None:  # else keep what an earlier run left until this one commits
            self(0)

    def __call__(self, done: int, started: bool = True) -> None:
        if done < len(self.statements) and not started:
            then = (f"stopped between statements: nothing from statement {done + 1} (line {self.statements[done].line}) "
                    "on committed (the next statement never started)")
        elif done < len(self.statements):
            then = (f"interrupted in statement {done + 1} (line {self.statements[done].line}), "
                    "which may or may not have committed")
        else:
            then = "interrupted before it was recorded as " + ("rolled back" if self.prefix else "applied")
        waiting = self.statements[done] if done < len(self.statements) else None  # (its earlier runs' batches)
        batches = self.tally.committed(waiting.line) if isinstance(waiting, backfill.Batched) else None
        what = self.prefix + progress(self.statements, done, then, batches, record=True)
        _on_run_session(self.backend.connection, self.statements, done,
                        lambda: checksums.record_failure(self.backend, self.migration.id, what))

    def batched(self, statement, committed) -> None:
        """A `-- backfill: batch` statement committed another batch (the statements before it all committed):
        `committed` (backfill_progress.Committed) in this run and the earlier ones."""
        done = next(i for i, s in enumerate(self.statements) if s is statement)
        then = (f"interrupted in statement {done + 1} (line {statement.line}), whose later batches may or may not have "
                "committed; a rerun goes on where it stopped")
        what = self.prefix + progress(self.statements, done, then, committed, record=True)
        _on_run_session(self.backend.connection, self.statements, done,
                        lambda: checksums.record_failure(self.backend, self.migration.id, what))


def _uncommitted(migration, rollback: bool, how: str, option: str = "--lock-timeout") -> str:
    """What a refused bookkeeping lock leaves (bookkeeping_lock.Recording): nothing of this file; every change the
    run made before it was committed and recorded (each one under that lock)."""
    if rollback:
        return (f"so {migration.id} was not rolled back ({how}): it is still applied, the newest; those reported "
                "rolled back before it are rolled back and recorded. Once that session has let go (end it if it is "
                f"not a runner's), `runner.py sql rollback --count 1` rolls back {migration.id} alone; or raise "
                f"{option}")
    return (f"so {migration.id} was not applied ({how}); those reported applied before it are committed and "
            "recorded. Run migrate again once that session has let go (end it if it is not a runner's), or raise "
            f"{option}")


def _run_then_lock(backend, migration, path: Path, statements, guard, recording, rollback: bool) -> None:
    """A transactional file, then the bookkeeping lock before its COMMIT (and before its bookkeeping rows: a
    checksum row of a name another service's file shares would make that one wait for this lock too). That lock
    is one more lock of the try: asked for while the file's transaction holds its locks (an ALTER TABLE's ACCESS
    EXCLUSIVE), so waited for only until a session has queued behind them for the try's lock_timeout (else up to
    --lock-timeout: a long file's work is not thrown away for a moment's record of another service); not free,
    the transaction rolls back and the whole file is tried again after a backoff, within the lock retry budget,
    as for any lock. (Taken before the file instead, it would be held while the file runs: the other services
    sharing the schema could then commit nothing for as long.)"""
    policy = retry.Policy.of(getattr(backend.parent, "limits", None))
    backoff = retry.Backoff(policy)
    busy = _uncommitted(migration, rollback, "its transaction rolled back",
                        "--lock-retry-budget" if policy.per_try and policy.budget else "--lock-timeout")
    # (lock_timeout 0: the file's own locks wait unbounded, and so does this one, for --lock-timeout)
    queue = (server_session.of(backend.connection).pid, policy.per_try) if policy.per_try else None
    while True:
        run_retrying(backend, migration, path, statements, True, None, guard, backoff=backoff)
        try:
            _on_run_session(recording.connection, statements, None, lambda: recording.before_commit(busy, queue))
            return
        except BookkeepingBusy as exc:
            delay = backoff.next_delay() if policy.per_try and policy.budget else None
            if delay is None:
                if policy.per_try:
                    exc.args = (f"{exc.lock} was not free before the COMMIT ({_given_up(backoff)}): {busy}",)
                raise
            recording.refused = False  # (not yet: this try's transaction rolls back, and the file is tried again)
            _say_retry(path, statements[-1].line, f"{exc.lock} not free before the COMMIT (sessions "
                                     "queued behind the file's locks, or --lock-timeout spent); its transaction "
                                     "rolled back", backoff, delay)
            with backend.connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
                cursor.execute("BEGIN")
            retry.sleep(delay)


def _say_retry(path, line: int, what: str, backoff: retry.Backoff, delay: float) -> None:
    """retry.say_retry's line for a lock the runner asks for itself in the try (the bookkeeping lock before a COMMIT):
    `what` names the lock and its holder."""
    text = (f"{path}:{line}: {what}; try {backoff.tries} in {delay:.1f} s, {retry.seconds_text(backoff.left())} of "
            "the lock retry budget left")
    schema = output.event_context().get("schema")
    output.progress(f"[{schema}] {text}" if schema else text, kind="lock_retry", file=str(path), line=line,
                    next_try=backoff.tries, delay_s=round(delay, 2), lock_timeout_s=backoff.policy.per_try,
                    budget_s=backoff.policy.budget, budget_left_s=round(backoff.left(), 1))


def _given_up(backoff: retry.Backoff) -> str:
    """How long a file was tried, for the final line: its tries, the budget, each try's lock_timeout."""
    if not backoff.policy.budget:
        return f"each try waiting {retry.seconds_text(backoff.policy.per_try)}, not retried (lock retry budget 0)"
    seconds = retry.seconds_text
    return (f"gave up after {backoff.tries} tries in {seconds(backoff.spent())}, lock retry budget "
            f"{seconds(backoff.policy.budget)}, each try waiting {seconds(backoff.policy.per_try)}")


class FileStep(StepBase):
    """The whole file, then its checksum; rolled back by its .rollback.sql."""

    def __init__(self, migration):
        self.id = 0
        self.migration = migration
        path = Path(migration.path)
        self.statements = backfill.marked(path, files.statements(path, in_transaction=migration.use_transactions),
                                          migration.use_transactions)
        self.sha = checksums.file_sha256(Path(migration.path))

    def apply(self, backend, force=False):
        self._run(backend, Path(self.migration.path), self.statements, self.sha, rollback=False)

    def rollback(self, backend, force=False):
        self._run(backend, rollback_path(self.migration), self.migration.rollback_statements(), None, rollback=True)

    def _run(self, backend, path: Path, statements, sha: str | None, rollback: bool) -> None:
        migration = self.migration
        transactional = migration.use_transactions  # the rollback file's own mode while rolling back
        progress = None
        recording = getattr(backend.parent, "recording", None)  # (a run that records its changes: all but scratch)
        if not transactional:
            if recording is not None:  # before its first statement commits
                _on_run_session(recording.connection, statements, 0, lambda: recording.before_commit(
                    _uncommitted(migration, rollback, "it did not start")))
            progress = Progress(backend.parent, migration, statements, rollback)
            progress.start()
        # SCHEMA_NAME=public is the plain history, as a run without schemas: no tenant to guard
        tenant = SearchPathGuard(backend.connection) if backend.schema not in (None, "public") else None
        # (a plain run: the schemas it checked, attack23u 3; and the planted check after run-time code: fix23am)
        guard = file_grants.Watch(backend, tenant or file_paths.guard(backend))
        started = time.monotonic()
        token = backfill.COMMITTED.set(progress and progress.tally)
        try:
            if recording is not None and transactional:
                _run_then_lock(backend, migration, path, statements, guard, recording, rollback)
            else:
                run_retrying(backend, migration, path, statements, transactional, progress, guard)
        finally:
            backfill.COMMITTED.reset(token)
        try:
            migration.record_after_commit = not checksums.record(
                backend.connection, backend.bookkeeping_schema, migration.id, sha, tenant and tenant.expected)
        except checksums.SearchPathChanged as exc:
            raise SearchPathMoved(exc.found, tenant.expected, path, statements, len(statements) - 1, transactional,
                                  0 if transactional else len(statements), None, at_end=True)
        except checksums.TransactionChanged:  # (what ran after the file's own end of it rolls back with this one)
            raise TransactionEnded(path, statements, len(statements) - 1, at_end=True)
        # Flyway's own row too, in the same transaction (a read-only one: after the commit, apply.py)
        if flyway.parse(Path(migration.path).name) and not migration.record_after_commit:
            history_path = Path(migration.path)
            if rollback:
                history.forget(backend.connection, backend.bookkeeping_schema, backend.flyway_table, history_path)
            else:
                history.record(backend.connection, backend.bookkeeping_schema, backend.flyway_table, history_path,
                               round((time.monotonic() - started) * 1000))
        if tenant is not None and transactional:  # still before the commit: raising rolls it all back
            outside = made_outside(backend.connection, backend.schema)
            if outside:
                raise ReachedOutside(outside, backend.schema, path, statements)
