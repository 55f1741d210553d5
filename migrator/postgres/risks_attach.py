"""What `ALTER TABLE parent ATTACH PARTITION table` does to the attached table besides its bound's scan
(risks_objects.attach): the parent's indexes and foreign keys are cloned onto it under ACCESS EXCLUSIVE on it. An
index of the parent the table has no equal of is built on its rows; a foreign key it lacks is validated (a scan of
its rows). (A parent's CHECK the table lacks makes the ATTACH fail: "child table is missing constraint".) The
parent's are read live and from the earlier pending statements (a parent created in the same run, its indexes and
keys too: attack24v 1); the table's equals too (a CREATE INDEX CONCURRENTLY of the same columns made before the
ATTACH, which it then takes over: the safe pattern).
"""

from __future__ import annotations

from migrator.postgres.risk_kinds import ACCESS_EXCLUSIVE, Risk

# A table's indexes: (name, unique, key columns in order, an expression's None, partial) and its foreign keys (name,
# columns, referenced table's name, validated).
_INDEXES = """
SELECT ic.relname::text, i.indisunique, ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(i.indkey::int2[])
  WITH ORDINALITY k(n, o) LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
  ORDER BY k.o), i.indpred IS NOT NULL
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = %s
"""
_FOREIGN = """
SELECT c.conname::text, ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY k(n, o)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
  r.relname::text, c.convalidated
FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class r ON r.oid = c.confrelid
WHERE c.conrelid = %s AND c.contype = 'f' AND c.conparentid = 0
"""


def read(tree, name, live, seen) -> None:
    """Note what a pending statement gives a table that a later ATTACH clones: a CREATE INDEX, a CREATE TABLE's and an
    ALTER TABLE's PRIMARY KEY / UNIQUE (an index) and FOREIGN KEY (Seen.clonable: table key -> entries)."""
    from pglast import ast, enums

    types = enums.ConstrType
    if isinstance(tree, ast.IndexStmt):
        columns = tuple(p.name for p in tree.indexParams)
        _note(seen, live, name(tree.relation), ("index", tree.idxname or "(unnamed)", bool(tree.unique), columns,
                                                tree.whereClause is not None))
        return
    if isinstance(tree, ast.CreateStmt):
        constraints = [c for c in tree.tableElts or () if isinstance(c, ast.Constraint)]
        for column in (c for c in tree.tableElts or () if isinstance(c, ast.ColumnDef)):
            keyed = (types.CONSTR_PRIMARY, types.CONSTR_UNIQUE, types.CONSTR_FOREIGN)
            constraints += [ast.Constraint(contype=c.contype, conname=c.conname, keys=[ast.String(column.colname)],
                                           fk_attrs=[ast.String(column.colname)], pktable=c.pktable)
                            for c in column.constraints or () if c.contype in keyed]
    elif isinstance(tree, ast.AlterTableStmt) and tree.relation is not None:  # (a CHECK the table lacks: an error)
        constraints = [c.def_ for c in tree.cmds if c.subtype == enums.AlterTableType.AT_AddConstraint
                       and isinstance(c.def_, ast.Constraint)]
    else:
        return
    for c in constraints:
        if c.contype in (types.CONSTR_PRIMARY, types.CONSTR_UNIQUE) and not c.indexname:
            entry = ("index", c.conname or "(unnamed)", True, tuple(k.sval for k in c.keys or ()), False)
        elif c.contype == types.CONSTR_FOREIGN:
            entry = ("foreign key", c.conname or "(unnamed)", tuple(k.sval for k in c.fk_attrs or ()),
                     c.pktable.relname, not c.skip_validation)
        else:
            continue
        _note(seen, live, name(tree.relation), entry)


def _note(seen, live, table, entry: tuple) -> None:
    seen.clonable.setdefault(live.key(table), []).append(entry)


def _live(live, table) -> list[tuple]:
    """The table's own indexes, foreign keys and CHECKs, as read() notes them."""
    found = live.table(table)
    if found is None:
        return []
    oid = found[0]
    return ([("index", n, u, tuple(c), p) for n, u, c, p in live._rows(_INDEXES, (oid,))]
            + [("foreign key", n, tuple(c), r, v) for n, c, r, v in live._rows(_FOREIGN, (oid,))])


def clones(parent, partition, line: int, live, seen):
    """ATTACH PARTITION `partition` (a live table) to `parent`: a Risk per index of the parent it builds there and per
    foreign key it validates there."""
    if seen.is_new(partition, live) or live.table(partition) is None:
        return
    pending = seen.clonable if seen.follow else {}  # (plan --impact's scratch catalog has them already)
    wanted = (_live(live, parent) if not seen.follow or not seen.is_new(parent, live) else []) \
        + pending.get(live.key(parent), [])
    have = _live(live, partition) + pending.get(live.key(partition), [])
    validated = seen.validated.get(live.key(partition), set())
    for entry in wanted:
        kind, name = entry[0], entry[1]
        if kind == "index" and not any(h[0] == "index" and h[2:] == entry[2:] for h in have):
            yield Risk(line, partition, f"ATTACH PARTITION {partition[1]} (cloning {parent[1]}'s index {name} "
                                        f"({', '.join(c or '(expression)' for c in entry[3])}))",
                       "builds an index on", ACCESS_EXCLUSIVE, "attach index")
        elif kind == "foreign key" and not any(h[0] == kind and h[2:4] == entry[2:4] and (h[4] or h[1] in validated)
                                               for h in have):
            yield Risk(line, partition, f"ATTACH PARTITION {partition[1]} (cloning {parent[1]}'s foreign key {name} "
                                        f"({', '.join(entry[2])}) REFERENCES {entry[3]}, validated)", "scans",
                       ACCESS_EXCLUSIVE, "attach foreign key")
