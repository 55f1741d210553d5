"""The one canonical description of the managed schema, read from the catalog (never pg_dump).

Every query runs with search_path = pg_catalog, so every name the server prints (pg_get_*def,
format_type, regclass) is schema-qualified the same way whatever the session's search_path.
Left out: system schemas, the `public` schema itself (its default ACL and comment differ between
PostgreSQL versions; its contents are described), objects owned by extensions, owners (they
differ per environment), and the bookkeeping tables of yoyo and the runner.
On a tenant's connection (hcm.tenant_schema set, see postgres/connection.py) only that schema is
described, so one tenant's migrations never read as another's drift; extensions stay database-wide.
"""

from __future__ import annotations

from migrator.schema.model import Description, Item, top_key

MANAGED_NS = "n.nspname <> 'information_schema' AND left(n.nspname, 3) <> 'pg_'"
BOOKKEEPING = "left({rel}, 6) <> '_yoyo_' AND {rel} <> 'yoyo_lock' AND left({rel}, 5) <> '_hcm_'"
QUALIFIED = "quote_ident(n.nspname) || '.' || quote_ident({name})"


def _not_extension_member(catalog: str, oid: str) -> str:
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
            f"AND e.objid = {oid} AND e.deptype = 'e')")


def _grants(acl: str, kind: str, owner: str) -> str:
    """What differs from the default privileges, one line per grantee: "GRANT\tSELECT, UPDATE\tPUBLIC\t"
    or "REVOKE\tEXECUTE\tPUBLIC\t". The owner's own privileges are left out (owners are not described)."""
    actual = f"aclexplode(coalesce({acl}, acldefault('{kind}', {owner})))"
    default = f"aclexplode(acldefault('{kind}', {owner}))"
    return f"""(SELECT string_agg(x.line, E'\\n' ORDER BY x.line) FROM (
        SELECT e.verb || E'\\t' || string_agg(e.privilege_type, ', ' ORDER BY e.privilege_type) || E'\\t'
               || CASE WHEN e.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(e.grantee)) END
               || E'\\t' || CASE WHEN e.is_grantable THEN 'WITH GRANT OPTION' ELSE '' END AS line
        FROM ((SELECT 'GRANT' AS verb, a.privilege_type, a.grantee, a.is_grantable FROM {actual} a
               EXCEPT SELECT 'GRANT', d.privilege_type, d.grantee, d.is_grantable FROM {default} d)
              UNION ALL
              (SELECT 'REVOKE', d.privilege_type, d.grantee, d.is_grantable FROM {default} d
               EXCEPT SELECT 'REVOKE', a.privilege_type, a.grantee, a.is_grantable FROM {actual} a)) e
        WHERE e.grantee <> {owner} GROUP BY e.verb, e.grantee, e.is_grantable) x)"""


MANAGED_REL = f"{MANAGED_NS} AND {BOOKKEEPING.format(rel='c.relname')} AND {_not_extension_member('pg_class', 'c.oid')}"

RELATIONS = f"""
SELECT {QUALIFIED.format(name='c.relname')}, c.relkind, c.relpersistence,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       CASE WHEN c.relispartition THEN (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid)
            || ' ' || pg_get_expr(c.relpartbound, c.oid) END,
       (SELECT string_agg(i.inhparent::regclass::text, ', ' ORDER BY i.inhseqno) FROM pg_inherits i
        WHERE i.inhrelid = c.oid AND NOT c.relispartition),
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END,
       obj_description(c.oid, 'pg_class'),
       {_grants('c.relacl', 'r', 'c.relowner')},
       c.relrowsecurity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {MANAGED_REL}
"""

COLUMNS = f"""
SELECT {QUALIFIED.format(name='c.relname')}, quote_ident(a.attname),
       row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum)::int, format_type(a.atttypid, a.atttypmod),
       a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation
            THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END,
       col_description(a.attrelid, a.attnum)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'f') AND {MANAGED_REL}
"""

# NOT NULL constraints (pg_constraint rows since PostgreSQL 18) are described with their column.
CONSTRAINTS = f"""
SELECT {QUALIFIED.format(name='c.relname')}, quote_ident(k.conname), pg_get_constraintdef(k.oid),
       obj_description(k.oid, 'pg_constraint')
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype <> 'n' AND {MANAGED_REL}
"""

# Indexes that implement a primary key, unique or exclusion constraint are described by the constraint.
INDEXES = f"""
SELECT {QUALIFIED.format(name='ic.relname')}, {QUALIFIED.format(name='c.relname')}, c.relkind,
       pg_get_indexdef(i.indexrelid), i.indisvalid, obj_description(i.indexrelid, 'pg_class')
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {MANAGED_REL}
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                  AND k.contype IN ('p', 'u', 'x'))
"""

