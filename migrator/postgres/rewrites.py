"""Statements that rewrite or scan a big table under a lock that stops the application, refused before a deploy.

Before anything runs, `migrate` (and `plan`, which shows the same verdicts) reads each pending statement with
PostgreSQL's own parser (pglast: quoted identifiers, schema-qualified names, several subcommands in one ALTER
TABLE, pg_dump's spelling) and judges it with what the earlier pending statements do: a table one of them creates
is new (never refused), a `CHECK (col IS NOT NULL)` one of them adds validated or VALIDATEs lets a later
`SET NOT NULL` skip its scan. What is left rewrites or scans the live table while holding its lock:

  ADD COLUMN with a volatile DEFAULT (gen_random_uuid(), clock_timestamp(), random(), serial, identity, a stored
  generated column), ALTER COLUMN TYPE that is not binary-coercible, SET NOT NULL without a validated CHECK,
  ADD FOREIGN KEY / CHECK without NOT VALID, ADD PRIMARY KEY / UNIQUE without USING INDEX, SET LOGGED/UNLOGGED,
  CREATE INDEX without CONCURRENTLY (SHARE: blocks writes), REINDEX TABLE without CONCURRENTLY, VACUUM FULL, CLUSTER.

Such a statement is refused when the live table holds more than the threshold (rows by the planner's estimate,
reltuples scaled to the table's current pages as the planner does; a never-analyzed table is counted, capped at
the threshold), unless its file names the table in a marker comment: `-- accept-rewrite: public.t`. The live
database is only read. Constant defaults and STABLE ones (now(), CURRENT_TIMESTAMP) are catalog-only since
PostgreSQL 11, so they pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

THRESHOLD_ROWS = 10_000
MARKER = re.compile(r"^[ \t]*--[ \t]*accept-rewrite[ \t]*:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)
# Only statements that start so are parsed: a no-op deploy or a file of INSERTs never loads the parser.
_HINT = re.compile(r"(?:alter\s+table|create\s+(?:unique\s+)?index|create\s+(?:(?:global\s+|local\s+)?"
                   r"(?:temp|temporary|unlogged)\s+)?table|vacuum|cluster|reindex|select\s+.*\binto\b)",
                   re.IGNORECASE | re.DOTALL)
_SERIAL = {"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"}

ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"
SHARE = "SHARE"
SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
BLOCKS = {ACCESS_EXCLUSIVE: "reads and writes wait", SHARE: "writes wait", SHARE_ROW_EXCLUSIVE: "writes wait"}

# The safe pattern of each kind, one phrase (the README shows each with SQL).
INSTEAD = {
    "default": ("add the column without the default (nullable), fill it with a `-- backfill: batch` UPDATE in a "
                "`-- transactional: false` file, then ALTER COLUMN ... SET DEFAULT"),
    "type": ("add a new column of the new type, backfill it in batches (`-- backfill: batch`), then swap the "
             "columns in a short transaction"),
    "not null": ("ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID, then VALIDATE CONSTRAINT in a later file, "
                 "then SET NOT NULL (no scan once the CHECK is validated)"),
    "foreign key": "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a later file",
    "check": "ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in a later file",
    "key": ("CREATE UNIQUE INDEX CONCURRENTLY in a `-- transactional: false` file, then ADD CONSTRAINT ... "
            "PRIMARY KEY / UNIQUE USING INDEX"),
    "index": "CREATE INDEX CONCURRENTLY in a `-- transactional: false` file",
    "reindex": "REINDEX TABLE CONCURRENTLY in a `-- transactional: false` file",
    "logged": "there is no online form: schedule it in a maintenance window",
    "vacuum full": "pg_repack (online), or schedule it in a maintenance window",
    "cluster": "pg_repack --order-by (online), or schedule it in a maintenance window",
}


@dataclass
class Risk:
    """One statement's part that rewrites or scans `table` under `lock` (as written in the file)."""

    line: int
    table: tuple[str | None, str]  # (schema or None, name) as written
    what: str  # the subcommand, e.g. "ALTER COLUMN id TYPE bigint"
    does: str  # rewrites | scans | builds an index on
    lock: str
    kind: str  # a key of INSTEAD


