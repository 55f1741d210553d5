"""Which statements the lock probe bounds by the clock while it is blind (retry.Probe), and which it names as
having taken the lock the application waited on (lock_waiters.py; while it sees, what every statement of a try
holds is watched): every one that may take a lock the application's queries wait on, decided from PostgreSQL's own
parse of it (pglast), never from a word in its text. Blind, the probe cannot tell a lock wait from work, so it bounds all of them, DO blocks, CALLs and
anything it does not know included, except:

- data changes and queries (their row lock waits each bounded by lock_timeout, blocking only the rows' users),
  SET / SHOW / transaction control, VALIDATE CONSTRAINT (SHARE UPDATE EXCLUSIVE: blocks no query), CONCURRENTLY
  statements (REFRESH MATERIALIZED VIEW CONCURRENTLY: EXCLUSIVE, which no read waits on);
- a plain CREATE TABLE (a new table: nobody waits on it; one that is a partition, inherits or references another
  table locks that one, and is bounded);
- a statement on a table created earlier in the same run (no application query uses a table the run just made),
  or named by the file's `-- accept-rewrite:` marker (the operator accepted that it holds its lock while working).
"""

from __future__ import annotations

_FREE = ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "VariableSetStmt", "VariableShowStmt",
         "TransactionStmt", "ExplainStmt", "CreateTableAsStmt", "CreateSeqStmt", "CreateFunctionStmt", "CreateEnumStmt")


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


def _references(elements) -> bool:
    """A foreign key among the table elements (constraints, or columns' constraints): it locks the table it names."""
    from pglast import enums

    constraints = [e for e in elements or () if type(e).__name__ == "Constraint"]
    constraints += [c for e in elements or () for c in getattr(e, "constraints", None) or ()]
    return any(c.contype == enums.ConstrType.CONSTR_FOREIGN for c in constraints)
