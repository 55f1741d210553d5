"""What earlier pending statements change that decides whether a later one rewrites or scans a table, read from
their text because the live catalog does not have it yet (attack24g): a domain's DEFAULT (CREATE DOMAIN ...
DEFAULT, inherited from its base domain when it has none; ALTER DOMAIN ... SET / DROP DEFAULT), an index with an
expression or a WHERE and a validated CHECK (a later binary-coercible type change of a column they name builds /
checks them again) and their DROP (the safe pattern: drop, change the type, build / add NOT VALID again), and the new
name a RENAME TO / SET SCHEMA gives a table, a domain or type or a schema (attack24h: one map, Seen.aliases, of the
names pending statements give -> the live object; the old name no longer resolves); a domain is noted by (schema,
name) (attack24j: domain_key, pending_domain). Functions: risks_functions. Kept in risks.Seen; risks.py and
risks_types.py ask here.
"""

from __future__ import annotations

from typing import NamedTuple

from migrator.postgres import risks_path


def _trees(text: str) -> list:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return []


def read_domain_default(tree, seen) -> None:
    """Note the DEFAULT a pending CREATE DOMAIN (its own, else its base domain's as it is now: PostgreSQL copies it)
    or ALTER DOMAIN ... SET / DROP DEFAULT gives a domain: the functions it calls, or ("live", base) to read from the
    live catalog."""
    from pglast import ast, enums

    if isinstance(tree, ast.CreateDomainStmt):
        own = [c.raw_expr for c in tree.constraints or () if c.contype == enums.ConstrType.CONSTR_DEFAULT]
        base = [n.sval for n in live_type(seen, tree.typeName).names]
        at, name = domain_key(base, seen)  # (a pending base domain: by its name, the schemas where known)
        noted = [v for k, v in seen.domain_defaults.items() if k[1] == name and (k[0] == at or None in (k[0], at))]
        seen.domain_defaults[domain_key([n.sval for n in tree.domainname], seen)] = (
            functions_called(own[-1]) if own else noted[-1] if noted else ("live", base))
    elif isinstance(tree, ast.AlterDomainStmt) and tree.subtype == "T":
        seen.domain_defaults[domain_key([n.sval for n in tree.typeName], seen)] = (
            functions_called(tree.def_) if tree.def_ else set())


def domain_key(names: list[str], seen) -> tuple:
    """The key a pending statement notes a domain under: (schema, name); an unqualified name's schema is the file's
    search_path's first (Seen.schema), or None: the live search_path's first (pending_domain)."""
    return names[-2] if len(names) > 1 else seen.schema, names[-1]


def pending_domain(noted: dict, names: list[str], live, seen) -> tuple[list, bool]:
    """(what `noted` (by domain_key) holds of the domain `names` names, whether the live domain of that name counts
    too): qualified, the noted one of that schema, else the live one; unqualified, the one of the search_path's first
    schema (where the file's CREATE put it), else any noted of that name in another schema and the live one (which
    the server finds first is not followed: each counts)."""
    first = lambda schema: schema or (live.path[0] if live.path else "public")  # noqa: E731
    schema = first(names[-2] if len(names) > 1 else seen.schema)
    same = [value for (at, name), value in noted.items() if name == names[-1] and first(at) == schema]
    if same or len(names) > 1:
        return same[-1:], not same
    return [value for (_, name), value in noted.items() if name == names[-1]], True


def domain_default_calls(type_name, live, seen) -> set[tuple]:
    """The functions the DEFAULT of the domain `type_name` names calls, after the pending statements (none when it is
    no domain or has no DEFAULT)."""
    names = [n.sval for n in type_name.names]
    values, live_too = pending_domain(seen.domain_defaults, names, live, seen)
    calls = set(live.domain_default_functions(names)) if live_too else set()
    for found in values:
        calls |= live.domain_default_functions(found[1]) if isinstance(found, tuple) else found
    return calls


class Op(NamedTuple):
    """An operator an expression applies: its function is evaluated (attack24k 1)."""

    schema: str | None
    name: str


class Cast(NamedTuple):
    """A cast an expression makes to `target` (a type's names, an array's element's): its function, if any, is
    evaluated. `source`: the pg_catalog type of the value cast (a constant's), or None: any."""

    source: str | None
    target: tuple


# A_Expr kinds whose name is no operator's: the operators the server applies for them
_IMPLIED = {"BETWEEN": (">=", "<="), "NOT BETWEEN": ("<", ">"), "BETWEEN SYMMETRIC": (">=", "<="),
            "NOT BETWEEN SYMMETRIC": ("<", ">")}


