"""Which statements start the try's clock while the lock probe is blind (lock_probe.Probe), and which it names as
having taken the lock the application waited on (lock_waiters.py; while it sees, what every statement of a try
holds is watched). Blind, the probe cannot tell a lock wait from work, nor see what a statement's user code (a
trigger, a column DEFAULT, a view, a rule, an operator, a function called by any spelling) or its row locks make the
application wait for: so the clock runs from a try's first statement to its COMMIT unless every statement is
harmless BY CONSTRUCTION, decided from PostgreSQL's own parse of it (pglast) and, for a table, from the catalog:

nothing while the session's standard_conforming_strings is off (the server may then split a text pglast reads as
one statement into several); else:
- SET / RESET / SHOW, transaction control (not PREPARE TRANSACTION: its locks outlive the session);
- CONCURRENTLY index statements (their waits block no query; running.py keeps them unbounded; a build on an
  expression, a predicate or an opclass only if it runs built-in code alone, _BUILD; a REINDEX only if each index it
  rebuilds does, as the catalog defines it: index_code.py; not REFRESH MATERIALIZED VIEW
  CONCURRENTLY: it runs the view's query) and VALIDATE CONSTRAINT of a foreign key checked in one query (SELECT on
  both tables, no row security), a NOT NULL or a CHECK calling only built-in IMMUTABLE functions and operators,
  naming no type of the database's own but an enum;
- while the database has no enabled event trigger (it runs user code on any DDL): a CREATE TABLE that is no
  partition, inherits nothing, references no table and copies none (LIKE); CREATE FUNCTION / PROCEDURE (not in
  LANGUAGE sql: its body is parse-analysed, locking the tables it names), SEQUENCE
  (not OWNED BY), enum TYPE, an empty CREATE SCHEMA (catalog rows only: nobody waits on them);
- an INSERT ... VALUES of constants (literals, NULL, DEFAULT, a literal cast to a built-in base type, as the
  session resolves its name; no ON CONFLICT, RETURNING, WITH, sub-select, function or operator) into a table the open transaction created (a temporary one:
  this run; by its oid, so a same-named table in another schema does not stand in for it; and under the name it was
  made with: one renamed or moved since, a swap into the application's name, is the application's; once committed
  the application may reach it by code the catalog does not tie to it, a trigger on its own table writing into it;
  and one a view reads is the application's) that, as
  the catalog says just before (whatever
  made it so, a DO block's EXECUTE included), is a plain heap table of built-in or enum columns with no trigger, rule,
  row security, CHECK, exclusion or foreign key, expression or partial index, nor a DEFAULT calling anything but
  nextval, now(), gen_random_uuid(), clock_timestamp() (and the like: built-in, locking nothing) and built-in
  casts, nor naming a type of the database's own but an enum, nor a cast of its own into a column's type (a row of
  it locks nothing an application uses:
  nobody else knows the table).

Anything else (any query, any UPDATE/DELETE/MERGE, DDL on any table, DO, CALL, LOCK, an INSERT into an existing
table, what the parser rejects) starts the clock. Each of a backfill's batches is a try of its own, on a clock
that starts with it (running.py, Probe.batch_started). The cost is a merely slow try retried
(docs/safety-and-exit-codes.md: the trade-off while blind).
"""

from __future__ import annotations

from migrator.postgres import conforming, index_code
from migrator.postgres.index_code import OWN_TYPES as _OWN_TYPES
from migrator.postgres.transaction_status import IDLE

_FREE = ("VariableSetStmt", "VariableShowStmt")
_CATALOG_ONLY = ("CreateStmt", "CreateFunctionStmt", "CreateSeqStmt", "CreateEnumStmt", "CreateSchemaStmt")

# Enabled event triggers (a superuser's: they run on any DDL, whatever the statement).
_EVENT_TRIGGERS = ("SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger "
                   "WHERE evtenabled OPERATOR(pg_catalog.<>) 'D')")

