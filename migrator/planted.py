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

# Appended to trust.PLANTED (whose FROM has the schema n and its owner so): for n and every other schema on the
# migration session's search_path (its start value, reset_val: the tenant option's `pb,public`, the role's or the
# database's setting, "$user"; pg_catalog aside), [schema, role] of the roles that may CREATE there (PUBLIC alone when
# it may: every role then can), and [owner, object] of the tables, functions, operators and types others own there:
# a migration's unqualified `=` resolves in any of them (attack23s 1); and triggers on tables there whose function
# another role owns (a TRIGGER right, e.g. GRANT ALL, lets it add one: attack23s 3 of the second report). Trusted: the
# user, superusers, and a role no one but the user (or a superuser) can act as: membership is no trust (attack23s 2),
# a login member anywhere below it may plant as it; nor is owning the database (public's pg_database_owner on 15+:
# the database's owner, when it is another login role, attack23s 9). A role that cannot log in and has no member may
# CREATE as no one; what it owns was still written by someone (attack23s 5).
# (Unquoted names are folded to lower case for ASCII only, as the server folds them.)
_ME_ONLY = ("NOT EXISTS (WITH RECURSIVE mm(oid) AS (SELECT a.member FROM pg_catalog.pg_auth_members a WHERE a.roleid "
            "= r.oid UNION SELECT a.member FROM pg_catalog.pg_auth_members a JOIN mm ON a.roleid = mm.oid WHERE mm.oid "
            "<> (SELECT oid FROM me)) SELECT FROM mm JOIN pg_catalog.pg_roles x ON x.oid = mm.oid WHERE x.oid <> "
            "(SELECT oid FROM me) AND x.rolcanlogin AND NOT x.rolsuper)")
_TRUSTED = f"(r.rolsuper OR r.oid = (SELECT oid FROM me) OR (NOT r.rolcanlogin AND {_ME_ONLY}"
# (no login member but the user: a nologin role without members too; and a role granted the user, which acts as it
# anyway: doctor's bookkeeping grants check WARNs naming it)
_CREATOR_OK = _TRUSTED + (") OR r.oid IN (WITH RECURSIVE g(oid) AS (SELECT oid FROM me UNION SELECT a.member FROM "
                          "pg_catalog.pg_auth_members a JOIN g ON a.roleid = g.oid) SELECT oid FROM g))")
# (membership read in pg_auth_members: pg_has_role answers true for every role when the user is a superuser)
_OWNER_OK = _TRUSTED + (" AND r.oid IN (WITH RECURSIVE m(oid) AS (SELECT oid FROM me UNION SELECT a.roleid FROM "
                        "pg_catalog.pg_auth_members a JOIN m ON a.member = m.oid) SELECT oid FROM m)))")
_PATH = r"""(SELECT CASE WHEN p.w ~ '^"' THEN pg_catalog.replace(pg_catalog.substr(p.w, 2, pg_catalog.length(p.w) - 2),
                 '""', '"') ELSE pg_catalog.translate(p.w, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') END
             FROM (SELECT m[1] AS w FROM pg_catalog.regexp_matches((SELECT reset_val FROM pg_catalog.pg_settings
                   WHERE name = 'search_path'), '\s*("(?:[^"]|"")*"|[^,\s]+)\s*(?:,|$)', 'g') m) p)"""
