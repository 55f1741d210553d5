"""The catalog queries behind the description: one query per kind of object, no per-object query.

Every query runs with search_path = pg_catalog (names come out schema-qualified) and takes one
parameter, %(bookkeeping)s: the oids of the schemas holding yoyo's and the runner's tables (one, or each
tenant's own); only those tables, by exact name, in those schemas, are left out. Privileges are read only where an ACL is set
(NULL means the default), which keeps the queries cheap on large schemas.
"""

from __future__ import annotations

MANAGED_NS = "n.nspname <> 'information_schema' AND left(n.nspname, 3) <> 'pg_'"
BOOKKEEPING_TABLES = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock",
                      "_hcm_migration_checksum", "_hcm_migration_failure", "_hcm_schema_snapshot", "_hcm_schema_owned",
                      "_hcm_history_lock",
                      "flyway_schema_history")
# A Flyway folder's history table is bookkeeping too: its default name, or the run's SCHEMA_TABLE (set on the
# runner's connection as hcm.flyway_table).
NOT_BOOKKEEPING = ("NOT (c.relnamespace = ANY(CAST(%(bookkeeping)s AS oid[])) AND c.relname IN ("
                   + ", ".join(f"'{t}'" for t in BOOKKEEPING_TABLES)
                   + ", coalesce(pg_catalog.current_setting('hcm.flyway_table', true), '')))"
                   # and every Flyway-shaped history there, whatever SCHEMA_TABLE named it (each service's own)
                   " AND NOT (c.relnamespace = ANY(CAST(%(bookkeeping)s AS oid[])) AND c.relkind IN ('r', 'p') AND "
                   "(SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute fa WHERE fa.attrelid = c.oid AND "
                   "fa.attnum > 0 AND NOT fa.attisdropped AND fa.attname IN ('installed_rank', 'version', "
                   "'description', 'type', 'script', 'checksum', 'installed_by', 'installed_on', 'execution_time', "
                   "'success')) = 10)")
QUALIFIED = "quote_ident(n.nspname) || '.' || quote_ident({name})"

# Where yoyo's tables are (as the runner's connection pins it), else the session's current schema.
BOOKKEEPING_SCHEMA = """
SELECT coalesce(
    (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.relname = '_yoyo_migration' AND c.relkind IN ('r', 'p')
     ORDER BY EXISTS (SELECT FROM pg_catalog.pg_class l WHERE l.relnamespace = c.relnamespace AND l.relname = 'yoyo_lock') DESC,
              EXISTS (SELECT FROM pg_catalog.pg_class s WHERE s.relnamespace = c.relnamespace
                      AND s.relname = '_hcm_migration_checksum') DESC,
              c.relnamespace = pg_catalog.to_regnamespace(pg_catalog.quote_ident(pg_catalog.current_schema())) DESC NULLS LAST,
              c.relnamespace LIMIT 1),
    pg_catalog.to_regnamespace(pg_catalog.quote_ident(pg_catalog.current_schema())), 0)::oid
"""
BOOKKEEPING_BY_NAME = "SELECT coalesce(pg_catalog.to_regnamespace(pg_catalog.quote_ident(%s)), 0)::oid"
# Each tenant's history is in its own schema: all of them hold bookkeeping tables.
BOOKKEEPING_OF_TENANTS = ("SELECT coalesce(array_agg(n.oid), '{}') FROM pg_catalog.pg_namespace n "
                          "WHERE n.nspname = ANY(%s)")


def with_schema_column(query: str) -> str:
    """The query with its object's schema name (n.nspname) as one more, last, column: how a read over many
    schemas tells whose each row is. Every per-schema query's own FROM starts a line."""
    select, found, rest = query.partition("\nFROM ")
    assert found and "n.nspname" in rest, "a per-schema query joins pg_namespace n in its own FROM"
    return f"{select}, n.nspname\nFROM {rest}"


