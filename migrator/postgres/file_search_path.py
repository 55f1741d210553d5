"""The search_path a file's own `SET search_path` gives a later statement of it: an unqualified table of a CONCURRENTLY
build or REINDEX resolved where the server resolved it when the statement ran, before the file runs again (a rerun's
leftover check, status's attribution: attack24v 3). Read from the parse tree; the session's path is set to the file's
for one lookup (the SET reprinted by pglast, never the file's text), then set back.
"""

from __future__ import annotations

from contextlib import contextmanager


def path_sets(statements) -> dict[int, str | None]:
    """{statement index: the SET search_path (reprinted) in force when it starts, None: the session's own}: a
    session-level SET, RESET or SET ... TO DEFAULT of the path moves it (SET LOCAL outside a block does not)."""
    from pglast import ast, enums, parse_sql
    from pglast.parser import ParseError
    from pglast.stream import RawStream

    kinds, found, current = enums.VariableSetKind, {}, None
    for index, statement in enumerate(statements):
        found[index] = current
        if "search_path" not in statement.text.lower() and "reset" not in statement.text.lower():
            continue
        try:
            trees = [raw.stmt for raw in parse_sql(statement.text)]
        except ParseError:
            continue
        for tree in trees:
            if not isinstance(tree, ast.VariableSetStmt) or tree.is_local:
                continue
            if tree.kind == kinds.VAR_RESET_ALL or (tree.name or "").lower() == "search_path" and tree.kind in (
                    kinds.VAR_RESET, kinds.VAR_SET_DEFAULT):
                current = None
            elif (tree.name or "").lower() == "search_path" and tree.kind == kinds.VAR_SET_VALUE:
                current = RawStream()(tree)
    return found


@contextmanager
def under(cursor, set_statement: str | None):
    """The session's search_path is the file's (`set_statement`, from path_sets) for the block, its own back after."""
    if set_statement is None:
        yield
        return
    cursor.execute("SELECT pg_catalog.current_setting('search_path')")
    saved = cursor.fetchone()[0]
    cursor.execute(set_statement)
    try:
        yield
    finally:
        cursor.execute("SELECT pg_catalog.set_config('search_path', %s, false)", (saved,))


# The relation a name resolves to on the session's path: its schema and name.
_RELATION = """SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%s)"""


def relation(cursor, set_statement: str | None, name: str) -> tuple[str, str] | None:
    """(schema, name) of the relation `name` (quoted) resolves to under the file's path, None: nothing of that name."""
    with under(cursor, set_statement):
        cursor.execute(_RELATION, (name,))
        return cursor.fetchone()


def resolved(cursor, set_statement: str | None, name: str) -> str:
    """`name` (quoted, unqualified) qualified as the server resolves it under the file's path; as written when the
    file sets none or nothing of that name exists yet (made earlier in the file: the session resolves it then)."""
    from migrator.postgres.index_definition import quoted

    found = relation(cursor, set_statement, name) if set_statement is not None else None
    return quoted(*found) if found else name