# Sequences behind identity columns are part of the column; SERIAL ones are described with OWNED BY.
SEQUENCES = f"""
SELECT {QUALIFIED.format(name='c.relname')}, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin,
       s.seqmax, s.seqcache, s.seqcycle,
       (SELECT d.refobjid::regclass::text || '.' || quote_ident(a.attname) FROM pg_depend d
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'a'
          AND d.refclassid = 'pg_class'::regclass),
       obj_description(c.oid, 'pg_class'), {_grants('c.relacl', 's', 'c.relowner')}
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {MANAGED_REL}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'i')
"""

FUNCTIONS = f"""
SELECT {QUALIFIED.format(name='p.proname')} || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.prokind,
       CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
       CASE WHEN p.prokind = 'a' THEN (SELECT 'SFUNC = ' || g.aggtransfn::regproc::text || ', STYPE = '
            || format_type(g.aggtranstype, NULL) FROM pg_aggregate g WHERE g.aggfnoid = p.oid) END,
       obj_description(p.oid, 'pg_proc'), {_grants('p.proacl', 'f', 'p.proowner')}
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {MANAGED_NS} AND {_not_extension_member('pg_proc', 'p.oid')}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'i')  -- a range type's constructors
"""

# Clones of a partitioned table's trigger on its partitions (tgparentid) are the parent's.
TRIGGERS = f"""
SELECT {QUALIFIED.format(name='c.relname')}, c.relkind, quote_ident(t.tgname), pg_get_triggerdef(t.oid), t.tgenabled,
       obj_description(t.oid, 'pg_trigger')
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND {MANAGED_REL}
"""

# Enums, domains, ranges and free-standing composite types (not the row types of tables).
TYPES = f"""
SELECT {QUALIFIED.format(name='t.typname')}, t.typtype,
       (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid),
       format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,
       (SELECT string_agg(' CONSTRAINT ' || quote_ident(k.conname) || ' ' || pg_get_constraintdef(k.oid), '' ORDER BY k.conname)
        FROM pg_constraint k WHERE k.contypid = t.oid AND k.contype <> 'n'),
       (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = t.oid),
       (SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped),
       obj_description(t.oid, 'pg_type'), {_grants('t.typacl', 'T', 't.typowner')}
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype IN ('e', 'd', 'r', 'c') AND {MANAGED_NS} AND {_not_extension_member('pg_type', 't.oid')}
  AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
"""

EXTENSIONS = """
SELECT quote_ident(x.extname), quote_ident(n.nspname), x.extversion
FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace WHERE x.extname <> 'plpgsql'
"""

SCHEMAS = f"""
SELECT quote_ident(n.nspname), obj_description(n.oid, 'pg_namespace'), {_grants('n.nspacl', 'n', 'n.nspowner')}
FROM pg_namespace n
WHERE {MANAGED_NS} AND n.nspname <> 'public' AND {_not_extension_member('pg_namespace', 'n.oid')}
"""

RELATION_WORDS = {"r": "table", "p": "table", "f": "foreign table", "v": "view", "m": "materialized view"}
TOP_OF_RELKIND = {"r": "table", "p": "table", "f": "table", "v": "view", "m": "materialized view"}
TYPE_WORDS = {"e": "ENUM", "d": "DOMAIN", "r": "RANGE", "c": "COMPOSITE"}


def describe(conn) -> Description:
    """The managed schema of the connection's database. Reads only; leaves the session as it was.

    On an idle autocommit connection (yoyo's), the queries share one read-only snapshot."""
    description = Description()
    own_transaction = conn.autocommit and conn.info.transaction_status == 0  # psycopg2's IDLE
    with conn.cursor() as cursor:
        if own_transaction:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cursor.execute("SELECT pg_catalog.current_setting('search_path'), "
                       "pg_catalog.current_setting('hcm.tenant_schema', true)")
        saved, tenant = cursor.fetchone()
        cursor.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog', false)")
        try:
            for query, build in _READERS:
                if tenant:  # the tenant's name is passed as a parameter; the queries hold no other %
                    query = query.replace(MANAGED_NS, f"{MANAGED_NS} AND n.nspname = %(tenant)s")
                cursor.execute(query, {"tenant": tenant} if tenant else None)
                for row in cursor.fetchall():
                    for item in build(*row):
                        description.add(item)
        finally:
            if own_transaction:
                cursor.execute("ROLLBACK")
            else:
                cursor.execute("SELECT pg_catalog.set_config('search_path', %s, false)", (saved,))
    return description


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _extras(kind: str, name: str, parent: str, comment: str | None, grants: str | None, on: str | None = None):
    """The COMMENT ON and GRANT items of an object."""
    target = f"{kind.upper()} {on or name}"
    if comment is not None:
        yield Item("comment", f"{kind} {name}", f"COMMENT ON {target} IS {_literal(comment)};", parent)
    for line in (grants or "").splitlines():
        verb, privileges, grantee, option = line.split("\t")
        to = "TO" if verb == "GRANT" else "FROM"
        text = f"{verb} {privileges} ON {target} {to} {grantee}{' ' + option if option else ''};"
        yield Item("grant", f"{kind} {name} {to} {grantee}{' ' + option if option else ''}", text, parent)