def not_extension_member(catalog: str, oid: str) -> str:
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
            f"AND e.objid = {oid} AND e.deptype = 'e')")


def grants(acl: str, owner: str, default: str) -> str:
    """What differs from the default privileges, one line per grantee: "GRANT\tSELECT, UPDATE\t<grantee>\t"
    or "REVOKE\tEXECUTE\t<grantee>\t", the grantee (PUBLIC, or the quoted role) in hex: a role's name may hold a
    tab or a line break (any CREATEROLE role can make one), which must not split the line. Sorted as the plain
    lines were. The owner's own privileges are left out (owners are not described)."""
    actual = f"aclexplode({acl})"
    defaults = f"aclexplode({default})"
    grantee = "CASE WHEN e.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(e.grantee)) END"
    return f"""CASE WHEN {acl} IS NOT NULL THEN (SELECT string_agg(x.line, E'\\n' ORDER BY x.sort) FROM (
        SELECT e.verb || E'\\t' || string_agg(e.privilege_type, ', ' ORDER BY e.privilege_type) || E'\\t'
               || encode(convert_to({grantee}, 'UTF8'), 'hex')
               || E'\\t' || CASE WHEN e.is_grantable THEN 'WITH GRANT OPTION' ELSE '' END AS line,
               e.verb || E'\\t' || string_agg(e.privilege_type, ', ' ORDER BY e.privilege_type) || E'\\t'
               || {grantee} || E'\\t' || CASE WHEN e.is_grantable THEN 'WITH GRANT OPTION' ELSE '' END AS sort
        FROM ((SELECT 'GRANT' AS verb, a.privilege_type, a.grantee, a.is_grantable FROM {actual} a
               EXCEPT SELECT 'GRANT', d.privilege_type, d.grantee, d.is_grantable FROM {defaults} d)
              UNION ALL
              (SELECT 'REVOKE', d.privilege_type, d.grantee, d.is_grantable FROM {defaults} d
               EXCEPT SELECT 'REVOKE', a.privilege_type, a.grantee, a.is_grantable FROM {actual} a)) e
        WHERE e.grantee <> {owner} GROUP BY e.verb, e.grantee, e.is_grantable) x) END"""


def default_grants(acl: str, kind: str, owner: str) -> str:
    return grants(acl, owner, f"acldefault('{kind}', {owner})")


def sorted_options(options: str) -> str:
    return f"(SELECT string_agg(o, ', ' ORDER BY o) FROM unnest({options}) o)"


MANAGED_REL = f"{MANAGED_NS} AND {NOT_BOOKKEEPING} AND {not_extension_member('pg_class', 'c.oid')}"
REL_FROM = "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"

RELATIONS = f"""
SELECT {QUALIFIED.format(name='c.relname')}, c.relkind, c.relpersistence,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       CASE WHEN c.relispartition THEN (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid)
            || ' ' || pg_get_expr(c.relpartbound, c.oid) END,
       (SELECT string_agg(i.inhparent::regclass::text, ', ' ORDER BY i.inhseqno) FROM pg_inherits i
        WHERE i.inhrelid = c.oid AND NOT c.relispartition),
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END,
       obj_description(c.oid, 'pg_class'),
       {default_grants('c.relacl', 'r', 'c.relowner')},
       c.relrowsecurity, c.relforcerowsecurity, {sorted_options('c.reloptions')}, c.relreplident,
       CASE WHEN c.relreplident = 'i' THEN (SELECT quote_ident(ic.relname) FROM pg_index x
            JOIN pg_class ic ON ic.oid = x.indexrelid WHERE x.indrelid = c.oid AND x.indisreplident) END,
       CASE WHEN c.relkind = 'f' THEN (SELECT quote_ident(s.srvname) FROM pg_foreign_table f
            JOIN pg_foreign_server s ON s.oid = f.ftserver WHERE f.ftrelid = c.oid) END
{REL_FROM}
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {MANAGED_REL}
"""

