"""A failed migration as one line: file:line, PostgreSQL's message with its DETAIL and HINT, and
exactly what was committed."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from migrator import output
from migrator.durations import seconds_text
from migrator.errors import FAILED, MigratorError
from migrator.postgres import files

HINTS = {
    "55P03": "it waited longer than lock_timeout for a lock that other sessions hold: "
             "end the session that holds it, or run again when it has ended (--lock-retry-budget retries longer)",
    "40P01": "it deadlocked with another session (PostgreSQL ended this side, its transaction rolled back): "
             "run again; lock retries (--ddl-lock-timeout, --lock-retry-budget) retry it by themselves",
    "57014": "it ran longer than statement_timeout: raise --statement-timeout, or make the migration cheaper",
    "25001": "put that statement in a migration of its own whose first line is `-- transactional: false`",
    "53200": "the file takes more locks than max_locks_per_transaction allows: raise it on the server, "
             "or split the file",
}


class StatementFailed(Exception):
    """A statement of a file failed; carries which one, so the message can say what committed.

    `done` statements committed (in a non-transactional file); `opened` is the index of a BEGIN the
    file itself ran and had not committed when the failure came (its statements rolled back)."""

    def __init__(self, cause, path: Path, statements, index: int, transactional: bool,
                 done: int | None = None, opened: int | None = None):
        super().__init__(str(cause))
        self.cause, self.path, self.statements, self.statement = cause, path, statements, statements[index]
        self.total = len(statements)
        self.index, self.transactional = index, transactional
        self.done = index if done is None else done
        self.opened = opened

    def _position(self) -> int | None:
        """The server's error position (1-based characters into the statement); an "end of input" past the
        statement's trailing blanks (a last statement without `;`) backed up to just after its last character,
        where psql, which sends no trailing newline, puts it."""
        position = getattr(getattr(self.cause, "diag", None), "statement_position", None)
        return min(int(position), len(self.statement.text.rstrip()) + 1) if position else None

    @property
    def line(self) -> int:
        return self.statement.line_at(self._position())

    def position(self) -> tuple[int, list[str]] | None:
        """(column, [the file's line, a caret under the column]) of the server's error position, as psql shows
        them; None when the server gave none or the file no longer holds the statement as it ran."""
        position = self._position()
        try:
            text = files.read_text(self.path) if position else ""
        except MigratorError:
            return None
        start = self.statement.offset
        if not position or text[start:start + len(self.statement.text)] != self.statement.text:
            return None
        at = start + min(position, len(self.statement.text)) - 1
        begin = max(text.rfind("\n", 0, at), text.rfind("\r", 0, at)) + 1  # a lone \r ends a line too (splitter)
        end = min((i for i in (text.find("\n", at), text.find("\r", at)) if i >= 0), default=len(text))
        column = at - begin + 1
        # The line as printed (a tab one space, a control character its escape), the caret under the error in
        # display columns (a wide character two, a combining one none).
        line = output.visible(text[begin:end].replace("\t", " "))
        index = len(output.visible(text[begin:at].replace("\t", " ")))
        shown, caret = line, index
        if len(line) > EXCERPT_WIDTH:  # a long line: the part around the position, marked cut as psql marks it
            left = max(0, min(index - EXCERPT_WIDTH // 2, len(line) - EXCERPT_WIDTH))
            shown = ("..." if left else "") + line[left:left + EXCERPT_WIDTH] + ("..." if left + EXCERPT_WIDTH < len(line) else "")
            caret = index - left + (3 if left else 0)
        label = f"LINE {self.line}: "
        return column, [label + shown, " " * (len(label) + display_width(shown[:caret])) + "^"]

    def committed(self) -> str:
        """What of the file is in the database now, in words."""
        from migrator.postgres import concurrently  # (a failure's words: a no-op never loads it)

        if self.transactional:
            return "nothing of it was applied: its transaction rolled back"
        failed = f"statement {self.index + 1} failed"
        if getattr(self, "left_pending", None):  # DETACH PARTITION CONCURRENTLY (detach.py)
            failed = (f"statement {self.index + 1} stopped part-way, the first of its two transactions COMMITTED: "
                      f"partition {self.left_pending} is left pending detach (still attached for the parent's queries)")
        done = progress(self.statements, self.done, f"{failed}; the rest did not run",
                        getattr(self.cause, "backfill_committed", None))
        if self.opened is not None:
            done += (f"; statements {self.opened + 1}-{self.index + 1} ran inside the transaction the file opened "
                     f"at line {self.statements[self.opened].line}, which rolled back")
        if concurrently.is_drop(self.statement.text):
            code = getattr(self.cause, "pgcode", None) or ""
            if code[:2] in ("57", "55", "08"):  # stopped while it waited (not "does not exist")
                done += ("; but a DROP INDEX CONCURRENTLY stopped part-way may have left its index INVALID (no "
                         "longer used by queries, still updated by writes): run migrate again to finish the drop")
        elif getattr(self, "index_dropped", False):  # (running.run_retrying, as it gave up)
            done += "; the INVALID index its last try left was dropped"
        elif concurrently.is_concurrent(self.statement.text):  # only a failed one leaves an INVALID index behind
            done += "; a failed CONCURRENTLY build leaves an INVALID index, which `runner.py status` shows"
        return done


NOTHING_COMMITTED = "not transactional: no statement of it committed"
# A unique index build (CREATE UNIQUE INDEX, ADD PRIMARY KEY / UNIQUE) that found the same key twice: the data is wrong
DUPLICATES = ("the table holds rows with the same key (the DETAIL names one): find them (SELECT the key, count(*) ... "
              "GROUP BY the key HAVING count(*) > 1), fix the data (the file is not wrong), then run again")


def nothing_committed(failure: str) -> bool:
    """A recorded failure (`file:line: what committed; ...`) says no statement of it committed."""
    return NOTHING_COMMITTED in failure.split("; ", 1)[0]
EXCERPT_WIDTH = 72  # characters of a long line shown around the error position


def display_width(text: str) -> int:
    """Columns a terminal gives the text: East Asian wide and fullwidth characters two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def progress(statements, done: int, then: str, batches=None, record: bool = False) -> str:
    """What a non-transactional file committed, in words: `done` statements, then what happened; `batches`
    (backfill_progress.Committed): what the `-- backfill: batch` statement after them committed before it stopped,
    in this run and before (`record`: the failure record's words, the total first)."""
    from migrator.postgres.backfill_progress import Committed, words

    if batches and (part := words(Committed(*batches), record)):
        if done == 0:
            return f"not transactional: {part} (no statement before it); {then}"
        then = f"{part}; {then}"
    if done == 0:
        return f"{NOTHING_COMMITTED}; {then}"
    if done == 1:  # (not "statements 1-1 of 1")
        which = "its only statement" if len(statements) == 1 else f"statement 1 of {len(statements)}"
        return f"not transactional: {which} (line {statements[0].line}) COMMITTED; {then}"
    return (f"not transactional: statements 1-{done} of {len(statements)} (through the one at line "
            f"{statements[done - 1].line}) COMMITTED; {then}")



class TransactionEnded(StatementFailed):
    """A transactional file's statement ended the transaction the runner opened for it (a COMMIT or ROLLBACK that
    reached the server unseen by the text checks, files.in_transaction_problem): the file stops there, unrecorded.
    libpq reports the session idle after it; whether it committed or rolled back is not reported."""

    def __init__(self, path: Path, statements, index: int, at_end: bool = False):
        cause = RuntimeError("this statement ended the transaction the runner runs the file in (a COMMIT or ROLLBACK "
                             "the runner did not see in the text), so what follows would run outside it")
        if at_end:  # (the record found the session in another transaction: checksums.TransactionChanged)
            cause = RuntimeError("by its end the runner's mark of the transaction it opened for the file was gone: "
                                 "the file ended that transaction (a COMMIT or ROLLBACK AND CHAIN, or one followed by "
                                 "BEGIN, that the runner did not see in the text) or reset the runner's settings (a "
                                 "RESET ALL / DISCARD ALL it did not see: built at run time, EXECUTE in a DO block)")
        super().__init__(cause, path, statements, index, True, index + 1)
        self.at_end = at_end
        self.todo = ("check what of it is in the database (`runner.py status` shows drift), make the file's statements "
                     "plain SQL without transaction control (and a RESET ALL plain text, or RESET of the settings "
                     "it means), then run again")

    def committed(self) -> str:
        if self.at_end:
            return ("ended, what it ran before may have committed or rolled back, which is unknown, and what it ran "
                    "after rolled back; reset, all of it rolled back; the runner recorded none of it")
        upto = "statement 1" if self.done == 1 else f"statements 1-{self.done}"
        return (f"{upto} of {self.total} (through line {self.statement.line}) may have committed or rolled back, "
                "which is unknown; the rest did not run, and the runner recorded none of it")

def server_message(exc) -> str:
    """PostgreSQL's message, DETAIL, HINT and the first CONTEXT line, on one line."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
    parts = [" ".join(primary.split())]  # RAISE EXCEPTION's text may hold line breaks
    for label, value in (("DETAIL", getattr(diag, "message_detail", None)), ("HINT", getattr(diag, "message_hint", None)),
                         ("CONTEXT", (getattr(diag, "context", None) or "").split("\n")[0])):
        if value:
            parts.append(f"{label}: {' '.join(value.split())}")
    return output.scrub("; ".join(parts))  # the server may quote a value, even a password


def connection_lost(cause) -> bool:
    """The driver lost the server (no SQLSTATE: an OperationalError or InterfaceError); a ProgrammingError
    without one is the driver refusing the statement itself, which the server never saw."""
    import psycopg2

    return getattr(cause, "pgcode", None) is None and isinstance(cause, (psycopg2.OperationalError,
                                                                         psycopg2.InterfaceError))


def _before_commit(cause):
    """What lost_session.mark marked on the error, or on the one it led to (yoyo's ROLLBACK on the closed
    connection raises again), else None."""
    while cause is not None:
        if (before := getattr(cause, "before_commit", None)) is not None:
            return before
        cause = cause.__cause__ or cause.__context__
    return None


def migration_error(exc, migration, where: str, verb: str, path: Path) -> MigratorError:
    """The one line for a failed migration or rollback (`exc` a StatementFailed or a driver error)."""
    excerpt: list[str] = []
    if isinstance(exc, StatementFailed):
        cause, at, committed = exc.cause, f"{exc.path}:{exc.line}", exc.committed()
        found = exc.position()
        if found:  # file:line:column, and the line with a caret above the error line
            at, excerpt = f"{at}:{found[0]}", found[1]
    else:  # e.g. COMMIT refused by a deferred constraint, or the checksum record
        cause, at = exc, str(path)
        committed = ("nothing of it was applied: its transaction rolled back" if migration.use_transactions
                     else "not transactional: its statements all ran and COMMITTED; recording it failed")
        if connection_lost(cause):
            committed = "the connection was lost, so whether it committed is unknown: run `runner.py status`"
    todo = HINTS.get(getattr(cause, "pgcode", None), getattr(cause, "todo", "fix the file and run again"))
    if getattr(cause, "pgcode", None) == "57014" and getattr(exc, "waited", None):
        todo = statement_timeout_waited(exc.waited)
    if getattr(cause, "pgcode", None) == "23505" and server_message(cause).startswith("could not create unique index"):
        todo = DUPLICATES
    if server_message(cause).startswith("SET TRANSACTION ISOLATION LEVEL must be called before any query"):
        todo = "make it the file's first statement (as `psql -1 -f` needs too)"
    if connection_lost(cause) and getattr(exc, "in_backoff", False):  # (running.run_retrying)
        committed = ("the session was lost between lock retries, while no statement was running: "
                     if exc.in_backoff is True else  # (the first try's end: the server's idle bound on a frozen runner)
                     "the session was lost as the runner ended the file's first try, before any retry, while no "
                     "statement was running (a restart, a failover, pg_terminate_backend, or the server's idle bound "
                     "ending a try whose runner was frozen: SIGSTOP, a VM pause): ") + (
            "nothing of it was applied: its transaction rolled back" if exc.transactional else
            progress(exc.statements, exc.done, f"statement {exc.index + 1} was to be tried again; the rest did not run"))
        todo = exc.todo = "run again" if exc.transactional or not exc.done else (
            "a rerun runs the file from its first statement, so what COMMITTED runs again: make the file safe to "
            "re-run (IF NOT EXISTS) or undo that, then run again")
    elif (before := _before_commit(cause)) is not None:  # (lost_session.mark)
        committed = "the session was lost before the runner sent its COMMIT: nothing of it was applied: its " \
                    "transaction rolled back"
        idle, took, mid_try = before
        if mid_try:  # (the client cannot tell a freeze between statements from a statement ended while it ran)
            committed = (f"the connection was lost (a server restart, a failover, pg_terminate_backend, or the server's "
                         f"idle_in_transaction_session_timeout of {seconds_text(idle / 1000)} ending a try of "
                         f"{seconds_text(took)} whose runner was frozen: SIGSTOP, a VM pause) before the runner's "
                         "COMMIT: nothing of it was applied: its transaction rolled back")
        elif idle and took is not None and took * 1000 > idle:
            committed += (f"; the server most likely ended the try, {seconds_text(took)} after it began: past its "
                          f"idle_in_transaction_session_timeout of {seconds_text(idle / 1000)}, the runner frozen "
                          "meanwhile (SIGSTOP, a VM pause)")
        todo = "run again"
    elif connection_lost(cause) and (ended := getattr(cause, "idle_ended", None)) and isinstance(exc, StatementFailed):
        committed = (f"the server ended the session, left idle by the runner frozen {seconds_text(ended[1])} (SIGSTOP, "
                     f"a VM pause), past the idle_session_timeout of {seconds_text(ended[0] / 1000)} (and "
                     "idle_in_transaction_session_timeout) the runner sets while the session holds a session-level "
                     "advisory lock, which released that lock: " + progress(
                         exc.statements, exc.done, f"statement {exc.index + 1} " + (
                             "stopped between two of its batches" if (batches := getattr(cause, "backfill_committed", None)) and batches[1]
                             else "did not run") + "; the rest did not run", batches))
    elif connection_lost(cause) and getattr(cause, "at_connect", False):  # (connection.py: its session's connect)
        committed = "its session could not connect: nothing of it was sent, nothing applied"
        todo = "free a connection slot (or fix what the server refused), then run again"
    elif connection_lost(cause) and isinstance(exc, StatementFailed) and exc.transactional:
        # a statement inside the file's one transaction (files refuse COMMIT in one): the runner's COMMIT never went
        committed = ("the connection was lost (a server restart, a failover, or pg_terminate_backend) while its statement "
                     "ran, before the runner's COMMIT: nothing of it was applied: its transaction rolled back")
        todo = "run again"
    elif connection_lost(cause):
        committed = "the connection was lost (a server restart, or pg_terminate_backend), so whether it committed " \
                    "is unknown: run `runner.py status`"
        todo = "then run again"
        batches = getattr(cause, "backfill_committed", None)
        if isinstance(exc, StatementFailed) and not exc.transactional and batches and batches[1]:
            # the batches before the one cut committed: known; only that last one is not
            committed = ("the connection was lost (a server restart, or pg_terminate_backend) during a batch: "
                         + progress(exc.statements, exc.done, "whether the batch running then committed is unknown",
                                    batches))
            todo = exc.todo = "run again: the rerun continues the backfill where it stopped (its WHERE leaves done rows out)"
    earlier = getattr(migration, "earlier_failure", None)
    if isinstance(exc, StatementFailed) and not exc.transactional and earlier and not nothing_committed(earlier) \
            and exc.done == 0 and not (getattr(exc.cause, "backfill_committed", None) or (0, 0, 0))[1]:
        # an earlier run committed part; this one none (no statement, no backfill batch)
        committed = (f"this run committed none of its statements; a rerun starts from its first statement, and an "
                     f"earlier run left: {earlier}")
    if getattr(exc, "todo", None):  # the failure knows better (lock retries spent, an INVALID index)
        todo = exc.todo
    elif isinstance(exc, StatementFailed) and not exc.transactional and (
            exc.done or earlier and not nothing_committed(earlier)):
        guard = "IF EXISTS" if verb == "roll back" else "IF NOT EXISTS"
        todo = (f"`runner.py status` shows this; make the file safe to re-run ({guard}) or undo what committed, "
                "then run again")
        if getattr(cause, "todo", None):  # (a statement not sent: what to change in the file comes first)
            todo = f"{cause.todo}; {todo}"
    return MigratorError(f"{at}: failed to {verb} on {where}: {server_message(cause)} ({committed}); {todo}",
                         getattr(cause, "exit_code", FAILED), excerpt=tuple(excerpt))


def statement_timeout_waited(waited: str) -> str:
    """What to do about a statement statement_timeout ended while it waited (for a lock, or a CONCURRENTLY build
    for older transactions: watch.Watcher.waited), not while it worked: the holder is what to end."""
    return (f"it ran out of statement_timeout while {waited}: it was waiting, not working, so making it cheaper does "
            "not help; end that session (or wait for it to end) and run again, or raise --statement-timeout")


class RunSessionLost(Exception):
    """The run's own connection (the bookkeeping lock's, the progress record's) was lost while a file ran: `done`
    of its statements committed (None: a transactional file, whose transaction then rolls back: nothing)."""

    def __init__(self, cause, statements, done: int | None):
        super().__init__(str(cause))
        self.cause, self.statements, self.done = cause, statements, done