def functions_called(node) -> set[tuple]:
    """What an expression evaluates that a function does: the functions it calls (schema or None, name, argument
    count or None: VARIADIC's unknown), the operators it applies (Op) and the casts it makes (Cast)."""
    from pglast.visitors import Visitor

    names: set[tuple] = set()

    class Calls(Visitor):
        def visit_FuncCall(self, _ancestors, call):
            parts = [n.sval for n in call.funcname]
            names.add((parts[-2] if len(parts) > 1 else None, parts[-1],
                       None if call.func_variadic else len(call.args or ())))

        def visit_A_Expr(self, _ancestors, expr):
            parts = [n.sval for n in expr.name]
            for name in _IMPLIED.get(parts[-1], parts[-1:]):
                names.add(Op(parts[-2] if len(parts) > 1 else None, name))

        def visit_CaseExpr(self, _ancestors, case):
            if case.arg is not None:  # (CASE x WHEN v: x = v)
                names.add(Op(None, "="))

        def visit_TypeCast(self, _ancestors, cast):
            names.update(assigned(cast.arg, cast.typeName))

    Calls()(node)
    return names


def assigned(value, type_name) -> set:
    """The cast of `value` to `type_name` (a TypeCast's, or a DEFAULT's to its column's type: an assignment cast),
    none for a string literal or NULL (read by the type's input function once, when parsed)."""
    from pglast import ast

    source = None
    if isinstance(value, ast.A_Const):
        if value.isnull or isinstance(value.val, ast.String):
            return set()
        source = {ast.Integer: "int4", ast.Float: "numeric", ast.Boolean: "bool"}.get(type(value.val))
    names = tuple(n.sval for n in type_name.names)
    if isinstance(value, ast.TypeCast) and tuple(n.sval for n in value.typeName.names) == names and bool(
            value.typeName.arrayBounds) == bool(type_name.arrayBounds):
        return set()  # (a value cast to the column's type already: `DEFAULT 'x'::citext`)
    names = names[:-1] + (names[-1] + "%TYPE",) if type_name.pct_type else names  # (not followed: found nowhere)
    if source and not type_name.arrayBounds and names in (("pg_catalog", source), (source,)):
        return set()  # (no cast at all)
    return {Cast(source, names)}


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


GONE = risks_path.GONE  # an alias's value: a pending RENAME TO / SET SCHEMA took the name away


class Shadowed(str):
    """The name of the domain (live, or made by an earlier pending CREATE DOMAIN) that a pending RENAME TO / SET
    SCHEMA moved away before a pending CREATE DOMAIN took its old name: what is noted under the bare name is the new
    domain's, so the old one's is kept under this (equal to no plain name)."""

    def __eq__(self, other):
        return isinstance(other, Shadowed) and str.__eq__(self, other)

    def __hash__(self):
        return hash((Shadowed, str(self)))


def shadow(seen, name: str, noted) -> None:
    """A pending CREATE DOMAIN `name`: the names the pending renames moved away from it keep meaning the old object,
    and what `noted` (dicts by domain_key) holds of the old one is kept apart (attack24i 2: "new" belongs to the
    object, not to its name)."""
    for key, to in list(seen.aliases.items()):
        if key[0] == "type" and to is not GONE and not isinstance(to[1], Shadowed) and to[1] == name:
            seen.aliases[key] = (to[0], Shadowed(name))
            for found in noted:
                for at in [k for k in found if k[1] == name and (k[0] == to[0] or None in (k[0], to[0]))]:
                    found[(at[0], Shadowed(name))] = found.pop(at)


def move(seen, kind: str, old, new, to, gone: bool = True) -> None:
    """A pending RENAME TO / SET SCHEMA: `new` (a key of `kind`) names the live object `to` from here on; `old`
    names nothing (unless `gone` is False: a domain's SET SCHEMA, noted by schema and name)."""
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


def read_moves(text: str, seen) -> None:
    """A pending ALTER DOMAIN / TYPE / SCHEMA ... RENAME TO, or a domain's or type's SET SCHEMA (a function's:
    risks_functions)."""
    from pglast import ast, enums

    kinds = enums.ObjectType
    for tree in _trees(text):
        if isinstance(tree, ast.RenameStmt) and tree.renameType == kinds.OBJECT_SCHEMA:
            move(seen, "schema", tree.subname, tree.newname, seen.aliases.get(("schema", tree.subname), tree.subname))
        elif (isinstance(tree, ast.RenameStmt) and tree.renameType in (kinds.OBJECT_DOMAIN, kinds.OBJECT_TYPE)
              or isinstance(tree, ast.AlterObjectSchemaStmt) and tree.objectType in (kinds.OBJECT_DOMAIN,
                                                                                     kinds.OBJECT_TYPE)):
            names = [n.sval for n in tree.object]
            old = (names[-2] if len(names) > 1 else None, names[-1])
            renamed = isinstance(tree, ast.RenameStmt)
            to = [n.sval for n in live_type(seen, ast.TypeName(names=tree.object)).names]
            move(seen, "type", old, (old[0], tree.newname) if renamed else (tree.newschema, old[1]),
                 (to[-2] if len(to) > 1 else None, to[-1]), gone=renamed)