# The table a statement names (resolved as the statement itself would: the session's search_path, temp first) and
# whether a row inserted into it runs nothing user-defined. (Qualified operators only: the file's search_path may
# hold planted ones. 16384: FirstNormalObjectId, below it what initdb made. An attrdef's funcids are read from its
# node tree: nextval, now() and built-in casts; any operator, or a coercion to a domain (its CHECK), refuses.)
_TABLE = """SELECT c.oid, c.relkind OPERATOR(pg_catalog.=) 'r' AND NOT c.relispartition AND NOT c.relrowsecurity
  AND NOT c.relhasrules AND NOT c.relhastriggers AND c.relam OPERATOR(pg_catalog.<) 16384::pg_catalog.oid
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger g WHERE g.tgrelid OPERATOR(pg_catalog.=) c.oid)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_rewrite r WHERE r.ev_class OPERATOR(pg_catalog.=) c.oid)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend v WHERE v.refobjid OPERATOR(pg_catalog.=) c.oid
                    AND v.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhrelid OPERATOR(pg_catalog.=) c.oid)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                  JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
                  WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0
                    AND NOT a.attisdropped AND (a.attcollation OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
                      OR t.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid AND t.typtype OPERATOR(pg_catalog.<>) 'e'))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.conrelid OPERATOR(pg_catalog.=) c.oid
                    AND NOT k.contype OPERATOR(pg_catalog.=) ANY (ARRAY['p', 'u', 'n']::pg_catalog."char"[]))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_index x WHERE x.indrelid OPERATOR(pg_catalog.=) c.oid
                    AND (x.indexprs IS NOT NULL OR x.indpred IS NOT NULL
                      OR 16384::pg_catalog.oid OPERATOR(pg_catalog.<=) ANY (x.indclass::pg_catalog.oid[])
                      OR 16384::pg_catalog.oid OPERATOR(pg_catalog.<=) ANY (x.indcollation::pg_catalog.oid[])))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_attrdef d WHERE d.adrelid OPERATOR(pg_catalog.=) c.oid
                    AND (d.adbin::pg_catalog.text OPERATOR(pg_catalog.~)
                           ':(opno|opfuncid|aggfnoid|winfnoid) |[{]COERCETODOMAIN '
                      OR """ + _OWN_TYPES.format("d.adbin") + """
                      OR EXISTS (SELECT FROM pg_catalog.regexp_matches(d.adbin::pg_catalog.text, ':funcid ([0-9]+)',
                                                                       'g') f(m)
                        WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_proc p
                          WHERE p.oid OPERATOR(pg_catalog.=) f.m[1]::pg_catalog.oid
                            AND p.oid OPERATOR(pg_catalog.<) 16384::pg_catalog.oid
                            AND (p.proname OPERATOR(pg_catalog.=) ANY (ARRAY['nextval', 'now', 'gen_random_uuid',
                              'uuidv4', 'uuidv7', 'clock_timestamp', 'statement_timestamp', 'transaction_timestamp',
                              'random']::pg_catalog.name[])
                              OR EXISTS (SELECT FROM pg_catalog.pg_cast s
                                         WHERE s.castfunc OPERATOR(pg_catalog.=) p.oid))))))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_cast s WHERE s.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
                    AND (s.castsource OPERATOR(pg_catalog.<) 16384::pg_catalog.oid
                         AND s.casttarget OPERATOR(pg_catalog.<) 16384::pg_catalog.oid
                      OR s.casttarget OPERATOR(pg_catalog.=) ANY (SELECT a.atttypid FROM pg_catalog.pg_attribute a
                           WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0))),
  c.relnamespace, c.relname
FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%s)
  AND c.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid"""

# The table a CREATE TABLE just made: an unqualified name lands in the session's current schema (a temporary one in
# its own temp schema).
_MADE = ("SELECT c.oid, c.relnamespace, c.relname FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) "
         "pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', COALESCE(%s, pg_catalog.current_schema()), %s))")

