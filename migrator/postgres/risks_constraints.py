"""What an ALTER TABLE's constraints scan: ADD CHECK / FOREIGN KEY without NOT VALID, a new column's constraints,
PostgreSQL 18's `ALTER CONSTRAINT ... ENFORCED` (every row checked), and the foreign keys of other tables that a type
change of the column they reference makes PostgreSQL validate again (tablecmds.c, ATAddForeignKeyConstraint: a key
rebuilt after ALTER COLUMN TYPE is checked on every row of its table unless its equality operator stays the same),
each a scan of the referencing table under ACCESS EXCLUSIVE on it. risks.py asks here."""

from __future__ import annotations

from migrator.postgres import risks_pending
from migrator.postgres.risk_kinds import ACCESS_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, Risk

# The validated foreign keys (a partition's copies said once, as the parent's) that reference the column of table
# %(oid)s whose equality operator changes once the column's type is %(type)s: the new one is the member of the new
# type's default btree operator class family (GetDefaultOpClass: a binary-coercible one, the preferred type's first)
# for (the new type, the referencing column's type), else (new, new), as ATAddForeignKeyConstraint picks it.
_REFERENCING = """
SELECT c.conname, n.nspname, r.relname FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_class r ON r.oid = c.conrelid JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
JOIN pg_catalog.pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attname = %(column)s AND NOT pa.attisdropped
WHERE c.contype = 'f' AND c.confrelid = %(oid)s AND c.conparentid = 0 AND c.convalidated AND EXISTS (
  SELECT FROM pg_catalog.generate_subscripts(c.confkey, 1) k(i)
  JOIN pg_catalog.pg_attribute fa ON fa.attrelid = c.conrelid AND fa.attnum = c.conkey[k.i]
  WHERE c.confkey[k.i] = pa.attnum AND c.conpfeqop[k.i] IS DISTINCT FROM (
    SELECT o.amopopr FROM pg_catalog.pg_opclass oc JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
    JOIN pg_catalog.pg_type ot ON ot.oid = oc.opcintype
    JOIN pg_catalog.pg_amop o ON o.amopfamily = oc.opcfamily AND o.amopstrategy = 3 AND o.amoplefttype = oc.opcintype
     AND o.amoprighttype IN (fa.atttypid, oc.opcintype)
    WHERE am.amname = 'btree' AND oc.opcdefault AND (oc.opcintype = %(type)s OR EXISTS (
      SELECT FROM pg_catalog.pg_cast k WHERE k.castsource = %(type)s AND k.casttarget = oc.opcintype
      AND k.castmethod = 'b'))
    ORDER BY oc.opcintype = %(type)s DESC, ot.typispreferred DESC, o.amoprighttype = fa.atttypid DESC LIMIT 1))
ORDER BY 2, 3, 1
"""
# A constraint already enforced (PostgreSQL 18's conenforced): ALTER CONSTRAINT ... ENFORCED of it does nothing.
_ENFORCED = """
SELECT (pg_catalog.to_jsonb(c) OPERATOR(pg_catalog.->>) 'conenforced')::pg_catalog.bool
FROM pg_catalog.pg_constraint c WHERE c.conrelid = %s AND c.conname = %s
"""


def referenced(live, seen, oid: int, column: str, new_type: int | None, what: str, line: int):
    """The foreign keys of other tables (and the table's own) that reference the live column `column` of table `oid`
    and are validated again by its type change to `new_type` (its stored type's oid; None: unknown, every one)."""
    for conname, schema, table in live._rows(_REFERENCING, {"oid": oid, "column": column, "type": new_type or 0}):
        if not seen.is_new((schema, table), live):
            yield Risk(line, (schema, table), f"{what} (foreign key {conname} of {table} references the column and is "
                                              "validated again: the key's equality operator changes)", "scans",
                       ACCESS_EXCLUSIVE, "referenced type")


