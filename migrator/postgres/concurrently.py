"""CREATE / DROP INDEX CONCURRENTLY done right: never timed out as if it blocked the application, never left INVALID
behind a migration recorded as applied, and an earlier try's leftover finished without a human.

- A CONCURRENTLY build or drop (CREATE INDEX / REINDEX / DROP INDEX) runs with lock_timeout off: it waits for older snapshots
  (a pg_dump, a REPEATABLE READ report), which blocks no application query; statement_timeout still bounds it.
- Right before a file's build, when an earlier try of this same migration stopped part-way, that try's INVALID
  leftover is dropped and a VALID one of the build's definition counted as done (index_leftovers.py).
- After the file ran, every index its builds name must be valid, else the migration fails and is not
  recorded (`CREATE INDEX CONCURRENTLY IF NOT EXISTS` skips over an INVALID index without a word).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

from migrator import interrupt, lazy_re, output
from migrator.errors import USAGE, MigratorError
from migrator.pinned import catalog_path
from migrator.postgres import failures, file_search_path
from migrator.postgres.index_definition import PROBE_INDEX, made_since, named_like, quoted, same, server_name

_MAYBE = lazy_re.compile(r"\bconcurrently\b", re.IGNORECASE)  # cheap: only these statements are parsed


@dataclass
class Build:
    index: int  # the statement's place in the file
    name: str | None  # the index's name, as the catalog spells it (None: unnamed, the server picks it)
    table: str  # quoted, qualified as written (resolved by the session's search_path)
    unique: bool
    probe: str  # the same build on an empty temporary copy of the table, named as it (index_definition.py)
    relname: str  # the table's own name (the copy's)
    if_not_exists: bool = False


@dataclass
class Reindex:
    index: int
    kind: str  # index, table or schema
    target: str  # quoted: the index, the table or the schema


def is_concurrent(text: str) -> bool:
    """A CREATE / REINDEX / DROP INDEX ... CONCURRENTLY: it waits for older transactions, blocking no one."""
    return bool(_parsed(text))  # the parse tree, never the word: a comment or a literal may say it


def runs_code(text: str) -> bool:
    """A CREATE INDEX CONCURRENTLY on an expression, with a predicate or an explicit operator class: it runs
    functions per row (one labelled IMMUTABLE may still lock what the application waits on). Any REINDEX
    CONCURRENTLY: what it rebuilds (expressions, predicates) only the catalog knows (attack24r 2)."""
    from pglast import ast

    return any(isinstance(tree, ast.ReindexStmt) or isinstance(tree, ast.IndexStmt) and (
        tree.whereClause is not None or any(param.expr is not None or param.opclass for param in tree.indexParams or ()))
        for tree in _parsed(text))


def is_drop(text: str) -> bool:
    """A DROP INDEX CONCURRENTLY (interrupted, it leaves the index INVALID; run again, it finishes the drop)."""
    from pglast import ast

    return any(isinstance(tree, ast.DropStmt) for tree in _parsed(text))


def _parsed(text: str) -> list:
    """The CREATE INDEX / REINDEX trees of a statement that says CONCURRENTLY, read with PostgreSQL's parser
    (pglast): a comment between its keywords or an unnamed build is read as the server reads it."""
    if not _MAYBE.search(text):
        return []
    from pglast import ast, parse_sql
    from pglast.parser import ParseError

    try:
        trees = [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return []
    return [tree for tree in trees if isinstance(tree, (ast.IndexStmt, ast.DropStmt)) and tree.concurrent
            or isinstance(tree, ast.ReindexStmt) and any(p.defname == "concurrently" for p in tree.params or ())]


def builds(statements, cursor=None, tables: dict | None = None) -> list[Build]:
    """The CREATE INDEX CONCURRENTLY statements of a file (named or not). With `cursor`, an unqualified table is
    qualified as the file's own SET search_path before it resolves it (file_search_path.py). `tables`: {statement
    index: its table as the migration's session resolved it right before it ran} (index_leftovers.py), which wins."""
    from pglast import ast
    from pglast.stream import RawStream

    found, paths = [], _paths(statements, cursor)
    for index, statement in enumerate(statements):
        for tree in _parsed(statement.text):
            if not isinstance(tree, ast.IndexStmt):
                continue
            name, table = tree.idxname, quoted(tree.relation.schemaname, tree.relation.relname)
            if paths.get(index) and not tree.relation.schemaname:
                table = file_search_path.resolved(cursor, paths[index], table)
            table = (tables or {}).get(index, table)
            relname, if_not_exists = tree.relation.relname, bool(tree.if_not_exists)
            # unnamed on the copy too: the server then picks the name it picks on the table (no other index there)
            tree.idxname = PROBE_INDEX if name is not None else None
            tree.concurrent, tree.if_not_exists, tree.tableSpace = False, False, None
            tree.relation = ast.RangeVar(schemaname="pg_temp", relname=relname, inh=True, relpersistence="p")
            found.append(Build(index, name, table, bool(tree.unique), RawStream()(tree), relname, if_not_exists))
    return found


