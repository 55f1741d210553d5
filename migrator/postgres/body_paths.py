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


def _read(text: str, found: Changes, body: str | None, depth: int) -> None:
    from pglast import parse_sql
    from pglast.parser import ParseError

    if not may_set(text):
        return
    try:
        trees = [raw.stmt for raw in parse_sql(text)]
    except ParseError:  # (it may_set(): what the server's newer parser accepts is not guessed)
        found.unread.append("SQL the parser does not read")
        return
    for tree in trees:
        _Visitor(found, body, depth)(tree)


def _literal(node):
    """The string or boolean a node spells as a constant (a cast of one too), else None."""
    from pglast import ast

    while isinstance(node, ast.TypeCast):
        node = node.arg
    value = getattr(node, "val", None) if isinstance(node, ast.A_Const) else None
    return getattr(value, "sval", None)


class _Visitor:
    def __init__(self, found: Changes, body: str | None, depth: int):
        from pglast.visitors import Visitor

        outer = self
        self.found, self.body, self.depth = found, body, depth

        class Walk(Visitor):
            def visit_VariableSetStmt(self, _ancestors, node):
                outer.setting(node)

            def visit_FuncCall(self, _ancestors, call):
                outer.call(call)

            def visit_UpdateStmt(self, _ancestors, node):
                if node.relation.relname == "pg_settings":
                    outer.found.unread.append("an UPDATE of pg_settings")

            def visit_DoStmt(self, _ancestors, node):
                outer.do(node)

            def visit_CreateFunctionStmt(self, _ancestors, node):
                outer.routine(node)

        self.walk = Walk()

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
        self._set(a.val.sval for a in node.args or () if isinstance(getattr(a, "val", None), ast.String))

    def call(self, call) -> None:
        from migrator.postgres.risks_path import split_identifiers

        try:  # (a built-in running a query it is handed: its constant read as SQL, attack23z 10)
            for sql in query_builtins.sql(call.funcname[-1].sval, call.args):
                _read(sql, self.found, self.body or "a built-in's query", self.depth + 1)
        except query_builtins.Unread as unread:
            self.found.unread.append(str(unread))
        if call.funcname[-1].sval != "set_config":
            return
        args = [_literal(a) for a in call.args or ()]
        if args[:1] == [None]:
            self.found.unread.append(COMPUTED)
        elif str(args[0]).lower() == "search_path":
            if args[1:2] == [None]:
                self.found.unread.append(COMPUTED)
            else:
                self._set(split_identifiers(str(args[1] if len(args) > 1 else "")) or ())

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
            _read(body, self.found, where, self.depth + 1)
        elif language not in _READ_LANGUAGES:
            self.found.unread.append(f"{where} in language {language}, which the runner does not read")

    def plpgsql(self, node, where: str) -> None:
        try:
            if plpgsql_text.dumps(plpgsql_text.body(node)):
                self.found.unread.append(f"{where}, which holds #option dump (not given to the parser)")
                return
            functions = plpgsql_text.parse(node)
        except Exception:  # (pglast raises several kinds: whatever such a body does is unread, attack23y 3)
            self.found.unread.append(f"{where}, which the plpgsql parser does not read")
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
                _read(sql, self.found, where, self.depth + 1)
            return
        try:
            sql = plpgsql_text.expression_sql(query, mode)
        except ParseError:
            self.found.unread.append(f"{where}, which the plpgsql parser does not read")
            return
        _read(sql, self.found, where, self.depth + 1)
