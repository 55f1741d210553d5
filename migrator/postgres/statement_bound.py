"""A file's own `SET statement_timeout` / `SET idle_in_transaction_session_timeout` cannot lift the run's bounds.

pg_dump's header says `SET statement_timeout = 0;`: run as written, it would leave every later statement of the file
unbounded without a word (a rewrite holding ACCESS EXCLUSIVE for an hour). It also says
`SET idle_in_transaction_session_timeout = 0;`, which would switch off the server-side bound that rolls back a
migration's transaction (releasing its locks) when the runner is cut off (session_options.migration_idle_bound).
After a statement whose text could set either, however spelled (`SET /* c */ statement_timeout`, a set_config
anywhere in it, quoted or escaped, an UPDATE of pg_settings, a DO block, a CALL), both are read back: a value looser
than the run's (0, or longer) is reset to the session's own (the run's, given at connect), with one note; a stricter one
(a file's 30s) is kept: it only ends sooner. As lock_timeout's (retry.TryBudget.override). Known limit: a function of
the database's own that sets either, called by name from a statement that names none of these (or from a trigger).
"""

from __future__ import annotations

import contextvars
import re
import weakref
from contextlib import contextmanager
from typing import Iterator

from migrator import durations, output
from migrator.postgres.psql_tokens import NOT_AFTER_IDENT, NOT_BEFORE_IDENT
from migrator.postgres.retry import seconds_text
from migrator.postgres.session_options import TRY_IDLE
from migrator.postgres.transaction_status import IN_TRANSACTION

_BOUNDS = ("statement_timeout", "idle_in_transaction_session_timeout")
_IDLE = _BOUNDS[1]
# Read back after any statement that could set a bound, whatever the spelling: "set" anywhere (SET, RESET, set_config,
# pg_settings; quoted, commented: one more SHOW at worst), a Unicode escape (U&"\0073et_config"), code a DO block, a
# CALL or an EXECUTE runs. Not after the statements of a data load (20,000 INSERTs: no SHOW at all).
_RUNS_CODE = re.compile(rf"{NOT_AFTER_IDENT}(?:call|execute|do(?!\s+(?:nothing|update){NOT_BEFORE_IDENT})){NOT_BEFORE_IDENT}")


def may_set(text: str) -> bool:
    """Whether the statement's text could set a bound (substring tests first: a regex searched through each INSERT
    of a data load costs nearly what the INSERT does)."""
    low = text.lower()
    return ("set" in low or "u&" in low
            or (("do" in low or "call" in low or "execute" in low) and _RUNS_CODE.search(low) is not None))


# What each note says the run's bound does, and how to change it.
_KEPT = {"statement_timeout": "each statement still ends after {} (the run's --statement-timeout / "
                              "DB_STATEMENT_TIMEOUT: raise it, or 0 for none, to let this run longer; ",
         "idle_in_transaction_session_timeout": "the server still rolls back a transaction left idle for {} (the "
                                                "runner's bound, so that a runner cut off leaves no lock held; "}

_NOTED: set = set()  # (file, line, setting) already said: once, not on each lock retry of the file
# Each migration session's bounds as last read and kept (an unchanged value needs no RESET to compare with the run's).
_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_REPLAYED: contextvars.ContextVar[bool] = contextvars.ContextVar("replayed", default=False)  # (replaying())


@contextmanager
def replaying() -> Iterator[None]:
    """While applied files are rebuilt on a scratch copy (plan --impact): their bounds kept as ever, without a note
    (said when each was applied; a plan's notes are about its pending files)."""
    token = _REPLAYED.set(True)
    try:
        yield
    finally:
        _REPLAYED.reset(token)


def hold(cursor, path, statement) -> None:
    """After `statement` of the file: each bound it could have loosened read back, the run's put back (keep)."""
    if not may_set(statement.text):
        return
    seen = _SEEN.setdefault(cursor.connection, {})
    in_try = cursor.connection.info.transaction_status == IN_TRANSACTION and TRY_IDLE.get(cursor.connection)
    for name in _BOUNDS:
        ms = _shown(cursor, name)
        if name == _IDLE and in_try and ms == in_try:
            continue  # the try's own bound (retry.TryBudget), not the file's: kept as it is
        if seen.get(name) != ms:
            seen[name] = keep(cursor, path, statement, name, ms)
            if name == _IDLE and in_try and not 0 < seen[name] <= in_try:  # (keep's RESET undid it)
                cursor.execute(f"SET LOCAL {name} = {in_try}")


def keep(cursor, path, statement, name: str, ms: float) -> float:
    """After `statement` (the bound `name` reads `ms`): the run's bound again unless the file's is stricter; the
    value in force after."""
    # Utility statements only: a file's own 1 ms bound (kept: stricter) must not cancel the runner's look at it.
    cursor.execute(f"RESET {name}")
    run_ms = _shown(cursor, name)
    if run_ms == 0 or 0 < ms <= run_ms:  # no bound to keep, or the file's is stricter: the file's again
        if ms != run_ms:
            cursor.execute(f"SET {name} = {int(ms)}")
        return ms
    if (str(path), statement.line, name) not in _NOTED and not _REPLAYED.get():
        _NOTED.add((str(path), statement.line, name))
        output.note(f"{path}:{statement.line}: the file's SET {name} is overridden: " + _KEPT[name].format(
            seconds_text(run_ms / 1000)) + "remove the line from the file to drop this note)")
    return run_ms


def _shown(cursor, name: str) -> float:
    cursor.execute(f"SHOW {name}")
    return durations.pg_milliseconds(cursor.fetchone()[0])
