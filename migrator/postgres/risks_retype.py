"""Whether ALTER COLUMN TYPE rewrites a table's rows, by PostgreSQL's own rule (tablecmds.c,
ATColumnChangeRequiresRewrite): the rows are kept when every stored value stays as it is.

- The same type whose limit only grows (varchar(n) -> varchar(m >= n), numeric(p, s) -> numeric(q >= p, s)...), or a
  binary-coercible one with no limit (varchar -> text: a relabel; text -> varchar(n) checks every row).
- A domain with no CHECK or NOT NULL (its own or a base domain's, live or given by a pending statement) is read as the
  type it is based on, with its limit: a column becomes it as it would that type. A column of a domain is read as
  the base type without a limit (so leaving it for varchar(n) checks every row: a rewrite; for text or varchar, a
  relabel). A domain with a constraint checks every row (a rewrite).
- timestamp <-> timestamptz (PostgreSQL 12+, no precision or 6) when the statement's TimeZone is UTC or another fixed
  zero offset (the stored values are the same): the one a fresh session of the run starts with (the connection's
  options, PGTZ, the role's and the database's settings: read, not assumed), or the file's own SET TIME ZONE before
  the statement. Each index keyed on the column is built again then (its operator class changes, CheckIndexCompatible)
  under the ALTER's ACCESS EXCLUSIVE lock.
- A USING that is more than the column (cast to the new type) computes every row.
"""

from __future__ import annotations

import re

from migrator import lazy_re
from migrator.postgres import risks_types

TIMESTAMPS = {1114, 1184}  # timestamp, timestamptz: pg_type oids fixed in every PostgreSQL
# A type named in a file, found on the migration's search_path (the element's array type for `x[]`).
_NAMED = """
SELECT CASE WHEN %(array)s THEN t.typarray ELSE t.oid END
FROM pg_catalog.unnest(%(path)s::pg_catalog.text[]) WITH ORDINALITY p(s, o)
JOIN pg_catalog.pg_namespace n ON n.nspname = p.s JOIN pg_catalog.pg_type t ON t.typnamespace = n.oid
WHERE t.typname = %(name)s ORDER BY p.o LIMIT 1
"""
# The type a value of type `oid` (typmod `typmod`) is stored as: a domain's base type, with the typmod of the last
# domain over it (getBaseTypeAndTypmod); a type that is no domain, itself.
_BASE = """
WITH RECURSIVE chain(oid, typmod, depth) AS (SELECT %(oid)s::pg_catalog.oid, %(typmod)s::pg_catalog.int4, 0
  UNION ALL SELECT t.typbasetype, t.typtypmod, c.depth + 1 FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid
  WHERE t.typtype = 'd' AND c.depth < 100)
SELECT c.oid, c.typmod, t.typname, pg_catalog.format_type(c.oid, c.typmod)
FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid WHERE t.typtype <> 'd'
"""
_BINARY = "SELECT 1 FROM pg_catalog.pg_cast WHERE castsource = %s AND casttarget = %s AND castmethod = 'b'"
_COLLATION = "SELECT %s::pg_catalog.regcollation::pg_catalog.oid"  # resolved on the file's path
# Indexes keyed on the column (an INCLUDE column has no operator class) of the table and of each partition / child.
_KEYED = risks_types._TREE + """
SELECT ic.relname, r.relname, i.indrelid <> %(oid)s, (SELECT p.relname FROM pg_catalog.pg_inherits h
  JOIN pg_catalog.pg_class p ON p.oid = h.inhparent WHERE h.inhrelid = i.indexrelid)
FROM pg_catalog.pg_index i JOIN tree ON tree.oid = i.indrelid
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid AND ic.relkind = 'i'
JOIN pg_catalog.pg_class r ON r.oid = i.indrelid
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attname = %(column)s AND NOT a.attisdropped
WHERE a.attnum = ANY((i.indkey::pg_catalog.int2[])[0:i.indnkeyatts - 1])
"""
# The zones whose offset is zero at every time (tzdata's UTC aliases), and POSIX specs of a zero offset, no DST
# (`UTC0`, `<+00>-00`: what SET TIME ZONE 0 shows); any other zone converts the stored values.
_UTC = frozenset(f"{prefix}{name}" for prefix in ("", "etc/") for name in (
    "utc", "uct", "gmt", "gmt0", "gmt+0", "gmt-0", "greenwich", "universal", "zulu"))
