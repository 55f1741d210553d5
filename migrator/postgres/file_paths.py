"""What a pending file reaches beyond the schemas the connect check held to the planted rule: the schemas it puts on
its own search_path (attack23t 6), and the tables it writes by a qualified name (attack23t 7).

The connect check holds the migrated schema and the session's starting search_path to planted.py's rule. A file's
own `SET [LOCAL] search_path TO app, public` (or `set_config('search_path', 'app,public', ...)`) then makes its
unqualified names resolve in app too: an operator or function another role planted there, or may plant, runs as the
migration user. So the schemas the pending files name that way are read (the parser's VariableSetStmt and
set_config calls, only in statements that mention search_path: a no-op deploy reads none) and checked by the same
catalog query, with those names as its path: one more round trip, only when a pending file names a path.

A table another role owns is that role's to add triggers, rules and policies to, and a trigger's function runs as
the writer: a file's INSERT / UPDATE / DELETE / MERGE / COPY FROM / TRUNCATE of `app.settings` (a qualified name:
an unqualified one resolves on the checked path) runs that role's code as the migration user. Those tables are read
from the statements that write (the parser's, as schema/targets.py reads DDL targets) and asked of the catalog
(planted.WRITTEN): one round trip, only when a pending file writes a qualified name.

A path set by a route the text does not spell (a DO block's EXECUTE, a computed set_config: attack23u 3) is not read
before the run: lint and plan name such statements (dynamic), and a plain run's migration session is watched after
each statement (CheckedPath): a path listing a schema the run did not check stops the file before its next statement.
"""

from __future__ import annotations

import re

from migrator import lazy_re, output, planted, trust
from migrator.errors import USAGE, MigratorError
from migrator.planted_code import alter_owner
from migrator.postgres.psql_tokens import IDENTIFIER, server_name

_MENTIONS = lazy_re.compile(r"search_path|u&|set\s+schema", re.IGNORECASE)  # (U&"search\005fpath", SET SCHEMA 's')
# What may set the path in a way named() cannot read (attack23u 3): only such statements are parsed for lint
_DYNAMIC = lazy_re.compile(r"search_path|set_config|pg_settings|u&|\bdo\b", re.IGNORECASE)
# A DO body that sets the path, or runs SQL built at run time (EXECUTE of anything but one literal)
_DO_BODY = lazy_re.compile(r"search_path|set_config|pg_settings|\bexecute\b(?!\s*'(?:[^']|'')*'\s*;)",
                           re.IGNORECASE)
_WRITES = lazy_re.compile(r"\b(?:insert|update|delete|merge|copy|truncate)\b", re.IGNORECASE)
# The common shape read without the parser (a 20,000-row seed file of INSERTs: ~5 s of pglast trees, ~0.1 s here):
# INSERT / UPDATE / DELETE / MERGE at the start writes its head table alone (a data-modifying WITH is top-level only)
_NAME = r'"(?:[^"]|"")+"|' + IDENTIFIER
_HEAD = lazy_re.compile(rf"(?:insert\s+into|update|delete\s+from|merge\s+into)\s+(?:only\s+)?({_NAME})"
                        rf"(?:\s*\.\s*({_NAME}))?(?=[\s(;]|$)", re.IGNORECASE)
_QUERY = planted.with_creators(trust.PLANTED, "(SELECT pg_catalog.unnest(CAST(:paths AS pg_catalog.text[])))")


def files(migrations, rollback: bool = False) -> list:
    """[(path, statements)] of the loaded `migrations` (their rollback files' with `rollback`)."""
    from migrator.postgres.files import rollback_path
    from migrator.postgres.server_statements import judged  # (each statement the server parses out of a text)

    return [(rollback_path(m), judged(m.rollback_statements())) if rollback else (m.path, judged(m.steps[0].statements))
            for m in migrations]


def named(migrations) -> dict[str, str]:
    """{schema: the first `file:line` naming it} of what the files' ([(path, statements)]) SET search_path /
    set_config name."""
    found: dict[str, str] = {}
    for path, statements in migrations:
        for statement in statements:
            if _MENTIONS.search(statement.text):
                for schema in _schemas(statement.text):
                    found.setdefault(schema, f"{path}:{statement.line}")
    return found


