"""Flyway's own history table (Flyway 10's layout), the history of record of a Flyway folder.

Read: a successful row is an applied migration (taken over with nothing re-applied), its checksum (Flyway's
CRC32) what drift is checked against; a failed row blocks `migrate` as the runner's own failure records do; a
BASELINE row stands for every version up to its own. Written: the row Flyway would write for each migration
the runner applies, in the migration's own transaction, so Flyway 10 (`validate`, `info`, `migrate`) accepts
the database afterwards and has nothing to do. yoyo's own tables are kept beside it (yoyo applies by them):
`sync` makes them agree with this table under the lock, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from migrator.errors import USAGE, MigratorError
from migrator.postgres import flyway

DEFAULT_TABLE = "flyway_schema_history"
# The rows that stand for an applied migration (Flyway writes SQL for .sql files; the others are its Java and
# script kinds, applied by Flyway and counted as such).
MIGRATION_TYPES = ("SQL", "JDBC", "SPRING_JDBC", "SCRIPT", "CUSTOM")

# Flyway 10's DDL for PostgreSQL (createMetaDataTable.sql), so Flyway finds the table it would have made.
CREATE = """
CREATE TABLE {table} (
    "installed_rank" INT NOT NULL,
    "version" VARCHAR(50),
    "description" VARCHAR(200) NOT NULL,
    "type" VARCHAR(20) NOT NULL,
    "script" VARCHAR(1000) NOT NULL,
    "checksum" INTEGER,
    "installed_by" VARCHAR(100) NOT NULL,
    "installed_on" TIMESTAMP NOT NULL DEFAULT now(),
    "execution_time" INTEGER NOT NULL,
    "success" BOOLEAN NOT NULL
);
ALTER TABLE {table} ADD CONSTRAINT {pk} PRIMARY KEY ("installed_rank");
CREATE INDEX {index} ON {table} ("success");
"""
# installed_by: the user logged in (the runner's session has reset any role the migration set), as Flyway's.
INSERT = """
INSERT INTO {table} (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success)
SELECT coalesce(pg_catalog.max(installed_rank), 0) OPERATOR(pg_catalog.+) 1, %s, %s, 'SQL', %s, %s,
       pg_catalog."current_user"(), %s, true
FROM {table}
"""
SELECT = ("SELECT installed_rank, version, description, type, script, checksum, installed_on, success "
          "FROM {table} ORDER BY installed_rank")


@dataclass
class Row:
    rank: int
    version: str | None
    description: str
    type: str
    script: str
    checksum: int | None
    installed_on: datetime
    success: bool


@dataclass
class FlywayBooks:
    """What Flyway's table says, in the runner's terms (ids: file names without .sql)."""

    table: str
    rows: list[Row]
    applied: dict[str, datetime] = field(default_factory=dict)
    crcs: dict[str, int] = field(default_factory=dict)  # applied versioned id -> recorded checksum
    failed: dict[str, Row] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)  # repeatables applied once, whose file changed since: to run again
    baseline: str | None = None
    renamed: dict[str, Row] = field(default_factory=dict)  # id -> the applied row of its version, another description


def _table(schema: str, table: str):
    from psycopg2 import sql

    return sql.Identifier(schema, table)


def table_name(backend) -> str:
    return getattr(backend, "flyway_table", None) or DEFAULT_TABLE


def read(backend) -> list[Row] | None:
    """The table's rows, None when there is no such table (read-only)."""
    schema, table = backend.bookkeeping_schema, table_name(backend)
    from migrator import trust

    with backend.connection.cursor() as cursor:
        if not trust.present(cursor, schema, table):  # (refused when another role planted it since connect)
            return None
        from psycopg2 import sql

        cursor.execute(sql.SQL(SELECT).format(table=_table(schema, table)))
        return [Row(*row) for row in cursor.fetchall()]