# NOT NULL constraints (pg_constraint rows since PostgreSQL 18) are described with their column: their
# name when it is not the default one, NOT VALID, NO INHERIT. Identity options: the identity sequence.
COLUMNS = f"""
SELECT {QUALIFIED.format(name='c.relname')}, quote_ident(a.attname),
       row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum)::int, format_type(a.atttypid, a.atttypmod),
       a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation
            THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END,
       col_description(a.attrelid, a.attnum),
       CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage END,
       CASE WHEN a.attstattarget >= 0 THEN a.attstattarget::int END,
       {grants('a.attacl', 'c.relowner', "acldefault('c', c.relowner)")},
       nn.conislocal AND nn.conname <> left(c.relname || '_' || a.attname || '_not_null', 63), quote_ident(nn.conname),
       nn.convalidated, nn.connoinherit,
       CASE WHEN a.attidentity <> '' THEN (SELECT ARRAY[s.seqtypid::int8, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
            s.seqcache, s.seqcycle::int] FROM pg_depend dp JOIN pg_sequence s ON s.seqrelid = dp.objid
            WHERE dp.classid = 'pg_class'::regclass AND dp.refclassid = 'pg_class'::regclass
              AND dp.refobjid = a.attrelid AND dp.refobjsubid = a.attnum AND dp.deptype = 'i') END
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
LEFT JOIN pg_constraint nn ON nn.conrelid = a.attrelid AND nn.contype = 'n' AND nn.conkey[1] = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'f') AND {MANAGED_REL}
"""

# A constraint trigger's pg_constraint row ('t') is described by its trigger.
CONSTRAINTS = f"""
SELECT {QUALIFIED.format(name='c.relname')}, quote_ident(k.conname), pg_get_constraintdef(k.oid),
       obj_description(k.oid, 'pg_constraint')
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype NOT IN ('n', 't') AND {MANAGED_REL}
"""

# Indexes that implement a primary key, unique or exclusion constraint are described by the constraint. The
# INVALID copies an interrupted REINDEX ... CONCURRENTLY leaves (name_ccnew, name_ccold) are no part of the schema:
# status lists them as INVALID and the rerun drops them (postgres/concurrently.py), never drift.
INDEXES = f"""
SELECT {QUALIFIED.format(name='ic.relname')}, {QUALIFIED.format(name='c.relname')}, c.relkind,
       pg_get_indexdef(i.indexrelid), i.indisvalid, obj_description(i.indexrelid, 'pg_class')
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {MANAGED_REL} AND (i.indisvalid OR ic.relname !~ '_cc(new|old)[0-9]*$')
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
       obj_description(c.oid, 'pg_class'), {default_grants('c.relacl', 's', 'c.relowner')}
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {MANAGED_REL}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'i')
"""

FUNCTIONS = f"""
SELECT {QUALIFIED.format(name='p.proname')} || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.prokind,
       CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
       CASE WHEN p.prokind = 'a' THEN (SELECT concat_ws(', ', 'SFUNC = ' || g.aggtransfn::regproc::text,
            'STYPE = ' || format_type(g.aggtranstype, NULL),
            CASE WHEN g.aggfinalfn <> 0 THEN 'FINALFUNC = ' || g.aggfinalfn::regproc::text END,
            CASE WHEN g.aggcombinefn <> 0 THEN 'COMBINEFUNC = ' || g.aggcombinefn::regproc::text END,
            CASE WHEN g.aggsortop <> 0 THEN 'SORTOP = ' || g.aggsortop::regoperator::text END,
            CASE WHEN g.agginitval IS NOT NULL THEN 'INITCOND = ' || quote_literal(g.agginitval) END,
            CASE WHEN g.aggkind <> 'n' THEN 'KIND = ' || g.aggkind::text END)
            FROM pg_aggregate g WHERE g.aggfnoid = p.oid) END,
       obj_description(p.oid, 'pg_proc'), {default_grants('p.proacl', 'f', 'p.proowner')}
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {MANAGED_NS} AND {not_extension_member('pg_proc', 'p.oid')}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'i')  -- a range type's constructors
"""

