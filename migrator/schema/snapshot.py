"""The description recorded in the bookkeeping after every change the runner makes, and live drift:
what changed in the database outside migrations since (an emergency index, a hand-edited column).

One row in `_hcm_schema_snapshot`, in the schema that holds yoyo's tables: the description (the
objects as JSON, so a later diff names each change), the sha256 of its text, the last applied
migration, when, by whom and why. Reading it and checking drift write nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from migrator import checksums, output, pg_lock, whoami
from migrator.schema import fingerprint
from migrator.schema.targets import bare
from migrator.tables import MIGRATION_TABLE

if TYPE_CHECKING:  # (the describing code loads where a description is taken or compared: a drift check the
    # catalog's fingerprint answers, a no-op migrate's, never loads it)
    from migrator.schema.model import Description, Item

TABLE = "_hcm_schema_snapshot"
CREATE = """
CREATE TABLE IF NOT EXISTS {schema}.{table} (
    id             BOOLEAN      PRIMARY KEY DEFAULT true CHECK (id),
    description    JSONB        NOT NULL,
    sha256         CHAR(64)     NOT NULL,
    last_migration VARCHAR(255),
    recorded_at    TIMESTAMP    NOT NULL DEFAULT (pg_catalog.now() AT TIME ZONE 'utc'),
    recorded_by    TEXT         NOT NULL,
    reason         TEXT         NOT NULL,
    fingerprint    TEXT
)"""
UPSERT = """
INSERT INTO {schema}.{table} (description, sha256, last_migration, recorded_by, reason) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET description = EXCLUDED.description, sha256 = EXCLUDED.sha256,
    last_migration = EXCLUDED.last_migration, recorded_at = pg_catalog.now() AT TIME ZONE 'utc',
    recorded_by = EXCLUDED.recorded_by, reason = EXCLUDED.reason"""
# A Flyway folder's history (SCHEMA_TABLE) among several in one schema: the top-level objects its migrations
# created or changed. Its drift is limited to those (and their parts): another service's objects are not its.
OWNED = "_hcm_schema_owned"
CREATE_OWNED = """
CREATE TABLE IF NOT EXISTS {schema}.{table} (
    history     VARCHAR(63) PRIMARY KEY,
    objects     JSONB       NOT NULL,
    recorded_at TIMESTAMP   NOT NULL DEFAULT (pg_catalog.now() AT TIME ZONE 'utc'),
    flyway_rank INTEGER
)"""
# flyway_rank: the history's newest installed_rank when the runner last recorded its work; rows after it are another
# tool's (real Flyway on the same history), taken over at the next run (history.take_over).
UPSERT_OWNED = """
INSERT INTO {schema}.{table} (history, objects, flyway_rank) VALUES (%s, %s, %s)
ON CONFLICT (history) DO UPDATE SET objects = EXCLUDED.objects, recorded_at = pg_catalog.now() AT TIME ZONE 'utc',
    flyway_rank = EXCLUDED.flyway_rank"""
# (a table made before it had that column gets it once)
RANK_COLUMN = "ALTER TABLE {schema}.{table} ADD COLUMN IF NOT EXISTS flyway_rank INTEGER"
LAST_MIGRATION = "SELECT migration_id FROM {schema}.{table} ORDER BY applied_at_utc DESC, migration_id DESC LIMIT 1"
# (the fingerprint by name: a table recorded before it had that column reads as NULL)
# (and this session's history, hcm.history, which live_drift reads next: one statement)
READ = ("SELECT sha256, last_migration, recorded_at, recorded_by, reason, "
        "pg_catalog.jsonb_extract_path_text(pg_catalog.to_jsonb(s.*), 'fingerprint'), "
        "pg_catalog.current_setting('hcm.history', true) FROM {schema}.{table} s")


@dataclass
class Snapshot:
    sha256: str
    last_migration: str | None
    recorded_at: datetime
    recorded_by: str
    reason: str
    fingerprint: str | None = field(default=None, repr=False)  # schema/fingerprint.py: of the catalog described so

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "last_migration": self.last_migration,
                "recorded_at": self.recorded_at.isoformat(), "recorded_by": self.recorded_by, "reason": self.reason}


@dataclass
class DriftReport:
    """The live schema against the recorded one. `changes` empty and `recorded` set: no drift."""

    recorded: Snapshot | None
    changes: list[str] = field(default_factory=list)
    live: Description | None = field(default=None, repr=False)  # what was described (None: nothing recorded)

    @property
    def drifted(self) -> bool:
        return bool(self.changes)

    def lines(self) -> list[str]:
        if self.recorded is None:
            return ["schema: no description recorded yet (the next migrate, rollback, mark or accept-drift records one)"]
        since = f"since {self.recorded.reason} at {self.recorded.recorded_at:%Y-%m-%d %H:%M:%S} UTC"
        if not self.changes:
            return [f"schema: as recorded {since} (last migration "
                    f"{output.visible(self.recorded.last_migration or 'none')})"]  # (a history row's id: one line)
        return ([f"schema: DRIFT {since}: {len(self.changes)} change(s) made outside migrations"]
                + [f"  {line}" for line in self.changes]
                + ["  keep them in a migration, undo them, or after review `runner.py sql accept-drift`"])

    def to_json(self) -> dict:
        from migrator.schema.diff import summary

        return {"recorded": self.recorded.to_json() if self.recorded else None,
                "drifted": self.drifted, "changes": self.changes, "summary": summary(self.changes)}


def _sql(template: str, schema: str, table: str = TABLE):
    from psycopg2 import sql

    return sql.SQL(template).format(schema=sql.Identifier(schema), table=sql.Identifier(table))


def _exists(cursor, schema: str, table: str) -> bool:
    from migrator import trust

    return trust.present(cursor, schema, table)  # (refused when another role planted it since connect)


def record(conn, schema: str, reason: str) -> Snapshot:
    """Describe the database and record it with its last applied migration. `schema` holds yoyo's
    tables (backend.bookkeeping_schema). Commits when the connection is in autocommit (yoyo's)."""
    from migrator.schema.describe import describe

    taken = _fingerprint(conn, schema)
    return _store(conn, schema, describe(conn, schema), reason, taken)


def accept(conn, schema: str, reason: str) -> tuple[Snapshot, int]:
    """Record the live schema as the expected one (accept-drift), and how many changes were left as drift. One
    service's history among several accepts only the objects it owns: another service's drift is for its own review."""
    from migrator.schema.describe import describe, scope
    from migrator.schema.diff import diff
    from migrator.schema.model import Description

    history = _history(conn)
    if not history:
        return record(conn, schema, reason), 0
    taken = _fingerprint(conn, schema)
    live = describe(conn, schema)
    own = owned(conn, schema, history) or set()

    def mine(item: Item) -> bool:
        return top(item) in own

    with pg_lock.creating_bookkeeping(conn, schema):
        expected = recorded_description(conn, schema)
        if expected is None:
            return _store(conn, schema, live, reason, taken), 0
        expected = expected.only(scope(conn))
        kept = Description({**{k: i for k, i in expected.items.items() if not mine(i)},
                            **{k: i for k, i in live.items.items() if mine(i)}})
        left = diff(expected.only(lambda i: not mine(i)), live.only(lambda i: not mine(i)))
        return _store(conn, schema, kept, reason, taken if kept.sha256 == live.sha256 else None), len(left)


def advance(conn, schema: str, before: Description, reason: str, claimed=(), names: set[str] | None = None,
            seen: list | None = None) -> Snapshot:
    """Move the recorded description forward by exactly what the runner changed: every object that
    differs between `before` (described just before the runner's change) and now takes its new state;
    every other object stays as recorded, so drift found before (recorded vs `before`) stays drift.
    With nothing recorded yet, the live description is recorded. Call it after each applied or rolled
    back migration (or once after the loop, on failure too); commits like `record`. `claimed`: names of indexes
    the runner's migrations built (an earlier, interrupted try's included), taken as they are now.
    `names`: what the files applied or rolled back name as DDL targets (targets.py). In a schema shared by several
    histories, only the changed objects they name are this run's (owned by its history, moved in the record): the
    rest changed meanwhile (another service's run, a hand change) stays as found, for its own history to record.
    `seen` gets the live description taken (the `before` of the run's next change)."""
    from migrator.schema.describe import describe

    taken = _fingerprint(conn, schema)
    now = describe(conn, schema)
    if seen is not None:
        seen.append(now)
    changed = [key for key in before.items.keys() | now.items.keys() if before.items.get(key) != now.items.get(key)]
    history = _history(conn)
    if history:  # one service's history among several: what its files changed is its own
        if names is not None:
            changed = [key for key in changed if _named(before.items.get(key) or now.items[key], names)]
        own = owned(conn, schema, history) or set()
        own |= {top(item) for key in changed for item in (before.items.get(key), now.items.get(key)) if item}
        own -= {top(before.items[k]) for k in changed if k not in now.items and not before.items[k].parent}
        set_owned(conn, schema, history, own)
    # (the record is the schema's, shared by the histories in it: another service's run may move it at once; the
    # change is committed, so a wait cut short would leave it as drift)
    wait = max(pg_lock.BOOKKEEPING_WAIT["seconds"], pg_lock.AFTER_COMMIT_WAIT)
    with pg_lock.creating_bookkeeping(conn, schema, wait):
        return _advance(conn, schema, before, now, changed, reason, set(claimed), taken)


def _named(item: Item, names: set[str]) -> bool:
    """The item, or the top-level object it belongs to, is one the files name (an index by its own name too)."""
    return bare(item.name) in names or bare(top(item).split(" ", 1)[1]) in names


def _is_claimed(key, names) -> bool:
    return key[0] == "index" and key[1].rsplit(".", 1)[-1].strip('"') in names


def _advance(conn, schema: str, before: Description, now: Description, changed, reason: str, claimed: set,
             taken):
    from migrator.schema.describe import scope
    from migrator.schema.model import Description

    recorded_before = recorded_description(conn, schema)
    if recorded_before is None:
        return _store(conn, schema, now, reason, taken)
    recorded_before = recorded_before.only(scope(conn))  # what is out of scope now leaves the record
    items = dict(recorded_before.items)
    for key in before.items.keys() | now.items.keys():
        if _is_claimed(key, claimed) and key in now.items:
            items[key] = now.items[key]
            continue
        if key not in changed:
            continue
        if key in now.items:
            items[key] = now.items[key]
        else:
            items.pop(key, None)
    kept = Description(items)  # the fingerprint vouches only for a record that is what was described
    return _store(conn, schema, kept, reason, taken if kept.sha256 == now.sha256 else None)


def top(item: Item) -> str:
    """The top-level object an item is or belongs to ("table public.plan" for its columns and indexes)."""
    from migrator.schema.model import top_key

    return item.parent or top_key(item.kind, item.name)


def _last_of(conn, schema: str, history: str) -> str | None:
    """The newest migration a (Flyway-shaped) history records applied, as an id (`V2__a`), or None."""
    with conn.cursor() as cursor:
        if not _exists(cursor, schema, history):
            return None
        cursor.execute(_sql("SELECT script FROM {schema}.{table} WHERE success AND type <> 'SCHEMA' "
                            "ORDER BY installed_rank DESC LIMIT 1", schema, history))
        row = cursor.fetchone()
    if row is None:
        return None
    name = row[0].rsplit("/", 1)[-1]
    return name[:-len(".sql")] if name.lower().endswith(".sql") else name


def _history(conn) -> str | None:
    return _setting(conn, "hcm.history") or None


history = _history  # (public: one service's history among several in the schema, or None)


def _setting(conn, name: str) -> str:
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_catalog.current_setting(%s, true)", (name,))
        return cursor.fetchone()[0] or ""


def owned(conn, schema: str, history: str) -> set[str] | None:
    """The objects a history owns, None before anything was recorded for it (reads only)."""
    found = owned_rank(conn, schema, history)
    return None if found is None else found[0]


def owned_rank(conn, schema: str, history: str) -> tuple[set[str], int | None] | None:
    """The objects a history owns and its Flyway table's newest rank when they were recorded (None: unknown)."""
    with conn.cursor() as cursor:
        if not _exists(cursor, schema, OWNED):
            return None
        cursor.execute(_sql("SELECT objects, pg_catalog.jsonb_extract_path_text(pg_catalog.to_jsonb(o.*), "
                            "'flyway_rank') FROM {schema}.{table} o WHERE history = %s", schema, OWNED), (history,))
        row = cursor.fetchone()
    return (set(row[0]), int(row[1]) if row[1] else None) if row else None


_HAS_RANK = """SELECT true FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE n.nspname OPERATOR(pg_catalog.=) %s AND c.relname OPERATOR(pg_catalog.=) %s
  AND a.attname OPERATOR(pg_catalog.=) 'flyway_rank' AND NOT a.attisdropped"""


def set_owned(conn, schema: str, history: str, objects: set[str]) -> None:
    with conn.cursor() as cursor:
        checksums.create_table(cursor, CREATE_OWNED, schema, OWNED)
        cursor.execute(_HAS_RANK, (schema, OWNED))
        if cursor.fetchone() is None:
            with pg_lock.creating_bookkeeping(conn, schema):
                cursor.execute(_sql(RANK_COLUMN, schema, OWNED))
        rank = None
        if _exists(cursor, schema, history):
            cursor.execute(_sql("SELECT max(installed_rank) FROM {schema}.{table}", schema, history))
            rank = cursor.fetchone()[0]
        cursor.execute(_sql(UPSERT_OWNED, schema, OWNED), (history, json.dumps(sorted(objects)), rank))


def take_over(conn, schema: str, history: str, names: set[str], reason: str) -> None:
    """Files applied on this history by another tool (Flyway, before or after the runner): the objects they name
    (as `advance` names them) are this history's work, taken into its own and into the record as they are now."""
    from migrator.schema.describe import describe, scope
    from migrator.schema.model import Description

    live = describe(conn, schema)
    mine = {key: item for key, item in live.items.items() if _named(item, names)}
    set_owned(conn, schema, history, (owned(conn, schema, history) or set()) | {top(item) for item in mine.values()})
    with pg_lock.creating_bookkeeping(conn, schema):
        expected = recorded_description(conn, schema)
        if expected is None:  # (the next migrate records the whole schema)
            return
        kept = {key: item for key, item in expected.only(scope(conn)).items.items() if not _named(item, names)}
        _store(conn, schema, Description({**kept, **mine}), reason)


def _fingerprint(conn, schema: str) -> str:
    """The catalog's fingerprint before describing it for the record (fingerprint.py), the record's table made first:
    making it is a catalog change of its own."""
    with conn.cursor() as cursor:
        checksums.create_table(cursor, CREATE, schema, TABLE)
        fingerprint.prepare(cursor, schema, TABLE)
    return fingerprint.take(conn, schema)


def _store(conn, schema: str, description: Description, reason: str, taken: str | None = None) -> Snapshot:
    with conn.cursor() as cursor:
        last = None
        if _exists(cursor, schema, MIGRATION_TABLE):
            cursor.execute(_sql(LAST_MIGRATION, schema, MIGRATION_TABLE))
            row = cursor.fetchone()
            last = row[0] if row else None
        checksums.create_table(cursor, CREATE, schema, TABLE)
        cursor.execute(_sql(UPSERT, schema), (json.dumps(description.to_json()), description.sha256, last,
                                              whoami.user(), reason))
        fingerprint.store(cursor, schema, TABLE, taken)
    return recorded(conn, schema)


def recorded(conn, schema: str) -> Snapshot | None:
    """The recorded snapshot's facts (not its description), or None when nothing was recorded. Reads only."""
    return _recorded(conn, schema)[0]


def _recorded(conn, schema: str) -> tuple[Snapshot | None, str | None]:
    """recorded(), and this session's history (_history) when there is a record."""
    with conn.cursor() as cursor:
        if not _exists(cursor, schema, TABLE):
            return None, None
        cursor.execute(_sql(READ, schema))
        row = cursor.fetchone()
    return (Snapshot(row[0].strip(), *row[1:-1]), row[-1] or None) if row else (None, None)


def recorded_description(conn, schema: str) -> Description | None:
    with conn.cursor() as cursor:
        if not _exists(cursor, schema, TABLE):
            return None
        cursor.execute(_sql("SELECT description FROM {schema}.{table}", schema))
        row = cursor.fetchone()
    from migrator.schema.model import Description

    return Description.from_json(row[0]) if row else None


def live_description(conn, schema: str) -> Description:
    """The schema as describe(conn, schema) reads it now: the recorded description when the catalog's fingerprint is
    the one recorded with it (stored only when the record was exactly what was described: fingerprint.py), so a
    change's "before" costs a fingerprint instead of a description; else described."""
    from migrator.schema.describe import describe

    snapshot = recorded(conn, schema)
    if snapshot is not None and snapshot.fingerprint and fingerprint.take(conn, schema) == snapshot.fingerprint:
        kept = recorded_description(conn, schema)
        if kept is not None and kept.sha256 == snapshot.sha256:
            return kept
    return describe(conn, schema)


def live_drift(conn, schema: str, described: Description | None = None, refresh: bool = False,
               claimed=None) -> DriftReport:
    """The live schema against the recorded description. Reads only (safe on `status`'s read-only
    connection). The recorded objects are read only when the text's sha256 differs.

    `described`: the schema as read a moment ago (describe_tenants at the start of a run over many tenants).
    When it equals the recorded one, that is the answer, without describing again; anything else (drift, or a
    change since) is described now. The report's `live` is then None: what the runner changes next is
    measured against a description it takes itself, never a pre-read one. So it is when the catalog's fingerprint
    is the one recorded with the description (fingerprint.py); `refresh` (a writing connection, under the lock)
    records the fingerprint anew when the live schema is found as recorded. `claimed`: called only on drift, the
    names of indexes a pending migration's interrupted try built (its work, taken as they are live: attack24r 8)."""
    snapshot, history = _recorded(conn, schema)
    if snapshot is None:
        return DriftReport(None)
    if history:  # the record is the schema's; its last migration may be another service's: name this history's
        snapshot = replace(snapshot, last_migration=_last_of(conn, schema, history))
    if described is not None and described.sha256 == snapshot.sha256:
        return DriftReport(snapshot)
    taken = fingerprint.take(conn, schema) if snapshot.fingerprint or refresh else None
    if taken is not None and taken == snapshot.fingerprint:
        return DriftReport(snapshot)
    from migrator.schema.describe import describe, scope
    from migrator.schema.diff import diff
    from migrator.schema.model import Description

    live = describe(conn, schema)
    if live.sha256 == snapshot.sha256:
        if refresh:
            with conn.cursor() as cursor:
                fingerprint.store(cursor, schema, TABLE, taken)
        return DriftReport(snapshot, live=live)
    expected = recorded_description(conn, schema).only(scope(conn))  # a record made before a schema became a tenant's
    if expected != live and claimed is not None and (names := claimed()):
        expected = Description({**expected.items, **{k: i for k, i in live.items.items() if _is_claimed(k, names)}})
    if expected == live:
        return DriftReport(snapshot, live=live)
    # A history with nothing recorded as its own yet (a new service, or one Flyway applied before its first run
    # here) owns nothing yet: never the whole schema, whose other objects are other services'.
    own = (owned(conn, schema, history) or set()) if history else None
    if own is not None:  # one service's history among several: its own objects only, but for what Flyway changed
        taken = set(filter(None, _setting(conn, "hcm.taken_over").split(",")))  # since (the next run takes it over)

        def mine(item: Item) -> bool:
            return top(item) in own and not _named(item, taken)

        expected, compared = expected.only(mine), live.only(mine)
        if expected == compared:
            return DriftReport(snapshot, live=live)
        changes = diff(expected, compared)
        return DriftReport(snapshot, changes or ["schema text changed (no single object differs; compare with schema.sql)"],
                           live=live)
    changes = diff(expected, live)
    return DriftReport(snapshot, changes or ["schema text changed (no single object differs; compare with schema.sql)"],
                       live=live)
