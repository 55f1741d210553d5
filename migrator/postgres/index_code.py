"""Whether the indexes a REINDEX ... CONCURRENTLY rebuilds run built-in code alone (clock_bound.Judge, blind).

PostgreSQL's REINDEX page ("Rebuilding Indexes Concurrently") and its lock table: the statement holds SHARE UPDATE
EXCLUSIVE on the table and its indexes (a session lock, phase 1 to 6), which no SELECT, INSERT, UPDATE, DELETE or
row lock conflicts with; its waits (for writers before the build and the swap, for older snapshots, for every
transaction that used the old index before marking it dead and dropping it) are on those transactions' virtual xids,
not a request queued on the table, so no application query queues behind it (the swap and the drop run under that
same SHARE UPDATE EXCLUSIVE). What it can stall the application on is the index's own code, run per row as in
CREATE INDEX CONCURRENTLY: a function of the database's own in an expression or a predicate, an operator, an
operator class, an access method or a column type of its own (a domain's CHECK, a type's input) may lock anything.
REINDEX SCHEMA / DATABASE / SYSTEM are not judged (every table's indexes): on the clock.
"""

from __future__ import annotations

# A stored expression (`{}`: its node tree as text) naming a type of the database's own other than an enum: a domain
# (its CHECK), an array or composite of one (a COERCEVIAIO through domain_in), whose input runs user code.
OWN_TYPES = """EXISTS (SELECT FROM pg_catalog.regexp_matches({}::pg_catalog.text,
                  ':(resulttype|consttype|funcresulttype|opresulttype) ([0-9]+)', 'g') y(m)
                JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) y.m[2]::pg_catalog.oid
                WHERE ty.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid AND ty.typtype OPERATOR(pg_catalog.<>) 'e')"""

# The indexes rebuilt (an index, or a table's; a partitioned one's partitions': pg_partition_tree, empty for others) and whether none runs code of the database's own
# (16384: FirstNormalObjectId, below it what initdb made).
_DEFINITION = "pg_catalog.concat_ws(' ', x.indexprs, x.indpred)"
_REBUILT = """SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_index x
    JOIN pg_catalog.pg_class i ON i.oid OPERATOR(pg_catalog.=) x.indexrelid
  WHERE (x.indexrelid OPERATOR(pg_catalog.=) ANY (SELECT pg_catalog.to_regclass(%(index)s) UNION ALL SELECT relid
                                         FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(%(index)s)))
      OR x.indrelid OPERATOR(pg_catalog.=) ANY (SELECT pg_catalog.to_regclass(%(table)s) UNION ALL SELECT relid
                                      FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(%(table)s))))
    AND (i.relam OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
      OR 16384::pg_catalog.oid OPERATOR(pg_catalog.<=) ANY (x.indclass::pg_catalog.oid[])
      OR 16384::pg_catalog.oid OPERATOR(pg_catalog.<=) ANY (x.indcollation::pg_catalog.oid[])
      OR """ + _DEFINITION + """ OPERATOR(pg_catalog.~) ':(aggfnoid|winfnoid) |[{](COERCETODOMAIN|SUBLINK) '
      OR """ + OWN_TYPES.format(_DEFINITION) + """
      OR EXISTS (SELECT FROM pg_catalog.regexp_matches(""" + _DEFINITION + """, ':(funcid|opfuncid|opno) ([0-9]+)',
                                                       'g') f(m)
                 WHERE f.m[2]::pg_catalog.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid)
      OR EXISTS (SELECT FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t
                   ON t.oid OPERATOR(pg_catalog.=) a.atttypid
                 WHERE a.attrelid OPERATOR(pg_catalog.=) x.indrelid AND a.attnum OPERATOR(pg_catalog.>) 0
                   AND t.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid AND t.typtype OPERATOR(pg_catalog.<>) 'e')))"""


def rebuilds_builtin(connection, tree, name) -> bool:
    """The REINDEX ... CONCURRENTLY `tree` rebuilds only indexes running built-in code (`name`: a RangeVar's quoted
    name, resolved by the statement's own session)."""
    from pglast import enums

    kinds = {enums.ReindexObjectType.REINDEX_OBJECT_INDEX: "index", enums.ReindexObjectType.REINDEX_OBJECT_TABLE: "table"}
    kind = kinds.get(tree.kind)
    if kind is None or tree.relation is None:
        return False
    params = {"index": None, "table": None, kind: name(tree.relation)}
    with connection.cursor() as cursor:
        cursor.execute(_REBUILT, params)
        return bool(cursor.fetchone()[0])
