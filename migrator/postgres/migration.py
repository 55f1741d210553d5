"""A `.sql` file as a yoyo Migration: yoyo orders, wraps in a transaction and records it; the one
step runs the file's statements in its fresh session, then records the file's checksum.

yoyo's own .sql loader splits with sqlparse into a step per statement, each with a savepoint. Here
the Migration subclass reads only the header (directives) until the file is to run, and `load()`
builds a single step, so a 20,000-statement file is one transaction without 20,000 savepoints and a
5 MB file in history is never parsed by a no-op deploy.
"""

from __future__ import annotations

import functools
from pathlib import Path

from migrator import checksums
from migrator.errors import USAGE, MigratorError
from migrator.postgres import files
from migrator.postgres.errors import StatementFailed


def read_migrations(sql_dir: Path):
    """yoyo's MigrationList of the folder's files, in name order; names and headers checked, bodies unread."""
    from yoyo.migrations import MigrationList

    migrations = MigrationList(_migration_class()(path) for path in files.check_names(sql_dir))
    by_id = {m.id: m for m in migrations}
    for migration in migrations:
        value, line = migration.directives.get("depends", ("", 0))
        unknown = [d for d in value.split() if d not in by_id]
        if unknown:
            raise MigratorError(f"{migration.path}:{line}: depends on {', '.join(unknown)}, which is not in "
                                f"{sql_dir}; fix the `-- depends:` line", USAGE)
        migration.depends_on = {by_id[d] for d in value.split()}
    return migrations


def ordered(migrations):
    """yoyo's order: file names, then `-- depends:` (plan, migrate and status all use it)."""
    from yoyo.exceptions import BadMigration
    from yoyo.migrations import topological_sort

    try:
        return migrations.replace(topological_sort(migrations))
    except BadMigration as exc:
        raise MigratorError(f"{exc}; fix their `-- depends:` lines", USAGE)


def load_migrations(migrations) -> None:
    """Read and split the files that will run (refusing what cannot run, before anything runs)."""
    for migration in migrations:
        migration.load()


def is_transactional(migration) -> bool:
    return migration.use_transactions


def rollback_path(migration) -> Path:
    return Path(migration.path).with_name(Path(migration.path).name.replace(".sql", ".rollback.sql"))


def plan_text(migration) -> str:
    return files.plan_text(Path(migration.path), migration.use_transactions)


def run_statements(connection, path: Path, statements, transactional: bool) -> None:
    """The file's statements, in order, in the session yoyo gives the migration."""
    with connection.cursor() as cursor:
        for index, statement in enumerate(statements):
            try:
                cursor.execute(statement.text)
            except Exception as exc:
                if not hasattr(exc, "pgcode"):
                    raise
                raise StatementFailed(exc, path, statements, index, transactional) from exc
    if not transactional and connection.info.transaction_status != 0:  # psycopg2's TRANSACTION_STATUS_IDLE
        connection.rollback()
        raise MigratorError(f"{path}: ends inside a transaction it opened (BEGIN without COMMIT); that transaction "
                            "was rolled back, as psql does at the end of a file; add the COMMIT and run again")


@functools.cache
def _migration_class():
    from yoyo.migrations import Migration, StepBase

    class FileStep(StepBase):
        """The whole file, then its checksum; rolled back by its .rollback.sql."""

        def __init__(self, migration):
            self.id = 0
            self.migration = migration
            self.statements = files.statements(Path(migration.path), in_transaction=migration.use_transactions)
            self.sha = checksums.file_sha256(Path(migration.path))

        def apply(self, backend, force=False):
            run_statements(backend.connection, Path(self.migration.path), self.statements, self.migration.use_transactions)
            checksums.record(backend.connection, backend.bookkeeping_schema, self.migration.id, self.sha)

        def rollback(self, backend, force=False):
            path = rollback_path(self.migration)
            run_statements(backend.connection, path, self.migration.rollback_statements(), self.migration.use_transactions)
            checksums.remove(backend.connection, backend.bookkeeping_schema, self.migration.id)

    class SqlFileMigration(Migration):
        def __init__(self, path: Path):
            super().__init__(path.name[: -len(".sql")], str(path), str(path.parent))
            self.directives = files.read_directives(path)
            self.use_transactions = files.transactional(path, self.directives)
            self.depends_on: set = set()
            self._rollback_statements = None

        @property
        def depends(self):  # yoyo's loads the whole file for this; the header is enough
            return self.depends_on

        def load(self):
            if self.steps is None:
                self.steps = [FileStep(self)]

        def rollback_statements(self):
            if self._rollback_statements is None:
                path = rollback_path(self)
                if not path.is_file():
                    raise MigratorError(f"{path} not found: {self.id} cannot be rolled back; write its rollback "
                                        "file first (nothing was rolled back)")
                self._rollback_statements = files.statements(path, in_transaction=self.use_transactions)
            return self._rollback_statements

    return SqlFileMigration
