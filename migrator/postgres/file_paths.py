"""What a pending file reaches beyond the schemas the connect check held to the planted rule: the schemas it puts on
its own search_path (attack23t 6), and the tables it writes by a qualified name (attack23t 7).

The connect check holds the migrated schema and the session's starting search_path to planted.py's rule. A file's
own `SET [LOCAL] search_path TO app, public` (or `set_config('search_path', 'app,public', ...)`) then makes its
unqualified names resolve in app too: an operator or function another role planted there, or may plant, runs as the
migration user. So the schemas the pending files name that way are read (the parser's VariableSetStmt and
set_config calls, only in statements that may set it: body_paths.may_set; a no-op deploy reads none) and checked by
the same catalog query, with those names as its path: one more round trip, only when a pending file names a path.

A table another role owns is that role's to add triggers, rules and policies to, and a trigger's function runs as
the writer: a file's INSERT / UPDATE / DELETE / MERGE / COPY FROM / TRUNCATE of `app.settings` (a qualified name:
an unqualified one resolves on the checked path) runs that role's code as the migration user. Those tables are read
from the statements that write (the parser's, as schema/targets.py reads DDL targets), and from the string bodies of
the DO blocks and routines a file holds (pending_writes.py: their constant EXECUTEs and inner DO blocks too,
attack23z 8), and asked of the catalog (planted.WRITTEN): one round trip, only when a pending file writes a qualified
name.

What a statement does to the path inside itself (a DO block's or a function's body, an EXECUTE, the routine's own
SET clause: attack23w 2) is read too (body_paths.py): a literal path there is checked as a top-level one, since the
statement that sets it resolves its own names under it. A change that cannot be read (an EXECUTE of a string built
at run time, set_config with a computed name or value) is refused while the migration user can reach (USAGE) any
schema another role may create in or owns objects in: such a change could put that schema on the path. Where no such
schema exists, whatever path it sets holds no other role's code, so it runs (EXECUTE format('ALTER TABLE %I ...') in
a DO block is common in real migrations). lint and plan name these statements (dynamic); a plain run's session is
still watched after each statement (CheckedPath), for a path left set by code the files do not hold (a live
function's).
"""

from __future__ import annotations

import re

from migrator import lazy_re, output, pending_writes, planted, trust
from migrator.errors import USAGE, MigratorError
from migrator.planted_code import alter_owner
from migrator.postgres.psql_tokens import IDENTIFIER, server_name

_WRITES = lazy_re.compile(r"\b(?:insert|update|delete|merge|copy|truncate)\b", re.IGNORECASE)
# The common shape read without the parser (a 20,000-row seed file of INSERTs: ~5 s of pglast trees, ~0.1 s here):
# INSERT / UPDATE / DELETE / MERGE at the start writes its head table alone (a data-modifying WITH is top-level only)
_NAME = r'"(?:[^"]|"")+"|' + IDENTIFIER
_HEAD = lazy_re.compile(rf"(?:insert\s+into|update|delete\s+from|merge\s+into)\s+(?:only\s+)?({_NAME})"
                        rf"(?:\s*\.\s*({_NAME}))?(?=[\s(;]|$)", re.IGNORECASE)
_QUERY = planted.with_creators(trust.PLANTED, "(SELECT pg_catalog.unnest(CAST(:paths AS pg_catalog.text[])))")
# Every schema the migration user can reach, for a path set by a route not read before the run (attack23w 2)
_REACHABLE = planted.with_creators(trust.PLANTED, """(SELECT x.nspname::text FROM pg_catalog.pg_namespace x
    WHERE x.nspname !~ '^pg_' AND x.nspname <> 'information_schema'
      AND pg_catalog.has_schema_privilege(x.oid, 'USAGE'))""")


def files(migrations, rollback: bool = False) -> list:
    """[(path, statements)] of the loaded `migrations` (their rollback files' with `rollback`)."""
    from migrator.postgres.files import rollback_path
    from migrator.postgres.server_statements import judged  # (each statement the server parses out of a text)

    return [(rollback_path(m), judged(m.rollback_statements())) if rollback else (m.path, judged(m.steps[0].statements))
            for m in migrations]


def scan(migrations) -> tuple[dict[str, str], dict[str, str]]:
    """({schema: the first `file:line` naming it}, {`file:line`: why a change there cannot be read}) of the search_path
    changes the files' ([(path, statements)]) statements make, their bodies' included (body_paths.read)."""
    from migrator import body_paths

    found: dict[str, str] = {}
    unread: dict[str, str] = {}
    for path, statements in migrations:
        for statement in statements:
            if body_paths.may_set(statement.text):
                changes, at = body_paths.read(statement.text), f"{path}:{statement.line}"
                for schema in changes.schemas:
                    found.setdefault(schema, at)
                if changes.unread:
                    unread.setdefault(at, changes.unread[0])
    return found, unread


def named(migrations) -> dict[str, str]:
    """{schema: the first `file:line` naming it} of what the files' ([(path, statements)]) literal search_path
    changes name (SET, set_config, a body's, the routine's SET clause)."""
    return scan(migrations)[0]


