"""What a column's type costs beyond a rewrite of its rows: read from PostgreSQL's own rules (tablecmds.c).

A binary-coercible `ALTER COLUMN TYPE` (varchar(20) -> varchar(64), varchar <-> text) keeps the rows, but
ATExecAlterColumnType drops and re-creates every constraint and index that depends on the column: a validated CHECK
naming it is checked again on every row, and an index whose expression or predicate (WHERE) names it, or with an
expression anywhere, is built again (CheckIndexCompatible never reuses those; a plain index whose operator class
stays compatible keeps its file, TryReuseIndex). Both under the ALTER's ACCESS EXCLUSIVE lock.

`ADD COLUMN c some_domain` where the domain, or a domain it is based on, has a CHECK or NOT NULL constraint rewrites
the table even without a default (ATExecAddColumn: a domain with constraints is evaluated on every row). A domain a
pending statement creates, or gives a constraint with ALTER DOMAIN, is judged from its text (`Seen.domains`).
"""

from __future__ import annotations

import re

from migrator import lazy_re
from migrator.postgres import risks_pending
from migrator.postgres.risk_kinds import ACCESS_EXCLUSIVE, Risk

# The table and every partition / inheritance child below it (ALTER COLUMN TYPE recurses to each: their own CHECKs
# and indexes are checked / built again too).
_TREE = """WITH RECURSIVE tree(oid) AS (SELECT %(oid)s::pg_catalog.oid UNION SELECT h.inhrelid
  FROM pg_catalog.pg_inherits h JOIN tree ON h.inhparent = tree.oid)"""
# Validated CHECKs naming the column (or VALIDATEd by a pending statement): re-checked on every row by a type change
# (NOT VALID ones are not); a child's copy of the parent's CHECK is said once, as the parent's.
_CHECKS = _TREE + """
SELECT DISTINCT c.conname, r.relname, c.conrelid <> %(oid)s, NULL
FROM pg_catalog.pg_constraint c JOIN tree ON tree.oid = c.conrelid
JOIN pg_catalog.pg_class r ON r.oid = c.conrelid JOIN pg_catalog.pg_attribute a
ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
WHERE c.contype = 'c' AND (c.convalidated OR c.conname = ANY(%(validated)s)) AND a.attname = %(column)s
  AND (c.conrelid = %(oid)s OR c.conislocal) ORDER BY 3, 2, 1
"""
# Indexes on the column (a key or INCLUDE column, or named by an expression or predicate) that PostgreSQL builds
# again: one with an expression or a predicate, or an invalid one (CheckIndexCompatible), and any partition of a
# partitioned index (its file is not reused: seen on PostgreSQL 18). Only those with a file: a partitioned index
# (relkind I) is said through its partitions'.
_INDEXES = _TREE + """
SELECT ic.relname, r.relname, i.indrelid <> %(oid)s, (SELECT p.relname FROM pg_catalog.pg_inherits h
  JOIN pg_catalog.pg_class p ON p.oid = h.inhparent WHERE h.inhrelid = i.indexrelid),
  (SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE n.oid = ic.relnamespace),
  NOT i.indisvalid AND i.indexprs IS NULL AND i.indpred IS NULL
FROM pg_catalog.pg_index i JOIN tree ON tree.oid = i.indrelid
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid AND ic.relkind = 'i'
JOIN pg_catalog.pg_class r ON r.oid = i.indrelid
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attname = %(column)s AND NOT a.attisdropped
WHERE (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL OR NOT i.indisvalid
       OR EXISTS (SELECT FROM pg_catalog.pg_inherits h WHERE h.inhrelid = i.indexrelid))
  AND (a.attnum = ANY(i.indkey) OR EXISTS (
    SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
    AND d.objid = i.indexrelid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
    AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum))
ORDER BY 3, 2, 1
"""
# The domain (on the path) and the domains it is based on: their constraints (a NOT NULL one as "NOT NULL": only
# DROP NOT NULL is followed for it) and whether they are NOT NULL (none: no domain)
_DOMAIN = """
WITH RECURSIVE chain(oid, depth) AS (
  (SELECT t.oid, 0 FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
   WHERE t.typtype = 'd' AND t.typname = %(name)s AND n.nspname = ANY(%(path)s)
   ORDER BY pg_catalog.array_position(%(path)s, n.nspname::text) LIMIT 1)
  UNION ALL SELECT t.typbasetype, c.depth + 1 FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid
  WHERE t.typtype = 'd' AND c.depth < 100)
SELECT n.nspname::pg_catalog.text, t.typname::pg_catalog.text,
  ARRAY(SELECT CASE k.contype WHEN 'n' THEN 'NOT NULL' ELSE k.conname::pg_catalog.text END
                   FROM pg_catalog.pg_constraint k WHERE k.contypid = t.oid), t.typnotnull
FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype = 'd'
"""
# A pending CREATE / ALTER DOMAIN (read without the parser when the statement is no such thing)
DOMAIN_HINT = lazy_re.compile(r"\s*(create|alter)\s+domain\b", re.IGNORECASE)