@dataclass
class Verdict:
    path: str
    risk: Risk
    relation: str  # schema.table on the live database
    rows: int
    bytes: int
    accepted: bool  # the file's marker names the table
    threshold: int

    @property
    def refused(self) -> bool:
        return not self.accepted

    def line(self) -> str:
        from migrator.postgres.impact import _bytes, _count

        r = self.risk
        head = (f"{self.path}:{r.line}: {r.what} {r.does} {_printable(self.relation)} (~{_count(self.rows)} rows, "
                f"{_bytes(self.bytes)}; more than {self.threshold}) under {r.lock} ({BLOCKS[r.lock]})")
        if self.accepted:
            return f"{head}: accepted by the file's `-- accept-rewrite: {_printable(self.relation)}`"
        return (f"{head}; instead: {INSTEAD[r.kind]}; or accept the cost with `-- accept-rewrite: "
                f"{_printable(self.relation)}` in the file")

    def to_json(self) -> dict:
        r = self.risk
        return {"file": self.path, "line": r.line, "statement": r.what, "does": r.does, "table": self.relation,
                "live_rows": self.rows, "live_bytes": self.bytes, "lock": r.lock, "instead": INSTEAD[r.kind],
                "accepted": self.accepted}


def _printable(text: str) -> str:
    """A name from a file, safe inside a one-line message and a `plan` comment (no line break can end it)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


# --- reading the statements (no database) ------------------------------------------------------------------

@dataclass
class _Seen:
    """What the pending statements before this one do, as far as the judge cares."""

    created: set = field(default_factory=set)  # tables created by a pending statement (keys)
    not_null: dict = field(default_factory=dict)  # table key -> columns proven NOT NULL by a validated CHECK
    checks: dict = field(default_factory=dict)  # (table key, constraint name) -> column of CHECK (col IS NOT NULL)
    validated: dict = field(default_factory=dict)  # table key -> constraint names VALIDATEd by a pending statement


def _name(range_var) -> tuple[str | None, str]:
    return range_var.schemaname or None, range_var.relname


def _null_test_column(expr) -> str | None:
    """`col IS NOT NULL` (a CHECK that proves a column NOT NULL) -> col."""
    from pglast import ast, enums

    if (isinstance(expr, ast.NullTest) and expr.nulltesttype == enums.NullTestType.IS_NOT_NULL
            and isinstance(expr.arg, ast.ColumnRef) and len(expr.arg.fields) == 1):
        return expr.arg.fields[0].sval
    return None


def _functions(node) -> set[str]:
    """The names of the functions an expression calls (qualified ones by their last part)."""
    from pglast import ast
    from pglast.visitors import Visitor

    names: set[str] = set()

    class Calls(Visitor):
        def visit_FuncCall(self, _ancestors, call):
            names.add(call.funcname[-1].sval)

    Calls()(node)
    return names


def _text(node) -> str:
    from pglast.stream import RawStream

    try:
        return RawStream()(node)
    except Exception:  # a node pglast cannot print alone: the kind says enough
        return "..."


def _type_name(type_name) -> tuple[str, list[int]]:
    """('pg_catalog.int8', [typmods]) of a TypeName, for to_regtype()."""
    from pglast import ast

    names = [n.sval for n in type_name.names]
    text = ".".join(f'"{n}"' if not re.fullmatch(r"[a-z_][a-z0-9_$]*", n) else n for n in names)
    if type_name.arrayBounds:
        text += "[]"
    mods = [m.val.ival for m in type_name.typmods or () if isinstance(m, ast.A_Const) and hasattr(m.val, "ival")]
    return text, mods


def parse(text: str):
    """The statement's parse trees (pglast), or () when it is not one the judge reads or pglast cannot parse it
    (the server then says what is wrong)."""
    if not _HINT.match(text):
        return ()
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return ()


# --- judging (the live database, read only) ------------------------------------------------------------------

_RELATION = """
SELECT c.oid, n.nspname, c.relname, c.reltuples, c.relpages,
       pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::int,
       pg_catalog.pg_total_relation_size(c.oid)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s AND n.nspname = ANY(%(path)s) AND c.relkind IN ('r', 'p', 'm')
