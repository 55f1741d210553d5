"""Whether a NOT NULL scans every row: SET NOT NULL, PostgreSQL 18's ADD CONSTRAINT ... NOT NULL, ADD PRIMARY KEY USING
INDEX. No scan when the column is proven NOT NULL: by a validated CHECK (`col IS NOT NULL`, alone or as a top-level AND
conjunct) or NOT NULL constraint, live or validated by an earlier pending statement, and not dropped by one (DROP
CONSTRAINT, DROP NOT NULL: attack24h). risks.py asks here; the live proof is rewrites._Live.not_null_proven.
"""

from __future__ import annotations

from migrator.postgres.risk_kinds import ACCESS_EXCLUSIVE, Risk


def set_not_null(column: str, name, key, line: int, live, seen):
    """ALTER COLUMN ... SET NOT NULL of a live table: a scan unless the column is proven NOT NULL."""
    table = live.table(name)
    if table and not proven(live, table[0], key, seen.live_column(name, column, live), seen):
        yield Risk(line, name, f"ALTER COLUMN {column} SET NOT NULL without a validated CHECK ({column} IS NOT NULL)",
                   "scans", ACCESS_EXCLUSIVE, "not null")


def proven(live, oid: int, key, column: str, seen) -> bool:
    """The live column is NOT NULL with no scan left to do, after the pending VALIDATEs, DROP CONSTRAINTs and DROP NOT
    NULLs of its table."""
    return live.not_null_proven(oid, column, seen.validated.get(key, set()),
                                {name for table, name in seen.dropped_checks if table == key},
                                (key, column) in seen.nullable)


def implicit_not_null(constraint, name, key, line: int, live, seen):
    """A NOT NULL that scans every row unless a validated CHECK (col IS NOT NULL) proves it: PostgreSQL 18's `ADD
    CONSTRAINT nn NOT NULL col` (without NOT VALID) and `ADD PRIMARY KEY USING INDEX` on a column that may be NULL.
    An index neither live nor made by a pending statement cannot be judged: said so, not passed. A NOT NULL
    constraint's name is kept, NOT VALID or not: a later VALIDATE of it proves the column as a CHECK's does."""
    from pglast import enums

    kinds = enums.ConstrType
    if constraint.contype == kinds.CONSTR_NOTNULL:
        columns = [k.sval for k in constraint.keys or ()]
        for column in columns:  # (unnamed: PostgreSQL's own name for it, table_column_not_null)
            seen.checks[(key, constraint.conname or f"{name[1]}_{column}_not_null")] = {column}
        if constraint.skip_validation:
            return
        what = f"ADD {'CONSTRAINT ' + constraint.conname + ' ' if constraint.conname else ''}NOT NULL {{}}"
    elif constraint.contype == kinds.CONSTR_PRIMARY and constraint.indexname:
        columns = seen.indexes.get((key, constraint.indexname))
        table = live.table(name)
        if columns is None and table is not None:
            columns = live.index_columns(table[0], constraint.indexname)
        what = f"ADD PRIMARY KEY USING INDEX {constraint.indexname} (an implied SET NOT NULL {{}})"
        if not columns:
            yield Risk(line, name, what.format("of columns that cannot be judged: its index was not found"), "may scan",
                       ACCESS_EXCLUSIVE, "not null")
            return
    else:
        return
    table = live.table(name)
    for column in columns:
        live_column = seen.live_column(name, column, live)
        if column in seen.not_null.get(key, set()) or table is None \
                or proven(live, table[0], key, live_column, seen):
            continue
        yield Risk(line, name, what.format(f"{column} without a validated CHECK ({column} IS NOT NULL)"), "scans",
                   ACCESS_EXCLUSIVE, "not null")
    seen.not_null.setdefault(key, set()).update(columns)  # (NOT NULL from here on: a later SET NOT NULL reads nothing)
