"""`plan --impact`: what each pending migration will lock and rewrite, measured by PostgreSQL itself.

A scratch database is built to the live database's applied state (the same migrations, through the
runner's own path). Each pending migration then runs there statement by statement in a transaction
that is rolled back at the end; after each statement the server says which relation locks the
transaction holds (pg_locks) and which tables and indexes got a new relfilenode (a rewrite: the cost
grows with the table). The migration is then applied for real to the scratch database, so the next
one starts where it would. In a `-- transactional: false` file each statement is measured the same way
in a transaction of its own, then committed; only a statement PostgreSQL refuses in a transaction
(CONCURRENTLY, VACUUM...) runs in autocommit while another session holds an open snapshot: a
CONCURRENTLY statement waits for it, and while it waits its locks are read (observed, not measured).
The live database is only read (read-only connection): row estimates, sizes, and the open
transactions a CONCURRENTLY statement would wait for right now.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from migrator.output import role
from migrator.postgres import estimate, failures
from migrator.postgres.risks import size_text as _bytes, rows_text as _count
from migrator.postgres.session_options import CLIENT_CHECK, NO_IDLE_TIMEOUTS
from migrator.postgres.sessions import duration, lock_mode, named
from migrator.server_session import of as session_of  # (the server's pid: a pooler hands out its own)

# What each table lock mode blocks, in plain words (the conflict table of the PostgreSQL manual, 13.3.1).
BLOCKS = {
    "ACCESS SHARE": "blocks only ACCESS EXCLUSIVE (DROP, most ALTER TABLE); reads and writes go on",
    "ROW SHARE": "blocks EXCLUSIVE and ACCESS EXCLUSIVE; reads and writes go on",
    "ROW EXCLUSIVE": "blocks SHARE and stronger (CREATE INDEX without CONCURRENTLY); reads and writes go on",
    "SHARE UPDATE EXCLUSIVE": "blocks other schema changes, VACUUM and ANALYZE; reads and writes go on",
    "SHARE": "blocks writes (INSERT, UPDATE, DELETE); reads go on",
    "SHARE ROW EXCLUSIVE": "blocks writes and other SHARE locks; reads go on",
    "EXCLUSIVE": "blocks writes and SELECT FOR UPDATE; plain reads go on",
    "ACCESS EXCLUSIVE": "blocks reads and writes",
}
STRENGTH = list(BLOCKS)
OBSERVED = ("cannot run in a transaction: observed while it waited, by polling its locks; "
            "a lock held only for an instant may be missing, and rewrites are not measured")
KINDS = {"r": "table", "p": "table", "i": "index", "I": "index", "S": "sequence", "m": "materialized view", "v": "view"}
# These run on the scratch session that runs the migration's text (its search_path is the file's, and others may
# create in public there): every comparison names pg_catalog's operator.
_RELATIONS = """
SELECT c.oid, c.oid::pg_catalog.regclass::pg_catalog.text, c.relkind, c.relfilenode FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE n.nspname::pg_catalog.text OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_catalog', 'information_schema'])
  AND NOT pg_catalog.starts_with(n.nspname::pg_catalog.text, 'pg_toast')  -- (no backslash: the runner's SQL reads
  AND NOT pg_catalog.starts_with(n.nspname::pg_catalog.text, 'pg_temp')   -- alike with standard_conforming_strings off)
"""
_LOCKS = """
SELECT relation, mode, granted, locktype FROM pg_catalog.pg_locks
WHERE pid OPERATOR(pg_catalog.=) %s::pg_catalog.int4
  AND (locktype OPERATOR(pg_catalog.=) 'relation'::pg_catalog.text
       AND database OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database
                                            WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
       OR NOT granted)
