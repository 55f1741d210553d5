"""The search_path a migration's unqualified table names resolve on (attack24j): its file's own, as its statements
leave it, read with the parser in every spelling the server accepts (SET [SESSION | LOCAL] search_path TO / = ..., SET
SCHEMA '...', a quoted or U& name in any case, RESET / SET ... TO DEFAULT / RESET ALL: the session's again, a literal
`SELECT set_config('search_path', '...', ...)`), else the session's (rewrites._Live.path), unknown once an earlier
pending file's ALTER DATABASE / ROLE ... SET search_path changed what a fresh session starts with (the TimeZone
twin: risks_retype). What may set it and cannot be read (a set_config with a value not written as a literal, a DO
block or another statement that mentions search_path, set_config or SET SCHEMA, a call of a function whose body
does: one a pending CREATE FUNCTION makes, or a live one, asked of the catalog) leaves it unknown: an unqualified
table name in a risky statement is then judged as the biggest live table of that name in any schema (rewrites).
Code the judge cannot follow statement by statement (attack24k 3: a function with its own SET search_path clause
whose body sets it for the session, an operator, a view, a trigger, an event trigger, a rule, a default) is judged
by its existence: once the database (or a pending CREATE FUNCTION) holds code that may set the path or make a
schema (_CODE), any statement that may run code leaves the path unknown, and a schema the path names that does not
exist counts as possibly made by it (or by a DO block's or prepared statement's EXECUTE run before).

A name resolves as the server resolves it: the first schema of the path that holds a relation of that name (a
table a pending CREATE TABLE made there counts, schemas that do not exist are skipped, a pending CREATE SCHEMA's
exist, "$user" is the role); a CREATE TABLE puts it in the first schema that exists. Used by risks.Seen (reading) and
rewrites._Live (resolving)."""

from __future__ import annotations

import re

from migrator import lazy_re
from migrator.path_text import server_name, split_identifiers  # noqa: F401 (its readers import it from here)

_SETS = lazy_re.compile(r"\s*(?:set|reset)\b", re.IGNORECASE)
_SESSIONS = lazy_re.compile(r"\s*alter\s+(?:database|role|user|system)\b", re.IGNORECASE)
_DISCARD = lazy_re.compile(r"\s*discard\s+all\b", re.IGNORECASE)  # (resets the session's settings: RESET ALL)
# (a SET in the block, or after a SAVEPOINT, undone)
_ROLLBACK = lazy_re.compile(r"\s*(?:rollback|abort)\b", re.IGNORECASE)
_SCHEMA = lazy_re.compile(r"\s*create\s+schema\b", re.IGNORECASE)
_CONFIG = lazy_re.compile(r"\bset_config\b", re.IGNORECASE)
# what may set it inside a statement the judge does not read (a DO block's EXECUTE, a function's body)
_INNER = lazy_re.compile(r"search_path|\bset_config\b|\bset\s+schema\b", re.IGNORECASE)
_DEFINES = lazy_re.compile(r"\s*(?:create|alter|comment|drop|grant|revoke|show)\b", re.IGNORECASE)
_FUNCTION = lazy_re.compile(r"\s*create\s+(?:or\s+replace\s+)?(?:function|procedure)\b", re.IGNORECASE)
# A body that may set the path or make a schema (dynamic SQL may do either), or one in a language not read
_OPAQUE = r"search_path|set_config|set\s+schema|create\s+schema|\mexecute\M"
_BODY = lazy_re.compile(_OPAQUE.replace(r"\m", r"\b").replace(r"\M", r"\b")
                        + r"""|\blanguage\s+["']?(?!(?:sql|plpgsql|c|internal)\b)""", re.IGNORECASE)
_READ_LANGUAGES = ("sql", "plpgsql", "c", "internal")  # (c / internal: the server's and extensions' code, trusted)
# statements that run no user code (no function, trigger, view, rule or event trigger): the rest may
_QUIET = lazy_re.compile(r"\s*(?:begin|start\s+transaction|commit|end|savepoint|release|rollback|abort|show|listen|"
                         r"unlisten|checkpoint|prepare\s+transaction|deallocate)\b|\s*$", re.IGNORECASE)
