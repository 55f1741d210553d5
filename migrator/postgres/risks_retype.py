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
  options, PGTZ, the role's and the database's settings: read, not assumed; unknown once an earlier pending file's
  ALTER DATABASE / ROLE ... SET timezone changed them), or the file's own SET TIME ZONE before the statement.
- Rows kept, each index keyed on the column whose operator class or collation changes is still built again under the
  ALTER's ACCESS EXCLUSIVE lock (risks_keyed): timestamp -> timestamptz, text -> citext, a "C" column widened.
- A USING that is more than the column (cast to the new type) computes every row.
"""

from __future__ import annotations

import re

from migrator import lazy_re
from migrator.postgres import risks_keyed, risks_pending, risks_types

TIMESTAMPS = {1114, 1184}  # timestamp, timestamptz: pg_type oids fixed in every PostgreSQL
# A type named in a file, found on the migration's search_path (the element's array type for `x[]`).
_NAMED = """
SELECT CASE WHEN %(array)s THEN t.typarray ELSE t.oid END, t.typcollation
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
# The zones whose offset is zero at every time (tzdata's UTC aliases), and POSIX specs of a zero offset, no DST
# (`UTC0`, `<+00>-00`: what SET TIME ZONE 0 shows); any other zone converts the stored values.
_UTC = frozenset(f"{prefix}{name}" for prefix in ("", "etc/") for name in (
    "utc", "uct", "gmt", "gmt0", "gmt+0", "gmt-0", "greenwich", "universal", "zulu"))
_ZERO_POSIX = lazy_re.compile(r"(?:[a-z]{3,}|<[^<>]+>)[+-]?0{1,2}(?::0{1,2}){0,2}", re.IGNORECASE)
# Statements that may set the session's TimeZone (read with the parser: `SET "TimeZone"`, U&"..." are the same
# setting), those that set it for the later files' fresh sessions, and set_config, whose value is not read.
_SETS_ZONE = lazy_re.compile(r"\s*(?:set|reset)\b", re.IGNORECASE)
_SETS_SESSIONS = lazy_re.compile(r"\s*alter\s+(?:database|role|user)\b", re.IGNORECASE)
_CREATES_COLLATION = lazy_re.compile(r"\s*create\s+collation\b", re.IGNORECASE)
_CONFIG_ZONE = lazy_re.compile(r"\bset_config\b.*\btime\s*zone\b", re.IGNORECASE | re.DOTALL)
# a SET of the zone inside a statement the judge does not read (a DO block's EXECUTE 'SET TIME ZONE ...')
_INNER_ZONE = lazy_re.compile(r"\bset\s+(?:session\s+|local\s+)?(?:time\s+zone\b|\"?timezone\b)", re.IGNORECASE)
_DEFINES = lazy_re.compile(r"\s*(?:create|alter)\b", re.IGNORECASE)  # (a function's own SET, or its body: not run)


def rewrites_type(live, seen, oid: int, column: str, type_name, using, collation,
                  key=None) -> tuple[str, str] | None:
    """ALTER COLUMN TYPE of the live column `column` of table `oid` (key `key`): (what it does, why) when it rewrites
    the rows ("rewrites") or builds indexes keyed on it again (their operator class or collation changes:
    risks_keyed); None when the rows and those indexes stay (what else depends on the column is then judged by
    risks_types.retyped)."""
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
    named = _named(live, type_name)  # (the column's new type as the catalog will say it: a live domain's own oid)
    new_collation = (risks_keyed.collation(live, seen, [n.sval for n in collation.collname]) if collation is not None
                     else _type_collation(live, seen, type_name, 0))
    indexes, what = risks_keyed.rebuilt(live, seen, oid, column, key, (found[0], found[4]),
                                        (named[0] if named else new_oid, new_collation))
    if indexes:
        return (f"rebuilds index(es) {indexes} of", f" (no rewrite{' in TimeZone ' + zone if zone else ''}, but each "
                f"index on it is built again: its {what} change{'' if ' and ' in what else 's'})")
    return None


def target(live, seen, type_name) -> tuple[int, str, list[int]] | None:
    """(oid, name, typmods) of the type a column of `type_name` is stored as (a domain's base type), or None."""
    return _target(live, seen, type_name, 0)


