"""`plan --impact`'s words on the work behind a lock: catalog only, a scan, or a rewrite, and how long it takes.

The same ALTER TABLE lock can cover an instant catalog change or a pass over every row: SET NOT NULL scans the
table unless a validated CHECK (col IS NOT NULL) proves it, ADD FOREIGN KEY / CHECK scan it unless NOT VALID,
VALIDATE CONSTRAINT scans it (under SHARE UPDATE EXCLUSIVE: the application goes on). Which one a statement is
comes from the rewrite judge (risks.py) asked on the scratch database just before the statement runs there;
rewrites are measured (a new relfilenode, impact.py), and every index of a rewritten table is named: PostgreSQL
rebuilds them all, the primary key too.

The duration of each scan and rewrite is estimated from the live table's size and this scratch server's speed,
measured once per run on a calibration table (scan, index build and rewrite of ~50,000 rows): a table read from
cache, so a cold table on a busy server takes longer; the estimate says the order of magnitude.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from migrator.postgres import risks
from migrator.postgres.rewrites import _Live

CALIBRATION_ROWS = 50_000
_CALIBRATE = [
    # (its types, calls and operators spelled in pg_catalog: the scratch session's path may hold planted ones)
    "CREATE TABLE {t} (id int PRIMARY KEY, a pg_catalog.text, b pg_catalog.timestamptz, c int)",
    f"INSERT INTO {{t}} SELECT g, pg_catalog.md5(g::pg_catalog.text), pg_catalog.now(), g OPERATOR(pg_catalog.%) 100 "
    f"FROM pg_catalog.generate_series(1, {CALIBRATION_ROWS}) g",
    "CREATE INDEX ON {t} (c)",
    "VACUUM ANALYZE {t}",
]
_TABLE = "_hcm_impact_speed"
CONCURRENT = "SHARE UPDATE EXCLUSIVE (reads and writes go on)"
_HEAP = ("SELECT pg_catalog.pg_relation_size(%s::pg_catalog.regclass), "
         "pg_catalog.pg_total_relation_size(%s::pg_catalog.regclass)")
# The indexes of a table, the primary key's first (PostgreSQL rebuilds every one when it rewrites the table). On the
# scratch session (names as its path shows them): pg_catalog's operators and types named.
_INDEXES = """
SELECT i.indexrelid::pg_catalog.regclass::pg_catalog.text, i.indisprimary, i.indisunique
FROM pg_catalog.pg_index i WHERE i.indrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%s::pg_catalog.text)
ORDER BY i.indisprimary DESC, i.indisunique DESC, 1
"""


@dataclass
class Speed:
    """Bytes per second of this server: reading a table (a validating scan), building an index, rewriting."""

    scan: float
    index: float
    rewrite: float

    def seconds(self, work: str, heap: int, total: int) -> float:
        if work == "rewrite":
            return total / self.rewrite
        return heap / (self.index if work == "index" else self.scan)


def calibrate(connection) -> Speed | None:
    """This server's speed, measured on a table made and dropped in the scratch database (autocommit)."""
    autocommit, connection.autocommit = connection.autocommit, True
    try:
        with connection.cursor() as cur:
            for statement in _CALIBRATE:
                cur.execute(statement.format(t=_TABLE))
            cur.execute(_HEAP, (_TABLE, _TABLE))
            heap, total = cur.fetchone()
            timed = []
            for statement in (f"ALTER TABLE {_TABLE} ADD CHECK (a IS NOT NULL)", f"CREATE INDEX ON {_TABLE} (a)",
                              f"ALTER TABLE {_TABLE} ALTER COLUMN c TYPE bigint"):
                started = time.perf_counter()
                cur.execute(statement)
                timed.append(max(time.perf_counter() - started, 1e-4))
            cur.execute(f"DROP TABLE {_TABLE}")
        return Speed(heap / timed[0], heap / timed[1], total / timed[2])
    except Exception:  # no estimate is better than a failed report (e.g. no CREATE on the scratch schema)
        connection.rollback() if not connection.autocommit else None
        return None
    finally:
        connection.autocommit = autocommit


@dataclass
class Work:
    """One pass over a table's rows behind a statement's lock: a validating scan, an index build, or a rewrite."""

    kind: str  # scan | index | validate | rewrite | reindex (indexes rebuilt, the table's rows kept)
    table: str
    lock: str = ""
    oid: int = 0  # on the scratch database
    indexes: list = field(default_factory=list)  # a rewrite's: every index of the table (all are rebuilt)
    rows: int | None = None  # live
    heap: int | None = None
    total: int | None = None
    seconds: float | None = None  # estimated from the live size and the scratch server's speed

    _WORDS = {"scan": "scans {t} to validate, under {lock}", "index": "reads {t} to build the index, under {lock}",
              "validate": "scans {t} to validate, under {lock}", "rewrite": "rewrites {t}",
              "reindex": "reads {t} to rebuild its index(es) {indexes}, under {lock}"}

    def __str__(self) -> str:
        size = ("new: empty on the live database" if self.total is None else
                f"~{risks.rows_text(self.rows)} rows, {risks.size_text(self.total)}" if self.rows is not None
                else risks.size_text(self.total))
        text = self._WORDS[self.kind].format(t=f"{self.table} ({size})", lock=self.lock, indexes=", ".join(self.indexes))
        if self.kind == "rewrite":
            text += (f" and rebuilds its {len(self.indexes)} index(es) {', '.join(self.indexes)}" if self.indexes
                     else " (it has no index)")
        if self.seconds is not None:
            text += f": {duration(self.seconds)} at the scratch server's measured speed"
        return text

    def to_json(self) -> dict:
        return {"work": self.kind, "table": self.table, "lock": self.lock or None, "rebuilds": self.indexes,
                "live_rows": self.rows, "live_bytes": self.total, "estimated_seconds": self.seconds}


