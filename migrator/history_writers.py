"""Who writes the runner's bookkeeping through a route the runner cannot take back: pg_write_all_data.

trust.disown takes other roles' rights on the runner's tables (an ACL entry), but a member of pg_write_all_data
(PostgreSQL 14+: the usual grant for an ETL or sync role) holds none, yet inserts, updates and deletes every table:
it forged a mark that made migrate skip a migration, removed an applied data migration's records so migrate ran it
again, or wrote a lone checksum row migrate then marked applied (attack23v 2). Writing commands refuse such a role
like a planted one, unless SCHEMA_CREATORS_TRUSTED names it (planted.py's opt-in); doctor FAILs likewise.
"""

from __future__ import annotations

from migrator import output, planted
from migrator.errors import USAGE, MigratorError
from migrator.grant_text import runnable

# The login roles (bar superusers, the user and the login role that SET ROLE to it) that may connect here and are
# members of pg_write_all_data, at any depth, as SQL spells them. (Before 14: no such role, NULL.)
_MEMBERS = ("ARRAY(SELECT pg_catalog.quote_ident(r.rolname::text) FROM pg_catalog.pg_roles r "
            "WHERE NOT r.rolsuper AND r.rolcanlogin AND r.rolname <> CURRENT_USER AND r.rolname <> SESSION_USER "
            "AND pg_catalog.pg_has_role(r.oid, pg_catalog.to_regrole('pg_write_all_data'), 'MEMBER') "
            "AND pg_catalog.has_database_privilege(r.oid, pg_catalog.current_database(), 'CONNECT') ORDER BY 1)")
WRITE_ALL = f"SELECT {_MEMBERS}, pg_catalog.quote_ident(CURRENT_USER::text)"  # (doctor's, with the user's name)


def with_writers(query: str) -> str:
    """trust.PLANTED (with planted's columns) with the members as its last column: a writing run's connect check
    reads them in its one query, no round trip of their own."""
    head, tail = query.rsplit("\nFROM (SELECT CAST(:s AS", 1)
    return f"{head},\n       {_MEMBERS}\nFROM (SELECT CAST(:s AS{tail}"


HARM = ("they may write the runner's bookkeeping unseen: add history rows that skip a migration, delete an applied "
        "one's records so it runs again, forge its lock; migrate cannot revoke that")


def writers(backend) -> tuple[list[str], str]:
    """(the members of pg_write_all_data as SQL spells them, the user's name as SQL spells it)."""
    found, user = backend.execute(WRITE_ALL).fetchone()
    return list(found or []), user


def untrusted(found: list[str], accepted: tuple[str, ...]) -> list[str]:
    """The writers SCHEMA_CREATORS_TRUSTED does not name (it lists names as written, quote_ident spells them)."""
    return [name for name in found if name not in accepted and name.strip('"').replace('""', '"') not in accepted]


def fix(roles: list[str]) -> str:
    """The REVOKE, or the setting that accepts them."""
    names = ",".join(name.strip('"').replace('""', '"') for name in roles)
    return (f"run {runnable('REVOKE pg_write_all_data FROM ' + ', '.join(roles))}; or, to trust them, set "
            f"{planted.SETTING}={names}")


def refuse(state, schema: str, where: str, accepted: tuple[str, ...]) -> None:
    """Refuses (exit 2) a history the members of pg_write_all_data may write (the last column of the connect check's
    state: with_writers), unless all are accepted."""
    left = untrusted(list(state[-1] or []), accepted)
    if left:
        raise MigratorError(output.visible(
            f"refusing the migration history in schema {schema} on {where}: roles {', '.join(left)} are members of "
            f"pg_write_all_data: {HARM}; {fix(left)}"), USAGE)