ORDER BY pg_catalog.array_position(%(path)s, n.nspname::text) LIMIT 1
"""
_VOLATILE = "SELECT 1 FROM pg_catalog.pg_proc WHERE proname = ANY(%s) AND provolatile = 'v' LIMIT 1"
_COLUMN = """
SELECT a.atttypid, a.atttypmod, a.attnotnull, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s AND a.attname = %s AND NOT a.attisdropped
"""
_NEW_TYPE = """
SELECT t.oid, t.typname,
       EXISTS (SELECT FROM pg_catalog.pg_cast k WHERE k.castsource = %(old)s AND k.casttarget = t.oid
               AND k.castmethod = 'b')
FROM pg_catalog.pg_type t WHERE t.oid = pg_catalog.to_regtype(%(name)s)
"""
_NOT_NULL_CHECK = """
SELECT 1 FROM pg_catalog.pg_constraint
WHERE conrelid = %(oid)s AND contype = 'c' AND (convalidated OR conname = ANY(%(names)s))
  AND pg_catalog.pg_get_constraintdef(oid) = 'CHECK ((' || pg_catalog.quote_ident(%(column)s) || ' IS NOT NULL))'
LIMIT 1
"""
_SEARCH_PATH = """
SELECT s, current_user FROM pg_catalog.regexp_split_to_table(
    (SELECT reset_val FROM pg_catalog.pg_settings WHERE name = 'search_path'), '\\s*,\\s*') s
"""


class _Live:
    """The live database as the judge reads it: names resolved on the migration's search_path."""

    def __init__(self, connection, schema: str | None, threshold: int):
        self.connection, self.threshold = connection, threshold
        self.cursor = connection.cursor()
        if schema:
            self.path = [schema, "public"]  # a tenant's migration session's search_path
        else:
            self.cursor.execute(_SEARCH_PATH)
            self.path = [user if s.strip('"') == "$user" else s.strip('"') for s, user in self.cursor.fetchall()]
        self.tables: dict = {}

    def key(self, name: tuple[str | None, str]) -> tuple[str, str]:
        """The table's key: an unqualified name in the schema a CREATE would put it in (the path's first)."""
        return (name[0] or (self.path[0] if self.path else "public"), name[1])

    def table(self, name: tuple[str | None, str]):
        """(oid, "schema.table", rows, bytes) of the live table, or None when it does not exist."""
        if name not in self.tables:
            self.cursor.execute(_RELATION, {"name": name[1], "path": [name[0]] if name[0] else self.path})
            row = self.cursor.fetchone()
            self.tables[name] = row and (row[0], _qualified(row[1], row[2]), self._rows(row), row[6])
        return self.tables[name]

    def _rows(self, row) -> int:
        """The planner's estimate (reltuples scaled to the current pages); counted, capped, when it has none."""
        oid, schema, name, tuples, pages, now_pages, _ = row
        if tuples >= 0 and pages > 0:
            return round(tuples / pages * now_pages)
        if now_pages == 0:
            return 0
        from psycopg2 import sql

        self.cursor.execute(sql.SQL("SELECT count(*) FROM (SELECT FROM {} LIMIT %s) s").format(
            sql.Identifier(schema, name)), (self.threshold + 1,))
        return self.cursor.fetchone()[0]

    def volatile(self, functions: set[str]) -> bool:
        if not functions:
            return False
        self.cursor.execute(_VOLATILE, (sorted(functions),))
        return self.cursor.fetchone() is not None

    def column(self, oid: int, column: str):
        self.cursor.execute(_COLUMN, (oid, column))
        return self.cursor.fetchone()

    def rewrites_type(self, oid: int, column: str, type_name, using) -> bool:
        """Whether ALTER COLUMN TYPE rewrites: not when the new type is the same or binary-coercible and its
        length/precision only grows (varchar(n) -> varchar(m >= n) or text, numeric(p,s) -> numeric(q >= p,s))."""
        found = self.column(oid, column)
        if found is None or using is not None:
            return found is not None  # USING: an expression per row
        old_type, old_mod = found[0], found[1]
        name, mods = _type_name(type_name)
        self.cursor.execute(_NEW_TYPE, {"old": old_type, "name": name})
        new = self.cursor.fetchone()
        if new is None:
            return True  # an unknown type: the server will say so
        new_type, typname, binary = new
        if new_type == old_type:
            return not _only_grows(typname, old_mod, mods)
        return not (binary and not mods)  # varchar(n) -> text: a relabel; text -> varchar(n): each row checked

    def not_null_proven(self, oid: int, column: str, validated: set) -> bool:
        found = self.column(oid, column)
        if found is not None and found[2]:
            return True  # already NOT NULL: nothing to check
        self.cursor.execute(_NOT_NULL_CHECK, {"oid": oid, "names": sorted(validated), "column": column})
        return self.cursor.fetchone() is not None

    def close(self) -> None:
        self.cursor.close()
        if not self.connection.autocommit:
            self.connection.rollback()  # no lock of the judge's stays on the live tables


