"""The migration user's own routines that set search_path (attack23y 1): a routine made earlier with its own SET
search_path clause, or a `SET [LOCAL] search_path` / set_config('search_path', ...) in its body, runs what it calls
under that path whenever a pending file calls it (SELECT, CALL) or a write fires it as a trigger: the statement naming
it shows nothing of the path. So at the connect check every such routine of the user's in the checked schemas (the
migrated one and those on the session's path) is read, by the reader of pending bodies (body_paths), and the schemas
its literal paths name are held to the planted rule, as a pending file's literal path is. The reading fails closed
(attack23z 1-3): a change it does not read positively (set_config with a computed or cast-cut value, an EXECUTE of a
built string, another language, a body its parser does not read) may name any schema the user can reach, so it is
refused while one of them is another role's to create in or holds what another role owns (as a pending file's).
"""

from __future__ import annotations

import re

from migrator.grant_text import ident
from migrator.planted import PATH
from migrator import planted_bodies

# Only the routines whose SET clause or body may set the path are parsed (body_paths.STORED_MAY_SET; every routine in a
# language not read). (300 own routines, 150 with a SET clause, 100 with a literal set_config, 50 with an EXECUTE
# format: this reading 250-280 ms, ceb1e1b's fail-open one 140-170 ms.)
_SETTING = f"""WITH path(w) AS MATERIALIZED {PATH}
SELECT CASE WHEN f.prokind = 'p' THEN 'procedure ' ELSE 'function ' END || f.oid::pg_catalog.regprocedure::text,
       CASE WHEN l.lanname IN ('c', 'internal') OR l.lanname IN ('sql', 'plpgsql') AND CASE WHEN f.prosrc = ''
           THEN pg_catalog.pg_get_functiondef(f.oid) ELSE f.prosrc END !~* :names THEN NULL
           ELSE pg_catalog.pg_get_functiondef(f.oid) END,
       (SELECT pg_catalog.substr(c, 13) FROM pg_catalog.unnest(f.proconfig) c
        WHERE pg_catalog.starts_with(c, 'search_path='))
FROM pg_catalog.pg_proc f JOIN pg_catalog.pg_language l ON l.oid = f.prolang
WHERE f.oid >= 16384 AND f.proowner IN {planted_bodies.OWNERS}
    AND (f.pronamespace IN (SELECT x.oid FROM pg_catalog.pg_namespace x WHERE x.nspname = :s OR x.nspname <> 'pg_catalog'
        AND x.nspname IN {planted_bodies.IN("path")}) OR f.oid = ANY (CAST(:roots AS pg_catalog.oid[])))
    AND (EXISTS (SELECT FROM pg_catalog.unnest(f.proconfig) c WHERE pg_catalog.starts_with(c, 'search_path='))
         OR l.lanname NOT IN ('c', 'internal', 'sql', 'plpgsql') OR l.lanname IN ('sql', 'plpgsql')
            AND CASE WHEN f.prosrc = '' THEN pg_catalog.pg_get_functiondef(f.oid) ELSE f.prosrc END ~* :names)
ORDER BY 1"""
_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")  # (a name shown as written; any other quoted, as the server reads it)
# Every schema the user can reach, as a path: what a change not read may put on it (file_paths._REACHABLE's)
_REACHABLE = """SELECT pg_catalog.string_agg(pg_catalog.quote_ident(x.nspname), ', ' ORDER BY x.nspname)
FROM pg_catalog.pg_namespace x WHERE x.nspname !~ '^pg_' AND x.nspname <> 'information_schema'
    AND pg_catalog.has_schema_privilege(x.oid, 'USAGE')"""


def read(backend, schema: str, roots: list[int] = ()) -> list[tuple[str, str | None, list[str], list[str]]]:
    """(routine, its SET clause's path or None, the schemas its body's literal paths name, why a change in its body is
    not read) of the user's own routines in the checked schemas, or among `roots` (those the tables' implicit code
    reaches: a trigger's function in any schema), that may set the path."""
    from migrator import body_paths

    found = []
    for what, definition, own in backend.execute(_SETTING, {"s": schema, "names": body_paths.STORED_MAY_SET,
                                                           "roots": list(roots)}).fetchall():
        changes = body_paths.stored(definition) if definition is not None else body_paths.Changes()
        found.append((what, own, changes.schemas, changes.unread))
    return found


def found(backend, schema: str, planted_query: str, roots: list[int] = ()) -> list[list[str]]:
    """[role, words] (as planted's state[12]) of what others may plant in the schemas the user's own routines' paths
    name, or may name (a change not read: every schema the user can reach)."""
    said: list[list[str]] = []
    on_path = planted_bodies.path_reader(backend, planted_query)
    reachable = None
    for what, own, schemas, unread in read(backend, schema, roots):
        settings = [(own, "its SET clause")] * (own is not None)
        settings += [(", ".join(n if _PLAIN.fullmatch(n) else ident(n) for n in schemas), "its body")] * bool(schemas)
        for path, how in settings:
            said += [[role, f"{what} sets search_path ({path}) in {how}, so what a call of it resolves there runs as "
                      f"the caller: {words}"] for role, words in on_path(path)]
        if unread:
            reachable = reachable or backend.execute(_REACHABLE).fetchone()[0] or ""
            said += [[role, f"{what} may set search_path by {unread[0]} in its body, which cannot be read before the "
                      "run, so what a call of it resolves may be in any schema the user can reach: "
                      f"{words} (write the path as a literal SET search_path TO ...)"]
                     for role, words in on_path(reachable)]
    return said


def with_paths(backend, state: tuple, schema: str, planted_query: str) -> tuple:
    """`state` (trust.bookkeeping_state's, with planted.COLUMNS) with found()'s added to state[12]."""
    if len(state) < 17:
        return state
    roots = [int(oid) for oid, _ in state[16] or ()]
    more = [entry for entry in found(backend, schema, planted_query, roots) if entry not in state[12]]
    return (*state[:12], [*state[12], *more], *state[13:]) if more else state