def books(backend, migrations=None) -> FlywayBooks | None:
    """Flyway's table read as applied ids, checksums and failures; None when the schema has none. With the
    folder's migrations, a repeatable counts applied only while its file matches its latest row, and a BASELINE
    row stands for the files of its version and older."""
    rows = read(backend)
    if rows is None:
        return None
    found = FlywayBooks(table_name(backend), rows)
    repeatable_sums: dict[str, int | None] = {}
    versions = {}  # version -> the script id applied for it (an undo or a deletion takes it back)
    # Flyway's key of a versioned row is its version, not its script name: `V01__x.sql` is `V1__x.sql` applied
    files = {flyway.version_key(v): m for m in migrations or () if (v := flyway.version_of(m))}
    for row in rows:
        script_id = Path(row.script).name[:-len(".sql")] if row.script.lower().endswith(".sql") else row.script
        if row.version and (migration := files.get(flyway.version_key(row.version))) is not None:
            script_id = migration.id
            if row.success and row.type in MIGRATION_TYPES and \
                    row.description != flyway.description(Path(migration.path).name):
                found.renamed[script_id] = row
            else:
                found.renamed.pop(script_id, None)
        if row.type in ("BASELINE", "SQL_BASELINE") and row.version:
            found.baseline = row.version
        elif row.type in ("UNDO_SQL", "DELETE") and row.version:
            undone = versions.pop(flyway.version_key(row.version), None)
            found.applied.pop(undone, None)
            found.crcs.pop(undone, None)
        elif row.type not in MIGRATION_TYPES:
            continue  # Flyway's SCHEMA row (the schemas it created), or another tool's kind
        elif not row.success:
            found.failed[script_id] = row
        elif row.version is None:
            found.applied[script_id] = row.installed_on
            repeatable_sums[script_id] = row.checksum
            found.failed.pop(script_id, None)
        else:
            found.applied[script_id] = row.installed_on
            found.crcs[script_id] = row.checksum
            found.failed.pop(script_id, None)
            versions[flyway.version_key(row.version)] = script_id
    for migration in migrations or ():
        if migration.id in repeatable_sums and flyway.is_repeatable(migration) and \
                flyway.checksum(Path(migration.path)) != repeatable_sums[migration.id]:
            found.stale.add(migration.id)
            del found.applied[migration.id]
        version = flyway.version_of(migration)
        if found.baseline and version and migration.id not in found.applied and \
                flyway.version_key(version) <= flyway.version_key(found.baseline):
            found.applied[migration.id] = rows[0].installed_on
    return found


def drifted(migrations, found: FlywayBooks):
    """Applied versioned files whose Flyway checksum (or description: a renamed file) differs from the recorded."""
    from migrator.checksums import Drift

    drift = []
    for migration in migrations:
        if migration.id in found.renamed:
            row = found.renamed[migration.id]
            drift.append(Drift(migration.id, Path(migration.path), f"description {row.description!r}",
                               f"description {flyway.description(Path(migration.path).name)!r}"))
            continue
        recorded = found.crcs.get(migration.id)
        if recorded is not None:
            current = flyway.checksum(Path(migration.path))
            if current != recorded:
                drift.append(Drift(migration.id, Path(migration.path), f"crc32 {recorded}", f"crc32 {current}"))
    return drift


def refuse_failed(found: FlywayBooks, pending_ids: set[str], where: str) -> None:
    """A failed row (Flyway's, or a non-transactional file stopped part-way) blocks migrate, as the runner's own."""
    failed = [(i, row) for i, row in found.failed.items() if i in pending_ids or i not in found.applied]
    if failed:
        script_id, row = failed[0]
        raise MigratorError(
            f"{found.table} in schema {where} records {row.script} as FAILED (installed_rank {row.rank}): what it left "
            f"committed is unknown; finish or undo it by hand, then `runner.py sql mark "
            f"'{script_id}'` (records it applied, as `flyway repair` then a manual insert would) or `runner.py sql "
            f"repair` (removes the failed row, so migrate runs it again)", USAGE)


def refuse_renamed(found: FlywayBooks, migrations) -> None:
    """An applied version whose file now has another description: refused as Flyway's validate does (never
    applied again: the row is the version's)."""
    for migration in migrations:
        row = found.renamed.get(migration.id)
        if row is not None:
            raise MigratorError(
                f"{migration.path}: version {row.version} is applied ({found.table} installed_rank {row.rank}, "
                f"script {row.script}) with the description {row.description!r}; a renamed applied migration is "
                f"refused as Flyway's validate does: rename it back to {row.script}, or after review run `runner.py "
                f"sql accept-changes {migration.id}` (records the new name, as `flyway repair`)", USAGE)


