"""Risks of statements on other objects than a table's own columns: a materialized view's REFRESH (the view
rebuilt), a domain's new constraint (checked on every table with a column of it), a partition's ATTACH (its rows
checked against the bound), a new partition's bound (the DEFAULT partition's rows checked against it), an index's or
a whole tablespace's move to another tablespace (each file copied). risks.py finds them with the rest; the live
answers come from rewrites._Live."""

from __future__ import annotations

from migrator.postgres import risks_pending
from migrator.postgres.risk_kinds import ACCESS_EXCLUSIVE, SHARE, Risk


def refresh(tree, line: int, name):
    """REFRESH MATERIALIZED VIEW without CONCURRENTLY rebuilds the view under ACCESS EXCLUSIVE (WITH NO DATA only
    empties it)."""
    if not tree.concurrent and not tree.skipData:
        yield Risk(line, name, "REFRESH MATERIALIZED VIEW without CONCURRENTLY", "rewrites", ACCESS_EXCLUSIVE,
                   "refresh")


def alter_domain(tree, line: int, live, seen):
    """ALTER DOMAIN ... ADD CONSTRAINT without NOT VALID, or SET NOT NULL: every table with a column of the domain
    is scanned under SHARE (writes wait)."""
    from pglast import ast, enums

    constraint = tree.def_
    if tree.subtype == "C" and constraint is not None and not constraint.skip_validation \
            and constraint.contype in (enums.ConstrType.CONSTR_CHECK, enums.ConstrType.CONSTR_NOTNULL):
        what = f"ADD {'CONSTRAINT ' + constraint.conname + ' ' if constraint.conname else ''}without NOT VALID"
    elif tree.subtype == "O":  # (SET NOT NULL; "N" is DROP NOT NULL, which scans nothing: attack24r 12)
        what = "SET NOT NULL"
    else:
        return
    names = [n.sval for n in risks_pending.live_type(seen, ast.TypeName(names=tree.typeName)).names]
    for table in risks_pending.catalog(seen, live.domain_tables(names)):
        if not seen.is_new(table, live):
            yield Risk(line, table, f"ALTER DOMAIN {'.'.join(names)} {what}", "scans", SHARE, "domain")


def attach(cmd, line: int, live, seen, partition):
    """ATTACH PARTITION scans the attached table's rows against the bound under ACCESS EXCLUSIVE on it, unless a
    validated CHECK constraint of it implies the bound. Judged: any validated CHECK of the table (live, or added
    validated / VALIDATEd by an earlier pending statement) is taken as that one; the server decides if it implies."""
    if seen.is_new(partition, live) or live.key(partition) in seen.checked:
        return
    table = live.table(partition)
    if table is None or live.has_validated_check(table[0]):
        return
    yield Risk(line, partition, f"ATTACH PARTITION {partition[1]} without a validated CHECK implying its bound",
               "scans", ACCESS_EXCLUSIVE, "attach")


def default_scan(bound, parent, line: int, live, seen, what: str):
    """A new partition (CREATE TABLE ... PARTITION OF, ATTACH PARTITION) of a parent with a DEFAULT partition: the
    server scans the DEFAULT partition's rows for any of the new range, under ACCESS EXCLUSIVE, unless a validated
    CHECK of it excludes the range (any validated CHECK of it is taken as that one, as for attach)."""
    if bound is None or bound.is_default or seen.is_new(parent, live):
        return
    table = live.table(parent)
    default = table and live.default_partition(table[0])
    default = default and risks_pending.catalog(seen, [default])[0]
    if not default or seen.is_new(default, live) or live.key(default) in seen.checked:
        return
    found = live.table(default)
    if found is None or live.has_validated_check(found[0]):
        return
    yield Risk(line, default, f"{what} (a new partition of {parent[1]}) without a validated CHECK on the DEFAULT "
                              "partition excluding its range", "scans", ACCESS_EXCLUSIVE, "default partition")