"""
_LIVE_SIZE = """
SELECT c.reltuples::bigint, pg_catalog.pg_total_relation_size(c.oid) FROM pg_catalog.pg_class c
WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%s::pg_catalog.text)::pg_catalog.oid
"""
_OPEN_TRANSACTIONS = """
SELECT pid, coalesce(application_name, ''), usename, state, extract(epoch FROM now() - xact_start)
FROM pg_catalog.pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND (xact_start IS NOT NULL OR query = '<insufficient privilege>') ORDER BY xact_start
"""


@dataclass
class Lock:
    relation: str
    kind: str  # table, index, sequence...
    mode: str  # ACCESS EXCLUSIVE...
    rows: int | None = None  # live estimate; None: not on the live database, or never analyzed
    bytes: int | None = None

    @property
    def blocks(self) -> str:
        return BLOCKS.get(self.mode, "see the PostgreSQL manual's lock conflict table")

    def size(self) -> str:
        if self.bytes is None:
            return "new" if self.rows is None else ""
        rows = f"~{_count(self.rows)} rows, " if self.rows is not None and self.kind != "index" else ""
        return f"{rows}{_bytes(self.bytes)}"

    def __str__(self) -> str:
        size = self.size()
        return f"{self.mode} on {self.kind} {self.relation}" + (f" ({size})" if size else "") + f": {self.blocks}"

    def to_json(self) -> dict:
        return {"relation": self.relation, "kind": self.kind, "mode": self.mode, "blocks": self.blocks,
                "live_rows": self.rows, "live_bytes": self.bytes}


@dataclass
class StatementImpact:
    line: int
    text: str
    locks: list[Lock] = field(default_factory=list)  # taken (or strengthened) by this statement
    rewrites: list[Lock] = field(default_factory=list)  # relations given a new relfilenode
    waits_for: list[str] = field(default_factory=list)  # what a CONCURRENTLY statement waits for
    error: str | None = None
    observed: bool = False  # cannot run in a transaction: its locks polled while it ran (some may be missed)
    command: str = ""  # the server's command tag (TRUNCATE TABLE, ALTER SEQUENCE...)
    work: list = field(default_factory=list)  # estimate.Work: each scan, index build and rewrite, and its duration
    parsed: bool = False  # a statement the rewrite judge reads (ALTER TABLE, CREATE INDEX...): else no "catalog only"

    @property
    def truncates(self) -> bool:  # a new, empty relfilenode: instant, but the rows are gone
        return self.command.startswith("TRUNCATE")

    def rewritten(self, r: Lock) -> str:
        """What the new relfilenode of `r` means, in words."""
        size = f" ({r.size()})" if r.size() else ""
        if r.kind == "sequence":
            return f"restarts sequence {r.relation}: instant"
        if self.truncates:
            rows = f"its ~{_count(r.rows)} live rows" if r.rows is not None and r.kind == "table" else "what it holds"
            return f"empties {r.kind} {r.relation}{size}: instant whatever its size, but removes {rows}"
        return f"rewrites {r.kind} {r.relation}{size}: reads and writes wait until it finishes"

    @property
    def summary(self) -> str:
        head = " ".join(self.text.split()).rstrip(";")
        head = head if len(head) <= 100 else head[:101].rsplit(" ", 1)[0] + " ..."  # (never mid-name)
        if self.error:
            return f"{head}: failed on the scratch database: {self.error}"
        if self.observed:
            head += f" ({OBSERVED})"
            if not self.locks:
                return f"{head}: no lock observed"
        if not self.locks and not self.rewrites:
            return f"{head}: no lock beyond those already held" + "".join(f"; {w}" for w in self.work)
        strongest = max(self.locks, key=lambda lock: (STRENGTH.index(lock.mode), lock.kind == "table"), default=None)
        text = f"{head}: {strongest}" if strongest else head
        grows = [] if self.truncates else [r for r in self.rewrites if r.kind != "sequence"]
        if self.work:
            text += "; " + "; ".join(str(w) for w in self.work)
        elif any(r.kind == "table" for r in grows):  # (no size known: nothing to estimate)
            text += f"; rewrites {', '.join(r.relation for r in grows if r.kind == 'table')}: its time grows with its size"
        elif self.parsed and not self.error and not self.truncates:
            text += "; catalog only: no row is read or written, instant whatever the table's size"
        emptied = [r.relation for r in self.rewrites if self.truncates and r.kind == "table"]
        if emptied:
            text += f"; empties {', '.join(emptied)}: instant, but removes their live rows"
        return text


@dataclass
class MigrationImpact:
    id: str
    path: str
    transactional: bool
    statements: list[StatementImpact] = field(default_factory=list)
    findings: list = field(default_factory=list)  # lint.Finding of this file

    def findings_at(self, index: int) -> list:
        start = self.statements[index].line
        end = self.statements[index + 1].line if index + 1 < len(self.statements) else 10 ** 9
        return [f for f in self.findings if start <= f.line < end or (index == 0 and f.line < start)]


def server_name(target) -> str:
    """"server host:port": a scratch database is a database of its own on that server, whatever the URL names."""
    return "server " + target.server


def measure(server, live_backend, migrations, pending, findings, schema: str | None = None) -> list[MigrationImpact]:
    """Each pending migration's impact: scratch database on `server`, sizes from the live backend (read-only).
    Stops after the first migration a statement of which fails on the scratch database (what follows would
    be measured on the wrong state): the caller lists the rest as not measured."""
    from migrator import postgres
    from migrator.errors import MigratorError

    applied = set(postgres.applied_ids(live_backend, migrations))
    live = live_backend.connection
    done = []
    # what the pending statements before each one did (the rewrite judge's view; the renames already in the catalog)
    seen = estimate.risks.Seen(follow=False)
    with _scratch(server, schema) as db:
        for migration in postgres.ordered(migrations):
            if migration.id in applied:
                try:
                    db.replay(migration)
                except MigratorError as exc:
                    raise MigratorError(f"the applied migrations do not rebuild the live schema on the scratch database "
                                        f"on {server_name(server)}: {exc}; nothing was measured (the live database changed "
                                        "outside migrations, or an applied file was edited: `runner.py status`)") from exc
        speed = _calibrated(db.target)
        for migration in pending:
            migration.load()
            impact = _measure_one(db.target, migration, seen)
            impact.findings = [f for f in findings if str(f.path) == str(migration.path)]
            _join_live(live, impact, live_backend.bookkeeping_schema, speed)
            done.append(impact)
            if any(s.error for s in impact.statements):
                break
            if migration.use_transactions:  # rolled back: apply it, so the next one starts where it would
                db.apply(migration)
    live.rollback()
    return done


@contextmanager
def _scratch(server, schema: str | None) -> Iterator:
    """A scratch database connected and locked as `migrate` does it; in a tenant's `schema` when given."""
    from migrator import postgres
    from migrator.schema import scratch

    if schema is None:
        with scratch.scratch(server) as db:
            yield db
        return
    with scratch.scratch_database(server) as target:
        with psycopg2_connect(target.url) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{schema}"')  # a checked lower-case identifier
        conn.close()
        target = target.for_schema(schema)
        with (postgres.connect(target, read_only=False) as backend,
              postgres.locked(backend, target, scratch.LOCK_SECONDS, lambda _line: None)):
            yield scratch.Scratch(backend, target)