# An extension's own functions are not described, but a GRANT on them (by a migration) is: the ACL
# against the one the extension installed (pg_init_privs).
EXTENSION_GRANTS = f"""
SELECT quote_ident(x.extname),
       {QUALIFIED.format(name='p.proname')} || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       {grants('p.proacl', 'p.proowner', "coalesce((SELECT ip.initprivs FROM pg_init_privs ip WHERE ip.objoid = p.oid AND ip.classoid = 'pg_proc'::regclass AND ip.objsubid = 0), acldefault('f', p.proowner))")}
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_depend e ON e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e'
JOIN pg_extension x ON x.oid = e.refobjid
WHERE p.proacl IS NOT NULL
"""

# Clones of a partitioned table's trigger on its partitions (tgparentid) are the parent's.
TRIGGERS = f"""
SELECT {QUALIFIED.format(name='c.relname')}, c.relkind, quote_ident(t.tgname), pg_get_triggerdef(t.oid), t.tgenabled,
       obj_description(t.oid, 'pg_trigger')
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND {MANAGED_REL}
"""

POLICIES = f"""
SELECT {QUALIFIED.format(name='c.relname')}, c.relkind, quote_ident(p.polname), p.polcmd, p.polpermissive,
       (SELECT string_agg(r.name, ', ' ORDER BY r.name) FROM (SELECT CASE WHEN o = 0 THEN 'PUBLIC'
            ELSE quote_ident(pg_get_userbyid(o)) END AS name FROM unnest(p.polroles) o) r),
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {MANAGED_REL}
"""

RULES = f"""
SELECT {QUALIFIED.format(name='c.relname')}, c.relkind, quote_ident(r.rulename), pg_get_ruledef(r.oid), r.ev_enabled,
       obj_description(r.oid, 'pg_rewrite')
FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE r.rulename <> '_RETURN' AND {MANAGED_REL}
"""

STATISTICS = f"""
SELECT {QUALIFIED.format(name='c.relname')}, c.relkind,
       quote_ident(sn.nspname) || '.' || quote_ident(x.stxname), pg_get_statisticsobjdef(x.oid),
       obj_description(x.oid, 'pg_statistic_ext')
FROM pg_statistic_ext x JOIN pg_namespace sn ON sn.oid = x.stxnamespace
JOIN pg_class c ON c.oid = x.stxrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {MANAGED_REL}
"""

# Enums, domains, ranges and free-standing composite types (not the row types of tables).
TYPES = f"""
SELECT {QUALIFIED.format(name='t.typname')}, t.typtype,
       (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid),
       format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,
       (SELECT string_agg(' CONSTRAINT ' || quote_ident(k.conname) || ' ' || pg_get_constraintdef(k.oid), '' ORDER BY k.conname)
        FROM pg_constraint k WHERE k.contypid = t.oid AND k.contype <> 'n'),
       (SELECT concat_ws(', ', 'SUBTYPE = ' || format_type(r.rngsubtype, NULL),
            CASE WHEN r.rngsubdiff <> 0 THEN 'SUBTYPE_DIFF = ' || r.rngsubdiff::regproc::text END,
            CASE WHEN r.rngcollation <> 0 THEN 'COLLATION = ' || (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                 FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = r.rngcollation) END)
        FROM pg_range r WHERE r.rngtypid = t.oid),
       (SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
                || CASE WHEN a.attcollation <> at.typcollation THEN ' COLLATE ' || a.attcollation::regcollation::text ELSE '' END,
                ', ' ORDER BY a.attnum)
        FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid
        WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped),
       CASE WHEN t.typtype = 'd' AND t.typcollation <> (SELECT b.typcollation FROM pg_type b WHERE b.oid = t.typbasetype)
            THEN t.typcollation::regcollation::text END,
       obj_description(t.oid, 'pg_type'), {default_grants('t.typacl', 'T', 't.typowner')},
       (SELECT string_agg(encode(convert_to(quote_ident(k.conname), 'UTF8'), 'hex') || E'\\t'  -- (a tab, a line
                          || encode(convert_to(d.description, 'UTF8'), 'hex'), E'\\n' ORDER BY k.conname)  -- break in either)
        FROM pg_constraint k JOIN pg_description d ON d.objoid = k.oid AND d.classoid = 'pg_constraint'::regclass
        WHERE k.contypid = t.oid)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype IN ('e', 'd', 'r', 'c') AND {MANAGED_NS} AND {not_extension_member('pg_type', 't.oid')}
  AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
"""