_UNREAD = lazy_re.compile(r"\s*(?:execute|do\b[^;]*?\bexecute)\b", re.IGNORECASE | re.DOTALL)  # (dynamic SQL)
# Code in the database that may set the path (or make a schema) when a statement runs it: a function of a user's
# (not an extension's) whose body may, or in a language not read; a view, rule, default, CHECK, policy or trigger
# condition calling set_config. Asked once: a statement may reach any of them (an operator, a view, a trigger, an
# event trigger, a call inside a call), so their existence, not a statement's visible calls, decides. (The system's
# own objects, oid < 16384 such as pg_settings' rule calling set_config, are not asked.)
_CODE = r"""
WITH s(f) AS (SELECT ':funcid ' || 'pg_catalog.set_config(text,text,boolean)'::pg_catalog.regprocedure::oid || ' ')
SELECT what FROM (
  SELECT pg_catalog.format('%%I.%%I()', n.nspname, p.proname) AS what
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
       JOIN pg_catalog.pg_language l ON l.oid = p.prolang
  WHERE n.nspname <> ALL(ARRAY['pg_catalog', 'information_schema'])
    AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                    AND d.objid = p.oid AND d.deptype = 'e')
    AND (l.lanname <> ALL(%(languages)s) OR p.prosrc ~* %(opaque)s
         OR pg_catalog.strpos(pg_catalog.to_jsonb(p) ->> 'prosqlbody', (TABLE s)) > 0)
  UNION ALL SELECT 'a view or rule' FROM pg_catalog.pg_rewrite
            WHERE oid >= 16384 AND pg_catalog.strpos(ev_action::text, (TABLE s)) > 0
  UNION ALL SELECT 'a column default' FROM pg_catalog.pg_attrdef
            WHERE oid >= 16384 AND pg_catalog.strpos(adbin::text, (TABLE s)) > 0
  UNION ALL SELECT 'a CHECK' FROM pg_catalog.pg_constraint
            WHERE oid >= 16384 AND pg_catalog.strpos(conbin::text, (TABLE s)) > 0
  UNION ALL SELECT 'a policy' FROM pg_catalog.pg_policy
            WHERE pg_catalog.strpos(coalesce(polqual::text, '') || coalesce(polwithcheck::text, ''), (TABLE s)) > 0
  UNION ALL SELECT 'a trigger''s WHEN' FROM pg_catalog.pg_trigger WHERE pg_catalog.strpos(tgqual::text, (TABLE s)) > 0
) x LIMIT 1
"""
# A fresh session's search_path ("$user" resolved), its schemas that exist: where a migration's names resolve.
SESSION_PATH = """
SELECT x FROM (SELECT CASE WHEN pg_catalog.btrim(s, '"') = '$user' THEN current_user::text
                           ELSE pg_catalog.btrim(s, '"') END, o
               FROM pg_catalog.regexp_split_to_table((SELECT reset_val FROM pg_catalog.pg_settings
                                                      WHERE name = 'search_path'), '[[:space:]]*,[[:space:]]*')
                    WITH ORDINALITY t(s, o)) y(x, o)
WHERE EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = x) ORDER BY o
"""


_EXISTING = "SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s)"
# the schemas holding a relation (of any kind: the server's lookup finds views and sequences too) of that name
_FIRST = """
SELECT n.nspname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s AND n.nspname = ANY(%(path)s)
"""


class Unknown(str):
    """A search_path the judge cannot read (the text says why). Equal only to itself: a table created under it is
    the one an unqualified name means until the path changes again, and no other."""

    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def __deepcopy__(self, memo):
        return self


class Path(tuple):
    """The schemas a file's SET names, as written ("$user" and schemas that do not exist resolved when read). `after`:
    what ran before the SET that may have made a schema the judge does not see (None, "code" or "unread")."""

    after = (None, False)  # (and whether a pending function may have)

    def __deepcopy__(self, memo):  # (a value: risks_savepoints' copies keep it, as the others below)
        return self


class Maybe:
    """The path before statements that may run code that sets it (a function, operator, view, trigger, event trigger
    of the database's, or one of `pending`: functions pending statements made): asked of the live catalog when
    needed."""

    def __init__(self, before, pending: set[str]):
        self.before, self.pending, self.found = before, pending, None

    def __deepcopy__(self, memo):
        return self


