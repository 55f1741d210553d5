"""Implicit code on the migration's own tables that another role may change after any review: what planted.py's
COLUMNS and WRITTEN read in pg_depend (fix23aj 2), and the ALTER that hands such an object to the migration user."""

from __future__ import annotations

from migrator.grant_text import ident

# Implicit code on tables (fix23aj 2, attack23u 2): what runs on a write of a table without a file naming it, that
# another role may change after any review (CREATE OR REPLACE FUNCTION, ALTER DOMAIN ADD CONSTRAINT): the functions,
# operators, operator classes, domains and types other roles own (`owner_ok`: planted._OWNER_OK, on pg_roles r), and
# what depends on them in pg_depend, followed backwards: a domain over one, an array of one, a composite type with an
# attribute of one, a domain whose CHECK calls one, an operator or SQL-standard function using one; down to a table's
# column type, default or generated column, constraint, index (expression, operator class), trigger condition, rule,
# policy or extended statistics (attack23w 5), or a view's or materialized view's query (its _RETURN rule: a REFRESH,
# or a read in a write, attack23w 6). Walked from the untrusted objects (few, usually none), not from the
# tables (thousands): ~2 ms when there are none. The function a trigger executes is the 'trigger' rows' elsewhere.
# Rows (tbl, owner, via: what of the table reaches it, what: the object) for the tables in `start` (a FROM item with
# column oid).
_CLASS = "CAST('pg_catalog.{}' AS pg_catalog.regclass)".format


# With `own` (attack23w 3): the user's own functions (owned by any role trusted as the user, attack23z 6) whose body is
# a string (sql, plpgsql: pg_depend has nothing of what it calls, planted_bodies.py reads it) in their place, and the
# function a trigger executes among what reaches.
_OWN = """SELECT {p}, f.oid, f.proowner, 'function ' || f.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc f
        WHERE f.oid >= 16384 AND f.proowner NOT IN (SELECT oid FROM untrusted) AND f.prosrc <> ''
            AND f.prolang IN (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname IN ('sql', 'plpgsql'))"""


def reach(start: str, owner_ok: str, own: bool = False) -> str:
    c, p, t, k, op = (_CLASS(n) for n in ("pg_class", "pg_proc", "pg_type", "pg_constraint", "pg_operator"))
    described = "pg_catalog.pg_describe_object(wk.c, wk.o, 0)"
    bad = _OWN.format(p=p) if own else f"""
        SELECT {p}, f.oid, f.proowner, 'function ' || f.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc f
        WHERE f.oid >= 16384 AND f.proowner IN (SELECT oid FROM untrusted)
        UNION ALL SELECT {t}, y.oid, y.typowner, CASE WHEN y.typtype = 'd' THEN 'domain ' ELSE 'type ' END
            || y.oid::pg_catalog.regtype::text FROM pg_catalog.pg_type y
        WHERE y.oid >= 16384 AND y.typowner IN (SELECT oid FROM untrusted)
        UNION ALL SELECT {op}, y.oid, y.oprowner, 'operator ' || y.oid::pg_catalog.regoperator::text
        FROM pg_catalog.pg_operator y WHERE y.oid >= 16384 AND y.oprowner IN (SELECT oid FROM untrusted)
        UNION ALL SELECT {_CLASS("pg_opclass")}, y.oid, y.opcowner, 'operator class ' || pg_catalog.quote_ident(
            x.nspname::text) || '.' || pg_catalog.quote_ident(y.opcname::text) || ' using ' || m.amname::text
        FROM pg_catalog.pg_opclass y JOIN pg_catalog.pg_namespace x ON x.oid = y.opcnamespace
        JOIN pg_catalog.pg_am m ON m.oid = y.opcmethod WHERE y.oid >= 16384 AND y.opcowner IN (SELECT oid FROM untrusted)"""
    triggers = "" if own else f"""AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger g
              WHERE d.classid = {_CLASS("pg_trigger")} AND g.oid = d.objid AND g.tgfoid = wk.o)"""
    return f"""(WITH RECURSIVE untrusted AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE NOT {owner_ok}),
    bad(c, o, owner, what) AS ({bad}),
    walk(rc, ro, c, o, s) AS (
        SELECT b.c, b.o, b.c, b.o, 0 FROM bad b
        UNION SELECT wk.rc, wk.ro, x.c, x.o, x.s FROM walk wk
        JOIN pg_catalog.pg_depend d ON d.refclassid = wk.c AND d.refobjid = wk.o AND d.deptype IN ('n', 'a', 'i')
        CROSS JOIN LATERAL (SELECT d.classid AS c, d.objid AS o, d.objsubid AS s
            UNION ALL SELECT {t}, y.contypid, 0 FROM pg_catalog.pg_constraint y  -- (a domain's CHECK: the domain)
                WHERE d.classid = {k} AND y.oid = d.objid AND y.contypid <> 0
            UNION ALL SELECT {t}, r.reltype, 0 FROM pg_catalog.pg_class r  -- (a composite's attribute: its type)
                WHERE d.classid = {c} AND r.oid = d.objid AND r.relkind = 'c') x
        WHERE wk.c IN ({p}, {t}, {op}, {_CLASS("pg_opclass")}) {triggers}),
    -- (what the walk reached, before the start's filter: joined first, the two made a product with many objects)
    hits AS MATERIALIZED (SELECT h.tbl, b.owner, h.via, b.what, b.o FROM walk wk JOIN bad b ON b.c = wk.rc AND b.o = wk.ro
        CROSS JOIN LATERAL (
        SELECT a.adrelid AS tbl, {described} AS via FROM pg_catalog.pg_attrdef a
            WHERE wk.c = {_CLASS("pg_attrdef")} AND a.oid = wk.o
        UNION ALL SELECT y.conrelid, {described} FROM pg_catalog.pg_constraint y
            WHERE wk.c = {k} AND y.oid = wk.o AND y.conrelid <> 0
        UNION ALL SELECT r.oid, 'column ' || r.oid::pg_catalog.regclass::text || '.' || pg_catalog.quote_ident(
            a.attname::text) FROM pg_catalog.pg_class r JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid
            AND a.attnum = wk.s WHERE wk.c = {c} AND r.oid = wk.o AND wk.s > 0 AND r.relkind IN ('r', 'p', 'f', 'm')
        UNION ALL SELECT i.indrelid, {described} FROM pg_catalog.pg_index i WHERE wk.c = {c} AND i.indexrelid = wk.o
        UNION ALL SELECT g.tgrelid, {described} FROM pg_catalog.pg_trigger g
            WHERE wk.c = {_CLASS("pg_trigger")} AND g.oid = wk.o AND g.tgenabled <> 'D' AND NOT g.tgisinternal
        UNION ALL SELECT e.ev_class, {described} FROM pg_catalog.pg_rewrite e
            WHERE wk.c = {_CLASS("pg_rewrite")} AND e.oid = wk.o
        UNION ALL SELECT y.polrelid, {described} FROM pg_catalog.pg_policy y
            WHERE wk.c = {_CLASS("pg_policy")} AND y.oid = wk.o
        UNION ALL SELECT y.stxrelid, {described} FROM pg_catalog.pg_statistic_ext y  -- (ANALYZE evaluates it)
            WHERE wk.c = {_CLASS("pg_statistic_ext")} AND y.oid = wk.o) h
    ) SELECT * FROM hits WHERE hits.tbl IN (SELECT st.oid FROM {start} st))"""


