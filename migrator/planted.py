"""What other roles planted, or may plant, in a schema the runner migrates: the lines that refuse it.

The runner's own SQL resolves operators and functions in pg_catalog alone, and its bookkeeping is verified
(trust.py); a migration's own SQL cannot be: its `=` on varchar resolves to an operator another role created in the
migrated schema, which then runs as the migration role (issue 23, attack23r 2). So a role that may CREATE in the
schema (PUBLIC too: PostgreSQL < 15's default on public), or that owns objects there, is refused by the commands
that write, naming the REVOKE, unless SCHEMA_CREATORS_TRUSTED names it; doctor FAILs likewise. So is another role's
TRIGGER right on a table there (GRANT ALL carries it): the trigger it adds, after any check, runs as the migration role
when a later migration writes the table (attack23s 3, second report). REFERENCES is not: a foreign key's checks and
cascades, and the triggers they fire, run as the referencing table's owner. Read in the connect check's own catalog
query (trust.bookkeeping_state), no round trip of its own.
"""

from __future__ import annotations

from migrator import output
from migrator.errors import USAGE, MigratorError
from migrator.grant_text import ident, runnable
from migrator.planted_code import USES as _USES, alter_owner, closure, reach

SETTING = "SCHEMA_CREATORS_TRUSTED"
SHOWN = 3

# Appended to trust.PLANTED (whose FROM has the schema n and its owner so): for n and every other schema on the
# migration session's search_path (its start value, reset_val: the tenant option's `pb,public`, the role's or the
# database's setting, "$user"; pg_catalog aside; read once, the CTE `path`):
# - state[11], [schema, role] of the roles that may CREATE there (PUBLIC alone when it may: every role then can);
# - state[12], [owner, object] of the tables, functions, operators and types others own there (a migration's
#   unqualified `=` resolves in any of them: attack23s 1), of triggers on tables there whose function another role
#   owns, and of enabled event triggers (database-wide, counted once) whose function another role owns: that role's
#   code runs on the migration's DDL (attack23t 5). The user's own objects are left out before their names are built
#   (with thousands of tables the regclass texts were most of the query's time); and the implicit code of tables there
#   another role owns ('<via> uses <object>': planted_code.reach, the CTE reach): its owner may replace it, and it runs as the
#   writer (attack23u 2, fix23aj 2);
# - state[13], [schema, table, role, grantor when not the owner] of others' TRIGGER rights on tables there (the
#   runner's bookkeeping aside: trust.disown takes them), and [schema or '' for all, '', role, ''] of the user's
#   default privileges giving one to the tables it will make (attack23s 3 of the second report), in any schema: a
#   pending file may make a table off the path and write it by its qualified name (attack23u 1b);
# - state[14], [view, bookkeeping table, role, rights] of others' write rights on a view over the runner's tables: a
#   write through it is checked against the view owner's rights, so it writes the history as the user (attack23s 14);
# - state[15], [schema, role, database] for a path entry naming no schema yet ("$user") and the roles that may CREATE
#   on the database: one of them may make it mid-run, and its `=` is then searched (attack23t 1).
# Trusted: the user, superusers, and a role no one but the user (or a superuser) can act as: membership is no trust
# (attack23s 2), a login member anywhere below it may plant as it; predefined roles alike (attack23t 9); nor is owning
# the database (public's pg_database_owner on 15+: the database's owner, when it is another login role, attack23s 9).
# A role that cannot log in and has no member may CREATE as no one; what it owns was still written by someone
# (attack23s 5).
# (Unquoted names are folded to lower case for ASCII only, as the server folds them.)
_ME_ONLY = ("NOT EXISTS (WITH RECURSIVE mm(oid) AS (SELECT a.member FROM pg_catalog.pg_auth_members a WHERE a.roleid "
            "= r.oid UNION SELECT a.member FROM pg_catalog.pg_auth_members a JOIN mm ON a.roleid = mm.oid WHERE mm.oid "
            "<> (SELECT oid FROM me)) SELECT FROM mm JOIN pg_catalog.pg_roles x ON x.oid = mm.oid WHERE x.oid <> "
            "(SELECT oid FROM me) AND x.rolcanlogin AND NOT x.rolsuper)")
