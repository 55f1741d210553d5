"""Which functions a DEFAULT's calls may mean after the pending statements, and whether any is volatile
(attack24j): a function is what PostgreSQL knows it as, (schema, name, argument types), never its bare name, so a
new overload or a function of the same name in another schema is not the live one a call names. An argument type is
known by its schema too (attack24k 2: `vtk(arch.dk)` is not `vtk(public.dk)`), resolved as the server resolves it
(qualified: that schema; unqualified: the first of pg_catalog and the file's search_path that has it, live or made
by a pending CREATE DOMAIN / TYPE; found nowhere: a type no function has, so it replaces none).

The pending CREATE [OR REPLACE] FUNCTIONs, ALTER FUNCTION / ROUTINE ... VOLATILE, RENAME TO and SET SCHEMA and
ALTER SCHEMA ... RENAME TO are kept in order (Seen.functions) and replayed over the live functions of the names
involved when a call is judged. A call is judged on every function it may mean: qualified, those of that schema;
unqualified, those of every schema (the judge does not follow each way a file may change its search_path: an
overload it cannot decide counts, as the server might pick it), with an argument count that fits. Volatile when
any of them is, or when none is found (a function the judge cannot see: CREATE EXTENSION, a DO block).

What else the server evaluates per row for a DEFAULT counts alike (attack24k 1): each function's own argument
DEFAULTs, an operator's function (every operator of that name: live pg_operator.oprcode, or a pending CREATE
OPERATOR's FUNCTION) and a cast's (into the type or the type a domain is over: live pg_cast.castfunc, a pending CREATE
CAST's; of a value of unknown type, the type's input function too). An operator or a type found nowhere is taken as
volatile.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

from migrator.postgres.risks_pending import Cast, Op, functions_called

# The live functions of some names (procedures are never called in an expression): their input argument types
# (schema, name), the argument DEFAULTs' text.
_LIVE = """
SELECT n.nspname::pg_catalog.text, p.proname::pg_catalog.text,
  ARRAY(SELECT ARRAY[tn.nspname::pg_catalog.text, t.typname::pg_catalog.text]
        FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[]) WITH ORDINALITY a(oid, o)
        JOIN pg_catalog.pg_type t ON t.oid = a.oid JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
        ORDER BY a.o),
  p.pronargs - p.pronargdefaults, CASE WHEN p.provariadic <> 0 THEN NULL ELSE p.pronargs END, p.provolatile = 'v',
  pg_catalog.pg_get_expr(p.proargdefaults, 0)
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname = ANY(%s) AND p.prokind <> 'p'
"""
# The schemas that have a type of each of some names
_TYPES = """
SELECT t.typname::pg_catalog.text, n.nspname::pg_catalog.text FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE t.typname = ANY(%s)
"""
# The live operators of a name: their schema, whether their function is volatile
_OPERATORS = """
SELECT n.nspname::pg_catalog.text, p.provolatile = 'v' FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
WHERE o.oprname = %s
"""
# A live type (and those it is a domain over): is a cast into any of them volatile (from `source`, or from any type:
# then its input function counts too)? No row: no such type.
_CASTS = """
WITH RECURSIVE chain(oid, depth) AS (
  SELECT t.oid, 0 FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
  WHERE t.typname = %(name)s AND n.nspname = %(schema)s
  UNION ALL SELECT t.typbasetype, c.depth + 1 FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid
  WHERE t.typtype = 'd' AND c.depth < 100)
SELECT EXISTS (SELECT FROM pg_catalog.pg_cast k JOIN chain ON k.casttarget = chain.oid
               JOIN pg_catalog.pg_proc p ON p.oid = k.castfunc WHERE p.provolatile = 'v'
               AND (%(source)s::pg_catalog.text IS NULL OR k.castsource = pg_catalog.to_regtype(%(source)s)))
  OR %(source)s::pg_catalog.text IS NULL AND EXISTS (
    SELECT FROM chain JOIN pg_catalog.pg_type t ON t.oid = chain.oid
    JOIN pg_catalog.pg_proc p ON p.oid = t.typinput WHERE p.provolatile = 'v')
