"""Statements that rewrite or scan a big table under a lock that stops the application, refused before a deploy.

Before anything runs, `migrate` (and `plan`, which shows the same verdicts) reads each pending statement with
PostgreSQL's own parser (pglast: quoted identifiers, schema-qualified names, several subcommands in one ALTER
TABLE, pg_dump's spelling) and judges it with what the earlier pending statements do: a table one of them creates
is new (never refused), a `CHECK (col IS NOT NULL)` one of them adds validated or VALIDATEs lets a later
`SET NOT NULL` skip its scan (a PostgreSQL 18 NOT NULL constraint's VALIDATE too). What is left rewrites or scans the
live table while holding its lock:

  ADD COLUMN with a volatile DEFAULT (gen_random_uuid(), clock_timestamp(), random(), serial, identity, a stored
  generated column), ALTER COLUMN TYPE that is not binary-coercible (risks_retype: a domain with no constraint is
  its base type; timestamp <-> timestamptz keeps the rows in a UTC TimeZone), SET NOT NULL without a validated CHECK,
  ADD FOREIGN KEY / CHECK without NOT VALID, ADD PRIMARY KEY / UNIQUE without USING INDEX, SET LOGGED/UNLOGGED,
  SET TABLESPACE / ACCESS METHOD, CREATE INDEX without CONCURRENTLY (SHARE: blocks writes), REINDEX TABLE / INDEX /
  SCHEMA without CONCURRENTLY, VACUUM FULL, CLUSTER, ADD COLUMN with UNIQUE / PRIMARY KEY / CHECK / REFERENCES or of
  a domain with a volatile default, a new COLLATE of an indexed column, and VALIDATE CONSTRAINT (or an UPDATE /
  DELETE of every row) in a transactional file whose earlier ALTER TABLE / LOCK TABLE holds the table's lock until
  COMMIT. Earlier pending RENAMEs are undone to find the live table and column; a column the live table lacks (added
  by a pending statement) is rewritten by a TYPE change. (Statements a DO block or a function runs are not seen.)

Such a statement is refused when the live table holds more than the threshold (rows by the planner's estimate,
reltuples scaled to the table's current pages as the planner does; a never-analyzed table is counted, capped at
the threshold), unless its file names the table in a marker comment: `-- accept-rewrite: public.t`. The live
database is only read. Constant defaults and STABLE ones (now(), CURRENT_TIMESTAMP) are catalog-only since
PostgreSQL 11, so they pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from migrator import lazy_re
from migrator.postgres import risks, risks_path, risks_pending, server_statements, table_sizes
from migrator.pinned import catalog_path
from migrator.postgres.risks import BLOCKS, INSTEAD, Risk

MARKER = lazy_re.compile(r"^[ \t]*--[ \t]*accept-rewrite[ \t]*:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


@dataclass
class Verdict:
    path: str
    risk: Risk
    relation: str  # schema.table on the live database
    rows: int
    bytes: int
    accepted: bool  # the file's marker names the table
    threshold: int
    loaded: bool = False  # an earlier pending statement loads rows into it: counted as big, whatever its live size
    unknown: str = ""  # why the file's search_path is not known: its unqualified name taken for the biggest table

    @property
    def refused(self) -> bool:
        return not self.accepted

    def line(self) -> str:
        r = self.risk
        rows = f"~{risks.rows_text(self.rows)} rows"
        size = (f"{rows}, {risks.size_text(self.bytes)}; more than {self.threshold}" if not self.loaded
                else f"{rows} now, and rows loaded into it by an earlier pending statement: counted as big")
        head = f"{self.path}:{r.line}: {r.what} {r.does} {self.relation} ({size}) under {r.lock} ({BLOCKS[r.lock]})"
        if self.unknown:
            head += (f" (the unqualified name {r.table[1]} may mean this table: the file's search_path is unknown, "
                     f"{self.unknown}; qualify the name)")
        if self.accepted:
            return _printable(f"{head}: accepted by the file's `-- accept-rewrite: {self.relation}`")
        return _printable(f"{head}; instead: {INSTEAD[r.kind]}; or accept the cost with `-- accept-rewrite: "
                          f"{self.relation}` in the file")  # names from the file: no line break ends a plan comment

    def to_json(self) -> dict:
        r = self.risk
        return {"file": self.path, "line": r.line, "statement": r.what, "does": r.does, "table": self.relation,
                "live_rows": self.rows, "live_bytes": self.bytes, "lock": r.lock, "instead": INSTEAD[r.kind],
                "accepted": self.accepted, "loaded_by_pending": self.loaded,
                "search_path_unknown": self.unknown or None}


def _printable(text: str) -> str:
    """A name from a file, safe inside a one-line message and a `plan` comment (no line break can end it)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


