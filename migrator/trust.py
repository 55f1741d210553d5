"""Bookkeeping others cannot hijack: the runner's tables are verified before a run uses them.

A role with CREATE on a schema the runner migrates (a tenant's, or public where PUBLIC may create, the
default before PostgreSQL 15) can make the runner's tables first, or add to them what runs as whoever
writes them: a trigger, a rule, a row-level policy. The run's own SQL resolves operators and functions in
pg_catalog alone (postgres/connection.py); this module checks the tables themselves, with the rights the
user lacks on them, in one catalog query per connection, and says what it found in one line.
"""

from __future__ import annotations

import re
import weakref
from contextlib import contextmanager, suppress
from typing import Callable, Iterator

from migrator.bookkeeping_lock import creating_bookkeeping
from migrator.errors import USAGE, MigratorError
from migrator.grant_text import grants_list, ident, revoke_advice, revoke_sql, rights_of
from migrator import bookkeeping_code
from migrator import body_lexing, history_trust, history_writers, output, own_paths, pinned, planted, planted_bodies
from migrator.planted import owner_error, planted_error, planted_fix, planted_list  # noqa: F401 (trust's names)
from migrator.server_session import READ_ONLY_SQLSTATE

LOCK_NOT_AVAILABLE = "55P03"  # (lock_timeout)
from migrator.targets import where_name

