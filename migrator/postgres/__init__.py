"""The SQL side: `sql/*.sql` files applied through yoyo-migrations, used as a library.

yoyo does the ordering, the transactions, the bookkeeping (`_yoyo_migration`) and the lock. This
package adds what a DBA and an operator need around it, one module per concern:

- files: names checked before anything is read, headers, refusals, `plan` text;
- scaffold: `sql new`'s pair of files, from a template;
- splitter: statements split where psql splits them, with their lines;
- migration: each file as one yoyo Migration with one step; file_step: that step (its statements, then its checksum);
- running: a file's statements in its session, with lock retries (retry: each try's lock waits bounded as a whole);
- connection: the run's connection (locks, bookkeeping) and a fresh session per migration;
- server_session: what the server applied of each session's settings (a pooler may drop them), its own pid;
- tenant_survey: which tenants' schemas exist, and their descriptions, over one connection;
- failures: a connect error or a silent server in one line;
- state: what was applied, read without writing; repairs under the lock;
- apply: apply, roll back, mark; errors: the one line a failure ends in.
"""

from migrator.postgres.apply import (apply, locked, lost_before_migrations, mark, redo_count, rollback, select_by_id,
                                     select_rollback)
from migrator.postgres.connection import MIGRATION_TABLE, connect, connection_error, resolve_target
from migrator.postgres.tenant_survey import missing_schemas, survey_schemas
from migrator.postgres.files import FILE_NAME, unfilled
from migrator.postgres.scaffold import dropped_letters, new, slug
from migrator.postgres.migration import (is_transactional, load_migrations, ordered, plan_text, read_migrations,
                                         rollback_path)
from migrator.postgres.state import (MigrationState, applied_counts, applied_ids, bookkeeping, drift_error,
                                     invalid_indexes, lacking_privileges, pending, reconcile, reconciled,
                                     status)

__all__ = [
    "FILE_NAME", "MIGRATION_TABLE", "MigrationState", "apply", "applied_counts", "applied_ids", "bookkeeping",
    "connect", "connection_error", "drift_error", "invalid_indexes", "is_transactional", "lacking_privileges",
    "load_migrations", "locked", "mark", "missing_schemas", "new", "ordered", "redo_count", "pending", "plan_text", "read_migrations", "reconcile", "reconciled", "resolve_target", "rollback",
    "lost_before_migrations", "rollback_path",
    "dropped_letters", "select_by_id", "select_rollback", "slug", "status", "survey_schemas", "unfilled",
]