# --- judging (the live database, read only) ------------------------------------------------------------------

_RELATION = """
SELECT c.oid, n.nspname, c.relname, c.relkind
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s AND c.relkind IN ('r', 'p', 'm') AND (n.nspname = ANY(%(path)s)
  OR %(any)s AND n.nspname <> ALL(ARRAY['pg_catalog', 'information_schema']) AND n.nspname !~ '^pg_(toast|temp)')
"""
_COLUMN = """
SELECT a.atttypid, a.atttypmod, a.attnotnull, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attcollation,
       EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = a.attrelid AND a.attnum = ANY(i.indkey))
FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s AND a.attname = %s AND NOT a.attisdropped
"""
_DOMAIN_TABLES = """
SELECT DISTINCT n.nspname, c.relname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT a.attisdropped AND c.relkind IN ('r', 'm', 'p') AND a.atttypid = (
  SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
  WHERE t.typtype = 'd' AND t.typname = %(name)s AND tn.nspname = ANY(%(path)s)
  ORDER BY pg_catalog.array_position(%(path)s, tn.nspname::text) LIMIT 1)
ORDER BY 1, 2
"""
_UNIQUE = """
SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = %s AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = %s LIMIT 1
"""
# A unique index (no predicate, no expression) whose key columns are all among the given ones: one row at most.
_UNIQUE_WITHIN = """
SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = %(oid)s AND i.indisunique AND i.indpred IS NULL
  AND i.indexprs IS NULL AND NOT EXISTS (
    SELECT FROM pg_catalog.generate_series(0, i.indnkeyatts - 1) k JOIN pg_catalog.pg_attribute a
    ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k] WHERE a.attname <> ALL(%(columns)s::pg_catalog.name[]))
LIMIT 1
"""
# The tables a writing statement on a relation locks too: a view's (one level), a partition's ancestors.
_BASES = """
SELECT n.nspname, c.relname, v.relkind = 'v' FROM pg_catalog.pg_class v
JOIN LATERAL (SELECT d.refobjid FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d
              ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
              WHERE r.ev_class = v.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
              AND d.refobjid <> v.oid
              UNION SELECT a.relid FROM pg_catalog.pg_partition_ancestors(v.oid) a WHERE a.relid <> v.oid) b ON true
JOIN pg_catalog.pg_class c ON c.oid = b.refobjid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND v.oid = (
  SELECT x.oid FROM pg_catalog.pg_class x JOIN pg_catalog.pg_namespace xn ON xn.oid = x.relnamespace
  WHERE x.relname = %(name)s AND xn.nspname = ANY(%(path)s)
  ORDER BY pg_catalog.array_position(%(path)s, xn.nspname::text) LIMIT 1)
ORDER BY 1, 2
"""
_DEFAULT_PARTITION = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_partitioned_table p JOIN pg_catalog.pg_class c ON c.oid = p.partdefid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE p.partrelid = %s
"""
_INDEX_COLUMNS = """
SELECT a.attname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s AND ic.relname = %s ORDER BY a.attnum
"""
_CHECKED = "SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = %s AND contype = 'c' AND convalidated LIMIT 1"
# The tables of a schema (None: of the migration's search_path) or of an index, as (schema, name).
_TABLES_IN = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND n.nspname = ANY(%s) ORDER BY 1, 2
"""
# What a bare CLUSTER re-clusters: every table with a clustered index (ALTER TABLE ... CLUSTER ON) that the role
# may cluster (its owner; PostgreSQL 17+: MAINTAIN), in any schema.
_CLUSTERED = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisclustered)
AND CASE WHEN pg_catalog.current_setting('server_version_num')::pg_catalog.int4 >= 170000
    THEN pg_catalog.has_table_privilege(c.oid, 'MAINTAIN') ELSE pg_catalog.pg_has_role(c.relowner, 'USAGE') END