# The schema, and what in it would run as the migration role when the runner writes or reads its tables: a
# bookkeeping table owned by a role other than the user itself (superusers are trusted), one that is not a plain
# table, or any trigger, rule or row-level security on one (a policy acts only with it on); and the rights of
# :rights the user lacks on the tables present; and the schema's owner when it is not trusted the same way (it
# may drop or replace the runner's tables at any time). Membership is no trust: a role's admin grants it to
# others (on PostgreSQL 14/15 a login role may GRANT itself to the user; on 16+ any CREATEROLE role its own), even
# WITH INHERIT FALSE, SET FALSE, and its table's column DEFAULT, CHECK, index or generated expression then runs as
# the user on every insert. public's owner on PostgreSQL 15+, pg_database_owner (the database's owner), is
# trusted: it already owns the database; before 15 public is the bootstrap superuser's. (The runner's tables have
# no sequence; a column default or sequence is their owner's, the trusted one.) Last, the names of the untrusted
# tables (history.py reads no such Flyway-shaped table). Then [table, grantee, rights, owned by the user, grantor
# when not the owner: only it can REVOKE what it granted] for what
# other roles (or PUBLIC) may write on the trusted ones (a planted one is refused whole), and the roles the user is
# granted to (they act as it; the login role itself aside, when it SETs ROLE to the user): the tables are the
# runner's alone, a role that writes them forges a lock or deletes history (a common ALTER DEFAULT PRIVILEGES ...
# TO app grants it). Last, [table, comment] of the trusted ones (history_trust's record of a history others could
# write). One query, run once per connection, ~1 ms to plan.
PLANTED = """
WITH me AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER), tables AS (
    SELECT c.oid, c.relname::text AS name, c.relkind, o.rolsuper OR c.relowner = (SELECT oid FROM me) AS trusted,
           o.rolname, c.relhastriggers, c.relhasrules, c.relrowsecurity, c.relowner, c.relacl
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
    WHERE c.relnamespace = pg_catalog.to_regnamespace(pg_catalog.quote_ident(:s))
      AND c.relname = ANY(CAST(:tables AS pg_catalog.name[]))
), planted AS (
    SELECT t.* FROM tables t WHERE NOT t.trusted OR t.relkind NOT IN ('r', 'p') OR t.relhasrules OR t.relrowsecurity
        OR (t.relhastriggers AND EXISTS (SELECT FROM pg_catalog.pg_trigger g WHERE g.tgrelid = t.oid))
)
SELECT n.oid IS NOT NULL, coalesce(pg_catalog.has_schema_privilege(n.oid, 'USAGE'), false), CURRENT_USER,
       ARRAY(SELECT t.name || ' ' || pg_catalog.concat_ws(', ',
                 CASE WHEN NOT t.trusted THEN 'is owned by role ' || pg_catalog.quote_ident(t.rolname) END,
                 CASE WHEN t.relkind NOT IN ('r', 'p') THEN 'is not a plain table (relkind ' || t.relkind::text || ')' END,
                 CASE WHEN t.relhastriggers THEN (SELECT 'has trigger ' || pg_catalog.string_agg(
                     pg_catalog.quote_ident(g.tgname::text), ', ') FROM pg_catalog.pg_trigger g WHERE g.tgrelid = t.oid
                     AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.oid = g.tgconstraint
                                     AND k.contype = 'f')) END,
                 -- (the internal triggers of a foreign key: DROP TRIGGER cannot drop them, its DROP CONSTRAINT does)
                 CASE WHEN t.relhastriggers THEN (SELECT 'has foreign key ' || pg_catalog.string_agg(DISTINCT
                     pg_catalog.quote_ident(k.conname::text) || ' of table ' || k.conrelid::pg_catalog.regclass::text
                     || ' (drop it: ALTER TABLE ' || k.conrelid::pg_catalog.regclass::text || ' DROP CONSTRAINT '
                     || pg_catalog.quote_ident(k.conname::text) || ')', ', ') FROM pg_catalog.pg_trigger g
                     JOIN pg_catalog.pg_constraint k ON k.oid = g.tgconstraint AND k.contype = 'f'
                     WHERE g.tgrelid = t.oid) END,
                 CASE WHEN t.relhasrules THEN 'has rules' END,
                 CASE WHEN t.relrowsecurity THEN 'has row-level security' END)
             FROM planted t ORDER BY t.name),
       ARRAY(SELECT ARRAY[t.name, r.p] FROM tables t, pg_catalog.unnest(CAST(:rights AS text[])) WITH ORDINALITY r(p, i)
             WHERE NOT pg_catalog.has_table_privilege(t.oid, r.p) ORDER BY t.name, r.i),
       CASE WHEN NOT (so.rolsuper OR so.rolname = 'pg_database_owner' OR so.oid = (SELECT oid FROM me))
            THEN so.rolname::text END,
       ARRAY(SELECT t.name FROM planted t ORDER BY t.name), ARRAY(SELECT t.name FROM tables t),
       ARRAY(SELECT ARRAY[t.name, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(
                     pg_catalog.pg_get_userbyid(a.grantee)::text) END,
                     pg_catalog.string_agg(DISTINCT a.privilege_type, ', '), (t.relowner = (SELECT oid FROM me))::text,
                     CASE WHEN a.grantor <> t.relowner THEN pg_catalog.quote_ident(
                         pg_catalog.pg_get_userbyid(a.grantor)::text) ELSE '' END]
             FROM tables t, (SELECT c.oid, x.grantee, x.grantor, x.privilege_type
                             FROM tables c, pg_catalog.aclexplode(c.relacl) x
                             UNION ALL  -- a column's rights (GRANT INSERT (cols) ...), named with their columns
                             SELECT c.attrelid, x.grantee, x.grantor, x.privilege_type || ' (' || pg_catalog.string_agg(
                                 pg_catalog.quote_ident(c.attname::text), ', ' ORDER BY c.attnum) || ')'
                             FROM pg_catalog.pg_attribute c, pg_catalog.aclexplode(c.attacl) x
                             WHERE c.attrelid IN (SELECT oid FROM tables) AND c.attacl IS NOT NULL
                             GROUP BY c.attrelid, x.grantee, x.grantor, x.privilege_type) a
             WHERE a.oid = t.oid AND t.trusted AND a.grantee <> t.relowner
               AND a.grantee IS DISTINCT FROM (SELECT oid FROM me) AND pg_catalog.split_part(a.privilege_type, ' ', 1)
                   IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER', 'MAINTAIN')
             GROUP BY t.name, t.relowner, a.grantee, a.grantor ORDER BY t.name, a.grantee),
       ARRAY(SELECT pg_catalog.quote_ident(m.rolname::text) FROM pg_catalog.pg_auth_members am
             JOIN pg_catalog.pg_roles m ON m.oid = am.member
             WHERE am.roleid = (SELECT oid FROM me) AND m.rolname <> SESSION_USER  -- (one that can act as it:
               AND (COALESCE((pg_catalog.to_jsonb(am) ->> 'set_option')::bool, true)  -- planted._CREATOR_OK)
                    OR COALESCE((pg_catalog.to_jsonb(am) ->> 'inherit_option')::bool, m.rolinherit)) ORDER BY 1),
       ARRAY(SELECT ARRAY[t.name, d.description] FROM tables t JOIN pg_catalog.pg_description d ON d.objoid = t.oid
             AND d.classoid = CAST('pg_catalog.pg_class' AS pg_catalog.regclass) AND d.objsubid = 0
             WHERE t.trusted ORDER BY t.name)
FROM (SELECT CAST(:s AS pg_catalog.name) AS name) s LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = s.name
LEFT JOIN pg_catalog.pg_roles so ON so.oid = n.nspowner
"""
PLANTED = bookkeeping_code.with_code(PLANTED)  # (and what a write runs: defaults, CHECKs, ..., attack23z 11)