# Flyway's history columns: a table with all of them is a history (some service's), whatever its name.
COLUMNS = ("installed_rank", "version", "description", "type", "script", "checksum", "installed_by",
           "installed_on", "execution_time", "success")
TABLES = """
SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0
WHERE n.nspname OPERATOR(pg_catalog.=) %s AND c.relkind IN ('r', 'p') AND a.attname OPERATOR(pg_catalog.=) ANY(%s)
GROUP BY c.relname HAVING pg_catalog.count(*) OPERATOR(pg_catalog.=) %s ORDER BY 1
"""


def history_tables(connection, schema: str) -> list[str]:
    """Every Flyway-shaped history table in the schema (each service's, and the runner's)."""
    with connection.cursor() as cursor:
        cursor.execute(TABLES, (schema, list(COLUMNS), len(COLUMNS)))
        return [name for (name,) in cursor.fetchall()]


def other_history(backend, migrations) -> tuple[tuple[str, str] | None, list[str]]:
    """(another history table, the file it records) when this folder's history table is missing but another
    Flyway-shaped table in the schema records this folder's first version with this very file's checksum: most
    likely SCHEMA_TABLE names the wrong table (as Flyway, migrate would re-apply everything); and the Flyway-shaped
    tables left unread because trust.py would refuse them (another role's, or with a policy, rule or
    trigger: reading one would run its code as the migration role)."""
    from psycopg2 import sql

    from migrator import trust

    first = next((m for m in migrations if flyway.version_of(m)), None)
    if first is None:
        return None, []
    key, crc = flyway.version_key(flyway.version_of(first)), flyway.checksum(Path(first.path))
    schema = backend.bookkeeping_schema
    tables = [t for t in history_tables(backend.connection, schema) if t != table_name(backend)]
    untrusted = trust.untrusted(backend, schema, tables)
    for table in (t for t in tables if t not in untrusted):
        with backend.connection.cursor() as cursor:
            cursor.execute(sql.SQL("SELECT version, checksum FROM {table} WHERE success AND version IS NOT NULL")
                           .format(table=_table(schema, table)))
            if any(v and flyway.version_key(v) == key and c == crc for v, c in cursor.fetchall()):
                return (table, Path(first.path).name), untrusted
    return None, untrusted


def unread_note(schema: str, untrusted: list[str]) -> str:
    """The one note naming the Flyway-shaped tables not read (doctor says it as a WARN)."""
    return (f"note: not reading Flyway-shaped table(s) {', '.join(f'{schema}.{t}' for t in untrusted)}: another role owns "
            "them or they have a trigger, rule or row-level security, which would run as the migration role; if one "
            "is an older history of this folder, have an admin ALTER TABLE ... OWNER TO the migration role")


def refuse_other_table(backend, migrations, notify) -> None:
    other, untrusted = other_history(backend, migrations)
    if untrusted:
        notify(unread_note(backend.bookkeeping_schema, untrusted))
    if other is not None:
        raise MigratorError(
            f"no {table_name(backend)} in schema {backend.bookkeeping_schema}, but {other[0]} there records "
            f"{other[1]} of this folder applied: SCHEMA_TABLE={table_name(backend)} most likely names the wrong "
            f"history; set SCHEMA_TABLE={other[0]} (or drop what {other[0]} applied before starting a new history)",
            USAGE)


def ensure_table(backend) -> None:
    if read(backend) is None:
        with backend.transaction(), backend.connection.cursor() as cursor:
            _create(cursor, backend.bookkeeping_schema, table_name(backend))


def _create(cursor, schema: str, table: str) -> None:
    """Flyway's table, when missing (a scratch database built by verify, adopt or plan --impact too)."""
    from psycopg2 import sql

    from migrator import trust

    trust.ensure_table(cursor, schema, table, lambda: cursor.execute(sql.SQL(CREATE).format(
        table=_table(schema, table), pk=sql.Identifier(f"{table}_pk"), index=sql.Identifier(f"{table}_s_idx"))))


