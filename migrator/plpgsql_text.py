"""Reading PL/pgSQL bodies with pglast safely, for every reader of them (body_paths: a pending file's
search_path changes; planted_bodies: what an own function calls).

libpg_query's plpgsql parser runs in the runner's process, and a body holding `#option dump` makes it print the
compiled function, variable names raw, on the process's stdout with C printf: into `plan | psql` (a variable named
`\\! cmd #` ran as a psql meta-command) and between JSON log events (attack23y 4). The plpgsql dump functions are
the parser library's only writers to stdout (its pg_printf callers), so such a body is never given to it: dumps()
finds the option as the plpgsql lexer does (its tokens: any case, spacing, comments). A VARIADIC parameter is read as
a plain one (libpg_query cannot compile it: attack23y 3), and an assignment is read whole, its target's subscripts
being expressions the server runs (attack23y 6).
"""

from __future__ import annotations

import re

from migrator import lazy_re

_DUMP = lazy_re.compile(r"dump", re.IGNORECASE)  # (cheap, linear: only texts with #, option and dump are scanned)
_OPTION = lazy_re.compile(r"option", re.IGNORECASE)


def may_dump(text: str) -> bool:
    """Cheap: whether `text` holds the characters of `#option dump` at all (else it is not scanned)."""
    return "#" in text and bool(_DUMP.search(text)) and bool(_OPTION.search(text))


def dumps(body: str) -> bool:
    """Whether a plpgsql body holds `#option dump` as the plpgsql lexer reads it (any case, spacing, comments):
    the tokens `#`, `option`, `dump` (a quoted "dump" is a name, not the keyword). Raises ParseError when the text
    cannot be scanned (the plpgsql parser could not compile it either)."""
    from pglast.parser import scan

    if not may_dump(body):
        return False
    raw = body.encode()
    words = [raw[t.start:t.end + 1].decode(errors="replace").lower() for t in scan(body)
             if not t.name.endswith("COMMENT")]
    return any(words[i:i + 3] == ["#", "option", "dump"] for i in range(len(words)))


def parse_plpgsql(sql: str) -> list:
    """pglast.parse_plpgsql of one DO / CREATE FUNCTION / PROCEDURE text, for every reader of plpgsql bodies
    (planted_bodies too): ParseError for a body holding `#option dump` (never given to the parser, attack23y 4);
    a VARIADIC parameter read as a plain one."""
    from pglast import parse_plpgsql as pglast_parse, parse_sql

    if not may_dump(sql) and "variadic" not in sql.lower():  # (the text itself: a deparse costs as much as a parse)
        return pglast_parse(sql)
    [raw] = parse_sql(sql)
    return parse(raw.stmt)


def parse(node) -> list:
    """parse_plpgsql() of a pglast DoStmt / CreateFunctionStmt node (its parameters' modes changed in place)."""
    from pglast import enums, parse_plpgsql as pglast_parse
    from pglast.parser import ParseError
    from pglast.stream import RawStream

    if dumps(body(node)):
        raise ParseError("a body holding #option dump is not parsed (the parser would print it)", 0)
    for parameter in getattr(node, "parameters", None) or ():  # (libpg_query cannot compile VARIADIC: attack23y 3)
        if parameter.mode == enums.FunctionParameterMode.FUNC_PARAM_VARIADIC:
            parameter.mode = enums.FunctionParameterMode.FUNC_PARAM_IN
    return pglast_parse(RawStream()(node))


def assignment(query: str) -> str:
    """The SQL reading a plpgsql assignment `target := value` (or `=`) whole: `SELECT target, value` (the target's
    subscripts are expressions the server runs: attack23y 6). Raises ParseError when it cannot be scanned."""
    from pglast.parser import scan

    raw, depth = query.encode(), 0
    for token in scan(query):
        text = raw[token.start:token.end + 1]
        depth += 1 if text in (b"(", b"[") else -1 if text in (b")", b"]") else 0
        if depth == 0 and text in (b":=", b"="):
            return f"SELECT {raw[:token.start].decode()}, {raw[token.end + 1:].decode()}"
    return f"SELECT {query}"


def expression_sql(query: str, mode: int) -> str:
    """The SQL text reading a plpgsql expression (pglast's PLpgSQL_expr query and parseMode: 0 a statement, 2 an
    expression, 3-5 an assignment), for every reader of plpgsql bodies (planted_bodies too)."""
    return query if mode == 0 else assignment(query) if mode >= 3 else f"SELECT {query}"


def body(node) -> str:
    """A DO block's or a routine's body as written (a routine's AS 'obj', 'link': the first)."""
    for option in [*(getattr(node, "args", None) or ()), *(getattr(node, "options", None) or ())]:
        if option.defname == "as":
            arg = option.arg[0] if isinstance(option.arg, (list, tuple)) else option.arg
            return getattr(arg, "sval", "") or ""
    return ""