_WITH_CREATORS = history_writers.with_writers(planted.with_creators(PLANTED))  # (verify's: who else may create in
# the schema, planted.py; last, who writes every table, history_writers.py)
_WITH_LOGIN = planted.with_login(PLANTED)  # (a read-only command's: others' login event triggers, state[11])
_RUNNERS_OWN = history_writers.with_writers(planted.with_runners_own(PLANTED))  # (verify's when the rest is read
# once a file runs, recheck: what the runner's own statements meet, and who writes every table)
_RUNNERS_OWN_ANY = history_writers.with_writers(planted.with_runners_own(PLANTED, any_only=True))  # (whether
# _RUNNERS_OWN has anything more to read: state[16]; the writers last, as everywhere)


# What a run does to its tables: yoyo's marks and log, the checksums' and snapshot's upserts; read-only ones read.
RIGHTS = ("SELECT", "INSERT", "UPDATE", "DELETE")


def bookkeeping_state(backend, schema: str, rights: tuple[str, ...] = RIGHTS, creators: bool = True,
                      later: bool = False) -> tuple:
    """(the schema exists, the user has USAGE on it, the user, what others planted among its bookkeeping,
    [table, right] of `rights` the user lacks on the tables present, the schema's untrusted owner or None, the
    names of the planted tables, the names of the tables present, [table, grantee, rights, 'true' when the user
    owns it] of others' write rights on them, the roles granted the user, [table, comment] of the trusted ones);
    with `creators`, planted.py's five more (who may plant in the schemas a migration resolves names in; `later`:
    only what the runner's own statements meet, planted.with_runners_own)."""
    from migrator.schema.queries import BOOKKEEPING_TABLES

    tables = list(dict.fromkeys([*BOOKKEEPING_TABLES, backend.flyway_table]))  # SCHEMA_TABLE's name too
    params = {"s": schema, "tables": tables, "rights": list(rights)}
    state = backend.execute((_RUNNERS_OWN_ANY if later else _WITH_CREATORS) if creators else _WITH_LOGIN,
                            params).fetchone()
    if creators and later and state[16]:  # (an event trigger, or a view over the bookkeeping: read what they are)
        state = backend.execute(_RUNNERS_OWN, params).fetchone()
    elif creators and not later:  # (the user's own string-bodied functions its tables' implicit code reaches)
        state = own_paths.with_paths(backend, planted_bodies.with_bodies(backend, state, schema, PLANTED), schema,
                                     PLANTED)  # (and its own routines that set search_path, attack23y 1)
        state = body_lexing.with_lexed(backend, state)  # (and those read otherwise by the server, attack23z 4)
    return state


def untrusted(backend, schema: str, tables: list[str]) -> list[str]:
    """The tables among `tables` in `schema` the same check refuses: what the runner must not read either."""
    return backend.execute(PLANTED, {"s": schema, "tables": tables, "rights": []}).fetchone()[6] if tables else []