def retyped(live, oid: int, column: str, what: str, name, line: int, seen):
    """The scan and index builds of a type change that keeps the rows (the live column `column` of table `oid`, and
    of each partition / child of it), with the CHECKs and indexes earlier pending statements make on it."""
    key = live.key(name)
    pending_checks, pending_indexes = risks_pending.retyped(key, column, seen)
    live_checks = [row for row in live._rows(_CHECKS, {"oid": oid, "column": column,
                                                       "validated": sorted(seen.validated.get(key, ()))})
                   if (key, row[0]) not in seen.dropped_checks]
    checks = ", ".join(filter(None, [_named(live_checks)] + [c for c in pending_checks
                                                            if c not in {row[0] for row in live_checks}]))
    if checks:
        yield Risk(line, name, f"{what} (binary-coercible, but CHECK {checks} is checked again on every row)", "scans",
                   ACCESS_EXCLUSIVE, "type check")
    rows = [row for row in live._rows(_INDEXES, {"oid": oid, "column": column})
            if not risks_pending.dropped_index(row, seen)]
    indexes = ", ".join(filter(None, [_named([row[:4] for row in rows])] + pending_indexes))
    if indexes:
        invalid = [row[0] for row in rows if row[5]]  # (a failed build's leftover: what it is, and its own fix)
        why = "an index with an expression or a WHERE is built again" if len(invalid) < len(rows) or \
            pending_indexes else ""
        if invalid:
            why += ("; " if why else "") + f"the INVALID index {', '.join(invalid)} is built again by the ALTER: " \
                "REINDEX INDEX CONCURRENTLY it (or drop it) first"
        yield Risk(line, name, f"{what} (binary-coercible, but {why})", f"rebuilds index(es) {indexes} of",
                   ACCESS_EXCLUSIVE, "type index")


def _named(rows) -> str:
    """Names, a partition's / child's own said with its table: `ev_p1_lower (of partition/child ev_p1)`, and a
    partition of a partitioned index with that index: `ev_p1_code_idx (of partition/child ev_p1, of index ev_code)`."""
    return ", ".join(name + (f" (of partition/child {table}" + (f", of index {parent}" if parent else "") + ")"
                             if child else "") for name, table, child, parent in rows)


def constrained_domain(type_name, live, seen) -> str | None:
    """Why adding a column of this type rewrites the table: a domain with a CHECK / NOT NULL, or None."""
    names = [n.sval for n in type_name.names]
    if _constrained(names, live, seen, 0):
        return (f"of domain {'.'.join(names)}, which has a CHECK or NOT NULL constraint (checked on every row, "
                "default or not)")
    return None


def _constrained(names: list[str], live, seen, depth: int) -> bool:
    """The domain `names` names (a pending CREATE DOMAIN's, by (schema, name): risks_pending.pending_domain, or a
    live one) or one it is based on has a CHECK / NOT NULL, after the pending ALTER DOMAINs."""
    pending, live_too = risks_pending.pending_domain(seen.domains, names, live, seen)
    if depth >= 100:
        return True  # (a chain the judge does not follow to its end: taken as constrained)
    if any(own or _constrained(base, live, seen, depth + 1) for own, base in pending):
        return True
    if not live_too:
        return False
    first = live.path[0] if live.path else "public"
    for schema, name, constraints, not_null in live._rows(_DOMAIN, {
            "name": names[-1], "path": names[:-1] if len(names) > 1 else live.path}):
        dropped = {c for at, domain, c in seen.domain_dropped if domain == name and (at or first) == schema}
        if name in seen.domain_constrained or (set(constraints) | ({"NOT NULL"} if not_null else set())) - dropped:
            return True
    return False


def read_domain(text: str, seen) -> None:
    """Note a pending CREATE DOMAIN (whether it has a CHECK or NOT NULL of its own, and the type it is based on), or
    an ALTER DOMAIN that gives one (ADD CONSTRAINT, SET NOT NULL: constrained from then on, whatever it was) or drops
    one of a live domain (DROP CONSTRAINT, DROP NOT NULL: it counts no more; the domain is plain once none is left).
    A pending domain's DROP is not followed: judged as before it, never less."""
    from pglast import ast, enums, parse_sql
    from pglast.parser import ParseError

    try:
        trees = [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return
    for tree in trees:
        if isinstance(tree, ast.CreateDomainStmt):
            risks_pending.shadow(seen, tree.domainname[-1].sval, [seen.domains, seen.domain_defaults,
                                                                  seen.domain_types, seen.domain_collations])
        risks_pending.read_domain_default(tree, seen)
        if isinstance(tree, ast.CreateDomainStmt):
            own = any(c.contype in (enums.ConstrType.CONSTR_CHECK, enums.ConstrType.CONSTR_NOTNULL)
                      for c in tree.constraints or ())
            key = risks_pending.domain_key([n.sval for n in tree.domainname], seen)
            for gone in [k for k, to in seen.aliases.items() if to is risks_pending.GONE and k[0] == "type"
                         and k[1][1] == key[1] and (k[1][0] == key[0] or None in (k[1][0], key[0]))]:
                del seen.aliases[gone]  # (a name a pending RENAME TO took away: this domain's from here on)
            seen.domains[key] = (own, [n.sval for n in risks_pending.live_type(seen, tree.typeName).names])
            seen.domain_types[key] = tree.typeName  # (its typmods: risks_retype)
        elif isinstance(tree, ast.AlterDomainStmt):
            names = [n.sval for n in risks_pending.live_type(seen, ast.TypeName(names=tree.typeName)).names]
            if tree.subtype == "O" or tree.subtype == "C" and getattr(tree.def_, "contype", None) in (
                    enums.ConstrType.CONSTR_CHECK, enums.ConstrType.CONSTR_NOTNULL):
                seen.domain_constrained.add(names[-1])  # (any domain of that name: never less)
                for key, (_, base) in list(seen.domains.items()):
                    if key[1] == names[-1]:
                        seen.domains[key] = (True, base)
            elif tree.subtype in ("X", "N"):  # (a live domain's only: a qualified name, or the path's first schema's)
                key = risks_pending.domain_key(names, seen)
                seen.domain_dropped.add((*key, tree.name if tree.subtype == "X" else "NOT NULL"))