def _qualified(schema: str, name: str) -> str:
    quote = lambda n: n if re.fullmatch(r"[a-z_][a-z0-9_$]*", n) else '"' + n.replace('"', '""') + '"'  # noqa: E731
    return f"{quote(schema)}.{quote(name)}"


def _only_grows(typname: str, old_mod: int, new_mods: list[int]) -> bool:
    """Same type: only a typmod that removes or widens the limit keeps the data as it is."""
    if not new_mods:
        return typname in ("varchar", "numeric", "varbit", "timestamp", "timestamptz", "time", "timetz", "interval") \
            or old_mod < 0
    if old_mod < 0:
        return False  # a limit added: every row is checked
    if typname in ("varchar", "varbit", "bit", "bpchar"):
        old = old_mod - 4 if typname in ("varchar", "bpchar") else old_mod
        return new_mods[0] >= old and typname in ("varchar", "varbit")
    if typname == "numeric":
        precision, scale = ((old_mod - 4) >> 16) & 0xFFFF, (old_mod - 4) & 0xFFFF
        return new_mods[0] >= precision and (new_mods[1] if len(new_mods) > 1 else 0) == scale
    if typname in ("timestamp", "timestamptz", "time", "timetz"):
        return new_mods[0] >= old_mod
    return False


def markers(text: str) -> set[tuple[str | None, str]]:
    """The tables a file accepts rewrites of (`-- accept-rewrite: a, s.b`), as (schema or None, name)."""
    found = set()
    for match in MARKER.finditer(text):
        for item in filter(None, (i.strip() for i in match[1].split(","))):
            parts = [p[1:-1].replace('""', '"') if p.startswith('"') else p.lower()
                     for p in re.findall(r'"(?:[^"]|"")*"|[^.\s]+', item)]
            if len(parts) in (1, 2):
                found.add((parts[0], parts[1]) if len(parts) == 2 else (None, parts[0]))
    return found


def judge(connection, migrations, *, threshold: int, schema: str | None = None) -> list[Verdict]:
    """The verdict on each pending statement (in `migrations`, loaded, in run order) that rewrites or scans a
    live table of more than `threshold` rows under a lock that stops the application; refused or accepted."""
    from pathlib import Path

    from migrator.postgres import files

    verdicts: list[Verdict] = []
    seen = _Seen()
    live = None
    try:
        for migration in migrations:
            path = Path(migration.path)
            accepted = None
            for statement in migration.steps[0].statements:
                trees = parse(statement.text)
                if not trees:
                    continue
                if live is None:
                    live = _Live(connection, schema, threshold)
                for tree in trees:
                    for risk in _risks(tree, statement.line, live, seen):
                        key = live.key(risk.table)
                        if key in seen.created:
                            continue
                        table = live.table(risk.table)
                        if table is None or table[2] <= threshold:
                            continue
                        if accepted is None:
                            accepted = {live.key(name) for name in markers(files.read_text(path))}
                        oid, relation, rows, size = table
                        verdicts.append(Verdict(str(path), risk, relation, rows, size,
                                                key in accepted or _key_of(relation) in accepted, threshold))
    finally:
        if live is not None:
            live.close()
    return verdicts


