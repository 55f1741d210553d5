"""The schemas a pending file puts on its own search_path, held to the planted rule (attack23t 6).

The connect check holds the migrated schema and the session's starting search_path to planted.py's rule. A file's
own `SET [LOCAL] search_path TO app, public` (or `set_config('search_path', 'app,public', ...)`) then makes its
unqualified names resolve in app too: an operator or function another role planted there, or may plant, runs as the
migration user. So the schemas the pending files name that way are read (the parser's VariableSetStmt and
set_config calls, only in statements that mention search_path: a no-op deploy reads none) and checked by the same
catalog query, with those names as its path: one more round trip, only when a pending file names a path.
"""

from __future__ import annotations

import re

from migrator import lazy_re, output, planted, trust
from migrator.errors import USAGE, MigratorError

_MENTIONS = lazy_re.compile(r"search_path", re.IGNORECASE)
_QUERY = planted.with_creators(trust.PLANTED, "(SELECT pg_catalog.unnest(CAST(:paths AS pg_catalog.text[])))")


def named(migrations) -> dict[str, str]:
    """{schema: the first `file:line` naming it} of what the pending files' SET search_path / set_config name."""
    found: dict[str, str] = {}
    for migration in migrations:
        for statement in migration.steps[0].statements:
            if _MENTIONS.search(statement.text):
                for schema in _schemas(statement.text):
                    found.setdefault(schema, f"{migration.path}:{statement.line}")
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
    return found


def refuse(backend, migrations, schema: str, where: str, accepted: tuple[str, ...]) -> None:
    """Refuses (exit 2) a pending file whose own search_path names a schema others may plant in (planted.py's rule),
    naming file:line and the schema, unless SCHEMA_CREATORS_TRUSTED accepts them all."""
    from migrator.schema.queries import BOOKKEEPING_TABLES

    files = named(migrations)
    if not files:
        return
    state = backend.execute(_QUERY, {"s": schema, "tables": list(dict.fromkeys([*BOOKKEEPING_TABLES,
                                     backend.flyway_table])), "rights": [], "paths": list(files)}).fetchone()
    left = planted.untrusted(state, accepted)
    if not any(left):
        return
    said = planted.found(schema, *left)
    shown = [name for name in files if f"schema {name} " in said or f" {name}." in said] or list(files)
    first = shown[0]
    raise MigratorError(output.visible(
        f"refusing to migrate schema {schema} on {where}: {files[first]} puts schema {first} on its search_path"
        f"{f' (and {len(shown) - 1} more)' * (len(shown) > 1)}: {said}: {planted.harm(state[2])}; "
        f"{planted.fix(schema, *left, user=state[2])}"), USAGE)
