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

from migrator.errors import USAGE, MigratorError
from migrator.postgres import files, flyway
from migrator.postgres.files import rollback_path


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


def plan_text(migration) -> str:
    """The plan text of a migration; `tenant_schema` is set on it by a plan over tenant schemas."""
    return files.plan_text(Path(migration.path), migration.use_transactions, getattr(migration, "tenant_schema", None))


@functools.cache
def _migration_class():
    from yoyo.migrations import Migration

    class SqlFileMigration(Migration):
        def __init__(self, path: Path):
            super().__init__(path.name[: -len(".sql")], str(path), str(path.parent))
            self.directives = files.read_directives(path)
            self.use_transactions = files.transactional(path, self.directives)
            self.depends_on: set = set()
            self._rollback_statements = None
            self.earlier_failure: str | None = None  # what an earlier run left (set before it runs)
            self.record_after_commit = False  # it made its transaction read-only: record it afterwards
            self.built_indexes: list[str] = []  # the indexes its CONCURRENTLY builds made (the runner's, not drift)

        @property
        def depends(self):  # yoyo's loads the whole file for this; the header is enough
            return self.depends_on

        def load(self):
            if self.steps is None:
                if "transactional" not in self.directives and flyway.parse(Path(self.path).name):
                    # As Flyway: a file of statements that cannot run in a transaction (CREATE INDEX
                    # CONCURRENTLY) runs without one, no directive needed (read only when it is to run).
                    self.use_transactions = not any(files.OUTSIDE_TRANSACTION.match(s.text) for s in
                                                    files.statements(Path(self.path), in_transaction=False))
                from migrator.postgres.file_step import FileStep  # (the running machinery: only for a file to run)

                self.steps = [FileStep(self)]

        def rollback_transactional(self) -> bool:
            """The rollback file's own `-- transactional:` directive; without one, the migration's mode."""
            path = rollback_path(self)
            directives = files.read_directives(path) if path.is_file() else {}
            return files.transactional(path, directives) if "transactional" in directives else self.use_transactions

        def process_steps(self, backend, direction, force=False):
            # yoyo takes the transaction mode from the migration; a rollback runs in its own file's mode.
            applying = self.use_transactions
            if direction == "rollback":
                self.use_transactions = self.rollback_transactional()
            self.steps_committed = False
            try:
                super().process_steps(backend, direction, force)
                self.steps_committed = True  # its session committed: what follows is the run's own bookkeeping
            finally:
                self.use_transactions = applying

        def rollback_statements(self):
            if self._rollback_statements is None:
                path = rollback_path(self)
                if not path.is_file():
                    raise MigratorError(f"{path} not found: {self.id} cannot be rolled back; write its rollback "
                                        "file first (nothing was rolled back)")
                transactional = self.rollback_transactional()
                from migrator.postgres import backfill  # (a file's reading: a no-op never loads it)

                self._rollback_statements = backfill.marked(path, files.statements(path, in_transaction=transactional),
                                                            transactional)
            return self._rollback_statements

    return SqlFileMigration
