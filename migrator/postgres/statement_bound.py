"""A file's own `SET statement_timeout` cannot lift the run's `--statement-timeout` / DB_STATEMENT_TIMEOUT.

pg_dump's header says `SET statement_timeout = 0;`: run as written, it would leave every later statement of the file
unbounded without a word (a rewrite holding ACCESS EXCLUSIVE for an hour). After a statement that sets it, a value
looser than the run's (0, or longer) is reset to the session's own (the run's, given at connect), with one note; a
stricter one (a file's 30s) is kept: it only ends a statement sooner. As lock_timeout's (retry.TryBudget.override).
"""

from __future__ import annotations

import re

from migrator import durations, output
from migrator.postgres.retry import seconds_text

# SET / RESET statement_timeout as a statement, after any comments; the word in a literal or a name is not one.
SETS_STATEMENT_TIMEOUT = re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/)*(?:set(?:\s+(?:session|local))?|reset)\s+"
                                    r"(?:statement_timeout|\"statement_timeout\")(?![\w$])", re.IGNORECASE | re.DOTALL)


_NOTED: set = set()  # (file, line) already said: once, not on each lock retry of the file


def keep(cursor, path, statement) -> None:
    """After `statement` (it sets statement_timeout): the run's bound again unless the file's is stricter."""
    # Utility statements only: a file's own 1 ms bound (kept: stricter) must not cancel the runner's look at it.
    ms = _shown(cursor)
    cursor.execute("RESET statement_timeout")
    run_ms = _shown(cursor)
    if run_ms == 0 or 0 < ms <= run_ms:  # no bound to keep, or the file's is stricter: the file's again
        if ms != run_ms:
            cursor.execute(f"SET statement_timeout = {int(ms)}")
        return
    if (str(path), statement.line) in _NOTED:
        return
    _NOTED.add((str(path), statement.line))
    output.note(f"{path}:{statement.line}: the file's SET statement_timeout is overridden: each statement still ends "
                f"after {seconds_text(run_ms / 1000)} (the run's --statement-timeout / DB_STATEMENT_TIMEOUT: raise it, or 0 "
                "for none, to let this run longer; remove the line from the file to drop this note)")


def _shown(cursor) -> float:
    cursor.execute("SHOW statement_timeout")
    return durations.pg_milliseconds(cursor.fetchone()[0])
