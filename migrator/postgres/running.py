"""Running a migration file's statements in its session: each statement in order, what committed counted (a
non-transactional file), lock retries around them (retry.py), and the tenant's search_path watched while they run.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from pathlib import Path

from migrator import checksums, interrupt, lazy_re, pg_lock
from migrator.errors import MigratorError
from migrator.postgres import (autovacuum, backfill, cancel_ignored, client_encoding, clock_bound, commit_checks,
                               concurrently, conforming, deadlocks, detach, failures, files, index_leftovers,
                               lock_waiters, lost_session, retry, rewrites, server_statements, session_locks,
                               sessions, statement_bound)
from migrator.postgres import errors
from migrator.postgres.errors import StatementFailed, TransactionEnded, progress
from migrator.postgres.transaction_status import IDLE, LOST

_ENDS = re.compile(r"\s*(COMMIT|END|PREPARE\s+TRANSACTION)\b", re.IGNORECASE)  # (a NoAnswer's outcome unknown)


def execute(cursor, statement, probe=None, path: Path | None = None,
            max_batches: int = backfill.MAX_BATCHES, try_started: float | None = None, judge=None) -> None:
    """One statement of a file, in the migration's session. While it runs, `probe` (retry.Probe) watches who
    blocks it and ends the try once its time since `try_started` is spent. A CONCURRENTLY build runs with
    lock_timeout off (concurrently.py), never ended by the probe; statement_timeout bounds it. A
    `-- backfill: batch` statement repeats in committed batches (backfill.py). While the probe is blind, the
    clock bounds the try from its first statement not known harmless (`judge`: clock_bound.Judge)."""
    plain = not isinstance(statement, backfill.Batched) and cursor.connection.info.transaction_status == IDLE
    detaching = plain and detach.is_detach(statement.text)
    concurrent = plain and (detaching or concurrently.is_concurrent(statement.text))
    # (a detach's wait for the partition's lock queues the app's queries on it: bounded as any DDL's, not blind)
    # (a backfill's batches: each its own try on the blind clock, Probe.batch_started)
    clock = (probe is not None and not detaching and (isinstance(statement, backfill.Batched) or judge is None
                                                      or judge.bounded(statement.text, probe.clock_running())))
    # (what it holds watched, whatever it is: a SELECT of a function or an INSERT firing a trigger may run DDL; a
    # backfill's batches too, each commits: a try of its own, whose row locks the app's writes may wait on)
    held = not concurrent or concurrently.runs_code(statement.text)  # (a build's functions may lock: attack24q 6)
    held = held or probe is not None and probe.session_locked()  # (the app waits on its session lock: attack24u 5)
    calls = clock and clock_bound.query(statement.text)
    # (the server's reading is the judges', its literals and its decoding: attack24q 3, attack23x 4)
    conforming.readable(cursor.connection, statement.text)
    with probe.statement(try_started, detaching or not concurrent, clock, detaching, held, calls,
                         clock_only=concurrent and clock) \
            if probe is not None else contextlib.nullcontext():
        if isinstance(statement, backfill.Batched):
            statement.run(cursor.connection, cursor, path, max_batches, *(
                (probe.batch_started, probe.batch_ended) if probe is not None else ()))
        elif concurrent:
            with concurrently.without_lock_timeout(cursor):
                cursor.execute(statement.text)
        else:
            cursor.execute(statement.text)
    if judge is not None:
        judge.ran(statement.text)


def run_statements(connection, path: Path, statements, transactional: bool, progress=None, guard=None, *,
                   start: int = 0, done: int = 0, probe=None, skip=frozenset(), budget=None,
                   max_batches: int = backfill.MAX_BATCHES, judge=None) -> None:
    """The file's statements, in order, in the session yoyo gives the migration (from `start`, the first
    `done` of them committed: a non-transactional file resumed after a lock retry). In a non-transactional
    file `progress(done)` is told each time the count of committed statements grows (a BEGIN the file runs
    itself holds it until its COMMIT). In a tenant's run `guard` (a SearchPathGuard) stops the file at the
    statement that moved its search_path. Statements in `skip` are counted as done without running. `budget`
    (retry.TryBudget) gives each statement in a transaction what is left of the try's lock_timeout. `judge`
    (clock_bound.Judge): which statements the blind probe leaves off the try's clock."""
    opened = None
    mark_try(connection, transactional and start == 0)
    if budget is not None:
        budget.restart()
    if judge is not None:
        judge.new_try()
    with connection.cursor() as cursor:
        for index in range(start, len(statements)):
            statement = statements[index]
            try:
                with interrupt.live():  # SIGTERM stops the run here, never inside the bookkeeping
                    if isinstance(skip, index_leftovers.Done):  # (where the session resolves it: attack24x 3)
                        index_leftovers.before_statement(connection, statements, index, path, skip)
                    if index not in skip:
                        if probe is not None and probe.overheld is not None and (  # (the flag: no round trip)
                                connection.info.transaction_status != IDLE or probe.session_locked()):
                            probe.raise_held()  # the try held what the app waited on past the bound: ended here
                        if probe is not None and probe.blind is not None \
                                and connection.info.transaction_status != IDLE:
                            probe.raise_blind_spent()  # blind: the try held what may lock the app past the bound
                        if budget is not None:
                            budget.before(cursor)
                        execute(cursor, statement, probe, path, max_batches, budget.started if budget else None,
                                judge)
                        if probe is not None:  # a cancel that did not take; a wait past the bound, committed
                            cancel_ignored.after_statement(probe, connection, transactional)
                        if budget is not None and statement_bound.may_set(statement.text):  # (attack24t 9)
                            budget.override(cursor, path, statement)
                        statement_bound.hold(cursor, path, statement)
                        if not transactional and probe is not None and budget is not None \
                                and connection.info.transaction_status == IDLE:  # (a frozen runner: attack24w 1)
                            session_locks.idle_bound(connection, probe, budget)
                        if transactional and server_statements.resets_all(statement.text):  # (the mark too)
                            mark_try(connection, True)
                        if probe is not None and connection.info.transaction_status != IDLE:
                            probe.ask_now()  # (a freeze outran the probe's thread: before the next one or COMMIT)
                            probe.raise_held(ran=True)
                            if probe.blind is not None:
                                probe.raise_blind_spent()
            except failures.NoAnswer as exc:
                located = failures.NoAnswer(f"{path}:{statement.line}: {exc}, waiting for the statement there to end")
                located.in_transaction = (transactional or opened is not None) and not _ENDS.match(statement.text)
                raise located from exc  # (apply._silent says what it left)
            except interrupt.Interrupted as exc:
                if exc.before_block and progress:  # it stopped between statements: this one never started
                    progress(done, started=False)
                raise
            except Exception as exc:
                if not hasattr(exc, "pgcode"):
                    raise
                if errors.connection_lost(exc):  # (a runner frozen between two statements)
                    if transactional:
                        lost_session.mark(exc, cursor.connection, budget, only_idle=True)
                    else:
                        session_locks.mark_idle_ended(exc, connection, probe)
                still_open = connection.info.transaction_status not in (IDLE, LOST)  # (lost: no ROLLBACK to send)
                # in the file's own block, open still or ended by this failure (a COMMIT that failed rolled it back)
                in_block = not transactional and (still_open or opened is not None)
                if in_block and still_open:  # (connection.rollback() sends nothing on yoyo's autocommit connection)
                    cursor.execute("ROLLBACK")
                raise StatementFailed(exc, path, statements, index, transactional, done,
                                      opened if in_block else None) from exc
            if transactional and connection.info.transaction_status == IDLE:  # (the flag: no round trip)
                raise TransactionEnded(path, statements, index)
            if not transactional:
                if connection.info.transaction_status == IDLE or connection.info.transaction_status == LOST \
                        and lost_session.committed_then_lost(statement, opened):
                    opened = None
                    if index + 1 > done:
                        done = index + 1
                        if progress:
                            progress(done)
                elif opened is None:
                    opened = index
            if guard is not None and (found := guard.changed(transactional, statement)) is not None:
                if opened is not None:
                    cursor.execute("ROLLBACK")  # the file's own open transaction: nothing of it commits
                raise guard.moved(found, path, statements, index, transactional, done, opened)
    if not transactional and connection.info.transaction_status != IDLE:
        connection.rollback()
        raise MigratorError(f"{path}: ends inside a transaction it opened (BEGIN without COMMIT); that transaction "
                            "was rolled back, as psql does at the end of a file; add the COMMIT and run again")
    # (errors.progress, not the run's `progress` callable that shadows it here: attack23y 8)
    client_encoding.after_file(connection, path, statements, transactional, done, errors.progress)  # (attack23x 4b)