ORDER BY 1, 2
"""
_TABLE_OF_INDEX = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_namespace inn ON inn.oid = ic.relnamespace
WHERE ic.relname = %(name)s AND inn.nspname = ANY(%(path)s)
ORDER BY pg_catalog.array_position(%(path)s, inn.nspname::text) LIMIT 1
"""
_GENERATED = ("SELECT attgenerated::pg_catalog.text FROM pg_catalog.pg_attribute WHERE attrelid = %s AND attname = %s "
              "AND NOT attisdropped")
# The tables (of an index, for relkind 'i') a tablespace holds relations of kind %(kind)s of, system ones left out
# (ALTER ... ALL IN TABLESPACE moves none of them); the database's default tablespace is reltablespace 0.
_IN_TABLESPACE = """
SELECT DISTINCT n.nspname, t.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_class t ON t.oid = COALESCE((SELECT i.indrelid FROM pg_catalog.pg_index i
                                                WHERE i.indexrelid = c.oid), c.oid)
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
WHERE c.relkind = %(kind)s AND n.nspname <> ALL(ARRAY['pg_catalog', 'information_schema'])
  AND NOT pg_catalog.starts_with(n.nspname::pg_catalog.text, 'pg_toast') AND c.reltablespace = (
    SELECT CASE WHEN s.oid = d.dattablespace THEN 0 ELSE s.oid END FROM pg_catalog.pg_tablespace s
    JOIN pg_catalog.pg_database d ON d.datname = pg_catalog.current_database() WHERE s.spcname = %(name)s)
ORDER BY 1, 2
"""
_DOMAIN_DEFAULT = """
SELECT t.typdefault FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype = 'd' AND t.typname = %(name)s AND n.nspname = ANY(%(path)s)
ORDER BY pg_catalog.array_position(%(path)s, n.nspname::text) LIMIT 1
"""
# The column is NOT NULL with no scan left to do: attnotnull with no NOT NULL constraint of it NOT VALID (PostgreSQL 18
# marks the column for one already, but SET NOT NULL then validates it: a scan) unless a pending statement VALIDATEs
# it, none dropped by one (nor a pending DROP NOT NULL); or a validated CHECK (of those, risks_pending.check_proves:
# `col IS NOT NULL`, alone or as a top-level AND conjunct), not dropped by a pending statement.
_NOT_NULL_PROVEN = """
SELECT a.attnotnull AND NOT %(nullable)s AND NOT EXISTS (
    SELECT FROM pg_catalog.pg_constraint c WHERE c.conrelid = a.attrelid AND c.contype = 'n'
    AND c.conkey = ARRAY[a.attnum] AND (NOT c.convalidated AND c.conname <> ALL(%(names)s)
                                        OR c.conname = ANY(%(dropped)s))),
  ARRAY(SELECT pg_catalog.pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c
        WHERE c.conrelid = a.attrelid AND c.contype = 'c' AND a.attnum = ANY(c.conkey)
        AND (c.convalidated OR c.conname = ANY(%(names)s)) AND c.conname <> ALL(%(dropped)s))
FROM pg_catalog.pg_attribute a WHERE a.attrelid = %(oid)s AND a.attname = %(column)s AND NOT a.attisdropped
"""
_RESET_VALUE = "SELECT reset_val FROM pg_catalog.pg_settings WHERE name = %s"
class _Live:
    """The live database as the judge reads it: names resolved on the migration's search_path."""

    def __init__(self, connection, schema: str | None, threshold: int, sizes: bool = True, seen=None):
        """`sizes` False (plan --impact, inside the transaction it measures): only the catalog is read, so no lock
        of the judge's own is counted as the statement's; rows and bytes are then 0. `seen` (risks.Seen): the
        file's own search_path is followed (risks_path)."""
        self.connection, self.threshold, self.sizes, self.seen = connection, threshold, sizes, seen
        self.cursor = connection.cursor()
        if schema:
            self.session_path = [schema, "public"]  # a tenant's migration session's search_path
        else:
            self.session_path = [row[0] for row in self._rows(risks_path.SESSION_PATH)]
        self.tables: dict = {}
        self.settings: dict = {}  # (setting())
        self.paths: dict = {}  # (risks_path.schemas)

    @property
    def path(self) -> list[str]:
        """The schemas unqualified names resolve in now: the file's search_path (the session's when unknown)."""
        found = risks_path.schemas(self, self.seen, risks_path.state(self, self.seen)) if self.seen else None
        return self.session_path if found is None or isinstance(found, risks_path.Unknown) else found

    def role(self) -> str:
        if "(role)" not in self.settings:
            self.settings["(role)"] = self._rows("SELECT current_user::text")[0][0]
        return self.settings["(role)"]

    def key(self, name: tuple[str | None, str]) -> tuple[str, str]:
        """The table's key: an unqualified name in the schema it resolves to (risks_path.schema_of; a risks_path.Unknown
        when the file's path is not known); a new table's stays apart from the live one's (risks_pending.New)."""
        key = name if isinstance(name[0], str) else (
            risks_path.schema_of(self, self.seen, name[0], name[1]) if self.seen
            else self.path[0] if self.path else "public", name[1])
        return risks_pending.New(key) if isinstance(name, risks_pending.New) else tuple(key)

    def table(self, name: tuple[str | None, str]):
        """(oid, "schema.table", rows, bytes) of the live table, or None when it does not exist. An unqualified name
        on an unknown path: the biggest of that name in any schema."""
        name = self.key(name)
        if name not in self.tables:
            rows = self._rows(_RELATION, {"name": name[1], "path": [name[0]], "any": isinstance(
                name[0], risks_path.Unknown)})
            found = [(row[0], _qualified(row[1], row[2]), *table_sizes.size(self, row)) for row in rows]
            self.tables[name] = max(found, key=lambda t: (t[2], t[3]), default=None)
        return self.tables[name]

    def column(self, oid: int, column: str):
        return next(iter(self._rows(_COLUMN, (oid, column))), None)

    def tables_in(self, schema: str | None) -> list[tuple[str, str]]:
        return [tuple(row) for row in self._rows(_TABLES_IN, ([schema] if schema else self.path,))]

    def clustered(self) -> list[tuple[str, str]]:
        return [tuple(row) for row in self._rows(_CLUSTERED)]

    def table_of_index(self, name: tuple[str | None, str]) -> list[tuple[str, str]]:
        return [tuple(row) for row in self._rows(_TABLE_OF_INDEX, {"name": name[1],
                                                                    "path": [name[0]] if name[0] else self.path})]

    def generated(self, oid: int, column: str) -> str:
        """The column's attgenerated: 's' stored, 'v' virtual (PostgreSQL 18), '' neither (or no such column)."""
        return next(iter(self._rows(_GENERATED, (oid, column))), ("",))[0]

    def in_tablespace(self, name: str, kind: str) -> list[tuple[str, str]]:
        return [tuple(row) for row in self._rows(_IN_TABLESPACE, {"name": name, "kind": kind})]

    def domain_tables(self, names: list[str]) -> list[tuple[str, str]]:
        """The tables with a column of the domain (found on the migration's search_path), as (schema, name)."""
        return [tuple(row) for row in self._rows(_DOMAIN_TABLES, {"name": names[-1],
                                                                  "path": names[:-1] if len(names) > 1 else self.path})]

    def unique_column(self, oid: int, column: str) -> bool:
        """A single-column unique index (no predicate) on the column: `column = constant` is one row at most."""
        return bool(self._rows(_UNIQUE, (oid, column)))

    def unique_within(self, oid: int, columns: list[str]) -> bool:
        """A unique index whose key columns are all among `columns`: `a = 1 AND b = 2` on it is one row at most."""
        return bool(self._rows(_UNIQUE_WITHIN, {"oid": oid, "columns": columns}))

    def bases(self, name: tuple[str | None, str]) -> list[tuple[tuple[str, str], bool]]:
        """((schema, table), through a view) of each table writing `name` locks: a view's, a partition's parents."""
        return [((row[0], row[1]), row[2]) for row in
                self._rows(_BASES, {"name": name[1], "path": [name[0]] if name[0] else self.path})]

    def default_partition(self, oid: int) -> tuple[str, str] | None:
        """(schema, name) of the partitioned table's DEFAULT partition, if it has one."""
        row = next(iter(self._rows(_DEFAULT_PARTITION, (oid,))), None)
        return row and (row[0], row[1])

    def index_columns(self, oid: int, index: str) -> list[str]:
        return [row[0] for row in self._rows(_INDEX_COLUMNS, (oid, index))]

    def has_validated_check(self, oid: int) -> bool:
        return bool(self._rows(_CHECKED, (oid,)))

    def domain_default_functions(self, names: list[str]) -> set[str]:
        """The functions a live domain's DEFAULT calls (none when the type is not a domain)."""
        row = next(iter(self._rows(_DOMAIN_DEFAULT, {"name": names[-1],
                                                     "path": names[:-1] if len(names) > 1 else self.path})), None)
        return risks.expression_functions(row[0]) if row and row[0] else set()

    def not_null_proven(self, oid: int, column: str, validated: set, dropped: set = frozenset(),
                        nullable: bool = False) -> bool:
        """Proven NOT NULL (_NOT_NULL_PROVEN): `validated` / `dropped` constraint names, `nullable` (DROP NOT NULL) as
        pending statements leave them."""
        row = next(iter(self._rows(_NOT_NULL_PROVEN, {"oid": oid, "names": sorted(validated), "column": column,
                                                       "dropped": sorted(dropped), "nullable": nullable})), None)
        return bool(row and (row[0] or any(risks_pending.check_proves(d, column) for d in row[1])))

    def setting(self, name: str) -> str:
        """A setting as a fresh session of the run starts with it (the connection's options and PGTZ-style
        variables, the role's and the database's settings), whatever the run's own session set since."""
        if name not in self.settings:
            self.settings[name] = self._rows(_RESET_VALUE, (name,))[0][0]
        return self.settings[name]

    def _rows(self, query, params=None) -> list:
        """A catalog read with pg_catalog's operators and functions alone: the cursor may be the migration's own
        session or a scratch database's, whose search_path others may have planted in."""
        with catalog_path(self.cursor):
            self.cursor.execute(query, params)
            return self.cursor.fetchall()

    def close(self) -> None:
        self.cursor.close()
        if not self.connection.autocommit:
            self.connection.rollback()  # no lock of the judge's stays on the live tables


