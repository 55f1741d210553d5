"""Writes and reads of a whole table in the transaction of an earlier statement of the same file that locked it
(ALTER TABLE and its RENAME, LOCK TABLE, CREATE TRIGGER, DROP INDEX, CREATE TABLE ... REFERENCES, CREATE POLICY): the
lock is held until COMMIT, so every row the statement touches is touched while the application waits. risks.py finds
them with the rest; `seen.altered` (table key -> the lock held) says which tables the file's transaction (a
transactional file, or a BEGIN ... COMMIT block of a non-transactional one) has locked so far.

An UPDATE or DELETE (of the table, a view of it, or a partition of a locked parent) is refused unless it touches a
bounded few rows: a top-level `key = constant` / `key IN (constants)` on every column of a unique index of its own (a
`LIMIT` batch shape is no bound here: all its batches would run under the lock). `WHERE region IS NULL` or `WHERE
id > 0` may match every row: refused like no WHERE. A CREATE TABLE AS / SELECT INTO / INSERT ... SELECT reading a
locked table, or an INSERT ... SELECT into one, is refused the same way (unless LIMITed); a DO block cannot be judged.
"""

from __future__ import annotations

from migrator.postgres.risk_kinds import ACCESS_EXCLUSIVE, BLOCKS, Risk

# LOCK TABLE's modes by number (lockdefs.h); from SHARE up the application's writes wait.
_MODES = {5: "SHARE", 6: "SHARE ROW EXCLUSIVE", 7: "EXCLUSIVE", 8: ACCESS_EXCLUSIVE}


def lock_taken(tree, live, seen, name) -> bool:
    """Note the tables a statement of the file's transaction locks until COMMIT (LOCK TABLE, CREATE TRIGGER, DROP
    INDEX, CREATE TABLE ... REFERENCES, CREATE/ALTER POLICY) and the tables a CREATE VIEW reads; True if it is one."""
    from pglast import ast, enums

    if isinstance(tree, ast.LockStmt):
        mode = _MODES.get(tree.mode)
        for relation in tree.relations or ():
            if mode in BLOCKS:
                hold(seen, live.key(name(relation)), mode, "LOCK TABLE")
    elif isinstance(tree, ast.CreateTrigStmt):
        hold(seen, live.key(name(tree.relation)), "SHARE ROW EXCLUSIVE", "CREATE TRIGGER")
    elif isinstance(tree, ast.DropStmt) and tree.removeType == enums.ObjectType.OBJECT_INDEX and not tree.concurrent:
        for parts in tree.objects or ():  # (the index's table: ACCESS EXCLUSIVE until COMMIT)
            index = [p.sval for p in parts]
            for table in live.table_of_index((index[0] if len(index) > 1 else None, index[-1])):
                hold(seen, live.key(table), ACCESS_EXCLUSIVE, "DROP INDEX")
    elif isinstance(tree, ast.CreateStmt):
        for table in {name(c.pktable) for c in _nodes(tree, (ast.Constraint,)) if c.pktable is not None}:
            hold(seen, live.key(table), "SHARE ROW EXCLUSIVE", "CREATE TABLE ... REFERENCES")
    elif isinstance(tree, (ast.CreatePolicyStmt, ast.AlterPolicyStmt)):
        hold(seen, live.key(name(tree.table)), ACCESS_EXCLUSIVE, "CREATE POLICY"
             if isinstance(tree, ast.CreatePolicyStmt) else "ALTER POLICY")
    elif isinstance(tree, ast.ViewStmt):
        seen.views[live.key(name(tree.view))] = [name(r) for r in _nodes(tree.query, (ast.RangeVar,))]
    else:
        return False
    return True


def hold(seen, key, lock: str, by: str) -> None:
    """The file's transaction holds `lock` on the table from here (the strongest one taken counts)."""
    held = seen.altered.get(key)
    if held is None or held[0] != ACCESS_EXCLUSIVE:
        seen.altered[key] = (lock, by)