def mark_try(connection, new_try: bool) -> None:
    """A transactional file's new try: a token of the runner's SET LOCAL in its transaction, which the checksum's
    record requires (checksums.TRIES): a file that ended this transaction itself and left its session in another
    (ROLLBACK AND CHAIN) is not recorded. A SET takes no snapshot, so a file's SET TRANSACTION may still come first.
    One round trip per try; none for a non-transactional file (its mark forgotten)."""
    if not new_try:
        checksums.TRIES.pop(connection, None)
        return
    token = secrets.token_hex(8)
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL {checksums.TRY_SETTING} = '{token}'")
    checksums.TRIES[connection] = token


def run_retrying(backend, migration, path: Path, statements, transactional: bool, progress=None, guard=None,
                 backoff=None) -> None:
    """run_statements, with lock retries (retry.py): a try that timed out on a lock is retried after a backoff
    until the budget is spent; a transactional file as a whole (its transaction rolled back and begun again),
    a non-transactional one from the statement that failed. One line per retry; the last failure names the
    blocker. A non-transactional file's CONCURRENTLY builds are prepared and checked (concurrently.py). `backoff`:
    the file's tries so far (file_step._run_then_lock tries it again as a whole)."""
    connection = backend.connection
    limits = getattr(backend.parent, "limits", None)
    policy = retry.Policy.of(limits)
    skip, before = frozenset(), set()
    if not transactional:
        books = backend.parent  # (its failure record tells an earlier try's index from an older twin)
        record = (books.qualified(checksums.FAILURES), migration.id) if hasattr(books, "qualified") else None
        skip = index_leftovers.prepare(migration.earlier_failure, record)  # (each build's looked at as it runs)
        before = skip.before  # (each build's table's, as it runs; the up-front reading's too)
        before |= concurrently.indexes_before(connection, statements)
        statements = detach.finalizing(connection, statements, path, migration.earlier_failure)
    if policy.per_try and autovacuum.may_set(connection, statements):  # an autovacuum in the way cancelled within a try
        policy.quick_autovacuum_cancel = True
        autovacuum.lower_deadlock_timeout(connection, policy.per_try)
    budget = retry.TryBudget(policy.per_try, bool(policy.budget)) if policy.per_try else None
    probe = retry.probe(backend, connection, budget) if policy.per_try else None
    judge = None
    if probe is not None:
        # The waiters the run accepts: the marker's tables, by schema too. (A table the run creates has no waiter
        # before it commits; after, a waiter on it is an application's like any other.)
        probe.exempt = _accepted(path, statements)
        judge = clock_bound.Judge(connection, _made_in_run(backend))
    backoff = backoff or retry.Backoff(policy)
    start = done = 0
    busy = None
    try:
        pg_lock.hold_for_shared_ddl(connection, statements, transactional)
        while True:
            try:
                run_statements(connection, path, statements, transactional, progress, guard, start=start, done=done,
                               probe=probe, skip=skip, budget=budget,
                               max_batches=limits.backfill_max_batches if limits else backfill.MAX_BATCHES,
                               judge=judge)
                with lost_session.before_commit(connection, budget, transactional):
                    if transactional and statements:
                        commit_checks.deferred_checks(connection, path, statements, probe, budget,
                                                      commit_checks.records(backend))
                    if budget is not None:
                        with connection.cursor() as cursor:
                            budget.done(cursor)
                if probe is not None:
                    probe.ended()
                break
            except StatementFailed as exc:
                if probe is not None:
                    probe.ended()  # (rolled back or failed: what it held is no longer watched)
                    if probe.seen.blockers and not probe.seen.cancelled \
                            and getattr(exc.cause, "pgcode", None) == retry.QUERY_CANCELED:  # (statement_timeout
                        exc.waited = sessions.wait_words(probe.seen.waiting_for, probe.seen.blockers)  # under 3 s)
                exc.left_pending = None if transactional else detach.left_pending(connection, exc.statement.text,
                                                                                   exc.cause)
                if exc.left_pending:
                    exc.todo = ("end the older transactions it waited for (the progress lines name them) or raise "
                                "--statement-timeout, then run migrate again: it completes the detach (FINALIZE)")
                elif not transactional and (todo := detach.pending_before(exc.statement.text, exc.cause)):
                    exc.todo = todo
                if not transactional and concurrently.is_concurrent(exc.statement.text):
                    _waited_for_prepared(connection, exc)
                if probe is not None and cancel_ignored.explain(exc, probe, progress):  # (not retried)
                    raise
                if probe is not None and probe.held(exc):  # the app waited on what it held: not a lock retry
                    batches = getattr(exc.cause, "backfill_committed", None)
                    lock_waiters.held_too_long(exc, probe.seen, probe.per_try + probe.floor)
                    if isinstance(exc.statement, backfill.Batched):  # (a batch too big: the rest stays committed)
                        exc.cause.backfill_committed = batches  # (its own session lock: not the batch's size)
                        exc.todo = exc.todo if (probe.seen.held or {}).get("advisory") else backfill.SMALLER
                    session_locks.closed_if_held(exc, connection, statements)
                    raise
                if not (retry.lock_timed_out(exc) or probe is not None and probe.cancelled(exc)) or not policy.per_try:
                    raise
                seen = probe.seen if probe is not None else retry.Seen([])
                if deadlocks.deadlocked(exc):
                    seen = retry.Seen([], deadlock=deadlocks.other_sessions(connection, exc, transactional,
                                                                            seen.blockers))
                if probe is not None and not seen.blockers:
                    seen.blind = seen.blind or probe.blind  # why no one is named
                if not seen.cancelled and budget is not None and (budget.set_ms or budget.file_ms) is not None:
                    # what this statement could wait (what was left of the try, or the file's own stricter value)
                    seen.lock_timeout = min(ms for ms in (budget.set_ms, budget.file_ms) if ms is not None) / 1000
                if not transactional and MAY_COMMIT.match(exc.statement.text):
                    raise _not_retried(exc, seen, backoff, _MAY_COMMIT)
                with lost_session.between_tries(path, statements, exc.index, transactional, exc.done,
                                                backoff.tries == 1):
                    kept = bool(policy.budget) and session_locks.after_failed_try(connection, transactional)
                if kept:  # (a retry would keep it: the app would wait on it through the backoff and the tries)
                    session_locks.end(connection)
                    raise _not_retried(exc, seen, backoff, session_locks.kept(statements, exc.index))
                delay = backoff.next_delay() if policy.budget else None
                if delay is None:
                    if getattr(exc, "at_commit", None) == "records" and not seen.cancelled:
                        busy = exc.cause  # the record's table held: its own line and exit (bookkeeping_busy), as
                        break  # before; raised outside this handler, so not taken for the file's own statement's
                    if not transactional and concurrently.is_concurrent(exc.statement.text):  # (not left INVALID)
                        index_leftovers.prepare_retry(connection, statements, exc.index, path, skip, before,
                                                      "left by its last try (not tried again)")
                        exc.index_dropped = not concurrently.invalid_after(connection, statements, before, skip.tables)
                    raise retry.gave_up(exc, seen, backoff)
                retry.say_retry(exc, seen, backoff, delay)
                if transactional:  # the whole file again, in a new transaction (as if this try never ran)
                    start = done = 0
                else:
                    start, done = (exc.opened if exc.opened is not None else exc.index), exc.done
                    if concurrently.is_concurrent(exc.statement.text):  # (its INVALID index: attack24q 9)
                        index_leftovers.prepare_retry(connection, statements, exc.index, path, skip, before)
                    if exc.left_pending:  # the cancelled detach's first transaction committed: the retry finishes it
                        statements = detach.finalize(statements, exc.index, path)
                with lost_session.between_tries(path, statements, exc.index, transactional, done):
                    if transactional:
                        with connection.cursor() as cursor:
                            cursor.execute("ROLLBACK")
                            cursor.execute("BEGIN")
                        if policy.quick_autovacuum_cancel:  # (the ROLLBACK undid the SET)
                            autovacuum.lower_deadlock_timeout(connection, policy.per_try)
                    try:
                        retry.sleep(delay)
                    except interrupt.Interrupted:
                        if progress:
                            progress(done, started=False)
                        raise
                    with connection.cursor() as cursor:  # ended between tries? (a query that takes no snapshot: a
                        cursor.execute("SHOW lock_timeout")  # file's SET TRANSACTION may still come first)
                    if transactional:
                        pg_lock.hold_for_shared_ddl(connection, statements, transactional)
        if busy is not None:
            raise busy
    finally:
        if probe is not None:
            probe.close()
    if not transactional:
        invalid = concurrently.invalid_after(connection, statements, before, skip.tables)
        if invalid:
            raise IndexLeftInvalid(invalid, path, statements, concurrently.ours(connection, statements,
                                                                                invalid[0][0], skip.tables))
        if taken := concurrently.skipped(connection, statements, skip.tables):
            raise IndexNotBuilt(*taken[0], path, statements)
        migration.built_indexes = concurrently.built(connection, statements, before, skip.tables)


