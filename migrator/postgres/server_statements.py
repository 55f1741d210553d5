"""The statements the SERVER parses out of one text the splitter gives (issue 24, attack24u 2 and 4).

psql's lexer (and the splitter, which copies it on purpose) counts BEGIN ... END inside CREATE FUNCTION / PROCEDURE
for a BEGIN ATOMIC body, so a routine NAMED begin (`CREATE FUNCTION begin() ... RETURN 1;`) makes it send the rest of
the file as one text, of which the server's parser makes several statements and runs them all. The runner sends such
a text as psql does, but judges each statement in it, read with PostgreSQL's own parser (pglast): transaction control
there is refused before anything runs (it would end the runner's transaction unseen), and the checks and verdicts that
read statements (the file's own checks, the rewrite refusal, plan --impact, the tenant and path checks, lint) read
each one with its own line. Only a text in which the splitter kept a `;` by counting a `begin` that opens no BEGIN
ATOMIC body is parsed (Statement.swallowed): a no-op deploy, and a file without such a word, parse none.
"""

from __future__ import annotations

import functools



def parts(statement) -> list:
    """The statements the server parses out of `statement`'s text, each with its own line and offset in the file
    (the first the text's head); [statement] when it is one, or when pglast cannot read it (the server refuses it)."""
    if not getattr(statement, "swallowed", False):
        return [statement]
    return [part for part, _ in _parsed(statement)]


def parts_of(text: str, line: int) -> list:
    """parts() of a statement's text starting at `line` (for a reader that kept only the text: plan --impact)."""
    from migrator.postgres.splitter import SplitError, Statement, split

    try:
        swallowed = [s.swallowed for s in split(text)] == [True]  # (the splitter's word on it again: cheap)
    except SplitError:
        swallowed = False
    return parts(Statement(text, line, 0, swallowed=swallowed))


def judged(statements) -> list:
    """The statements the server will run, in order: each text the splitter gives, or the statements inside it."""
    return [part for statement in statements for part in parts(statement)]


def problems(found, check) -> list[tuple[int, str]]:
    """(line, message) of what cannot run in the splitter's statements `found`: what `check` (files.py's check of
    one statement) refuses in each statement the server parses out of them, and transaction control inside a text
    psql sends as one statement (in any file: the runner follows transactions statement by statement)."""
    from migrator.body_paths import dump_problem

    refused = []
    for statement in found:
        for index, (part, tree) in enumerate(_parsed(statement) if getattr(statement, "swallowed", False)
                                             else [(statement, None)]):
            if index and _ends_transaction(tree):
                refused.append((part.line, _hidden(part, statement)))
            elif problem := check(part) or dump_problem(part.text):  # (in any file: attack23y 4)
                refused.append((part.line, problem))
    return refused


def _hidden(part, statement) -> str:
    what = " ".join(part.text.split())[:40].rstrip(";")
    return (f"{what} is inside the text psql sends as one statement with the routine at line {statement.line} (psql "
            "reads a word `begin` in it as a BEGIN ATOMIC body), and the server runs it: it would end or open a "
            "transaction unseen by the runner; quote the routine's name (\"begin\") or rename it, and keep "
            "transaction control out of that text")


def _ends_transaction(tree) -> bool:
    """A statement that opens or ends a transaction (a SAVEPOINT, RELEASE or ROLLBACK TO does neither)."""
    from pglast import ast, enums

    kind = enums.TransactionStmtKind
    return isinstance(tree, ast.TransactionStmt) and tree.kind not in (
        kind.TRANS_STMT_SAVEPOINT, kind.TRANS_STMT_RELEASE, kind.TRANS_STMT_ROLLBACK_TO)


@functools.lru_cache(maxsize=512)
def _parsed(statement) -> tuple:
    """((part, its pglast tree), ...) of a swallowed statement; ((statement, None),) when it is one."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    from migrator.postgres.splitter import Statement, newlines

    text = statement.text
    try:
        raws = parse_sql(text)  # (locations in characters, each at its statement's first token)
    except ParseError:
        return ((statement, None),)
    if len(raws) < 2:
        return ((statement, None),)
    found = []
    for raw in raws:
        at = raw.stmt_location
        body = text[at:at + raw.stmt_len] if raw.stmt_len else text[at:]
        found.append((Statement(body, statement.line + newlines(text, 0, at), statement.offset + at), raw.stmt))
    return tuple(found)


def resets_all(text: str) -> bool:
    """`text` runs a RESET ALL or DISCARD ALL, as the server reads it (`RESET/**/ALL`, a comment line between the
    words: attack24w 2), which resets the runner's SET LOCAL mark too (running.mark_try sets it again). Parsed only
    when one of the words is there; unreadable: the server refuses it anyway. (Code that builds it at run time, an
    EXECUTE in a DO block, is seen by the record instead: TransactionEnded's words name it.)"""
    lowered = text.lower()
    if "reset" not in lowered and "discard" not in lowered:
        return False
    from pglast import ast, enums, parse_sql
    from pglast.parser import ParseError

    try:
        found = [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return False
    return any(isinstance(stmt, ast.VariableSetStmt) and stmt.kind == enums.VariableSetKind.VAR_RESET_ALL
               or isinstance(stmt, ast.DiscardStmt) and stmt.target == enums.DiscardMode.DISCARD_ALL for stmt in found)