def reindexes(statements, cursor=None, tables: dict | None = None) -> list[Reindex]:
    """The REINDEX ... CONCURRENTLY statements of a file (`cursor`, `tables`: as builds())."""
    from pglast import enums

    kinds = {enums.ReindexObjectType.REINDEX_OBJECT_INDEX: "index", enums.ReindexObjectType.REINDEX_OBJECT_TABLE: "table",
             enums.ReindexObjectType.REINDEX_OBJECT_SCHEMA: "schema"}
    found, paths = [], _paths(statements, cursor)
    for index, statement in enumerate(statements):
        for tree in _parsed(statement.text):
            kind = kinds.get(getattr(tree, "kind", None))
            if kind == "schema":
                found.append(Reindex(index, kind, quoted(tree.name)))
            elif kind is not None:
                target = quoted(tree.relation.schemaname, tree.relation.relname)
                if paths.get(index) and not tree.relation.schemaname:
                    target = file_search_path.resolved(cursor, paths[index], target)
                found.append(Reindex(index, kind, (tables or {}).get(index, target)))
    return found


def _paths(statements, cursor) -> dict:
    """The file's SET search_path in force at each statement, when a cursor can resolve names under it (and a
    CONCURRENTLY statement is there: the cheap test first)."""
    if cursor is None or not any(_MAYBE.search(statement.text) for statement in statements):
        return {}
    return file_search_path.path_sets(statements)


# The index of that name on that table: (valid, unique, definition from USING on, qualified name, oid, name).
FIND = """
SELECT i.indisvalid, i.indisunique, substring(pg_catalog.pg_get_indexdef(i.indexrelid) from ' USING .*$'),
       pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||)
       pg_catalog.quote_ident(c.relname), i.indexrelid::pg_catalog.int8, c.relname
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE i.indrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%(table)s)::pg_catalog.oid
  AND (c.relname OPERATOR(pg_catalog.=) %(name)s::pg_catalog.name OR %(name)s IS NULL)
"""


def _catalog(cursor, query: str, params: dict, resolve: dict[str, str]) -> list:
    """A catalog read on the migration session, whose search_path is the file's (others may create in it: a
    planted ~(name, name) or =(name, name) beats pg_catalog's for an unknown literal). The names in `resolve`
    (param -> to_regclass / to_regnamespace) are resolved on the file's path first; the read itself runs with
    pg_catalog alone, the session's own path set back afterwards."""
    for param, function in resolve.items():
        cursor.execute(f"SELECT pg_catalog.{function}(%s)::pg_catalog.oid", (params[param],))
        params = {**params, param: cursor.fetchone()[0]}
    with catalog_path(cursor):
        cursor.execute(query, params)
        return cursor.fetchall()


def _find(cursor, build: Build):
    """The index a named build names (a row of FIND), or None."""
    if build.name is None:
        return None
    cursor.execute(FIND, {"table": build.table, "name": build.name})
    return cursor.fetchone() if build.name is not None else None


def on_table(cursor, build: Build) -> list:
    """Every index on the build's table (rows of FIND)."""
    cursor.execute(FIND, {"table": build.table, "name": None})
    return cursor.fetchall()


def indexes_before(connection, statements) -> set[int]:
    """The indexes already on the tables the file's builds touch, and its REINDEXes' INVALID copies, before it runs
    (those after it that are not here are its own work)."""
    with connection.cursor() as cursor:
        return {row[4] for build in builds(statements, cursor) for row in on_table(cursor, build)} | {
            _oid(cursor, name) for reindex in reindexes(statements, cursor)
            for name in reindex_leftovers(cursor, reindex)}


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
    finally:  # (not on a session a silent path cut off: its error would hide that line, failures.NoAnswer's)
        if not failures.was_cut_off(cursor.connection):
            cursor.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)", (saved,))


# The INVALID copies an interrupted REINDEX ... CONCURRENTLY leaves (name_ccnew, name_ccold1...: the TOAST
# table's index too) on the tables it reindexes: a partitioned table's (or index's) are on its partitions. A REINDEX
# INDEX's are named after that index (or its partitions'; a long name truncated): another index's copy beside it is
# not its work (a DBA's old leftover: attack24r 11).
REINDEX_LEFTOVERS = """
WITH rel AS (
  SELECT c.oid, c.reltoastrelid FROM pg_catalog.pg_class c
  WHERE CASE %(kind)s
    WHEN 'index' THEN c.oid IN (SELECT x.indrelid FROM pg_catalog.pg_index x WHERE x.indexrelid = %(target)s
                                UNION ALL SELECT t.relid FROM pg_catalog.pg_index x,
                                pg_catalog.pg_partition_tree(x.indrelid) t WHERE x.indexrelid = %(target)s)
    WHEN 'table' THEN c.oid = %(target)s
      OR c.oid IN (SELECT relid FROM pg_catalog.pg_partition_tree(%(target)s::pg_catalog.regclass))
    ELSE c.relnamespace = %(target)s AND c.relkind IN ('r', 'm', 'p') END)
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$'
  AND i.indrelid IN (SELECT oid FROM rel UNION SELECT reltoastrelid FROM rel)
  AND (%(kind)s <> 'index' OR EXISTS (
    SELECT FROM pg_catalog.pg_class x, pg_catalog.regexp_replace(c.relname, '_cc(new|old)[0-9]*$', '') AS stem(name)
    WHERE (x.oid = %(target)s
           OR x.oid IN (SELECT relid FROM pg_catalog.pg_partition_tree(%(target)s::pg_catalog.regclass)))
      AND (stem.name = x.relname
           OR pg_catalog.octet_length(c.relname) >= 60 AND pg_catalog.starts_with(x.relname, stem.name))))
ORDER BY 1
"""