def _accepted(path: Path, statements) -> set[tuple[str | None, str]]:
    """The tables the file's `-- accept-rewrite:` marker names, (schema or None, name): waiters on them the seeing
    probe accepts (the blind one cannot tell them from others': clock_bound.py)."""
    try:
        return rewrites.markers(files.read_text(path), statements)
    except (OSError, UnicodeError):
        return set()


def _made_in_run(backend) -> dict:
    """The temporary tables this run's files created so far (kept on the run's own session; clock_bound.Judge)."""
    run = backend.parent
    if not hasattr(run, "created_tables"):
        run.created_tables = {}
    return run.created_tables


def _waited_for_prepared(connection, exc) -> None:
    """A CONCURRENTLY build that ran out of statement_timeout while a prepared transaction (two-phase commit: no
    session, it never ends by itself) was open here most likely waited for it: say so, and how to end it."""
    if getattr(exc.cause, "pgcode", None) != retry.QUERY_CANCELED or connection.info.transaction_status != IDLE:
        return
    with connection.cursor() as cursor:
        held = sessions.prepared_here(cursor)
    if held:
        exc.todo = (f"it most likely waited for {sessions.describe(held[0])}, which a build must wait out: "
                    f"{sessions.ending(held[0])}, then run migrate again (it drops the INVALID index and builds it "
                    "again)")