FROM chain WHERE chain.depth = 0
"""
_IMPLICIT = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_cast k JOIN pg_catalog.pg_proc p ON p.oid = k.castfunc
               WHERE k.castcontext = 'i' AND p.provolatile = 'v')
"""
ANY = "%TYPE"  # an ALTER's argument list naming a type by %TYPE: any overload of the name may be the one
_DEPTH = 10  # argument DEFAULTs calling functions with argument DEFAULTs...: judged this deep, then taken as volatile


_ASKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # live -> {(query, params): rows}


def _asked(live, query: str, params) -> list:
    """A catalog answer that does not change while one `live` judges (nothing runs meanwhile), asked once."""
    answers = _ASKED.setdefault(live, {})
    key = (query, tuple(sorted(params.items())) if isinstance(params, dict) else params)
    if key not in answers:
        answers[key] = live._rows(query, params)
    return answers[key]


class Fn(NamedTuple):
    schema: str | None  # None: an unqualified pending CREATE's, in the live search_path's first schema
    name: str
    args: tuple  # the input arguments' types: (schema, name), an array's as _elem (pending: as written, see path)
    least: int  # the arguments a call must give (those without a DEFAULT)
    most: int | None  # the most it may give (None: VARIADIC)
    volatile: bool
    defaults: frozenset = frozenset()  # what its argument DEFAULTs evaluate (risks_pending.functions_called)
    path: tuple | None = None  # a pending one's: the file's search_path its unqualified argument types resolve on


def _type(type_name) -> tuple:
    """An argument type as written: (schema or None, name as pg_type has it: int -> int4, an array's _elem); %TYPE:
    ANY (the column's type is not followed)."""
    if type_name.pct_type:
        return ANY
    names = [n.sval for n in type_name.names]
    return names[-2] if len(names) > 1 else None, ("_" if type_name.arrayBounds else "") + names[-1]


def _path(seen) -> tuple | None:
    """The file's search_path (None: the live one; ("",): one the judge cannot read, so an unqualified type outside
    pg_catalog is found nowhere)."""
    from migrator.postgres import risks_path

    path = risks_path.now(seen)
    path = path.before if isinstance(path, risks_path.Role) else path
    if path is None or isinstance(path, risks_path.Path):
        return path and tuple(s for s in path if s != "$user")
    return ("",)


def _args(types: list) -> tuple | str:
    return ANY if ANY in types else tuple(types)


def _ref(objwithargs, seen) -> tuple:
    """(schema or None, name, argument types (None: not given; ANY), the file's search_path's first or None, the
    file's search_path or None)."""
    names = [n.sval for n in objwithargs.objname]
    args = None if objwithargs.args_unspecified else _args([_type(t) for t in objwithargs.objargs or ()])
    return names[-2] if len(names) > 1 else None, names[-1], args, seen.schema, _path(seen)


def _named(type_name, seen) -> tuple:
    """A function a CREATE OPERATOR names by its name alone: any overload of it."""
    names = [n.sval for n in type_name.names]
    return names[-2] if len(names) > 1 else None, names[-1], None, seen.schema, _path(seen)


