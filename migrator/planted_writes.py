"""The tables the migration user's own string-bodied code writes, wherever they live (attack23z 7): an own trigger
function writing `audit.log` in another own schema, an own DEFAULT wrapper's INSERT (a pending file's DO blocks and
routines: pending_writes.py). A write runs the table's implicit code as the writer,
so each such table gets the check of a table a pending file writes (planted.WRITTEN: another owner, another role's
trigger or TRIGGER right, implicit code another role owns, through partitions and FK cascades), and the user's own
string-bodied functions its implicit code reaches (its own trigger's, a DEFAULT wrapper) are read in turn
(planted_bodies.reached)."""

from __future__ import annotations

from migrator import lazy_re, planted
from migrator.grant_text import ident
from migrator.planted_code import USES, reach

_ORDER = "\nORDER BY 1, 4, 5\n"
assert "\nSELECT w.i," in planted.WRITTEN and planted.WRITTEN.endswith(_ORDER), "planted.WRITTEN changed"
# planted.WRITTEN and, kind 'own', [via, oid] of the user's own string-bodied functions the tables' implicit code
# reaches (their triggers' functions among it): planted_bodies reads those bodies
WRITES = planted.WRITTEN.replace("\nSELECT w.i,", f",\nown AS {reach('w', planted.OWNER_OK, own=True)}\nSELECT w.i,", 1)
WRITES = WRITES[:-len(_ORDER)] + """
UNION ALL SELECT DISTINCT w.i, w.oid::pg_catalog.regclass::text, '', 'own', h.via, h.o::pg_catalog.text
    FROM w JOIN own h ON h.tbl = w.oid""" + _ORDER
_NAMED = "pg_catalog.to_regclass(w.name)"
assert _NAMED in WRITES, "planted.WRITTEN changed: resolve a path's $user as the server does"
WRITES = WRITES.replace(_NAMED, """pg_catalog.to_regclass(pg_catalog.replace(w.name, '"$user".',
    pg_catalog.quote_ident(CURRENT_USER::pg_catalog.text) || '.'))""")
_ENTRY = lazy_re.compile(r'\s*("(?:[^"]|"")*"|[^,\s]+)\s*(?:,|$)')


def targets(named: set, path: str | None) -> list[tuple[str, str]]:
    """(schema, table) of the tables a body writes (planted_bodies.calls' ('w', schema, name)): a qualified name as
    written; an unqualified one in each schema of the function's own search_path (`path`) and of the literal paths
    its body sets, any of which may be in effect (the session's: its tables are checked already)."""
    paths = [*([path] if path is not None else ()), *(setting for kind, _, setting in named if kind == "p")]
    schemas = [entry[1:-1].replace('""', '"') if entry.startswith('"') else entry.lower()
               for p in paths for entry in _ENTRY.findall(p)]
    return [(schema, name) if schema else (where, name) for kind, schema, name in sorted(named, key=str) if kind == "w"
            for where in ([schema] if schema else dict.fromkeys(schemas))]


def checked(execute, writes: dict[tuple[str, str], str], found: list) -> list:
    """`writes`: {(schema, table): what writes it}. Adds [owner, words] (as planted's state[12]) of what another
    role may run on those writes to `found`; returns planted_bodies' wanted entries of the user's own functions to
    read in turn."""
    if not writes:
        return []
    names = [f"{ident(schema)}.{ident(table)}" for schema, table in writes]
    via = list(writes.values())
    following = []
    for i, table, role, kind, detail, what in execute(WRITES, {"names": names}).fetchall():
        said = f"{via[i - 1]} writes table {table}"
        if kind == "own":
            following.append(("f", None, None, int(what), f"{said}, whose {detail}", None))
        elif kind == "code":
            found.append([role, f"{said}, whose {detail}{USES}{what}"])
        elif kind == "trigger":
            found.append([role, f"{said}, whose trigger {detail}) runs as the writer"])
        elif kind == "right":
            found.append([role, f"{said}, on which role {role} may add triggers (a TRIGGER right)"])
        else:
            found.append([role, f"{said}, owned by role {role}, which may add triggers, rules or policies to it"])
    return following
