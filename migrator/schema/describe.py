"""The one canonical description of the managed schema, read from the catalog (never pg_dump).

Every query (migrator/schema/queries.py) runs with search_path = pg_catalog, so every name the server
prints (pg_get_*def, format_type, regclass) is schema-qualified the same way whatever the session's
search_path. Left out: system schemas, objects owned by extensions (a GRANT on them is described),
owners (they differ per environment), the bookkeeping tables of yoyo and the runner (by exact name,
in their schema), and `public` itself unless its comment or privileges differ from the default.

On a tenant's connection (hcm.tenant_schema set) only that schema is described; on a plain run's, the
tenants' schemas (hcm.tenant_schemas) are left out; where tenants exist, database-wide objects are
described by neither (see scope()).

Other sessions may run DDL while the catalog is read: an object dropped between two queries makes a
pg_get_*def return NULL or the server fail a lookup; the description is then read again (a new
snapshot), a few times, before one clear error.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

from migrator.errors import MigratorError
from migrator.schema import describe_locks, queries as q
from migrator.schema.model import Description, Item, belongs_to, database_wide, escape_control_names, top_key

ATTEMPTS = 8  # a busy server with DDL in flight can need a few (the sleeps between add up to 1.4 s)
# Errors of a catalog function on an object dropped while the description was read (XX000, internal).
VANISHED_ERRORS = ("cache lookup failed", "could not open relation with OID", "could not find tuple")


class Vanished(Exception):
    """An object was dropped while the catalog was read."""


def describe(conn, bookkeeping_schema: str | None = None) -> Description:
    """The managed schema of the connection's database. Reads only; leaves the session as it was.

    `bookkeeping_schema` holds yoyo's tables (backend.bookkeeping_schema); by default the schema where
    `_yoyo_migration` is, else the session's current schema. On an idle connection (yoyo's autocommit one)
    or a non-autocommit one, the queries share one read-only snapshot; inside a caller's open transaction they
    run under a savepoint (and that transaction's isolation)."""
    return _retrying(conn, lambda tolerate: _describe_once(conn, bookkeeping_schema, tolerate))[None]


def describe_tenants(conn, schemas: list[str]) -> dict[str, Description]:
    """Each tenant's schema exactly as describe() on that tenant's own connection gives it, all read in one
    pass over the catalog (one query per kind for every schema: 50 tenants in ~60 ms instead of ~900 ms).
    The fast path of a run over many tenants; a schema that does not exist gets an empty description."""
    return _retrying(conn, lambda tolerate: _describe_once(conn, None, tolerate, tenants=list(schemas)))


def _retrying(conn, read) -> dict:
    with describe_locks.stoppable():  # (SIGTERM: one line, never the default silent exit)
        return _retried(conn, read)


def _retried(conn, read) -> dict:
    import psycopg2

    waits, attempt = describe_locks.Waits(), 0
    while attempt < ATTEMPTS:
        attempt += 1
        last = attempt == ATTEMPTS
        try:
            return {key: escape_control_names(d) for key, d in read(last).items()}
        except Vanished:
            pass  # not on the last attempt: it skips what vanished
        except psycopg2.Error as exc:
            if describe_locks.is_lock_wait(exc):
                waits.after(conn, exc)  # (a lock wait is no attempt of the objects that change)
                attempt -= 1
                continue
            message = (exc.pgerror or str(exc)).strip().splitlines()[0] if (exc.pgerror or str(exc)) else ""
            if not any(text in message for text in VANISHED_ERRORS):
                raise
            if last:
                raise MigratorError(f"cannot describe the schema: objects kept changing while the catalog was read "
                                    f"({ATTEMPTS} attempts; last: {message}); run it again when the DDL has finished")
        time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def _describe_once(conn, bookkeeping_schema: str | None, tolerate: bool,
                   tenants: list[str] | None = None) -> dict[str | None, Description]:
    """{None: the description} of the connection's schema(s); with `tenants`, {schema: its description}."""
    with _read_only_snapshot(conn) as cursor:
        if tenants is not None:  # each tenant's bookkeeping is in its own schema
            cursor.execute(q.BOOKKEEPING_OF_TENANTS, (tenants,))
            params = {"bookkeeping": cursor.fetchone()[0], "tenants": tenants}
            narrow, shared = " AND n.nspname = ANY(%(tenants)s)", False
        else:
            if bookkeeping_schema is None:
                cursor.execute(q.BOOKKEEPING_SCHEMA)
            else:
                cursor.execute(q.BOOKKEEPING_BY_NAME, (bookkeeping_schema,))
            params = {"bookkeeping": [cursor.fetchone()[0]]}
            tenant, others = _session_tenants(cursor)
            params.update(tenant=tenant, others=others)
            narrow = (" AND n.nspname = %(tenant)s" if tenant else " AND n.nspname <> ALL(%(others)s)" if others else "")
            shared = not (tenant or others)
        cursor.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog', true)")
        descriptions = {schema: Description() for schema in (tenants if tenants is not None else [None])}
        for query, build in _READERS:
            per_schema = q.MANAGED_NS in query
            if not (per_schema or shared):
                continue  # database-wide objects: see scope()
            query = query.replace(q.MANAGED_NS, q.MANAGED_NS + narrow)
            many = tenants is not None
            cursor.execute(q.with_schema_column(query) if many else query, params)
            for row in cursor.fetchall():
                try:
                    items = list(build(*(row[:-1] if many else row)))
                except Vanished:
                    if not tolerate:
                        raise
                    continue
                description = descriptions[row[-1] if many else None]
                for item in items:
                    description.add(item)
    return descriptions


def _session_tenants(cursor) -> tuple[str | None, list[str]]:
    """(the tenant this connection migrates, the tenants a plain run's connection leaves out): the settings
    postgres/connection.py pins on the runner's connections (hcm.tenant_schema, hcm.tenant_schemas)."""
    cursor.execute("SELECT pg_catalog.current_setting('hcm.tenant_schema', true), "
                   "pg_catalog.current_setting('hcm.tenant_schemas', true)")
    tenant, others = cursor.fetchone()
    return tenant or None, [t for t in (others or "").split(",") if t]


def scope(conn) -> Callable[[Item], bool]:
    """Which objects describe() on this connection covers, to hold a recorded description to the same scope.

    A tenant's connection describes its own schema; a plain run's every schema but the tenants'. Where tenant
    histories exist, database-wide objects (extensions, event triggers, default privileges not tied to a
    schema) belong to no one history (one tenant's migration creates an extension for all; `IF NOT EXISTS` in
    the next is a no-op) and are described by none. A recorded description may hold what is now out of scope:
    a schema that has since become a tenant's, or a tenant's extensions recorded before this rule."""
    with conn.cursor() as cursor:
        tenant, others = _session_tenants(cursor)
    if tenant:
        return lambda item: not database_wide(item)
    if others:
        return lambda item: not database_wide(item) and not any(belongs_to(item, schema) for schema in others)
    return lambda item: True


@contextlib.contextmanager
def _read_only_snapshot(conn):
    """A cursor whose queries share one read-only snapshot (or the caller's transaction, under a savepoint);
    afterwards the session is as it was: the local search_path and, after a failure, the aborted (sub)transaction undone."""
    import psycopg2

    own_transaction = conn.info.transaction_status == 0  # psycopg2's IDLE: one read-only snapshot of our own
    with conn.cursor() as cursor:
        if not own_transaction:
            cursor.execute("SAVEPOINT hcm_describe")
        elif conn.autocommit:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        else:  # psycopg2 sends BEGIN itself
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # A function such as pg_get_indexdef locks its relation: on a migration session each read waits at most
        # its lock_timeout and is retried (describe_locks.py); elsewhere as long as statement_timeout allows.
        cursor.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)",
                       (describe_locks.session_limits(cursor)[0],))
        done = False
        try:
            yield cursor
            done = True
        finally:
            try:
                if own_transaction:
                    conn.rollback() if not conn.autocommit else cursor.execute("ROLLBACK")
                elif done or conn.info.transaction_status in (2, 3):  # INTRANS, INERROR
                    cursor.execute("ROLLBACK TO SAVEPOINT hcm_describe; RELEASE SAVEPOINT hcm_describe")
            except psycopg2.Error:
                if done:
                    raise
                # the failure inside (a read timeout's one line, a lost connection) is the one to tell: the
                # cleanup of a connection it closed fails too ("cursor already closed")