def check_rights(state, schema: str, where: str) -> None:
    """Rights missing on tables that exist: one line naming them and the GRANT (not a permission error later)."""
    lacking: dict[str, list[str]] = {}
    for table, right in state[4]:
        lacking.setdefault(table, []).append(right)
    if lacking:
        what = "; ".join(f"{', '.join(rights)} on {schema}.{table}" for table, rights in lacking.items())
        needed = sorted({r for rights in lacking.values() for r in rights}, key=RIGHTS.index)
        raise MigratorError(output.visible(
            f"user {state[2]} lacks {what} on {where} (the runner's bookkeeping); run GRANT {', '.join(needed)} ON "
            f"{', '.join(f'{schema}.{t}' for t in lacking)} TO {state[2]}, or connect as the tables' owner"))


def verify(backend, schema: str, where: str, read_only: bool, refuse: bool = True, unconfirmed_ok: bool = False,
           options: str = "", target=None, planted_later: bool = False) -> tuple:
    """The bookkeeping_state of `schema`; with `refuse`, a MigratorError when others planted objects there or
    the user lacks rights on a table present (`SELECT` to read; SELECT, INSERT, UPDATE, DELETE to write), or, to
    write, while its history is unconfirmed (history_trust; `unconfirmed_ok`: the commands that confirm it or only
    clear a lock; `options`: the run's --schema, for the commands the refusal names); and, to write (but confirm or
    clear a lock), a schema others may plant objects in (planted.py; the `target`'s creators_trusted accepts those
    roles; `planted_later`: what the run's own statements meet only, the rest read by recheck() before a file runs).
    Only the run's own histories refuse (Flyway's table when the target's folder is a Flyway folder; all without a
    target): another service's is noted (backend.others_distrusted)."""
    # Who may plant in the schemas is read where it is used: a writing run refuses on it, doctor reports it (refuse
    # False); a read-only run (status, plan) would only pay for it (~7 ms of server time in a new session).
    creators = not refuse or (not read_only and not unconfirmed_ok)
    state = bookkeeping_state(backend, schema, ("SELECT",) if read_only else RIGHTS, creators, planted_later)
    if refuse:
        writing = not read_only and not unconfirmed_ok
        refuse_planted(state, schema, where, (target.creators_trusted if target else ()) if writing else None)
    if refuse and state[1]:  # (without USAGE on the schema, that is said first)
        check_rights(state, schema, where)
    if refuse and read_only and not creators:  # (status, plan: their connection ran it too, attack23u 11)
        planted.login_note(state, schema, where, target.creators_trusted if target else ())
    tables = history_trust.histories(backend.flyway_table)
    marked = disown(backend.connection, schema, state[8], comments=state[10], histories=tables) \
        if refuse and not read_only and state[8] else {}
    distrusted = {**history_trust.standing(state[10], tables), **marked}
    own = history_trust.histories(None if target and target.history is None else backend.flyway_table)
    backend.distrusted = {table: found for table, found in distrusted.items() if table in own}
    backend.others_distrusted = {table: found for table, found in distrusted.items() if table not in own}
    backend.fresh_distrust = {t: found for t, found in marked.items() if t in own}  # (what this run revoked:
    # trust-history --yes refuses it, history_review.py)
    if refuse and not read_only and state[9]:
        members(backend.connection, state[2], state[9])
    if refuse and backend.others_distrusted:
        output.note(history_trust.others_note(schema, backend.others_distrusted))
    if refuse and backend.distrusted and read_only:
        output.note(history_trust.note(schema, backend.distrusted, options))
    elif refuse and backend.distrusted and not unconfirmed_ok:
        raise MigratorError(history_trust.refusal(schema, where, backend.distrusted, bool(marked), options), USAGE)
    _VERIFIED[backend.connection] = {(schema, table) for table in state[7] if table not in state[6]}
    return state


