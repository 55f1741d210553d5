"""The migration user's own functions whose body is a string (attack23w 3): PostgreSQL records no pg_depend rows for
what a `LANGUAGE sql AS '...'` or plpgsql body names, so a DEFAULT, CHECK, trigger or view of the user's that calls
its own one-line wrapper hides another role's code from planted_code.reach. Their bodies are read here: the
functions, operators, types and domains (casts, column types) and relations they name by a schema-qualified name, and
what a constant string they EXECUTE names (attack23y 5), are held to the owner rule (another role's is refused like a
DEFAULT calling it; the user's own function is read in turn, once: a visited set; its own domain's CHECK functions and
own view's functions are followed). A body the parser here cannot read is refused as unread. An unqualified name
resolves by the session's search_path at call time, which the connect check and CheckedPath hold to the planted rule,
unless the function has its own SET search_path or its body sets a literal one: then that path's schemas are held to
it here. Other languages (C, plpython; plperl once a superuser installs it) are not read, nor what an EXECUTE builds
at run time: the documented boundary.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from migrator import lazy_re, planted, planted_writes, query_builtins
from migrator.grant_text import ident
from migrator.planted import OWNER_OK as _OWNER_OK, PATH as _PATH
from migrator.planted_code import USES, _CLASS

# The session path's reader (planted.PATH) over a function's own search_path setting instead (:fpath; q.p below).
_SESSION = "(SELECT reset_val FROM pg_catalog.pg_settings\n                   WHERE name = 'search_path')"
assert _SESSION in _PATH, "planted.PATH changed: read a function's own path as it reads the session's"
FUNCTION_PATH = _PATH.replace(_SESSION, "CAST(:fpath AS pg_catalog.text)")
_OWN_PATH = _PATH.replace(_SESSION, "q.p")
# The roles the runner trusts as the user (itself, roles it is a member of: attack23z 6), whose routines' bodies are read.
OWNERS = ("(WITH me AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER) "
          f"SELECT r.oid FROM pg_catalog.pg_roles r WHERE {_OWNER_OK})")
IN = "(SELECT CASE WHEN u.w = '$user' THEN CURRENT_USER ELSE u.w END FROM {} AS u(w))".format
# For each wanted (kind 'f' function, 'o' operator; schema or none for the session path's; name; or oid): [i, kind,
# oid, what, owner, trusted, the user's own (read further), language, body (plpgsql: the whole definition, which its
# parser reads), its own search_path, oids of the functions it depends on (a BEGIN ATOMIC body's, an operator's)].
_LOOKUP = f"""WITH path(w) AS MATERIALIZED {_PATH}, me AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER),
q AS (SELECT * FROM ROWS FROM (pg_catalog.unnest(CAST(:kinds AS pg_catalog.text[])), pg_catalog.unnest(CAST(:schemas
          AS pg_catalog.text[])), pg_catalog.unnest(CAST(:names AS pg_catalog.text[])), pg_catalog.unnest(CAST(:oids AS
          pg_catalog.oid[])), pg_catalog.unnest(CAST(:paths AS pg_catalog.text[]))) WITH ORDINALITY q(kind, s, name, o, p, i)),
ns AS (SELECT q.i, x.oid FROM q JOIN pg_catalog.pg_namespace x ON x.nspname <> 'pg_catalog' AND CASE
    WHEN q.s IS NOT NULL THEN x.nspname = q.s WHEN q.p IS NOT NULL THEN x.nspname IN {IN(_OWN_PATH)}
    ELSE x.nspname IN {IN("path")} OR x.nspname = :schema END WHERE q.o IS NULL)