def enforced(cmd, name, line: int, live, seen):
    """PostgreSQL 18's `ALTER CONSTRAINT c ENFORCED` of a constraint not enforced (live, or added by a pending
    statement): every row is checked under ACCESS EXCLUSIVE."""
    constraint = cmd.def_
    if not (getattr(constraint, "alterEnforceability", False) and constraint.is_enforced) or seen.is_new(name, live):
        return
    table = live.table(name)
    if table is None or live.connection.info.server_version < 180000:
        return  # (before 18 the server rejects the statement itself)
    row = live._rows(_ENFORCED, (table[0], constraint.conname))
    if row and row[0][0]:
        return  # already enforced: nothing to check
    yield Risk(line, name, f"ALTER CONSTRAINT {constraint.conname} ENFORCED", "scans", ACCESS_EXCLUSIVE, "enforce")


def add_constraint(constraint, name, key, line: int, seen, new: bool):
    """ADD CHECK / FOREIGN KEY without NOT VALID scan every row; ADD PRIMARY KEY / UNIQUE / EXCLUDE without USING
    INDEX builds an index of them; a CHECK's NOT NULL proof noted in `seen`."""
    from pglast import enums

    kinds = enums.ConstrType
    if constraint.contype == kinds.CONSTR_CHECK:
        columns = risks_pending.not_null_columns(constraint.raw_expr)
        if columns and constraint.conname:
            seen.checks[(key, constraint.conname)] = columns
        if constraint.skip_validation:
            return
        seen.checked.add(key)
        seen.not_null.setdefault(key, set()).update(columns)
        if not new:
            yield Risk(line, name, f"ADD {'CONSTRAINT ' + constraint.conname + ' ' if constraint.conname else ''}"
                                   "CHECK without NOT VALID", "scans", ACCESS_EXCLUSIVE, "check")
    elif constraint.contype == kinds.CONSTR_FOREIGN and not constraint.skip_validation and not new:
        yield Risk(line, name, f"ADD {'CONSTRAINT ' + constraint.conname + ' ' if constraint.conname else ''}"
                               "FOREIGN KEY without NOT VALID", "scans", SHARE_ROW_EXCLUSIVE, "foreign key")
    elif (constraint.contype in (kinds.CONSTR_PRIMARY, kinds.CONSTR_UNIQUE, kinds.CONSTR_EXCLUSION)
          and not constraint.indexname and not new):
        what = {kinds.CONSTR_PRIMARY: "PRIMARY KEY", kinds.CONSTR_UNIQUE: "UNIQUE"}.get(constraint.contype, "EXCLUDE")
        yield Risk(line, name, f"ADD {what} without USING INDEX", "builds an index on", ACCESS_EXCLUSIVE, "key")


def column_constraints(column, name, line: int):
    """ADD COLUMN ... UNIQUE / PRIMARY KEY builds an index of every row, ... CHECK / REFERENCES scans them, all
    under the ADD COLUMN's ACCESS EXCLUSIVE lock."""
    from pglast import enums

    kinds = enums.ConstrType
    for constraint in column.constraints or ():
        if constraint.contype in (kinds.CONSTR_PRIMARY, kinds.CONSTR_UNIQUE):
            what = "PRIMARY KEY" if constraint.contype == kinds.CONSTR_PRIMARY else "UNIQUE"
            yield Risk(line, name, f"ADD COLUMN {column.colname} {what}", "builds an index on", ACCESS_EXCLUSIVE,
                       "key")
        elif constraint.contype == kinds.CONSTR_CHECK and not constraint.skip_validation:
            yield Risk(line, name, f"ADD COLUMN {column.colname} CHECK (...)", "scans", ACCESS_EXCLUSIVE, "check")
        elif constraint.contype == kinds.CONSTR_FOREIGN and not constraint.skip_validation:
            yield Risk(line, name, f"ADD COLUMN {column.colname} REFERENCES", "scans", ACCESS_EXCLUSIVE,
                       "foreign key")
