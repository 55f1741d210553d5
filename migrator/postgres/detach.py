"""ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY (PostgreSQL 14+) done as CREATE INDEX CONCURRENTLY is.

It runs in two transactions of its own: the first marks the partition "detach pending" and commits, the second
waits for every older transaction that uses the parent (a report, pg_dump: blocking no application query), then
detaches. So it runs with lock_timeout off, as a CONCURRENTLY build does (statement_timeout still bounds it), and
stopped in its wait it leaves the partition pending: still attached for the parent's readers, and the same
statement fails forever after ("already pending detach"). A later try of the same migration (its failure record
says an earlier try stopped part-way) completes that pending detach with `... DETACH PARTITION ... FINALIZE`
instead of running the statement again; a pending detach no earlier try of this migration explains is left to
the server's own error.
"""

from __future__ import annotations

import re
from dataclasses import replace

from migrator import lazy_re, output

_MAYBE = lazy_re.compile(r"\bdetach\b[^;]*\b(?:concurrently|finalize)\b", re.IGNORECASE | re.DOTALL)
_DETACH, _FINALIZE = 60, 61  # pglast's AlterTableType: AT_DetachPartition, AT_DetachPartitionFinalize

# The partition `child` of `parent` is pending detach (both resolved as the statement resolves them).
_PENDING = """SELECT EXISTS (SELECT FROM pg_catalog.pg_inherits
WHERE inhrelid = pg_catalog.to_regclass(%s) AND inhparent = pg_catalog.to_regclass(%s) AND inhdetachpending)"""


def _quoted(schema: str | None, name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name) if part)


def parse(text: str) -> tuple[str, str] | None:
    """(parent, partition), quoted, of a DETACH PARTITION ... CONCURRENTLY or ... FINALIZE statement; else None."""
    if not _MAYBE.search(text):
        return None
    from pglast import ast, parse_sql
    from pglast.parser import ParseError

    try:
        trees = [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return None
    for tree in trees:
        if not isinstance(tree, ast.AlterTableStmt) or tree.relation is None:
            continue
        for cmd in tree.cmds or ():
            part = getattr(cmd, "def_", None)
            if isinstance(part, ast.PartitionCmd) and (cmd.subtype == _FINALIZE
                                                       or cmd.subtype == _DETACH and part.concurrent):
                return (_quoted(tree.relation.schemaname, tree.relation.relname),
                        _quoted(part.name.schemaname, part.name.relname))
    return None


def is_detach(text: str) -> bool:
    """A DETACH PARTITION ... CONCURRENTLY (or its FINALIZE): it waits for older transactions, blocking no one."""
    return parse(text) is not None


def pending(cursor, text: str) -> str | None:
    """The partition a detach statement names, when it is pending detach from its parent now; else None."""
    found = parse(text)
    if found is None:
        return None
    cursor.execute(_PENDING, (found[1], found[0]))
    return found[1] if cursor.fetchone()[0] else None


def finalizing(connection, statements, path, earlier_failure: str | None) -> list:
    """The file's statements, each DETACH ... CONCURRENTLY whose partition an earlier try of this migration left
    pending replaced by its FINALIZE (one note each); unchanged when no earlier try stopped part-way."""
    if earlier_failure is None or not any(_MAYBE.search(s.text) for s in statements):
        return statements
    from migrator.postgres import file_search_path

    paths = file_search_path.path_sets(statements)  # (unqualified names: where the file's own SET put them)
    with connection.cursor() as cursor:
        for index, statement in enumerate(statements):
            if parse(statement.text) is None:
                continue
            with file_search_path.under(cursor, paths[index]):
                left = pending(cursor, statement.text)
            if left is not None:
                statements = finalize(statements, index, path)
    return statements


def finalize(statements, index: int, path) -> list:
    """The statements, the detach at `index` (its partition pending, left by an earlier try of this migration)
    replaced by its FINALIZE, with a note."""
    parent, partition = parse(statements[index].text)
    text = f"ALTER TABLE {parent} DETACH PARTITION {partition} FINALIZE"
    changed = list(statements)
    changed[index] = replace(statements[index], text=text)
    output.note(f"note: {path}:{statements[index].line}: partition {partition} is pending detach, left by an earlier "
                f"try of this migration: completing it ({text})")
    return changed


def left_pending(connection, text: str, cause=None) -> str | None:
    """After a detach statement failed: the partition it left pending (its first transaction committed); not
    one that was pending before it ran (the server's "already pending detach": see pending_before)."""
    if parse(text) is None or connection.closed or _already(cause):
        return None
    with connection.cursor() as cursor:
        return pending(cursor, text)


def pending_before(text: str, cause) -> str | None:
    """After a detach statement failed on "already pending detach": what to do, in words (that pending detach
    is someone else's, or an earlier try's no failure record of this migration explains)."""
    found = parse(text)
    if found is None or not _already(cause):
        return None
    return (f"partition {found[1]} was pending detach before this statement ran, not left by this migration (a "
            "DBA's interrupted detach, or a try no failure record of this migration explains): once you know whose "
            f"it is, complete it (ALTER TABLE {found[0]} DETACH PARTITION {found[1]} FINALIZE) and run migrate again")


def _already(cause) -> bool:
    return getattr(cause, "pgcode", None) == "55000" and "already pending detach" in str(cause)
