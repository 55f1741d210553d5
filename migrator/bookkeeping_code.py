"""What a write of the runner's own tables runs besides triggers, rules and policies (attack23z 11).

An applied migration may give a bookkeeping table a column DEFAULT, a generated column, a CHECK, an index
expression or predicate, an operator class, or a column type (a domain's CHECK) that calls code outside pg_catalog:
the run's first write (its lock row) would run it as the migration user before any later check. The runner's tables
use pg_catalog alone, so any such part makes the table planted in trust.PLANTED (verified at connect, before the
first write, and again by first_write's guard in that write's statement): refused in one line naming the part, what
it uses and its owner; doctor FAILs the same.
"""

from __future__ import annotations

_CLASS = "CAST('pg_catalog.{}' AS pg_catalog.regclass)".format
_OWNERS = ", ".join(f"(SELECT x.{owner} FROM pg_catalog.{table} x WHERE x.oid = d.refobjid AND d.refclassid = "
                    f"{_CLASS(table)})" for table, owner in (("pg_proc", "proowner"), ("pg_operator", "oprowner"),
                                                             ("pg_type", "typowner"), ("pg_opclass", "opcowner"),
                                                             ("pg_opfamily", "opfowner")))
# [part uses object (owner role)] of table c's parts (its columns' types, its indexes, defaults, constraints) that
# depend on a function, operator, type or operator class outside pg_catalog
CODE = f"""ARRAY(SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) || ' uses '
               || pg_catalog.pg_describe_object(d.refclassid, d.refobjid, 0) || ' (owner '
               || pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(COALESCE({_OWNERS}))::text) || ')'
             FROM pg_catalog.pg_depend d
             WHERE (d.classid = {_CLASS("pg_class")} AND (d.objid = c.oid OR d.objid IN (SELECT i.indexrelid
                        FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid))
                    OR d.classid = {_CLASS("pg_attrdef")} AND d.objid IN (SELECT a.oid FROM pg_catalog.pg_attrdef a
                        WHERE a.adrelid = c.oid)
                    OR d.classid = {_CLASS("pg_constraint")} AND d.objid IN (SELECT k.oid
                        FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid))
               AND d.refclassid IN ({", ".join(_CLASS(t) for t in ("pg_proc", "pg_operator", "pg_type", "pg_opclass",
                                                                   "pg_opfamily"))})
               AND (pg_catalog.pg_identify_object(d.refclassid, d.refobjid, 0)).schema
                   IS DISTINCT FROM 'pg_catalog'
             ORDER BY 1)"""

_EDITS = (  # (trust.PLANTED's text: what to add after it)
    ("c.relowner, c.relacl\n", f"           , {CODE} AS code\n"),
    ("OR t.relhasrules OR t.relrowsecurity", " OR pg_catalog.cardinality(t.code) > 0"),
    ("CASE WHEN t.relhasrules THEN 'has rules' END,", "\n                 CASE WHEN pg_catalog.cardinality(t.code) > 0 "
     "THEN 'runs code outside pg_catalog: ' || pg_catalog.array_to_string(t.code, ', ') END,"))


def with_code(planted: str) -> str:
    """trust.PLANTED with the tables' implicit code read and refused as planted."""
    for anchor, added in _EDITS:
        if planted.count(anchor) != 1:
            raise ImportError(f"bookkeeping_code: trust.PLANTED no longer holds {anchor!r} once: read it anew")
        planted = planted.replace(anchor, anchor + added)
    return planted
