"""Two descriptions -> readable change lines, one per object ("index idx_x ON hcm_report_metadata added")."""

from __future__ import annotations

from migrator import output
from migrator.schema.model import PER_TABLE, Description, Item, visible

SHORT = 160  # a changed object whose text fits on a line shows old -> new; a longer one says "changed"


def label(item: Item) -> str:
    """How a change names an object: its kind and name, `public.` left out, its table for table parts."""
    if item.kind in PER_TABLE:
        table, part = item.parent_name, _part(item)
        if item.kind == "column":
            return f"column {_short(table)}.{part}"
        return f"{item.kind} {part} ON {_short(table)}"
    if item.kind in ("index", "statistics"):
        return f"{item.kind} {_short(item.name)} ON {_short(item.parent_name)}"
    if item.kind in ("comment", "grant"):
        kind, rest = _object_of(item)
        word = "revoke" if item.ddl.startswith("REVOKE ") else item.kind  # a default privilege taken away
        return f"{word} on {kind} {_short(rest)}"
    return f"{item.kind} {_short(item.name)}"


def _part(item: Item) -> str:
    """A table part's own name: its name without the table's and the dot."""
    return item.name[len(item.parent_name) + 1:]


def _object_of(item: Item) -> tuple[str, str]:
    """("event trigger", "x") of a comment or grant named "event trigger x"."""
    for kind in sorted({"materialized view", "event trigger"}, key=len, reverse=True):
        if item.name.startswith(kind + " "):
            return kind, item.name[len(kind) + 1:]
    kind, _, rest = item.name.partition(" ")
    return kind, rest


def _short(name: str) -> str:
    return name.replace("public.", "", 1) if name.startswith("public.") else name.replace(" ON public.", " ON ")


def _essence(item: Item) -> str:
    """The part of the text that can change, without the object's own name where it leads."""
    if item.kind == "column":
        return item.ddl[len(_part(item)) + 1:]
    return item.ddl


def diff(old: Description, new: Description) -> list[str]:
    """What changed from old to new, one line per object, in the order schema.sql lists them."""
    differing = [key for key in old.items.keys() | new.items.keys() if old.items.get(key) != new.items.get(key)]
    lines = []
    for key in sorted(differing):  # only these: a large schema with one change compares fast
        before, after = old.items.get(key), new.items.get(key)
        if before is None:
            lines.append(f"{label(after)} added")
        elif after is None:
            lines.append(f"{label(before)} dropped")
        elif _essence(before) != _essence(after):  # a column's position alone: see _column_order
            lines.append(_changed(before, after))
    # Column order can only have changed in a table one of whose columns differs (position is part of a column).
    tables = {item.parent_name for key in differing for item in (old.items.get(key), new.items.get(key))
              if item is not None and item.kind == "column"}
    # (output.visible too: a bidi control or line separator in a quoted name, a role's say, prints escaped)
    return [output.visible(visible(line)) for line in lines + _column_order(old, new, tables)]


def _changed(before: Item, after: Item) -> str:
    if before.kind == "trigger" and _trigger_definition(before) == _trigger_definition(after):
        return f"{label(after)} {_trigger_state(after)}"
    old, new = _essence(before), _essence(after)
    if before.kind == "table":  # options, one per line: the lines that differ
        old_lines, new_lines = old.split("\n"), new.split("\n")
        old = "; ".join(line for line in old_lines if line and line not in new_lines)
        new = "; ".join(line for line in new_lines if line and line not in old_lines)
    elif before.kind != "column":
        old, new = _differing_words(old, new)
    if "\n" not in old + new and max(len(old), len(new)) <= SHORT:
        return f"{label(after)}: {old or '(nothing)'} -> {new or '(nothing)'}"
    return f"{label(after)} changed"


def _trigger_definition(item: Item) -> str:
    return item.ddl.split("\n", 1)[0]


def _trigger_state(item: Item) -> str:
    """A trigger's ENABLE/DISABLE state (its second line, if any), as a change says it."""
    state = item.ddl.split("\n", 1)[1] if "\n" in item.ddl else ""
    if not state:
        return "enabled"
    if " DISABLE TRIGGER " in state:
        return "disabled"
    return "set to " + ("ENABLE ALWAYS" if " ENABLE ALWAYS " in state else "ENABLE REPLICA")


def _differing_words(old: str, new: str, context: int = 2) -> tuple[str, str]:
    """The two texts from shortly before the first word where they differ."""
    a, b = old.split(" "), new.split(" ")
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    start = max(0, start - context)
    return " ".join(a[start:]).strip(), " ".join(b[start:]).strip()


def _column_order(old: Description, new: Description, tables: set[str]) -> list[str]:
    """Same columns in a different order (a table rebuilt) changes the text; say so (of `tables`)."""
    def orders(d: Description) -> dict[str, list[str]]:
        found: dict[str, list[Item]] = {}
        for item in d.items.values():
            if item.kind == "column" and item.parent_name in tables:
                found.setdefault(item.parent_name, []).append(item)
        return {t: [i.name for i in sorted(items, key=lambda i: i.position)] for t, items in found.items()}

    before, after = orders(old), orders(new)
    lines = []
    for table in sorted(before.keys() & after.keys()):
        common = [c for c in before[table] if c in after[table]]
        if common != [c for c in after[table] if c in before[table]]:
            lines.append(f"table {_short(table)}: column order changed")
    return lines


def summary(lines: list[str], limit: int = 3) -> str:
    """One line: the count and the first few changes."""
    if not lines:
        return "no changes"
    shown = "; ".join(lines[:limit]) + (f"; and {len(lines) - limit} more" if len(lines) > limit else "")
    return f"{len(lines)} change{'s' if len(lines) != 1 else ''}: {shown}"