def _present(*definitions) -> None:
    """A pg_get_*def gives NULL for an object dropped after the snapshot was taken."""
    if any(d is None for d in definitions):
        raise Vanished()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _grant_lines(grants: str | None):
    """(verb, privileges, grantee, option) of each line queries.grants gives (its grantee in hex)."""
    for line in (grants or "").split("\n"):
        if line:
            verb, privileges, grantee, option = line.split("\t")
            yield verb, privileges, bytes.fromhex(grantee).decode("utf-8"), option


def _grant_items(kind: str, name: str, parent: str, grants: str | None, target: str, column: str = ""):
    for verb, privileges, grantee, option in _grant_lines(grants):
        to = "TO" if verb == "GRANT" else "FROM"
        suffix = f" {option}" if option else ""
        on_column = f" ({column})" if column else ""
        text = f"{verb} {privileges}{on_column} ON {target} {to} {grantee}{suffix};"
        yield Item("grant", f"{kind} {name} {to} {grantee}{suffix}", text, parent)


def _extras(kind: str, name: str, parent: str, comment: str | None, grants: str | None, on: str | None = None):
    """The COMMENT ON and GRANT items of an object."""
    target = f"{kind.upper()} {on or name}"
    if comment is not None:
        yield Item("comment", f"{kind} {name}", f"COMMENT ON {target} IS {_literal(comment)};", parent)
    yield from _grant_items(kind, name, parent, grants, target)


