"""The description of a schema as plain data: objects keyed by (kind, name), rendered as sorted DDL text.

Top-level objects (tables, views, functions, ...) each render as one block; their parts (columns,
constraints, indexes, triggers, comments, grants) render inside their parent's block. The same
Description is rendered into schema.sql, stored as the live-drift snapshot and compared by diff.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Callable

# Order of the sections in the text, and of the parts inside a block.
TOP_KINDS = ("schema", "extension", "type", "function", "sequence", "table", "view", "materialized view",
             "event trigger", "default privileges")
PART_KINDS = ("column", "constraint", "index", "trigger", "rule", "policy", "statistics", "comment", "grant")
# Kinds whose name is unique only within their table: the name is "table.part".
PER_TABLE = {"column", "constraint", "trigger", "rule", "policy"}
# A table's options: these lines say how CREATE reads; lines starting with ALTER follow the statement.
TABLE_WORDS = ("UNLOGGED", "FOREIGN")

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
QUOTED = re.compile(r'"(?:[^"]|"")*"')
VISIBLE = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(line: str) -> str:
    """A line safe to print anywhere (a plan's `--` comment included): control characters escaped."""
    return CONTROL.sub(lambda m: VISIBLE.get(m.group(), f"\\x{ord(m.group()):02x}"), line)


def unicode_identifier(quoted: str) -> str:
    """'"a<newline>b"' -> 'U&"a\\000Ab"': the same identifier, on one line, still valid SQL."""
    inner = quoted[1:-1].replace("\\", "\\\\")
    return 'U&"' + CONTROL.sub(lambda m: f"\\{ord(m.group()):04X}", inner) + '"'


def escape_control_names(description: "Description") -> "Description":
    """Quoted names holding a newline or another control character, written U&"..." everywhere
    (names, parents, DDL), so no name can start a line of its own in schema.sql, status or plan."""
    if not CONTROL.search(" ".join(f"{item.name} {item.parent}" for item in description.items.values())):
        return description  # the common case, told by one pass over all the names
    bad = {m.group() for item in description.items.values() for text in (item.name, item.parent)
           for m in QUOTED.finditer(text) if CONTROL.search(m.group())}
    if not bad:
        return description

    def fix(text: str) -> str:
        for quoted in sorted(bad, key=len, reverse=True):
            text = text.replace(quoted, unicode_identifier(quoted))
        return text

    return Description({(i.kind, fix(i.name)): Item(i.kind, fix(i.name), fix(i.ddl), fix(i.parent), i.position)
                        for i in description.items.values()})


@dataclass(frozen=True)
class Item:
    kind: str
    name: str  # qualified identity, unique within its kind
    ddl: str  # the object's text; for a column its line, for a table its options
    parent: str = ""  # "kind name" of the enclosing top-level object; empty for a top-level one
    position: int = 0  # columns: their place in the table; otherwise 0

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    @property
    def parent_name(self) -> str:
        return self.parent.split(" ", 1)[1] if self.parent else ""


def top_key(kind: str, name: str) -> str:
    return f"{kind} {name}"


DATABASE_WIDE = ("extension", "event trigger")


def database_wide(item: Item) -> bool:
    """An object of the whole database, no schema's: extensions (their grants too), event triggers, and
    default privileges not tied to a schema."""
    if item.kind == "default privileges":
        return " IN SCHEMA " not in item.name
    return item.kind in DATABASE_WIDE or item.parent.split(" ", 1)[0] in ("extension", "event")


def belongs_to(item: Item, schema: str) -> bool:
    """Whether an object is in `schema` (a tenant's: a lower-case identifier, written quoted only when a keyword)."""
    for name in (schema, f'"{schema}"'):
        if (item.kind == "schema" and item.name == name) or item.parent == f"schema {name}":
            return True
        if item.name.startswith(f"{name}.") or item.parent_name.startswith(f"{name}."):
            return True
        if item.kind == "default privileges" and f" IN SCHEMA {name} " in item.name:
            return True
    return False


@dataclass
class Description:
    items: dict[tuple[str, str], Item] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        self.items[item.key] = item

    def only(self, keep: Callable[[Item], bool]) -> "Description":
        return Description({k: i for k, i in self.items.items() if keep(i)})

    def without_tables(self, names: set[str]) -> "Description":
        """A copy without these tables (qualified names) and their parts, e.g. another tool's `alembic_version`."""
        parents = {top_key("table", n) for n in names}
        return Description({k: i for k, i in self.items.items()
                            if i.parent not in parents and not (i.kind == "table" and i.name in names)})

    @property
    def text(self) -> str:
        return render(self)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def to_json(self) -> list[dict]:
        return [asdict(self.items[k]) for k in sorted(self.items)]

    @classmethod
    def from_json(cls, rows: list[dict]) -> "Description":
        return cls({(r["kind"], r["name"]): Item(r["kind"], r["name"], r["ddl"], r.get("parent", ""), r.get("position", 0))
                    for r in rows})

    def __eq__(self, other) -> bool:
        return isinstance(other, Description) and self.items == other.items


def render(description: Description) -> str:
    parts: dict[str, list[Item]] = {}
    tops = []
    for item in description.items.values():
        if item.parent:
            parts.setdefault(item.parent, []).append(item)
        else:
            tops.append(item)
    tops.sort(key=lambda i: (TOP_KINDS.index(i.kind), i.name))
    blocks = [_block(top, sorted(parts.pop(top_key(top.kind, top.name), []), key=_part_order)) for top in tops]
    # Parts whose parent is not described (cannot happen from the catalog; kept visible, not lost).
    blocks += [_block(None, sorted(items, key=_part_order)) for _, items in sorted(parts.items())]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _part_order(item: Item) -> tuple:
    return PART_KINDS.index(item.kind), item.position, item.name


def _block(top: Item | None, parts: list[Item]) -> str:
    lines = []
    if top is not None and top.kind == "table":
        inner = [p.ddl for p in parts if p.kind in ("column", "constraint")]
        body = "(\n    " + ",\n    ".join(inner) + "\n)" if inner else "()"
        options = [o for o in top.ddl.split("\n") if o]
        words = "".join(f"{w} " for w in TABLE_WORDS if w in options)
        clauses = [o for o in options if o not in TABLE_WORDS and not o.startswith("ALTER ")]
        lines.append(f"CREATE {words}TABLE {top.name} {body}" + "".join(f"\n{c}" for c in clauses) + ";")
        lines += [o for o in options if o.startswith("ALTER ")]
        parts = [p for p in parts if p.kind not in ("column", "constraint")]
    elif top is not None:
        lines.append(top.ddl)
    lines += [p.ddl for p in parts]
    return "\n".join(lines)