_TRUSTED = f"(r.rolsuper OR r.oid = (SELECT oid FROM me) OR (NOT r.rolcanlogin AND {_ME_ONLY}"
# (no login member but the user: a nologin role without members too; and a role granted the user that can act as it,
# as it does anyway: doctor's bookkeeping grants check WARNs naming it.) A member acts as the user only when it can
# (attack23v 3): SET ROLE along grants WITH SET, then the privileges inherited along grants WITH INHERIT (g.inh:
# reached by inheriting alone). Before PostgreSQL 16 (no such columns: read through to_jsonb) every grant has SET,
# and INHERIT is the member's rolinherit.
_CREATOR_OK = _TRUSTED + (") OR r.oid IN (WITH RECURSIVE g(oid, inh) AS (SELECT oid, true FROM me UNION SELECT "
                          "a.member, k.inh FROM g JOIN pg_catalog.pg_auth_members a ON a.roleid = g.oid JOIN "
                          "pg_catalog.pg_roles m ON m.oid = a.member CROSS JOIN (VALUES (true), (false)) k(inh) WHERE "
                          "CASE WHEN k.inh THEN g.inh AND COALESCE((pg_catalog.to_jsonb(a) ->> "
                          "'inherit_option')::bool, m.rolinherit) ELSE COALESCE((pg_catalog.to_jsonb(a) "
                          "->> 'set_option')::bool, true) END) SELECT oid FROM g))")
CREATOR_OK = _CREATOR_OK  # (a pending file's grants: postgres/file_grants.py)
# (membership read in pg_auth_members: pg_has_role answers true for every role when the user is a superuser)
_OWNER_OK = _TRUSTED + (" AND r.oid IN (WITH RECURSIVE m(oid) AS (SELECT oid FROM me UNION SELECT a.roleid FROM "
                        "pg_catalog.pg_auth_members a JOIN m ON a.member = m.oid) SELECT oid FROM m)))")
OWNER_OK = _OWNER_OK  # (the user's own functions' bodies: planted_bodies.py)
_PATH = r"""(SELECT CAST(CAST(CASE WHEN p.w ~ '^"' THEN pg_catalog.replace(pg_catalog.substr(p.w, 2,
                 pg_catalog.length(p.w) - 2), '""', '"') ELSE pg_catalog.translate(p.w, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                 'abcdefghijklmnopqrstuvwxyz') END AS pg_catalog.name) AS pg_catalog.text)
             FROM (SELECT m[1] AS w FROM pg_catalog.regexp_matches((SELECT reset_val FROM pg_catalog.pg_settings
                   WHERE name = 'search_path'), '[[:space:]]*("(?:[^"]|"")*"|[^,[:space:]]+)[[:space:]]*(?:,|$)', 'g') m) p)"""
PATH = _PATH
# (the migrated schema n and the others on the migration session's search_path)
_SCHEMAS = f"""(SELECT x.oid, x.nspname, x.nspacl FROM pg_catalog.pg_namespace x WHERE x.oid = n.oid
                 OR (x.nspname <> 'pg_catalog' AND x.nspname IN (SELECT CASE WHEN w = '$user' THEN CURRENT_USER ELSE w
                     END FROM path AS q(w))))"""
# (the migrated schema and the others on the path, as _SCHEMAS names them; their tables, and their views and
# materialized views: a REFRESH, or a read of one in a write, runs the query as the user, attack23w 6)
_PATH_NS = """(SELECT x.oid FROM pg_catalog.pg_namespace x
    WHERE x.oid = pg_catalog.to_regnamespace(pg_catalog.quote_ident(:s)) OR (x.nspname <> 'pg_catalog'
        AND x.nspname IN (SELECT CASE WHEN w = '$user' THEN CURRENT_USER ELSE w END FROM path AS q(w))))"""
_PATH_TABLES = f"""(SELECT 0 AS k, c.oid FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm')
    AND c.relnamespace IN {_PATH_NS})"""
# (the CTE `far`: the tables a write of those reaches in other schemas, attack23w 7; COLUMNS counts them under n)
_FAR = f"""(SELECT q.oid FROM {closure(_PATH_TABLES, _OWNER_OK)} q JOIN pg_catalog.pg_class c ON c.oid = q.oid
    WHERE c.relnamespace NOT IN {_PATH_NS})"""
