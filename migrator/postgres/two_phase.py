"""Two-phase commit in a migration file, refused before anything runs, transactional or not (attack24l N3).

PREPARE TRANSACTION hands the file's uncommitted work to a prepared transaction: the session ends it as if
committed, so the runner would record the file as applied while none of it is, and the prepared transaction keeps
its locks (ACCESS EXCLUSIVE on an altered table) until someone ends it by hand: the application waits without
limit. COMMIT / ROLLBACK PREPARED end a transaction some other client's transaction manager prepared. Read with
PostgreSQL's own parser (pglast, as the judge reads), so no spelling (case, comments, line breaks) slips by."""

from __future__ import annotations

import re

from migrator import lazy_re

# Cheap first look: every spelling of the three starts with PREPARE, COMMIT or ROLLBACK (the splitter starts a
# statement at its first token) and holds the keyword PREPARED after the last two (keywords take no escapes).
_MAYBE = lazy_re.compile(r"(?:prepare|(?:commit|rollback)\b(?=.*prepared\b))", re.IGNORECASE | re.DOTALL)

_WHY = {
    "PREPARE TRANSACTION": (
        "hands the file's uncommitted work to a prepared transaction that keeps its locks until someone runs "
        "COMMIT or ROLLBACK PREPARED (the application waits on them without limit) while the runner would record "
        "the file as applied"),
    "COMMIT PREPARED": "ends a transaction that another client's transaction manager prepared",
    "ROLLBACK PREPARED": "ends a transaction that another client's transaction manager prepared",
}


def problem(text: str) -> str | None:
    """Why the statement (as the splitter gives it) may not be in a migration, or None."""
    if not _MAYBE.match(text):
        return None
    from pglast import ast, enums, parse_sql
    from pglast.parser import ParseError

    kinds = enums.TransactionStmtKind
    words = {kinds.TRANS_STMT_PREPARE: "PREPARE TRANSACTION", kinds.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
             kinds.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED"}
    try:
        trees = [raw.stmt for raw in parse_sql(text)]
    except ParseError:  # (the server refuses it too)
        return None
    for tree in trees:
        if isinstance(tree, ast.TransactionStmt) and tree.kind in words:
            word = words[tree.kind]
            return (f"{word} {_WHY[word]}: two-phase commit has no place in a migration; remove it (end a prepared "
                    "transaction by hand with psql: COMMIT PREPARED or ROLLBACK PREPARED 'gid')")
    return None