def work_before(cur, text: str, line: int, schema: str | None, seen) -> tuple[bool, list[Work]]:
    """(parsed, work): what the statement will scan or build, read on the scratch database before it runs (a
    statement the judge reads and that does none of it is catalog only); rewrites are measured afterwards."""
    from migrator.postgres import server_statements

    parsed, found = False, []
    for part in server_statements.parts_of(text, line):  # (each statement the server parses out of the text)
        seen.read(part.text)
        trees = risks.parse(part.text)
        if trees:
            parsed = True
            found += _work(cur, trees, part.line, schema, seen)
    return parsed, found


def _work(cur, trees, line: int, schema: str | None, seen) -> list[Work]:
    from pglast import ast, enums

    found = []
    live = _Live(cur.connection, schema, 0, sizes=False, seen=seen)
    for tree in trees:
        for risk in risks.risks(tree, line, live, seen):
            if risk.does in ("scans", "builds an index on") and live.table(risk.table):
                oid, table = live.table(risk.table)[:2]
                found.append(Work("scan" if risk.does == "scans" else "index", table, risk.lock, oid=oid))
        table = live.table(risks._name(tree.relation)) if hasattr(tree, "relation") and tree.relation else None
        if not table:
            continue
        if isinstance(tree, ast.IndexStmt) and tree.concurrent:
            found.append(Work("index", table[1], CONCURRENT, oid=table[0]))
        elif isinstance(tree, ast.AlterTableStmt) and any(
                c.subtype == enums.AlterTableType.AT_ValidateConstraint for c in tree.cmds):
            found.append(Work("validate", table[1], CONCURRENT, oid=table[0]))
    live.cursor.close()
    return found


def renewed(before: dict, after: dict, existing: dict) -> list[int]:
    """The relations (oids, of `before`: oid -> (name, kind, relfilenode)) that got a new file: a rewritten table's
    and its indexes', and an index dropped and created again under its name (a type change's, the primary key's)."""
    now = {name: node for name, _kind, node in after.values()}
    return [oid for oid, (name, kind, node) in before.items() if oid in existing and (
        after[oid][2] != node if oid in after else kind in ("i", "I") and now.get(name, node) != node)]


def under_held(work: list[Work], held: dict, strength: list[str]) -> None:
    """A scan that blocks nobody by itself, after an earlier statement of the same transaction took a stronger lock
    on its table: it runs under that one (VALIDATE in the file that added the constraint)."""
    for w in work:
        mode = held.get(w.oid)
        if w.lock == CONCURRENT and mode and strength.index(mode) > strength.index("SHARE UPDATE EXCLUSIVE"):
            w.lock = f"{mode}, held by this transaction since an earlier statement"


def rewrite(cur, table: str) -> Work:
    """A rewrite of `table` (measured: a new relfilenode), with every index it rebuilds."""
    return Work("rewrite", table, indexes=indexes(cur, table))


_LIVE = """
SELECT c.reltuples::bigint, pg_catalog.pg_relation_size(c.oid), pg_catalog.pg_total_relation_size(c.oid)
FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%s::pg_catalog.text)::pg_catalog.oid
"""


def in_schema(relation: str, schema: str) -> str:
    """A scratch relation's name (regclass text: unqualified when on the scratch's search_path) qualified with
    `schema` unless it names its own; a dot inside double quotes is part of a name."""
    quoted = False
    for char in relation:
        if char == '"':
            quoted = not quoted
        elif char == "." and not quoted:
            return relation
    return '"' + schema.replace('"', '""') + '".' + relation


def estimate(live, statements, speed: Speed | None, schema: str) -> None:
    """Each scan's and rewrite's live size (its name looked up in `schema`), and its duration at the scratch
    server's speed."""
    with live.cursor() as cur:
        for work in (w for s in statements for w in s.work):
            cur.execute(_LIVE, (in_schema(work.table, schema),))
            row = cur.fetchone()
            if row:
                work.rows, work.heap, work.total = (row[0] if row[0] >= 0 else None), row[1], row[2]
                if speed is not None:
                    work.seconds = speed.seconds(work.kind, work.heap, work.total)


def indexes(cur, table: str) -> list[str]:
    """Every index of `table` (rebuilt by its rewrite), the primary key's marked."""
    cur.execute(_INDEXES, (table,))
    return [name + (" (primary key)" if primary else " (unique)" if unique else "") for name, primary, unique in
            cur.fetchall()]


def duration(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"~{seconds:.0f} s"
    return f"~{seconds / 60:.0f} min" if seconds < 7200 else f"~{seconds / 3600:.1f} h"