def psycopg2_connect(url: str, schema: str | None = None):
    """A scratch connection, checked for a vanished client as the runner's own are (a killed plan ends there too);
    in a tenant's schema, its search_path as a migration session's."""
    import psycopg2

    path = f" -c search_path={schema},public" if schema else ""
    return psycopg2.connect(url, options=f"{CLIENT_CHECK} {NO_IDLE_TIMEOUTS}{path}")


def _calibrated(target):
    conn = psycopg2_connect(target.url, target.schema)
    try:
        return estimate.calibrate(conn)
    finally:
        conn.close()


def _measure_one(target, migration, seen) -> MigrationImpact:
    statements = migration.steps[0].statements
    impact = MigrationImpact(migration.id, str(migration.path), migration.use_transactions)
    from migrator.postgres import cancel

    conn = psycopg2_connect(target.url, target.schema)
    try:
        with cancel.on_sigterm(lambda: conn), conn.cursor() as cur:  # SIGTERM: end a long statement at once
            existing = _relations(cur)
            conn.commit()
            judge = (target.schema, seen)
            if migration.use_transactions:
                _in_transaction(conn, cur, statements, existing, impact, judge)
            else:
                _outside_transaction(target, conn, cur, statements, existing, impact, judge)
    finally:
        failures.close(conn)  # (after a SIGTERM's cancel of it)
    return impact


