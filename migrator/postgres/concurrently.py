"""CREATE INDEX CONCURRENTLY done right: never timed out as if it blocked the application, never left INVALID
behind a migration recorded as applied, and an earlier try's leftover finished without a human.

- A CONCURRENTLY build (CREATE INDEX / REINDEX) runs with lock_timeout off: it waits for older snapshots
  (a pg_dump, a REPEATABLE READ report), which blocks no application query; statement_timeout still bounds it.
- Before a file's build, when an earlier try of this same migration stopped part-way (its failure record): an
  INVALID index of the build's name on its table is that try's leftover, dropped (CONCURRENTLY) so the build
  runs again; a VALID one with the same definition is that try's work, which the server finished after the
  runner died: the statement is counted as done. The INVALID copies an interrupted `REINDEX INDEX CONCURRENTLY`
  leaves beside its index (name_ccnew...) are dropped before it runs again.
- After the file ran, every index its builds name must be valid, else the migration fails and is not
  recorded (`CREATE INDEX CONCURRENTLY IF NOT EXISTS` skips over an INVALID index without a word).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

from migrator import output

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
BUILD = re.compile(
    rf"\s*create\s+(?P<unique>unique\s+)?index\s+concurrently\s+(?:if\s+not\s+exists\s+)?(?P<name>{_IDENT})\s+"
    rf"on\s+(?:only\s+)?(?P<table>{_IDENT}(?:\s*\.\s*{_IDENT})?)(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)
REINDEX = re.compile(rf"\s*reindex\s+(?:\([^)]*\)\s*)?index\s+concurrently\s+(?P<name>{_IDENT}(?:\s*\.\s*{_IDENT})?)\s*;?\s*$",
                     re.IGNORECASE)
ANY_CONCURRENT = re.compile(r"\s*(?:create\b[^;]*\bindex|reindex\b)[^;]*\bconcurrently\b", re.IGNORECASE)


@dataclass
class Build:
    index: int  # the statement's place in the file
    name: str  # the index's name, as the catalog spells it
    table: str  # as written (resolved by the session's search_path)
    unique: bool
    rest: str  # what follows the table: USING ..., columns, INCLUDE, WHERE ...


def is_concurrent(text: str) -> bool:
    return bool(ANY_CONCURRENT.match(text))


def builds(statements) -> list[Build]:
    """The named CREATE INDEX CONCURRENTLY statements of a file."""
    found = []
    for index, statement in enumerate(statements):
        match = BUILD.match(statement.text)
        if match:
            found.append(Build(index, _catalog_name(match["name"]), match["table"], bool(match["unique"]),
                               match["rest"].strip().rstrip(";")))
    return found


def _catalog_name(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident.lower()


# The index of that name on that table: (valid, definition from USING on, qualified name).
FIND = """
SELECT i.indisvalid, i.indisunique, substring(pg_catalog.pg_get_indexdef(i.indexrelid) from ' USING .*$'),
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE i.indrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%(table)s)::pg_catalog.oid AND c.relname = %(name)s
"""


def _find(cursor, build: Build):
    cursor.execute(FIND, {"table": build.table, "name": build.name})
    return cursor.fetchone()


@contextmanager
def without_lock_timeout(cursor):
    """lock_timeout off for one statement (the session's own value back afterwards, whatever happened)."""
    cursor.execute("SELECT pg_catalog.current_setting('lock_timeout')")
    saved = cursor.fetchone()[0]
    if saved in ("0", "0ms"):
        yield
        return
    cursor.execute("SELECT pg_catalog.set_config('lock_timeout', '0', false)")
    try:
        yield
    finally:
        cursor.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)", (saved,))


# The INVALID copies an interrupted REINDEX INDEX CONCURRENTLY leaves beside the index (name_ccnew, name_ccnew1...).
REINDEX_LEFTOVERS = """
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_index o ON o.indexrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%(name)s)::pg_catalog.oid AND o.indrelid = i.indrelid
JOIN pg_catalog.pg_class oc ON oc.oid = o.indexrelid
WHERE NOT i.indisvalid AND pg_catalog.left(c.relname, pg_catalog.length(oc.relname)) = oc.relname
  AND pg_catalog.substr(c.relname, pg_catalog.length(oc.relname) + 1) ~ '^_cc(new|old)[0-9]*$'
"""


def prepare(connection, statements, path, earlier_failure: str | None) -> set[int]:
    """Before a non-transactional file runs again after an earlier try stopped part-way: drop its builds'
    INVALID leftovers (a REINDEX's _ccnew copies too); return the statements whose VALID index (same
    definition) is already there."""
    done: set[int] = set()
    if earlier_failure is None:
        return done
    with connection.cursor() as cursor:
        for index, statement in enumerate(statements):
            match = REINDEX.match(statement.text)
            if not match:
                continue
            cursor.execute(REINDEX_LEFTOVERS, {"name": match["name"]})
            for (leftover,) in cursor.fetchall():
                with without_lock_timeout(cursor):
                    cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {leftover}")
                output.note(f"note: {path}:{statement.line}: dropped INVALID index {leftover}, left by an earlier "
                            "try of this migration's REINDEX")
        for build in builds(statements):
            found = _find(cursor, build)
            if found is None:
                continue
            valid, unique, definition, qualified = found
            line = statements[build.index].line
            if not valid:
                with without_lock_timeout(cursor):
                    cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}")
                output.note(f"note: {path}:{line}: dropped INVALID index {qualified}, left by an earlier try of this "
                            "migration; building it again")
            elif unique == build.unique and definition == _definition(cursor, build):
                done.add(build.index)
                output.note(f"note: {path}:{line}: index {qualified} is already built and valid (an earlier try's "
                            "build, finished by the server after that runner stopped): counted as done")
    return done


def _definition(cursor, build: Build) -> str | None:
    """What the statement would build, from USING on: built on an empty copy of the table's columns, rolled back."""
    cursor.execute("BEGIN")
    try:
        cursor.execute(f"CREATE TEMP TABLE _hcm_index_probe (LIKE {build.table})")
        cursor.execute(f"CREATE INDEX _hcm_index_probe_idx ON _hcm_index_probe {build.rest}")
        cursor.execute("SELECT substring(pg_catalog.pg_get_indexdef('_hcm_index_probe_idx'::regclass) "
                       "from ' USING .*$')")
        return cursor.fetchone()[0]
    except Exception as exc:
        if not hasattr(exc, "pgcode"):
            raise
        return None  # not comparable: the statement runs and says what it says
    finally:
        cursor.execute("ROLLBACK")


def invalid_after(connection, statements) -> list[tuple[int, str]]:
    """(statement index, qualified name) of the file's builds whose index is INVALID now."""
    with connection.cursor() as cursor:
        found = [(build.index, _find(cursor, build)) for build in builds(statements)]
    return [(index, row[3]) for index, row in found if row is not None and not row[0]]


def built(connection, statements) -> list[str]:
    """The unqualified names of the valid indexes the file's builds name (the runner's own work, for drift)."""
    with connection.cursor() as cursor:
        return [build.name for build in builds(statements) if (row := _find(cursor, build)) and row[0]]