def _qualified(schema: str, name: str) -> str:
    quote = lambda n: n if re.fullmatch(r"[a-z_][a-z0-9_$]*", n) else '"' + n.replace('"', '""') + '"'  # noqa: E731
    return f"{quote(schema)}.{quote(name)}"


def markers(text: str, statements=()) -> set[tuple[str | None, str]]:
    """The tables a file accepts rewrites of (`-- accept-rewrite: a, s.b`), as (schema or None, name): comment lines
    outside its `statements` only (one inside a string or a function's body is no marker)."""
    found = set()
    spans = [(s.offset, s.offset + len(s.text)) for s in statements]
    spans += _block_comments(text, sorted(spans))
    for match in MARKER.finditer(text):
        if any(start <= match.start() < end for start, end in spans):
            continue
        for item in filter(None, (i.strip() for i in match[1].split(","))):
            parts = [p[1:-1].replace('""', '"') if p.startswith('"') else p.lower()
                     for p in re.findall(r'"(?:[^"]|"")*"|[^.\s]+', item)]
            if len(parts) in (1, 2):
                found.add((parts[0], parts[1]) if len(parts) == 2 else (None, parts[0]))
    return found


def _block_comments(text: str, statements: list) -> list[tuple[int, int]]:
    """The /* ... */ comments (nested, as PostgreSQL reads them) between the statements: a marker in one is out."""
    found, at = [], 0
    for start, end in statements + [(len(text), len(text))]:
        while at < start:
            if text.startswith("--", at):
                at = (text.find("\n", at, start) + 1) or start  # (a line comment: no /* opens in it)
            elif text.startswith("/*", at):
                opened, depth = at, 0
                while at < len(text) and (depth > 0 or at == opened):
                    pair = text[at:at + 2]
                    depth += (pair == "/*") - (pair == "*/")
                    at += 2 if pair in ("/*", "*/") else 1
                found.append((opened, at))
            else:
                at += 1
        at = max(at, end)
    return found