class Role:
    """The path before a SET ROLE / SESSION AUTHORIZATION / RESET ROLE: unknown if it holds "$user" (another schema)."""

    def __init__(self, before):
        self.before, self.found = before, None

    def __deepcopy__(self, memo):
        return self


class At(tuple):
    """The schema slot of an unqualified name noted by a pending statement: (the path then, a CREATE's or a
    reference's), resolved when the live catalog is at hand (rewrites._Live.key)."""

    def __deepcopy__(self, memo):
        return self


class _Gone:
    def __deepcopy__(self, memo):
        return self


GONE = _Gone()  # an alias's value: a pending RENAME TO / SET SCHEMA took the name away (risks_pending)


def read(bare: str, text: str, seen) -> bool:
    """Note what a statement does to the search_path of its session (seen.path) or of the later files' fresh
    sessions (seen.next_session_path), and the schemas and path-setting functions it creates. True: it may run
    code of the database's (then ran())."""
    if _SETS.match(bare):
        _read_set(text, seen)
        return False
    if _DISCARD.match(bare):
        seen.path = None
    elif _ROLLBACK.match(bare) and seen.path is not None:  # (one risks_savepoints could not undo)
        seen.path = Unknown("a ROLLBACK may have undone the file's SET search_path")
    elif _SESSIONS.match(bare):
        _read_sessions(text, seen)
    elif _SCHEMA.match(bare):
        for tree in _trees(text):
            name = getattr(tree, "schemaname", None) or getattr(getattr(tree, "authrole", None), "rolename", None)
            if name:
                seen.schemas.add(name)
    elif _FUNCTION.match(bare):
        if _BODY.search(bare):
            _read_function(text, seen)
    elif _CONFIG.search(bare):
        before = seen.path
        seen.path = _set_config(text, seen)
        seen.path = Role(seen.path) if seen.role_set and isinstance(seen.path, Path) else seen.path
        return seen.path is before  # (another setting's: what else the statement calls may still run)
    elif (_INNER.search(bare) or _UNREAD.match(bare)) and not _DEFINES.match(bare):
        seen.path = Unknown("set inside a statement the judge does not read (a DO block's EXECUTE, a call, a "
                            "prepared statement's EXECUTE)")
        seen.opaque = "unread"  # (it may have made a schema too)
        return False
    return not _QUIET.match(bare)  # (user code it may run: its calls, operators, views, triggers, event triggers)


def ran(seen) -> None:
    """After a statement that may run code of the database's: the path is what it was unless that code may set it
    (asked when needed: Maybe)."""
    seen.opaque = seen.opaque or "code"
    found = now(seen)
    if isinstance(found, Maybe) and found.found is None:  # (one look for a run of them)
        found.pending |= seen.path_functions
    else:
        seen.path = Maybe(found, set(seen.path_functions))


def _trees(text: str) -> list:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return []


def _read_set(text: str, seen) -> None:
    from pglast import ast, enums

    kinds = enums.VariableSetKind
    for tree in _trees(text):
        if isinstance(tree, ast.VariableSetStmt) and (tree.name or "").lower() in ("role", "session_authorization"):
            seen.path, seen.role_set = Role(now(seen)), True
        if not isinstance(tree, ast.VariableSetStmt) or (tree.name or "search_path").lower() != "search_path":
            continue
        if tree.kind in (kinds.VAR_RESET_ALL, kinds.VAR_RESET, kinds.VAR_SET_DEFAULT):
            seen.path = None  # the session's again
        elif tree.kind != kinds.VAR_SET_VALUE:
            continue  # FROM CURRENT: as it is
        elif tree.is_local and not _in_transaction(seen):
            continue  # (a non-transactional file's statement alone: it ends with it, the server warns)
        elif tree.is_local and not seen.transactional:
            seen.path = Unknown("SET LOCAL search_path in a BEGIN block of a non-transactional file")
        elif all(isinstance(a, ast.A_Const) and isinstance(a.val, ast.String) for a in tree.args or ()):
            seen.path = _path((a.val.sval for a in tree.args or ()), seen)
            seen.path = Role(seen.path) if seen.role_set else seen.path
        else:
            seen.path = Unknown("SET search_path to a value the judge does not read")


