"""What earlier pending statements change that decides whether a later one rewrites or scans a table, read from
their text because the live catalog does not have it yet (attack24g): a function's volatility (CREATE FUNCTION,
ALTER FUNCTION / ROUTINE ... VOLATILE), a domain's DEFAULT (CREATE DOMAIN ... DEFAULT, inherited from its base domain
when it has none; ALTER DOMAIN ... SET / DROP DEFAULT), an index with an expression or a WHERE and a validated CHECK
(a later binary-coercible type change of a column they name builds / checks them again) and their DROP (the safe
pattern: drop, change the type, build / add NOT VALID again), a table's new schema (SET SCHEMA, followed as a RENAME
TO is). Kept in risks.Seen; risks.py and risks_types.py ask here.
"""

from __future__ import annotations


def _trees(text: str) -> list:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return []


def read_function(text: str, seen) -> None:
    """A function a pending statement creates: volatile unless it says IMMUTABLE or STABLE (the default). One it
    makes VOLATILE with ALTER FUNCTION is volatile from then on; one made IMMUTABLE / STABLE is judged as before (an
    overload of the same name may stay volatile): never less."""
    from pglast import ast

    for tree in _trees(text):
        if isinstance(tree, ast.CreateFunctionStmt):
            volatility = [o.arg.sval for o in tree.options or () if o.defname == "volatility"]
            seen.functions[tree.funcname[-1].sval] = (volatility or ["volatile"])[-1] == "volatile"
        elif isinstance(tree, ast.AlterFunctionStmt):
            if [a.arg.sval for a in tree.actions or () if a.defname == "volatility"][-1:] == ["volatile"]:
                seen.functions[tree.func.objname[-1].sval] = True


def read_domain_default(tree, seen) -> None:
    """Note the DEFAULT a pending CREATE DOMAIN (its own, else its base domain's as it is now: PostgreSQL copies it)
    or ALTER DOMAIN ... SET / DROP DEFAULT gives a domain: the functions it calls, or ("live", base) to read from the
    live catalog."""
    from pglast import ast, enums

    if isinstance(tree, ast.CreateDomainStmt):
        own = [c.raw_expr for c in tree.constraints or () if c.contype == enums.ConstrType.CONSTR_DEFAULT]
        base = [n.sval for n in tree.typeName.names]
        seen.domain_defaults[tree.domainname[-1].sval] = (
            functions_called(own[-1]) if own else seen.domain_defaults.get(base[-1], ("live", base)))
    elif isinstance(tree, ast.AlterDomainStmt) and tree.subtype == "T":
        seen.domain_defaults[tree.typeName[-1].sval] = functions_called(tree.def_) if tree.def_ else set()


def domain_default_calls(type_name, live, seen) -> set[str]:
    """The functions the DEFAULT of the domain `type_name` names calls, after the pending statements (none when it is
    no domain or has no DEFAULT)."""
    names = [n.sval for n in type_name.names]
    found = seen.domain_defaults.get(names[-1], ("live", names))
    return live.domain_default_functions(found[1]) if isinstance(found, tuple) else found


def functions_called(node) -> set[str]:
    """The names of the functions an expression calls (qualified ones by their last part)."""
    from pglast.visitors import Visitor

    names: set[str] = set()

    class Calls(Visitor):
        def visit_FuncCall(self, _ancestors, call):
            names.add(call.funcname[-1].sval)

    Calls()(node)
    return names


def column_refs(node) -> set[str]:
    """The columns an expression names (by their last part)."""
    from pglast import ast
    from pglast.visitors import Visitor

    names: set[str] = set()

    class Refs(Visitor):
        def visit_ColumnRef(self, _ancestors, ref):
            if isinstance(ref.fields[-1], ast.String):
                names.add(ref.fields[-1].sval)

    Refs()(node)
    return names


def index(tree, table, live, seen) -> None:
    """A pending CREATE INDEX with an expression or a WHERE: a later type change of a column it names (or of any of
    its columns) builds it again. Its columns are kept by their live names (pending RENAME COLUMNs undone)."""
    expressions = [p.expr for p in tree.indexParams if p.expr is not None]
    if not (expressions or tree.whereClause is not None):
        return
    columns = {p.name for p in (*tree.indexParams, *(tree.indexIncludingParams or ())) if p.name}
    for node in (*expressions, tree.whereClause):
        columns |= column_refs(node) if node is not None else set()
    indexes = seen.rebuilt.setdefault(live.key(table), {})
    indexes[tree.idxname or f"(unnamed {len(indexes) + 1})"] = {seen.live_column(table, c, live) for c in columns}


def check(constraint, table, live, seen) -> None:
    """A pending ADD CONSTRAINT ... CHECK: the live columns it names, for a later type change (checked again on every
    row once validated: added without NOT VALID, or VALIDATEd by a pending statement)."""
    name = constraint.conname or f"(unnamed {len(seen.pending_checks) + 1})"
    seen.pending_checks[(live.key(table), name)] = (
        {seen.live_column(table, c, live) for c in column_refs(constraint.raw_expr)}, not constraint.skip_validation)


def read_drop_index(text: str, seen) -> None:
    """A pending DROP INDEX: a later type change no longer builds it (live or made by a pending statement)."""
    from pglast import ast, enums

    for tree in _trees(text):
        if isinstance(tree, ast.DropStmt) and tree.removeType == enums.ObjectType.OBJECT_INDEX:
            for names in tree.objects:
                name = (names[0].sval if len(names) > 1 else None, names[-1].sval)
                seen.dropped_indexes.add(name)
                for indexes in seen.rebuilt.values():
                    indexes.pop(name[1], None)


def drop_check(key, name: str, seen) -> None:
    """A pending ALTER TABLE ... DROP CONSTRAINT: a later type change no longer checks it (live or pending)."""
    seen.dropped_checks.add((key, name))
    seen.pending_checks.pop((key, name), None)


def dropped_index(row, seen) -> bool:
    """A live index (a row of risks_types._INDEXES: name, table, is a child's, partitioned parent, schema) or the
    partitioned index it is a partition of, that a pending DROP INDEX drops (an unqualified name taken as it)."""
    return any(name in (row[0], row[3]) and dropped_schema in (None, row[4])
               for dropped_schema, name in seen.dropped_indexes)


def retyped(key, column: str, seen) -> tuple[list[str], list[str]]:
    """(validated CHECKs, indexes built again) made by pending statements on table `key` that name live `column`."""
    validated = seen.validated.get(key, set())
    checks = [name for (table, name), (columns, valid) in seen.pending_checks.items()
              if table == key and column in columns and (valid or name in validated)]
    return checks, [name for name, columns in seen.rebuilt.get(key, {}).items() if column in columns]


def set_schema(tree, live, seen) -> None:
    """A pending ALTER TABLE ... SET SCHEMA: later statements name the live table by its new schema."""
    if tree.relation is not None and tree.newschema:
        old = seen.live_name((tree.relation.schemaname or None, tree.relation.relname), live)
        seen.renamed[live.key((tree.newschema, tree.relation.relname))] = old