def judge(connection, migrations, *, threshold: int, schema: str | None = None) -> list[Verdict]:
    """The verdict on each pending statement (in `migrations`, loaded, in run order) that rewrites or scans a
    live table of more than `threshold` rows under a lock that stops the application; refused or accepted."""
    from pathlib import Path

    from migrator.postgres import backfill, files

    verdicts: list[Verdict] = []
    seen = risks.Seen()
    live = None
    try:
        for migration in migrations:
            path = Path(migration.path)
            accepted = None
            seen.begin_file(migration.use_transactions)
            statements = server_statements.judged(migration.steps[0].statements)  # (each the server runs)
            for statement in statements:
                seen.read(statement.text)
                if isinstance(statement, backfill.Batched) and statement.column != "ctid":
                    live = live or _Live(connection, schema, threshold, seen=seen)
                    _batch_key(path, statement, live, seen)
                trees = risks.parse(statement.text, seen)
                if not trees:
                    continue
                if live is None:
                    live = _Live(connection, schema, threshold, seen=seen)
                for tree in trees:
                    for risk in risks.risks(tree, statement.line, live, seen):
                        key = live.key(risk.table)
                        if seen.is_new(risk.table, live):
                            continue
                        table = live.table(risk.table)
                        loaded = seen.is_loaded(risk.table, live)  # (its live size says nothing of what it will be)
                        if table is None or table[2] <= threshold and not loaded:
                            continue
                        if accepted is None:
                            accepted = {live.key(name) for name in markers(files.read_text(path), statements)}
                        oid, relation, rows, size = table
                        verdicts.append(Verdict(str(path), risk, relation, rows, size,
                                                key in accepted or _key_of(relation) in accepted, threshold,
                                                loaded and rows <= threshold, key[0] if isinstance(
                                                    key[0], risks_path.Unknown) else ""))
    finally:
        if live is not None:
            live.close()
    return verdicts