def _read_sessions(text: str, seen) -> None:
    """An ALTER DATABASE / ROLE / SYSTEM ... SET search_path (or RESET ALL): what the later files' sessions start with
    is not read (the connection's options, the role's, the database's and the server's settings decide)."""
    from pglast import ast, enums

    for tree in _trees(text):
        setting = getattr(tree, "setstmt", None) if isinstance(tree, (ast.AlterDatabaseSetStmt, ast.AlterRoleSetStmt,
                                                                       ast.AlterSystemStmt)) else None
        if setting is not None and ((setting.name or "").lower() == "search_path"
                                    or setting.kind == enums.VariableSetKind.VAR_RESET_ALL):
            seen.next_session_path = Unknown("set by ALTER DATABASE / ROLE / SYSTEM in an earlier pending file")


def _set_config(text: str, seen):
    """The path after a statement calling set_config: read when it is `SELECT set_config('search_path', '...',
    <literal>)` alone, as it was when it sets another setting by a literal name, else unknown."""
    from pglast import ast
    from pglast.visitors import Visitor

    calls = []

    class Calls(Visitor):
        def visit_FuncCall(self, _ancestors, call):
            if call.funcname[-1].sval == "set_config":
                calls.append(call)

    trees = _trees(text)
    for tree in trees:
        Calls()(tree)
    literal = [all(isinstance(a, ast.A_Const) for a in c.args or ()) and len(c.args or ()) == 3 for c in calls]
    if not calls or not all(literal):
        return Unknown("set by set_config with a value the judge does not read")
    named = [c for c in calls if str(getattr(c.args[0].val, "sval", "")).lower() == "search_path"]
    if not named:
        return seen.path
    tree = trees[0] if len(trees) == 1 else None
    alone = (isinstance(tree, ast.SelectStmt) and len(named) == len(calls) == 1 and len(tree.targetList or ()) == 1
             and tree.targetList[0].val is named[0] and not any(
                 getattr(tree, k) for k in ("fromClause", "whereClause", "withClause", "havingClause", "groupClause")))
    value = getattr(named[0].args[1].val, "sval", None)
    local = getattr(named[0].args[2].val, "boolval", None)
    if local is True and not _in_transaction(seen):
        return seen.path  # (as SET LOCAL alone)
    schemas = split_identifiers(value) if alone and isinstance(value, str) else None
    if schemas is None or local is None or local and not seen.transactional:
        return Unknown("set by set_config with a value the judge does not read")
    return _path(schemas, seen)


def _in_transaction(seen) -> bool:
    """A statement of the file runs in a transaction: its file's, or a non-transactional file's BEGIN block (risks)."""
    return seen.transactional or seen.altered is not None


def _path(schemas, seen) -> Path:
    path = Path(schemas)
    path.after = (seen.opaque, bool(seen.path_functions))
    return path




def _read_function(text: str, seen) -> None:
    """A pending CREATE FUNCTION / PROCEDURE whose body may set search_path or make a schema, or is in a language
    the judge does not read. Its own SET search_path clause does not help: a plain SET (or set_config(..., false))
    in its body overrides the clause and persists after it returns."""
    from pglast import ast

    for tree in _trees(text):
        if not isinstance(tree, ast.CreateFunctionStmt):
            continue
        options = {o.defname: o.arg for o in tree.options or ()}
        language = str(getattr(options.get("language"), "sval", "sql")).lower()
        body = " ".join(getattr(part, "sval", "") for part in options.get("as") or ())
        if (language not in _READ_LANGUAGES or _BODY.search(body)
                or tree.sql_body is not None and _CONFIG.search(text)):
            seen.path_functions.add(tree.funcname[-1].sval)


# --- resolving (rewrites._Live) ---------------------------------------------------------------------------

def state(live, seen):
    """The file's path now: None (the session's), a Path or an Unknown."""
    return _settle(live, now(seen))


def now(seen):
    """The file's path as it stands (unsettled): its own, else what its fresh session started with."""
    return seen.path if seen.path is not None else seen.session_path