SELECT q.i, 'f', f.oid, 'function ' || f.oid::pg_catalog.regprocedure::text, r.rolname::text, {_OWNER_OK},
       {_OWNER_OK} AND f.oid >= 16384, l.lanname::text,
       CASE WHEN l.lanname = 'plpgsql' THEN pg_catalog.pg_get_functiondef(f.oid) ELSE f.prosrc END,
       (SELECT pg_catalog.substr(c, 13) FROM pg_catalog.unnest(f.proconfig) c WHERE pg_catalog.starts_with(c, 'search_path=')),
       ARRAY(SELECT d.refobjid FROM pg_catalog.pg_depend d WHERE d.classid = CAST('pg_catalog.pg_proc' AS
           pg_catalog.regclass) AND d.objid = f.oid AND d.refclassid = CAST('pg_catalog.pg_proc' AS pg_catalog.regclass))
FROM q JOIN pg_catalog.pg_proc f ON q.kind = 'f' AND (f.oid = q.o OR q.o IS NULL AND f.proname = q.name
    AND f.pronamespace IN (SELECT ns.oid FROM ns WHERE ns.i = q.i))
JOIN pg_catalog.pg_roles r ON r.oid = f.proowner JOIN pg_catalog.pg_language l ON l.oid = f.prolang
UNION ALL SELECT q.i, 'o', y.oid, 'operator ' || y.oid::pg_catalog.regoperator::text, r.rolname::text, {_OWNER_OK},
       false, '', '', NULL, ARRAY[y.oprcode::pg_catalog.oid]
FROM q JOIN pg_catalog.pg_operator y ON q.kind = 'o' AND y.oprname = q.name
    AND y.oprnamespace IN (SELECT ns.oid FROM ns WHERE ns.i = q.i)
JOIN pg_catalog.pg_roles r ON r.oid = y.oprowner
UNION ALL SELECT q.i, 't', y.oid, CASE WHEN y.typtype = 'd' THEN 'domain ' ELSE 'type ' END
           || y.oid::pg_catalog.regtype::text, r.rolname::text, {_OWNER_OK}, false, '', '', NULL,
       ARRAY(SELECT d.refobjid FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_depend d ON d.classid = {_CLASS(
           "pg_constraint")} AND d.objid = k.oid AND d.refclassid = {_CLASS("pg_proc")} WHERE k.contypid = y.oid)
FROM q JOIN pg_catalog.pg_type y ON q.kind = 't' AND y.typname = q.name
    AND y.typnamespace IN (SELECT ns.oid FROM ns WHERE ns.i = q.i)
JOIN pg_catalog.pg_roles r ON r.oid = y.typowner
UNION ALL SELECT q.i, 'r', c.oid, CASE c.relkind WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view '
           ELSE 'table ' END || c.oid::pg_catalog.regclass::text, r.rolname::text, {_OWNER_OK}, false, '', '', NULL,
       ARRAY(SELECT d.refobjid FROM pg_catalog.pg_rewrite e JOIN pg_catalog.pg_depend d ON d.classid = {_CLASS(
           "pg_rewrite")} AND d.objid = e.oid AND d.refclassid = {_CLASS("pg_proc")} WHERE e.ev_class = c.oid)
FROM q JOIN pg_catalog.pg_class c ON q.kind = 'r' AND c.relname = q.name
    AND c.relnamespace IN (SELECT ns.oid FROM ns WHERE ns.i = q.i)
