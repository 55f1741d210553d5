"""Implicit code on the migration's own tables that another role may change after any review: what planted.py's
COLUMNS and WRITTEN read in pg_depend (fix23aj 2), and the ALTER that hands such an object to the migration user."""

from __future__ import annotations

from migrator.grant_text import ident

# Implicit code on tables (fix23aj 2, attack23u 2): what runs on a write of a table without a file naming it, that
# another role may change after any review (CREATE OR REPLACE FUNCTION, ALTER DOMAIN ADD CONSTRAINT): functions,
# operators, operator classes, domains and types reached from the table's columns' types (a domain over one, an
# array or a composite type's attribute, at any depth), its defaults and generated columns, CHECK and other
# constraints, index expressions, trigger conditions, rules and policies, read in pg_depend (system objects, oid <
# 16384, aside; a function's own dependencies are not followed: its body is its owner's; the function a trigger
# executes is the 'trigger' rows' elsewhere). The rows (tbl, owner, via: what of the table reaches it, what: the
# object) whose owner is not trusted (`owner_ok`: planted._OWNER_OK, on pg_roles r); `start`: a FROM item of the
# tables (column oid).
_CLASS = "CAST('pg_catalog.{}' AS pg_catalog.regclass)".format


def reach(start: str, owner_ok: str) -> str:
    c, p, t, k = _CLASS("pg_class"), _CLASS("pg_proc"), _CLASS("pg_type"), _CLASS("pg_constraint")
    return f"""(WITH RECURSIVE walk(tbl, vc, vo, vs, c, o) AS (
        SELECT s.oid, {c}, s.oid, 0, {c}, s.oid FROM {start} s
        UNION SELECT s.oid, d.classid, d.objid, d.objsubid, d.classid, d.objid FROM {start} s
            JOIN pg_catalog.pg_depend d ON d.refclassid = {c} AND d.refobjid = s.oid
            WHERE d.classid IN ({_CLASS("pg_attrdef")}, {k}, {_CLASS("pg_rewrite")}, {_CLASS("pg_policy")})
               OR d.classid = {_CLASS("pg_trigger")} AND EXISTS (SELECT FROM pg_catalog.pg_trigger g
                  WHERE g.oid = d.objid AND g.tgenabled <> 'D' AND NOT g.tgisinternal)
               OR d.classid = {c} AND d.deptype = 'a'
        UNION SELECT w.tbl, w.vc, w.vo, CASE WHEN w.c = {c} AND w.o = w.tbl THEN x.s ELSE w.vs END, x.c, x.o
            FROM walk w, LATERAL (
                SELECT d.refclassid AS c, d.refobjid AS o, d.objsubid AS s FROM pg_catalog.pg_depend d
                WHERE d.classid = w.c AND d.objid = w.o AND d.refobjid >= 16384 AND d.refclassid IN ({c}, {p}, {t},
                      {_CLASS("pg_operator")}, {_CLASS("pg_opclass")})
                  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger g WHERE w.c = {_CLASS("pg_trigger")}
                                  AND g.oid = w.o AND g.tgfoid = d.refobjid)
                UNION ALL SELECT {k}, y.oid, 0 FROM pg_catalog.pg_constraint y WHERE w.c = {t} AND y.contypid = w.o
                UNION ALL SELECT {t}, a.atttypid, 0 FROM pg_catalog.pg_type y JOIN pg_catalog.pg_attribute a  -- (a
                    ON a.attrelid = y.typrelid AND a.attnum > 0 AND NOT a.attisdropped  -- row type's attributes)
                WHERE w.c = {t} AND y.oid = w.o AND y.typrelid <> 0 AND a.atttypid >= 16384) x
            WHERE w.c <> {p} AND (w.c <> {c} OR w.o = w.tbl OR EXISTS (SELECT FROM pg_catalog.pg_class r
                  WHERE r.oid = w.o AND r.relkind IN ('i', 'I'))))
    SELECT w.tbl, o.owner, CASE WHEN w.vc = {c} AND w.vo = w.tbl THEN COALESCE('column ' || w.tbl::pg_catalog.regclass::text
               || '.' || pg_catalog.quote_ident(a.attname::text), 'table ' || w.tbl::pg_catalog.regclass::text)
               ELSE pg_catalog.pg_describe_object(w.vc, w.vo, w.vs) END AS via, o.what
    FROM walk w CROSS JOIN LATERAL (
        SELECT f.proowner AS owner, 'function ' || f.oid::pg_catalog.regprocedure::text AS what
        FROM pg_catalog.pg_proc f WHERE w.c = {p} AND f.oid = w.o
        UNION ALL SELECT y.typowner, CASE WHEN y.typtype = 'd' THEN 'domain ' ELSE 'type ' END
            || y.oid::pg_catalog.regtype::text FROM pg_catalog.pg_type y WHERE w.c = {t} AND y.oid = w.o
        UNION ALL SELECT y.oprowner, 'operator ' || y.oid::pg_catalog.regoperator::text FROM pg_catalog.pg_operator y
            WHERE w.c = {_CLASS("pg_operator")} AND y.oid = w.o
        UNION ALL SELECT y.opcowner, 'operator class ' || pg_catalog.quote_ident(x.nspname::text) || '.'
            || pg_catalog.quote_ident(y.opcname::text) || ' using ' || m.amname::text FROM pg_catalog.pg_opclass y
            JOIN pg_catalog.pg_namespace x ON x.oid = y.opcnamespace JOIN pg_catalog.pg_am m ON m.oid = y.opcmethod
            WHERE w.c = {_CLASS("pg_opclass")} AND y.oid = w.o) o
    JOIN pg_catalog.pg_roles r ON r.oid = o.owner
    LEFT JOIN pg_catalog.pg_attribute a ON w.vc = {c} AND a.attrelid = w.tbl AND a.attnum = w.vs AND w.vs > 0
    WHERE NOT {owner_ok})"""


USES = " uses "  # (COLUMNS' implicit code: '<via> uses <object>')
_ALTER = {"function": "ROUTINE", "domain": "DOMAIN", "type": "TYPE", "operator": "OPERATOR",
          "operator class": "OPERATOR CLASS"}


def alter_owner(what: str, user: str) -> str:
    """The ALTER ... OWNER TO `user` of a reach() object ('function f(int)', 'operator class s.c using btree')."""
    kind = next(k for k in sorted(_ALTER, key=len, reverse=True) if what.startswith(k + " "))
    name = what[len(kind) + 1:]
    if kind == "operator class":
        name = " USING ".join(name.rsplit(" using ", 1))
    return f"ALTER {_ALTER[kind]} {name} OWNER TO {ident(user)}"