def _key_of(relation: str) -> tuple[str, str]:
    schema, name = re.findall(r'"(?:[^"]|"")*"|[^.]+', relation)
    unquote = lambda n: n[1:-1].replace('""', '"') if n.startswith('"') else n  # noqa: E731
    return unquote(schema), unquote(name)


def _risks(tree, line: int, live: _Live, seen: _Seen):
    """What one statement does that may rewrite or scan a table, recording what it creates and validates."""
    from pglast import ast, enums

    if isinstance(tree, ast.CreateStmt):
        seen.created.add(live.key(_name(tree.relation)))
    elif isinstance(tree, ast.CreateTableAsStmt) and tree.into is not None:
        seen.created.add(live.key(_name(tree.into.rel)))
    elif isinstance(tree, ast.SelectStmt) and tree.intoClause is not None:
        seen.created.add(live.key(_name(tree.intoClause.rel)))
    elif isinstance(tree, ast.IndexStmt) and not tree.concurrent:
        yield Risk(line, _name(tree.relation), "CREATE INDEX without CONCURRENTLY", "builds an index on", SHARE,
                   "index")
    elif isinstance(tree, ast.VacuumStmt) and tree.is_vacuumcmd and any(
            o.defname == "full" and str(getattr(o.arg, "sval", getattr(o.arg, "ival", "on"))).lower() not in ("false", "off", "0")
            for o in tree.options or ()):
        for rel in tree.rels or ():
            yield Risk(line, _name(rel.relation), "VACUUM FULL", "rewrites", ACCESS_EXCLUSIVE, "vacuum full")
    elif isinstance(tree, ast.ClusterStmt) and tree.relation is not None:
        yield Risk(line, _name(tree.relation), "CLUSTER", "rewrites", ACCESS_EXCLUSIVE, "cluster")
    elif (isinstance(tree, ast.ReindexStmt) and tree.kind == enums.ReindexObjectType.REINDEX_OBJECT_TABLE
          and not any(o.defname == "concurrently" for o in tree.params or ())):
        yield Risk(line, _name(tree.relation), "REINDEX TABLE without CONCURRENTLY", "rebuilds the indexes of",
                   SHARE, "reindex")
    elif isinstance(tree, ast.AlterTableStmt) and tree.objtype == enums.ObjectType.OBJECT_TABLE:
        yield from _alter_table(tree, line, live, seen)


def _alter_table(tree, line: int, live: _Live, seen: _Seen):
    from pglast import ast, enums

    types = enums.AlterTableType
    name = _name(tree.relation)
    key = live.key(name)
    new = key in seen.created
    for cmd in tree.cmds:
        if cmd.subtype == types.AT_AddColumn:
            column = cmd.def_
            why = _volatile_column(column, live) if not new else None
            if why:
                yield Risk(line, name, f"ADD COLUMN {column.colname} {why}", "rewrites", ACCESS_EXCLUSIVE, "default")
        elif cmd.subtype == types.AT_AlterColumnType and not new:
            table = live.table(name)
            if table and live.rewrites_type(table[0], cmd.name, cmd.def_.typeName, cmd.def_.raw_default):
                yield Risk(line, name, f"ALTER COLUMN {cmd.name} TYPE {_text(cmd.def_.typeName)}", "rewrites",
                           ACCESS_EXCLUSIVE, "type")
        elif cmd.subtype == types.AT_SetNotNull:
            if cmd.name in seen.not_null.get(key, set()) or new:
                continue
            table = live.table(name)
            if table and not live.not_null_proven(table[0], cmd.name, seen.validated.get(key, set())):
                yield Risk(line, name, f"ALTER COLUMN {cmd.name} SET NOT NULL without a validated CHECK "
                                       f"({cmd.name} IS NOT NULL)", "scans", ACCESS_EXCLUSIVE, "not null")
        elif cmd.subtype == types.AT_AddConstraint:
            yield from _add_constraint(cmd.def_, name, key, line, seen, new)
        elif cmd.subtype == types.AT_ValidateConstraint:
            seen.validated.setdefault(key, set()).add(cmd.name)
            column = seen.checks.get((key, cmd.name))
            if column:
                seen.not_null.setdefault(key, set()).add(column)
        elif cmd.subtype in (types.AT_SetLogged, types.AT_SetUnLogged) and not new:
            logged = "LOGGED" if cmd.subtype == types.AT_SetLogged else "UNLOGGED"
            yield Risk(line, name, f"SET {logged}", "rewrites", ACCESS_EXCLUSIVE, "logged")