def _batch_key(path, statement, live, seen) -> None:
    """A `-- backfill: batch` bounded by a column that is no key of its live table: refused before anything runs
    (one of a table a pending statement creates is checked before its first batch)."""
    from migrator.errors import USAGE, MigratorError
    from migrator.postgres import backfill

    table = _key_of(statement.table) if "." in statement.table else (None, statement.table.strip('"'))
    found = None if seen.is_new(table, live) else live.table(seen.live_name(table, live))
    if found is not None and not live.unique_column(found[0], statement.column):
        raise MigratorError(f"{path}:{statement.line}: " + backfill.not_key(statement.line, statement.column, found[1])
                            + " (nothing was run)", USAGE)


def _key_of(relation: str) -> tuple[str, str]:
    schema, name = re.findall(r'"(?:[^"]|"")*"|[^.]+', relation)
    unquote = lambda n: n[1:-1].replace('""', '"') if n.startswith('"') else n  # noqa: E731
    return unquote(schema), unquote(name)


def refusal(verdicts: list[Verdict], where: str) -> str | None:
    """migrate's error for the refused verdicts (one line each), or None when none is refused."""
    refused = [v for v in verdicts if v.refused]
    if not refused:
        return None
    return "\n".join([v.line() for v in refused] + [
        f"refused before anything ran on {where}: {len(refused)} statement(s) would stop the application on a "
        f"table of more than {refused[0].threshold} rows (--rewrite-threshold-rows / REWRITE_THRESHOLD_ROWS); "
        "nothing was applied"])
