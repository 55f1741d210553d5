"""The search_path changes a statement makes, read before it runs, bodies included (attack23w 2).

A DO block or a function that sets the path, resolves a name under it and puts it back leaves nothing for an
after-the-statement watch to see (file_paths.CheckedPath), and even a path it leaves set was already used by the
statement that set it. So a statement's text is read whole: its own SET search_path / set_config / UPDATE pg_settings,
the bodies of its DO blocks (pglast's plpgsql parser), of the functions and procedures it creates (plpgsql alike;
LANGUAGE sql string bodies through the SQL parser; BEGIN ATOMIC is in the tree already), the routine's own SET clause,
and the literal strings its EXECUTEs run (read as SQL in turn). What it finds: the schemas a literal path names
(held to the planted rule as a top-level SET is), and why a change cannot be read (an EXECUTE of a string built at
run time, set_config with a computed name or value, a body in a language not read), which file_paths refuses while
the migration user can reach a schema other roles may create in or own.

A body pglast's plpgsql parser does not read (a `%TYPE[]` declaration, ...) is unread, whatever its text spells
(attack23y 3: `SET SCHEMA 'app'`). Bodies are parsed through plpgsql_text (never one holding `#option dump`, which
would print on the runner's stdout: dump_problem() refuses such a file, attack23y 4); an assignment is read whole.

The reading fails closed (attack23z 1-3): a setting is either read positively (SET / SET SCHEMA in any spelling of the
name, set_config in any case or schema with constant arguments, a cast of one to unbounded text) or unread (a computed,
COLLATEd, cut or named argument, a value that is no name or string, a path not split as the server does). The same
reader serves the routines already in the database (stored(): own_paths).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from migrator import lazy_re, plpgsql_text, query_builtins

# What may change the path in a statement: naming it (U&, SET [comment] SCHEMA), set_config, pg_settings, or holding a
# body (a DO block, a routine made: EXECUTE lives only in those; both begin their statement). Only such statements are
# parsed: a seed file's 20,000 INSERTs whose values say "to do" or "function" are not
_NAMES = lazy_re.compile(r"search_path|set_config|pg_settings|u&|\bset\b[\s\S]*?schema|" + query_builtins.PATTERN,
                         re.IGNORECASE)  # (and a built-in running SQL it is handed: an EXECUTE, attack23z 10)
_BODY_HEAD = lazy_re.compile(r"do\b|create\b[\s\S]*?\b(?:function|procedure)\b", re.IGNORECASE)
_COMMENT_MARK = lazy_re.compile(r"/\*|\*/")
_READ_LANGUAGES = ("sql", "plpgsql", "c", "internal")  # (c / internal: the server's and extensions' code)
# (statement, field) of a plpgsql expression whose value is SQL run as a string: EXECUTE, FOR ... IN EXECUTE, OPEN
# ... FOR EXECUTE, RETURN QUERY EXECUTE
_DYNAMIC = {("PLpgSQL_stmt_dynexecute", "query"), ("PLpgSQL_stmt_dynfors", "query"),
            ("PLpgSQL_stmt_open", "dynquery"), ("PLpgSQL_stmt_return_query", "dynquery")}
_DEPTH = 8  # (an EXECUTE of a literal running a DO block running an EXECUTE ...)
BUILT = "an EXECUTE of a string built at run time"
COMPUTED = "set_config with a computed name or value"
_UNPARSED = ", which the plpgsql parser does not read"
# What may change the path inside a stored body, as a PostgreSQL regular expression (own_paths selects the routines to
# read with it, `~*`): the names (any case, quoted, U&), SET SCHEMA, pg_settings, an EXECUTE, a nested DO or routine
STORED_MAY_SET = (r"search_path|set_config|pg_settings|u&|\yset\y.*schema|execute|\ydo\y"
                  r"|\ycreate\y.*\y(function|procedure)\y")
# A setting's name as set_config finds it (else it is unread: the server's lookup may still fold it to search_path)
_SETTING_NAME = lazy_re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)*")
# Casts that keep a constant string as it is (a bounded type cuts it, another type's input function may change it)
_TEXT_TYPES = {("text",), ("pg_catalog", "text"), ("varchar",), ("pg_catalog", "varchar")}


@dataclass
class Changes:
    schemas: list[str] = field(default_factory=list)  # what literal paths name, in order
    unread: list[str] = field(default_factory=list)  # why a change cannot be read
    inner: list[str] = field(default_factory=list)  # the bodies that set a literal path ('a DO block', ...)


def may_set(text: str) -> bool:
    return bool(_NAMES.search(text) or _BODY_HEAD.match(_uncommented(text)))


def _uncommented(text: str) -> str:
    """`text` from its first word on: leading blanks and comments (nested /* */ too, as PostgreSQL's) skipped."""
    at = 0
    while True:
        at = len(text) - len(text[at:].lstrip())
        if text.startswith("--", at):
            at = text.find("\n", at) % (len(text) + 1)
        elif text.startswith("/*", at):
            depth = 0
            for match in _COMMENT_MARK.finditer(text, at):
                depth += 1 if match.group() == "/*" else -1
                if depth == 0:
                    at = match.end()
                    break
            else:
                return ""
        else:
            return text[at:]


def dump_problem(text: str) -> str | None:
    """Why a statement cannot run: a DO block's or a routine's body holding `#option dump` (attack23y 4), else None."""
    from pglast import parse_sql
    from pglast.parser import ParseError
    from pglast.visitors import Visitor

    if not plpgsql_text.may_dump(text) or not _BODY_HEAD.match(_uncommented(text)):  # (bodies begin their statement)
        return None
    found: list = []

    class Bodies(Visitor):
        def visit_DoStmt(self, _ancestors, node):
            found.append(("a DO block", node))

        def visit_CreateFunctionStmt(self, _ancestors, node):
            found.append((f"the body of routine {'.'.join(n.sval for n in node.funcname)}", node))

    try:
        for raw in parse_sql(text):
            Bodies()(raw.stmt)
        what = next((what for what, node in found if plpgsql_text.dumps(plpgsql_text.body(node))), None)
    except ParseError:  # (the server refuses what cannot be read)
        return None
    return None if what is None else (
        f"{what} holds `#option dump`, which makes the PL/pgSQL parser print the compiled function (the runner "
        "reads bodies with it before the run: into plan's text and the log); remove the option")


def read(text: str) -> Changes:
    """The search_path changes `text` (one or more statements) makes, bodies included."""
    found = Changes()
    _read(text, found, None, 0)
    found.schemas = [name for name in dict.fromkeys(found.schemas) if name]  # ('': names no schema)
    return found


def stored(definition: str) -> Changes:
    """The search_path changes a stored routine's body makes (own_paths: the user's routines made earlier), from its
    pg_get_functiondef; its own SET clause is left out (read from proconfig). Fails closed: what is not read
    positively (a language not read, a definition the parser does not read) is unread."""
    from migrator.planted_bodies import _readable  # (its DECLAREd types of other schemas as text, as it reads them)

    found = _stored(definition)
    if any(why.endswith(_UNPARSED) for why in found.unread) and _readable(definition, set()) != definition:
        found = _stored(_readable(definition, set()))
    return found


def _stored(definition: str) -> Changes:
    from pglast import ast, parse_sql
    from pglast.parser import ParseError

    found = Changes()
    try:
        [raw] = parse_sql(definition)
    except (ParseError, ValueError):
        found.unread.append("a definition the parser does not read")
        return found
    node = raw.stmt
    if isinstance(node, ast.CreateFunctionStmt):
        node.options = tuple(o for o in node.options or () if o.defname != "set")
    visitor = _Visitor(found, "its body", 0)
    visitor.texts[id(node)] = definition  # (its plpgsql body parsed from the text, not a deparse of the tree)
    visitor(node)
    found.schemas = [name for name in dict.fromkeys(found.schemas) if name]
    return found


def _read(text: str, found: Changes, body: str | None, depth: int, whole: bool = False) -> None:
    """`whole`: `text` may hold several statements (a sql body, an EXECUTE's string), read without may_set(), whose
    DO or CREATE FUNCTION need not begin the text; one statement (a top-level one, a plpgsql one) begins with them."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    if not whole and not may_set(text):
        return
    try:
        trees = [raw.stmt for raw in parse_sql(text)]
    except ParseError:  # (it may_set(): what the server's newer parser accepts is not guessed)
        found.unread.append("SQL the parser does not read")
        return
    for tree in trees:
        _Visitor(found, body, depth)(tree)


def _literal(node):
    """The string a node spells as a constant (a cast of one to unbounded text too), else None."""
    from pglast import ast

    while isinstance(node, ast.TypeCast):
        names = tuple(getattr(n, "sval", "") for n in node.typeName.names or ())
        if names not in _TEXT_TYPES or node.typeName.typmods or node.typeName.arrayBounds:
            return None
        node = node.arg
    value = getattr(node, "val", None) if isinstance(node, ast.A_Const) else None
    return getattr(value, "sval", None)


_WALK: list = []  # (pglast's Visitor subclass, made once: making one per body was a third of the reading)


def _walker(outer):
    """A pglast Visitor over a tree calling `outer`'s (a _Visitor's) readers."""
    if not _WALK:
        from pglast.visitors import Visitor

        class Walk(Visitor):
            def __init__(self, outer):
                self.outer = outer

            def visit_VariableSetStmt(self, _ancestors, node):
                self.outer.setting(node)

            def visit_FuncCall(self, _ancestors, call):
                self.outer.call(call)

            def visit_UpdateStmt(self, _ancestors, node):
                if node.relation.relname == "pg_settings":
                    self.outer.found.unread.append("an UPDATE of pg_settings")

            def visit_DoStmt(self, _ancestors, node):
                self.outer.do(node)

            def visit_CreateFunctionStmt(self, _ancestors, node):
                self.outer.routine(node)
        _WALK.append(Walk)
    return _WALK[0](outer)


class _Visitor:
    def __init__(self, found: Changes, body: str | None, depth: int):
        self.found, self.body, self.depth = found, body, depth
        self.texts: dict[int, str] = {}
        self.walk = _walker(self)

    def __call__(self, tree) -> None:
        self.walk(tree)

    def _set(self, schemas) -> None:
        self.found.schemas.extend(schemas)
        if self.body:
            self.found.inner.append(self.body)

    def setting(self, node) -> None:
        from pglast import ast, enums

        if (node.name or "").lower() != "search_path" or node.kind != enums.VariableSetKind.VAR_SET_VALUE:
            return  # (RESET, DEFAULT: the session's again; FROM CURRENT: as it is)
        words = [a.val.sval if isinstance(getattr(a, "val", None), ast.String) else None for a in node.args or ()]
        if None in words:  # (a number, ...: not read as the server would flatten it)
            self.found.unread.append("a SET search_path whose value is not a name or string")
        else:
            self._set(words)

    def call(self, call) -> None:
        from migrator.path_text import split_identifiers

        try:  # (a built-in running a query it is handed: its constant read as SQL, attack23z 10)
            for sql in query_builtins.sql(call.funcname[-1].sval, call.args):
                _read(sql, self.found, self.body or "a built-in's query", self.depth + 1)
        except query_builtins.Unread as unread:
            self.found.unread.append(str(unread))
        if call.funcname[-1].sval.lower() != "set_config":  # (any schema, quoted or not: fails closed)
            return
        args = [_literal(a) for a in call.args or ()]
        if not args or args[0] is None or call.agg_star or call.func_variadic:
            self.found.unread.append(COMPUTED)
        elif args[0].lower() != "search_path" and not _SETTING_NAME.fullmatch(args[0]):
            self.found.unread.append(COMPUTED)  # (a name the server's lookup might still fold to search_path)
        elif args[0].lower() == "search_path":
            schemas = split_identifiers(args[1]) if len(args) > 1 and args[1] is not None else None
            if schemas is None:  # (computed, or a path the reading here does not split as the server)
                self.found.unread.append(COMPUTED)
            else:
                self._set(schemas)

    def do(self, node) -> None:
        options = {o.defname: o.arg for o in node.args or ()}
        language = str(getattr(options.get("language"), "sval", "plpgsql")).lower()
        if language != "plpgsql":
            self.found.unread.append(f"a DO block in language {language}, which the runner does not read")
            return
        self.plpgsql(node, "a DO block")

    def routine(self, node) -> None:
        options = {o.defname: o.arg for o in node.options or ()}
        name = ".".join(n.sval for n in node.funcname)
        language = str(getattr(options.get("language"), "sval", "sql")).lower()
        body = plpgsql_text.body(node)
        where = f"the body of function {name}"
        if not body or language in ("c", "internal"):
            return  # (BEGIN ATOMIC: the walk reads it as part of the tree)
        if language == "plpgsql":
            self.plpgsql(node, where)
        elif language == "sql":
            _read(body, self.found, where, self.depth + 1, whole=True)
        elif language not in _READ_LANGUAGES:
            self.found.unread.append(f"{where} in language {language}, which the runner does not read")

    def plpgsql(self, node, where: str) -> None:
        try:
            if plpgsql_text.dumps(plpgsql_text.body(node)):
                self.found.unread.append(f"{where}, which holds #option dump (not given to the parser)")
                return
            text = self.texts.get(id(node))
            functions = plpgsql_text.parse_plpgsql(text) if text else plpgsql_text.parse(node)
        except Exception:  # (pglast raises several kinds: whatever such a body does is unread, attack23y 3)
            self.found.unread.append(f"{where}{_UNPARSED}")
            return
        self._plpgsql_walk(functions, where, None, None)

    def _plpgsql_walk(self, item, where: str, statement, key) -> None:
        if isinstance(item, list):
            for one in item:
                self._plpgsql_walk(one, where, statement, key)
        elif isinstance(item, dict):
            for name, value in item.items():
                if name == "PLpgSQL_expr":
                    self._expression(value.get("query") or "", value.get("parseMode", 0),
                                     (statement, key) in _DYNAMIC, where)
                else:
                    self._plpgsql_walk(value, where, name if name.startswith("PLpgSQL_stmt") else statement, name)

    def _expression(self, query: str, mode: int, dynamic: bool, where: str) -> None:
        """A plpgsql expression: mode 0 a statement, 2 an expression, 3-5 an assignment `target := value`."""
        from pglast import ast, parse_sql
        from pglast.parser import ParseError

        if self.depth >= _DEPTH:
            self.found.unread.append(f"{where}, nested too deep to read")
            return
        if dynamic:
            try:
                [raw] = parse_sql(f"SELECT {query}")
                [target] = raw.stmt.targetList
                sql = _literal(target.val) if isinstance(raw.stmt, ast.SelectStmt) else None
            except (ParseError, ValueError, TypeError):
                sql = None
            if sql is None:
                self.found.unread.append(BUILT)
            else:
                _read(sql, self.found, where, self.depth + 1, whole=True)
            return
        try:
            sql = plpgsql_text.expression_sql(query, mode)
        except ParseError:
            self.found.unread.append(f"{where}{_UNPARSED}")
            return
        _read(sql, self.found, where, self.depth + 1)
