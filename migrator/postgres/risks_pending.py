"""What earlier pending statements change that decides whether a later one rewrites or scans a table, read from
their text because the live catalog does not have it yet (attack24g): a function's volatility (CREATE FUNCTION,
ALTER FUNCTION / ROUTINE ... VOLATILE), a domain's DEFAULT (CREATE DOMAIN ... DEFAULT, inherited from its base domain
when it has none; ALTER DOMAIN ... SET / DROP DEFAULT), an index with an expression or a WHERE and a validated CHECK
(a later binary-coercible type change of a column they name builds / checks them again) and their DROP (the safe
pattern: drop, change the type, build / add NOT VALID again), and the new name a RENAME TO / SET SCHEMA gives a
table, a domain or type, a function or a schema (attack24h: one map, Seen.aliases, of the names pending statements
give -> the live object; the old name no longer resolves). Kept in risks.Seen; risks.py and risks_types.py ask here.
"""

from __future__ import annotations

from migrator.postgres import risks_path


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
            shadow(seen, "function", tree.funcname[-1].sval, [seen.functions])
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
        base = [n.sval for n in live_type(seen, tree.typeName).names]
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


def not_null_columns(expr) -> set[str]:
    """The columns a CHECK's expression proves NOT NULL: `col IS NOT NULL`, or a top-level AND conjunct of it."""
    from pglast import ast, enums

    if isinstance(expr, ast.BoolExpr) and expr.boolop == enums.BoolExprType.AND_EXPR:
        return set().union(*(not_null_columns(arg) for arg in expr.args))
    if (isinstance(expr, ast.NullTest) and expr.nulltesttype == enums.NullTestType.IS_NOT_NULL
            and isinstance(expr.arg, ast.ColumnRef) and len(expr.arg.fields) == 1):
        return {expr.arg.fields[0].sval}
    return set()


