"""What other roles planted, or may plant, in a schema the runner migrates: the lines that refuse it.

The runner's own SQL resolves operators and functions in pg_catalog alone, and its bookkeeping is verified
(trust.py); a migration's own SQL cannot be: its `=` on varchar resolves to an operator another role created in the
migrated schema, which then runs as the migration role (issue 23, attack23r 2). So a role that may CREATE in the
schema (PUBLIC too: PostgreSQL < 15's default on public), or that owns objects there, is refused by the commands
that write, naming the REVOKE, unless SCHEMA_CREATORS_TRUSTED names it; doctor FAILs likewise. Read in the connect
check's own catalog query (trust.bookkeeping_state), no round trip of its own.
"""

from __future__ import annotations

from migrator import output
from migrator.errors import USAGE, MigratorError
from migrator.grant_text import ident, runnable

SETTING = "SCHEMA_CREATORS_TRUSTED"
SHOWN = 3

# Appended to trust.PLANTED (whose FROM has the schema n and its owner so): the roles other than the user, those it is
# a member of, and superusers, that may CREATE in the schema (PUBLIC alone when it may: every role then can; public's
# owner on 15+, pg_database_owner, and its member the database's owner, are trusted as trust.py trusts them); and
# [owner, object] of the tables, functions, operators and types in the schema such roles own.
# (membership by pg_auth_members: pg_has_role answers true for every role when the user is a superuser; a role
# that cannot log in and has no member but the user is acted as by superusers alone)
_OTHERS = ("NOT r.rolsuper AND r.oid NOT IN (WITH RECURSIVE m(oid) AS (SELECT oid FROM me UNION SELECT a.roleid "
           "FROM pg_catalog.pg_auth_members a JOIN m ON a.member = m.oid) SELECT oid FROM m) AND NOT (so.rolname = "
           "'pg_database_owner' AND pg_catalog.pg_has_role(r.oid, so.oid, 'MEMBER')) AND (r.rolcanlogin OR EXISTS ("
           "SELECT FROM pg_catalog.pg_auth_members a WHERE a.roleid = r.oid AND a.member <> (SELECT oid FROM me)))")
COLUMNS = f""",
       CASE WHEN EXISTS (SELECT FROM pg_catalog.aclexplode(n.nspacl) x WHERE x.grantee = 0 AND x.privilege_type = 'CREATE')
            THEN ARRAY['PUBLIC'] ELSE ARRAY(SELECT r.rolname::text FROM pg_catalog.pg_roles r WHERE {_OTHERS}
                 AND r.rolname !~ '^pg_' AND pg_catalog.has_schema_privilege(r.oid, n.oid, 'CREATE') ORDER BY 1) END,
       ARRAY(SELECT ARRAY[r.rolname::text, o.what] FROM (
                 SELECT c.relowner AS owner, 'table ' || c.oid::pg_catalog.regclass::text AS what
                 FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                 UNION ALL SELECT p.proowner, 'function ' || p.oid::pg_catalog.regprocedure::text
                 FROM pg_catalog.pg_proc p WHERE p.pronamespace = n.oid
                 UNION ALL SELECT p.oprowner, 'operator ' || p.oid::pg_catalog.regoperator::text
                 FROM pg_catalog.pg_operator p WHERE p.oprnamespace = n.oid
                 UNION ALL SELECT t.typowner, 'type ' || t.oid::pg_catalog.regtype::text FROM pg_catalog.pg_type t
                 WHERE t.typnamespace = n.oid AND t.typrelid = 0 AND t.typcategory <> 'A') o
             JOIN pg_catalog.pg_roles r ON r.oid = o.owner WHERE {_OTHERS} ORDER BY r.rolname, o.what)
"""


def with_creators(query: str) -> str:
    """trust.PLANTED with COLUMNS appended (state[11], state[12])."""
    head, tail = query.rsplit("\nFROM (SELECT CAST(:s AS", 1)
    return head + COLUMNS + "FROM (SELECT CAST(:s AS" + tail


def trusted(env) -> tuple[str, ...]:
    """SCHEMA_CREATORS_TRUSTED: the roles (PUBLIC too) accepted to CREATE in, or own objects in, a migrated schema;
    from the real environment only (a .env cannot relax it)."""
    view, where = env.source((SETTING,))
    value = view.get(SETTING)[0] if where == "environment" else None
    return tuple(name.strip() for name in (value or "").split(",") if name.strip())