def reindex_leftovers(cursor, reindex: Reindex) -> list[str]:
    function = "to_regnamespace" if reindex.kind == "schema" else "to_regclass"
    rows = _catalog(cursor, REINDEX_LEFTOVERS, {"kind": reindex.kind, "target": reindex.target}, {"target": function})
    return [row[0] for row in rows]


def _oid(cursor, qualified: str) -> int | None:
    cursor.execute("SELECT pg_catalog.to_regclass(%s)::pg_catalog.oid", (qualified,))
    return cursor.fetchone()[0]


def invalid_after(connection, statements, before: set[int], tables=None) -> list[tuple[int, str]]:
    """(statement index, qualified name) of the INVALID indexes the file leaves: a named build's, any other
    on a table its builds touch that was not there before it ran (an unnamed build's), a REINDEX's copies.
    (`tables`: as builds(), here and below.)"""
    found = []
    with connection.cursor() as cursor:
        for build in builds(statements, cursor, tables):
            named = _find(cursor, build)
            rows = [named] if named is not None else []
            rows += [row for row in on_table(cursor, build) if row[4] not in before]
            found += [(build.index, row[3]) for row in rows if not row[0]]
        for reindex in reindexes(statements, cursor, tables):
            found += [(reindex.index, leftover) for leftover in reindex_leftovers(cursor, reindex)]
    return list(dict.fromkeys(found))


def ours(connection, statements, index: int, tables=None) -> bool | None:
    """Whether the INVALID index a named build (statement `index`) left is what it builds, which a rerun drops and
    builds again; False: another definition, someone else's, which a rerun refuses to drop (index_leftovers._named);
    None: this role cannot tell (no TEMPORARY privilege), the rerun may refuse too. True for any other statement."""
    with connection.cursor() as cursor:
        for build in builds(statements, cursor, tables):
            if build.index == index and build.name is not None and (found := _find(cursor, build)) is not None:
                return found[0] or same(cursor, build, found)
    return True


def built(connection, statements, before: set[int], tables=None) -> list[str]:
    """The unqualified names of the valid indexes the file's builds made (the runner's own work, for drift)."""
    with connection.cursor() as cursor:
        names = []
        for build in builds(statements, cursor, tables):
            rows = on_table(cursor, build)
            names += [row[5] for row in rows if row[0] and (row[4] not in before or row[5] == build.name)]
    return list(dict.fromkeys(names))


# What holds a name in the schema of the table (oid given): its kind, its index definition, its qualified name.
NAME_TAKEN = """
SELECT c.relkind::text, pg_catalog.pg_get_indexdef(c.oid),
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s AND c.relnamespace = (SELECT t.relnamespace FROM pg_catalog.pg_class t WHERE t.oid = %(table)s)
"""
KINDS = {"r": "a table", "p": "a partitioned table", "v": "a view", "m": "a materialized view", "S": "a sequence",
         "f": "a foreign table", "c": "a composite type"}


def skipped(connection, statements, tables=None) -> list[tuple[int, str]]:
    """(statement index, what is there instead) of the `IF NOT EXISTS name` builds the server skipped because
    the name was taken by something else: an index of another definition on the table, or anything of that name
    in the table's schema (index names are per schema). The server says it only in a NOTICE."""
    found = []
    with connection.cursor() as cursor:
        for build in builds(statements, cursor, tables):
            if not build.if_not_exists or build.name is None:
                continue
            row = _find(cursor, build)
            if row is not None:
                if same(cursor, build, row) is False:
                    found.append((build.index, f"index {row[3]} already exists on {build.table} with another "
                                               f"definition ({'UNIQUE, ' if row[1] else ''}{row[2].strip()})"))
                continue
            for kind, definition, qualified in _catalog(cursor, NAME_TAKEN, {"name": build.name, "table": build.table},
                                                        {"table": "to_regclass"}):
                what = f"index {qualified}: {definition}" if kind in ("i", "I") else f"{KINDS.get(kind, kind)} {qualified}"
                found.append((build.index, f"the name is taken in that schema by {what} (index names are per schema), "
                                           f"so no index was built on {build.table}"))
    return found