REPLICA_IDENTITY = {"n": "NOTHING", "f": "FULL"}


def _relation(name, relkind, persistence, partition_key, partition_of, inherits, viewdef, comment, grants, rls,
              force_rls, options, replident, replica_index, server):
    top = q_top(relkind)
    parent = top_key(top, name)
    if top == "table":
        # One clause or statement per line; "UNLOGGED"/"FOREIGN" say how CREATE reads (see model.render).
        lines = ["UNLOGGED"] if persistence == "u" else []
        lines += ["FOREIGN", f"SERVER {server}"] if relkind == "f" else []
        lines += [f"PARTITION OF {partition_of}"] if partition_of else []
        lines += [f"INHERITS ({inherits})"] if inherits else []
        lines += [f"PARTITION BY {partition_key}"] if partition_key else []
        lines += [f"WITH ({options})"] if options else []
        lines += [f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY;"] if rls else []
        lines += [f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY;"] if force_rls else []
        if replident in REPLICA_IDENTITY:
            lines.append(f"ALTER TABLE {name} REPLICA IDENTITY {REPLICA_IDENTITY[replident]};")
        elif replident == "i":
            lines.append(f"ALTER TABLE {name} REPLICA IDENTITY USING INDEX {replica_index};")
        yield Item("table", name, "\n".join(lines))
    else:
        _present(viewdef)
        word = "MATERIALIZED VIEW" if relkind == "m" else "VIEW"
        with_options = f" WITH ({options})" if options else ""
        yield Item(top, name, f"CREATE {word} {name}{with_options} AS\n{viewdef.rstrip()}")
    word = "MATERIALIZED VIEW" if relkind == "m" else "TABLE" if relkind != "v" else "VIEW"
    yield from _extras(word.lower(), name, parent, comment, grants)


def q_top(relkind: str) -> str:
    return {"r": "table", "p": "table", "f": "table", "v": "view", "m": "materialized view"}[relkind]


STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}
INT_LIMITS = {21: 32767, 23: 2147483647, 20: 9223372036854775807}  # int2, int4, int8


def _identity_options(sequence) -> str:
    """The identity sequence's options that differ from CREATE's defaults, e.g. " (START WITH 100)"."""
    if not sequence:
        return ""
    typid, start, increment, minimum, maximum, cache, cycle = sequence
    top = INT_LIMITS.get(typid, INT_LIMITS[20])
    default_min, default_max = (1, top) if increment > 0 else (-top - 1, -1)
    options = [f"INCREMENT BY {increment}"] if increment != 1 else []
    options += [f"MINVALUE {minimum}"] if minimum != default_min else []
    options += [f"MAXVALUE {maximum}"] if maximum != default_max else []
    options += [f"START WITH {start}"] if start != (minimum if increment > 0 else maximum) else []
    options += [f"CACHE {cache}"] if cache != 1 else []
    options += ["CYCLE"] if cycle else []
    return f" ({' '.join(options)})" if options else ""


def _column(table, column, position, type_, not_null, default, identity, generated, collation, comment, storage,
            statistics, grants, named_not_null, not_null_name, not_null_valid, not_null_no_inherit, identity_sequence):
    line = f"{column} {type_}"
    if collation:
        line += f" COLLATE {collation}"
    if storage:
        line += f" STORAGE {STORAGE[storage]}"
    if identity:
        line += (f" GENERATED {'ALWAYS' if identity == 'a' else 'BY DEFAULT'} AS IDENTITY"
                 + _identity_options(identity_sequence))
    elif generated:
        line += f" GENERATED ALWAYS AS ({default}){' STORED' if generated == 's' else ''}"
    elif default is not None:
        line += f" DEFAULT {default}"
    if not_null or not_null_name:
        line += (f" CONSTRAINT {not_null_name}" if named_not_null else "") + " NOT NULL"
        line += (" NOT VALID" if not_null_valid is False else "") + (" NO INHERIT" if not_null_no_inherit else "")
    if statistics is not None:
        line += f" /* SET STATISTICS {statistics} */"
    parent = top_key("table", table)
    yield Item("column", f"{table}.{column}", line, parent, position)
    yield from _extras("column", f"{table}.{column}", parent, comment, None)
    yield from _grant_items("column", f"{table}.{column}", parent, grants, f"TABLE {table}", column)


def _constraint(table, name, definition, comment):
    _present(definition)
    parent = top_key("table", table)
    yield Item("constraint", f"{table}.{name}", f"CONSTRAINT {name} {definition}", parent)
    yield from _extras("constraint", f"{name} ON {table}", parent, comment, None)


def _index(name, table, relkind, definition, valid, comment):
    _present(definition)
    parent = top_key(q_top(relkind), table)
    text = definition + ";" + ("" if valid else "  -- INVALID: a failed CREATE INDEX CONCURRENTLY")
    yield Item("index", name, text, parent)
    yield from _extras("index", name, parent, comment, None)


def _sequence(name, type_, start, increment, minimum, maximum, cache, cycle, owned_by, comment, grants):
    text = (f"CREATE SEQUENCE {name} AS {type_} START WITH {start} INCREMENT BY {increment} "
            f"MINVALUE {minimum} MAXVALUE {maximum} CACHE {cache}{' CYCLE' if cycle else ''};")
    if owned_by:
        text += f"\nALTER SEQUENCE {name} OWNED BY {owned_by};"
    yield Item("sequence", name, text)
    yield from _extras("sequence", name, top_key("sequence", name), comment, grants)


def _function(signature, prokind, definition, aggregate, comment, grants):
    parent = top_key("function", signature)
    if prokind == "a":
        yield Item("function", signature, f"CREATE AGGREGATE {signature} ({aggregate});")
    else:
        _present(definition)
        yield Item("function", signature, definition.strip() + ";")
    word = "PROCEDURE" if prokind == "p" else "AGGREGATE" if prokind == "a" else "FUNCTION"
    yield from _extras(word.lower(), signature, parent, comment, grants)


def _extension_grants(extension, signature, grants):
    yield from _grant_items("function", signature, top_key("extension", extension), grants, f"FUNCTION {signature}")


TRIGGER_STATES = {"D": "DISABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA"}


def _trigger(table, relkind, name, definition, enabled, comment):
    _present(definition)
    parent = top_key(q_top(relkind), table)
    text = definition + ";"
    if enabled != "O":
        text += f"\nALTER TABLE {table} {TRIGGER_STATES[enabled]} TRIGGER {name};"
    yield Item("trigger", f"{table}.{name}", text, parent)
    yield from _extras("trigger", f"{name} ON {table}", parent, comment, None)


POLICY_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def _policy(table, relkind, name, command, permissive, roles, using, check):
    text = (f"CREATE POLICY {name} ON {table} AS {'PERMISSIVE' if permissive else 'RESTRICTIVE'} "
            f"FOR {POLICY_COMMANDS[command]} TO {roles or 'PUBLIC'}"
            + (f" USING ({using})" if using is not None else "") + (f" WITH CHECK ({check})" if check is not None else "")
            + ";")
    yield Item("policy", f"{table}.{name}", text, top_key(q_top(relkind), table))


def _rule(table, relkind, name, definition, enabled, comment):
    _present(definition)
    parent = top_key(q_top(relkind), table)
    text = definition + ("" if enabled == "O" else f"\nALTER TABLE {table} {TRIGGER_STATES[enabled]} RULE {name};")
    yield Item("rule", f"{table}.{name}", text, parent)
    yield from _extras("rule", f"{name} ON {table}", parent, comment, None)


def _statistics(table, relkind, name, definition, comment):
    _present(definition)
    parent = top_key(q_top(relkind), table)
    yield Item("statistics", name, definition + ";", parent)
    yield from _extras("statistics", name, parent, comment, None)


def _type(name, typtype, labels, base, not_null, default, checks, range_options, attributes, collation, comment,
          grants, constraint_comments):
    if typtype == "e":
        text = f"CREATE TYPE {name} AS ENUM ({labels or ''});"
    elif typtype == "d":
        text = (f"CREATE DOMAIN {name} AS {base}" + (f" COLLATE {collation}" if collation else "")
                + (f" DEFAULT {default}" if default is not None else "") + (" NOT NULL" if not_null else "")
                + (checks or "") + ";")
    elif typtype == "r":
        text = f"CREATE TYPE {name} AS RANGE ({range_options});"
    else:
        text = f"CREATE TYPE {name} AS ({attributes or ''});"
    parent = top_key("type", name)
    yield Item("type", name, text)
    yield from _extras("domain" if typtype == "d" else "type", name, parent, comment, grants)
    for line in (constraint_comments or "").splitlines():  # (hex: see queries.TYPES)
        constraint, text = (bytes.fromhex(part).decode("utf-8") for part in line.split("\t"))
        yield from _extras("constraint", f"{constraint} ON DOMAIN {name}", parent, text, None)


def _extension(name, schema, version):
    yield Item("extension", name, f"CREATE EXTENSION {name} WITH SCHEMA {schema} VERSION {_literal(version)};")


def _schema(name, is_public, comment, grants):
    if is_public and comment is None and not grants:
        return
    created = "-- schema public: created with the database" if is_public else f"CREATE SCHEMA {name};"
    yield Item("schema", name, created)
    yield from _extras("schema", name, top_key("schema", name), comment, grants)


def _event_trigger(name, event, function, tags, enabled, comment):
    text = (f"CREATE EVENT TRIGGER {name} ON {event}" + (f" WHEN TAG IN ({tags})" if tags else "")
            + f" EXECUTE FUNCTION {function}();")
    if enabled != "O":
        text += f"\nALTER EVENT TRIGGER {name} {TRIGGER_STATES[enabled]};"
    yield Item("event trigger", name, text)
    yield from _extras("event trigger", name, top_key("event trigger", name), comment, None)


DEFAULT_PRIVILEGE_OBJECTS = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS"}


def _default_privileges(role, schema, objtype, grants):
    if not grants:
        return
    name = f"FOR ROLE {role}" + (f" IN SCHEMA {schema}" if schema else "") + f" ON {DEFAULT_PRIVILEGE_OBJECTS[objtype]}"
    lines = []
    for verb, privileges, grantee, option in _grant_lines(grants):
        to = "TO" if verb == "GRANT" else "FROM"
        lines.append(f"ALTER DEFAULT PRIVILEGES {name.rsplit(' ON ', 1)[0]} {verb} {privileges} "
                     f"ON {DEFAULT_PRIVILEGE_OBJECTS[objtype]} {to} {grantee}{' ' + option if option else ''};")
    yield Item("default privileges", name, "\n".join(lines))


_READERS = [
    (q.SCHEMAS, _schema), (q.EXTENSIONS, _extension), (q.EXTENSION_GRANTS, _extension_grants), (q.TYPES, _type),
    (q.FUNCTIONS, _function), (q.SEQUENCES, _sequence), (q.RELATIONS, _relation), (q.COLUMNS, _column),
    (q.CONSTRAINTS, _constraint), (q.INDEXES, _index), (q.TRIGGERS, _trigger), (q.POLICIES, _policy),
    (q.RULES, _rule), (q.STATISTICS, _statistics), (q.EVENT_TRIGGERS, _event_trigger),
    (q.DEFAULT_PRIVILEGES, _default_privileges), (q.DEFAULT_PRIVILEGES_IN_SCHEMA, _default_privileges),
]
