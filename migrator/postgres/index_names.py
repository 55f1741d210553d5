"""The name the server gives an unnamed CREATE INDEX, read off the statement alone (no temporary copy of the table,
no write: status's read-only session and a role without TEMP may ask): PostgreSQL's ChooseIndexName over
ChooseIndexColumnNames, whose name for an expression column is FigureColname's (`lower(x)` is `lower`, `x::text`
is `x`, `(a + b)` is `expr`). An expression whose name this does not know is not guessed (None)."""

from __future__ import annotations

NAMEDATALEN = 64


def chosen(tree, relname: str) -> str | None:
    """The server's name for the unnamed build `tree` (a pglast IndexStmt) on the table `relname`, before a number
    when taken (index_definition.named_like); None when not known or too long to guess (the server truncates)."""
    columns = []
    for param in [*(tree.indexParams or ()), *(tree.indexIncludingParams or ())]:
        name = param.indexcolname or param.name or (_figured(param.expr) if param.expr is not None else None)
        if name is None:
            return None
        columns.append(_untaken(name, columns))
    if not columns:
        return None
    name = f"{relname}_{'_'.join(columns)}_idx"  # (a UNIQUE index is no constraint: `_idx` as well)
    return name if len(name.encode()) < 60 else None  # (longer ones the server truncates: not guessed)


def _untaken(name: str, columns: list[str]) -> str:
    """A column's name numbered until no earlier column has it (`lower`, `lower1`: ChooseIndexColumnNames)."""
    candidate, number = name, 0
    while candidate in columns:
        number += 1
        candidate = f"{name}{number}"
    return candidate


def _figured(expr) -> str | None:
    """FigureIndexColname: the expression's name, `expr` when it has none (strength 0)."""
    found = _strength(expr)
    if found is None:
        return None
    return found[1] if found[0] else "expr"


# Expressions the server names nothing (strength 0, so `expr`): operators, constants, boolean tests.
_NAMELESS = ("A_Const", "BoolExpr", "NullTest", "BooleanTest", "ParamRef")
# Expressions named after what they are (strength 2), as functions are.
_AS_FUNCTIONS = {"A_ArrayExpr": "array", "RowExpr": "row", "CoalesceExpr": "coalesce", "GroupingFunc": "grouping"}


def _strength(expr) -> tuple[int, str | None] | None:
    """FigureColnameInternal: (strength, name); None for a node whose naming is not known here."""
    from pglast import ast, enums

    kind = type(expr).__name__
    if isinstance(expr, ast.ColumnRef):
        fields = [f.sval for f in expr.fields if isinstance(f, ast.String)]
        return (2, fields[-1]) if fields else (0, None)
    if isinstance(expr, ast.A_Indirection):
        fields = [f.sval for f in expr.indirection if isinstance(f, ast.String)]
        return (2, fields[-1]) if fields else _strength(expr.arg)
    if isinstance(expr, ast.FuncCall):
        return 2, expr.funcname[-1].sval
    if isinstance(expr, ast.A_Expr):
        return (2, "nullif") if expr.kind == enums.A_Expr_Kind.AEXPR_NULLIF else (0, None)
    if isinstance(expr, ast.TypeCast):
        inner = _strength(expr.arg)
        if inner is None or inner[0] > 1:
            return inner
        return 1, expr.typeName.names[-1].sval
    if isinstance(expr, ast.CollateClause):
        return _strength(expr.arg)
    if isinstance(expr, ast.CaseExpr):
        inner = _strength(expr.defresult) if expr.defresult is not None else (0, None)
        return inner if inner is None or inner[0] > 1 else (1, "case")
    if isinstance(expr, ast.MinMaxExpr):
        return 2, "greatest" if expr.op == enums.MinMaxOp.IS_GREATEST else "least"
    if kind in _AS_FUNCTIONS:
        return 2, _AS_FUNCTIONS[kind]
    return (0, None) if kind in _NAMELESS else None