# A VALIDATE CONSTRAINT runs nothing user-defined: no CHECK among the constraints it names calls a function that is
# not a built-in IMMUTABLE one, a user operator or coerces to a domain (a CHECK's expression runs per row, and what
# it locks is held to the try's end; NOT NULL runs no user code). A foreign key's check is one query (no row lock)
# only when the user may SELECT both tables and neither has row security: else PostgreSQL checks it row by row,
# locking every referenced row FOR KEY SHARE to the try's end (RI_Initial_Check; attack24r 1).
_VALIDATE = """SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k
  WHERE k.conrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%s) AND k.conname OPERATOR(pg_catalog.=) ANY (%s)
    AND k.contype OPERATOR(pg_catalog.<>) 'n'
    AND (k.contype OPERATOR(pg_catalog.=) 'f' AND NOT (pg_catalog.has_table_privilege(k.conrelid, 'SELECT')
          AND pg_catalog.has_table_privilege(k.confrelid, 'SELECT')
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_class r WHERE r.oid OPERATOR(pg_catalog.=) ANY (ARRAY[k.conrelid,
                            k.confrelid]) AND r.relrowsecurity))
      OR k.contype OPERATOR(pg_catalog.<>) 'f' AND (k.contype OPERATOR(pg_catalog.<>) 'c' OR k.conbin IS NULL
      OR k.conbin::pg_catalog.text OPERATOR(pg_catalog.~) ':(aggfnoid|winfnoid) |[{](COERCETODOMAIN|SUBLINK) '
      OR """ + _OWN_TYPES.format("k.conbin") + """
      OR EXISTS (SELECT FROM pg_catalog.regexp_matches(k.conbin::pg_catalog.text, ':opno ([0-9]+)', 'g') o(m)
                 WHERE o.m[1]::pg_catalog.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid)
      OR EXISTS (SELECT FROM pg_catalog.regexp_matches(k.conbin::pg_catalog.text, ':(funcid|opfuncid) ([0-9]+)',
                                                       'g') f(m)
                 WHERE f.m[2]::pg_catalog.oid OPERATOR(pg_catalog.<>) 0::pg_catalog.oid AND NOT EXISTS (
                   SELECT FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) f.m[2]::pg_catalog.oid
                     AND p.oid OPERATOR(pg_catalog.<) 16384::pg_catalog.oid
                     AND p.provolatile OPERATOR(pg_catalog.=) 'i')))))"""

# Whether every type a constant is cast to by an unqualified name is, as the session resolves it, a built-in base
# type (a domain's CHECK, or a planted type's input function, is user code).
_BUILTIN_TYPES = """SELECT COALESCE(pg_catalog.bool_and(COALESCE(t.oid OPERATOR(pg_catalog.<) 16384::pg_catalog.oid
    AND t.typtype OPERATOR(pg_catalog.=) 'b', false)), true)
  FROM pg_catalog.unnest(%s::pg_catalog.text[]) n(name)
  LEFT JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) pg_catalog.to_regtype(n.name)"""

# Whether a CONCURRENTLY build on an expression, a predicate or an operator class runs built-in code alone: no name
# it calls (function, operator, type, operator class) is shared by an object of the database's own (resolution can
# then pick a built-in one only), no column of its table is of a non-enum type of its own and no cast calls a function
# of its own (both run implicitly). Else a function may lock what the application waits on (attack24q 6).
_BUILD = """SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_proc WHERE oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
    AND proname OPERATOR(pg_catalog.=) ANY (%(names)s::pg_catalog.name[]))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_operator WHERE oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
    AND oprname OPERATOR(pg_catalog.=) ANY (%(names)s::pg_catalog.name[]))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_type WHERE oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
    AND typname OPERATOR(pg_catalog.=) ANY (%(names)s::pg_catalog.name[]))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_opclass WHERE oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
    AND opcname OPERATOR(pg_catalog.=) ANY (%(names)s::pg_catalog.name[]))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_cast WHERE castfunc OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t
                    ON t.oid OPERATOR(pg_catalog.=) a.atttypid
                  WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%(table)s) AND a.attnum
                    OPERATOR(pg_catalog.>) 0 AND t.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
                    AND t.typtype OPERATOR(pg_catalog.<>) 'e')"""

