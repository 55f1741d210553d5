"""Which statements the lock probe bounds by the clock while it is blind (retry.Probe), and which it names as
having taken the lock the application waited on (lock_waiters.py; while it sees, what every statement of a try
holds is watched): every one that may take a lock the application's queries wait on, decided from PostgreSQL's own
parse of it (pglast), never from a word in its text. Blind, the probe cannot tell a lock wait from work, so it bounds all of them, DO blocks, CALLs and
anything it does not know included, except:

- inserts and queries (their row lock waits each bounded by lock_timeout), but one calling a function of the
  database's own (`SELECT retype()`, `INSERT ... SELECT f()`: its body may run any DDL) is bounded, and so are an
  UPDATE / DELETE / MERGE of an existing table and a SELECT ... FOR UPDATE (their row locks, kept to the COMMIT,
  are what the application's writes of those rows wait on);
  SET / SHOW / transaction control, VALIDATE CONSTRAINT (SHARE UPDATE EXCLUSIVE: blocks no query), CONCURRENTLY
  statements (REFRESH MATERIALIZED VIEW CONCURRENTLY: EXCLUSIVE, which no read waits on);
- a plain CREATE TABLE (a new table: nobody waits on it; one that is a partition, inherits or references another
  table locks that one, and is bounded);
- a statement on a table created earlier in the same run (no application query uses a table the run just made),
  or named by the file's `-- accept-rewrite:` marker (the operator accepted that it holds its lock while working).
"""

from __future__ import annotations

_FREE = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "VariableSetStmt", "VariableShowStmt",
         "TransactionStmt", "ExplainStmt", "CreateTableAsStmt", "CreateSeqStmt", "CreateFunctionStmt", "CreateEnumStmt")


_ROWS = ("UpdateStmt", "DeleteStmt", "MergeStmt")  # (an existing table's rows locked until the try ends)
_DATA = ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CreateTableAsStmt", "ExplainStmt")


def _name(relation) -> str:
    return relation.relname.lower() if relation is not None else ""


def created(text: str) -> set[str]:
    """The tables a statement creates (their names, unqualified)."""
    if "create" not in text.lower():  # (cheap: most statements are not parsed twice)
        return set()
    return {_name(tree.relation) for tree in _trees(text) if type(tree).__name__ == "CreateStmt"}


def bounded(text: str, exempt=frozenset()) -> bool:
    """The statement may take a lock the application waits on (see the module), `exempt` the tables it may work
    on unbounded (created in this run, or accepted by the file's marker)."""
    trees = _trees(text)
    return trees is None or any(_takes(tree, exempt) for tree in trees)


def query(text: str) -> bool:
    """The statement is a query (a SELECT): bounded only for the functions it calls, so what the application waits
    on may as well be an earlier statement's lock (lock_waiters.py words it so). Asked of a bounded one only."""
    trees = _trees(text)
    return bool(trees) and all(type(tree).__name__ == "SelectStmt" for tree in trees)


def _trees(text: str) -> list | None:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return None  # (not ours to judge: bounded)


def _takes(tree, exempt) -> bool:
    from pglast import enums

    kind = type(tree).__name__
    if kind in _ROWS and _name(tree.relation) not in exempt:  # its row locks: the application's writes wait on them
        return True
    if kind in _DATA:  # a function of the database's own, wherever the statement calls it, may run any DDL
        return _calls_own_function(tree) or kind == "SelectStmt" and bool(tree.lockingClause)
    if kind in _FREE:
        return False
    if kind == "AlterTableStmt":  # (on an exempt table still bounded where it locks another: a foreign key, INHERIT)
        if _name(tree.relation) in exempt:
            return any(cmd.subtype == enums.AlterTableType.AT_AddInherit or _references([cmd.def_])
                       for cmd in tree.cmds or ())
        return any(cmd.subtype != enums.AlterTableType.AT_ValidateConstraint for cmd in tree.cmds or ())
    if _name(getattr(tree, "relation", None)) in exempt:
        return False
    if kind == "CreateStmt":
        return bool(tree.partbound or tree.inhRelations or _references(tree.tableElts))
    if kind in ("IndexStmt", "DropStmt"):
        return not tree.concurrent
    if kind == "RefreshMatViewStmt":  # CONCURRENTLY: EXCLUSIVE, which no read of the view waits on
        return not tree.concurrent
    if kind == "ReindexStmt":
        return not any(p.defname == "concurrently" for p in tree.params or ())
    return True


# Built-in functions a migration's query commonly calls, by their unqualified names: they take no lock the
# application waits on (any other, and any qualified by another schema than pg_catalog, may be the database's own).
_BUILTIN = frozenset(("setval", "nextval", "currval", "set_config", "current_setting", "pg_sleep", "now", "count",
                      "coalesce", "max", "min", "format", "concat", "lower", "upper"))


def _calls_own_function(tree) -> bool:
    """The query calls a function that may be the database's own (a built-in one only by the names above, or
    qualified by pg_catalog)."""
    from pglast.visitors import Visitor

    names = []

    class _Calls(Visitor):
        def visit_FuncCall(self, ancestors, node):
            names.append(tuple(part.sval.lower() for part in node.funcname))

    _Calls()(tree)
    return any(not (name[0] == "pg_catalog" or len(name) == 1 and name[0] in _BUILTIN) for name in names)


def _references(elements) -> bool:
    """A foreign key among the table elements (constraints, or columns' constraints): it locks the table it names."""
    from pglast import enums

    constraints = [e for e in elements or () if type(e).__name__ == "Constraint"]
    constraints += [c for e in elements or () for c in getattr(e, "constraints", None) or ()]
    return any(c.contype == enums.ConstrType.CONSTR_FOREIGN for c in constraints)