def _add_constraint(constraint, name, key, line: int, seen: _Seen, new: bool):
    from pglast import enums

    kinds = enums.ConstrType
    if constraint.contype == kinds.CONSTR_CHECK:
        column = _null_test_column(constraint.raw_expr)
        if column and constraint.conname:
            seen.checks[(key, constraint.conname)] = column
        if constraint.skip_validation:
            return
        if column:
            seen.not_null.setdefault(key, set()).add(column)
        if not new:
            yield Risk(line, name, f"ADD {'CONSTRAINT ' + constraint.conname + ' ' if constraint.conname else ''}"
                                   "CHECK without NOT VALID", "scans", ACCESS_EXCLUSIVE, "check")
    elif constraint.contype == kinds.CONSTR_FOREIGN and not constraint.skip_validation and not new:
        yield Risk(line, name, f"ADD {'CONSTRAINT ' + constraint.conname + ' ' if constraint.conname else ''}"
                               "FOREIGN KEY without NOT VALID", "scans", SHARE_ROW_EXCLUSIVE, "foreign key")
    elif (constraint.contype in (kinds.CONSTR_PRIMARY, kinds.CONSTR_UNIQUE, kinds.CONSTR_EXCLUSION)
          and not constraint.indexname and not new):
        what = {kinds.CONSTR_PRIMARY: "PRIMARY KEY", kinds.CONSTR_UNIQUE: "UNIQUE"}.get(constraint.contype, "EXCLUDE")
        yield Risk(line, name, f"ADD {what} without USING INDEX", "builds an index on", ACCESS_EXCLUSIVE, "key")


def _volatile_column(column, live: _Live) -> str | None:
    """Why adding this column writes every row (a volatile default, serial, identity, stored generated), or None."""
    from pglast import enums

    type_name = column.typeName.names[-1].sval if column.typeName else ""
    if type_name in _SERIAL:
        return f"{type_name} (its default nextval() is volatile)"
    for constraint in column.constraints or ():
        if constraint.contype == enums.ConstrType.CONSTR_IDENTITY:
            return "GENERATED AS IDENTITY (a value per row)"
        if constraint.contype == enums.ConstrType.CONSTR_GENERATED and constraint.generated_kind != "v":
            return "GENERATED ALWAYS AS (...) STORED"
        if constraint.contype == enums.ConstrType.CONSTR_DEFAULT and live.volatile(_functions(constraint.raw_expr)):
            return f"DEFAULT {_text(constraint.raw_expr)} (volatile: a value per row)"
    return None


def refusal(verdicts: list[Verdict], where: str) -> str | None:
    """migrate's error for the refused verdicts (one line each), or None when none is refused."""
    refused = [v for v in verdicts if v.refused]
    if not refused:
        return None
    return "\n".join([v.line() for v in refused] + [
        f"refused before anything ran on {where}: {len(refused)} statement(s) would stop the application on a "
        f"table of more than {refused[0].threshold} rows (--rewrite-threshold-rows / REWRITE_THRESHOLD_ROWS); "
        "nothing was applied"])