def recheck(backend, schema: str, where: str, accepted: tuple[str, ...]) -> None:
    """verify's refusals of what others planted or may plant, read again in its one query: a right the run's own
    migration granted (GRANT CREATE ON SCHEMA, a DO block's GRANT TRIGGER) is used before the next file
    (attack23u 6)."""
    refuse_planted(bookkeeping_state(backend, schema), schema, where, accepted)


def refuse_planted(state, schema: str, where: str, accepted: tuple[str, ...] | None) -> None:
    """verify's and recheck's refusals: a schema another role owns, bookkeeping others planted, and (unless
    `accepted` is None: a read-only command, or one that confirms a history) what others may plant (planted.py)."""
    if state[5]:
        raise MigratorError(owner_error(schema, state[2], state[5], where), USAGE)
    if state[3]:
        raise MigratorError(planted_error(schema, state[2], state[3], state[6], where), USAGE)
    if accepted is not None:
        planted.refuse(state, schema, where, accepted)
        history_writers.refuse(state, schema, where, accepted)


def disown(connection, schema: str, grants: list, made: bool = False, comments: list = (),
           histories: tuple[str, ...] = ()) -> dict:
    """Takes other roles' write rights on the bookkeeping tables the user owns, in the run's session, and says so
    once (the next run finds nothing to take: no statement), then waits out and refuses a trigger they began
    (settle). Others' rights on a table the user does not own (a superuser's) it cannot take: the run refuses.
    Tables this run `made` got them from a default privilege, one creation step after another: said once per
    schema and grantees, for all of them. On tables it did not make, among `histories`, the distrust is recorded
    in the REVOKE's transaction (history_trust): returned, by table."""
    import psycopg2
    import psycopg2.extensions as ext

    foreign = [grant for grant in grants if grant[3] != "true"]
    if foreign:  # a superuser's tables: the run cannot take them, and cannot use tables others may write or trigger
        info = connection.info
        raise MigratorError(output.visible(
            f"refusing the migration history in schema {schema} on {where_name(info.host, info.port, info.dbname)}: "
            f"other roles may write the runner's bookkeeping, which user {connection.info.user} does not own and "
            f"cannot take back: {grants_list(schema, foreign)}; they could add history rows that skip a migration "
            f"or triggers that run as this user; {revoke_advice(schema, foreign)}"),
            USAGE)
    mine = [grant for grant in grants if grant[3] == "true"]
    if not mine:
        return {}
    inside = connection.info.transaction_status == ext.TRANSACTION_STATUS_INTRANS
    recording, marked = history_trust.mark_sql(connection, schema, mine, comments, () if made else histories)
    revoke = revoke_sql(schema, mine) + (f"; {recording}" if recording else "")  # (one statement: one transaction)
    with connection.cursor() as cursor:
        try:
            cursor.execute(f"SAVEPOINT hcm_disown; {revoke}; RELEASE SAVEPOINT hcm_disown" if inside else revoke)
        except psycopg2.Error as exc:
            if inside:
                cursor.execute("ROLLBACK TO SAVEPOINT hcm_disown; RELEASE SAVEPOINT hcm_disown")
            elif not connection.autocommit:
                connection.rollback()
            if exc.pgcode == READ_ONLY_SQLSTATE:  # the run refuses, or its first write fails, in its own words
                return {}
            # Another session changing these tables in an open transaction (a trigger, a grant) that the catalog
            # read could not see: using them now would run what it commits, as the migration role.
            info = connection.info
            raise MigratorError(
                f"PostgreSQL at {where_name(info.host, info.port, info.dbname)}: could not take the write rights "
                f"others hold on the runner's bookkeeping ({grants_list(schema, mine)}): "
                f"{output.visible(output.one_line(str(exc.pgerror or exc)))}; nothing was run; another session is "
                "changing these tables in an open transaction (a trigger, a grant): find it in pg_locks, end it, "
                "and run again", USAGE) from exc
    if not made:  # (tables this run made were never seen by others with those rights)
        settle(connection, schema, sorted({table for table, *_ in mine}), mine)
    info = connection.info  # (a process may migrate several databases: tests, tenants)
    grantees = sorted({grantee for _, grantee, *_ in mine})
    said = (info.host, info.port, info.dbname, schema, tuple(grantees))
    if made and said in _SAID:
        return marked
    _SAID.add(said)
    if made:
        rights = rights_of(mine)
        output.note(output.visible(
            f"revoked write rights on the runner's bookkeeping tables in {schema} as it creates them, from "
            f"{', '.join(grantees)} ({', '.join(rights)}: a default privilege; first on "
            f"{', '.join(sorted({grant[0] for grant in mine}))}; SELECT kept)"))
    else:
        output.note(f"revoked write rights on the runner's bookkeeping from other roles: "
                    f"{grants_list(schema, mine)} (its tables are its own: SELECT kept)")
    return marked


