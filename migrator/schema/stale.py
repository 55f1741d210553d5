"""The one line `make schema --check` (and the test suite) says when schema.sql is stale: the objects that differ.

Both texts are split into blocks (one per object, separated by blank lines) named by their first line
(`table public.t`, `function public.f(a integer)`), and compared block by block. Within a block, lines that name a
part (a table's column or constraint, an index, trigger, policy, comment) are compared by that name; the parts that
differ are named only when nothing else in the block differs, otherwise the block is said to have changed.
"""

from __future__ import annotations

import re

HEADER_START = "-- schema.sql:"
BLOCK_STARTS = ("CREATE ", "ALTER DEFAULT PRIVILEGES ", "-- ")
SHOWN = 4  # differences named in the one line
MISSING = "schema.sql is missing: run `make schema` and commit it"

_IDENT = r'(?:"(?:[^"]|"")*"|[^\s."(),;]+)'
NAME = rf"{_IDENT}(?:\.{_IDENT})*"
# CREATE [OR REPLACE] [UNIQUE] KIND WORDS [IF NOT EXISTS] name: describe's identifiers are lower case or quoted,
# so the upper-case words before the name are the kind.
CREATED = re.compile(rf"CREATE (?:OR REPLACE )?(?:UNIQUE )?((?:[A-Z]+ )+)({NAME})")
DEFAULT_PRIVILEGES = re.compile(rf"ALTER DEFAULT PRIVILEGES FOR ROLE ({NAME})(?: IN SCHEMA ({NAME}))? (?:GRANT|REVOKE) "
                                r".* ON ([A-Z]+) (?:TO|FROM) ")
SCHEMA_COMMENT = re.compile(rf"-- (schema {NAME}): ")
PARTS = ((re.compile(rf"    CONSTRAINT ({NAME}) "), "constraint"), (re.compile(rf"    ({NAME}) "), "column"),
         (re.compile(rf"CREATE (?:UNIQUE )?INDEX ({NAME}) "), "index"),
         (re.compile(rf"CREATE (?:CONSTRAINT )?TRIGGER ({NAME}) "), "trigger"),
         (re.compile(rf"CREATE POLICY ({NAME}) "), "policy"),
         (re.compile(rf"COMMENT ON ((?:[A-Z]+ )+)({NAME}(?:\([^)]*\))?) IS "), "comment on"))
TABLE_ONLY = ("constraint", "column")  # indented lines name columns only in a table (a function body indents too)


def stale_summary(committed: str | None, current: str) -> str | None:
    """None when schema.sql (None: missing) is current; else one line naming the objects that differ and how,
    e.g. `table public.t: column region added; view public.v added`."""
    if committed is None:
        return MISSING
    committed, current = committed.replace("\r\n", "\n"), current.replace("\r\n", "\n")  # a CRLF checkout
    if committed == current:
        return None
    old, new = _blocks(committed), _blocks(current)
    changed = [f"{k} added" for k in new.keys() - old.keys()] + [f"{k} removed" for k in old.keys() - new.keys()]
    changed += [line for k in old.keys() & new.keys() if old[k] != new[k] and k != "header"
                for line in _changes(k, old[k], new[k])]
    if not changed:
        changed = (["its header names another last migration"] if old.get("header") != new.get("header")
                   else ["only its blank lines or spacing differ"])
    changed.sort()
    shown = "; ".join(changed[:SHOWN]) + (f"; and {len(changed) - SHOWN} more" if len(changed) > SHOWN else "")
    return f"schema.sql is out of date: {shown}; run `make schema` and commit it"


def _blocks(text: str) -> dict[str, str]:
    """Blocks by the object they describe. A blank line inside a function body does not start a block: only a
    chunk starting like a block (CREATE, ALTER DEFAULT PRIVILEGES, a comment line such as the header) does."""
    found: list[str] = []
    for chunk in text.split("\n\n"):
        if found and not chunk.startswith(BLOCK_STARTS):
            found[-1] += "\n\n" + chunk
        elif chunk.strip():
            found.append(chunk)
    blocks: dict[str, str] = {}
    for block in found:
        block = block.rstrip("\n")  # the file's last block ends in the final newline
        name = _object(block.splitlines()[0])
        blocks[name if name not in blocks else block.splitlines()[0]] = block  # never two objects under one name
    return blocks


def _object(first_line: str) -> str:
    """`table public.t` for `CREATE TABLE public.t (`, a function with its arguments; the line itself otherwise."""
    if first_line.startswith(HEADER_START):
        return "header"
    if found := DEFAULT_PRIVILEGES.match(first_line):
        role, schema, objects = found.groups()
        return f"default privileges of {role}" + (f" in schema {schema}" if schema else "") + f" on {objects.lower()}"
    if found := SCHEMA_COMMENT.match(first_line):
        return found[1]
    if not (found := CREATED.match(first_line)):
        return first_line
    return f"{found[1].strip().lower()} {found[2]}{_arguments(first_line[found.end():])}"


def _arguments(rest: str) -> str:
    """A function's argument list just after its name, parentheses balanced (overloads differ only there)."""
    if not rest.startswith("("):
        return ""
    depth = 0
    for i, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rest[:i + 1]
    return rest


def _parts(block: str) -> tuple[dict[str, str], list[str]]:
    """The named parts of a block (columns, constraints, indexes, comments...) with their lines, and the other lines."""
    is_table = block.startswith(("CREATE TABLE ", "CREATE UNLOGGED TABLE "))
    parts: dict[str, str] = {}
    first, *lines = block.splitlines()
    rest = [first]
    for line in lines:
        found = next(((match, kind) for pattern, kind in PARTS
                      if (is_table or kind not in TABLE_ONLY) and (match := pattern.match(line))), None)
        if found is None:
            rest.append(line)
            continue
        match, kind = found
        name = f"comment on {match[1].strip().lower()} {match[2]}" if kind == "comment on" else f"{kind} {match[1]}"
        parts[name] = parts.get(name, "") + line.rstrip(",")  # the last column has no comma: not a change
    return parts, rest


def _changes(what: str, old: str, new: str) -> list[str]:
    """What changed in one object: its parts added, removed or changed when only they differ; else the object."""
    (before, old_rest), (after, new_rest) = _parts(old), _parts(new)
    if old_rest != new_rest:
        return [f"{what} changed"]
    said = [f"{what}: {part} added" for part in after.keys() - before.keys()]
    said += [f"{what}: {part} removed" for part in before.keys() - after.keys()]
    said += [f"{what}: {part} changed" for part in before.keys() & after.keys() if before[part] != after[part]]
    return said or [f"{what} changed"]