def _relation(name, relkind, persistence, partition_key, partition_of, inherits, viewdef, comment, grants, rls):
    top = TOP_OF_RELKIND[relkind]
    parent = top_key(top, name)
    if top == "table":
        options = ["UNLOGGED"] if persistence == "u" else []
        options += [f"PARTITION OF {partition_of}"] if partition_of else []
        options += [f"INHERITS ({inherits})"] if inherits else []
        options += [f"PARTITION BY {partition_key}"] if partition_key else []
        options += ["-- foreign table"] if relkind == "f" else []
        options += [f"-- ALTER TABLE {name} ENABLE ROW LEVEL SECURITY"] if rls else []
        yield Item("table", name, "\n".join(options))
    else:
        word = "MATERIALIZED VIEW" if relkind == "m" else "VIEW"
        yield Item(top, name, f"CREATE {word} {name} AS\n{viewdef.rstrip()}")
    word = "MATERIALIZED VIEW" if relkind == "m" else "TABLE" if relkind != "v" else "VIEW"
    yield from _extras(word.lower(), name, parent, comment, grants)


def _column(table, column, position, type_, not_null, default, identity, generated, collation, comment):
    line = f"{column} {type_}"
    if collation:
        line += f" COLLATE {collation}"
    if identity:
        line += f" GENERATED {'ALWAYS' if identity == 'a' else 'BY DEFAULT'} AS IDENTITY"
    elif generated:
        line += f" GENERATED ALWAYS AS ({default}){' STORED' if generated == 's' else ''}"
    elif default is not None:
        line += f" DEFAULT {default}"
    if not_null:
        line += " NOT NULL"
    parent = top_key("table", table)
    yield Item("column", f"{table}.{column}", line, parent, position)
    yield from _extras("column", f"{table}.{column}", parent, comment, None)


def _constraint(table, name, definition, comment):
    parent = top_key("table", table)
    yield Item("constraint", f"{table}.{name}", f"CONSTRAINT {name} {definition}", parent)
    yield from _extras("constraint", f"{name} ON {table}", parent, comment, None)


def _index(name, table, relkind, definition, valid, comment):
    parent = top_key(TOP_OF_RELKIND[relkind], table)
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
        yield Item("function", signature, definition.strip() + ";")
    word = "PROCEDURE" if prokind == "p" else "AGGREGATE" if prokind == "a" else "FUNCTION"
    yield from _extras(word.lower(), signature, parent, comment, grants)


def _trigger(table, relkind, name, definition, enabled, comment):
    parent = top_key(TOP_OF_RELKIND[relkind], table)
    text = definition + ";"
    if enabled != "O":
        state = {"D": "DISABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA"}[enabled]
        text += f"\nALTER TABLE {table} {state} TRIGGER {name};"
    yield Item("trigger", f"{table}.{name}", text, parent)
    yield from _extras("trigger", f"{name} ON {table}", parent, comment, None)


def _type(name, typtype, labels, base, not_null, default, checks, subtype, attributes, comment, grants):
    if typtype == "e":
        text = f"CREATE TYPE {name} AS ENUM ({labels or ''});"
    elif typtype == "d":
        text = (f"CREATE DOMAIN {name} AS {base}" + (f" DEFAULT {default}" if default is not None else "")
                + (" NOT NULL" if not_null else "") + (checks or "") + ";")
    elif typtype == "r":
        text = f"CREATE TYPE {name} AS RANGE (SUBTYPE = {subtype});"
    else:
        text = f"CREATE TYPE {name} AS ({attributes or ''});"
    yield Item("type", name, text)
    yield from _extras("domain" if typtype == "d" else "type", name, top_key("type", name), comment, grants)


def _extension(name, schema, version):
    yield Item("extension", name, f"CREATE EXTENSION {name} WITH SCHEMA {schema} VERSION {_literal(version)};")


def _schema(name, comment, grants):
    yield Item("schema", name, f"CREATE SCHEMA {name};")
    yield from _extras("schema", name, top_key("schema", name), comment, grants)


_READERS = [
    (SCHEMAS, _schema), (EXTENSIONS, _extension), (TYPES, _type), (FUNCTIONS, _function),
    (SEQUENCES, _sequence), (RELATIONS, _relation), (COLUMNS, _column), (CONSTRAINTS, _constraint),
    (INDEXES, _index), (TRIGGERS, _trigger),
]