_ZERO_POSIX = lazy_re.compile(r"(?:[a-z]{3,}|<[^<>]+>)[+-]?0{1,2}(?::0{1,2}){0,2}", re.IGNORECASE)
# Statements that set the session's TimeZone (read with the parser), and set_config, whose value is not read.
_SETS_ZONE = lazy_re.compile(r"\s*(?:set\s+(?:session\s+|local\s+)?(?:time\s+zone|timezone)|"
                             r"reset\s+(?:timezone|all))\b", re.IGNORECASE)
_CONFIG_ZONE = lazy_re.compile(r"\bset_config\b.*\btime\s*zone\b", re.IGNORECASE | re.DOTALL)


def rewrites_type(live, seen, oid: int, column: str, type_name, using, collation) -> tuple[str, str] | None:
    """ALTER COLUMN TYPE of the live column `column` of table `oid`: (what it does, why) when it rewrites the rows
    ("rewrites") or builds indexes again; None when the rows and indexes stay (what depends on the column is then
    judged by risks_types.retyped)."""
    found = live.column(oid, column)
    if found is None:
        return "rewrites", ""  # a column a pending statement added: retyping it rewrites the live table's rows
    if using is not None and not _same_value(using, column, type_name):
        return "rewrites", ""  # USING: an expression per row
    if risks_types.constrained_domain(type_name, live, seen):
        return "rewrites", " (a domain with a CHECK or NOT NULL: every value is checked)"
    new = _target(live, seen, type_name, 0)
    if new is None:
        return "rewrites", ""  # an unknown type: the server will say so
    old_oid, old_mod = live._rows(_BASE, {"oid": found[0], "typmod": -1})[0][0], found[1]  # (a domain column's: -1)
    new_oid, typname, mods = new
    zone = None
    if new_oid == old_oid:
        kept, why = _only_grows(typname, old_mod, mods), ""
    elif {old_oid, new_oid} == TIMESTAMPS:
        kept, why = _zone_keeps(live, seen, mods)
        zone = why if kept else None
    else:  # varchar(n) -> text: a relabel; text -> varchar(n): each row checked
        kept, why = not mods and bool(live._rows(_BINARY, (old_oid, new_oid))), ""
    if not kept:
        return "rewrites", why
    if collation is not None and found[5]:
        live.cursor.execute(_COLLATION, (".".join('"' + n.sval.replace('"', '""') + '"' for n in collation.collname),))
        if live.cursor.fetchone()[0] != found[4]:
            return "rebuilds the indexes of", ""
    if zone is not None:
        indexes = _rebuilt(live, oid, column)
        if indexes:
            return (f"rebuilds index(es) {indexes} of", f" (no rewrite in TimeZone {zone}, but each index on it is "
                                                         "built again: its operator class changes)")
    return None


def _target(live, seen, type_name, depth: int) -> tuple[int, str, list[int]] | None:
    """(oid, name, typmods) of the type a column is stored as once it has `type_name`: a domain's base type (one a
    pending CREATE DOMAIN makes, from its text); None when the type is found nowhere."""
    names = [n.sval for n in type_name.names]
    pending = None if type_name.arrayBounds else seen.domain_types.get(names[-1])
    if pending is not None and depth < 100:
        return _target(live, seen, pending, depth + 1)
    path = names[-2:-1] or ["pg_catalog"] * ("pg_catalog" not in live.path) + live.path
    row = live._rows(_NAMED, {"name": names[-1], "path": path, "array": bool(type_name.arrayBounds)})
    if not row or row[0][0] is None:
        return None
    oid, _, typname, shown = live._rows(_BASE, {"oid": row[0][0], "typmod": -1})[0]
    if oid == row[0][0]:
        return oid, typname, type_name_text(type_name)[1]
    limits = re.findall(r"\((\d+(?:,\d+)*)\)", shown)  # a domain's base limit, as format_type shows it
    return oid, typname, [int(m) for m in limits[-1].split(",")] if limits else []


def _zone_keeps(live, seen, mods: list[int]) -> tuple[bool, str]:
    """timestamp <-> timestamptz: (the values kept, the zone they are kept in or why not)."""
    if mods and mods != [6]:
        return False, ""  # a precision: every value rounded
    if live.connection.info.server_version < 120000:
        return False, " (before PostgreSQL 12 every value is converted)"
    whose, zone = ("the file's", seen.timezone) if seen.timezone is not None else (
        "the session's", live.setting("TimeZone"))
    if utc(zone):
        return True, zone
    return False, f" ({whose} TimeZone {zone} is not UTC: every value is converted)"


