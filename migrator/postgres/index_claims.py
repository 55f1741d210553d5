"""Which indexes pending migrations' interrupted CONCURRENTLY builds made (their record says the try stopped part-way),
read without writing (status's read-only session, and the drift check before a run): a VALID one is that
migration's work, never drift made outside migrations (attack24r 8); an INVALID one is what its rerun drops and
builds again, or refuses to drop. An index is a build's by its name (or, for an unnamed build, the name the server
gives it, numbered or not: attack24s 6, attack24t 5) and its definition compared as migrate compares it
(index_definition.same, without the temporary copy), so status says what migrate then does (attack24t 8)."""

from __future__ import annotations

from typing import Iterator

from migrator.errors import MigratorError
from migrator.postgres.concurrently import Build, builds, on_table, quoted
from migrator.postgres.index_definition import named_like, same, server_name

DROPS, REFUSES, COMPARES = True, False, None  # what migrate does with a build's INVALID index (same's answers)


def _interrupted(states) -> Iterator[tuple[object, list]]:
    """(state, its statements) of the pending migrations an earlier try stopped part-way."""
    from migrator.postgres import files

    for state in states:
        if state.applied_at or not state.failure or state.path is None:
            continue
        try:
            yield state, files.statements(state.path, in_transaction=False)
        except MigratorError:  # a file that does not read: migrate says so itself
            continue


def _pending(cursor, states, schema: str) -> Iterator[tuple[object, Build]]:
    """(state, build) of each CONCURRENTLY build of the pending migrations an earlier try stopped part-way. An
    unqualified table is where the file's own SET search_path put it then, else the `schema`'s (the run's own
    session has pg_catalog alone on its path)."""
    for state, statements in _interrupted(states):
        for build in builds(statements, cursor):
            if build.table == quoted(build.relname):
                build.table = quoted(schema, build.relname)
            yield state, build


def _rows(cursor, build: Build) -> list:
    """The indexes on the build's table that may be its own (rows of concurrently.FIND): of its name, or of the
    server's name for it (reads only: no temporary copy)."""
    if build.name is not None:
        return [row for row in on_table(cursor, build) if row[5] == build.name]
    base = server_name(cursor, build, copy=False)
    return [row for row in on_table(cursor, build) if named_like(base, row[5])] if base else []


def explained(connection, states, schema: str, failures_table: str) -> set[str]:
    """The names of the indexes pending migrations' interrupted tries built: that migration's work, never drift. A
    VALID one its rerun counts as done (concurrently._named, _unnamed); an INVALID one of the same definition (a
    SIGKILLed build the server aborted: attack24x 1) its rerun drops and builds again (rebuilt_by's DROPS)."""
    names = set()
    with connection.cursor() as cursor:
        for state, build in _pending(cursor, states, schema):
            record = (failures_table, state.id)
            names.update(row[5] for row in _rows(cursor, build) if same(cursor, build, row, record, False) is DROPS)
    return names


def rebuilt_by(connection, states, invalid, schema: str, failures_table: str) -> dict[str, tuple[str, bool, object]]:
    """{index: (migration id, whether its build failed rather than was stopped, DROPS / REFUSES / COMPARES /
    FINISHES)} of the INVALID indexes under the name of a pending migration's interrupted build (or DROP INDEX
    CONCURRENTLY): what its rerun does with each (an unnamed build's only when it drops it: another index under the
    server's name is left be, and so reported)."""
    names, found = {index for _, index, _ in invalid}, {}
    if not names:
        return found
    with connection.cursor() as cursor:
        for state, build in _pending(cursor, states, schema):
            failed = " failed;" in state.failure  # (errors.StatementFailed.committed: "statement k failed; ...")
            for row in _rows(cursor, build):
                if row[0] or row[5] not in names or row[5] in found:
                    continue
                verdict = same(cursor, build, row, (failures_table, state.id), False)
                if build.name is not None or verdict is DROPS:  # (an unnamed build leaves another be: not its own)
                    found[row[5]] = (state.id, failed, verdict)
        for (schema_name, index), state in _drops(cursor, states, schema).items():
            if (schema_name, index) in {(s, i) for s, i, _ in invalid} and index not in found:
                found[index] = (state.id, " failed;" in state.failure, FINISHES)
    return found


FINISHES = "drop"  # a pending DROP INDEX CONCURRENTLY stopped part-way: its rerun finishes the drop (attack24v 4)


def _drops(cursor, states, schema: str) -> dict[tuple[str, str], object]:
    """{(schema, index): state} of the indexes pending migrations' interrupted DROP INDEX CONCURRENTLY name, resolved
    as the server resolved them then (the file's SET search_path, else the `schema`'s)."""
    from pglast import ast, parse_sql
    from pglast.parser import ParseError

    from migrator.postgres import file_search_path
    from migrator.postgres.concurrently import is_drop

    found = {}
    for state, statements in _interrupted(states):
        paths = None
        for index, statement in enumerate(statements):
            if not is_drop(statement.text):
                continue
            paths = paths if paths is not None else file_search_path.path_sets(statements)
            try:
                trees = [raw.stmt for raw in parse_sql(statement.text)]
            except ParseError:
                continue
            for tree in trees:
                for names in tree.objects if isinstance(tree, ast.DropStmt) else ():
                    parts = [name.sval for name in names]
                    name = quoted(*parts) if len(parts) > 1 or paths[index] else quoted(schema, *parts)
                    if (where := file_search_path.relation(cursor, paths[index] if len(parts) == 1 else None, name)):
                        found.setdefault(tuple(where), state)
    return found
