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
"""

from __future__ import annotations

import re

from migrator import lazy_re, output, planted, trust
from migrator.errors import USAGE, MigratorError
from migrator.postgres.psql_tokens import IDENTIFIER

_MENTIONS = lazy_re.compile(r"search_path", re.IGNORECASE)
_WRITES = lazy_re.compile(r"\b(?:insert|update|delete|merge|copy|truncate)\b", re.IGNORECASE)
# The common shape read without the parser (a 20,000-row seed file of INSERTs: ~5 s of pglast trees, ~0.1 s here):
# INSERT / UPDATE / DELETE / MERGE at the start writes its head table alone (a data-modifying WITH is top-level only)
_NAME = r'"(?:[^"]|"")+"|' + IDENTIFIER
_HEAD = lazy_re.compile(rf"(?:insert\s+into|update|delete\s+from|merge\s+into)\s+(?:only\s+)?({_NAME})"
                        rf"(?:\s*\.\s*({_NAME}))?(?=[\s(;]|$)", re.IGNORECASE)
_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")  # (ASCII only, as the server)
_QUERY = planted.with_creators(trust.PLANTED, "(SELECT pg_catalog.unnest(CAST(:paths AS pg_catalog.text[])))")


def files(migrations, rollback: bool = False) -> list:
    """[(path, statements)] of the loaded `migrations` (their rollback files' with `rollback`)."""
    from migrator.postgres.files import rollback_path

    return [(rollback_path(m), m.rollback_statements()) if rollback else (m.path, m.steps[0].statements)
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


def refuse(backend, migrations, schema: str, where: str, accepted: tuple[str, ...], rollback: bool = False) -> None:
    """Refuses (exit 2) a pending file whose own search_path names a schema others may plant in (planted.py's rule),
    naming file:line and the schema, unless SCHEMA_CREATORS_TRUSTED accepts them all."""
    from migrator.schema.queries import BOOKKEEPING_TABLES

    naming = named(files(migrations, rollback))
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
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.translate(_FOLD)


def refuse_writes(backend, migrations, schema: str, where: str, accepted: tuple[str, ...],
                  rollback: bool = False) -> None:
    """Refuses (exit 2) a pending file writing a table another role owns, whose trigger's function another role
    owns, on which another role may add triggers, or with a column of another role's domain (planted.WRITTEN),
    naming file:line, the table, the role and the fix, unless SCHEMA_CREATORS_TRUSTED accepts the role."""
    tables = written(files(migrations, rollback))
    if not tables:
        return
    names = list(tables)
    rows = [row for row in backend.execute(planted.WRITTEN, {"names": names}).fetchall() if row[2] not in accepted]
    if not rows:
        return
    index, table, role, kind, detail, domain = rows[0]
    what, fix = _written(table, role, kind, detail, domain, backend.connection.info.user)
    roles = ",".join(dict.fromkeys(row[2] for row in rows))
    raise MigratorError(output.visible(
        f"refusing to migrate schema {schema} on {where}: {tables[names[index - 1]]} writes table {table}, {what}"
        f"{f' (and {len(rows) - 1} more)' * (len(rows) > 1)}; {fix}; or, to trust them, set "
        f"{planted.SETTING}={roles}"), USAGE)


def _written(table: str, role: str, kind: str, detail: str, domain: str, user: str) -> tuple[str, str]:
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
    if kind == "domain":
        return (f"whose column {detail} is of domain {domain} (owner {shown}): a CHECK its owner adds runs {runs}",
                f"as a superuser or {shown} run {runnable(f'ALTER DOMAIN {domain} OWNER TO {ident(user)}')}")
    return (f"owned by role {shown}, which may add triggers, rules or policies to it at any time: they run {runs}",
            f"as a superuser or {shown} run ALTER TABLE {table} OWNER TO {output.role(user)}, or write it from the "
            "application")


def refuse_reach(backend, migrations, target, rollback: bool = False) -> None:
    """Both refusals, for the files a writing command is about to run (their rollback files' with `rollback`)."""
    for check in (refuse, refuse_writes):
        check(backend, migrations, backend.bookkeeping_schema, target.where, target.creators_trusted, rollback)
