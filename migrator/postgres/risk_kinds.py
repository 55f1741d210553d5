"""The kinds of risk a statement may carry: the locks, what each blocks, the safe pattern of each kind, the Risk a
statement's part carries (risks.py finds them), and sizes written for people."""

from __future__ import annotations

from dataclasses import dataclass

ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"
SHARE = "SHARE"
SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
BLOCKS = {ACCESS_EXCLUSIVE: "reads and writes wait", SHARE: "writes wait", SHARE_ROW_EXCLUSIVE: "writes wait",
          "EXCLUSIVE": "writes wait"}

# The safe pattern of each kind, one phrase (the README shows each with SQL).
INSTEAD = {
    "default": ("add the column without the default (nullable), fill it with a `-- backfill: batch` UPDATE in a "
                "`-- transactional: false` file, then ALTER COLUMN ... SET DEFAULT"),
    "type": ("add a new column of the new type, backfill it in batches (`-- backfill: batch`), then swap the "
             "columns in a short transaction"),
    "not null": ("ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID, then VALIDATE CONSTRAINT in a later file, "
                 "then SET NOT NULL (no scan once the CHECK is validated)"),
    "foreign key": "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a later file",
    "check": "ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in a later file",
    "update": ("a `-- backfill: batch` UPDATE of bounded batches in a `-- transactional: false` file (the ALTER TABLE in "
               "a file of its own)"),
    "read": ("copy the rows in a file of its own, without the earlier ALTER TABLE / LOCK TABLE / CREATE TRIGGER "
             "(a plain read takes ACCESS SHARE: the application goes on)"),
    "validate": ("VALIDATE CONSTRAINT in a later file, in a statement of its own: in its own transaction it scans "
                 "under SHARE UPDATE EXCLUSIVE (reads and writes go on)"),
    "key": ("CREATE UNIQUE INDEX CONCURRENTLY in a `-- transactional: false` file, then ADD CONSTRAINT ... "
            "PRIMARY KEY / UNIQUE USING INDEX"),
    "index": "CREATE INDEX CONCURRENTLY in a `-- transactional: false` file",
    "partitioned index": ("CREATE INDEX ... ON ONLY the partitioned table (catalog only), then in a "
                          "`-- transactional: false` file CREATE INDEX CONCURRENTLY on each partition and ALTER INDEX "
                          "... ATTACH PARTITION each (CONCURRENTLY is refused on a partitioned table)"),
    "referenced type": ("in the same transaction, DROP CONSTRAINT the foreign key before the type change and ADD it "
                        "again NOT VALID after it; then VALIDATE CONSTRAINT in a later file (or give the referencing "
                        "column the new type first)"),
    "typed table": ("ALTER TABLE ... NOT OF each typed table first (catalog only: a plain table), then change its "
                    "column's type with the safe pattern of ALTER COLUMN TYPE; or a maintenance window"),
    "enforce": ("DROP CONSTRAINT the key and ADD it again enforced but NOT VALID, then VALIDATE CONSTRAINT in a later "
                "file"),
    "not null drop": ("DROP CONSTRAINT the CHECK in a statement of its own after the SET NOT NULL (PostgreSQL runs an "
                      "ALTER TABLE's DROPs before its SET NOT NULL, so the CHECK proves nothing there)"),
    "reindex": "REINDEX TABLE CONCURRENTLY in a `-- transactional: false` file",
    "logged": "there is no online form: schedule it in a maintenance window (or pg_repack for a new tablespace)",
    "vacuum full": "pg_repack (online), or schedule it in a maintenance window",
    "cluster": "pg_repack --order-by (online), or schedule it in a maintenance window",
    "refresh": ("REFRESH MATERIALIZED VIEW CONCURRENTLY (EXCLUSIVE: reads go on; it needs a unique index on the "
                "view)"),
    "expression": ("there is no online form: a plain column filled in batches (`-- backfill: batch`) and kept by a "
                   "trigger, then swapped in a short transaction; or a maintenance window"),
    "attach": ("ADD CONSTRAINT ... CHECK (<the partition bound>) NOT VALID on it, VALIDATE CONSTRAINT in a later "
               "file, then ATTACH PARTITION (no scan once a validated CHECK implies the bound), then drop the CHECK"),
    "attach index": ("CREATE INDEX CONCURRENTLY on the table, matching each index of the parent, in a "
                     "`-- transactional: false` file before the ATTACH PARTITION (it takes them over: no build)"),
    "attach foreign key": ("ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID on the table, as the parent's, VALIDATE "
                           "CONSTRAINT in a later file, then ATTACH PARTITION (it takes it over: no scan)"),
    "default partition": ("ADD CONSTRAINT ... CHECK (NOT (<the new partition's range>)) NOT VALID on the DEFAULT "
                          "partition, VALIDATE CONSTRAINT in a later file, then create or attach the partition (no "
                          "scan once a validated CHECK excludes its range)"),
    "domain column": ("add the column with the domain's base type (nullable), ADD CONSTRAINT ... CHECK (...) NOT "
                      "VALID saying what the domain says, then VALIDATE CONSTRAINT in a later file"),
    "type check": ("in one ALTER TABLE, DROP CONSTRAINT the CHECK, change the type and ADD it again NOT VALID; then "
                   "VALIDATE CONSTRAINT in a later file"),
    "type index": ("DROP INDEX CONCURRENTLY the index first, change the type, then CREATE INDEX CONCURRENTLY it again "
                   "(each in a `-- transactional: false` file)"),
    "domain": ("ALTER DOMAIN ... ADD CONSTRAINT ... NOT VALID, then ALTER DOMAIN ... VALIDATE CONSTRAINT in a later "
               "file, off-peak"),
}


@dataclass
class Risk:
    """One statement's part that rewrites or scans `table` under `lock` (as written in the file)."""

    line: int
    table: tuple[str | None, str]  # (schema or None, name) as written
    what: str  # the subcommand, e.g. "ALTER COLUMN id TYPE bigint"
    does: str  # rewrites | scans | builds an index on
    lock: str
    kind: str  # a key of INSTEAD


def rows_text(rows: int) -> str:
    """1.5 M, 12.0 k, 900: a row count for people."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rows >= size:
            return f"{rows / size:.1f} {unit}"
    return str(max(rows, 0))


def size_text(size: int) -> str:
    """128.0 kB, 1.2 GB: a size for people."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} GB"