def untrusted(state, accepted: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    """(roles that may CREATE, [owner, object] of what others own) in the schema, less those `accepted`."""
    if len(state) < 13:
        return [], []
    return ([r for r in state[11] if r not in accepted], [o for o in state[12] if o[0] not in accepted])


def _names(roles) -> str:
    return ", ".join(r if r == "PUBLIC" else output.role(r) for r in roles)


def found(schema: str, creators: list[str], owned: list[list[str]]) -> str:
    """What others may plant, in words."""
    said = []
    if creators:
        said.append(f"{'PUBLIC (every role)' if creators == ['PUBLIC'] else 'roles ' + _names(creators)} may CREATE "
                    f"in schema {schema}")
    if owned:
        shown = "; ".join(f"{what} (owner {output.role(owner)})" for owner, what in owned[:SHOWN])
        said.append(f"other roles own objects there: {shown}{f' and {len(owned) - SHOWN} more' * (len(owned) > SHOWN)}")
    return output.visible(" and ".join(said))


def fix(schema: str, creators: list[str], owned: list[list[str]], accept: bool = True) -> str:
    """The REVOKE to run, and what to do about what others own; or the setting that accepts them."""
    roles = sorted({*creators, *(owner for owner, _ in owned)})
    steps = []
    if creators:
        grantees = ", ".join(r if r == "PUBLIC" else ident(r) for r in creators)
        steps.append(f"run {runnable(f'REVOKE CREATE ON SCHEMA {ident(schema)} FROM {grantees}')}")
    if owned:
        steps.append("drop what others own there, or make the migration user its owner (ALTER ... OWNER TO)")
    return f"{' and '.join(steps)}" + f"; or, to trust them, set {SETTING}={','.join(roles)}" * accept


def refuse(state, schema: str, where: str, accepted: tuple[str, ...]) -> None:
    """Refuses (exit 2) a schema others may plant objects in, unless SCHEMA_CREATORS_TRUSTED accepts them all."""
    creators, owned = untrusted(state, accepted)
    if creators or owned:
        raise MigratorError(output.visible(
            f"refusing to migrate schema {schema} on {where}: {found(schema, creators, owned)}: an operator or function "
            f"they plant there runs as user {state[2]} when a migration's SQL resolves to it; "
            f"{fix(schema, creators, owned)}"), USAGE)


def planted_list(schema: str, planted: list[str]) -> str:
    """(quote_ident keeps a line break in an owner's or a trigger's name: escaped here, so the line never splits)"""
    return "; ".join(output.visible(f"{schema}.{what}") for what in planted)


def planted_fix(schema: str, user: str, names: list[str]) -> str:
    """What to do about planted tables: drop what is not the runner's, hand what is to the user."""
    tables = [f"{schema}.{name}" for name in names[:3]] or [f"{schema}.<table>"]
    return (f"inspect {', '.join(tables)}: drop what is not the runner's; for what is, as a superuser or its owner run "
            f"ALTER TABLE {tables[0]} OWNER TO {user} (and drop other roles' triggers, rules and policies); grant "
            f"other roles USAGE only on {schema}")


def planted_error(schema: str, user: str, planted: list[str], names: list[str], where: str) -> str:
    """The one line refusing a history others can make run code as the migration role (the schema may be a home
    schema named anything: escaped, as planted_list escapes the rest)."""
    return output.visible(
        f"refusing the migration history in schema {schema} on {where}: {planted_list(schema, planted[:3])}"
        f"{f' (and {len(planted) - 3} more)' if len(planted) > 3 else ''}; it would run as user {user} (a role "
        f"with CREATE on schema {schema} planted it, or it was made by hand); {planted_fix(schema, user, names)}")


def owner_error(schema: str, user: str, owner: str, where: str) -> str:
    """The one line refusing a schema another role owns (its name as output.role shows it)."""
    owner = output.role(owner)
    return output.visible(
        f"refusing the migration history in schema {schema} on {where}: schema {schema} is owned by role {owner}, "
        f"which may drop or replace the runner's tables (it is not user {user}); as {owner} or a "
        f"superuser run ALTER SCHEMA {schema} OWNER TO {user}")