def _relations(cur) -> dict:
    cur.execute(_RELATIONS)
    return {oid: (name, kind, node) for oid, name, kind, node in cur.fetchall()}


def _in_transaction(conn, cur, statements, existing: dict, impact: MigrationImpact, judge) -> None:
    """Statement after statement in one transaction, rolled back at the end: what each adds to the locks held."""
    held: dict[int, str] = {}  # relation oid -> strongest mode held so far
    names = dict(existing)
    try:
        for statement in statements:
            found = StatementImpact(statement.line, statement.text)
            impact.statements.append(found)
            held = _measured(conn, cur, statement.text, existing, names, held, found, judge)
            if found.error:
                return
    finally:
        conn.rollback()


def _measured(conn, cur, text: str, existing: dict, names: dict, held: dict, found: StatementImpact, judge) -> dict:
    """Run one statement inside the open transaction; `found` gets the locks it added to `held`, the relations it
    gave a new relfilenode, and (read before it runs: `judge` is (schema, risks.Seen)) what it scans.
    Returns the locks held now. Raises ActiveSqlTransaction."""
    import psycopg2

    found.parsed, found.work = estimate.work_before(cur, text, found.line, *judge)
    estimate.under_held(found.work, held, STRENGTH)
    before = _relations(cur)
    names.update(before)
    try:
        cur.execute(text)
    except psycopg2.errors.ActiveSqlTransaction:
        raise
    except psycopg2.Error as exc:
        found.error = " ".join(str(exc).split())
        return held
    found.command = cur.statusmessage or ""
    after = _relations(cur)
    cur.execute(_LOCKS, (session_of(conn).pid,))
    now = dict(held)
    for oid, mode, _granted, _type in cur.fetchall():
        mode = lock_mode(mode)
        if oid in existing and (oid not in now or STRENGTH.index(mode) > STRENGTH.index(now[oid])):
            now[oid] = mode  # only relations others can see: not those this migration created
    found.locks = sorted((Lock(names[oid][0], KINDS.get(names[oid][1], "relation"), mode)
                          for oid, mode in now.items() if held.get(oid) != mode),
                         key=lambda lock: (lock.kind != "table", lock.relation))
    found.rewrites = sorted((Lock(before[oid][0], KINDS.get(before[oid][1], "relation"), "")
                             for oid in estimate.renewed(before, after, existing)),
                            key=lambda r: (r.kind != "table", r.relation))
    if not found.truncates:
        found.work += [estimate.rewrite(cur, r.relation) for r in found.rewrites if r.kind == "table"]
        found.work += _rebuilt_indexes(cur, before, after, existing, now)
    return now


# On the scratch session too: pg_catalog's operators and types named.
_TABLE_OF = """
SELECT i.indrelid, i.indrelid::pg_catalog.regclass::pg_catalog.text, c.relfilenode FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indrelid
WHERE i.indexrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%s::pg_catalog.text)
"""


def _rebuilt_indexes(cur, before: dict, after: dict, existing: dict, locks: dict) -> list:
    """Indexes built again while their table kept its rows (a new COLLATE, a type change that keeps the rows: the
    index is dropped and created again, or given a new relfilenode): each reads the table under the statement's
    lock."""
    now = {name: node for name, _kind, node in after.values()}
    by_table: dict = {}
    for oid, (name, kind, node) in before.items():
        if kind not in ("i", "I") or oid not in existing:
            continue
        # (one created again with its old file kept, TryReuseIndex: a plain index of a binary-coercible type change)
        if (oid in after and after[oid][2] != node) or (oid not in after and name in now and now[name] != node):
            cur.execute(_TABLE_OF, (name,))
            row = cur.fetchone()
            if row and (row[0] not in before or before[row[0]][2] == row[2]):  # a rewrite rebuilds all: said there
                by_table.setdefault((row[0], row[1]), []).append(name)
    return [estimate.Work("reindex", table, locks.get(oid, ""), oid=oid, indexes=sorted(names))
            for (oid, table), names in sorted(by_table.items(), key=lambda item: item[0][1])]