def _named(live, type_name) -> tuple[int, int] | None:
    """(oid, collation) of the live type a file names (found on the migration's search_path), or None."""
    names = [n.sval for n in type_name.names]
    path = names[-2:-1] or ["pg_catalog"] * ("pg_catalog" not in live.path) + live.path
    row = live._rows(_NAMED, {"name": names[-1], "path": path, "array": bool(type_name.arrayBounds)})
    return tuple(row[0]) if row and row[0][0] is not None else None


def _type_collation(live, seen, type_name, depth: int):
    """The collation a column takes from its new type without a COLLATE clause: the type's own (a domain's, given by
    its CREATE DOMAIN ... COLLATE, else its base type's), a pending domain's read from its text."""
    names = [n.sval for n in type_name.names]
    pending, live_too = ([], True) if type_name.arrayBounds else risks_pending.pending_domain(
        seen.domain_types, names, live, seen)
    if pending and depth < 100:
        if live_too or len(pending) > 1:
            return None  # (which domain the name means is not known: _target says so first)
        own = risks_pending.pending_domain(seen.domain_collations, names, live, seen)[0]
        return risks_keyed.collation(live, seen, own[0]) if own else _type_collation(live, seen, pending[0], depth + 1)
    named = _named(live, type_name)
    return named[1] if named else None


def _target(live, seen, type_name, depth: int) -> tuple[int, str, list[int]] | None:
    """(oid, name, typmods) of the type a column is stored as once it has `type_name`: a domain's base type (one a
    pending CREATE DOMAIN makes, from its text); None when the type is found nowhere."""
    names = [n.sval for n in type_name.names]
    pending, live_too = ([], True) if type_name.arrayBounds else risks_pending.pending_domain(
        seen.domain_types, names, live, seen)
    if pending and (live_too or len(pending) > 1):
        return None  # a pending domain of that name in another schema, or the live one: not known which (a rewrite)
    if pending and depth < 100:
        return _target(live, seen, pending[0], depth + 1)
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
        "the session's", seen.session_zone or live.setting("TimeZone"))
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


def read(bare: str, text: str, seen) -> None:
    """Note what a pending statement gives the type changes after it: the TimeZone (read_setting), a collation a
    CREATE COLLATION makes, the collation a CREATE DOMAIN ... COLLATE gives its domain."""
    if _CREATES_COLLATION.match(bare) or risks_types.DOMAIN_HINT.match(bare):
        from pglast import ast, enums

        for tree in _trees(text):
            if isinstance(tree, ast.DefineStmt) and tree.kind == enums.ObjectType.OBJECT_COLLATION:
                seen.collations.add(tree.defnames[-1].sval)
            elif isinstance(tree, ast.CreateDomainStmt) and tree.collClause is not None:
                seen.domain_collations[risks_pending.domain_key([n.sval for n in tree.domainname], seen)] = [
                    n.sval for n in tree.collClause.collname]
    elif _SETS_SESSIONS.match(bare):
        from pglast import ast, enums

        for tree in _trees(text):
            setting = getattr(tree, "setstmt", None) if isinstance(tree, (ast.AlterDatabaseSetStmt,
                                                                           ast.AlterRoleSetStmt)) else None
            if setting is not None and ((setting.name or "").lower() == "timezone"
                                        or setting.kind == enums.VariableSetKind.VAR_RESET_ALL):
                seen.next_session_zone = "(set by ALTER DATABASE / ROLE in an earlier pending file)"
    else:
        read_setting(bare, text, seen)


def _trees(text: str) -> list:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return []


def read_setting(bare: str, text: str, seen) -> None:
    """Note the TimeZone a statement of the file gives the statements after it in its session: SET [SESSION | LOCAL]
    TIME ZONE / timezone (any case, quoted or not), RESET or SET ... DEFAULT (the session's again); set_config, an
    INTERVAL, or SET LOCAL in a non-transactional file (its own transaction blocks are not followed) give a zone not
    read, as does a DO block (or any other statement) whose text sets it (EXECUTE 'SET TIME ZONE ...'): never taken
    for UTC."""
    if _CONFIG_ZONE.search(bare):
        seen.timezone = "(set by set_config)"
        return
    if not _SETS_ZONE.match(bare):
        if _INNER_ZONE.search(bare) and not _DEFINES.match(bare):
            seen.timezone = "(set inside a statement the judge does not read)"
        return
    from pglast import ast, enums

    kinds = enums.VariableSetKind
    for tree in _trees(text):
        if not isinstance(tree, ast.VariableSetStmt) or (tree.name or "timezone").lower() != "timezone":
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