def read(text: str, seen) -> None:
    """Note a pending statement that makes, changes or moves a function (or a schema that holds functions), makes an
    operator, a cast or a type."""
    from pglast import ast, enums

    from migrator.postgres.risks_pending import _trees

    kinds = enums.ObjectType
    routines = (kinds.OBJECT_FUNCTION, kinds.OBJECT_ROUTINE, kinds.OBJECT_PROCEDURE)
    for tree in _trees(text):
        if isinstance(tree, ast.CreateFunctionStmt) and not tree.is_procedure:
            names = [n.sval for n in tree.funcname]
            inputs = [p for p in tree.parameters or () if p.mode.value in "ibvd"]
            volatility = [o.arg.sval for o in tree.options or () if o.defname == "volatility"]
            defaults = frozenset().union(*(functions_called(p.defexpr) for p in inputs if p.defexpr is not None))
            fn = Fn(names[-2] if len(names) > 1 else seen.schema, names[-1], tuple(_type(p.argType) for p in inputs),
                    sum(p.defexpr is None for p in inputs), None if any(p.mode.value == "v" for p in inputs)
                    else len(inputs), (volatility or ["volatile"])[-1] == "volatile", defaults, _path(seen))
            seen.functions.append(("create", fn))
        elif isinstance(tree, ast.AlterFunctionStmt) and [
                a.arg.sval for a in tree.actions or () if a.defname == "volatility"][-1:] == ["volatile"]:
            seen.functions.append(("volatile", _ref(tree.func, seen)))  # (IMMUTABLE / STABLE: judged as before)
        elif isinstance(tree, ast.RenameStmt) and tree.renameType in routines:
            seen.functions.append(("move", _ref(tree.object, seen), None, tree.newname))
        elif isinstance(tree, ast.AlterObjectSchemaStmt) and tree.objectType in routines:
            seen.functions.append(("move", _ref(tree.object, seen), tree.newschema, None))
        elif isinstance(tree, ast.RenameStmt) and tree.renameType == kinds.OBJECT_SCHEMA:
            seen.functions.append(("schema", tree.subname, tree.newname))
        elif isinstance(tree, ast.DefineStmt) and tree.kind == kinds.OBJECT_OPERATOR:
            names = [n.sval for n in tree.defnames]
            function = [d.arg for d in tree.definition or () if d.defname in ("function", "procedure")]
            seen.functions.append(("operator", _named(function[-1], seen) if function else None,
                                   (names[-2] if len(names) > 1 else seen.schema, names[-1])))
        elif isinstance(tree, ast.CreateCastStmt):
            seen.functions.append(("cast", tree.func and _ref(tree.func, seen), _type(tree.targettype),
                                   tree.context == enums.CoercionContext.COERCION_IMPLICIT))
        elif isinstance(tree, (ast.CreateEnumStmt, ast.CreateRangeStmt, ast.CompositeTypeStmt)) or isinstance(
                tree, ast.DefineStmt) and tree.kind == kinds.OBJECT_TYPE:
            seen.functions.append(("type", _type_made(tree, seen)))


def _type_made(tree, seen) -> tuple:
    """(schema, name) of the type a pending CREATE TYPE makes."""
    if hasattr(tree, "typevar"):  # (AS (...): a composite type's name is a RangeVar)
        return tree.typevar.schemaname or seen.schema, tree.typevar.relname
    names = [n.sval for n in (tree.typeName if hasattr(tree, "typeName") else tree.defnames)]
    return names[-2] if len(names) > 1 else seen.schema, names[-1]


class _Types:
    """Argument types resolved as the server does (one catalog read per judged call)."""

    def __init__(self, live, seen, names: set[str]):
        self.live, self.seen, self.where = live, seen, {}
        for name, schema in live._rows(_TYPES, (sorted(names),)):
            self.where.setdefault(name, set()).add(schema)
        pending = [k for k in seen.domains] + [e[1] for e in seen.functions if e[0] == "type"] if seen.follow else []
        for schema, name in pending:
            self.where.setdefault(name, set()).add(schema or self._first())

    def _first(self) -> str:
        return self.live.path[0] if self.live.path else "public"

    def one(self, written, path) -> tuple:
        """(schema, name) of an argument type as written; ("", name): found nowhere (no function has it)."""
        if written == ANY:
            return "", ANY
        schema, name = written
        element = name[1:] if name.startswith("_") and name not in self.where else name
        if schema is not None:
            return schema, name
        for each in ["pg_catalog", *(path if path is not None else self.live.path)]:
            if each in self.where.get(element, ()):
                return each, name
        return "", name

    def args(self, args, path):
        return args if args is None or args == ANY else tuple(self.one(a, path) for a in args)


def _written_types(seen) -> set[str]:
    names = set()
    for event in seen.functions:
        args = event[1].args if event[0] == "create" else event[1][2] if event[0] in (
            "volatile", "move", "operator", "cast") and event[1] else None
        for arg in args if args and args != ANY else ():
            names |= {arg[1], arg[1][1:]} if arg != ANY else set()
    return names