_IN_FAR = "(ns.oid = n.oid AND c.oid IN (SELECT oid FROM far))"
# (for the CTE `reach`)
_REACH_PATH = reach(f"(SELECT c.oid FROM {_PATH_TABLES} c UNION ALL SELECT oid FROM far)", _OWNER_OK)
_REACH_OWN = reach(f"(SELECT c.oid FROM {_PATH_TABLES} c UNION ALL SELECT oid FROM far)", _OWNER_OK, own=True)
_CREATORS = f"""ARRAY(SELECT ARRAY[ns.nspname::text, r.name] FROM {_SCHEMAS} ns,
             LATERAL (SELECT 'PUBLIC' AS name WHERE EXISTS (SELECT FROM pg_catalog.aclexplode(ns.nspacl) x
                          WHERE x.grantee = 0 AND x.privilege_type = 'CREATE')
                      UNION ALL SELECT r.rolname::text FROM pg_catalog.pg_roles r WHERE NOT EXISTS (SELECT FROM
                          pg_catalog.aclexplode(ns.nspacl) x WHERE x.grantee = 0 AND x.privilege_type = 'CREATE')
                          AND NOT {_CREATOR_OK}
                          AND pg_catalog.has_schema_privilege(r.oid, ns.oid, 'CREATE')) r
             ORDER BY ns.oid <> n.oid, ns.nspname, r.name)"""
_EVENT_TRIGGERS = """SELECT p.proowner AS owner, CASE WHEN e.evtevent = 'login' THEN 'login ' ELSE '' END
                     || 'event trigger ' || pg_catalog.quote_ident(e.evtname::text)
                     || ' (function ' || p.oid::pg_catalog.regprocedure::text || ')' AS what
                 FROM pg_catalog.pg_event_trigger e JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid
                 WHERE e.evtenabled <> 'D'"""
_OWNED = f"""ARRAY(SELECT ARRAY[r.rolname::text, o.what] FROM {_SCHEMAS} ns, LATERAL (
                 SELECT c.relowner AS owner, 'table ' || c.oid::pg_catalog.regclass::text AS what
                 FROM pg_catalog.pg_class c WHERE (c.relnamespace = ns.oid OR {_IN_FAR})
                     AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                     AND c.relowner <> (SELECT oid FROM me)
                 UNION ALL SELECT p.proowner, 'function ' || p.oid::pg_catalog.regprocedure::text
                 FROM pg_catalog.pg_proc p WHERE p.pronamespace = ns.oid AND p.proowner <> (SELECT oid FROM me)
                 UNION ALL SELECT p.oprowner, 'operator ' || p.oid::pg_catalog.regoperator::text
                 FROM pg_catalog.pg_operator p WHERE p.oprnamespace = ns.oid AND p.oprowner <> (SELECT oid FROM me)
                 UNION ALL SELECT t.typowner, 'type ' || t.oid::pg_catalog.regtype::text FROM pg_catalog.pg_type t
                 WHERE t.typnamespace = ns.oid AND t.typrelid = 0 AND t.typcategory <> 'A' AND t.typowner <> (SELECT oid FROM me)
                 UNION ALL SELECT p.proowner, 'trigger ' || pg_catalog.quote_ident(g.tgname::text) || ' on table '
                     || c.oid::pg_catalog.regclass::text || ' (function ' || p.oid::pg_catalog.regprocedure::text || ')'
                 FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
                 JOIN pg_catalog.pg_proc p ON p.oid = g.tgfoid WHERE (c.relnamespace = ns.oid OR {_IN_FAR})
                     AND NOT g.tgisinternal
                 UNION ALL {_EVENT_TRIGGERS} AND ns.oid = n.oid
                 UNION ALL SELECT h.owner, h.via || ' uses ' || h.what FROM reach h
                 JOIN pg_catalog.pg_class c ON c.oid = h.tbl WHERE c.relnamespace = ns.oid OR {_IN_FAR}) o
             JOIN pg_catalog.pg_roles r ON r.oid = o.owner WHERE NOT {_OWNER_OK} ORDER BY r.rolname, o.what)"""
