"""Which indexes keyed on a column an ALTER COLUMN TYPE that keeps the rows still builds again, by PostgreSQL's own
rule (tablecmds.c ATExecAlterColumnType -> CheckIndexCompatible): each index on the column is defined again from its
definition as pg_get_indexdef prints it (an operator class or a collation named only when it is not the column's
default; a UNIQUE / PRIMARY KEY constraint's by its column names alone), and its file is kept only when every key's
operator class and collation come out the same. So a key whose operator class was the old type's default takes the
new type's default (GetDefaultOpClass: the exact input type, else a binary-coercible or polymorphic one), one whose
collation was the column's takes the column's new collation (the COLLATE clause, else the new type's own: a domain's
typcollation), and a polymorphic operator class (array_ops, enum_ops...) is not reused for another type. Each such
index is built again under the ALTER's ACCESS EXCLUSIVE lock (text -> citext: text_ops -> citext_ops; varchar(20)
COLLATE "C" -> varchar(64): the default collation).

Indexes created by earlier pending statements (CREATE INDEX, CONCURRENTLY or not; ADD CONSTRAINT UNIQUE / PRIMARY
KEY / EXCLUDE) count as live ones do: their keys are kept in Seen.keyed by the names they give.
"""

from __future__ import annotations

from migrator.postgres import risks_pending, risks_types

# Each key of each index on the column (of the table and each partition / child): its access method, operator class,
# collation and index column type, and the column's type and collation (the defaults a definition leaves out).
_KEYED = risks_types._TREE + """
SELECT ic.relname, r.relname, i.indrelid <> %(oid)s, (SELECT p.relname FROM pg_catalog.pg_inherits h
  JOIN pg_catalog.pg_class p ON p.oid = h.inhparent WHERE h.inhrelid = i.indexrelid),
  (SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE n.oid = ic.relnamespace),
  ic.relam, i.indclass[k.n], i.indcollation[k.n], ia.atttypid, a.atttypid, a.attcollation
FROM pg_catalog.pg_index i JOIN tree ON tree.oid = i.indrelid
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid AND ic.relkind = 'i'
JOIN pg_catalog.pg_class r ON r.oid = i.indrelid
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attname = %(column)s AND NOT a.attisdropped
CROSS JOIN LATERAL pg_catalog.generate_series(0, i.indnkeyatts - 1) k(n)
JOIN pg_catalog.pg_attribute ia ON ia.attrelid = i.indexrelid AND ia.attnum = k.n + 1
WHERE i.indkey[k.n] = a.attnum
"""
# The default operator classes of access method `am` a value of base type `type` may use (GetDefaultOpClass's
# candidates): (oid, exact input type, polymorphic, binary-coercible (IsBinaryCoercible), preferred in its category).
_DEFAULTS = """
SELECT o.oid, o.opcintype = s.oid, it.typtype = 'p', o.opcintype = s.oid OR CASE it.typname
    WHEN 'any' THEN true WHEN 'anyelement' THEN true WHEN 'anycompatible' THEN true
    WHEN 'anyarray' THEN s.typelem <> 0 AND s.typlen = -1
    WHEN 'anycompatiblearray' THEN s.typelem <> 0 AND s.typlen = -1
    WHEN 'anynonarray' THEN NOT (s.typelem <> 0 AND s.typlen = -1)
    WHEN 'anycompatiblenonarray' THEN NOT (s.typelem <> 0 AND s.typlen = -1)
    WHEN 'anyenum' THEN s.typtype = 'e'
    WHEN 'anyrange' THEN s.typtype = 'r' WHEN 'anycompatiblerange' THEN s.typtype = 'r'
    WHEN 'anymultirange' THEN s.typtype = 'm' WHEN 'anycompatiblemultirange' THEN s.typtype = 'm'
    WHEN 'record' THEN s.typtype = 'c' ELSE false END
  OR EXISTS (SELECT FROM pg_catalog.pg_cast c WHERE c.castsource = s.oid AND c.casttarget = o.opcintype
             AND c.castmethod = 'b' AND c.castcontext = 'i'),
  it.typispreferred AND it.typcategory = s.typcategory
FROM pg_catalog.pg_opclass o JOIN pg_catalog.pg_type it ON it.oid = o.opcintype, pg_catalog.pg_type s
WHERE s.oid = %(type)s AND o.opcmethod = %(am)s AND o.opcdefault
"""
_BASE = """
WITH RECURSIVE chain(oid, depth) AS (SELECT %s::pg_catalog.oid, 0 UNION ALL SELECT t.typbasetype, c.depth + 1
  FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid WHERE t.typtype = 'd' AND c.depth < 100)
SELECT c.oid FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid WHERE t.typtype <> 'd'
"""
_AM = "SELECT oid FROM pg_catalog.pg_am WHERE amname = %s"
_POLYMORPHIC = ("SELECT t.typtype = 'p' FROM pg_catalog.pg_opclass o JOIN pg_catalog.pg_type t ON t.oid = o.opcintype "
                "WHERE o.oid = %s")