def _schemas(text: str) -> list[str]:
    from pglast import ast
    from pglast.visitors import Visitor

    from migrator.postgres.risks_path import _trees, split_identifiers

    found: list[str] = []

    class Settings(Visitor):
        def visit_VariableSetStmt(self, _ancestors, node):
            if (node.name or "").lower() == "search_path":
                found.extend(a.val.sval for a in node.args or () if isinstance(getattr(a, "val", None), ast.String))

        def visit_FuncCall(self, _ancestors, call):
            args = call.args or ()
            if call.funcname[-1].sval == "set_config" and len(args) > 1 and \
                    str(getattr(getattr(args[0], "val", None), "sval", "")).lower() == "search_path":
                found.extend(split_identifiers(str(getattr(getattr(args[1], "val", None), "sval", ""))) or ())

    for tree in _trees(text):
        Settings()(tree)
    return [name for name in found if name]  # ('': pg_dump's empty path names no schema)


def dynamic(text: str) -> str | None:
    """Why a statement may set search_path by a route named() does not read (a DO block that sets it or runs built
    SQL, set_config with a computed name or value, a U& spelling of the name, a write to pg_settings), else None:
    `sql lint`'s and `plan`'s dynamic-search-path finding (migrate stops the file after it instead: CheckedPath)."""
    from pglast import ast
    from pglast.visitors import Visitor

    from migrator.postgres.risks_path import _trees

    if not _DYNAMIC.search(text):
        return None
    found: list[str] = []

    class Routes(Visitor):
        def visit_DoStmt(self, _ancestors, node):
            body = " ".join(str(getattr(o.arg, "sval", "")) for o in node.args or () if o.defname == "as")
            if _DO_BODY.search(body):
                found.append("a DO block that sets it or runs SQL built at run time (EXECUTE)")

        def visit_VariableSetStmt(self, _ancestors, node):
            if (node.name or "").lower() == "search_path" and not re.search(r"search_path|set\s+schema", text, re.I):
                found.append("a SET spelling the name otherwise (U&)")

        def visit_FuncCall(self, _ancestors, call):
            args = [getattr(getattr(a, "val", None), "sval", None) for a in call.args or ()]
            if call.funcname[-1].sval == "set_config" and (args[:1] == [None] or str(args[0]).lower() == "search_path"
                                                            and args[1:2] == [None]):
                found.append("set_config with a computed name or value")

        def visit_UpdateStmt(self, _ancestors, node):
            if node.relation.relname == "pg_settings":
                found.append("an UPDATE of pg_settings")

    for tree in _trees(text):
        Routes()(tree)
    return found[0] if found else None


def refuse(backend, migrations, schema: str, where: str, accepted: tuple[str, ...], rollback: bool = False) -> None:
    """Refuses (exit 2) a pending file whose own search_path names a schema others may plant in (planted.py's rule),
    naming file:line and the schema, unless SCHEMA_CREATORS_TRUSTED accepts them all."""
    from migrator.schema.queries import BOOKKEEPING_TABLES

    naming = named(files(migrations, rollback))
    backend.path_checked = (set(naming), accepted)  # (with the session's own: checked already, guard())
    if not naming:
        return
    state = backend.execute(_QUERY, {"s": schema, "tables": list(dict.fromkeys([*BOOKKEEPING_TABLES,
                                     backend.flyway_table])), "rights": [], "paths": list(naming)}).fetchone()
    left = planted.untrusted(state, accepted)
    if not any(left):
        return
    said = planted.found(schema, *left)
    shown = [name for name in naming if f"schema {name} " in said or f" {name}." in said] or list(naming)
    first = shown[0]
    raise MigratorError(output.visible(
        f"refusing to migrate schema {schema} on {where}: {naming[first]} puts schema {first} on its search_path"
        f"{f' (and {len(shown) - 1} more)' * (len(shown) > 1)}: {said}: {planted.harm(state[2])}; "
        f"{planted.fix(schema, *left, user=state[2])}"), USAGE)