_SAID: set = set()  # (server, database, schema, grantees) a creation's revoke was said for, in this process


def members(connection, user: str, roles: list[str]) -> None:
    """Roles granted the user act as it: what they write in its bookkeeping is its own, nothing to revoke or record
    (attack23s 13). Said once per database and roles, in this process (doctor WARNs too)."""
    info = connection.info
    said = (info.host, info.port, info.dbname, "members", tuple(roles))
    if said not in _SAID:
        _SAID.add(said)
        output.note(output.visible(
            f"note: roles {', '.join(roles)} are granted user {user}: they act as it and may write the runner's bookkeeping "
            f"unseen (a history row that skips a migration, its lock); if that is not deliberate, run REVOKE "
            f"{ident(user)} FROM {', '.join(roles)}"))


def settle(connection, schema: str, tables: list[str], grants: list) -> None:
    """After the REVOKE, before first use: a CREATE TRIGGER begun while others held TRIGGER may still be open (with
    pg_class.relhastriggers already true it does not touch the table's row, and the REVOKE does not conflict with
    it), or have committed between the catalog read and the REVOKE. A lock that conflicts with CREATE TRIGGER waits
    it out (bounded by the run's lock_timeout), then the catalog is read again; no new one can begin now."""
    import psycopg2.extensions as ext

    inside = connection.info.transaction_status == ext.TRANSACTION_STATUS_INTRANS
    names = ", ".join(f"{ident(schema)}.{ident(t)}" for t in tables)
    info = connection.info
    where = where_name(info.host, info.port, info.dbname)
    with connection.cursor() as cursor:
        try:
            if not inside:
                cursor.execute("BEGIN")
            cursor.execute(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE")
            with pinned.catalog_path(cursor):
                cursor.execute(_ON_CURSOR, {"s": schema, "tables": tables, "rights": []})
                state = cursor.fetchone()
            if state[3]:
                raise MigratorError(planted_error(schema, state[2], state[3], state[6], where), USAGE)
            if not inside:
                cursor.execute("COMMIT")
        except BaseException as exc:
            if not inside:
                with suppress(Exception):
                    cursor.execute("ROLLBACK")
            if getattr(exc, "pgcode", None) != LOCK_NOT_AVAILABLE:
                raise
            raise MigratorError(output.visible(
                f"PostgreSQL at {where}: took the write rights of {', '.join(sorted({g[1] for g in grants}))} on the "
                f"runner's bookkeeping, then could not lock {', '.join(f'{schema}.{t}' for t in tables)} within the "
                "lock timeout (--ddl-lock-timeout) to see that nothing they began meanwhile (a trigger) is left: "
                "another session holds them in an open transaction; nothing was run; find it in pg_locks, end it, "
                "and run again"),
                USAGE) from exc


# Per connection, the (schema, table)s its verify() found present and planted by no one: present() in that same
# session need not ask again (such a table is replaced only by its trusted owner or the schema's, and a trigger,
# rule or policy is added by its owner or a role it granted TRIGGER, as much after any look-up as before it).
_VERIFIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# The same check on a plain psycopg2 cursor (%(name)s parameters), under a search_path of pg_catalog alone: it also
# runs in a migration's own session, whose search_path may hold a schema others can create operators in.
_ON_CURSOR = re.sub(r"(?<![:\w]):(s|tables|rights)\b", r"%(\1)s", PLANTED)


def present(cursor, schema: str, table: str, made: bool = False) -> bool:
    """Whether the bookkeeping `table` is in `schema`, refusing it in one line when others planted it or what runs
    on it. Checked at connect, a table may appear later (another role creates it between that check and the
    runner's CREATE, which then finds it, or while a run waits): every look-up before a first use goes through
    here, in the session that uses it, and nothing runs on the table in between (one verify() found there, on this
    connection, is not looked up again). Once `made` by this run, others' write rights on it (a default
    privilege gives them at CREATE) are taken in the same session (disown)."""
    state = _look(cursor, schema, table)
    if made and state and state[8]:
        disown(cursor.connection, schema, state[8], made=True)
    return state is None or table in state[7]


def _look(cursor, schema: str, table: str) -> tuple | None:
    """present()'s catalog state of `table`, None when this connection's verify() found it already."""
    if (schema, table) in _VERIFIED.get(cursor.connection, ()):
        return None
    with pinned.catalog_path(cursor):
        cursor.execute(_ON_CURSOR, {"s": schema, "tables": [table], "rights": []})
        state = cursor.fetchone()
    if state[3]:
        info = cursor.connection.info
        raise MigratorError(planted_error(schema, state[2], state[3], state[6],
                                          where_name(info.host, info.port, info.dbname)), USAGE)
    return state


def ensure_table(cursor, schema: str, table: str, create: Callable[[], None]) -> None:
    """A bookkeeping table, made by `create` when missing (under the schema's bookkeeping lock: another history's
    run may make it now), then verified: one made by another role meanwhile is refused before any use. Looked up
    first: CREATE TABLE IF NOT EXISTS needs CREATE on the schema even when the table is there."""
    if not present(cursor, schema, table):
        with creating_bookkeeping(cursor.connection, schema):
            if not present(cursor, schema, table):
                with creating(cursor):
                    create()
                    present(cursor, schema, table, made=True)
                history_trust.own_rows_only(cursor.connection, schema, [table])


@contextmanager
def creating(cursor) -> Iterator[None]:
    """A creation and the revoke of others' rights on what it made in one transaction, where the session commits
    each statement alone (yoyo's autocommit): a default privilege grants them at CREATE, and another session must
    never see the table with them (the app's INSERT, polled, lands between a COMMIT and a later REVOKE). Inside the
    caller's transaction, both commit with it."""
    import psycopg2.extensions as ext

    connection = cursor.connection
    if not connection.autocommit or connection.info.transaction_status != ext.TRANSACTION_STATUS_IDLE:
        yield
        return
    cursor.execute("BEGIN")
    try:
        yield
    except BaseException:
        with suppress(Exception):  # (a lost connection: nothing was committed)
            cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")


@contextmanager
def revoking_at_commit(backend, tables: list[str]) -> Iterator[None]:
    """yoyo's creation steps (its tables, the lock table) commit through backend.commit(): before_commit takes
    others' rights on these tables there, in the creating transaction (see creating())."""
    backend.revoke_before_commit = tables
    try:
        yield
    finally:
        backend.revoke_before_commit = []


def before_commit(backend) -> None:
    """revoking_at_commit's work, at the COMMIT of a transaction (a failure ends it: nothing made is kept)."""
    import psycopg2.extensions as ext

    if not backend.revoke_before_commit or \
            backend.connection.info.transaction_status != ext.TRANSACTION_STATUS_INTRANS:
        return
    try:
        created(backend.connection, backend.bookkeeping_schema, backend.revoke_before_commit)
    except BaseException:
        with suppress(Exception):
            backend.connection.cursor().execute("ROLLBACK")
        backend._in_transaction = False
        raise


def created(connection, schema: str, tables: list[str]) -> None:
    """Around a creation step made elsewhere (yoyo's tables): those present, verified before their first use, and
    others' write rights on them taken (one line for all)."""
    with connection.cursor() as cursor:
        states = [_look(cursor, schema, table) for table in tables]
        disown(connection, schema, [grant for state in states if state for grant in state[8]], made=True)