# A DO block or a CALL may COMMIT inside (PostgreSQL 11+): in a non-transactional file what it committed before the
# lock timeout stays, so running it again would do that part twice.
MAY_COMMIT = lazy_re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/)*(?:do|call)\b", re.IGNORECASE | re.DOTALL)


_MAY_COMMIT = ("a DO block or CALL may have committed part of its work before the lock timeout, and a retry would "
               "run that part again")
def _not_retried(exc, seen, backoff, why: str):
    retry.gave_up(exc, seen, backoff)
    exc.todo = f"not retried: {why}; " + exc.todo.split("; ", 1)[1]
    return exc


class IndexLeftInvalid(StatementFailed):
    """A file ran to its end but an index one of its CONCURRENTLY builds names is INVALID: not recorded."""

    def __init__(self, invalid: list[tuple[int, str]], path: Path, statements, ours: bool | None = True):
        index, name = invalid[0]
        cause = RuntimeError(
            f"index {name} is INVALID (an earlier failed build that IF NOT EXISTS skipped, or a build that failed "
            "without an error here), so the migration is not recorded as applied")
        super().__init__(cause, path, statements, index, False, len(statements), None)
        # (what the rerun does with it, as index_leftovers._named decides: never a drop it will not do)
        self.todo = (f"run migrate again: it drops the INVALID index (DROP INDEX CONCURRENTLY {name}) and builds it "
                     "again" if ours else f"drop it yourself: DROP INDEX CONCURRENTLY {name}; then run migrate again "
                     "(its definition could not be compared with the build's: no TEMPORARY privilege)")
        if ours is False:
            self.todo = (f"it is not what this file builds (another definition), so migrate will not drop it: look "
                         f"at it, drop it yourself (DROP INDEX CONCURRENTLY {name}) or rename the build, then run "
                         "again")

    def committed(self) -> str:
        return progress(self.statements, self.done, "not recorded as applied")