EXTENSIONS = """
SELECT quote_ident(x.extname), quote_ident(n.nspname), x.extversion
FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace WHERE x.extname <> 'plpgsql'
"""

# `public` is created with every database; its comment and ACL are described only where they differ
# from the server's default (PostgreSQL 15 took CREATE from PUBLIC).
PUBLIC_DEFAULT_ACL = ("acldefault('n', n.nspowner) || makeaclitem(0, n.nspowner, 'USAGE', false) || "
                      "CASE WHEN current_setting('server_version_num')::int < 150000 "
                      "THEN ARRAY[makeaclitem(0, n.nspowner, 'CREATE', false)] ELSE '{}'::aclitem[] END")
SCHEMAS = f"""
SELECT quote_ident(n.nspname), n.nspname = 'public',
       CASE WHEN n.nspname <> 'public' OR obj_description(n.oid, 'pg_namespace') IS DISTINCT FROM 'standard public schema'
            THEN obj_description(n.oid, 'pg_namespace') END,
       CASE WHEN n.nspname = 'public' THEN {grants('n.nspacl', 'n.nspowner', PUBLIC_DEFAULT_ACL)}
            ELSE {default_grants('n.nspacl', 'n', 'n.nspowner')} END
FROM pg_namespace n
WHERE {MANAGED_NS} AND {not_extension_member('pg_namespace', 'n.oid')}
"""

EVENT_TRIGGERS = f"""
SELECT quote_ident(v.evtname), v.evtevent, v.evtfoid::regproc::text,
       (SELECT string_agg(quote_literal(g), ', ' ORDER BY g) FROM unnest(v.evttags) g), v.evtenabled,
       obj_description(v.oid, 'pg_event_trigger')
FROM pg_event_trigger v WHERE {not_extension_member('pg_event_trigger', 'v.oid')}
"""

# ALTER DEFAULT PRIVILEGES: a global entry replaces the built-in default (database-wide); a per-schema one adds to
# it (that schema's).
_DEFAULT_GRANTS = grants('a.defaclacl', "'-1'::oid", "CASE WHEN a.defaclnamespace = 0 THEN acldefault(CASE a.defaclobjtype WHEN 'S' THEN 's' ELSE a.defaclobjtype END, a.defaclrole) ELSE acldefault('c', a.defaclrole) END")
DEFAULT_PRIVILEGES = f"""
SELECT quote_ident(pg_get_userbyid(a.defaclrole)), NULL, a.defaclobjtype, {_DEFAULT_GRANTS}
FROM pg_default_acl a WHERE a.defaclnamespace = 0
"""
DEFAULT_PRIVILEGES_IN_SCHEMA = f"""
SELECT quote_ident(pg_get_userbyid(a.defaclrole)), quote_ident(n.nspname), a.defaclobjtype, {_DEFAULT_GRANTS}
FROM pg_default_acl a JOIN pg_namespace n ON n.oid = a.defaclnamespace
WHERE {MANAGED_NS}
"""
