"""Whose history a schema holds: the tenant mark, and what a plain run says when it cannot tell.

A tenant's history (a run with --schema / SCHEMA_NAME) is told from a plain one by a COMMENT on its yoyo_lock
(TENANT_MARK). A restore without comments (pg_restore --no-comments), or a DBA documenting the table, loses it;
a plain run then never guesses: it refuses, naming the schemas, the mark's statement and the search_path that
decides (connection.PIN_BOOKKEEPING reads the histories). Schema names here come from the catalogs (a home
schema may be named anything, a line break included): messages show them escaped (output.visible).
"""

from __future__ import annotations

import re
from dataclasses import replace

from migrator import output
from migrator.targets import PostgresTarget

TENANT_MARK = "hcm-db-migrations: the history of a tenant schema (runs with --schema / SCHEMA_NAME)"

# The lock table's mark, and whether this user may write it (COMMENT needs the table's owner). By the
# catalogs: naming a table in a schema without USAGE is an error, not an answer.
MARK_STATE = """
SELECT pg_catalog.obj_description(c.oid, 'pg_class') IS NOT DISTINCT FROM %(mark)s,
       pg_catalog.pg_has_role(c.relowner, 'USAGE'), pg_catalog.pg_get_userbyid(c.relowner)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = 'yoyo_lock'
"""


def _sql_name(schema: str) -> str:
    """The schema as SQL names it: bare when a plain lower-case identifier, else double-quoted."""
    return schema if re.fullmatch(r"[a-z_][a-z0-9_$]*", schema) else '"' + schema.replace('"', '""') + '"'


def mark_statement(schema: str) -> str:
    """The statement that marks a schema's history as a tenant's."""
    return f"COMMENT ON TABLE {_sql_name(schema)}.yoyo_lock IS '{TENANT_MARK}'"


def state(connection, schema: str) -> tuple[bool, bool, str] | None:
    """(marked, this user may mark it, the lock table's owner) of a tenant's history; None before it has one."""
    with connection.cursor() as cursor:
        cursor.execute(MARK_STATE, {"mark": TENANT_MARK, "schema": schema})
        return cursor.fetchone()


def foreign_history(backend, target: PostgresTarget) -> str:
    """Why a plain run (or SCHEMA_NAME=public) refuses: its schema holds no history, another schema one."""
    one, more = backend.foreign[0], backend.foreign[1:]
    holds = f"schema {one} holds one" if not more else f"schemas {', '.join(backend.foreign)} hold histories"
    return output.visible(
        f"no migration history in schema {backend.bookkeeping_schema} on {replace(target, schema=None).where}, "
        f"but {holds} without the tenant mark (a tenant's restored without comments?): a second history is "
        f"not started; if it is a tenant's, run with --schema {one} (SCHEMA_NAME={one}); else set search_path to "
        f"{one} (ALTER ROLE ... SET search_path)")


def twin_histories(backend, target: PostgresTarget) -> str:
    """Why a plain run refuses when its home schema (the first on the role's search_path) and public both hold a
    complete history without the mark: taking the home one would re-apply what public's records (a tenant's whose
    mark was lost is as complete as the plain run's own); taking public's could be as wrong."""
    home = backend.twin
    return output.visible(
        f"schemas {home} and public both hold a migration history without the tenant mark on "
        f"{replace(target, schema=None).where}, and {home} comes first on the search_path: a plain run does not "
        f"guess which one is its own (a tenant's restored without comments?); if {home}'s is a tenant's, run with "
        f"--schema {home} (SCHEMA_NAME={home}) and the tenant's folder, which writes the mark back, or as the owner "
        f"of its yoyo_lock: {mark_statement(home)}; else set search_path without {home} first (ALTER ROLE ... "
        "SET search_path = public)")