def written(migrations) -> dict[str, str]:
    """{qualified table name (quoted): the first `file:line` writing it} of the files' ([(path, statements)]) row
    writes."""
    from pglast import ast
    from pglast.visitors import Visitor

    from migrator.grant_text import ident
    from migrator.postgres.risks_path import _trees

    found: dict[str, str] = {}
    for path, statements in migrations:
        for statement in statements:
            head = _HEAD.match(statement.text)
            if head:
                if head[2]:  # (unqualified: on the checked path)
                    table = f"{ident(_bare(head[1]))}.{ident(_bare(head[2]))}"
                    found.setdefault(table, f"{path}:{statement.line}")
                continue
            if not _WRITES.search(statement.text):
                continue
            tables: list = []

            class Writes(Visitor):
                def visit_InsertStmt(self, _ancestors, node):
                    tables.append(node.relation)

                visit_UpdateStmt = visit_DeleteStmt = visit_MergeStmt = visit_InsertStmt

                def visit_CopyStmt(self, _ancestors, node):
                    tables.append(node.relation if node.is_from else None)

                def visit_TruncateStmt(self, _ancestors, node):
                    tables.extend(node.relations or ())

            for tree in _trees(statement.text):
                Writes()(tree)
            for table in tables:
                if isinstance(table, ast.RangeVar) and table.schemaname:
                    found.setdefault(f"{ident(table.schemaname)}.{ident(table.relname)}",
                                     f"{path}:{statement.line}")
    return found


def _bare(name: str) -> str:
    quoted = name.startswith('"')
    return server_name(name[1:-1].replace('""', '"') if quoted else name, quoted)


def refuse_writes(backend, migrations, schema: str, where: str, accepted: tuple[str, ...],
                  rollback: bool = False) -> None:
    """Refuses (exit 2) a pending file writing a table another role owns, whose trigger's function another role
    owns, on which another role may add triggers, or whose implicit code another role owns (planted.WRITTEN),
    naming file:line, the table, the role and the fix, unless SCHEMA_CREATORS_TRUSTED accepts the role."""
    tables = written(files(migrations, rollback))
    if not tables:
        return
    names = list(tables)
    rows = [row for row in backend.execute(planted.WRITTEN, {"names": names}).fetchall() if row[2] not in accepted]
    if not rows:
        return
    index, table, role, kind, detail, reached = rows[0]
    what, fix = _written(table, role, kind, detail, reached, backend.connection.info.user)
    roles = ",".join(dict.fromkeys(row[2] for row in rows))
    raise MigratorError(output.visible(
        f"refusing to migrate schema {schema} on {where}: {tables[names[index - 1]]} writes table {table}, {what}"
        f"{f' (and {len(rows) - 1} more)' * (len(rows) > 1)}; {fix}; or, to trust them, set "
        f"{planted.SETTING}={roles}"), USAGE)


def _written(table: str, role: str, kind: str, detail: str, reached: str, user: str) -> tuple[str, str]:
    """(what another role may run on a write of `table`, what to do) for a planted.WRITTEN row."""
    from migrator.grant_text import ident, runnable

    shown = output.role(role)
    runs = f"as user {user} on each write"
    if kind == "trigger":
        return (f"whose trigger {detail}, owner {shown}) runs {runs}",
                f"as its owner drop the trigger, or make user {user} its function's owner")
    if kind == "right":
        revoke = runnable(f"REVOKE TRIGGER ON {table} FROM {role if role == 'PUBLIC' else ident(role)} CASCADE")
        return (f"on which role {shown} may add triggers (a TRIGGER right): one added mid-run runs {runs}",
                f"{f'as role {output.role(detail)}, which granted it, ' * bool(detail)}run {revoke}")
    if kind == "code":
        return (f"whose {detail} uses {reached} (owner {shown}): its owner may replace it at any time, and it runs "
                f"{runs}", f"as a superuser run {runnable(alter_owner(reached, user))} (or stop using it)")
    return (f"owned by role {shown}, which may add triggers, rules or policies to it at any time: they run {runs}",
            f"as a superuser or {shown} run ALTER TABLE {table} OWNER TO {output.role(user)}, or write it from the "
            "application")


