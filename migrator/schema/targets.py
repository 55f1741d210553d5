"""The objects a migration file changes, by name: the targets of its DDL (CREATE/ALTER/DROP/COMMENT/GRANT ...),
never the tables it only reads or writes rows of. A service's history owns what its files name (snapshot.py):
what else changed meanwhile in a shared schema is another service's work or a hand change, never this history's.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from migrator import lazy_re, source_files

# Statements that change no object's definition (rows, settings, transactions): their tables are not targets.
NOT_DDL = {"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt", "DoStmt",
           "TransactionStmt", "VariableSetStmt", "VariableShowStmt", "ExplainStmt", "CallStmt", "LockStmt",
           "TruncateStmt", "VacuumStmt", "NotifyStmt", "ListenStmt", "UnlistenStmt", "CheckPointStmt",
           "DiscardStmt", "PrepareStmt", "ExecuteStmt", "DeallocateStmt", "DeclareCursorStmt", "FetchStmt",
           "ClosePortalStmt", "ClusterStmt", "ReindexStmt", "LoadStmt", "RefreshMatViewStmt"}
# The fields of a DDL statement that name what it changes (a trigger's function, a view's query: not targets).
FIELDS = ("relation", "view", "sequence", "typevar", "table", "into", "idxname", "newname", "relations", "object",
          "objects", "funcname", "func", "typeName", "domainname", "defnames", "trigname")
SKIP = {"CreateTrigStmt": {"funcname"}}


def named(paths) -> set[str]:
    """The bare, lower-cased names the files' DDL statements target (missing files are skipped)."""
    names: set[str] = set()
    for path in paths:
        path = Path(path)
        if os.path.lexists(path):  # (anything but a missing file: a link or FIFO swapped in is refused)
            names |= file_targets(source_files.read_bytes(path).decode("utf-8", errors="replace"))
    return names


# A run asks for the same files' targets again (each record of a change, the rollback's, a takeover): keyed by the
# text, a file parses once per process and an edited file afresh; frozen, so no caller changes the kept answer.
@functools.lru_cache(maxsize=64)
def file_targets(text: str) -> frozenset[str]:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        pieces = _statements(text)
    except ParseError:  # (a psql-only line, a syntax pglast lacks): statement by statement, the unreadable ignored
        pieces = _pieces(text)
    statements = []
    for piece in pieces:
        if _DATA.match(piece):  # (a data file's rows: no tree built for them, the costly part of a parse)
            continue
        try:
            statements += [raw.stmt for raw in parse_sql(piece)]
        except ParseError:
            continue
    names: set[str] = set()
    for statement in statements:
        kind = type(statement).__name__
        if kind in NOT_DDL:
            continue
        column = "COLUMN" in repr(getattr(statement, "objtype", ""))  # COMMENT ON COLUMN t.c: the table t
        for name in FIELDS:
            if name not in SKIP.get(kind, ()):
                _collect(getattr(statement, name, None), names, column)
    return frozenset(names)


# A statement whose first word is one of these is of a NOT_DDL kind whatever follows (INSERT: InsertStmt, WITH: a
# SELECT, INSERT, UPDATE, DELETE or MERGE); anything else, a leading comment too, is parsed.
_DATA = lazy_re.compile(r"(?:INSERT|UPDATE|DELETE|SELECT|VALUES|WITH|COPY)\b", re.IGNORECASE)


def _statements(text: str) -> list[str]:
    """The text's statements as PostgreSQL's parser splits them (a function body's semicolons inside), without the
    trees; ParseError where it does not parse."""
    from pglast import parser

    return list(parser.split(text, with_parser=True))


def _pieces(text: str) -> list[str]:
    import pglast

    try:  # (pglast's scanner, not postgres.splitter: the schema package does not import the postgres one)
        return list(pglast.split(text, with_parser=False))
    except Exception:  # noqa: BLE001 - (what does not scan, the run refuses with its own line)
        return []


def _collect(node, names: set[str], column: bool = False) -> None:
    from pglast import ast

    if node is None:
        return
    if isinstance(node, str):
        names.add(node.lower())
    elif isinstance(node, ast.RangeVar):
        names.add(node.relname.lower())
    elif isinstance(node, ast.IntoClause):
        _collect(node.rel, names)
    elif isinstance(node, ast.String):
        names.add(node.sval.lower())
    elif isinstance(node, ast.ObjectWithArgs):
        _collect(node.objname, names)
    elif isinstance(node, ast.TypeName):
        _collect(node.names, names)
    elif isinstance(node, (tuple, list)):
        if node and all(isinstance(part, ast.String) for part in node):  # a qualified name: its last part
            parts = [part.sval.lower() for part in node]
            names.add(parts[-2] if column and len(parts) > 1 else parts[-1])
        else:
            for part in node:
                _collect(part, names, column)


def bare(name: str) -> str:
    """An object's name as the files say it: `public.f(integer)` -> `f`, `"Plan"` -> `plan`."""
    return name.split("(", 1)[0].rsplit(".", 1)[-1].strip('"').lower()