COLUMNS = f""",
       ARRAY(SELECT ARRAY[ns.nspname::text, r.name] FROM (SELECT x.oid, x.nspname, x.nspacl
                 FROM pg_catalog.pg_namespace x WHERE x.oid = n.oid
                 OR (x.nspname <> 'pg_catalog' AND x.nspname IN (SELECT CASE WHEN w = '$user' THEN CURRENT_USER ELSE w
                     END FROM {_PATH} AS q(w)))) ns,
             LATERAL (SELECT 'PUBLIC' AS name WHERE EXISTS (SELECT FROM pg_catalog.aclexplode(ns.nspacl) x
                          WHERE x.grantee = 0 AND x.privilege_type = 'CREATE')
                      UNION ALL SELECT r.rolname::text FROM pg_catalog.pg_roles r WHERE NOT EXISTS (SELECT FROM
                          pg_catalog.aclexplode(ns.nspacl) x WHERE x.grantee = 0 AND x.privilege_type = 'CREATE')
                          AND NOT {_CREATOR_OK} AND r.rolname !~ '^pg_'
                          AND pg_catalog.has_schema_privilege(r.oid, ns.oid, 'CREATE')) r
             ORDER BY ns.oid <> n.oid, ns.nspname, r.name),
       ARRAY(SELECT ARRAY[r.rolname::text, o.what] FROM (SELECT x.oid, x.nspname
                 FROM pg_catalog.pg_namespace x WHERE x.oid = n.oid
                 OR (x.nspname <> 'pg_catalog' AND x.nspname IN (SELECT CASE WHEN w = '$user' THEN CURRENT_USER ELSE w
                     END FROM {_PATH} AS q(w)))) ns, LATERAL (
                 SELECT c.relowner AS owner, 'table ' || c.oid::pg_catalog.regclass::text AS what
                 FROM pg_catalog.pg_class c WHERE c.relnamespace = ns.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                 UNION ALL SELECT p.proowner, 'function ' || p.oid::pg_catalog.regprocedure::text
                 FROM pg_catalog.pg_proc p WHERE p.pronamespace = ns.oid
                 UNION ALL SELECT p.oprowner, 'operator ' || p.oid::pg_catalog.regoperator::text
                 FROM pg_catalog.pg_operator p WHERE p.oprnamespace = ns.oid
                 UNION ALL SELECT t.typowner, 'type ' || t.oid::pg_catalog.regtype::text FROM pg_catalog.pg_type t
                 WHERE t.typnamespace = ns.oid AND t.typrelid = 0 AND t.typcategory <> 'A'
                 UNION ALL SELECT p.proowner, 'trigger ' || pg_catalog.quote_ident(g.tgname::text) || ' on table '
                     || c.oid::pg_catalog.regclass::text || ' (function ' || p.oid::pg_catalog.regprocedure::text || ')'
                 FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
                 JOIN pg_catalog.pg_proc p ON p.oid = g.tgfoid WHERE c.relnamespace = ns.oid AND NOT g.tgisinternal) o
             JOIN pg_catalog.pg_roles r ON r.oid = o.owner WHERE NOT {_OWNER_OK} ORDER BY r.rolname, o.what)
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


def untrusted(state, accepted: tuple[str, ...]) -> tuple[list[list[str]], list[list[str]]]:
    """([schema, role] of the roles that may CREATE, [owner, object] of what others own) in the schema and the others
    on the session's search_path, less the roles `accepted`."""
    if len(state) < 13:
        return [], []
    return ([c for c in state[11] if c[1] not in accepted], [o for o in state[12] if o[0] not in accepted])


def _names(roles) -> str:
    return ", ".join(r if r == "PUBLIC" else output.role(r) for r in roles)


def _by_schema(creators: list[list[str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for where, role in creators:
        grouped.setdefault(where, []).append(role)
    return grouped


def found(schema: str, creators: list[list[str]], owned: list[list[str]]) -> str:
    """What others may plant, in words (a schema other than `schema` is one on the migration's search_path)."""
    said = []
    for where, roles in _by_schema(creators).items():
        on_path = f" (on the migration's search_path)" * (where != schema)
        said.append(f"{'PUBLIC (every role)' if roles == ['PUBLIC'] else 'roles ' + _names(roles)} may CREATE "
                    f"in schema {where}{on_path}")
    if owned:
        shown = "; ".join(f"{what} (owner {output.role(owner)})" for owner, what in owned[:SHOWN])
        said.append(f"other roles own objects there: {shown}{f' and {len(owned) - SHOWN} more' * (len(owned) > SHOWN)}")
    return output.visible(" and ".join(said))


def fix(schema: str, creators: list[list[str]], owned: list[list[str]], accept: bool = True) -> str:
    """The REVOKE to run, and what to do about what others own; or the setting that accepts them."""
    roles = sorted({*(role for _, role in creators), *(owner for owner, _ in owned)})
    steps = []
    for where, grantees in _by_schema(creators).items():
        names = ", ".join(r if r == "PUBLIC" else ident(r) for r in grantees)
        steps.append(f"run {runnable(f'REVOKE CREATE ON SCHEMA {ident(where)} FROM {names}')}")
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
