"""How the server reads a routine's body (attack23z 4): under the standard_conforming_strings it runs with. Its own SET
clause is applied before the body is parsed (a SQL body at each call, a plpgsql one when compiled), else the setting in
force when it is called, which a body run before may have turned off (SET LOCAL, set_config) for what it runs after: an
EXECUTE's string, the bodies of the functions it calls. With the setting off a backslash in a plain '...' literal
escapes the quote, and `'a\\' || ' || app.gen() --'` is a call of app.gen() where every reader here (pglast:
planted_bodies, own_paths, body_paths) sees two literals. Those readers read with it on, as the run's session
has it (postgres/conforming.py refuses a session with it off). So a routine the runner trusts as the user whose SET
clause turns it off, or whose body names it, is refused at the connect check as unread, naming the routine and the
setting; a pending file that may turn it off is refused when a body would then read otherwise (conforming.py).
backslash_quote changes no reading (a `\\'` in E'...' is an escaped quote or an error), nor does client_encoding (a
body is stored in the server's encoding). A setting's name a body computes, or spells with E'...' escapes, is not
read: the documented boundary.
"""

from __future__ import annotations

import re

from migrator import lazy_re
from migrator.planted import OWNER_OK

NAME = "standard_conforming_strings"
NAMES = lazy_re.compile(rf"{NAME}|u&", re.IGNORECASE)  # (U&"..." spells any name)
_ON = ("on", "1", "t", "tr", "tru", "true", "y", "ye", "yes")  # (the server's spellings of true)
TODO = ("drop that (ALTER ROUTINE ... RESET standard_conforming_strings, or rewrite the body) and write a backslash "
        "inside E'...' or $$...$$, which read alike either way")
_BODY = "{}.lanname NOT IN ('c', 'internal') AND f.prosrc ~* 'standard_conforming_strings|u&'".format


def _trusted(candidates: str, columns: str) -> str:
    """`columns` of the routines among `candidates` (a WHERE on pg_proc f, pg_language l: the cheap filter, first)
    whose owner the runner trusts as the user (planted.OWNER_OK: itself, roles it is a member of)."""
    return f"""WITH me AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER),
f AS MATERIALIZED (SELECT f.oid, f.prokind, f.proowner, f.proconfig, f.prosrc, l.lanname FROM pg_catalog.pg_proc f
    JOIN pg_catalog.pg_language l ON l.oid = f.prolang WHERE f.oid >= 16384 AND ({candidates}))
SELECT CASE WHEN f.prokind = 'p' THEN 'procedure ' ELSE 'function ' END || f.oid::pg_catalog.regprocedure::text,
       {columns}
FROM f JOIN pg_catalog.pg_roles r ON r.oid = f.proowner WHERE {OWNER_OK}
ORDER BY 1"""


# [what, owner, proconfig, whether the body names it] of those whose SET clause or body names the setting
_NAMED = _trusted(f"pg_catalog.array_to_string(f.proconfig, ' ') ~* 'standard_conforming_strings=' OR {_BODY('l')}",
                  f"r.rolname::text, f.proconfig, {_BODY('f')}")
# [what, body] of those whose body holds a backslash (read otherwise while the setting is off: reads_otherwise()).
# (No backslash in the runner's own SQL: chr(92).)
BACKSLASHED = _trusted("l.lanname NOT IN ('c', 'internal') AND pg_catalog.strpos(f.prosrc, pg_catalog.chr(92)) > 0",
                       "f.prosrc")


def off(config) -> str | None:
    """`name=value` of a SET clause (proconfig) that turns the setting off, or None."""
    for entry in config or ():
        name, _, value = entry.partition("=")
        if name.lower() == NAME and value.strip("'\"").lower() not in _ON:
            return f"{NAME} = {value}"
    return None


def reads_otherwise(body: str) -> bool:
    """Whether a body holds a plain '...' literal with a backslash as the readers here scan it (setting on), or cannot
    be scanned so: with the setting off the server reads it otherwise (nowhere else can the two readings part)."""
    from pglast.parser import ParseError, scan

    if "\\" not in body:
        return False
    raw = body.encode()
    try:
        tokens = scan(body)
    except ParseError:  # (e.g. 'it\'s': a literal only the other reading ends)
        return True
    return any(t.name in ("SCONST", "USCONST") and raw[t.start:t.start + 1] not in (b"E", b"e", b"$")
               and b"\\" in raw[t.start:t.end + 1] for t in tokens)


def statement_bodies(text: str) -> list[str]:
    """The bodies of the routines a statement makes (CREATE FUNCTION / PROCEDURE) or runs (DO); [] when none or
    when it cannot be parsed (the run refuses such a statement elsewhere)."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    from migrator.plpgsql_text import body

    try:
        nodes = [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return []
    return [body(node) for node in nodes if type(node).__name__ in ("CreateFunctionStmt", "DoStmt")]


def found(backend) -> list[list[str]]:
    """[owner, words] (as planted's state[12]) of the routines the runner trusts as the user that the readers here
    cannot read as the server will: their SET clause turns the setting off, or their body names it."""
    said = []
    for what, owner, config, names in backend.execute(_NAMED, {}).fetchall():
        setting = off(config)
        if setting:
            said.append([owner, f"{what} sets {setting} in its SET clause, so the server reads its body otherwise "
                         f"than the runner does and what it reaches cannot be read here: {TODO}"])
        elif names:
            said.append([owner, f"{what} names {NAME} (or holds a U& escape, which can spell it) in its body: it "
                         "may turn it off for what it runs (an EXECUTE, "
                         f"the bodies of functions it calls), which the server then reads otherwise than the runner "
                         f"does, so what it reaches cannot be read here: {TODO}"])
    return said


def with_lexed(backend, state: tuple) -> tuple:
    """`state` (trust.bookkeeping_state's, with planted.COLUMNS) with found()'s added to state[12]."""
    if len(state) < 17:
        return state
    more = [entry for entry in found(backend) if entry not in state[12]]
    return (*state[:12], [*state[12], *more], *state[13:]) if more else state