def check_proves(definition: str, column: str) -> bool:
    """A CHECK as the catalog prints it (pg_get_constraintdef) proves `column` NOT NULL."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return column in not_null_columns(parse_sql(f"ALTER TABLE t ADD {definition}")[0].stmt.cmds[0].def_.raw_expr)
    except (ParseError, AttributeError, IndexError):
        return False


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


GONE = object()  # an alias's value: a pending RENAME TO / SET SCHEMA took the name away


class Shadowed(str):
    """The name of the domain (live, or made by an earlier pending CREATE DOMAIN) that a pending RENAME TO / SET
    SCHEMA moved away before a pending CREATE DOMAIN took its old name: what is noted under the bare name is the new
    domain's, so the old one's is kept under this (equal to no plain name)."""

    def __eq__(self, other):
        return isinstance(other, Shadowed) and str.__eq__(self, other)

    def __hash__(self):
        return hash((Shadowed, str(self)))


def shadow(seen, kind: str, name: str, noted) -> None:
    """A pending CREATE DOMAIN / FUNCTION `name` (kind "type" / "function"): the names the pending renames moved away
    from it keep meaning the old object, and what `noted` (dicts by bare name) holds of the old one is kept apart
    (attack24i 2: "new" belongs to the object, not to its name)."""
    moved = False
    for key, to in list(seen.aliases.items()):
        bare = to if to is GONE or kind == "function" else to[1]
        if key[0] == kind and bare is not GONE and not isinstance(bare, Shadowed) and bare == name:
            seen.aliases[key], moved = Shadowed(name) if kind == "function" else (to[0], Shadowed(name)), True
    for found in noted if moved else ():
        if name in found:
            found[Shadowed(name)] = found.pop(name)


def move(seen, kind: str, old, new, to, gone: bool = True) -> None:
    """A pending RENAME TO / SET SCHEMA: `new` (a key of `kind`) names the live object `to` from here on; `old`
    names nothing (unless `gone` is False: a function's old name may still name an overload)."""
    if gone:
        seen.aliases[(kind, old)] = GONE
    seen.aliases[(kind, new)] = to


def set_schema(tree, live, seen) -> None:
    """A pending ALTER TABLE ... SET SCHEMA: later statements name the live table by its new schema."""
    if tree.relation is not None and tree.newschema:
        written = (tree.relation.schemaname or None, tree.relation.relname)
        move(seen, "table", live.key(written), live.key((tree.newschema, tree.relation.relname)),
             seen.live_name(written, live))


class New(tuple):
    """A table's name resolved to the table a pending CREATE TABLE makes (attack24i 2: "new" belongs to the object,
    not to a name: a live table renamed away is not new when its old name is created again). Equal to no plain name,
    so what is noted by table key (CHECKs, NOT NULL proofs, locks held) of the new table is not the live one's."""

    def __eq__(self, other):
        return isinstance(other, New) and tuple.__eq__(self, other)

    def __hash__(self):
        return hash((New, tuple(self)))


class Live(tuple):
    """A table's name resolved to a live table (or to none: an empty name)."""


def catalog(seen, names) -> list:
    """Tables the live catalog names: live ones (on plan --impact's scratch database, where pending statements ran
    already, a name as written: resolved by live_table)."""
    return [Live(name) if seen.follow else name for name in names]


def live_table(seen, name, live):
    """The table a name means after the pending renames of it or of its schema, marked New or Live (none: a name
    taken away, unless a pending statement creates a table of that name again). Resolved names stay as they are."""
    if isinstance(name, (New, Live)):
        return name
    created = risks_path.made(live, seen, name)
    found = seen.aliases.get(("table", live.key(name))) if seen.follow else None
    if found is None:
        schema = seen.aliases.get(("schema", name[0]), name[0]) if name[0] and seen.follow else name[0]
        found = GONE if schema is GONE else New(name) if created else Live((schema, name[1]))
    if found is GONE:
        return New(name) if created else Live((name[0], ""))
    return found if isinstance(found, (New, Live)) else Live(found)


def live_type(seen, type_name):
    """The TypeName as the live catalog (or a pending CREATE DOMAIN) knows it: the pending renames of it or of its
    schema followed (a name taken away names an empty type, which nothing has)."""
    import copy

    from pglast import ast

    if not seen.follow:
        return type_name
    names = [n.sval for n in type_name.names]
    schema, name = (names[-2] if len(names) > 1 else None), names[-1]
    found = seen.aliases.get(("type", (schema, name)))
    if found is None:  # (renamed unqualified, named qualified: or the other way round)
        found = next((to for (kind, key), to in seen.aliases.items() if kind == "type" and key[1] == name
                      and None in (key[0], schema)), (schema, name))
    if found is not GONE and found[0]:
        found = (seen.aliases.get(("schema", found[0]), found[0]), found[1])
    if found is GONE or found[0] is GONE:
        found = (None, "")
    if found == (schema, name):
        return type_name
    moved = copy.copy(type_name)
    moved.names = tuple(ast.String(sval=n) for n in found if n is not None)
    return moved


def live_function(seen, name: str) -> str:
    return seen.aliases.get(("function", name), name) if seen.follow else name


def read_moves(text: str, seen) -> None:
    """A pending ALTER DOMAIN / TYPE / FUNCTION / ROUTINE / PROCEDURE / SCHEMA ... RENAME TO, or a domain's or
    type's SET SCHEMA (a function is found by its name alone: its SET SCHEMA changes nothing the judge reads)."""
    from pglast import ast, enums

    kinds = enums.ObjectType
    for tree in _trees(text):
        if isinstance(tree, ast.RenameStmt) and tree.renameType == kinds.OBJECT_SCHEMA:
            move(seen, "schema", tree.subname, tree.newname, seen.aliases.get(("schema", tree.subname), tree.subname))
        elif isinstance(tree, ast.RenameStmt) and tree.renameType in (kinds.OBJECT_FUNCTION, kinds.OBJECT_ROUTINE,
                                                                       kinds.OBJECT_PROCEDURE):
            old = tree.object.objname[-1].sval
            move(seen, "function", old, tree.newname, live_function(seen, old), gone=False)
        elif (isinstance(tree, ast.RenameStmt) and tree.renameType in (kinds.OBJECT_DOMAIN, kinds.OBJECT_TYPE)
              or isinstance(tree, ast.AlterObjectSchemaStmt) and tree.objectType in (kinds.OBJECT_DOMAIN,
                                                                                     kinds.OBJECT_TYPE)):
            names = [n.sval for n in tree.object]
            old = (names[-2] if len(names) > 1 else None, names[-1])
            renamed = isinstance(tree, ast.RenameStmt)
            to = [n.sval for n in live_type(seen, ast.TypeName(names=tree.object)).names]
            move(seen, "type", old, (old[0], tree.newname) if renamed else (tree.newschema, old[1]),
                 (to[-2] if len(to) > 1 else None, to[-1]), gone=renamed)
