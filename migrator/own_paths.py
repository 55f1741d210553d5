"""The migration user's own routines that set search_path (attack23y 1): a routine made earlier with its own SET
search_path clause, or a literal `SET [LOCAL] search_path` / set_config('search_path', '<path>', ...) in its body,
runs what it calls under that path whenever a pending file calls it (SELECT, CALL) or a write fires it as a trigger:
the statement naming it shows nothing of the path. So at the connect check every such routine of the user's in the
checked schemas (the migrated one and those on the session's path) is read, and the schemas its literal paths name
are held to the planted rule, as a pending file's literal path is. A path an existing body computes (set_config with
a built value, an EXECUTE of a built string, another language) is not read: the documented boundary.
"""

from __future__ import annotations

from migrator.planted import PATH
from migrator import planted_bodies

# Only the routines whose SET clause or body text may name the path are parsed (doctor with 300 own routines, 150 with
# a SET clause, 100 with a literal set_config: 345 ms; none: 152 ms, main 219 ms).
_SETTING = f"""WITH path(w) AS MATERIALIZED {PATH}
SELECT CASE WHEN f.prokind = 'p' THEN 'procedure ' ELSE 'function ' END || f.oid::pg_catalog.regprocedure::text,
       l.lanname::text, CASE WHEN l.lanname = 'plpgsql' THEN pg_catalog.pg_get_functiondef(f.oid) ELSE f.prosrc END,
       (SELECT pg_catalog.substr(c, 13) FROM pg_catalog.unnest(f.proconfig) c
        WHERE pg_catalog.starts_with(c, 'search_path=')),
       l.lanname IN ('sql', 'plpgsql') AND f.prosrc ~* 'search_path|set_config|u&'
FROM pg_catalog.pg_proc f JOIN pg_catalog.pg_language l ON l.oid = f.prolang
WHERE f.oid >= 16384 AND f.proowner IN {planted_bodies.OWNERS}
    AND f.pronamespace IN (SELECT x.oid FROM pg_catalog.pg_namespace x WHERE x.nspname = :s OR x.nspname <> 'pg_catalog'
        AND x.nspname IN {planted_bodies.IN("path")})
    AND (EXISTS (SELECT FROM pg_catalog.unnest(f.proconfig) c WHERE pg_catalog.starts_with(c, 'search_path='))
         OR l.lanname IN ('sql', 'plpgsql') AND f.prosrc ~* 'search_path|set_config|u&')
ORDER BY 1"""


def found(backend, schema: str, planted_query: str) -> list[list[str]]:
    """[role, words] (as planted's state[12]) of what others may plant in the schemas the user's own routines' literal
    paths name."""
    said: list[list[str]] = []
    on_path = planted_bodies.path_reader(backend, planted_query)
    for what, language, body, own, mentions in backend.execute(_SETTING, {"s": schema}).fetchall():
        try:
            paths = sorted(p for kind, _, p in planted_bodies.calls(language, body) if kind == "p") if mentions else []
        except planted_bodies.Unreadable as error:  # (what it sets is unknown: refused, never taken as none)
            paths, said = [], [*said, planted_bodies.unread(backend, what, error)]
        settings = [(own, "its SET clause")] * (own is not None) + [(path, "its body") for path in paths]
        for path, how in settings:
            said += [[role, f"{what} sets search_path ({path}) in {how}, so what a call of it resolves there runs as "
                      f"the caller: {words}"] for role, words in on_path(path)]
    return said


def with_paths(backend, state: tuple, schema: str, planted_query: str) -> tuple:
    """`state` (trust.bookkeeping_state's, with planted.COLUMNS) with found()'s added to state[12]."""
    if len(state) < 17:
        return state
    more = [entry for entry in found(backend, schema, planted_query) if entry not in state[12]]
    return (*state[:12], [*state[12], *more], *state[13:]) if more else state