_TRIGGERS = f"""ARRAY(SELECT ARRAY[h.schema, h.name, h.grantee, h.grantor] FROM (
                 SELECT y.nspname::text AS schema, c.relname::text AS name, x.grantee AS role, CASE WHEN x.grantor
                     <> c.relowner THEN pg_catalog.pg_get_userbyid(x.grantor)::text ELSE '' END AS grantor
                 FROM {_SCHEMAS} ns JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid OR {_IN_FAR}
                 JOIN pg_catalog.pg_namespace y ON y.oid = c.relnamespace, pg_catalog.aclexplode(c.relacl) x
                 WHERE x.privilege_type = 'TRIGGER' AND x.grantee <> c.relowner
                   AND NOT (c.relnamespace = n.oid AND c.relname = ANY(CAST(:tables AS pg_catalog.name[])))
                 UNION SELECT COALESCE(ns.nspname::text, ''), '', x.grantee, ''
                 FROM pg_catalog.pg_default_acl d LEFT JOIN pg_catalog.pg_namespace ns ON ns.oid = d.defaclnamespace,
                     pg_catalog.aclexplode(d.defaclacl) x
                 WHERE d.defaclrole = (SELECT oid FROM me) AND d.defaclobjtype = 'r' AND x.privilege_type = 'TRIGGER') g
             LEFT JOIN pg_catalog.pg_roles r ON r.oid = g.role,
             LATERAL (SELECT g.schema, g.name, COALESCE(r.rolname::text, 'PUBLIC') AS grantee, g.grantor) h
             WHERE g.role = 0 OR NOT {_CREATOR_OK} ORDER BY h.schema, h.name = '', h.name, h.grantee)"""
_VIEWS = f"""ARRAY(WITH RECURSIVE over(v, t, table_oid) AS (  -- views over the tables, and over those (attack23u 9)
                 SELECT t.oid, t.relname::text, t.oid FROM pg_catalog.pg_class t
                 WHERE t.relnamespace = n.oid AND t.relname = ANY(CAST(:tables AS pg_catalog.name[]))
                 UNION SELECT w.ev_class, o.t, o.table_oid FROM over o JOIN pg_catalog.pg_depend d ON d.refobjid = o.v
                     AND d.refclassid = CAST('pg_catalog.pg_class' AS pg_catalog.regclass)
                     AND d.classid = CAST('pg_catalog.pg_rewrite' AS pg_catalog.regclass)
                 JOIN pg_catalog.pg_rewrite w ON w.oid = d.objid WHERE w.ev_class <> o.v)
             SELECT ARRAY[v.oid::pg_catalog.regclass::text, o.t, COALESCE(r.rolname::text, 'PUBLIC'),
                          pg_catalog.string_agg(DISTINCT x.privilege_type, ', ')]
             FROM over o JOIN pg_catalog.pg_class v ON v.oid = o.v AND v.oid <> o.table_oid
             CROSS JOIN pg_catalog.aclexplode(v.relacl) x LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
             WHERE x.privilege_type IN ('INSERT', 'UPDATE', 'DELETE') AND x.grantee <> v.relowner
               AND (x.grantee = 0 OR NOT {_CREATOR_OK})
             GROUP BY v.oid, o.t, r.rolname ORDER BY v.oid, o.t, r.rolname)"""
_MISSING = f"""ARRAY(SELECT ARRAY[q.w, COALESCE(rr.rolname::text, 'PUBLIC'), pg_catalog.current_database()::text]
             FROM (SELECT DISTINCT CASE WHEN w = '$user' THEN CURRENT_USER ELSE w END AS w FROM path AS q0(w)) q,
             LATERAL (SELECT 0::pg_catalog.oid AS oid WHERE EXISTS (SELECT FROM pg_catalog.pg_database d,
                          pg_catalog.aclexplode(d.datacl) x WHERE d.datname = pg_catalog.current_database()
                          AND x.grantee = 0 AND x.privilege_type = 'CREATE')
                      UNION ALL SELECT r.oid FROM pg_catalog.pg_roles r WHERE NOT {_CREATOR_OK}
                          AND pg_catalog.has_database_privilege(r.oid, pg_catalog.current_database(), 'CREATE')) c
             LEFT JOIN pg_catalog.pg_roles rr ON rr.oid = c.oid
             WHERE q.w !~ '^pg_' AND NOT EXISTS (SELECT FROM pg_catalog.pg_namespace x WHERE x.nspname = q.w)
             ORDER BY q.w, rr.rolname)"""
# state[16]: [oid, what reaches it] of the user's own string-bodied functions the same tables' implicit code reaches
# (the CTE own): planted_bodies.py reads their bodies
_ROOTS = "ARRAY(SELECT DISTINCT ARRAY[h.o::pg_catalog.text, h.via] FROM own h ORDER BY 1)"
COLUMNS = ",\n       " + ",\n       ".join((_CREATORS, _OWNED, _TRIGGERS, _VIEWS, _MISSING, _ROOTS)) + "\n"