def utc(zone: str) -> bool:
    """A TimeZone whose offset is zero at every time (PostgreSQL's TimestampTimestampTzRequiresRewrite: false)."""
    name = zone.strip().lower()
    try:
        return float(name) == 0  # SET TIME ZONE 0 / '+00': a fixed offset in hours
    except ValueError:
        return name in _UTC or bool(_ZERO_POSIX.fullmatch(name))


def _rebuilt(live, oid: int, column: str) -> str:
    """The indexes a type change that changes the column's operator class builds again: those keyed on it, and
    those retyped() names (an expression or a WHERE)."""
    params = {"oid": oid, "column": column}
    rows = set(map(tuple, live._rows(_KEYED, params) + live._rows(risks_types._INDEXES, params)))
    return risks_types._named(sorted(rows, key=lambda r: (r[2], r[1], r[0])))


def read_setting(bare: str, text: str, seen) -> None:
    """Note the TimeZone a statement of the file gives the statements after it in its session: SET [SESSION | LOCAL]
    TIME ZONE / timezone, RESET or SET ... DEFAULT (the session's again); set_config, an INTERVAL, or SET LOCAL in a
    non-transactional file (its own transaction blocks are not followed) give a zone not read: never taken for UTC."""
    if _CONFIG_ZONE.search(bare):
        seen.timezone = "(set by set_config)"
        return
    if not _SETS_ZONE.match(bare):
        return
    from pglast import ast, enums, parse_sql
    from pglast.parser import ParseError

    try:
        trees = [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return
    kinds = enums.VariableSetKind
    for tree in trees:
        if not isinstance(tree, ast.VariableSetStmt) or tree.name not in ("timezone", None):
            continue
        if tree.is_local and not seen.transactional:
            seen.timezone = "(SET LOCAL outside a transaction)"
        elif tree.kind in (kinds.VAR_RESET_ALL, kinds.VAR_RESET, kinds.VAR_SET_DEFAULT):
            seen.timezone = None
        elif tree.kind == kinds.VAR_SET_VALUE:
            value = tree.args[0] if tree.args else None
            found = isinstance(value, ast.A_Const) and next(
                (str(getattr(value.val, a)) for a in ("sval", "ival", "fval") if hasattr(value.val, a)), None)
            seen.timezone = found or "(an interval)"


def type_name_text(type_name) -> tuple[str, list[int]]:
    """('pg_catalog.int8', [typmods]) of a TypeName."""
    from pglast import ast

    names = [n.sval for n in type_name.names]
    text = ".".join(n if re.fullmatch(r"[a-z_][a-z0-9_$]*", n) else '"' + n.replace('"', '""') + '"' for n in names)
    if type_name.arrayBounds:
        text += "[]"
    mods = [m.val.ival for m in type_name.typmods or () if isinstance(m, ast.A_Const) and hasattr(m.val, "ival")]
    return text, mods


def _same_value(using, column: str, type_name) -> bool:
    """USING that is the column itself, or the column cast to the new type: the same as no USING."""
    from pglast import ast

    if isinstance(using, ast.TypeCast):
        if type_name_text(using.typeName) != type_name_text(type_name):
            return False
        using = using.arg
    return (isinstance(using, ast.ColumnRef) and len(using.fields) == 1
            and getattr(using.fields[0], "sval", None) == column)


def _only_grows(typname: str, old_mod: int, new_mods: list[int]) -> bool:
    """Same type: only a typmod that removes or widens the limit keeps the data as it is."""
    if not new_mods:
        return typname in ("varchar", "numeric", "varbit", "timestamp", "timestamptz", "time", "timetz", "interval") \
            or old_mod < 0
    if typname in ("timestamp", "timestamptz", "time", "timetz"):  # (6 digits is all there is: TemporalSimplify)
        return new_mods[0] >= 6 or 0 <= old_mod <= new_mods[0]
    if old_mod < 0:
        return False  # a limit added: every row is checked
    if typname in ("varchar", "varbit", "bit", "bpchar"):
        old = old_mod - 4 if typname in ("varchar", "bpchar") else old_mod
        return new_mods[0] >= old and typname in ("varchar", "varbit")
    if typname == "numeric":
        precision, scale = ((old_mod - 4) >> 16) & 0xFFFF, (old_mod - 4) & 0xFFFF
        return new_mods[0] >= precision and (new_mods[1] if len(new_mods) > 1 else 0) == scale
    return False
