"""A file's own `SET statement_timeout` / `SET idle_in_transaction_session_timeout` cannot lift the run's bounds.

pg_dump's header says `SET statement_timeout = 0;`: run as written, it would leave every later statement of the file
unbounded without a word (a rewrite holding ACCESS EXCLUSIVE for an hour). It also says
`SET idle_in_transaction_session_timeout = 0;`, which would switch off the server-side bound that rolls back a
migration's transaction (releasing its locks) when the runner is cut off (session_options.migration_idle_bound).
After a statement that sets either, a value looser than the run's (0, or longer) is reset to the session's own (the
run's, given at connect), with one note; a stricter one (a file's 30s) is kept: it only ends sooner. As lock_timeout's
(retry.TryBudget.override). Known limits: a DO block's set_config or an UPDATE of pg_settings is not seen.
"""

from __future__ import annotations

import re

from migrator import durations, output
from migrator.postgres.retry import seconds_text

_BOUNDS = r"statement_timeout|idle_in_transaction_session_timeout"
# SET / RESET of either as a statement, or a SELECT [pg_catalog.]set_config of it, after any comments; the word in a
# literal or a name is not one.
SETS_BOUND = re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/)*(?:(?:set(?:\s+(?:session|local))?|reset)\s+"
                        rf"(?P<name>{_BOUNDS}|\"(?:{_BOUNDS})\")|select\s+(?:pg_catalog\s*\.\s*)?set_config\s*\(\s*"
                        rf"'(?P<config>{_BOUNDS})')(?![\w$])", re.IGNORECASE | re.DOTALL)

# What each note says the run's bound does, and how to change it.
_KEPT = {"statement_timeout": "each statement still ends after {} (the run's --statement-timeout / "
                              "DB_STATEMENT_TIMEOUT: raise it, or 0 for none, to let this run longer; ",
         "idle_in_transaction_session_timeout": "the server still rolls back a transaction left idle for {} (the "
                                                "runner's bound, so that a runner cut off leaves no lock held; "}

_NOTED: set = set()  # (file, line, setting) already said: once, not on each lock retry of the file


def setting(text: str) -> str | None:
    """The bound a statement sets (statement_timeout, idle_in_transaction_session_timeout), or None."""
    match = SETS_BOUND.match(text)
    return match and (match["name"] or match["config"]).strip('"').lower()


def keep(cursor, path, statement, name: str) -> None:
    """After `statement` (it sets the bound `name`): the run's bound again unless the file's is stricter."""
    # Utility statements only: a file's own 1 ms bound (kept: stricter) must not cancel the runner's look at it.
    ms = _shown(cursor, name)
    cursor.execute(f"RESET {name}")
    run_ms = _shown(cursor, name)
    if run_ms == 0 or 0 < ms <= run_ms:  # no bound to keep, or the file's is stricter: the file's again
        if ms != run_ms:
            cursor.execute(f"SET {name} = {int(ms)}")
        return
    if (str(path), statement.line, name) in _NOTED:
        return
    _NOTED.add((str(path), statement.line, name))
    output.note(f"{path}:{statement.line}: the file's SET {name} is overridden: "
                + _KEPT[name].format(seconds_text(run_ms / 1000)) + "remove the line from the file to drop this note)")


def _shown(cursor, name: str) -> float:
    cursor.execute(f"SHOW {name}")
    return durations.pg_milliseconds(cursor.fetchone()[0])