# [name index, table, role, kind, detail, object] of the tables a pending file writes by a qualified name
# (file_paths.py) that another role owns ('owner': its triggers, rules and policies are that role's to add), whose
# enabled trigger's function another role owns ('trigger', detail the trigger: it runs as the user, attack23t 7), on
# which another role (PUBLIC too) holds TRIGGER ('right', detail the grantor when not the owner: the trigger it adds
# mid-run runs as the user, attack23u 1), or that reaches implicit code another role owns (planted_code) ('code', detail what
# of the table reaches it, object the object: its owner may replace it, and it runs as the writer, fix23aj 2); table:
# the named one or one a write of it reaches (planted_code.closure, attack23w 7). A name that is no table yet (one a
# pending file makes) is none.
_NAMED = """(SELECT w.i AS k, c.oid FROM pg_catalog.unnest(CAST(:names AS pg_catalog.text[])) WITH ORDINALITY w(name, i)
    JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(w.name))"""
WRITTEN = f"""
WITH me AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER),
w AS (SELECT q.k AS i, c.oid, c.relowner, c.relacl FROM {closure(_NAMED, _OWNER_OK)} q
      JOIN pg_catalog.pg_class c ON c.oid = q.oid),
reach AS {reach("w", _OWNER_OK)}
SELECT w.i, w.oid::pg_catalog.regclass::text, r.rolname::text, 'owner', '', '' FROM w
    JOIN pg_catalog.pg_roles r ON r.oid = w.relowner WHERE NOT {_OWNER_OK}
UNION ALL SELECT w.i, w.oid::pg_catalog.regclass::text, r.rolname::text, 'trigger', pg_catalog.quote_ident(
        g.tgname::text) || ' (function ' || p.oid::pg_catalog.regprocedure::text, '' FROM w
    JOIN pg_catalog.pg_trigger g ON g.tgrelid = w.oid JOIN pg_catalog.pg_proc p ON p.oid = g.tgfoid
    JOIN pg_catalog.pg_roles r ON r.oid = p.proowner WHERE NOT g.tgisinternal AND g.tgenabled <> 'D' AND NOT {_OWNER_OK}
UNION ALL SELECT w.i, w.oid::pg_catalog.regclass::text, COALESCE(r.rolname::text, 'PUBLIC'), 'right', CASE WHEN
        x.grantor <> w.relowner THEN pg_catalog.pg_get_userbyid(x.grantor)::text ELSE '' END, '' FROM w
    CROSS JOIN pg_catalog.aclexplode(w.relacl) x LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE x.privilege_type = 'TRIGGER' AND x.grantee <> w.relowner AND (x.grantee = 0 OR NOT {_CREATOR_OK})
UNION ALL SELECT DISTINCT w.i, w.oid::pg_catalog.regclass::text, pg_catalog.pg_get_userbyid(h.owner)::text, 'code',
        h.via, h.what FROM w JOIN reach h ON h.tbl = w.oid
ORDER BY 1, 4, 5
"""


def with_creators(query: str, path: str = _PATH) -> str:
    """trust.PLANTED with COLUMNS appended (state[11] to state[15]), the path's entries read once (`path`: reading
    pg_settings costs ~10 ms, and five columns ask; or the names a pending file puts on its own: file_paths.py)."""
    query = query.replace("WITH me AS (", f"WITH path(w) AS MATERIALIZED {path}, me AS (", 1)
    query = query.replace("\n)\nSELECT n.oid IS NOT NULL", f"\n), far AS MATERIALIZED {_FAR}, reach AS {_REACH_PATH}, own AS {_REACH_OWN}\nSELECT n.oid IS NOT NULL", 1)
    return _appended(query, COLUMNS)


def _own_event_triggers(only: str = "") -> str:
    """[owner, object] of enabled event triggers (`only`: a condition on e) whose function another role owns, as
    COLUMNS words them."""
    return f"""ARRAY(SELECT ARRAY[r.rolname::text, o.what] FROM ({_EVENT_TRIGGERS}{only}) o
             JOIN pg_catalog.pg_roles r ON r.oid = o.owner WHERE NOT {_OWNER_OK} ORDER BY r.rolname, o.what)"""


