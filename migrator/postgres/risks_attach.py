"""What `ALTER TABLE parent ATTACH PARTITION table` does to the attached table besides its bound's scan
(risks_objects.attach): the parent's indexes and foreign keys are cloned onto it under ACCESS EXCLUSIVE on it. An
index of the parent the table has no equal of is built on its rows; a foreign key it lacks is validated (a scan of
its rows). (A parent's CHECK the table lacks makes the ATTACH fail: "child table is missing constraint".) The
parent's are read live and from the earlier pending statements (a parent created in the same run, its indexes and
keys too: attack24v 1); the table's equals too (a CREATE INDEX CONCURRENTLY of the same columns made before the
ATTACH, which it then takes over: the safe pattern). A table's index is the parent's equal only when PostgreSQL takes
it over (CompareIndexInfo: access method, operator families, collations, INCLUDE columns, expressions, predicate, NULLS
NOT DISTINCT; not the sort order or storage options): else the ATTACH builds a clone beside it (attack24x 4).
"""

from __future__ import annotations

from dataclasses import dataclass

from migrator.postgres.risk_kinds import ACCESS_EXCLUSIVE, Risk


@dataclass(frozen=True)
class Shape:
    """What PostgreSQL compares of two indexes besides uniqueness and columns, live (the catalog's) or as a pending
    statement writes it."""
    am: str
    keys: int  # key columns (the others are INCLUDE columns)
    opclasses: tuple  # per key column: live (name, default?); written: the name, None for the default
    collations: tuple  # per key column: its collation's name, None: the column's own
    exprs: str | None  # the expressions' text (the server's live, pglast's written), None: none
    predicate: str | None
    nulls_not_distinct: bool = False
    live: bool = False
    ids: tuple = ()  # (live) operator families and collation oids: what the server compares
    exclusion: bool = False  # (an exclusion constraint's index is never taken over)


# A table's indexes: (name, unique, columns in order (key then INCLUDE), an expression's None, partial, then what
# Shape holds) and its foreign keys (name, columns, referenced table's name, validated).
_INDEXES = """
SELECT ic.relname::text, i.indisunique, ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(i.indkey::int2[])
  WITH ORDINALITY k(n, o) LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
  ORDER BY k.o), i.indpred IS NOT NULL, am.amname::text, i.indnkeyatts::int,
  ARRAY(SELECT ARRAY[oc.opcname::text, oc.opcdefault::text, oc.opcfamily::text]
        FROM pg_catalog.unnest(i.indclass::oid[]) WITH ORDINALITY k(c, o)
        JOIN pg_catalog.pg_opclass oc ON oc.oid = k.c ORDER BY k.o),
  ARRAY(SELECT ARRAY[CASE WHEN k.c IN (0, COALESCE(a.attcollation, 100)) THEN NULL ELSE co.collname::text END,
                     k.c::text]
        FROM pg_catalog.unnest(i.indcollation::oid[]) WITH ORDINALITY k(c, o)
        LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k.o - 1]
        LEFT JOIN pg_catalog.pg_collation co ON co.oid = k.c ORDER BY k.o),
  pg_catalog.pg_get_expr(i.indexprs, i.indrelid), pg_catalog.pg_get_expr(i.indpred, i.indrelid),
  COALESCE((pg_catalog.to_jsonb(i) ->> 'indnullsnotdistinct')::bool, false),
  EXISTS (SELECT FROM pg_catalog.pg_constraint x WHERE x.conindid = i.indexrelid AND x.contype = 'x')
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_am am ON am.oid = ic.relam WHERE i.indrelid = %s
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
        params = tree.indexParams
        columns = tuple(p.name for p in params) + tuple(p.name for p in tree.indexIncludingParams or ())
        shape = Shape(tree.accessMethod or "btree", len(params),
                      tuple(p.opclass[-1].sval if p.opclass else None for p in params),
                      tuple(p.collation[-1].sval if p.collation else None for p in params),
                      _text([p.expr for p in params]), _text([tree.whereClause]), bool(tree.nulls_not_distinct))
        _note(seen, live, name(tree.relation), ("index", tree.idxname or "(unnamed)", bool(tree.unique), columns,
                                                tree.whereClause is not None, shape))
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
            keys = tuple(k.sval for k in c.keys or ())
            entry = ("index", c.conname or "(unnamed)", True, keys + tuple(k.sval for k in c.including or ()), False,
                     Shape("btree", len(keys), (None,) * len(keys), (None,) * len(keys), None, None,
                           bool(c.nulls_not_distinct)))
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
    return ([("index", n, u, tuple(c), p, Shape(am, keys, tuple((o[0], o[1] == "true") for o in ops),
                                                 tuple(k[0] for k in colls), exprs, pred, distinct, True,
                                                 (tuple(o[2] for o in ops), tuple(k[1] for k in colls)), excl))
             for n, u, c, p, am, keys, ops, colls, exprs, pred, distinct, excl in live._rows(_INDEXES, (oid,))]
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
        if kind == "index" and not any(h[0] == "index" and _takes_over(h, entry) for h in have):
            yield Risk(line, partition, f"ATTACH PARTITION {partition[1]} (cloning {parent[1]}'s index {name} "
                                        f"({', '.join(c or '(expression)' for c in entry[3])}))",
                       "builds an index on", ACCESS_EXCLUSIVE, "attach index")
        elif kind == "foreign key" and not any(h[0] == kind and h[2:4] == entry[2:4] and (h[4] or h[1] in validated)
                                               for h in have):
            yield Risk(line, partition, f"ATTACH PARTITION {partition[1]} (cloning {parent[1]}'s foreign key {name} "
                                        f"({', '.join(entry[2])}) REFERENCES {entry[3]}, validated)", "scans",
                       ACCESS_EXCLUSIVE, "attach foreign key")


def _takes_over(have: tuple, wanted: tuple) -> bool:
    """Whether the ATTACH takes the table's index `have` over as the parent's `wanted` (as CompareIndexInfo: not
    the sort order, not storage options). Between a live index and a pending statement's, expressions and predicates
    compare only when neither has any (the server's text is not the file's): else counted as a build (refused; the
    marker accepts it)."""
    if have[2:5] != wanted[2:5]:
        return False
    a, b = have[5], wanted[5]
    if (a.am, a.keys, a.nulls_not_distinct) != (b.am, b.keys, b.nulls_not_distinct) or a.exclusion or b.exclusion:
        return False
    if a.live and b.live:
        return a.ids == b.ids and (a.exprs, a.predicate) == (b.exprs, b.predicate)
    if a.live != b.live and (a.exprs or a.predicate or b.exprs or b.predicate):
        return False
    return a.collations == b.collations and all(map(_same_class, a.opclasses, b.opclasses))


def _same_class(one, other) -> bool:
    """An operator class, live ((name, default?)) or written (its name, None: the default), the same as the other."""
    if isinstance(one, tuple) == isinstance(other, tuple):
        return one == other
    live, written = (one, other) if isinstance(one, tuple) else (other, one)
    return live[1] if written is None else live[0] == written


def _text(nodes: list) -> str | None:
    """Expressions as pglast writes them (a pending statement's), None when there are none."""
    from pglast.stream import RawStream

    nodes = [node for node in nodes if node is not None]
    return "; ".join(RawStream()(node) for node in nodes) if nodes else None