def refuse_reach(backend, migrations, target, rollback: bool = False) -> None:
    """Both refusals, for the files a writing command is about to run (their rollback files' with `rollback`)."""
    for check in (refuse, refuse_writes):
        check(backend, migrations, backend.bookkeeping_schema, target.where, target.creators_trusted, rollback)


def guard(backend):
    """A plain run's watch on each statement's search_path (running.SearchPathGuard's interface), once refuse() has
    checked what the pending files name: None for a run that did not (a scratch database's)."""
    checked = getattr(backend.parent, "path_checked", None)
    return None if checked is None else CheckedPath(backend, *checked)


# _QUERY on a plain psycopg2 cursor (%(name)s parameters), in the migration's own session: it sees what the file's
# open transaction made (a schema, a function) as the next statement will
_ON_SESSION = re.sub(r"(?<![:\w]):(s|tables|rights|paths)\b", r"%(\1)s", _QUERY)


class CheckedPath:
    """A path set by a route the text reader cannot follow (a DO block's EXECUTE, a computed set_config, a function's
    SET) was never held to the planted rule (attack23u 3). After each statement, a session's search_path that lists a
    schema the run did not check (its fresh session's, those the pending files' SET search_path name, pg_catalog and
    pg_temp were) is checked then, in the migration's session, by the same query: a schema others may plant in stops
    the file there, before its next statement resolves a name in it. PostgreSQL 18+ reports each change to the
    client; an older server is asked after each statement (one round trip)."""

    def __init__(self, backend, named: set[str], accepted: tuple[str, ...]):
        from migrator.postgres.risks_path import split_identifiers

        self.connection, self.schema, self.accepted = backend.connection, backend.bookkeeping_schema, accepted
        self.tables = [*dict.fromkeys([*_bookkeeping_tables(), getattr(backend, "flyway_table", None) or ""])]
        self.reported = self.connection.info.parameter_status("search_path") is not None
        self.expected = self._now()
        self.allowed = {*(split_identifiers(self.expected) or ()), *named, "pg_catalog", "pg_temp"}
        self.found: tuple | None = None  # (the unchecked schemas, planted.untrusted's, the user) of the refusal

    def _now(self) -> str:
        if self.reported:
            return self.connection.info.parameter_status("search_path")
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_catalog.current_setting('search_path')")
            return cursor.fetchone()[0]

    def changed(self, transactional: bool) -> str | None:
        """The session's search_path if it lists a schema others may plant in that the run had not checked."""
        from migrator.postgres.risks_path import split_identifiers

        now = self._now()
        new = [n for n in split_identifiers(now) or () if n not in self.allowed] if now != self.expected else []
        if not new:
            return None
        from migrator import pinned

        with self.connection.cursor() as cursor, pinned.catalog_path(cursor):
            cursor.execute(_ON_SESSION, {"s": self.schema, "tables": [t for t in self.tables if t], "rights": [],
                                         "paths": new})
            state = cursor.fetchone()
        left = planted.untrusted(state, self.accepted)
        if not any(left):
            self.allowed.update(new)  # (checked now: clean)
            return None
        self.found = (new, left, state[2])
        return now

    def moved(self, found: str, path, statements, index: int, transactional: bool, done: int, opened: int | None):
        from migrator.postgres.running import SearchPathMoved

        new, left, user = self.found
        cause = RuntimeError(output.visible(
            f"this statement changed search_path to '{found}', putting schema {', '.join(new)} on it, which the run "
            f"had not checked (a path set at run time: a DO block's EXECUTE, set_config with a computed name or value, "
            f"a function's SET): {planted.found(self.schema, *left)}: {planted.harm(user)}; "
            f"{planted.fix(self.schema, *left, user=user)}; or write the path as a literal SET search_path TO ... "
            "(checked before anything runs)"))
        cause.exit_code = USAGE  # (a refusal, as the connect check's)
        return SearchPathMoved(found, self.expected, path, statements, index, transactional, done, opened, cause=cause)


def _bookkeeping_tables() -> list[str]:
    from migrator.schema.queries import BOOKKEEPING_TABLES

    return list(BOOKKEEPING_TABLES)