def _settle(live, found):
    if isinstance(found, Role):
        if found.found is None:
            before = _settle(live, found.before)
            raw = before if isinstance(before, Path) else live.setting("search_path") if before is None else ""
            found.found = (Unknown('the role changed by SET ROLE / SESSION AUTHORIZATION while "$user" is in it')
                           if "$user" in raw else before,)
        return found.found[0]
    if not isinstance(found, Maybe):
        return found
    if found.found is None:
        before = _settle(live, found.before)
        setter = [f"{name}()" for name in sorted(found.pending)] or code(live)
        found.found = (Unknown(f"{setter[0]}, which may set it, may run in a statement before") if setter
                       else (before,))
    return found.found[0] if isinstance(found.found, tuple) else found.found


def code(live) -> list[str]:
    """What in the live database may set the path or make a schema when a statement runs it (_CODE), asked once."""
    if "(code)" not in live.paths:
        live.paths["(code)"] = [row[0] for row in live._rows(_CODE, {"languages": list(_READ_LANGUAGES),
                                                                     "opaque": _OPAQUE})]
    return live.paths["(code)"]


def schemas(live, seen, path) -> list[str] | Unknown:
    """The schemas of `path` (a state) names resolve in: those that exist (live or made by a pending CREATE SCHEMA),
    "$user" as the role, in order; the session's for None."""
    path = _settle(live, path)
    if path is None or isinstance(path, Unknown):
        return live.session_path if path is None else path
    moves = tuple((k, id(v)) for k, v in seen.aliases.items() if k[0] == "schema")
    memo = ("(schemas)", path, path.after, len(seen.schemas), moves)
    if memo not in live.paths:  # (asked again for each name of each statement)
        names = [live.role() if name == "$user" else name for name in path]
        existing = {row[0] for row in live._rows(_EXISTING, (names + [_moved(seen, name) for name in names],))}
        live.paths[memo] = [name for name in dict.fromkeys(names) if _moved(seen, name) in existing
                            or name in seen.schemas]
        missing = [name for name in names if name not in live.paths[memo]]
        ran, pending = path.after
        if missing and (ran == "unread" or ran == "code" and (pending or code(live))):
            live.paths[memo] = Unknown(f"its schema {missing[0]} does not exist live but a statement before may "
                                       "have made it")
    return live.paths[memo]


def schema_of(live, seen, slot, name: str):
    """The schema an unqualified `name` means: slot None (a reference now) or At((state, creates))."""
    if slot is not None and (slot, name) in live.paths:  # (a pending statement's: where it went then)
        return live.paths[(slot, name)]
    path, creates = (state(live, seen), False) if slot is None else tuple(slot)
    found = schemas(live, seen, path)
    if isinstance(found, Unknown):
        return found
    if not creates:
        looked = tuple(_moved(seen, s) for s in found)
        if (looked, name) not in live.paths:
            live.paths[(looked, name)] = {row[0] for row in live._rows(_FIRST, {"name": name, "path": list(looked)})}
        held = live.paths[(looked, name)]
        for schema in found:
            alias = seen.aliases.get(("table", (schema, name)))
            if alias is not None and not _gone(alias) or (schema, name) in _made(live, seen):
                return schema
            if alias is None and _moved(seen, schema) in held:
                return schema
    found = found[0] if found else ""  # (no schema of the path exists: the server finds and creates nothing)
    if slot is not None:
        live.paths[(slot, name)] = found
    return found


def made(live, seen, name) -> bool:
    """A pending CREATE TABLE made the table `name` (a key) means."""
    return tuple(live.key(name)) in _made(live, seen)


def _made(live, seen) -> set:
    """The keys of the tables pending CREATE TABLEs made so far (pending statements only add to them)."""
    made = live.paths.get("(made)")
    if made is None or made[0] is not seen.made_log or made[1] > len(seen.made_log):  # (another Seen, or restored)
        made = live.paths["(made)"] = [seen.made_log, 0, set()]
    if made[1] < len(seen.made_log):  # (only the new ones: each key resolved once)
        made[2].update(tuple(live.key(c)) for c in seen.made_log[made[1]:])
        made[1] = len(seen.made_log)
    return made[2]


def _moved(seen, schema: str) -> str:
    """The live name of a schema a pending ALTER SCHEMA ... RENAME TO named so (one renamed away: none)."""
    to = seen.aliases.get(("schema", schema), schema)
    return to if isinstance(to, str) else ""


def _gone(alias) -> bool:
    return alias is GONE
