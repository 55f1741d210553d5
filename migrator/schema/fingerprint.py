"""A cheap fingerprint of everything the schema description is read from, taken before the description and stored
beside it: while the fingerprint is unchanged the description is too, so the drift check skips describing.

Every committed change to a catalog row inserts a new row version (with the writing transaction's xid, xmin) or
deletes one; the fingerprint is, per catalog the description reads (and the ones the server's pg_get_*def
functions consult), the number of rows and the sum of a 64-bit hash of each row's xmin, plus the flags
PostgreSQL updates in place (an index's validity). Role and tablespace names (shared catalogs, printed in grants
and definitions), the session settings that scope the description or shape what the server prints, the bookkeeping
schema, the server version and the code that describes are part of it too. A change it cannot tell from another
(a 64-bit collision of sums) is the only miss; anything else only costs a full description.

Taken before describing, never after: a change committed in between then makes the stored fingerprint older than
the description, which only fails the next comparison.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# The catalogs the description reads (schema/queries.py) and those pg_get_*def, format_type and regclass
# consult to print names (operators, operator classes, access methods, languages, text search objects...).
CATALOGS = ("pg_aggregate", "pg_am", "pg_amop", "pg_amproc", "pg_attrdef", "pg_attribute", "pg_cast", "pg_class",
            "pg_collation", "pg_constraint", "pg_conversion", "pg_default_acl", "pg_depend", "pg_description",
            "pg_enum", "pg_event_trigger", "pg_extension", "pg_foreign_data_wrapper", "pg_foreign_server",
            "pg_foreign_table", "pg_index", "pg_inherits", "pg_init_privs", "pg_language", "pg_namespace",
            "pg_opclass", "pg_operator", "pg_opfamily", "pg_partitioned_table", "pg_policy", "pg_proc",
            "pg_publication", "pg_publication_rel", "pg_range", "pg_rewrite", "pg_seclabel", "pg_sequence",
            "pg_statistic_ext", "pg_transform", "pg_trigger", "pg_ts_config", "pg_ts_config_map", "pg_ts_dict",
            "pg_ts_parser", "pg_ts_template", "pg_type")
# Flags PostgreSQL updates in place (no new row version) that the description reads: the indexes whose flags are
# not the usual ones, by oid and flags (a short list, usually empty).
IN_PLACE = ("SELECT 'pg_index flags', pg_catalog.count(*), pg_catalog.sum(pg_catalog.hashtextextended("
            "pg_catalog.concat_ws(',', t.indexrelid, t.indisvalid, t.indisready, t.indislive, t.indisclustered, "
            "t.indisreplident), 0)) "
            "FROM pg_catalog.pg_index t WHERE NOT (t.indisvalid AND t.indisready AND t.indislive) OR t.indisclustered "
            "OR t.indisreplident")
# The settings that scope the description (the runner's pins: a tenant's schema, the tenants a plain run leaves out,
# the Flyway history), the server's version and the settings the server prints definitions with (a default's
# timestamp, float or bytea, quoting): the same catalog read under other settings is another description.
_SETTINGS = ("hcm.tenant_schema", "hcm.tenant_schemas", "hcm.flyway_table", "hcm.history", "server_version_num",
             "DateStyle", "IntervalStyle", "TimeZone", "extra_float_digits", "bytea_output",
             "standard_conforming_strings", "quote_all_identifiers", "lc_monetary")
# Only pg_catalog's functions and types, named: no operator or cast a planted object could stand in for. Every
# row version a transaction writes carries that transaction's xid (xmin), and the rows a change removes were
# written by transactions committed before the fingerprint: the multiset of xmins (count, sum of 64-bit hashes)
# differs whenever the rows do.
# PostgreSQL 18 has hashxidextended (an xid hashed as it is); before it, through its text (~20% more time).
_PART = ("SELECT '{name}', pg_catalog.count(*), pg_catalog.sum({hash}) FROM pg_catalog.{name} t")
_HASH_XID = "pg_catalog.hashxidextended(t.xmin, 0)"
_HASH_TEXT = "pg_catalog.hashint8extended(CAST(CAST(t.xmin AS pg_catalog.text) AS pg_catalog.int8), 0)"
_NAMES = ("SELECT '{name}', pg_catalog.count(*), pg_catalog.sum(pg_catalog.hashtextextended("
          "pg_catalog.concat_ws(',', t.oid, t.{column}), 0)) FROM pg_catalog.{name} t")


def query(server_version: int) -> str:
    """The fingerprint's one statement for a server of that version (psycopg2's connection.server_version)."""
    return _QUERIES[server_version >= 180000]


_QUERIES = {xid: "\nUNION ALL ".join(
    [_PART.format(name=c, hash=_HASH_XID if xid else _HASH_TEXT) for c in CATALOGS]
    + [IN_PLACE, _NAMES.format(name="pg_roles", column="rolname"),  # shared catalogs: the names printed
       _NAMES.format(name="pg_tablespace", column="spcname"),
       # each quoted (NULL, an unset one, apart from ''): the list reads one way only
       "SELECT pg_catalog.concat_ws(',', pg_catalog.quote_nullable(pg_catalog.current_database()), "
       + ", ".join(f"pg_catalog.quote_nullable(pg_catalog.current_setting('{name}', true))" for name in _SETTINGS)
       + "), 0, 0"]) for xid in (False, True)}
# The code that turns the catalog into a description: a new version of it describes anew.
_CODE = ("describe.py", "queries.py", "model.py")


def _code() -> str:
    folder = Path(__file__).parent
    return hashlib.sha256(b"".join((folder / name).read_bytes() for name in _CODE)).hexdigest()


def take(conn, bookkeeping_schema: str | None) -> str:
    """The fingerprint of what describe(conn, bookkeeping_schema) would read now. Reads only."""
    with conn.cursor() as cursor:
        cursor.execute(query(conn.server_version))
        rows = cursor.fetchall()
    return hashlib.sha256(repr((bookkeeping_schema, _code(), rows)).encode()).hexdigest()


# The column beside the description (schema/snapshot.py's table); added to a table made before it by its owner.
_COLUMN = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'fingerprint'
               AND NOT a.attisdropped), pg_catalog.pg_has_role(c.relowner, 'USAGE')
FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(%s)
"""


def prepare(cursor, schema: str, table: str) -> bool:
    """Whether the table beside the description has its fingerprint column, added first when this user owns a
    table made before it (one granted its rows only keeps none: its drift check always describes). Called before
    a fingerprint is taken: adding the column is a catalog change of its own."""
    from psycopg2 import sql

    name = sql.Identifier(schema, table)
    cursor.execute(_COLUMN, (name.as_string(cursor),))
    row = cursor.fetchone()
    if row is None or (not row[0] and not row[1]):
        return False
    if not row[0]:
        cursor.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS fingerprint TEXT").format(name))
    return True


def store(cursor, schema: str, table: str, value: str | None) -> None:
    """Set (or clear, with None) the fingerprint beside the recorded description, where the column is there."""
    from psycopg2 import sql

    if prepare(cursor, schema, table):
        cursor.execute(sql.SQL("UPDATE {} SET fingerprint = %s").format(sql.Identifier(schema, table)), (value,))
