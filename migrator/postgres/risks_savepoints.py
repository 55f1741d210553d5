"""What a ROLLBACK undoes of what the judge noted (attack24k 4): a SAVEPOINT (or a non-transactional file's own BEGIN)
keeps a copy of risks.Seen, ROLLBACK TO SAVEPOINT (or that block's ROLLBACK) puts it back, as the server undoes the
tables, renames, functions, domains, CHECKs and settings made since; RELEASE (COMMIT) drops the copies. A ROLLBACK
TO a savepoint the judge did not see kept (the server refuses it, or the nesting is not read) undoes nothing here
and leaves the file's search_path unknown (risks_path)."""

from __future__ import annotations

import copy
import re

from migrator import lazy_re

_CONTROL = lazy_re.compile(r"\s*(?:savepoint|release|rollback|abort|begin|start|commit|end)\b", re.IGNORECASE)
_BLOCK = "(block)"  # (a non-transactional file's BEGIN: its ROLLBACK goes back there)


def read(bare: str, text: str, seen) -> bool:
    """Follow a transaction-control statement: True when it put back what the judge noted before (nothing else to
    read in it)."""
    if not _CONTROL.match(bare):
        return False
    from pglast import ast, enums, parse_sql
    from pglast.parser import ParseError

    try:
        trees = [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return False
    kinds = enums.TransactionStmtKind
    restored = False
    for tree in trees:
        if not isinstance(tree, ast.TransactionStmt):
            continue
        marks = seen.savepoints
        names = [name for name, _state in marks]
        if tree.kind == kinds.TRANS_STMT_SAVEPOINT and (seen.transactional or _BLOCK in names):
            marks.append((tree.savepoint_name, _copy(seen)))
        elif tree.kind in (kinds.TRANS_STMT_BEGIN, kinds.TRANS_STMT_START) and not seen.transactional:
            marks[:] = [(_BLOCK, _copy(seen))]
        elif tree.kind == kinds.TRANS_STMT_RELEASE and tree.savepoint_name in names:
            del marks[len(names) - 1 - names[::-1].index(tree.savepoint_name):]
        elif tree.kind == kinds.TRANS_STMT_ROLLBACK_TO and tree.savepoint_name in names:
            at = len(names) - 1 - names[::-1].index(tree.savepoint_name)  # (the latest of that name)
            del marks[at + 1:]
            _restore(seen, marks[at][1])
            restored = True
        elif tree.kind == kinds.TRANS_STMT_ROLLBACK and names[:1] == [_BLOCK]:
            _restore(seen, marks[0][1])
            marks.clear()
            restored = True
        elif tree.kind in (kinds.TRANS_STMT_COMMIT, kinds.TRANS_STMT_ROLLBACK) and not seen.transactional:
            marks.clear()
    return restored


def _copy(seen) -> dict:
    """What the judge noted (risks_path's values and GONE are kept as they are: compared by identity)."""
    return copy.deepcopy({k: v for k, v in vars(seen).items() if k != "savepoints"})


def _restore(seen, state: dict) -> None:
    vars(seen).update(copy.deepcopy(state))  # (the copy stays for a later ROLLBACK TO the same savepoint)