def _outside_transaction(target, conn, cur, statements, existing: dict, impact: MigrationImpact, judge) -> None:
    """A `-- transactional: false` file: each statement in a transaction of its own, measured as in a
    transactional file, then committed (as it will be on the live database). Only a statement PostgreSQL
    refuses inside a transaction (CONCURRENTLY, VACUUM, ALTER SYSTEM...) runs in autocommit, observed
    while it waits."""
    import psycopg2

    names = dict(existing)
    for statement in statements:
        found = StatementImpact(statement.line, statement.text)
        impact.statements.append(found)
        try:
            _measured(conn, cur, statement.text, existing, names, {}, found, judge)
        except psycopg2.errors.ActiveSqlTransaction:  # refused before it did anything
            conn.rollback()
            conn.autocommit = True
            try:
                _observed(target, conn, statement.text, existing, found)
            finally:
                conn.autocommit = False
        else:
            (conn.rollback if found.error else conn.commit)()
        if found.error:
            return


def _observed(target, conn, text: str, existing: dict, found: StatementImpact) -> None:
    """One statement in autocommit while another session holds an open snapshot, which CONCURRENTLY waits
    for: the locks it holds while it waits are read (polled), then the snapshot is let go."""
    found.observed = True
    pid = session_of(conn).pid
    observer = psycopg2_connect(target.url, target.schema)
    failure: list = []
    try:
        with observer.cursor() as watch:
            watch.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            watch.execute("SELECT 1")  # the snapshot
            runner = threading.Thread(target=_execute, args=(conn, text, failure), daemon=True)
            runner.start()
            deadline = time.monotonic() + 10
            while runner.is_alive() and time.monotonic() < deadline:
                watch.execute(_LOCKS, (pid,))
                rows = watch.fetchall()
                for oid, mode, granted, _type in rows:
                    if granted and oid in existing:
                        lock = Lock(existing[oid][0], KINDS.get(existing[oid][1], "relation"), lock_mode(mode))
                        if all((lock.relation, lock.mode) != (x.relation, x.mode) for x in found.locks):
                            found.locks.append(lock)
                if any(not granted for *_x, granted, _t in rows):
                    found.waits_for = ["every transaction older than it in the database (it waits for their "
                                       "snapshots, between its phases)"]
                    break
                time.sleep(0.02)
        observer.rollback()
        runner.join()
    finally:
        observer.close()
    if failure:
        found.error = failure[0]


def _execute(conn, text: str, failure: list) -> None:
    import psycopg2

    try:
        with conn.cursor() as cur:
            cur.execute(text)
    except psycopg2.Error as exc:
        failure.append(" ".join(str(exc).split()))


def _join_live(live, impact: MigrationImpact, schema: str, speed) -> None:
    """Row estimates, sizes and estimated durations from the live database; for CONCURRENTLY, its open transactions
    now. The scratch's relation names are looked up in `schema` (the bookkeeping's) by name, qualified: the run's
    own session keeps its pg_catalog-only search_path, so nothing another role planted in `schema` (an `=` on
    (oid, regclass)) is ever considered."""
    with live.cursor() as cur:
        for statement in impact.statements:
            for lock in statement.locks + statement.rewrites:
                cur.execute(_LIVE_SIZE, (estimate.in_schema(lock.relation, schema),))
                row = cur.fetchone()
                if row:
                    lock.rows, lock.bytes = (row[0] if row[0] >= 0 else None), row[1]
            if statement.waits_for:
                cur.execute(_OPEN_TRANSACTIONS)
                statement.waits_for.append("on the live database right now: " + _open_transactions(cur.fetchall()))
    estimate.estimate(live, impact.statements, speed, schema)


def _open_transactions(rows) -> str:
    """The open transactions a CONCURRENTLY statement would wait for; sessions of other roles this role
    cannot see (no pg_read_all_stats: their xact_start reads NULL) are said as such, never "none"."""
    seen = [f"pid {pid} ({named(app) if app else 'no application_name'}, user {role(user)}, {state}, transaction open {duration(age or 0)})"
            for pid, app, user, state, age in rows if state is not None]
    hidden = len(rows) - len(seen)
    if hidden:
        seen.append(f"{hidden} session(s) of other roles this role cannot see (whether they hold a transaction open "
                    "is unknown: grant it pg_read_all_stats to see)")
    return "; ".join(seen) if seen else "no other open transaction"