# An operator class a pending CREATE INDEX names, on the migration's search_path
_OPCLASS = """
SELECT o.oid FROM pg_catalog.pg_opclass o JOIN pg_catalog.pg_namespace n ON n.oid = o.opcnamespace
WHERE o.opcmethod = %(am)s AND o.opcname = %(name)s AND n.nspname = ANY(%(path)s)
ORDER BY pg_catalog.array_position(%(path)s, n.nspname::pg_catalog.text) LIMIT 1
"""
# A collation by name on the migration's search_path, of the database's encoding or any (CREATE COLLATION's -1)
_COLLATION = """
SELECT c.oid FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace n ON n.oid = c.collnamespace
WHERE c.collname = %(name)s AND n.nspname = ANY(%(path)s)
  AND c.collencoding IN (-1, pg_catalog.pg_char_to_encoding(pg_catalog.getdatabaseencoding()))
ORDER BY pg_catalog.array_position(%(path)s, n.nspname::pg_catalog.text) LIMIT 1
"""


def rebuilt(live, seen, oid: int, column: str, key, old: tuple[int, int], new: tuple[int, object]) -> tuple[str, str]:
    """(the indexes on live `column` of table `oid` (key `key`) the type change builds again, what changes: "operator
    class", "collation" or both), ("", "") when every key keeps its operator class and collation. `old` is the
    column's (type, collation), `new` its new (type, collation): a collation oid, a pending one's name (new: differs
    from every live one), or None (a name found nowhere: the server will say so; not compared)."""
    opclasses = _Opclasses(live)
    changes: set[str] = set()
    rows = []
    for row in live._rows(_KEYED, {"oid": oid, "column": column}):
        if risks_pending.dropped_index(row[:5], seen) or (key, row[0]) in seen.dropped_checks:
            continue
        am, opclass, collation, index_type, column_type, column_collation = row[5:]
        what = _changes(opclasses, am, (opclass, collation, index_type), (column_type, column_collation), new)
        if what:
            changes |= what
            rows.append(tuple(row[:4]))
    pending = []
    for name, (am_name, opclass_names, collation_names) in seen.keyed.get(key, {}).get(column, {}).items():
        if any(n == name for _, n in seen.dropped_indexes) or (key, name) in seen.dropped_checks:
            continue
        am = next(iter(live._rows(_AM, (am_name,))), (None,))[0]
        opclass = opclasses.named(am, opclass_names) if opclass_names else opclasses.default(old[0], am)
        collation = collation(live, seen, collation_names) if collation_names else old[1]
        what = am is not None and _changes(opclasses, am, (opclass, collation, old[0]), old, new)
        if what:
            changes |= what
            pending.append(name)
    if not changes:
        return "", ""
    # (an index with an expression or a WHERE on it is built again too, whatever its keys: retyped() would name it)
    params = {"oid": oid, "column": column}
    rows += [tuple(r[:4]) for r in live._rows(risks_types._INDEXES, params) if not risks_pending.dropped_index(r, seen)]
    names = [risks_types._named(sorted(set(rows), key=lambda r: (r[2], r[1], r[0])))]
    names += sorted(set(pending + risks_pending.retyped(key, column, seen)[1]))
    return ", ".join(filter(None, names)), " and ".join(sorted(changes, reverse=True))


def _changes(opclasses, am: int, index: tuple, old: tuple, new: tuple) -> set[str]:
    """What a key of an index (its operator class, collation, index column type) takes from the column's new (type,
    collation) that differs: a default operator class / the column's collation follow the column, a named one stays."""
    opclass, collation, index_type = index
    what = set()
    new_opclass = opclass if opclass != opclasses.default(old[0], am) else opclasses.default(new[0], am)
    if new_opclass != opclass or (new_opclass is not None and index_type != new[0]
                                  and opclasses.polymorphic(new_opclass)):
        what.add("operator class")
    if new[1] is not None and collation == old[1] and new[1] != collation:
        what.add("collation")
    return what


