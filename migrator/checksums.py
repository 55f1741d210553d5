"""Drift detection: the sha256 of each applied file, so an edited applied file is noticed.

yoyo keys migrations by a hash of their id, not their content. Here each migration gets one more
step that records its file's sha256 (line endings normalised) in `_hcm_migration_checksum`,
inside the migration's own transaction: the checksum exists exactly when the migration
committed. That also repairs the one gap yoyo leaves: it marks a migration applied in a second
transaction after the migration's commit, so a runner killed in between leaves a committed
migration unmarked; a checksum without a mark means "committed: mark it".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

TABLE = "_hcm_migration_checksum"
CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    migration_id VARCHAR(255) PRIMARY KEY,
    sha256       CHAR(64)     NOT NULL,
    recorded_at  TIMESTAMP    NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
)"""
UPSERT = (f"INSERT INTO {TABLE} (migration_id, sha256) VALUES (%s, %s) "
          "ON CONFLICT (migration_id) DO UPDATE SET sha256 = EXCLUDED.sha256, recorded_at = now() AT TIME ZONE 'utc'")
DELETE = f"DELETE FROM {TABLE} WHERE migration_id = %s"


def file_sha256(path: Path) -> str:
    text = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return hashlib.sha256(text).hexdigest()


def add_step(migration) -> None:
    """Append the checksum step to a loaded yoyo migration: recorded on apply, removed on rollback."""
    from yoyo.migrations import MigrationStep

    sha = file_sha256(Path(migration.path))

    def record(connection):
        _upsert(connection, migration.id, sha)

    def remove(connection):
        with connection.cursor() as cursor:
            cursor.execute(DELETE, (migration.id,))

    # A bare step, without yoyo's per-step savepoint: it already runs inside the migration's
    # transaction, and if it fails the whole migration rolls back with it.
    migration.steps.append(MigrationStep(len(migration.steps), record, remove))


def _upsert(connection, migration_id: str, sha: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(UPSERT, (migration_id, sha))


def ensure_table(backend) -> None:
    backend.execute(CREATE)


@dataclass
class Drift:
    id: str
    path: Path
    recorded: str
    current: str


def drifted(migrations, applied: set[str], sums: dict[str, str]) -> list[Drift]:
    """Applied migrations whose file no longer matches what was applied."""
    found = []
    for migration in migrations:
        if migration.id in applied and migration.id in sums:
            current = file_sha256(Path(migration.path))
            if current != sums[migration.id]:
                found.append(Drift(migration.id, Path(migration.path), sums[migration.id], current))
    return found


def record_missing(backend, migrations, applied: set[str], sums: dict[str, str]) -> list[str]:
    """Checksums for migrations applied before drift detection existed (taken from today's files)."""
    missing = [m for m in migrations if m.id in applied and m.id not in sums]
    with backend.transaction():
        for migration in missing:
            _upsert(backend.connection, migration.id, file_sha256(Path(migration.path)))
    return [m.id for m in missing]


def accept(backend, selected) -> list[Drift]:
    """Record the files' current content as applied (after a DBA reviewed the change)."""
    before = dict(backend.execute(f"SELECT migration_id, sha256 FROM {TABLE}").fetchall())
    changes = [Drift(m.id, Path(m.path), (before.get(m.id) or "").strip(), file_sha256(Path(m.path))) for m in selected]
    with backend.transaction():
        for change in changes:
            _upsert(backend.connection, change.id, change.current)
    return changes