# Whether a CREATE TABLE's column types (as the session resolves them) include a table's row type, or an array of
# one: the CREATE then locks that table (ACCESS SHARE) to the COMMIT (attack24r 5).
_ROW_TYPES = """SELECT EXISTS (SELECT FROM pg_catalog.unnest(%s::pg_catalog.text[]) n(name)
  JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) pg_catalog.to_regtype(n.name)
  LEFT JOIN pg_catalog.pg_type e ON e.oid OPERATOR(pg_catalog.=) t.typelem
  WHERE t.typrelid OPERATOR(pg_catalog.<>) 0::pg_catalog.oid OR e.typrelid OPERATOR(pg_catalog.<>) 0::pg_catalog.oid)"""


class Judge:
    """The clock's judge for one file's tries, on the migration's own connection (its transaction: what an earlier
    statement of the try made is seen). `created`: the temporary tables this run created (kept for the run: nobody
    else sees them), their oid -> the (schema oid, name) they were made with: one renamed or moved since is the
    application's. Any other table created is the run's only until the transaction that made it ends: once
    committed the application may reach it by code the catalog does not tie to it (a trigger on its own table
    upserting into it: attack24s 1; DROP then CREATE of its name: attack24q 7)."""

    def __init__(self, connection, created: dict):
        self.connection, self.created = connection, created
        self._open: dict = {}  # created by the open transaction: the run's until it ends
        self._parsed: tuple[str, list | None] = ("", [])
        self._tables: dict[str, bool] = {}  # INSERT targets as written -> free, since the last other statement
        self._event_triggers: bool | None = None
        self._judged: tuple[str, bool] | None = None  # the statement last judged, and whether it is harmless

    def new_try(self) -> None:
        """A try begins (the last one's transaction rolled back, or its statements committed): asked afresh."""
        self._tables.clear()
        self._open.clear()
        self._event_triggers = None

    def bounded(self, text: str, running: bool = False) -> bool:
        """The statement starts the try's clock (see the module); asked just before it runs. `running`: the try's
        clock runs already, so nothing is asked of the server (what is known is asked again after it)."""
        trees = None if running else self._trees(text)
        harmless = trees is not None and not conforming.off(self.connection) and all(self._harmless_here(tree) for tree in trees)
        self._judged = (text, harmless)
        return not harmless

    def _harmless_here(self, tree) -> bool:
        kind = _harmless(tree)
        if kind == "catalog":
            return not self._has_event_triggers() and (type(tree).__name__ != "CreateStmt" or not self._ask(
                _ROW_TYPES, (_column_types(tree),)))
        if kind == "insert":
            return self._free(tree.relation) and self._builtin_types(_cast_types(tree))
        if kind == "validate":
            return self._validates_builtin(tree)
        if kind == "build":
            return self._ask(_BUILD, {"names": _called(tree), "table": _name(tree.relation)})
        if kind == "reindex":
            return index_code.rebuilds_builtin(self.connection, tree, _name)
        return kind == "free"

    def ran(self, text: str) -> None:
        """After a statement ran (judged or not: a backfill's batches): a table it created is the run's. What was
        known of tables and event triggers is asked again after anything but a harmless INSERT (a DO block, a
        trigger, a SET of search_path may have changed what a name is or what a row runs), even committed."""
        judged, self._judged = self._judged, None
        trees = self._trees(text) or []
        if judged != (text, True) or not all(type(tree).__name__ == "InsertStmt" for tree in trees):
            self._tables.clear()
        if self.connection.info.transaction_status == IDLE:  # (committed or rolled back: the application's, or gone)
            self._open.clear()
        if judged != (text, True):
            self._event_triggers = None
        for tree in trees:
            if type(tree).__name__ == "CreateStmt" and not tree.if_not_exists:  # (IF NOT EXISTS: maybe another's)
                relation = tree.relation
                schema = "pg_temp" if relation.relpersistence == "t" else relation.schemaname
                with self.connection.cursor() as cursor:
                    cursor.execute(_MADE, (schema, relation.relname))
                    made = cursor.fetchone()
                if made is None:
                    continue
                if relation.relpersistence == "t":  # (nobody else sees a temp table)
                    self.created[made[0]] = tuple(made[1:])
                elif self.connection.info.transaction_status != IDLE:
                    self._open[made[0]] = tuple(made[1:])

    def _has_event_triggers(self) -> bool:
        if self._event_triggers is None:
            self._event_triggers = self._ask(_EVENT_TRIGGERS)
        return self._event_triggers

    def _builtin_types(self, names: list[str]) -> bool:
        return not names or self._ask(_BUILTIN_TYPES, (names,))

    def _validates_builtin(self, tree) -> bool:
        return self._ask(_VALIDATE, (_name(tree.relation), [cmd.name for cmd in tree.cmds]))

    def _ask(self, query: str, params=None) -> bool:
        with self.connection.cursor() as cursor:
            cursor.execute(query, params)
            return bool(cursor.fetchone()[0])

    def _free(self, relation) -> bool:
        """A table this run created, into which a row inserts nothing but itself (see the module)."""
        if relation.catalogname:
            return False
        name = _name(relation)
        if name not in self._tables:
            with self.connection.cursor() as cursor:
                cursor.execute(_TABLE, (name,))
                row = cursor.fetchone()
            made = row and (self.created.get(row[0]) or self._open.get(row[0]))
            self._tables[name] = bool(row and made == tuple(row[2:]) and row[1])
        return self._tables[name]

    def _trees(self, text: str) -> list | None:
        if self._parsed[0] != text:
            self._parsed = (text, _trees(text))
        return self._parsed[1]