class IndexNotBuilt(StatementFailed):
    """A `CREATE INDEX CONCURRENTLY IF NOT EXISTS name` the server skipped (only a NOTICE): the name is another's."""

    def __init__(self, index: int, instead: str, path: Path, statements):
        cause = RuntimeError(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS built nothing: {instead}; so the migration "
                             "is not recorded as applied")
        super().__init__(cause, path, statements, index, False, len(statements), None)
        self.todo = ("give the index another name in the file (or drop what holds the name if it is not wanted), "
                     "then run again")

    def committed(self) -> str:
        return progress(self.statements, self.done, "not recorded as applied")




class SearchPathGuard:
    """A tenant's run: the search_path the runner gave the session, watched while the file runs, for what
    the text check cannot see (a path built at run time, 'search' || '_path'). PostgreSQL 18+ reports each
    change of search_path to the client, so every statement is checked at no cost; an older server is asked
    after each statement of a non-transactional file, and about a transactional one in the checksum step,
    before its transaction commits."""

    def __init__(self, connection):
        self.connection = connection
        self.reported = connection.info.parameter_status("search_path") is not None
        self.expected = connection.info.parameter_status("search_path") or self._ask()

    def _ask(self) -> str:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_catalog.current_setting('search_path')")
            return cursor.fetchone()[0]

    def changed(self, transactional: bool) -> str | None:
        """The session's search_path if it is no longer the runner's, else None."""
        if self.reported:
            now = self.connection.info.parameter_status("search_path")
        elif transactional:
            return None  # asked once, with the checksum
        else:
            now = self._ask()
        return None if now == self.expected else now

    def moved(self, found: str, path: Path, statements, index: int, transactional: bool, done: int,
              opened: int | None) -> StatementFailed:
        return SearchPathMoved(found, self.expected, path, statements, index, transactional, done, opened)


class SearchPathMoved(StatementFailed):
    """A tenant's file changed its session's search_path: it stops there, and says what committed."""

    def __init__(self, found: str, expected: str, path: Path, statements, index: int, transactional: bool,
                 done: int, opened: int | None, at_end: bool = False, cause: Exception | None = None):
        what = "by its end the file" if at_end else "this statement"
        cause = cause or RuntimeError(
            f"{what} changed search_path to '{found}' (a tenant's migration runs with '{expected}', its schema then "
            "public), so what follows would land in another schema; remove what sets search_path (the text check "
            "cannot see a name built at run time), and give a function SET search_path FROM CURRENT")
        super().__init__(cause, path, statements, index, transactional, done, opened)

    def committed(self) -> str:
        if self.transactional:
            return "nothing of it was committed: its transaction rolled back"
        then = "the rest did not run"
        if self.opened is not None:
            then = (f"statements {self.opened + 1}-{self.index + 1} ran inside the transaction the file opened at "
                    f"line {self.statements[self.opened].line}, which rolled back; {then}")
        return progress(self.statements, self.done, then)