def dynamic(text: str) -> str | None:
    """`sql lint`'s and `plan`'s dynamic-search-path finding for a statement, in words, else None: a change that
    cannot be read (refused while the user can reach a schema others may plant in), a path set inside a body (the
    statement that sets it resolves its own names under it), a name spelled otherwise (U&)."""
    from migrator import body_paths

    if not body_paths.may_set(text):
        return None
    found = body_paths.read(text)
    if found.unread:
        return (f"search_path may be set by {found.unread[0]}, which cannot be read, so the schemas it names are not "
                "checked before the run: migrate refuses the file while the migration user can reach a schema other "
                "roles may create in or own objects in")
    if found.inner:
        return (f"search_path set inside {found.inner[0]}: the statement resolves its own names under it; the schemas "
                "it names are checked before the run, as a literal SET's")
    if found.schemas and not re.search(r"search_path|set\s+schema", text, re.IGNORECASE):
        return "search_path set by a SET spelling the name otherwise (U&): read and checked before the run"
    return None


def refuse(backend, migrations, schema: str, where: str, accepted: tuple[str, ...], rollback: bool = False) -> None:
    """Refuses (exit 2) a pending file whose own search_path names a schema others may plant in (planted.py's rule),
    or that sets it by a route not read while such a schema is within reach, naming file:line and the schema,
    unless SCHEMA_CREATORS_TRUSTED accepts them all."""
    naming, unread = scan(files(migrations, rollback))
    backend.path_checked = (set(naming), accepted)  # (with the session's own: checked already, guard())
    if naming:
        _refuse_named(backend, naming, schema, where, accepted)
    if unread:
        _refuse_unread(backend, unread, schema, where, accepted)


def _state(backend, query: str, schema: str, paths: list[str]):
    from migrator.schema.queries import BOOKKEEPING_TABLES

    return backend.execute(query, {"s": schema, "tables": list(dict.fromkeys([*BOOKKEEPING_TABLES,
                           backend.flyway_table])), "rights": [], "paths": paths}).fetchone()


def _refuse_named(backend, naming: dict[str, str], schema: str, where: str, accepted: tuple[str, ...]) -> None:
    state = _state(backend, _QUERY, schema, list(naming))
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


def _refuse_unread(backend, unread: dict[str, str], schema: str, where: str, accepted: tuple[str, ...]) -> None:
    """A change the runner cannot read may name any schema the user can reach: refused while one of them is another
    role's to create in or holds what another role owns (the planted rule's creators and objects)."""
    state = _state(backend, _REACHABLE, schema, [])
    creators, owned, _, _ = planted.untrusted(state, accepted)
    if not creators and not owned:
        return
    at, why = next(iter(unread.items()))
    said = planted.found(schema, creators, owned).replace(" (on the migration's search_path)", "")
    raise MigratorError(output.visible(
        f"refusing to migrate schema {schema} on {where}: {at} may set search_path by {why}, which cannot be read "
        f"before the run, so it may put any schema user {state[2]} can reach on the path, and among them {said}: "
        f"{planted.harm(state[2])}; write the path as a literal SET search_path TO ... (checked before anything "
        f"runs), or {planted.fix(schema, creators, owned, user=state[2])}"), USAGE)


def written(migrations) -> dict[str, str]:
    """{qualified table name (quoted): the first `file:line` writing it} of the files' ([(path, statements)]) row
    writes, their DO blocks' and routines' string bodies included (a body not read here: refuse() refuses it as a
    change of the path it cannot read, while the user can reach a schema with other roles' code)."""
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

                def visit_DoStmt(self, _ancestors, node):  # (a string body's writes: attack23z 8)
                    tables.extend(ast.RangeVar(schemaname=schema, relname=name)
                                  for schema, name in sorted(pending_writes.pending(node) or ()))

                visit_CreateFunctionStmt = visit_DoStmt

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
    """The backstop for a path set by code no pending file holds (a live function's body: refuse() read the files'
    own, attack23w 2). After each statement, a session's search_path that lists a schema the run did not check (its
    fresh session's, those the pending files name, pg_catalog and pg_temp were) is checked then, in the migration's
    session, by the same query: a schema others may plant in stops the file before its next statement resolves a name
    in it (the statement that set it has run under it already: attack23w 2c). PostgreSQL 18+ reports the change to
    the client when the statement ends; an older server is asked after each statement (one round trip)."""

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
            f"had not checked (set by code no pending file holds: a function already in the database; this "
            f"statement ran under it): {planted.found(self.schema, *left)}: {planted.harm(user)}; "
            f"{planted.fix(self.schema, *left, user=user)}; or write the path as a literal SET search_path TO ... "
            "(checked before anything runs)"))
        cause.exit_code = USAGE  # (a refusal, as the connect check's)
        return SearchPathMoved(found, self.expected, path, statements, index, transactional, done, opened, cause=cause)


def _bookkeeping_tables() -> list[str]:
    from migrator.schema.queries import BOOKKEEPING_TABLES

    return list(BOOKKEEPING_TABLES)