# What the runner's own statements meet: views others may write its bookkeeping through (a history others may
# write is every run's concern) and enabled event triggers whose function another role owns (they run on the
# runner's own DDL, REVOKE and COMMENT too; a login one ran on its connection). The rest (who may plant, what else
# others own or the tables' implicit code uses, their TRIGGER rights, a missing path schema) only a migration's SQL
# meets: migrate reads it once a file will run (trust.recheck). In a new session those reads cost more than the
# rest of a no-op's queries together (pg_auth_members, pg_proc, pg_operator, pg_type, pg_trigger, pg_depend,
# pg_settings read cold: issue 22).
_LATER = "ARRAY[]::pg_catalog.text[]"
RUNNERS_OWN = ",\n       " + ",\n       ".join((_LATER, _own_event_triggers(), _LATER, _VIEWS, _LATER)) + "\n"
# Whether there is any of it (state[16]): an enabled event trigger, or a rule (a view's) reading a bookkeeping table
# (the rows of pg_depend _VIEWS starts from); RUNNERS_OWN is read only then. The usual answer, none, costs a new
# session a fraction of RUNNERS_OWN's planning (measured at load ~19: 26.5 against 42.7 ms, the bare check 22.7).
RUNNERS_OWN_ANY = ",\n       " + ", ".join([_LATER] * 5) + """,
       EXISTS (SELECT FROM pg_catalog.pg_event_trigger e WHERE e.evtenabled <> 'D')
           OR EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.refclassid = CAST('pg_catalog.pg_class' AS
               pg_catalog.regclass) AND d.refobjid IN (SELECT t.oid FROM tables t)
               AND d.classid = CAST('pg_catalog.pg_rewrite' AS pg_catalog.regclass))
"""
# A read-only command's state[11] (status, plan: COLUMNS is a writing run's): others' enabled login event triggers;
# their connection ran it too (attack23u 11).
_LOGIN_COLUMN = ",\n       " + _own_event_triggers(" AND e.evtevent = 'login'") + "\n"


def _appended(query: str, columns: str) -> str:
    head, tail = query.rsplit("\nFROM (SELECT CAST(:s AS", 1)
    return head + columns + "FROM (SELECT CAST(:s AS" + tail


def with_runners_own(query: str, any_only: bool = False) -> str:
    """trust.PLANTED with state[11] to state[15] as COLUMNS has them, but only what the runner's own statements meet
    is read (RUNNERS_OWN): planted.refuse refuses that alone; `any_only`: whether there is any (RUNNERS_OWN_ANY)."""
    return _appended(query, RUNNERS_OWN_ANY if any_only else RUNNERS_OWN)


def with_login(query: str) -> str:
    """trust.PLANTED with _LOGIN_COLUMN appended (state[11])."""
    return _appended(query, _LOGIN_COLUMN)


_SAID: set = set()


def login_note(state, schema: str, where: str, accepted: tuple[str, ...]) -> None:
    """status's and plan's line (a warning: they refuse nothing) for with_login's triggers: the run's own words."""
    owned = [o for o in state[11] if o[0] not in accepted] if len(state) > 11 else []
    if owned and (where, str(owned)) not in _SAID:  # (once per server: a tenants' run reads it per schema)
        _SAID.add((where, str(owned)))
        left = ([], owned, [], [])
        output.note(output.visible(f"warning: PostgreSQL at {where}, schema {schema}: {found(schema, *left)}: "
                                   f"{harm(state[2], left)}; {fix(schema, *left, user=state[2])}"))


def trusted(env) -> tuple[str, ...]:
    """SCHEMA_CREATORS_TRUSTED: the roles (PUBLIC too) accepted to CREATE in, or own objects in, a migrated schema;
    from the real environment only (a .env cannot relax it)."""
    view, where = env.source((SETTING,))
    value = view.get(SETTING)[0] if where == "environment" else None
    return tuple(name.strip() for name in (value or "").split(",") if name.strip())


def untrusted(state, accepted: tuple[str, ...]) -> tuple[list[list[str]], ...]:
    """([schema, role] of the roles that may CREATE, [owner, object] of what others own, [schema, table, role,
    grantor] of others' TRIGGER rights: table '' for the user's default privilege) in the schema and the others on
    the session's search_path, and [schema, role, database] of path entries naming no schema yet and the roles that
    may create one, less the roles `accepted`."""
    if len(state) < 16:
        return [], [], [], []
    return ([c for c in state[11] if c[1] not in accepted], [o for o in state[12] if o[0] not in accepted],
            [t for t in state[13] if t[2] not in accepted], [m for m in state[15] if m[1] not in accepted])


def _names(roles) -> str:
    return ", ".join(r if r == "PUBLIC" else output.role(r) for r in roles)


