"""A pending file's own grant of what planted.py refuses: CREATE on a schema the run resolves names in, TRIGGER on a
table (attack23v 5).

The planted check runs at connect and again before each file (trust.recheck); inside one non-transactional file
each statement commits at once, so a `GRANT CREATE ON SCHEMA public TO app` (or `GRANT TRIGGER` / `GRANT ALL` on a
table, or the same as a default privilege) is usable by that role before the file's next statement, whose `=` or
write then runs what the role planted as the migration user. So such a grant in a pending file, to a role the planted
rule does not trust, is refused before anything runs, naming file:line, the grant and the role. Read with the parser
only in statements that mention GRANT (a no-op deploy reads none).

A grant the text does not show (a DO block's EXECUTE, a function or procedure the file calls) commits as its
statement does in a non-transactional file: Watch re-runs the planted check (trust.recheck, one catalog query) once
the session is idle after such a statement, before the file's next one. Only those pay it: may_run_code() clears a
plain statement by one regex (no `(`, no DO / CALL / EXECUTE / PROGRAM word) or a seed INSERT's shape, else by the
parser (a call of a built-in that runs no SQL is plain); code the catalog attaches (a trigger, a default, a view) is
the user's own objects, which the planted rule already holds to its owner.
"""

from __future__ import annotations

import re

from migrator import lazy_re, output, planted, trust
from migrator.errors import USAGE, MigratorError
from migrator.postgres.psql_tokens import NOT_AFTER_IDENT, NOT_BEFORE_IDENT

_MENTIONS = lazy_re.compile(r"\bgrant\b", re.IGNORECASE)
# What may run SQL the text does not show: a call's parenthesis, a dollar quote, DO / CALL / EXECUTE / COPY's PROGRAM
_MAY_RUN = lazy_re.compile(rf"[($]|{NOT_AFTER_IDENT}(?:do|call|execute|program){NOT_BEFORE_IDENT}", re.IGNORECASE)
# A seed INSERT of constants (a 20,000-row file is not parsed): numbers, plain strings, NULL, TRUE, FALSE, DEFAULT,
# now() and the like, each maybe cast to a plain type name
_CONSTANT = (r"\s*(?:-?[0-9.]+|'(?:[^'\\]|'')*'|null|true|false|default|current_timestamp|current_date"
             r"|(?:now|clock_timestamp|gen_random_uuid)\(\s*\))(?:\s*::\s*[a-z]+)?\s*")
_ROW = rf"\((?:{_CONSTANT},)*{_CONSTANT}\)"
_SEED = lazy_re.compile(rf"\s*insert\s+into\s+[\w.\"]+\s*(?:\([\w\s,\"]+\))?\s*values\s*{_ROW}(?:\s*,\s*{_ROW})*\s*;?\s*",
                        re.IGNORECASE)
# Built-ins a seed or DDL calls that run no SQL (query_to_xml, ts_stat and the like do: not here)
_SQL_FREE = frozenset("""now clock_timestamp statement_timestamp transaction_timestamp nextval currval setval
    gen_random_uuid lower upper length md5 concat concat_ws trim btrim ltrim rtrim substring replace to_char to_date
    to_timestamp to_number date_trunc extract date_part coalesce greatest least round abs jsonb_build_object
    json_build_object jsonb_build_array json_build_array to_jsonb to_json array_agg count sum min max
    format_type""".split())

# The roles among :names the planted rule does not trust (none by that name yet: not trusted), and the schemas on the
# migration session's search_path.
_UNTRUSTED = f"""
WITH me AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER)
SELECT ARRAY(SELECT w.name FROM pg_catalog.unnest(CAST(:names AS pg_catalog.text[])) w(name)
             LEFT JOIN pg_catalog.pg_roles r ON r.rolname = w.name WHERE r.oid IS NULL OR NOT {planted.CREATOR_OK}),
       ARRAY(SELECT CASE WHEN q.w = '$user' THEN CURRENT_USER::text ELSE q.w END FROM {planted.PATH} AS q(w))
"""


def grants(migrations) -> list[tuple[str, int, str, str, list[str]]]:
    """[(file, line, what is granted, the schema it is on or '' for a table's or a default privilege's, grantees)] of
    the files' ([(path, statements)]) GRANTs of CREATE on a schema and of TRIGGER on tables (ALL carries both);
    grantees by name, 'PUBLIC' for PUBLIC (CURRENT_USER and the like: the user itself, left out)."""
    from pglast import ast, enums
    from pglast.visitors import Visitor

    from migrator.postgres.risks_path import _trees

    kinds, targets, roles = enums.ObjectType, enums.GrantTargetType, enums.RoleSpecType
    found: list[tuple[str, int, str, str, list[str]]] = []
    for path, statements in migrations:
        for statement in statements:
            if not _MENTIONS.search(statement.text):
                continue
            at = (str(path), statement.line)

            class Grants(Visitor):
                def visit_GrantStmt(self, _ancestors, node):
                    rights = {p.priv_name for p in node.privileges} if node.privileges else {"all"}
                    who = [g.rolename if g.roletype == roles.ROLESPEC_CSTRING else "PUBLIC" for g in node.grantees
                           if g.roletype in (roles.ROLESPEC_CSTRING, roles.ROLESPEC_PUBLIC)]
                    if not node.is_grant or not who:
                        return
                    defaults = node.targtype == targets.ACL_TARGET_DEFAULTS
                    if node.objtype == kinds.OBJECT_SCHEMA and rights & {"all", "create"}:
                        for name in [o.sval for o in node.objects or ()] or [""]:
                            found.append((*at, "CREATE on " + (f"schema {name}" if name else "the schemas it makes "
                                                              "(a default privilege)"), name, who))
                    elif node.objtype == kinds.OBJECT_TABLE and rights & {"all", "trigger"}:
                        on = ("the tables it makes (a default privilege)" if defaults else
                              ", ".join(f"tables in schema {o.sval}" if isinstance(o, ast.String) else
                                        f"table {o.schemaname + '.' if o.schemaname else ''}{o.relname}"
                                        for o in node.objects or ()))
                        found.append((*at, f"{'ALL (TRIGGER with it)' if 'all' in rights else 'TRIGGER'} on {on}", "",
                                      who))

            for tree in _trees(statement.text):
                Grants()(tree)
    return found