def query(text: str) -> bool:
    """The statement is a query (a SELECT): it takes no table lock the application waits on by itself, so what the
    application waits on may as well be an earlier statement's lock (lock_waiters.py words it so)."""
    trees = _trees(text)
    return bool(trees) and all(type(tree).__name__ == "SelectStmt" for tree in trees)


def _trees(text: str) -> list | None:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return None


def _name(relation) -> str:
    return _quoted(relation.relname) if relation.schemaname is None else \
        f"{_quoted(relation.schemaname)}.{_quoted(relation.relname)}"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _harmless(tree) -> str | None:
    """"free", "catalog" (free unless an event trigger runs on DDL), "insert" (free into a free table), or None: the
    statement starts the clock."""
    from pglast import enums

    kind = type(tree).__name__
    if kind in _FREE:
        return "free"
    if kind == "TransactionStmt":
        prepared = (enums.TransactionStmtKind.TRANS_STMT_PREPARE, enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
                    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED)
        return None if tree.kind in prepared else "free"
    if kind == "AlterTableStmt" and tree.cmds \
            and all(cmd.subtype == enums.AlterTableType.AT_ValidateConstraint for cmd in tree.cmds):
        return "validate"  # (SHARE UPDATE EXCLUSIVE blocks no query; a CHECK's functions may lock what it does)
    if _concurrent(tree, kind):  # (one on an expression, a predicate, an opclass runs functions per row)
        if kind == "ReindexStmt":
            return "reindex"  # (the index's own definition, in the catalog)
        return "build" if kind == "IndexStmt" and (tree.whereClause is not None or any(
            param.expr is not None or param.opclass for param in tree.indexParams or ())) else "free"
    if kind in _CATALOG_ONLY:
        return "catalog" if _only_catalog(tree, kind) else None
    if kind == "InsertStmt":
        return "insert" if _constants(tree) else None
    return None


def _concurrent(tree, kind: str) -> bool:
    """CONCURRENTLY index statements (not REFRESH MATERIALIZED VIEW CONCURRENTLY: it runs the view's query, user
    code)."""
    if kind in ("IndexStmt", "DropStmt"):
        return bool(tree.concurrent)
    if kind == "ReindexStmt":
        return any(p.defname == "concurrently" for p in tree.params or ())
    return False