# The tables a write of a table reaches (attack23w 7): its partitions and inheritance children, and the tables whose
# foreign key's ON DELETE / ON UPDATE CASCADE, SET NULL or SET DEFAULT writes them, recursively, wherever they live;
# those the migration user owns only (`owner_ok`: planted._OWNER_OK, a role trusted as the user too: attack23z's
# audit): a cascade runs as the referencing table's owner (ri_triggers.c), so another role's table reached that way
# runs that role's code as that role.
# `start`: a FROM item with columns (k, oid); rows (k, oid), the start's own among them.
def closure(start: str, owner_ok: str) -> str:
    return f"""(WITH RECURSIVE reached(k, oid) AS (SELECT st.k, st.oid FROM {start} st
        UNION SELECT x.k, z.oid FROM reached x CROSS JOIN LATERAL (
            SELECT i.inhrelid AS oid FROM pg_catalog.pg_inherits i WHERE i.inhparent = x.oid
            UNION ALL SELECT y.conrelid FROM pg_catalog.pg_constraint y JOIN pg_catalog.pg_class f ON f.oid = y.conrelid
            WHERE y.confrelid = x.oid AND y.contype = 'f' AND (y.confdeltype IN ('c', 'n', 'd')
                OR y.confupdtype IN ('c', 'n', 'd'))
                AND f.relowner IN (SELECT r.oid FROM pg_catalog.pg_roles r WHERE {owner_ok})) z)
    SELECT k, oid FROM reached)"""


USES = " uses "  # (COLUMNS' implicit code: '<via> uses <object>')
_ALTER = {"function": "ROUTINE", "domain": "DOMAIN", "type": "TYPE", "operator": "OPERATOR",
          "operator class": "OPERATOR CLASS", "view": "VIEW", "materialized view": "MATERIALIZED VIEW",
          "table": "TABLE"}  # (the last three: what an own function's body reads, planted_bodies.py)


def alter_owner(what: str, user: str) -> str:
    """The ALTER ... OWNER TO `user` of a reach() object ('function f(int)', 'operator class s.c using btree')."""
    kind = next(k for k in sorted(_ALTER, key=len, reverse=True) if what.startswith(k + " "))
    name = what[len(kind) + 1:]
    if kind == "operator class":
        name = " USING ".join(name.rsplit(" using ", 1))
    return f"ALTER {_ALTER[kind]} {name} OWNER TO {ident(user)}"