def _resolve(ref, fns: list[Fn], live, types) -> tuple[list[int], bool]:
    """(indexes in `fns` of the functions an ALTER's reference names, certain): a qualified one in its schema, an
    unqualified one in the first schema of pg_catalog and the search_path that has it (when the file changed its
    search_path, only its first schema is known); found in none of them: any of that name, not certain. An argument
    named by %TYPE: every overload of the name, not certain."""
    schema, name, args, first, path = ref
    args = types.args(args, path)
    found = [i for i, f in enumerate(fns) if f.name == name and (args in (None, ANY) or f.args == args)]
    if schema is not None:
        return [i for i in found if _schema(fns[i], live) == schema], args != ANY
    search = ["pg_catalog"] + ([first] if first else [s for s in live.path if s != "pg_catalog"])
    for each in search:
        here = [i for i in found if _schema(fns[i], live) == each]
        if here:
            return here, args != ANY
    return found, False  # (none on the path the judge knows of: it may not know the file's; any of them may be it)


def _schema(fn: Fn, live) -> str:
    return fn.schema or (live.path[0] if live.path else "public")


def current(names: set[str], live, seen) -> list[Fn]:
    """The functions named `names` (and those the pending statements name) after the pending statements."""
    refs = [e[1] for e in seen.functions if e[0] in ("volatile", "move", "operator", "cast") and e[1]]
    names = set(names) | {e[1].name for e in seen.functions if e[0] == "create"} | {r[1] for r in refs}
    names |= {e[3] for e in seen.functions if e[0] == "move" and e[3]}
    fns = [Fn(*row[:2], tuple(tuple(a) for a in row[2]), *row[3:6], _defaults(row[6]))
           for row in live._rows(_LIVE, (sorted(names),))]
    if not seen.follow or not seen.functions:  # (plan --impact's scratch database: the catalog has them already)
        return fns
    types = _Types(live, seen, _written_types(seen))
    at = None  # (schema, name, argument types) -> its index in fns, until a move changes them (one pass per call)
    for event in seen.functions:
        if event[0] != "create":
            at = None
        if event[0] == "create":  # (a plain CREATE of a name in use fails: whatever was noted there was not)
            new = event[1]._replace(schema=_schema(event[1], live), args=types.args(event[1].args, event[1].path))
            at = at if at is not None else {(_schema(f, live), f.name, f.args): i for i, f in enumerate(fns)}
            found = at.setdefault((new.schema, new.name, new.args), len(fns))
            fns[found:found + 1] = [new]  # (replaced; a copy an unsure move left under that key stays: never less)
        elif event[0] == "schema":
            fns = [f._replace(schema=event[2]) if _schema(f, live) == event[1] else f for f in fns]
        elif event[0] in ("volatile", "move"):
            targets, certain = _resolve(event[1], fns, live, types)
            for i in targets:
                fn = fns[i]._replace(schema=_schema(fns[i], live))
                if event[0] == "volatile":
                    fns[i] = fn._replace(volatile=True)
                elif certain:
                    fns[i] = fn._replace(schema=event[2] or fn.schema, name=event[3] or fn.name)
                else:  # (which one moved is not known: each may be under either name)
                    fns.append(fn._replace(schema=event[2] or fn.schema, name=event[3] or fn.name))
    return fns