def record(connection, schema: str, table: str, path: Path, milliseconds: int) -> None:
    """The row Flyway writes for an applied SQL migration, in the migration's session (its transaction)."""
    from psycopg2 import sql

    match = flyway.parse(path.name)
    version = match["version"].replace("_", ".") if match["kind"] == "V" else None
    with connection.cursor() as cursor:
        _create(cursor, schema, table)
        cursor.execute(sql.SQL(INSERT).format(table=_table(schema, table)),
                       (version, flyway.description(path.name), flyway.script(path), flyway.checksum(path), milliseconds))


def record_after_commit(backend, path: Path, rolled_back: bool) -> None:
    """On the run's own connection, for a file that made its transaction read-only (it could not write there)."""
    with backend.transaction():
        if rolled_back:
            forget(backend.connection, backend.bookkeeping_schema, table_name(backend), path)
        else:
            record(backend.connection, backend.bookkeeping_schema, table_name(backend), path, 0)


def forget(connection, schema: str, table: str, path: Path) -> None:
    """A rolled-back migration's rows (its U file ran): Flyway then sees it pending, as the runner does. A versioned
    file's rows are its version's (as Flyway keys them: a renamed file's too), a repeatable's its script's."""
    match = flyway.parse(path.name)
    versions = [match["version"]] if match["kind"] == "V" else []
    _delete(connection, schema, table, "true", versions, [flyway.script(path)])


def _delete(connection, schema: str, table: str, condition: str, versions: list[str], scripts: list[str]) -> int:
    """Delete the rows (meeting `condition`) of these versions, by Flyway's comparison, or of these scripts."""
    from psycopg2 import sql

    keys = {flyway.version_key(v) for v in versions}
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("SELECT installed_rank, version, script FROM {table} WHERE " + condition).format(
            table=_table(schema, table)))
        ranks = [rank for rank, version, script in cursor.fetchall()
                 if (version and flyway.version_key(version) in keys) or (not version and script in scripts)]
        cursor.execute(sql.SQL("DELETE FROM {table} WHERE installed_rank OPERATOR(pg_catalog.=) ANY(%s)").format(
            table=_table(schema, table)), (ranks,))
        return cursor.rowcount


def mark(backend, selected) -> None:
    """`sql mark` of Flyway files: their success rows (a failed row of theirs replaced), as repair then insert."""
    ensure_table(backend)
    with backend.transaction():
        for migration in selected:
            path = Path(migration.path)
            forget_failed(backend, [migration])
            record(backend.connection, backend.bookkeeping_schema, table_name(backend), path, 0)


def forget_failed(backend, selected) -> int:
    """`sql repair`: the failed rows of these migrations (all when none) removed, as `flyway repair` does; a
    versioned file's by its version (whatever script name the row has), a repeatable's by its script."""
    from psycopg2 import sql

    schema, table = backend.bookkeeping_schema, table_name(backend)
    if selected:
        versions = [v for m in selected if (v := flyway.version_of(m))]
        scripts = [flyway.script(Path(m.path)) for m in selected if not flyway.version_of(m)]
        return _delete(backend.connection, schema, table, "NOT success", versions, scripts)
    with backend.connection.cursor() as cursor:
        cursor.execute(sql.SQL("DELETE FROM {table} WHERE NOT success").format(table=_table(schema, table)))
        return cursor.rowcount


def accept(backend, selected) -> None:
    """`sql accept-changes`: the latest row of each file takes its current checksum, description and script
    (as `flyway repair`); a versioned file's row is found by its version, a repeatable's by its script."""
    from psycopg2 import sql

    found = books(backend, selected)
    by_script = {Path(row.script).name: row for row in (found.rows if found else ()) if row.success}
    by_version = {flyway.version_key(row.version): row for row in (found.rows if found else ())
                  if row.success and row.version and row.type in MIGRATION_TYPES}
    with backend.transaction(), backend.connection.cursor() as cursor:
        for migration in selected:
            path = Path(migration.path)
            version = flyway.version_of(migration)
            row = by_version.get(flyway.version_key(version)) if version else by_script.get(path.name)
            if row is None:
                continue
            cursor.execute(sql.SQL("UPDATE {table} SET checksum = %s, description = %s, script = %s "
                                   "WHERE installed_rank = %s").format(
                table=_table(backend.bookkeeping_schema, table_name(backend))),
                (flyway.checksum(path), flyway.description(path.name), flyway.script(path), row.rank))