def under_lock(tree, line: int, live, seen, name):
    """The whole-table writes and reads of `tree` on a table this transaction has locked (through a view of it or
    a partition of it too); a DO block there cannot be judged."""
    from pglast import ast

    if isinstance(tree, ast.DoStmt):
        for key, held in list(seen.altered.items()):
            yield Risk(line, key, f"DO block in the transaction of an earlier {held[1]} of the table cannot be judged "
                                  "(its statements are not read) and", "may write every row of", held[0], "update")
        return
    for write in _nodes(tree, (ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
        held, table = _held(name(write.relation), live, seen)
        if held is None or seen.is_new(table, live) or _bounded(write, live, table):
            continue
        what = "UPDATE" if isinstance(write, ast.UpdateStmt) else "DELETE" if isinstance(write, ast.DeleteStmt) \
            else "MERGE"
        if what == "MERGE":
            what, does = "MERGE (it may match every row)", "may write every row of"
        elif write.whereClause is None or _every_row(write.whereClause):
            what, does = what + (" without WHERE" if write.whereClause is None else " of every row"), \
                "writes every row of"
        else:
            what, does = what + " whose WHERE is no bounded batch (it may match every row)", "may write every row of"
        yield Risk(line, table, f"{what} in the transaction of an earlier {held[1]} of the table", does, held[0],
                   "update")
    if isinstance(tree, ast.InsertStmt) and tree.selectStmt is not None and tree.selectStmt.valuesLists is None \
            and tree.selectStmt.limitCount is None:
        held, table = _held(name(tree.relation), live, seen)
        if held is not None and not seen.is_new(table, live):
            yield Risk(line, table, f"INSERT ... SELECT into it in the transaction of an earlier {held[1]} of the table",
                       "may write any number of rows into", held[0], "update")
    for query in _copies(tree):
        for relation in _nodes(query, (ast.RangeVar,)):
            table = name(relation)
            held = seen.altered.get(live.key(table))
            if held is not None and not seen.is_new(table, live) and query.limitCount is None:
                yield Risk(line, table, f"a copy of its rows (CREATE TABLE AS / INSERT ... SELECT) in the transaction "
                                        f"of an earlier {held[1]} of the table", "reads every row of", held[0], "read")


def _held(table, live, seen):
    """(the lock the transaction holds on what writing `table` takes, the table whose rows are written): its own,
    else that of the table a view of the file's or the live database reads, or of a partition's parent."""
    held = seen.altered.get(live.key(table))
    if held is not None:
        return held, table
    bases = [(base, True) for base in seen.views.get(live.key(table), ())] or live.bases(table)
    for base, view in bases:
        held = seen.altered.get(live.key(base))
        if held is not None:
            return held, base if view else table
    return None, table


def _copies(tree) -> list:
    """The SELECTs whose rows a statement stores: CREATE TABLE AS, SELECT INTO, INSERT ... SELECT."""
    from pglast import ast

    if isinstance(tree, ast.CreateTableAsStmt) and isinstance(tree.query, ast.SelectStmt):
        return [tree.query]
    if isinstance(tree, ast.SelectStmt) and tree.intoClause is not None:
        return [tree]
    if isinstance(tree, ast.InsertStmt) and isinstance(tree.selectStmt, ast.SelectStmt) \
            and tree.selectStmt.valuesLists is None:
        return [tree.selectStmt]
    return []


def _nodes(tree, kinds) -> list:
    from pglast.visitors import Visitor

    found = []

    class Finder(Visitor):
        def visit(self, _ancestors, node):
            if isinstance(node, kinds):
                found.append(node)

    Finder()(tree)
    return found


def _bounded(write, live, table) -> bool:
    """A bounded few rows: `key = constant` / `key IN (constants)` (top-level AND) on every column of a unique index
    of the live table (a composite one too). A batch bound (`id IN (SELECT id ... LIMIT n)`) is none here: under the lock
    every batch runs in the same transaction, so the lock is held for all of them."""
    from pglast import ast, enums

    if getattr(write, "whereClause", None) is None:  # (a MERGE has none: its join decides)
        return False
    where = write.whereClause
    conditions = where.args if isinstance(where, ast.BoolExpr) and where.boolop == enums.BoolExprType.AND_EXPR \
        else [where]
    found = live.table(table)
    keys = set()  # the columns given one or a listed few constant values
    for condition in conditions:
        if not isinstance(condition, ast.A_Expr) or not isinstance(condition.lexpr, ast.ColumnRef) \
                or not isinstance(condition.lexpr.fields[-1], ast.String):
            continue
        equal = condition.kind == enums.A_Expr_Kind.AEXPR_OP and [n.sval for n in condition.name] == ["="] \
            and isinstance(condition.rexpr, (ast.A_Const, ast.ParamRef))
        listed = condition.kind == enums.A_Expr_Kind.AEXPR_IN and isinstance(condition.rexpr, (list, tuple)) \
            and all(isinstance(item, ast.A_Const) for item in condition.rexpr)
        if equal or listed:
            keys.add(condition.lexpr.fields[-1].sval)
    return bool(keys and found and live.unique_within(found[0], sorted(keys)))


def _every_row(where) -> bool:
    """A WHERE that is a constant true (`WHERE true`, `WHERE 1 = 1`): every row."""
    from pglast import ast

    if isinstance(where, ast.A_Const):
        return getattr(where.val, "boolval", False) is True
    if isinstance(where, ast.TypeCast):
        return str(getattr(getattr(where.arg, "val", None), "sval", "")).lower() in ("t", "true", "on", "1", "yes")
    if isinstance(where, ast.A_Expr) and isinstance(where.lexpr, ast.A_Const) and isinstance(where.rexpr, ast.A_Const):
        from pglast.stream import RawStream

        return where.name[-1].sval == "=" and RawStream()(where.lexpr) == RawStream()(where.rexpr)
    return False