def index_tablespace(tree, line: int, live, seen):
    """ALTER INDEX ... SET TABLESPACE copies the index's file under ACCESS EXCLUSIVE on it (every query planned on
    its table waits), as ALTER TABLE ... SET TABLESPACE copies the table's."""
    from pglast import enums

    for cmd in tree.cmds:
        if cmd.subtype == enums.AlterTableType.AT_SetTableSpace:
            for table in risks_pending.catalog(seen, live.table_of_index((tree.relation.schemaname or None,
                                                                          tree.relation.relname))):
                yield Risk(line, table, f"ALTER INDEX {tree.relation.relname} SET TABLESPACE {cmd.name}",
                           "copies an index of", ACCESS_EXCLUSIVE, "logged")


def move_all(tree, line: int, live, seen):
    """ALTER TABLE / INDEX / MATERIALIZED VIEW ALL IN TABLESPACE ... SET TABLESPACE: each one of the tablespace
    copied (OWNED BY not read: all of them judged)."""
    from pglast import enums

    kind = {enums.ObjectType.OBJECT_INDEX: "INDEX", enums.ObjectType.OBJECT_MATVIEW: "MATERIALIZED VIEW"}.get(
        tree.objtype, "TABLE")
    what = f"ALTER {kind} ALL IN TABLESPACE {tree.orig_tablespacename} SET TABLESPACE {tree.new_tablespacename}"
    for table in risks_pending.catalog(seen, live.in_tablespace(tree.orig_tablespacename, {
            "TABLE": "r", "INDEX": "i"}.get(kind, "m"))):
        yield Risk(line, table, what, "copies an index of" if kind == "INDEX" else "rewrites", ACCESS_EXCLUSIVE,
                   "logged")


# The table's tablespace is the one named (the database's default is reltablespace 0): SET TABLESPACE moves nothing.
_TABLESPACE_NOW = """
SELECT c.reltablespace = (SELECT CASE WHEN s.oid = d.dattablespace THEN 0 ELSE s.oid END FROM pg_catalog.pg_tablespace s
                          JOIN pg_catalog.pg_database d ON d.datname = pg_catalog.current_database()
                          WHERE s.spcname = %(name)s)
FROM pg_catalog.pg_class c WHERE c.oid = %(oid)s
"""
# The typed tables (CREATE TABLE t OF type) of the composite type found on the path.
_TYPED_TABLES = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.reloftype = (
  SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
  WHERE t.typname = %(name)s AND tn.nspname = ANY(%(path)s)
  ORDER BY pg_catalog.array_position(%(path)s, tn.nspname::text) LIMIT 1)
ORDER BY 1, 2
"""


def in_tablespace_now(live, name, tablespace: str) -> bool:
    """The live table is in `tablespace` already: its SET TABLESPACE is a no-op."""
    table = live.table(name)
    row = table and live._rows(_TABLESPACE_NOW, {"oid": table[0], "name": tablespace})
    return bool(row and row[0][0])


def altered_attribute(tree, line: int, live, seen, retype):
    """ALTER TYPE ... ALTER ATTRIBUTE ... TYPE (CASCADE): each typed table of the type changes its column's type as
    ALTER COLUMN TYPE does (`retype`: risks.retype)."""
    from pglast import enums
    from pglast.stream import RawStream

    for cmd in tree.cmds:
        if cmd.subtype != enums.AlterTableType.AT_AlterColumnType:
            continue
        what = (f"ALTER TYPE {tree.relation.relname} ALTER ATTRIBUTE {cmd.name} TYPE {RawStream()(cmd.def_.typeName)} "
                "(its typed table's column)")
        for table in live._rows(_TYPED_TABLES, {"name": tree.relation.relname, "path": [
                tree.relation.schemaname] if tree.relation.schemaname else live.path}):
            if seen.is_new(tuple(table), live):
                continue
            for risk in retype(cmd, tuple(table), line, live, seen, what):
                risk.kind = "typed table" if risk.kind == "type" else risk.kind  # (no column can be added to it)
                yield risk