class _Opclasses:
    """The catalog's answers, asked once per run of rebuilt()."""

    def __init__(self, live):
        self.live, self.defaults = live, {}

    def default(self, type_oid: int, am: int) -> int | None:
        """GetDefaultOpClass: the base type's only exact default, else its only preferred binary-coercible one, else
        its only binary-coercible one; None when there is none or several (the server then asks for one)."""
        if (type_oid, am) not in self.defaults:
            base = self.live._rows(_BASE, (type_oid,))
            rows = self.live._rows(_DEFAULTS, {"type": base[0][0] if base else type_oid, "am": am})
            found = None
            for pick in ([r for r in rows if r[1]], [r for r in rows if r[3] and r[4]],
                         [r for r in rows if r[3] and not r[4]]):
                if pick:
                    found = pick[0][0] if len(pick) == 1 else None
                    break
            self.defaults[(type_oid, am)] = found
        return self.defaults[(type_oid, am)]

    def polymorphic(self, opclass: int) -> bool:
        return bool(self.live._rows(_POLYMORPHIC, (opclass,))[0][0])

    def named(self, am: int, names: list[str]) -> int | None:
        path = names[:-1] or ["pg_catalog"] * ("pg_catalog" not in self.live.path) + self.live.path
        return next(iter(self.live._rows(_OPCLASS, {"am": am, "name": names[-1], "path": path})), (None,))[0]


def collation(live, seen, names: list[str]):
    """The collation `names` means on the migration's search_path: its oid, a pending CREATE COLLATION's name (no
    live collation is it), or None when it is found nowhere (a misspelt name: the server will say so)."""
    path = names[:-1] or ["pg_catalog"] * ("pg_catalog" not in live.path) + live.path
    row = live._rows(_COLLATION, {"name": names[-1], "path": path})
    if row:
        return row[0][0]
    return f"(new) {names[-1]}" if names[-1] in seen.collations else None


def index(tree, table, live, seen) -> None:
    """A pending CREATE INDEX (CONCURRENTLY or not) without an expression or a WHERE: its keys, by the live columns
    they name (one with an expression or a WHERE is built again anyway: risks_pending.index keeps it)."""
    if tree.whereClause is not None or any(p.expr is not None for p in tree.indexParams):
        return
    _keys(seen, live.key(table), tree.idxname, tree.accessMethod or "btree",
          [(seen.live_column(table, p.name, live), p.opclass, p.collation) for p in tree.indexParams])


def constraint(constraint, table, live, seen) -> None:
    """A pending ADD CONSTRAINT ... UNIQUE / PRIMARY KEY (its columns, the defaults) or EXCLUDE (its elements; one with
    an expression or a WHERE is built again by any type change of a column it names: kept as risks_pending.index
    keeps such an index)."""
    from pglast import enums

    kinds = enums.ConstrType
    key = live.key(table)
    if constraint.contype in (kinds.CONSTR_PRIMARY, kinds.CONSTR_UNIQUE) and not constraint.indexname:
        _keys(seen, key, constraint.conname, "btree",
              [(seen.live_column(table, k.sval, live), None, None) for k in constraint.keys or ()])
    elif constraint.contype == kinds.CONSTR_EXCLUSION:
        elements = [pair[0] for pair in constraint.exclusions or ()]
        if constraint.where_clause is not None or any(e.expr is not None for e in elements):
            columns = {e.name for e in elements if e.name}
            for node in [e.expr for e in elements if e.expr is not None] + [constraint.where_clause]:
                columns |= risks_pending.column_refs(node) if node is not None else set()
            indexes = seen.rebuilt.setdefault(key, {})
            indexes[constraint.conname or f"(unnamed {len(indexes) + 1})"] = {
                seen.live_column(table, c, live) for c in columns}
        else:
            _keys(seen, key, constraint.conname, constraint.access_method or "btree",
                  [(seen.live_column(table, e.name, live), e.opclass, e.collation) for e in elements])


def _keys(seen, key, name: str | None, am: str, keys: list) -> None:
    columns = seen.keyed.setdefault(key, {})
    for column, opclass, collation in keys:
        indexes = columns.setdefault(column, {})
        indexes[name or f"(unnamed, on {column})"] = (
            am, [n.sval for n in opclass] if opclass else None, [n.sval for n in collation] if collation else None)
