"""What a statement does to a table that may stop the application, read with PostgreSQL's own parser (pglast).

Quoted identifiers, schema-qualified names, several subcommands in one ALTER TABLE and pg_dump's spelling are
read as the server reads them. What only the live catalog can answer (is a default volatile, is a type change
binary-coercible, is a CHECK validated) is asked of `live` (rewrites._Live); what the earlier pending
statements do (tables they create, CHECKs they validate) is kept in `Seen`. Used by rewrites.py (migrate, plan)
and impact.py (plan --impact).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from migrator import lazy_re
from migrator.postgres import (risks_functions, risks_nullable, risks_objects, risks_path, risks_pending,
                               risks_types, risks_writes)
# (the kinds of risk, their locks and safe patterns; rewrites.py and impact.py read them from here)
from migrator.postgres.risk_kinds import (  # noqa: F401
    ACCESS_EXCLUSIVE, BLOCKS, INSTEAD, SHARE, SHARE_ROW_EXCLUSIVE, Risk, rows_text, size_text)
from migrator.postgres import risks_keyed, risks_retype  # (ALTER COLUMN TYPE, a file's TimeZone)
from migrator.postgres import risks_attach, risks_constraints, risks_indexes, risks_savepoints
from migrator.postgres.psql_tokens import IDENTIFIER

# Only statements that start so are parsed: a file of INSERTs or of CREATE TABLEs never loads the parser.
_HINT = lazy_re.compile(r"\s*(?:alter\s+(?:table|domain)|alter\s+type\s[^;]*?\balter\s+attribute|"
                        r"alter\s+(?:index|materialized\s+view)\s[^;]*?\btablespace|"
                        r"create\s+(?:unique\s+)?index|vacuum|cluster|reindex|refresh\s+materialized|"
                        r"create\s+(?:(?:global|local)\s+)?(?:unlogged\s+)?table\s+[^;]*?"
                        r"\bpartition\s+(?:of|by))\b", re.IGNORECASE)  # (BY: the keys an ATTACH clones)
_FUNCTION = lazy_re.compile(r"\s*(?:create\s+(?:or\s+replace\s+)?function|create\s+(?:operator|cast|type)\b|"
                            r"alter\s+(?:function|routine|procedure|schema))\b", re.IGNORECASE)
_DROP_INDEX = lazy_re.compile(r"\s*drop\s+index\b", re.IGNORECASE)
_COMMENTS = lazy_re.compile(r"/\*.*?\*/|--[^\n]*", re.DOTALL)  # (for the hint only: `ALTER /* x */ TABLE` is parsed too)
# A table a statement creates, read without the parser (pg_dump and people write it so; IF NOT EXISTS may
# name a table that exists and holds rows: not new). A table the judge cannot tell is new is judged by its size.
_NAME = rf'("(?:[^"]|"")*"|{IDENTIFIER})'
_CREATES = lazy_re.compile(rf"create\s+(?:(?:global|local)\s+)?(?P<temp>(?:temp|temporary)\s+)?(?:unlogged\s+)?table\s+"
                      rf"(?!if\s+not\s+exists\b){_NAME}(?:\s*\.\s*{_NAME})?", re.IGNORECASE)
# INSERT ... SELECT / COPY ... FROM: a pending statement that loads rows into a table (VALUES adds a known few)
_LOADS = lazy_re.compile(rf"\s*(?:insert\s+into\s+{_NAME}(?:\s*\.\s*{_NAME})?(?:\s+as\s+\S+)?(?:\s*\([^)]*\))?"
                         rf"\s*(?:overriding\s+\w+\s+value\s+)?\(?\s*(?:select|with|table)\b"
                         rf"|copy\s+{_NAME}(?:\s*\.\s*{_NAME})?[^;]*?\bfrom\b)", re.IGNORECASE)
_WRITES = lazy_re.compile(r"\s*(?:update|delete|merge|with|lock|create\s+(?:or\s+replace\s+)?(?:constraint\s+)?trigger)\b",
                          re.IGNORECASE)
_STORES = lazy_re.compile(r"\s*(?:insert|select|create|do)\b", re.IGNORECASE)  # read once the file's transaction locks
# statements that lock a table until the transaction's end (risks_writes.lock_taken)
_TAKES = lazy_re.compile(r"\s*(?:drop\s+index|(?:create|alter)\s+policy|create\s+(?:(?:global|local)\s+)?(?:unlogged\s+)?"
                         r"table\b.*\breferences\b)", re.IGNORECASE | re.DOTALL)
# a non-transactional file's own transaction block: its statements hold their locks until its end, as a file's
_BEGIN = lazy_re.compile(r"\s*(?:begin|start\s+transaction)\b", re.IGNORECASE)
_END = lazy_re.compile(r"\s*(?:commit|end|abort|rollback)\b(?!\s+(?:work\s+|transaction\s+)?(?:to|prepared)\b)",
                       re.IGNORECASE)
# a pending RENAME TO / SET SCHEMA of what a later statement may name (risks_pending.read_moves; a table's: risks())
_MOVES = lazy_re.compile(r"\s*alter\s+(?:domain|type|function|routine|procedure|schema)\b.*"
                         r"\b(?:rename\s+to|set\s+schema)\b", re.IGNORECASE | re.DOTALL)
_RENAMES = lazy_re.compile(r"\s*alter\s+table\b.*\brename\b", re.IGNORECASE | re.DOTALL)
_SERIAL = {"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"}

# --- reading the statements (no database) ------------------------------------------------------------------

@dataclass
class Seen:
    """What the pending statements before this one do, as far as the judge cares."""

    created: set = field(default_factory=set)  # the names pending CREATE TABLEs give (risks_pending.New: the tables)
    not_null: dict = field(default_factory=dict)  # table key -> columns proven NOT NULL by a validated CHECK
    checks: dict = field(default_factory=dict)  # (table key, constraint name) -> the columns it proves NOT NULL
    validated: dict = field(default_factory=dict)  # table key -> constraint names VALIDATEd by a pending statement
    altered: dict | None = None  # in a transactional file: table key -> (lock, by what) held until COMMIT
    # (kind, the name a pending RENAME TO / SET SCHEMA gives) -> the live object's name, or risks_pending.GONE for the
    # name it took away; kinds: table (key -> (schema, name)), type ((schema or None, name)), schema (functions:
    # risks_functions, by Seen.functions)
    aliases: dict = field(default_factory=dict)
    follow: bool = True  # follow them (False: the catalog read has them already, plan --impact's scratch database)
    columns: dict = field(default_factory=dict)  # (table key, column) -> the live column's name (RENAME COLUMN)
    # the file's search_path (risks_path: None the session's, a Path, an Unknown, a Maybe), what a fresh session of
    # the later files starts with (None, or Unknown once an earlier file's ALTER DATABASE / ROLE set it), the schemas
    # pending CREATE SCHEMAs make, the functions pending statements create whose body may set it
    path: object = None
    session_path: object = None
    next_session_path: object = None
    schemas: set = field(default_factory=set)
    path_functions: set = field(default_factory=set)
    opaque: str | None = None  # code the judge cannot read ran ("unread") or may have ("code"): risks_path
    savepoints: list = field(default_factory=list)  # (name, a copy of the rest) per SAVEPOINT: risks_savepoints
    made_log: list = field(default_factory=list)  # `created` in order (risks_path._made adds only the new ones)
    role_set: bool = False  # the file's SET ROLE / SESSION AUTHORIZATION: "$user" in its path is another schema
    timezone: str | None = None  # the TimeZone a `SET TIME ZONE` of the file gives what follows (None: the session's)
    session_zone: str | None = None  # a fresh session's TimeZone once an earlier file's ALTER DATABASE / ROLE set it
    next_session_zone: str | None = None  # (set by this file's ALTER DATABASE / ROLE: the next files' sessions)
    collations: set = field(default_factory=set)  # the collations a pending CREATE COLLATION makes
    domain_collations: dict = field(default_factory=dict)  # domain -> its pending CREATE DOMAIN's COLLATE
    keyed: dict = field(default_factory=dict)  # table key -> live column -> {index: its keys}: pending (risks_keyed)
    domain_types: dict = field(default_factory=dict)  # domain -> the type a pending CREATE DOMAIN is over (a TypeName)
    functions: list = field(default_factory=list)  # what pending statements do to functions, in order (risks_functions)
    checked: set = field(default_factory=set)  # table keys a pending statement gave a validated CHECK
    loaded: set = field(default_factory=set)  # tables a pending statement loads rows into (INSERT ... SELECT, COPY)
    indexes: dict = field(default_factory=dict)  # (table key, index name) -> its columns: a pending CREATE INDEX's
    views: dict = field(default_factory=dict)  # view key -> the tables it reads: a CREATE VIEW of a locked file's
    transactional: bool = True  # the file runs in one transaction (else only its own BEGIN ... COMMIT blocks)
    # (schema or None: the live path's first, name) -> (has a CHECK / NOT NULL, base type): a pending CREATE DOMAIN
    domains: dict = field(default_factory=dict)  # (risks_pending.domain_key keys the domain_* dicts alike)
    domain_constrained: set = field(default_factory=set)  # domain names a pending ALTER DOMAIN gives a constraint
    domain_dropped: set = field(default_factory=set)  # (schema or None, domain, constraint): a pending DROP's
    # what risks_pending reads: a domain's DEFAULT, expression / partial indexes and CHECKs a type change redoes
    domain_defaults: dict = field(default_factory=dict)  # domain -> the functions its DEFAULT calls, or ("live", base)
    rebuilt: dict = field(default_factory=dict)  # table key -> {index name: the live columns it names}
    pending_checks: dict = field(default_factory=dict)  # (table key, name) -> (live columns, validated when added)
    dropped_indexes: set = field(default_factory=set)  # (schema or None, name): a pending DROP INDEX's
    dropped_checks: set = field(default_factory=set)  # (table key, name): a pending DROP CONSTRAINT's
    nullable: set = field(default_factory=set)  # (table key, column): a pending DROP NOT NULL's
    clonable: dict = field(default_factory=dict)  # table key -> indexes and constraints an ATTACH clones (risks_attach)

    @property
    def schema(self) -> str | None:
        """The first schema of the file's own SET search_path as written (functions and domains it creates are noted
        under it: risks_functions, risks_pending), or None: the path the judge resolves on (rewrites._Live.path)."""
        path = self.path
        while isinstance(path, (risks_path.Role, risks_path.Maybe)):  # (as the statement found it)
            path = path.before
        return path[0] if isinstance(path, risks_path.Path) and path and path[0] != "$user" else None

    def begin_file(self, transactional: bool) -> None:
        self.altered = {} if transactional else None
        self.transactional = transactional
        self.path = self.timezone = None  # each file runs in a fresh session
        self.session_zone = self.next_session_zone  # (which an earlier file's ALTER DATABASE / ROLE SET changed)
        self.session_path, self.role_set, self.savepoints = self.next_session_path, False, []

    def is_new(self, name: tuple[str | None, str], live) -> bool:
        """The table a name means (as written, or already resolved by live_name) is one a pending statement creates."""
        return isinstance(self.live_name(name, live), risks_pending.New)

    def is_loaded(self, name: tuple[str | None, str], live) -> bool:
        """Its live size says nothing: an earlier pending statement loads rows into it."""
        return any(live.key(c) == live.key(name) for c in self.loaded)

    def live_name(self, name: tuple[str | None, str], live) -> tuple[str | None, str]:
        """The live table a name means after the pending RENAME TO / SET SCHEMAs before this statement."""
        return risks_pending.live_table(self, name, live)

    def live_column(self, table, column: str, live) -> str:
        return self.columns.get((live.key(table), column), column)

    def read(self, text: str) -> None:
        """Note the table a CREATE TABLE statement creates (a temporary one never makes a live table new; an
        unqualified one goes where the file's search_path puts it: risks_path) and the file's search_path."""
        bare = _COMMENTS.sub(" ", text)
        if risks_savepoints.read(bare, text, self):  # (a ROLLBACK [TO SAVEPOINT]: what was noted since undone)
            return
        if not self.transactional:  # its BEGIN ... COMMIT block holds each lock taken in it until its end
            self.altered = {} if _BEGIN.match(bare) else None if _END.match(bare) else self.altered
        runs = risks_path.read(bare, text, self)
        if _FUNCTION.match(bare):
            risks_functions.read(text, self)
        elif risks_types.DOMAIN_HINT.match(bare):
            risks_types.read_domain(text, self)
        elif _DROP_INDEX.match(bare):
            risks_pending.read_drop_index(text, self)
        if _MOVES.match(bare):
            risks_pending.read_moves(text, self)
        loads = _LOADS.match(bare)
        if loads:
            parts = [p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in loads.groups() if p]
            unqualified = (risks_path.At((risks_path.now(self), False)), parts[0])  # (where it resolves now)
            self.loaded.add((parts[0], parts[1]) if len(parts) == 2 else unqualified)
        match = _CREATES.match(text)
        if match and not match["temp"]:
            parts = [p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in match.groups()[1:] if p]
            unqualified = (risks_path.At((risks_path.now(self), True)), parts[0])  # (where the path puts it)
            made = (parts[0], parts[1]) if len(parts) == 2 else unqualified
            if made not in self.created:
                self.created.add(made)
                self.made_log.append(made)
        risks_retype.read(bare, text, self)
        if runs:  # (code it ran may have set the path for the statements after it)
            risks_path.ran(self)

    def rename(self, tree, live) -> None:
        """Note a pending ALTER TABLE ... RENAME (TO, COLUMN): later statements name what it names."""
        from pglast import enums

        if tree.relation is None or tree.newname is None:
            return
        old = self.live_name(_name(tree.relation), live)
        if tree.renameType == enums.ObjectType.OBJECT_TABLE:
            risks_pending.move(self, "table", live.key(_name(tree.relation)),
                               live.key((tree.relation.schemaname or None, tree.newname)), old)
        elif tree.renameType == enums.ObjectType.OBJECT_COLUMN:
            self.columns[(live.key(_name(tree.relation)), tree.newname)] = self.live_column(
                _name(tree.relation), tree.subname, live)


def _name(range_var) -> tuple[str | None, str]:
    return range_var.schemaname or None, range_var.relname


def _text(node) -> str:
    from pglast.stream import RawStream

    try:
        return RawStream()(node)
    except Exception:  # a node pglast cannot print alone: the kind says enough
        return "..."


def parse(text: str, seen: Seen | None = None):
    """The statement's parse trees (pglast), or () when it is not one the judge reads or pglast cannot parse it
    (the server then says what is wrong). In a transactional file its LOCKs, CREATE TRIGGERs, UPDATEs and
    DELETEs are read, and once it holds a lock its copies (CREATE TABLE AS, INSERT ... SELECT) too."""
    hint = _COMMENTS.sub(" ", text)
    if not (_HINT.match(hint) or seen is not None and seen.altered is not None and (
            _WRITES.match(hint) or _TAKES.match(hint) or seen.altered and _STORES.match(hint))
            or _RENAMES.match(hint)):
        return ()
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return ()


def risks(tree, line: int, live, seen: Seen):
    """What one statement does that may rewrite or scan a table; the CHECKs it adds and validates go to `seen`.
    Tables are named as the live database knows them (an earlier pending RENAME TO undone)."""
    from pglast import ast, enums

    def name(range_var):
        return seen.live_name(_name(range_var), live)

    reindex = enums.ReindexObjectType
    risks_attach.read(tree, name, live, seen)
    if isinstance(tree, ast.CreateStmt) and tree.partbound is not None:  # (a DEFAULT partition's rows scanned)
        yield from risks_objects.default_scan(tree.partbound, name(tree.inhRelations[0]), line, live, seen,
                                              "CREATE TABLE ... PARTITION OF")
    if isinstance(tree, ast.IndexStmt) and tree.idxname:  # (its columns, for a later ADD PRIMARY KEY USING INDEX)
        seen.indexes[(live.key(name(tree.relation)), tree.idxname)] = [p.name for p in tree.indexParams]
    if isinstance(tree, ast.IndexStmt):  # (one a later type change builds again)
        risks_pending.index(tree, name(tree.relation), live, seen)
        risks_keyed.index(tree, name(tree.relation), live, seen)
    if isinstance(tree, ast.IndexStmt) and not tree.concurrent:
        yield from risks_indexes.build(tree, name(tree.relation), line, live, seen)
    elif isinstance(tree, ast.VacuumStmt) and tree.is_vacuumcmd and any(
            o.defname == "full" and str(getattr(o.arg, "sval", getattr(o.arg, "ival", "on"))).lower()
            not in ("false", "off", "0") for o in tree.options or ()):
        tables = [name(rel.relation) for rel in tree.rels] if tree.rels else risks_pending.catalog(
            seen, live.tables_in(None))  # bare: every table
        for table in tables:
            yield Risk(line, table, "VACUUM FULL", "rewrites", ACCESS_EXCLUSIVE, "vacuum full")
    elif isinstance(tree, ast.ClusterStmt):  # bare: each table with a clustered index the role may cluster
        tables = [name(tree.relation)] if tree.relation is not None else risks_pending.catalog(seen, live.clustered())
        for table in tables:
            yield Risk(line, table, "CLUSTER", "rewrites", ACCESS_EXCLUSIVE, "cluster")
    elif isinstance(tree, ast.ReindexStmt) and not any(o.defname == "concurrently" for o in tree.params or ()):
        # SHARE on the table, ACCESS EXCLUSIVE on each index: a query planned on the table waits too
        if tree.kind == reindex.REINDEX_OBJECT_TABLE:
            tables, what = [name(tree.relation)], "REINDEX TABLE"
        elif tree.kind == reindex.REINDEX_OBJECT_INDEX:
            tables = risks_pending.catalog(seen, live.table_of_index(_name(tree.relation)))
            what = f"REINDEX INDEX {tree.relation.relname}"
        elif tree.kind == reindex.REINDEX_OBJECT_SCHEMA:
            tables, what = risks_pending.catalog(seen, live.tables_in(tree.name)), f"REINDEX SCHEMA {tree.name}"
        else:  # DATABASE / SYSTEM: every table
            tables, what = risks_pending.catalog(seen, live.tables_in(None)), "REINDEX DATABASE"
        for table in tables:
            yield Risk(line, table, f"{what} without CONCURRENTLY", "rebuilds the indexes of", ACCESS_EXCLUSIVE,
                       "reindex")
    elif isinstance(tree, ast.AlterTableStmt) and tree.objtype == enums.ObjectType.OBJECT_TABLE:
        yield from _alter_table(tree, line, live, seen)
    elif isinstance(tree, ast.AlterTableStmt) and tree.objtype == enums.ObjectType.OBJECT_TYPE:
        yield from risks_objects.altered_attribute(tree, line, live, seen, retype)
    elif isinstance(tree, ast.AlterTableStmt) and tree.objtype == enums.ObjectType.OBJECT_INDEX:
        yield from risks_objects.index_tablespace(tree, line, live, seen)
    elif isinstance(tree, ast.AlterTableMoveAllStmt):
        yield from risks_objects.move_all(tree, line, live, seen)
    elif isinstance(tree, ast.RefreshMatViewStmt):
        yield from risks_objects.refresh(tree, line, name(tree.relation))
    elif isinstance(tree, ast.AlterDomainStmt):
        yield from risks_objects.alter_domain(tree, line, live, seen)
    elif isinstance(tree, ast.RenameStmt):
        if seen.altered is not None and tree.relation is not None:  # (ACCESS EXCLUSIVE until COMMIT, as an ALTER's)
            risks_writes.hold(seen, live.key(name(tree.relation)), ACCESS_EXCLUSIVE, "ALTER TABLE ... RENAME")
        seen.rename(tree, live)
    elif isinstance(tree, ast.AlterObjectSchemaStmt) and tree.objectType == enums.ObjectType.OBJECT_TABLE:
        if seen.altered is not None and tree.relation is not None:
            risks_writes.hold(seen, live.key(name(tree.relation)), ACCESS_EXCLUSIVE, "ALTER TABLE ... SET SCHEMA")
        risks_pending.set_schema(tree, live, seen)
    elif seen.altered is not None and risks_writes.lock_taken(tree, live, seen, name):
        pass  # a LOCK TABLE or CREATE TRIGGER: its lock is held until COMMIT, as an ALTER's
    elif seen.altered:
        yield from risks_writes.under_lock(tree, line, live, seen, name)


def _alter_table(tree, line: int, live, seen: Seen):
    from pglast import enums

    types = enums.AlterTableType
    if not _COPIES:
        _COPIES.update({types.AT_SetLogged: "SET LOGGED", types.AT_SetUnLogged: "SET UNLOGGED",
                        types.AT_SetTableSpace: "SET TABLESPACE", types.AT_SetAccessMethod: "SET ACCESS METHOD"})
        _LIGHT.update(getattr(types, f"AT_{n}") for n in ("ValidateConstraint", "SetStatistics", "ClusterOn",
                                                          "DropCluster", "DetachPartitionFinalize"))
    name = seen.live_name(_name(tree.relation), live)
    key = live.key(name)
    new = seen.is_new(name, live)
    # the statement holds its strongest subcommand's lock for all of it (a VALIDATE's scan too), and runs its DROPs
    # before the rest, whatever the order written (tablecmds.c's passes)
    locked = any(cmd.subtype not in _LIGHT for cmd in tree.cmds)
    drops = [cmd for cmd in tree.cmds if cmd.subtype in (types.AT_DropConstraint, types.AT_DropNotNull)]
    for cmd in drops + [cmd for cmd in tree.cmds if cmd not in drops]:
        if cmd.subtype == types.AT_AddColumn:
            column = cmd.def_
            why = _volatile_column(column, live, seen) if not new else None
            domain = not new and not why and column.typeName and risks_types.constrained_domain(
                risks_pending.live_type(seen, column.typeName), live, seen)
            if why or domain:
                yield Risk(line, name, f"ADD COLUMN {column.colname} {why or domain}", "rewrites", ACCESS_EXCLUSIVE,
                           "default" if why else "domain column")
            elif not new:
                yield from risks_constraints.column_constraints(column, name, line)
        elif cmd.subtype == types.AT_AlterColumnType and not new:
            yield from retype(cmd, name, line, live, seen)
        elif cmd.subtype == types.AT_SetExpression and not new:
            table = live.table(name)  # (a VIRTUAL generated column's, PostgreSQL 18: catalog only, nothing stored)
            if not (table and live.generated(table[0], seen.live_column(name, cmd.name, live)) == "v"):
                yield Risk(line, name, f"ALTER COLUMN {cmd.name} SET EXPRESSION", "rewrites", ACCESS_EXCLUSIVE,
                           "expression")
        elif cmd.subtype == types.AT_AttachPartition:
            yield from risks_objects.attach(cmd, line, live, seen, seen.live_name(_name(cmd.def_.name), live))
            yield from risks_attach.clones(name, seen.live_name(_name(cmd.def_.name), live), line, live, seen)
            yield from risks_objects.default_scan(cmd.def_.bound, name, line, live, seen, "ATTACH PARTITION")
        elif cmd.subtype == types.AT_SetNotNull:
            if cmd.name in seen.not_null.get(key, set()) or new:
                continue
            for risk in risks_nullable.set_not_null(cmd.name, name, key, line, live, seen):
                if any(d.subtype == types.AT_DropConstraint for d in drops):  # (maybe of the CHECK that proved it)
                    risk.what, risk.kind = risk.what + " (this statement's DROP CONSTRAINT runs first)", "not null drop"
                yield risk
        elif cmd.subtype == types.AT_AlterConstraint:
            yield from risks_constraints.enforced(cmd, name, line, live, seen)
        elif cmd.subtype == types.AT_AddConstraint:
            if cmd.def_.contype == enums.ConstrType.CONSTR_CHECK:  # (named by a later type change of its columns)
                risks_pending.check(cmd.def_, name, live, seen)
            risks_keyed.constraint(cmd.def_, name, live, seen)  # (an index a later type change may build again)
            yield from risks_constraints.add_constraint(cmd.def_, name, key, line, seen, new)
            if not new:
                yield from risks_nullable.implicit_not_null(cmd.def_, name, key, line, live, seen)
        elif cmd.subtype == types.AT_ValidateConstraint:
            if locked and not new:
                yield Risk(line, name, f"VALIDATE CONSTRAINT {cmd.name} with another subcommand of the same ALTER "
                                       "TABLE", "scans", ACCESS_EXCLUSIVE, "validate")
            elif seen.altered is not None and key in seen.altered and not new:
                yield Risk(line, name, f"VALIDATE CONSTRAINT {cmd.name} in the transaction of an earlier ALTER TABLE "
                                       "of the table", "scans", ACCESS_EXCLUSIVE, "validate")
            seen.validated.setdefault(key, set()).add(cmd.name)
            seen.checked.add(key)
            seen.not_null.setdefault(key, set()).update(seen.checks.get((key, cmd.name), ()))
        elif cmd.subtype == types.AT_DropConstraint:  # (what it proved NOT NULL no longer is)
            risks_pending.drop_check(key, cmd.name, seen)
            seen.not_null.get(key, set()).difference_update(seen.checks.get((key, cmd.name), ()))
        elif cmd.subtype == types.AT_DropNotNull:
            seen.nullable.add((key, seen.live_column(name, cmd.name, live)))
            seen.not_null.get(key, set()).discard(cmd.name)
        elif cmd.subtype in _COPIES and not new and not (cmd.subtype == types.AT_SetTableSpace
                                                         and risks_objects.in_tablespace_now(live, name, cmd.name)):
            yield Risk(line, name, _COPIES[cmd.subtype] + (f" {cmd.name}" if cmd.name else ""), "rewrites",
                       ACCESS_EXCLUSIVE, "logged")
    if seen.altered is not None:  # its lock (ACCESS EXCLUSIVE for most subcommands) is held until the file commits
        risks_writes.hold(seen, key, ACCESS_EXCLUSIVE, "ALTER TABLE")


_COPIES = {}  # the subcommands that copy the whole table (filled on first use: the parser's enums load lazily)
_LIGHT = set()  # those that take no more than SHARE UPDATE EXCLUSIVE (AlterTableGetLockLevel): reads and writes go on


def retype(cmd, name, line: int, live, seen: Seen, what: str = ""):
    """ALTER COLUMN TYPE (or ALTER TYPE ... ALTER ATTRIBUTE ... CASCADE, `what`, on each typed table) of a live
    table: a rewrite, indexes built again, CHECKs checked again, other tables' foreign keys validated again."""
    table = live.table(name)
    if table is None:
        return
    key = live.key(name)
    column = seen.live_column(name, cmd.name, live)
    type_name = risks_pending.live_type(seen, cmd.def_.typeName)
    what = what or f"ALTER COLUMN {cmd.name} TYPE {_text(cmd.def_.typeName)}"
    how = risks_retype.rewrites_type(live, seen, table[0], column, type_name, cmd.def_.raw_default,
                                     cmd.def_.collClause, key)
    if how:
        does, why = how
        yield Risk(line, name, what + (f" {_text(cmd.def_.collClause)}" if cmd.def_.collClause else "") + why,
                   does, ACCESS_EXCLUSIVE, "type index" if does.startswith("rebuilds index(es)") else "type")
    else:  # the rows kept, not its CHECKs and some of its indexes
        yield from risks_types.retyped(live, table[0], column, what, name, line, seen)
    target = risks_retype.target(live, seen, type_name)
    yield from risks_constraints.referenced(live, seen, table[0], column, target and target[0], what, line)


def _volatile_column(column, live, seen: Seen) -> str | None:
    """Why adding this column writes every row (a volatile default, serial, identity, stored generated), or None."""
    from pglast import enums

    last = column.typeName.names[-1].sval if column.typeName else ""
    if last in _SERIAL:
        return f"{last} (its default nextval() is volatile)"
    for constraint in column.constraints or ():
        if constraint.contype == enums.ConstrType.CONSTR_IDENTITY:
            return "GENERATED AS IDENTITY (a value per row)"
        if constraint.contype == enums.ConstrType.CONSTR_GENERATED and constraint.generated_kind != "v":
            return "GENERATED ALWAYS AS (...) STORED"
        if constraint.contype == enums.ConstrType.CONSTR_DEFAULT:
            why = risks_functions.volatile(risks_pending.functions_called(constraint.raw_expr) | risks_pending.assigned(
                constraint.raw_expr, risks_pending.live_type(seen, column.typeName)), live, seen)  # (its column's cast)
            return why and f"DEFAULT {_text(constraint.raw_expr)} ({why}: a value per row)"  # (wins over its domain's)
    calls = column.typeName and risks_pending.domain_default_calls(risks_pending.live_type(seen, column.typeName),
                                                                    live, seen)
    why = calls and risks_functions.volatile(calls, live, seen)
    if why:
        return f"of domain {_text(column.typeName)}, whose DEFAULT is {why} (a value per row)"
    return None


def expression_functions(text: str) -> set[str]:
    """The functions an expression (as the catalog prints it) calls."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return risks_pending.functions_called(parse_sql(f"SELECT {text}")[0].stmt)
    except ParseError:
        return set()
