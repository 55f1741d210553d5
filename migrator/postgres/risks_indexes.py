"""What a CREATE INDEX without CONCURRENTLY builds under SHARE (writes wait), by what PostgreSQL does with it:
nothing when IF NOT EXISTS names a relation that exists (skipped) or when it is `ON ONLY` a partitioned table (catalog
only: the index stays INVALID until each partition's, built CONCURRENTLY, is attached); only the table's own rows on
an inheritance parent (CREATE INDEX never reaches inheritance children); on a partitioned table, every partition's
(CONCURRENTLY is refused there: the safe pattern is ON ONLY, then each partition's). risks.py asks here."""

from __future__ import annotations

from migrator.postgres import table_sizes
from migrator.postgres.risk_kinds import SHARE, Risk

# The table's kind, whether it has inheritance children, and whether a relation of the index's name exists in its
# schema (where CREATE INDEX puts the index).
_TABLE = """
SELECT c.relkind::pg_catalog.text, n.nspname, c.relname,
  EXISTS (SELECT FROM pg_catalog.pg_inherits h WHERE h.inhparent = c.oid),
  EXISTS (SELECT FROM pg_catalog.pg_class i WHERE i.relname = %(index)s AND i.relnamespace = c.relnamespace)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = %(oid)s
"""


def build(tree, name, line: int, live, seen):
    """CREATE INDEX without CONCURRENTLY on the live table `name`."""
    table = live.table(name)
    row = table and live._rows(_TABLE, {"oid": table[0], "index": tree.idxname or ""})
    kind, schema, relname, children, exists = row[0] if row else ("r", "", "", False, False)
    dropped = any(index == tree.idxname for _schema, index in seen.dropped_indexes)
    if tree.if_not_exists and exists and not dropped:
        return  # skipped by the server ("already exists, skipping")
    if kind == "p":
        if tree.relation.inh:  # (ON ONLY: inh false)
            yield Risk(line, name, "CREATE INDEX on a partitioned table", "builds an index on", SHARE,
                       "partitioned index")
        return
    if kind == "r" and children and not seen.is_loaded(name, live):
        rows, _ = table_sizes.size(live, (table[0], schema, relname, kind), own=True)
        if rows <= live.threshold:
            return  # (its own heap holds the rows it reads)
    yield Risk(line, name, "CREATE INDEX without CONCURRENTLY", "builds an index on", SHARE, "index")