JOIN pg_catalog.pg_roles r ON r.oid = c.relowner"""
_LEVELS = 32  # (a chain of the user's own functions deeper than this is refused as unread: attack23z 5)


class Unreadable(Exception):
    """A body the parser here cannot read (PostgreSQL accepted it): what it reaches is unknown (attack23y 5c)."""


def _names(node, found: set) -> None:
    """(kind, schema or None, name) of the function calls and operators in a parse tree (pglast's JSON), and of the
    schema-qualified types (casts, column and argument types) and relations it names (attack23y 5)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("FuncCall", "A_Expr", "typeName", "TypeName") and isinstance(value, dict):
                names = [n["String"]["sval"] for n in value.get({"FuncCall": "funcname", "A_Expr": "name"}.get(
                         key, "names"), []) if "String" in n]
                kind = {"FuncCall": "f", "A_Expr": "o"}.get(key, "t")
                if names and (kind != "t" or len(names) > 1):  # (an unqualified type: by the path, held already)
                    found.add((kind, names[-2] if len(names) > 1 else None, names[-1]))
            elif key == "RangeVar" and isinstance(value, dict) and value.get("schemaname"):
                found.add(("r", value["schemaname"], value["relname"]))
            if key in ("VariableSetStmt", "FuncCall") and isinstance(value, dict):
                _path(key, value, found)
            if key in _TARGETS and isinstance(value, dict):
                _written(key, value, found)
            elif key == "DoStmt" and isinstance(value, dict):
                _do(value, found)
            elif key == "FuncCall" and isinstance(value, dict):  # (a built-in running SQL it is handed, attack23z 10)
                _builtin(value, found)
            _names(value, found)
    elif isinstance(node, list):
        for value in node:
            _names(value, found)


def _builtin(call: dict, found: set) -> None:
    """What a built-in running a query (query_builtins) runs: a constant read as SQL; else Unreadable."""
    try:
        for text in query_builtins.sql(call["funcname"][-1].get("String", {}).get("sval", ""), call.get("args", [])):
            _sql(text, found)
    except query_builtins.Unread as unread:
        raise Unreadable(str(unread)) from None


def _constant(node) -> str | None:
    return node.get("A_Const", {}).get("sval", {}).get("sval") if isinstance(node, dict) else None


def _path(key: str, value: dict, found: set) -> None:
    """('p', None, path) of a literal `SET [LOCAL] search_path` or set_config('search_path', '<path>', ...) (attack23y
    1): the path as the setting's text. What a body computes is not read (the documented boundary)."""
    args = value.get("args") or []
    if key == "VariableSetStmt" and value.get("name") == "search_path" and args:
        words = [_constant(a) for a in args]
        if None not in words:
            found.add(("p", None, ", ".join(w if re.fullmatch(r"[a-z_][a-z0-9_$]*|\$user", w) else ident(w)
                                            for w in words)))
    elif key == "FuncCall" and [n.get("String", {}).get("sval") for n in value.get("funcname", [])][-1:] == [
            "set_config"] and len(args) == 3 and (_constant(args[0]) or "").lower() == "search_path":
        if _constant(args[1]) is not None:
            found.add(("p", None, _constant(args[1])))


# (statement, field) of what a write statement writes: a table's implicit code runs there (attack23z 7)
_TARGETS = {"InsertStmt": "relation", "UpdateStmt": "relation", "DeleteStmt": "relation", "MergeStmt": "relation",
            "CopyStmt": "relation", "TruncateStmt": "relations"}


def _written(key: str, value: dict, found: set) -> None:
    """('w', schema or None, name) of a table a statement writes, and ('r', ...) of a qualified one (pglast's JSON
    leaves a target's RangeVar unwrapped, which _names' relations do not see); COPY only FROM."""
    if key == "CopyStmt" and not value.get("is_from"):
        return
    targets = value.get(_TARGETS[key])
    for target in targets if isinstance(targets, list) else [{"RangeVar": targets or {}}]:
        table = target.get("RangeVar", {})
        found.add(("w", table.get("schemaname"), table.get("relname")))
        if table.get("schemaname"):
            found.add(("r", table["schemaname"], table["relname"]))


def _do(value: dict, found: set) -> None:
    """A DO block inside a body (or a constant EXECUTE's) is PL/pgSQL, read as a body; in another language it is
    not read (attack23z 9)."""
    args = {a["DefElem"]["defname"]: (a["DefElem"].get("arg") or {}).get("String", {}).get("sval")
            for a in value.get("args", []) if "DefElem" in a}
    do_names(args.get("language") or "plpgsql", args.get("as") or "", found)


def do_names(language: str, body: str, found: set) -> None:
    """calls()' reading of a DO block's body into `found` (Unreadable in a language other than plpgsql)."""
    if language.lower() != "plpgsql":
        raise Unreadable(f"a DO block in language {language.lower()}, which the runner does not read")
    plpgsql_names(_plpgsql("DO\n'" + body.replace("'", "''") + "'", found), found)


def _sql(text: str, found: set, constant: bool = False) -> None:
    """`constant`: `text` is an EXECUTE's expression; a constant string there is SQL, read in turn."""
    from pglast.parser import ParseError, parse_sql_json

    try:
        tree = json.loads(parse_sql_json(text))
    except ParseError as error:  # (PostgreSQL accepted it at CREATE; unread, it may reach anything)
        raise Unreadable(str(error)) from None
    _names(tree, found)
    target = tree["stmts"][0]["stmt"].get("SelectStmt", {}).get("targetList", [{}]) if constant else ()
    value = target[0].get("ResTarget", {}).get("val", {}).get("A_Const", {}).get("sval") if len(target) == 1 else None
    if value is not None:
        _sql(value["sval"], found)


# (statement, field) of a plpgsql expression whose value is SQL run as a string (body_paths reads them alike)
_DYNAMIC = {("PLpgSQL_stmt_dynexecute", "query"), ("PLpgSQL_stmt_dynfors", "query"),
            ("PLpgSQL_stmt_open", "dynquery"), ("PLpgSQL_stmt_return_query", "dynquery")}


def _expressions(node, found: list, parent: tuple = ()) -> None:
    """(query, parse mode, (statement, field) holding it) of a plpgsql tree's expressions; a variable's type
    `s.t.c%TYPE` / `s.t%ROWTYPE` as a query naming relation s.t."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "PLpgSQL_expr" and isinstance(value, dict):
                found.append((value.get("query", ""), value.get("parseMode", 0), parent))
            elif key == "PLpgSQL_type" and "%" in value.get("typname", ""):
                names, _, kind = value["typname"].rpartition("%")
                relation = names.rsplit(".", 1)[0] if kind.lower() == "type" else names
                found.append((f"TABLE {relation}", 0, ()))
            else:
                _expressions(value, found, (*parent[-1:], key))
    elif isinstance(node, list):
        for value in node:
            _expressions(value, found, parent)


# pglast's PL/pgSQL parser looks a DECLAREd type up and knows only pg_catalog's and public's: such a type is read here
# (its name kept) and put to the parser as text. (A DECLARE section: from DECLARE to its BEGIN.)
_DECLARE = lazy_re.compile(r"\bdeclare\b(.*?)\bbegin\b", re.IGNORECASE | re.DOTALL)
_NAME = r'(?:"(?:[^"]|"")+"|[a-z_][\w$]*)'
_DECLARED = lazy_re.compile(rf"((?:^|;)\s*{_NAME}\s+(?:constant\s+)?)({_NAME})\s*\.\s*({_NAME})", re.IGNORECASE)


def _unquoted(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()


def _readable(body: str, found: set) -> str:
    """`body` as the parser here reads it: a VARIADIC parameter's type (not looked up, so refused) read without the
    keyword, a DECLAREd type of another schema as text, that type kept in `found`."""
    head, _, rest = body.partition("\n")  # (pg_get_functiondef's first line: the signature)

    def declared(match) -> str:
        found.add(("t", _unquoted(match[2]), _unquoted(match[3])))
        return f"{match[1]}text"  # (an unknown type loses the variable's default expression: a scalar keeps it)
    rest = _DECLARE.sub(lambda section: section[0].replace(section[1], _DECLARED.sub(declared, section[1])), rest)
    return head.replace("VARIADIC ", "") + "\n" + rest


def _plpgsql(body: str, found: set) -> list:
    from pglast.parser import ParseError

    from migrator.plpgsql_text import parse_plpgsql  # (never `#option dump` to the parser: attack23y 4)

    try:
        return parse_plpgsql(body)
    except ParseError as error:
        readable = _readable(body, found)
        if readable == body:
            raise Unreadable(str(error)) from None
    try:
        return parse_plpgsql(readable)
    except ParseError as error:
        raise Unreadable(str(error)) from None


def calls(language: str, body: str) -> set[tuple[str, str | None, str]]:
    """(kind 'f' function, 'o' operator, 't' type, 'r' relation; schema or None; name) of what a sql or plpgsql body
    names (plpgsql: `body` is the whole CREATE FUNCTION, its expressions read by the SQL parser as PostgreSQL reads
    them, a constant string an EXECUTE runs as SQL); Unreadable when the parser here cannot read it."""
    found: set = set()
    if language == "sql":
        _sql(body, found)
    elif language == "plpgsql":
        plpgsql_names(_plpgsql(body, found), found)
    return found


def plpgsql_names(tree: list, found: set) -> None:
    """calls()' reading of a parsed plpgsql body (pglast's parse_plpgsql) into `found`."""
    from pglast.parser import ParseError

    from migrator.plpgsql_text import expression_sql

    expressions: list = []
    _expressions(tree, expressions)
    for query, mode, parent in expressions:
        try:  # (an assignment read whole: its target's subscripts run too, attack23y 6)
            text = expression_sql(query, mode)
        except ParseError as error:
            raise Unreadable(str(error)) from None
        _sql(text, found, parent in _DYNAMIC)


def _read(wanted: list, execute, schema: str) -> list:
    params = {"kinds": [w[0] for w in wanted], "schemas": [w[1] for w in wanted], "names": [w[2] for w in wanted],
              "oids": [w[3] for w in wanted], "paths": [w[5] for w in wanted], "schema": schema}
    return execute(_LOOKUP, params).fetchall()


def reached(backend, roots: list[list[str]], schema: str, on_path: Callable[[str], list[list[str]]]) -> list:
    """[owner, '<via> through <own function> uses <object>'] of other roles' functions and operators the user's own
    string-bodied functions `roots` ([oid, via]: planted.COLUMNS' state[16]) call, at any depth of its own; and
    what `on_path`(a function's own search_path) finds in that path's schemas ([owner, words] as state[12]); what
    is still unread after _LEVELS functions is refused as such (its reach is unknown)."""
    first = {oid: via for oid, via in reversed(roots)}  # (one way to each function: its body is read once)
    wanted = [("f", None, None, int(oid), via, None, "") for oid, via in reversed(first.items())]
    seen: set = set()
    found: list = []
    for _ in range(_LEVELS):
        if not wanted:
            break
        following, writes = [], {}
        for i, kind, oid, what, owner, trusted, own, language, body, path, depends in _read(wanted, backend.execute,
                                                                                            schema):
            via = wanted[i - 1][4]
            if (kind, oid) in seen:
                continue
            seen.add((kind, oid))
            if not trusted:
                found.append([owner, f"{via} uses {what}"])
                continue
            chain = via if kind == "o" else f"{via} through {what}"
            following += [("f", None, None, int(d), chain, None, owner) for d in depends or []]
            if not own:
                continue
            for entry in on_path(path) if path is not None else ():
                found.append([entry[0], f"{chain} resolves names by its own search_path ({path}): {entry[1]}"])
            try:
                named = calls(language, body)
            except Unreadable as error:  # (unread, it may reach anything: refused, as a call of another's is)
                found.append([owner, f"{chain} cannot be read here ({error}), so what it reaches is unknown: "
                              "rewrite it so it parses (qualify what it names; a text variable and a cast for a "
                              "type), or make what it calls the migration user's own"])
                continue
            for _, _, setting in sorted(n for n in named if n[0] == "p"):  # (a literal path its body sets)
                found += [[role, f"{chain} sets search_path ({setting}) in its body: {words}"]
                          for role, words in on_path(setting)]
            following += [(k, where, name, None, chain, path, owner) for k, where, name in sorted(named, key=str)
                          if where != "pg_catalog" and k not in "pw"]  # (unqualified: by its path, else the session's)
            for table in planted_writes.targets(named, path):
                if ("w", *table) not in seen:
                    writes.setdefault(table, chain)
        seen.update(("w", *table) for table in writes)  # (a table it writes: checked, its implicit code read in turn)
        following += [(*w, "") for w in planted_writes.checked(backend.execute, writes, found)]
        wanted = list({(w[0], w[1], w[2], w[3], w[5]): w for w in reversed(following)}.values())[::-1]  # (one each)
    for w in wanted:  # (never "fine": attack23z 5)
        chain = w[4].split(" through ")
        chain = " through ".join(chain[:2] + [f"... ({len(chain) - 3} more)"] + chain[-1:] if len(chain) > 5 else chain)
        found.append([w[6], f"{chain} goes on deeper than the {_LEVELS} functions read here, so what it reaches "
                      "cannot be read here: call what it needs through fewer wrappers"])
    return list(map(list, dict.fromkeys(map(tuple, found))))


def unread(backend, what: str, error: Exception) -> list[str]:
    """[owner, words] of a routine (`what`: 'function s.f(int)') whose body names search_path but cannot be read here:
    the path it sets is unknown, so it is refused as unread, never taken as none (attack23z's audit)."""
    owner = backend.execute("SELECT pg_catalog.pg_get_userbyid(p.proowner)::text FROM pg_catalog.pg_proc p WHERE p.oid "
                            "= CAST(:w AS pg_catalog.regprocedure)", {"w": what.partition(" ")[2]}).fetchone()[0]
    return [owner, f"{what} cannot be read here ({error}), so the search_path it may set is unknown: rewrite it so it "
            "parses, or set the path in its SET clause"]


_QUERIES: dict = {}


def on_path(backend, planted_query: str, path: str) -> list[list[str]]:
    """[role, words] (as planted's state[12]) of what others may plant in the schemas of a function's own path:
    trust.PLANTED's columns (planted.with_creators) over them, pg_catalog standing in for the migrated schema (the
    run's own check reads that one)."""
    if planted_query not in _QUERIES:
        _QUERIES[planted_query] = planted.with_creators(planted_query, FUNCTION_PATH)
    params = {"s": "pg_catalog", "tables": [], "rights": [], "fpath": path}
    creators, owned, _, missing = planted.untrusted(backend.execute(_QUERIES[planted_query], params).fetchone(), ())
    return [*([role, f"a right to CREATE in schema {where}"] for where, role in creators),
            *([owner, what] for owner, what in owned if USES not in what),
            *([role, f"schema {where}, which does not exist, by a right to CREATE on the database"]
              for where, role, _ in missing)]


def path_reader(backend, planted_query: str) -> Callable[[str], list[list[str]]]:
    """on_path, one query a path (many functions share one `SET search_path = ...`: 300 queries were seconds)."""
    read: dict[str, list[list[str]]] = {}

    def on(path: str) -> list[list[str]]:
        if not path.strip(' ,"'):  # (SET search_path = '': no schema at all, none missing)
            return []
        if path not in read:
            read[path] = on_path(backend, planted_query, path)
        return read[path]
    return on


def with_bodies(backend, state: tuple, schema: str, planted_query: str) -> tuple:
    """`state` (trust.bookkeeping_state's, with planted.COLUMNS) with reached()'s findings added to state[12];
    `planted_query`: trust.PLANTED, whose columns hold a function's own path to the planted rule."""
    if len(state) < 17 or not state[16]:
        return state
    found = [entry for entry in reached(backend, state[16], schema, path_reader(backend, planted_query))
             if entry not in state[12]]
    return (*state[:12], [*state[12], *found], *state[13:]) if found else state
