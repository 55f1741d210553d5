"""yoyo's history layout (its _yoyo_version table): a history in yoyo's current layout is used as it is; one whose
version table is gone or records another version is refused in one line with the statements that restore it, and a
yoyo < 6 history (_yoyo_migration (id, ctime)) with the runner's way to adopt it again. yoyo's own upgrade would read
its tables unqualified (the runner's search_path is pg_catalog) or re-create tables that exist: "unexpected"."""

from __future__ import annotations

from migrator import output
from migrator.errors import USAGE, MigratorError

CURRENT = 2  # yoyo 6+'s layout (yoyo.internalmigrations.v2)


def current(backend, has_version_table: bool) -> bool:
    """True for yoyo's current layout; else refuses (a history exists: _yoyo_migration is present)."""
    version = None
    if has_version_table:
        version = backend.execute(f"SELECT pg_catalog.max(version) FROM {backend.version_table_quoted}").fetchone()[0]
        if version == CURRENT:
            return True
    schema, where = backend.bookkeeping_schema, backend.where
    marks, versions = f"{schema}.{backend.migration_table}", f"{schema}.{backend.version_table}"
    columns = {row[0] for row in backend.execute(
        "SELECT attname::text FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass(:t) "
        "AND attnum > 0 AND NOT attisdropped", {"t": backend.migration_table_quoted}).fetchall()}
    if "migration_hash" not in columns:
        raise MigratorError(output.visible(
            f"refusing the migration history {marks} on {where}: it has yoyo < 6's layout (columns "
            f"{', '.join(sorted(columns))}; no {versions}), which the runner does not upgrade; keep it aside (ALTER "
            f"TABLE {marks} RENAME TO {backend.migration_table}_yoyo5), then record what is applied with `runner.py "
            "sql adopt --yes` (or `runner.py sql mark ID...` for the ids it lists)"), USAGE)
    if has_version_table:
        said = f"records layout version {version if version is not None else 'none'}, not {CURRENT}"
        fix = f"DELETE FROM {versions}; INSERT INTO {versions} VALUES ({CURRENT}, now())"
    else:
        said = "is missing"
        fix = (f"CREATE TABLE {versions} (version INT NOT NULL PRIMARY KEY, installed_at_utc TIMESTAMP); "
               f"INSERT INTO {versions} VALUES ({CURRENT}, now())")
    raise MigratorError(output.visible(
        f"refusing the migration history {marks} on {where}: {versions}, where yoyo records the history's layout, "
        f"{said} (dropped or edited by hand; {marks} has yoyo 6+'s columns); restore it as the tables' owner: "
        f"{fix}; then run again"), USAGE)