def refuse(backend, migrations, target, rollback: bool = False) -> None:
    """Refuses (exit 2) a pending file granting CREATE on the migrated schema or one on the session's or the files'
    own search_path (a default privilege's on schemas it makes too), or TRIGGER on any table, to a role neither
    the planted rule nor SCHEMA_CREATORS_TRUSTED trusts."""
    from migrator.postgres import file_paths

    pending = file_paths.files(migrations, rollback)
    found = grants(pending)
    if not found:
        return
    names = sorted({role for *_, who in found for role in who if role != "PUBLIC"})
    untrusted, path = backend.execute(_UNTRUSTED, {"names": names}).fetchone()
    used = {backend.bookkeeping_schema, *path, *file_paths.named(pending)}
    accepted = target.creators_trusted
    for path, line, what, schema, who in found:
        left = [r for r in who if r not in accepted and (r == "PUBLIC" or r in untrusted)]
        if left and (not what.startswith("CREATE on schema ") or schema in used):
            shown = ", ".join(r if r == "PUBLIC" else output.role(r) for r in left)
            raise MigratorError(output.visible(
                f"refusing to migrate schema {backend.bookkeeping_schema} on {target.where}: {path}:{line} grants "
                f"{what} to {'PUBLIC (every role)' if left == ['PUBLIC'] else 'role ' + shown}: it could plant an "
                "operator or add a trigger before the run's next statement, which then runs as user "
                f"{backend.connection.info.user}; grant it outside migrations and name the role in "
                f"{planted.SETTING}={','.join(left)}, or drop the grant"), USAGE)


def in_text(path, text: str) -> list[tuple[str, int, str, str, list[str]]]:
    """grants() of a whole file's text, split by the parser (lint: no loaded migration; one that does not parse
    gives none, its other findings say why)."""
    from types import SimpleNamespace

    from pglast import parse_sql
    from pglast.parser import ParseError

    if not _MENTIONS.search(text):
        return []
    try:
        raws = parse_sql(text)
    except ParseError:
        return []
    return grants([(path, [SimpleNamespace(text=text[r.stmt_location:r.stmt_location + (r.stmt_len or len(text))],
                                           line=text.count("\n", 0, r.stmt_location) + 1) for r in raws])])


def may_run_code(text: str) -> bool:
    """Whether a statement may run SQL its text does not show (so grant what file_grants cannot read): a DO block, a
    CALL, an EXECUTE, COPY ... PROGRAM, a call of a function other than a built-in that runs none (_SQL_FREE, by
    name: a same-named one on the path is the planted rule's), or what the parser cannot read."""
    if not _MAY_RUN.search(text) or _SEED.fullmatch(text):
        return False
    from pglast import ast, parse_sql
    from pglast.parser import ParseError
    from pglast.visitors import Visitor

    try:
        trees = [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return True
    found = []

    class Code(Visitor):
        def visit(self, _ancestors, node):
            if isinstance(node, (ast.DoStmt, ast.CallStmt, ast.ExecuteStmt)) or \
                    isinstance(node, ast.CopyStmt) and node.is_program:
                found.append(node)
            elif isinstance(node, ast.FuncCall):
                names = [n.sval for n in node.funcname]
                if names[-1] not in _SQL_FREE or names[:-1] not in ([], ["pg_catalog"]):
                    found.append(node)

    for tree in trees:
        Code()(tree)
        if found:
            return True
    return False


class Watch:
    """A run's guard (file_paths.CheckedPath, running.SearchPathGuard, or None) and, in a non-transactional file,
    the planted check again once a statement that may_run_code has committed, before the file's next statement."""

    def __init__(self, backend, inner):
        self.inner, self.session, self.books = inner, backend.connection, backend.parent
        self.accepted = (getattr(self.books, "path_checked", None) or (None, None))[1]
        self.since: int | None = None  # the line of the first such statement since the last check
        self.refused: MigratorError | None = None

    def changed(self, transactional: bool, statement) -> str | None:
        found = self.inner.changed(transactional) if self.inner is not None else None
        if found is not None or transactional or self.accepted is None:
            return found
        if self.since is None and may_run_code(statement.text):
            self.since = statement.line
        if self.since is None or self.session.info.transaction_status != 0:  # (its own BEGIN: at its COMMIT)
            return None
        books = self.books
        try:
            trust.recheck(books, books.bookkeeping_schema, books.where, self.accepted)
        except MigratorError as exc:
            self.refused = exc
            return "planted"
        self.since = None
        return None

    def moved(self, found: str, path, statements, index: int, transactional: bool, done: int, opened: int | None):
        from migrator.postgres.running import SearchPathMoved

        if self.refused is None:
            return self.inner.moved(found, path, statements, index, transactional, done, opened)
        cause = RuntimeError(output.visible(
            f"the statement at line {self.since} may run SQL its text does not show (a DO block, a function or "
            f"procedure call, EXECUTE) and has committed; the planted check, run again before the file's next "
            f"statement: {self.refused}"))
        cause.exit_code = self.refused.exit_code
        return SearchPathMoved(found, "", path, statements, index, transactional, done, opened, cause=cause)