def _by_schema(creators: list[list[str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for where, role in creators:
        grouped.setdefault(where, []).append(role)
    return grouped


def found(schema: str, creators: list[list[str]], owned: list[list[str]], triggers: list[list[str]] = (),
          missing: list[list[str]] = ()) -> str:
    """What others may plant, in words (a schema other than `schema` is one on the migration's search_path)."""
    said = []
    for where, roles in _by_schema(creators).items():
        on_path = f" (on the migration's search_path)" * (where != schema)
        said.append(f"{'PUBLIC (every role)' if roles == ['PUBLIC'] else 'roles ' + _names(roles)} may CREATE "
                    f"in schema {where}{on_path}")
    if owned:
        shown = "; ".join(f"{what} (owner {output.role(owner)})" for owner, what in owned[:SHOWN])
        said.append(f"other roles own objects there: {shown}{f' and {len(owned) - SHOWN} more' * (len(owned) > SHOWN)}")
    tables = list(dict.fromkeys(f"{where}.{table}" for where, table, *_ in triggers if table))
    if tables:
        roles = sorted({role for _, table, role, _ in triggers if table})
        said.append(f"roles {_names(roles)} may add triggers (a TRIGGER right) on table "
                    f"{', '.join(tables[:SHOWN])}{f' and {len(tables) - SHOWN} more' * (len(tables) > SHOWN)}")
    for where, _, role, _ in (t for t in triggers if not t[1]):
        said.append(f"the migration user's default privilege gives {_names([role])} TRIGGER on every table it makes "
                    + (f"in schema {where}" if where else "anywhere"))
    for name, roles in _by_schema([[where, role] for where, role, _ in missing]).items():
        said.append(f"schema {name} on the migration's search_path does not exist and "
                    f"{'PUBLIC (every role)' if 'PUBLIC' in roles else 'roles ' + _names(roles)} may CREATE on the "
                    "database (a schema made under that name mid-run is searched)")
    return output.visible(" and ".join(said))


def fix(schema: str, creators: list[list[str]], owned: list[list[str]], triggers: list[list[str]] = (),
        missing: list[list[str]] = (), accept: bool = True, user: str = "") -> str:
    """The REVOKE to run, and what to do about what others own; or the setting that accepts them."""
    roles = sorted({*(role for _, role in creators), *(owner for owner, _ in owned), *(t[2] for t in triggers),
                    *(m[1] for m in missing)})
    steps = []
    for where, grantees in _by_schema(creators).items():
        steps.append(f"run {runnable(f'REVOKE CREATE ON SCHEMA {ident(where)} FROM {_sql_names(grantees)}')}")
    for name, function in _login_triggers(owned):
        steps.append(f"as a superuser run DROP EVENT TRIGGER {name}, or ALTER FUNCTION {function} OWNER TO a "
                     "superuser")
    reached = [what.rsplit(_USES, 1)[1] for _, what in owned if _USES in what]
    if len(_login_triggers(owned)) + len(reached) < len(owned):
        steps.append("drop what others own there, or make the migration user its owner (ALTER ... OWNER TO)")
    for what in dict.fromkeys(reached):
        steps.append(f"as a superuser run {runnable(alter_owner(what, user))} (or stop using it)")
    by: dict[tuple[str, str, str], list[str]] = {}
    for where, table, role, grantor in triggers:
        by.setdefault((where, grantor, table and "table"), []).append(role)
    for (where, grantor, table), grantees in by.items():
        if table:  # (CASCADE: a right passed on WITH GRANT OPTION goes with it)
            statement = f"REVOKE TRIGGER ON ALL TABLES IN SCHEMA {ident(where)} FROM {_sql_names(grantees)} CASCADE"
            steps.append(f"{f'as role {output.role(grantor)}, which granted it, ' * bool(grantor)}run {runnable(statement)}")
        else:
            statement = (f"ALTER DEFAULT PRIVILEGES FOR ROLE {ident(user)}{f' IN SCHEMA {ident(where)}' * bool(where)} "
                         f"REVOKE TRIGGER ON TABLES FROM {_sql_names(grantees)}")
            steps.append(f"run {runnable(statement)}")
    if missing:
        made = ", ".join(f"CREATE SCHEMA {ident(name)}" for name in dict.fromkeys(m[0] for m in missing))
        revoke = f"REVOKE CREATE ON DATABASE {ident(missing[0][2])} FROM {_sql_names([m[1] for m in missing])}"
        steps.append(f"as user {output.role(user) if user else 'the migration user'} run {runnable(made)} (its own "
                     f"then), or run {runnable(revoke)}")
    return f"{' and '.join(steps)}" + f"; or, to trust them, set {SETTING}={','.join(roles)}" * accept


def _sql_names(roles: list[str]) -> str:
    return ", ".join(r if r == "PUBLIC" else ident(r) for r in dict.fromkeys(roles))


def views(schema: str, found: list[list[str]]) -> tuple[str, str]:
    """Others' write rights on views over the runner's bookkeeping, in words, and the REVOKEs taking them."""
    said = "; ".join(f"view {view} over {schema}.{table} to {output.role(role)} ({rights})"
                     for view, table, role, rights in found[:SHOWN])
    statements = [runnable(f"REVOKE INSERT, UPDATE, DELETE ON {view} FROM "
                           f"{_sql_names([role for v, _, role, _ in found if v == view])}")
                  for view in dict.fromkeys(view for view, *_ in found)]
    return (output.visible(f"{said}{f' and {len(found) - SHOWN} more' * (len(found) > SHOWN)}"),
            f"run {'; '.join(statements)}, or drop the view")


def views_error(schema: str, found: list[list[str]], where: str) -> str:
    """The one line refusing views over the runner's bookkeeping that others may write through."""
    said, fix_it = views(schema, found)
    return output.visible(
        f"refusing the migration history in schema {schema} on {where}: other roles may write it through a view: "
        f"{said}; the bookkeeping relation they write is a view, not the table, and the write runs with the view "
        f"owner's rights (they could add history rows that skip a migration); {fix_it}")


def refuse(state, schema: str, where: str, accepted: tuple[str, ...]) -> None:
    """Refuses (exit 2) a schema others may plant objects in, or add triggers to its tables, unless
    SCHEMA_CREATORS_TRUSTED accepts them all; and views others may write the bookkeeping through."""
    if len(state) > 14 and state[14]:
        raise MigratorError(views_error(schema, state[14], where), USAGE)
    left = untrusted(state, accepted)
    if any(left):
        raise MigratorError(output.visible(
            f"refusing to migrate schema {schema} on {where}: {found(schema, *left)}: {harm(state[2], left)}; "
            f"{fix(schema, *left, user=state[2])}"), USAGE)


def harm(user: str, left=((), (), (), ())) -> str:
    """What another role's CREATE, objects or TRIGGER right lead to (`left`: untrusted()'s); a login event trigger's
    function has run already, on connecting, before any check (attack23u 11)."""
    creators, owned, triggers, missing = left
    said = [f"the login event trigger's function already ran as user {user} on this connection and runs on every "
            "connection of this role, before any check"] * bool(_login_triggers(owned))
    uses = sum(_USES in what for _, what in owned)
    said += [f"what the tables use runs as user {user} on each write, and its owner may replace it at any time (CREATE "
             "OR REPLACE, ALTER DOMAIN ... ADD CONSTRAINT)"] * bool(uses)
    if creators or triggers or missing or len(_login_triggers(owned)) + uses < len(owned) or not said:
        said.append(f"an operator or function they plant there, or a trigger they add, runs as user {user} when a "
                    "migration's SQL resolves to it or writes the table")
    return "; ".join(said)


_LOGIN = "login event trigger "


def _login_triggers(owned: list[list[str]]) -> list[tuple[str, str]]:
    """(name, function) of the login event triggers among `owned` ('login event trigger N (function F)')."""
    return [tuple(what[len(_LOGIN):-1].split(" (function ", 1)) for _, what in owned if what.startswith(_LOGIN)]


def planted_list(schema: str, planted: list[str]) -> str:
    """(quote_ident keeps a line break in an owner's or a trigger's name: escaped here, so the line never splits)"""
    return "; ".join(output.visible(f"{schema}.{what}") for what in planted)


def planted_fix(schema: str, user: str, names: list[str]) -> str:
    """What to do about planted tables: drop what is not the runner's, hand what is to the user."""
    tables = [f"{schema}.{name}" for name in names[:3]] or [f"{schema}.<table>"]
    return (f"inspect {', '.join(tables)}: drop what is not the runner's; for what is, as a superuser or its owner run "
            f"ALTER TABLE {tables[0]} OWNER TO {user} (and drop other roles' triggers, rules and policies, and the "
            f"defaults, CHECKs, indexes and columns using code outside pg_catalog); grant other roles USAGE only on "
            f"{schema}")


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