def _only_catalog(tree, kind: str) -> bool:
    if kind == "CreateStmt":  # (a partition, a child or a foreign key locks another table; LIKE reads one)
        return not (tree.partbound or tree.inhRelations or tree.ofTypename
                    or _references(list(tree.tableElts or ()) + list(getattr(tree, "constraints", None) or ()))
                    or any(type(e).__name__ == "TableLikeClause" for e in tree.tableElts or ()))
    if kind == "CreateSchemaStmt":
        return not tree.schemaElts
    if kind == "CreateFunctionStmt":  # (a SQL body is parse-analysed at CREATE: it locks the tables it names)
        return not (tree.sql_body or any(o.defname == "language" and getattr(o.arg, "sval", "").lower() == "sql"
                                         for o in tree.options or ()))
    if kind == "CreateSeqStmt":  # (OWNED BY opens the table it names)
        return not any(option.defname == "owned_by" for option in tree.options or ())
    return True


def _constants(tree) -> bool:
    """INSERT ... VALUES (or DEFAULT VALUES) of constants only, nothing around it."""
    if tree.onConflictClause or tree.withClause or getattr(tree, "returningList", None) \
            or getattr(tree, "returningClause", None):  # (its name in PostgreSQL 18's parse tree)
        return False
    values = tree.selectStmt
    if values is None:
        return True  # DEFAULT VALUES
    if type(values).__name__ != "SelectStmt" or not values.valuesLists:
        return False
    if any(getattr(values, field, None) for field in (
            "targetList", "fromClause", "whereClause", "groupClause", "havingClause", "windowClause", "sortClause",
            "limitOffset", "limitCount", "lockingClause", "withClause", "larg", "rarg", "distinctClause",
            "intoClause")):
        return False
    return all(_constant(item) for row in values.valuesLists for item in row)


def _constant(node) -> bool:
    kind = type(node).__name__
    if kind in ("A_Const", "SetToDefault"):
        return True
    if kind == "TypeCast":  # (pg_catalog's, or an unqualified name the judge resolves: _cast_types)
        names = [getattr(part, "sval", None) for part in node.typeName.names or ()]
        return ((len(names) == 2 and names[0] == "pg_catalog" or len(names) == 1 and names[0] is not None)
                and not node.typeName.arrayBounds
                and all(type(mod).__name__ == "A_Const" for mod in node.typeName.typmods or ())
                and _constant(node.arg))
    return False


def _cast_types(tree) -> list[str]:
    """The unqualified type names an INSERT of constants casts to (quoted): a planted domain or type may take one."""
    found: list[str] = []

    def walk(node) -> None:
        if type(node).__name__ == "TypeCast":
            names = [part.sval for part in node.typeName.names]
            if len(names) == 1:
                found.append(_quoted(names[0]))
            walk(node.arg)

    values = tree.selectStmt
    for row in (values.valuesLists or ()) if values is not None else ():
        for item in row:
            walk(item)
    return found


def _column_types(tree) -> list[str]:
    """A CREATE TABLE's column type names, quoted (no typmods: to_regtype reads the name)."""
    return [".".join(_quoted(part.sval) for part in element.typeName.names) for element in tree.tableElts or ()
            if type(element).__name__ == "ColumnDef" and element.typeName is not None]


def _called(tree) -> list[str]:
    """The names a statement calls: functions, operators, types cast to, operator classes (their last part)."""
    from pglast.visitors import Visitor

    names: list[str] = []

    class Calls(Visitor):
        def visit_FuncCall(self, ancestors, node):
            names.append(node.funcname[-1].sval)

        def visit_A_Expr(self, ancestors, node):
            names.append(node.name[-1].sval)

        def visit_TypeCast(self, ancestors, node):
            names.append(node.typeName.names[-1].sval)

        def visit_IndexElem(self, ancestors, node):
            names.extend(n.sval for n in (node.opclass or ())[-1:])

    Calls()(tree)
    return names


def _references(elements) -> bool:
    """A foreign key among the table elements (constraints, or columns' constraints): it locks the table it names."""
    from pglast import enums

    constraints = [e for e in elements or () if type(e).__name__ == "Constraint"]
    constraints += [c for e in elements or () for c in getattr(e, "constraints", None) or ()]
    return any(c.contype == enums.ConstrType.CONSTR_FOREIGN for c in constraints)
