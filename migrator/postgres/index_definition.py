"""Whether an index on a table is what a CREATE INDEX statement builds (concurrently.py: an earlier try's leftover
or finished work). Read first with no temporary table (a role without the TEMPORARY privilege: attack24r 7): the
catalog's definition (pg_get_indexdef) and the statement, both parsed and printed alike. Only what that cannot
settle (an expression, a predicate, storage options: the catalog prints them analysed) is built on an empty
temporary copy of the table; without TEMP, the failure record tells the interrupted try's index apart.
"""

from __future__ import annotations

import re

PROBE_INDEX = "_hcm_index_probe_idx"


def quoted(*names) -> str:
    return ".".join('"' + name.replace('"', '""') + '"' for name in names if name)


def canonical(text: str) -> str | None:
    """A CREATE INDEX statement printed without what does not make the index (its name, table, CONCURRENTLY, IF NOT
    EXISTS, tablespace): two that print the same build the same index on the same table."""
    from pglast import ast, parse_sql
    from pglast.parser import ParseError
    from pglast.stream import RawStream

    try:
        (raw,) = parse_sql(text)
    except (ParseError, ValueError):
        return None
    tree = raw.stmt
    if not isinstance(tree, ast.IndexStmt):
        return None
    tree.idxname, tree.tableSpace, tree.concurrent, tree.if_not_exists = None, None, False, False
    tree.relation = ast.RangeVar(relname="t", inh=True, relpersistence="p")
    return RawStream()(tree)


def same(cursor, build, row, record=None, copy: bool = True) -> bool | None:
    """Whether the index (a row of concurrently.FIND: valid, unique, definition, name, oid, relname) is what `build`
    builds. None: this role cannot tell (no TEMP, or not `copy`: status's read-only session; and no failure record
    naming it the interrupted try's). status asks as migrate does, so that both say the same (attack24t 8)."""
    from migrator.postgres import conforming

    if row[1] != build.unique:
        return False
    if conforming.unread(cursor.connection, build.probe):  # (the server reads it otherwise: refused as it runs)
        return None
    if shape_differs(cursor, build, row[4]):
        return False
    if parsed_same(cursor, build, row):
        return True
    probe = _probe(cursor, build) if copy else None
    if probe is not None:
        return row[2] == probe[1]
    return True if made_since(cursor, row[4], record) else None


# The index's access method, key and all column counts, whether it has a predicate, and its columns' names in
# order (NULL for an expression).
SHAPE = """
SELECT a.amname::pg_catalog.text, i.indnkeyatts, i.indnatts, i.indpred IS NOT NULL,
       ARRAY(SELECT t.attname::pg_catalog.text
             FROM pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY k(attnum, n)
             LEFT JOIN pg_catalog.pg_attribute t ON t.attrelid OPERATOR(pg_catalog.=) i.indrelid
                  AND t.attnum OPERATOR(pg_catalog.=) k.attnum ORDER BY k.n)
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indexrelid
JOIN pg_catalog.pg_am a ON a.oid OPERATOR(pg_catalog.=) c.relam
WHERE i.indexrelid OPERATOR(pg_catalog.=) %s::pg_catalog.oid
"""


def shape_differs(cursor, build, oid: int) -> bool:
    """Whether the index is surely not what `build` builds, read without building anything: another access method,
    other column counts, a predicate on one only, or a plain column of the statement where the index has another
    column or an expression (an expression of the statement may be a plain column to the server: `((c))`)."""
    from pglast import ast, parse_sql

    tree = parse_sql(build.probe)[0].stmt
    if not isinstance(tree, ast.IndexStmt):
        return False
    cursor.execute(SHAPE, (oid,))
    found = cursor.fetchone()
    if found is None:
        return False
    method, keys, total, predicate, columns = found
    params = [*(tree.indexParams or ())]
    including = [param.name for param in tree.indexIncludingParams or ()]
    names = [param.name if param.expr is None else None for param in params] + including
    return (method != (tree.accessMethod or "btree") or keys != len(params) or total != len(names)
            or predicate != (tree.whereClause is not None)
            or any(name is not None and name != column for name, column in zip(names, columns)))


def parsed_same(cursor, build, row) -> bool:
    """The catalog's definition of the index (a row of FIND) and the statement read alike by the parser (reads only:
    no transaction of its own, so status's read-only session may ask)."""
    cursor.execute("SELECT pg_catalog.pg_get_indexdef(%s::pg_catalog.oid)", (row[4],))
    wanted = canonical(build.probe)
    return row[1] == build.unique and wanted is not None and canonical(cursor.fetchone()[0]) == wanted


def server_name(cursor, build, copy: bool = True) -> str | None:
    """The name the server gives an unnamed build (before a number when taken): the temporary copy's, else (or
    not `copy`: reads only) as ChooseIndexName picks it (index_names.py; None for what only the server can name)."""
    probe = _probe(cursor, build) if copy else None
    if probe is not None:
        return probe[0]
    from pglast import ast, parse_sql

    from migrator.postgres import index_names

    tree = parse_sql(build.probe)[0].stmt
    return index_names.chosen(tree, build.relname) if isinstance(tree, ast.IndexStmt) else None


def made_since(cursor, oid: int, record) -> bool:
    """Whether the index was created after the migration's failure record was last written: the record is written
    before a try's statements run and each time one commits, so an index newer than it is the interrupted
    statement's (transaction ids compared by age, wraparound-safe for anything younger than 2^31 transactions)."""
    if record is None:
        return False
    table, migration_id = record
    cursor.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (table,))
    if not cursor.fetchone()[0]:  # (a Flyway folder's failures are in Flyway's table: no record of ours)
        return False
    cursor.execute("SELECT pg_catalog.age(c.xmin) OPERATOR(pg_catalog.<) pg_catalog.age(f.xmin) "
                   f"FROM pg_catalog.pg_class c, {table} f WHERE c.oid OPERATOR(pg_catalog.=) %s::pg_catalog.oid "
                   "AND f.migration_id::pg_catalog.text OPERATOR(pg_catalog.=) %s::pg_catalog.text",
                   (oid, migration_id))
    row = cursor.fetchone()
    return bool(row and row[0])


def _probe(cursor, build) -> tuple[str, str] | None:
    """(the name the server gives the index, what it builds from USING on): built on an empty temporary copy of
    the table's columns under the table's own name (so an unnamed build is named as on the table), rolled back.
    None without TEMP, and when the server would read the statement otherwise (conforming.py: it is then refused
    as it runs)."""
    from migrator.postgres import conforming

    if conforming.unread(cursor.connection, build.probe):
        return None
    cursor.execute("BEGIN")
    try:
        cursor.execute(f"CREATE TEMP TABLE {quoted(build.relname)} (LIKE {build.table})")
        cursor.execute(build.probe)
        cursor.execute("SELECT c.relname, substring(pg_catalog.pg_get_indexdef(i.indexrelid) from ' USING .*$') "
                       "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) "
                       "i.indexrelid WHERE i.indrelid OPERATOR(pg_catalog.=) %s::pg_catalog.regclass",
                       (quoted("pg_temp", build.relname),))
        return cursor.fetchone()
    except Exception as exc:
        if not hasattr(exc, "pgcode"):
            raise
        return None
    finally:
        cursor.execute("ROLLBACK")


def named_like(base: str, name: str) -> bool:
    """The server's name for an unnamed build, or that name numbered (taken when it built)."""
    return bool(re.fullmatch(re.escape(base) + "[0-9]*", name))
