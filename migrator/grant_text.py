"""The text of others' rights on the runner's bookkeeping and of the REVOKE taking them (trust.py acts on them,
doctor/grants.py advises them): names as the catalog query quoted them, every line escaped."""

from __future__ import annotations

import re

from migrator import output


# What another role may not do to the runner's tables (SELECT, to read its history, is harmless and kept).
WRITES = "INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"


def grants_list(schema: str, grants: list) -> str:
    """Others' write rights as one line's part: `public.yoyo_lock to app (INSERT, DELETE)`."""
    return "; ".join(output.visible(f"{schema}.{table} to {grantee} ({rights})") for table, grantee, rights, *_ in grants)


def revoke_sql(schema: str, grants: list) -> str:
    """The one REVOKE taking those write rights (grantees as the query quoted them, or PUBLIC). A table's REVOKE
    takes its columns' rights too; MAINTAIN (PostgreSQL 17+: LOCK, VACUUM, ...) where the server has it (a grant
    shows it)."""
    tables = sorted({table for table, *_ in grants})
    grantees = sorted({grantee for _, grantee, *_ in grants})
    maintain = ", MAINTAIN" if any("MAINTAIN" in rights.split(", ") for _, _, rights, *_ in grants) else ""
    return (f"REVOKE {WRITES}{maintain} ON TABLE {', '.join(f'{ident(schema)}.{ident(t)}' for t in tables)} "
            f"FROM {', '.join(grantees)} CASCADE")


def runnable(statement: str) -> str:
    """A statement to copy as printed; one whose names hold a control character (shown escaped, it would not run)
    is described instead, never printed raw."""
    if output.visible(statement) == statement:
        return statement
    return (f"{statement.split(' ', 1)[0]} as printed would not run (a name in it holds control characters, shown "
            "escaped): write it with the names from pg_roles and pg_class (quote_ident)")


def rights_of(grants: list) -> list[str]:
    """Each right of those grants once (a column's with its columns: `INSERT (a, b)`)."""
    return sorted({right for grant in grants for right in re.split(r", (?![^()]*\))", grant[2])})


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def revoke_advice(schema: str, grants: list) -> str:
    """Who runs which REVOKE: a REVOKE takes only what its runner granted (a superuser's acts as the owner), so a
    right granted by another role (one holding GRANT OPTION, the migration user too) is its grantor's to take."""
    by: dict[str, list] = {}
    for grant in grants:
        by.setdefault(grant[4] if len(grant) > 4 else "", []).append(grant)
    return "; ".join(f"as the tables' owner run {runnable(revoke_sql(schema, some))}" if not grantor else
                     f"as role {grantor}, which granted them (a superuser: SET ROLE {grantor} first), run "
                     f"{runnable(revoke_sql(schema, some))}" for grantor, some in sorted(by.items()))
