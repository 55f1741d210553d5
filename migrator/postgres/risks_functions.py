"""Which functions a DEFAULT's calls may mean after the pending statements, and whether any is volatile
(attack24j): a function is what PostgreSQL knows it as, (schema, name, argument types), never its bare name, so a
new overload or a function of the same name in another schema is not the live one a call names.

The pending CREATE [OR REPLACE] FUNCTIONs, ALTER FUNCTION / ROUTINE ... VOLATILE, RENAME TO and SET SCHEMA and
ALTER SCHEMA ... RENAME TO are kept in order (Seen.functions) and replayed over the live functions of the names
involved when a call is judged. A call is judged on every function it may mean: qualified, those of that schema;
unqualified, those of every schema (the judge does not follow each way a file may change its search_path: an
overload it cannot decide counts, as the server might pick it), with an argument count that fits. Volatile when
any of them is, or when none is found (a function the judge cannot see: CREATE EXTENSION, a DO block).
"""

from __future__ import annotations

from typing import NamedTuple

# The live functions of some names (procedures are never called in an expression): their input argument types.
_LIVE = """
SELECT n.nspname::pg_catalog.text, p.proname::pg_catalog.text,
  ARRAY(SELECT t.typname::pg_catalog.text FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[])
                   WITH ORDINALITY a(oid, o) JOIN pg_catalog.pg_type t ON t.oid = a.oid ORDER BY a.o),
  p.pronargs - p.pronargdefaults, CASE WHEN p.provariadic <> 0 THEN NULL ELSE p.pronargs END, p.provolatile = 'v'
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname = ANY(%s) AND p.prokind <> 'p'
"""


class Fn(NamedTuple):
    schema: str | None  # None: an unqualified pending CREATE's, in the live search_path's first schema
    name: str
    args: tuple  # the input arguments' type names (an array's as _elem, as pg_type has it)
    least: int  # the arguments a call must give (those without a DEFAULT)
    most: int | None  # the most it may give (None: VARIADIC)
    volatile: bool


def _type(type_name) -> str:
    """A type as pg_type names it (int -> int4: the parser's own mapping); %TYPE: a name no type has."""
    if type_name.pct_type:
        return f"%TYPE {id(type_name)}"
    name = type_name.names[-1].sval
    return "_" + name if type_name.arrayBounds else name


def _ref(objwithargs, seen) -> tuple:
    """(schema or None, name, argument types or None: not given, the file's search_path's first or None)."""
    names = [n.sval for n in objwithargs.objname]
    args = None if objwithargs.args_unspecified else tuple(_type(t) for t in objwithargs.objargs or ())
    return names[-2] if len(names) > 1 else None, names[-1], args, seen.schema


def read(text: str, seen) -> None:
    """Note a pending statement that makes, changes or moves a function (or a schema that holds functions)."""
    from pglast import ast, enums

    from migrator.postgres.risks_pending import _trees

    kinds = enums.ObjectType
    routines = (kinds.OBJECT_FUNCTION, kinds.OBJECT_ROUTINE, kinds.OBJECT_PROCEDURE)
    for tree in _trees(text):
        if isinstance(tree, ast.CreateFunctionStmt) and not tree.is_procedure:
            names = [n.sval for n in tree.funcname]
            inputs = [p for p in tree.parameters or () if p.mode.value in "ibvd"]
            volatility = [o.arg.sval for o in tree.options or () if o.defname == "volatility"]
            fn = Fn(names[-2] if len(names) > 1 else seen.schema, names[-1], tuple(_type(p.argType) for p in inputs),
                    sum(p.defexpr is None for p in inputs), None if any(p.mode.value == "v" for p in inputs)
                    else len(inputs), (volatility or ["volatile"])[-1] == "volatile")
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


def _resolve(ref, fns: list[Fn], live) -> tuple[list[int], bool]:
    """(indexes in `fns` of the functions an ALTER's reference names, certain): a qualified one in its schema, an
    unqualified one in the first schema of pg_catalog and the search_path that has it (when the file changed its
    search_path, only its first schema is known); found in none of them: any of that name, not certain."""
    schema, name, args, first = ref
    found = [i for i, f in enumerate(fns) if f.name == name and (args is None or f.args == args)]
    if schema is not None:
        return [i for i in found if _schema(fns[i], live) == schema], True
    path = ["pg_catalog"] + ([first] if first else [s for s in live.path if s != "pg_catalog"])
    for each in path:
        here = [i for i in found if _schema(fns[i], live) == each]
        if here:
            return here, True
    return found, False  # (none on the path the judge knows of: it may not know the file's; any of them may be it)


def _schema(fn: Fn, live) -> str:
    return fn.schema or (live.path[0] if live.path else "public")


def current(names: set[str], live, seen) -> list[Fn]:
    """The functions named `names` (and those the pending statements renamed) after the pending statements."""
    names = set(names) | {e[1].name if e[0] == "create" else e[1][1] for e in seen.functions if e[0] != "schema"}
    names |= {e[3] for e in seen.functions if e[0] == "move" and e[3]}
    fns = [Fn(*row[:2], tuple(row[2]), *row[3:]) for row in live._rows(_LIVE, (sorted(names),))]
    if not seen.follow:  # plan --impact's scratch database: the catalog has them already
        return fns
    for event in seen.functions:
        if event[0] == "create":  # (a plain CREATE of a name in use fails: whatever was noted there was not)
            new = event[1]._replace(schema=_schema(event[1], live))
            fns = [f for f in fns if (_schema(f, live), f.name, f.args) != (new.schema, new.name, new.args)] + [new]
        elif event[0] == "schema":
            fns = [f._replace(schema=event[2]) if _schema(f, live) == event[1] else f for f in fns]
        else:
            targets, certain = _resolve(event[1], fns, live)
            for i in targets:
                fn = fns[i]._replace(schema=_schema(fns[i], live))
                if event[0] == "volatile":
                    fns[i] = fn._replace(volatile=True)
                elif certain:
                    fns[i] = fn._replace(schema=event[2] or fn.schema, name=event[3] or fn.name)
                else:  # (which one moved is not known: each may be under either name)
                    fns.append(fn._replace(schema=event[2] or fn.schema, name=event[3] or fn.name))
    return fns


def volatile(calls: set[tuple], live, seen) -> str | None:
    """Why `calls` ((schema or None, name, argument count or None)) may give a value per row: "volatile" when a
    function one may call is, "taken as volatile" when the judge finds none a call may mean; None when none may."""
    if not calls:
        return None
    fns = current({name for _, name, _ in calls}, live, seen)
    unknown = []
    for schema, name, count in sorted(calls, key=lambda c: (c[0] or "", c[1], -1 if c[2] is None else c[2])):
        may = [f for f in fns if f.name == name and (schema is None or _schema(f, live) == schema)
               and (count is None or f.least <= count and (f.most is None or count <= f.most))]
        if any(f.volatile for f in may):
            return "volatile"
        if not may:
            unknown.append(f"{schema + '.' if schema else ''}{name}()")
    return f"taken as volatile, {', '.join(unknown)} not found" if unknown else None
