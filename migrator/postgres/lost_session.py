"""A migration's session lost where no statement of the file was running (between its lock tries, before its COMMIT,
between two statements of a try): what the one line can say of it (errors.migration_error reads the marks)."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from migrator.postgres import errors, failures, session_options
from migrator.postgres.errors import StatementFailed


def mark(lost, connection, budget, only_idle: bool = False) -> None:
    """Marked on the error: (the try's idle bound in ms, seconds since the try began), so the line can say the server
    most likely ended a try left idle past it (a runner frozen: attack24r 10). `only_idle` (a statement's failure
    mid-try, fix24ap 2: frozen between two statements): only once the try outlived that bound, else the usual words
    (lost while its statement ran: a restart, a failover, pg_terminate_backend)."""
    idle, started = session_options.TRY_IDLE.get(connection), budget.started if budget is not None else None
    took = time.monotonic() - started if started is not None else None
    if not only_idle or idle and took is not None and took * 1000 > idle:
        lost.before_commit = (idle, took, only_idle)  # (mid-try: a long statement killed looks the same)


@contextlib.contextmanager
def before_commit(connection, budget, transactional: bool):
    """After a transactional try's last statement, before its COMMIT: a session lost here committed nothing."""
    try:
        yield
    except Exception as lost:
        if transactional and errors.connection_lost(lost):
            mark(lost, connection, budget)
        raise


@contextlib.contextmanager
def between_tries(path: Path, statements, index: int, transactional: bool, done: int, first: bool = False):
    """The session lost between a file's tries (its last try's ROLLBACK included: an admin's pg_terminate_backend,
    a failover): no statement of it was running, so a transactional file applied nothing (errors.migration_error
    says it). Any statement sent then, not only the ROLLBACK: each is a moment a failover can hit, or a silent path."""
    try:
        yield
    except failures.NoAnswer as silent:  # the path went silent: none of the file's statements was running either
        located = failures.NoAnswer(f"{path}: {silent}, between its lock tries (none of its statements was running)")
        located.in_transaction = transactional  # (its try's transaction: nothing of it can have committed)
        raise located from silent
    except Exception as lost:
        if not errors.connection_lost(lost):
            raise
        failed = StatementFailed(lost, path, statements, index, transactional, done)
        failed.in_backoff = "first" if first else True  # (`first`: as the file's first try ended, no retry yet)
        raise failed from lost


_OPENS = re.compile(r"\s*(?:BEGIN|START)\b", re.IGNORECASE)
_COMMITS = re.compile(r"\s*(?:COMMIT|END)\b", re.IGNORECASE)


def committed_then_lost(statement, opened) -> bool:
    """A non-transactional file's statement that returned without an error, outside a block the file opened, whose
    session was lost right after it (the probe's question that followed found it ended: a runner frozen as it ended,
    attack24w 1): autocommit, so it COMMITTED (a BEGIN aside: it opened a block that committed nothing); so did the
    COMMIT of a block the file opened."""
    if opened is not None:
        return bool(_COMMITS.match(statement.text))
    return not _OPENS.match(statement.text)
