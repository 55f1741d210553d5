"""The tenants' schemas, surveyed over one connection of their own: which exist (created on request), and each
present one's description (read in one pass for every tenant's drift check)."""

from __future__ import annotations

from dataclasses import replace

from migrator import output
from migrator.errors import MigratorError
from migrator.postgres.connection import session_url
from migrator.postgres.failures import READ_TIMEOUT_ARG, connection_error, guard_reads
from migrator.postgres.session_options import CATALOG_ONLY
from migrator.targets import PostgresTarget


def missing_schemas(target: PostgresTarget, schemas: list[str], *, create: bool) -> list[str]:
    """The tenants' schemas that do not exist; with `create`, they are created (by the user connected)."""
    return survey_schemas(target, schemas, create=create, describe=False)[0]


def survey_schemas(target: PostgresTarget, schemas: list[str], *, create: bool,
                   describe: bool = True) -> tuple[list[str], dict]:
    """(the missing schemas, each present schema's description) of the tenants, over one connection: the
    descriptions, read in one pass, spare each tenant's drift check its own (schema.describe_tenants).
    With `create`, the missing schemas are created (by the user connected) and none is missing."""
    import psycopg2
    from psycopg2 import sql

    from yoyo.connections import parse_uri

    from migrator.schema.describe import describe_tenants

    uri = parse_uri(session_url(replace(target, schema=None), not create, None))
    # Read as yoyo's own connect() reads it (the query's fields first, then the URL's own host, user, ...).
    given = {"dbname": uri.database, **uri.args}
    given.update({k: v for k, v in (("user", uri.username), ("password", uri.password), ("port", uri.port),
                                    ("host", uri.hostname)) if v is not None})
    given.pop("schema", None)
    seconds = given.pop(READ_TIMEOUT_ARG, None)
    given["options"] = " ".join(s for s in (given.get("options", ""), CATALOG_ONLY) if s)
    try:
        connection = psycopg2.connect(**given)
    except psycopg2.Error as exc:
        raise connection_error(exc, target)
    if seconds:
        guard_reads(connection, target.where, float(seconds))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s)", (schemas,))
            found = {row[0] for row in cursor.fetchall()}
            missing = [schema for schema in schemas if schema not in found]
            for schema in missing if create else ():
                try:
                    cursor.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                except psycopg2.Error as exc:
                    raise MigratorError(f"cannot create schema {schema} on {target.where}: "
                                        f"{output.scrub(str(exc)).strip().splitlines()[0]}; create it as its owner "
                                        "or grant CREATE on the database")
        present = [schema for schema in schemas if schema in found]
        # public's (SCHEMA_NAME=public) is the plain run's description, read on its own connection
        tenants = [schema for schema in present if schema != "public"]
        described = describe_tenants(connection, tenants) if describe and tenants else {}
    finally:
        connection.close()
    return ([] if create else missing), described