def sync(backend, migrations, found: FlywayBooks, notify) -> list:
    """Under the lock: yoyo's marks (this history's) made to agree with Flyway's table, since yoyo applies what it
    has not marked. Applied by Flyway: marked (nothing re-applied); not applied there (a repeatable whose file
    changed, a row removed): unmarked, to run."""
    from yoyo.migrations import MigrationList

    todo = {m.id for m in backend.to_apply(migrations)}
    taken = [m for m in migrations if m.id in found.applied and m.id in todo]
    if taken:
        backend.mark_migrations(MigrationList(taken))
        notify(f"note: took over {len(taken)} migration(s) applied by Flyway ({found.table}); nothing re-applied")
    again = [m for m in migrations if m.id not in found.applied and m.id not in todo]
    if again:
        backend.unmark_migrations(MigrationList(again))
    return taken


def scope_drift(backend, migrations=None, found: FlywayBooks | None = None, marked=()) -> None:
    """The connection names this history (hcm.history): drift is its objects' only, but for what files Flyway
    applied since the runner's last run name (hcm.taken_over: the next run takes them over; `status` reads only)."""
    from migrator.schema import targets

    backend.history = table_name(backend)
    theirs = _theirs(backend, migrations, found, [m for m in migrations if m.id in found.applied and m.id not in
                                                  marked]) if found and found.applied and migrations else []
    names = ",".join(sorted(targets.named(m.path for m in theirs)))
    backend.execute("SELECT pg_catalog.set_config('hcm.history', :history, false), pg_catalog.set_config("
                    "'hcm.taken_over', :names, false)", {"history": backend.history, "names": names})


def _theirs(backend, migrations, found: FlywayBooks, taken, first=()) -> list:
    """The files Flyway applied on this history that the runner did not: `first` the first time the runner meets
    it; else those in rows after the newest rank it recorded; `taken` (applied, not marked) when that is unknown."""
    from migrator.schema.snapshot import owned_rank

    seen = owned_rank(backend.connection, backend.bookkeeping_schema, found.table)
    if seen is None:
        return list(first)
    if seen[1] is None:
        return list(taken)
    scripts = {row.script for row in found.rows if row.success and row.rank > seen[1]}
    return [m for m in migrations if m.id in found.applied and flyway.script(Path(m.path)) in scripts]


def take_over(backend, migrations, found: FlywayBooks, taken) -> None:
    """Under the lock: what the files Flyway applied here and the runner did not (_theirs) name as DDL targets is
    this history's work (its objects, the record moved to them), not drift; a table they only read is another's."""
    from migrator.schema import snapshot, targets

    files = _theirs(backend, migrations, found, taken, first=[m for m in migrations if m.id in found.applied])
    if files:
        with backend.transaction():
            snapshot.take_over(backend.connection, backend.bookkeeping_schema, found.table,
                               targets.named(Path(m.path) for m in files), "takeover")
        backend.execute("SELECT pg_catalog.set_config('hcm.taken_over', '', false)")


def older_than_applied(migrations, applied, pending) -> list[str]:
    """The pending versioned ids older than the newest applied version (out of order)."""
    versions = [flyway.version_key(v) for m in migrations if m.id in applied and (v := flyway.version_of(m))]
    if not versions:
        return []
    newest = max(versions)
    return [m.id for m in pending if (v := flyway.version_of(m)) and flyway.version_key(v) < newest]


def out_of_order_refusal(older: list[str]) -> str:
    return (f"{', '.join(older)} older than the newest applied version and not applied (FLYWAY_OUT_OF_ORDER=false "
            "refuses them); give them newer versions, or allow out-of-order runs (unset FLYWAY_OUT_OF_ORDER)")


def out_of_order(migrations, found: FlywayBooks, pending, notify, allowed: bool) -> None:
    """A pending version older than the newest applied: applied with a note (-outOfOrder=true, as the platform
    runs Flyway), or refused when FLYWAY_OUT_OF_ORDER=false."""
    older = older_than_applied(migrations, found.applied, pending)
    if not older:
        return
    if not allowed:
        raise MigratorError(out_of_order_refusal(older), USAGE)
    notify(f"note: {', '.join(older)} older than the newest applied version: applied out of order "
           "(as Flyway's -outOfOrder=true)")