def _defaults(text: str | None) -> frozenset:
    """What a live function's argument DEFAULTs (as pg_get_expr prints them) evaluate."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return frozenset(functions_called(parse_sql(f"SELECT {text}")[0].stmt)) if text else frozenset()
    except ParseError:
        return frozenset({(None, "(an argument DEFAULT the judge cannot read)", None)})  # (not found: volatile)


def volatile(calls: set[tuple], live, seen, depth: int = 0) -> str | None:
    """Why `calls` (risks_pending.functions_called's) may give a value per row: "volatile" when a function one may
    evaluate is, "taken as volatile" when the judge finds none a call, an operator or a cast may mean; None when
    none may."""
    if not calls:
        return None
    fns = current({c[1] for c in calls if not isinstance(c, (Op, Cast))}, live, seen)
    unknown, defaults = [], set()
    for call in sorted(calls, key=lambda c: (type(c).__name__, str(c))):
        if isinstance(call, (Op, Cast)):
            found = (_operator if isinstance(call, Op) else _cast)(call, fns, live, seen)
            if found is True:
                return "volatile"
            unknown += [found] if found else []
            continue
        schema, name, count = call
        may = [f for f in fns if f.name == name and (schema is None or _schema(f, live) == schema)
               and (count is None or f.least <= count and (f.most is None or count <= f.most))]
        if any(f.volatile for f in may):
            return "volatile"
        if not may:
            unknown.append(f"{schema + '.' if schema else ''}{name}()")
        defaults |= {d for f in may if count is None or count < len(f.args) for d in f.defaults}
    if any(isinstance(c, Op) or not isinstance(c, Cast) and c[2] != 0 for c in calls) and _implicit(fns, live, seen):
        return "taken as volatile, an implicit cast calls a volatile function"  # (an argument's type is not inferred)
    if defaults:  # (an argument a call leaves out: its DEFAULT is evaluated with the call)
        why = volatile(defaults, live, seen, depth + 1) if depth < _DEPTH else "taken as volatile, argument DEFAULTs"
        if why == "volatile" or why and not unknown:
            return why
    return f"taken as volatile, {', '.join(unknown)} not found" if unknown else None


def _implicit(fns: list[Fn], live, seen) -> bool:
    """An implicit cast (live, or a pending CREATE CAST's) calls a volatile function: the server may apply it to any
    argument of a call or an operand of an operator."""
    pending = [e[1] for e in seen.functions if e[0] == "cast" and e[3] and e[1] is not None] if seen.follow else []
    return bool(_asked(live, _IMPLICIT, None)[0][0]) or any(_may_be_volatile(ref, fns, live, seen) for ref in pending)


def _may_be_volatile(ref, fns: list[Fn], live, seen) -> bool | str:
    """A pending operator's / cast's function: True when any it may name is volatile, its name when none is found."""
    targets, _ = _resolve(ref, fns, live, _Types(live, seen, _written_types(seen)))
    return any(fns[i].volatile for i in targets) or (f"{ref[1]}()" if not targets else False)


def _operator(op: Op, fns: list[Fn], live, seen) -> bool | str:
    """True: an operator of that name (in its schema, when named) calls a volatile function; its name when none is
    found; False otherwise."""
    found = [volatile for schema, volatile in _asked(live, _OPERATORS, (op.name,)) if op.schema in (None, schema)]
    for event in seen.functions if seen.follow else ():
        if event[0] == "operator" and event[2][1] == op.name and op.schema in (None, event[2][0] or _first(live)):
            found.append(True if event[1] is None else _may_be_volatile(event[1], fns, live, seen))
    if any(f is True for f in found):
        return True
    return next((f for f in found if f), False) if found else f"operator {op.name}"


def _first(live) -> str:
    return live.path[0] if live.path else "public"


def _cast(cast: Cast, fns: list[Fn], live, seen, depth: int = 0) -> bool | str:
    """True: a cast into the type (or a type it is a domain over) may call a volatile function; the type's name
    when it is found nowhere; False otherwise."""
    from migrator.postgres import risks_pending

    target = cast.target
    found = []
    for event in seen.functions if seen.follow else ():
        if event[0] == "cast" and event[2] != ANY and event[2][1] == target[-1] and event[1] is not None:
            found.append(_may_be_volatile(event[1], fns, live, seen))
    pending, live_too = risks_pending.pending_domain(seen.domains, list(target), live, seen) if seen.follow else (
        [], True)
    for _, base in pending:
        found.append(_cast(Cast(cast.source, tuple(base)), fns, live, seen, depth + 1) if depth < _DEPTH else True)
    made = seen.follow and any(e[0] == "type" and e[1][1] == target[-1] for e in seen.functions)
    where = target[:-1] or ["pg_catalog", *live.path]
    rows = []
    for schema in where:  # (the first schema that has the type: the server's)
        rows = rows or _asked(live, _CASTS, {"name": target[-1], "schema": schema, "source": cast.source})
    found += [rows[0][0]] if rows and live_too else []
    if any(f is True for f in found):
        return True
    if not rows and not pending and not made:
        return f"type {'.'.join(target)}"
    return next((f for f in found if f), False)
