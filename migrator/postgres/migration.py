"""A `.sql` file as a yoyo Migration: yoyo orders, wraps in a transaction and records it; the one
step runs the file's statements in its fresh session, then records the file's checksum.

yoyo's own .sql loader splits with sqlparse into a step per statement, each with a savepoint. Here
the Migration subclass reads only the header (directives) until the file is to run, and `load()`
builds a single step, so a 20,000-statement file is one transaction without 20,000 savepoints and a
5 MB file in history is never parsed by a no-op deploy.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from pathlib import Path

from migrator import checksums, interrupt, lazy_re, pg_lock
from migrator.errors import USAGE, MigratorError
from migrator.postgres import backfill, concurrently, files, flyway, history, retry
from migrator.postgres.errors import StatementFailed, progress


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
    if flyway.VERSIONED.match(Path(migration.path).name):
        return flyway.undo_path(Path(migration.path))
    return Path(migration.path).with_name(Path(migration.path).name.replace(".sql", ".rollback.sql"))


def plan_text(migration) -> str:
    """The plan text of a migration; `tenant_schema` is set on it by a plan over tenant schemas."""
    return files.plan_text(Path(migration.path), migration.use_transactions, getattr(migration, "tenant_schema", None))


def execute(cursor, statement, probe=None, path: Path | None = None) -> None:
    """One statement of a file, in the migration's session. While it runs, `probe` (retry.Probe) watches who
    blocks it. A CONCURRENTLY build runs with lock_timeout off (concurrently.py); statement_timeout bounds it.
    A `-- backfill: batch` statement repeats in committed batches (backfill.py)."""
    with probe.statement() if probe is not None else contextlib.nullcontext():
        if isinstance(statement, backfill.Batched):
            statement.run(cursor.connection, cursor, path)
        elif concurrently.is_concurrent(statement.text) and cursor.connection.info.transaction_status == IDLE:
            with concurrently.without_lock_timeout(cursor):
                cursor.execute(statement.text)
        else:
            cursor.execute(statement.text)


def run_statements(connection, path: Path, statements, transactional: bool, progress=None, guard=None, *,
                   start: int = 0, done: int = 0, probe=None, skip=frozenset()) -> None:
    """The file's statements, in order, in the session yoyo gives the migration (from `start`, the first
    `done` of them committed: a non-transactional file resumed after a lock retry). In a non-transactional
    file `progress(done)` is told each time the count of committed statements grows (a BEGIN the file runs
    itself holds it until its COMMIT). In a tenant's run `guard` (a SearchPathGuard) stops the file at the
    statement that moved its search_path. Statements in `skip` are counted as done without running."""
    opened = None
    with connection.cursor() as cursor:
        for index in range(start, len(statements)):
            statement = statements[index]
            try:
                with interrupt.live():  # SIGTERM stops the run here, never inside the bookkeeping
                    if index not in skip:
                        execute(cursor, statement, probe, path)
            except interrupt.Interrupted as exc:
                if exc.before_block and progress:  # it stopped between statements: this one never started
                    progress(done, started=False)
                raise
            except Exception as exc:
                if not hasattr(exc, "pgcode"):
                    raise
                in_block = not transactional and connection.info.transaction_status != IDLE
                if in_block:  # (connection.rollback() sends nothing on yoyo's autocommit connection)
                    cursor.execute("ROLLBACK")
                raise StatementFailed(exc, path, statements, index, transactional, done,
                                      opened if in_block else None) from exc
            if not transactional:
                if connection.info.transaction_status == IDLE:
                    opened = None
                    if index + 1 > done:
                        done = index + 1
                        if progress:
                            progress(done)
                elif opened is None:
                    opened = index
            if guard is not None and (found := guard.changed(transactional)) is not None:
                if opened is not None:
                    cursor.execute("ROLLBACK")  # the file's own open transaction: nothing of it commits
                raise SearchPathMoved(found, guard.expected, path, statements, index, transactional, done, opened)
    if not transactional and connection.info.transaction_status != IDLE:
        connection.rollback()
        raise MigratorError(f"{path}: ends inside a transaction it opened (BEGIN without COMMIT); that transaction "
                            "was rolled back, as psql does at the end of a file; add the COMMIT and run again")


def run_retrying(backend, migration, path: Path, statements, transactional: bool, progress=None, guard=None) -> None:
    """run_statements, with lock retries (retry.py): a try that timed out on a lock is retried after a backoff
    until the budget is spent; a transactional file as a whole (its transaction rolled back and begun again),
    a non-transactional one from the statement that failed. One line per retry; the last failure names the
    blocker. A non-transactional file's CONCURRENTLY builds are prepared and checked (concurrently.py)."""
    connection = backend.connection
    policy = retry.Policy.of(getattr(backend.parent, "limits", None))
    skip, before = frozenset(), set()
    if not transactional:
        skip = concurrently.prepare(connection, statements, path, migration.earlier_failure)
        before = concurrently.indexes_before(connection, statements)
    probe = retry.probe(backend, connection.info.backend_pid) if policy.per_try else None
    backoff = retry.Backoff(policy)
    start = done = 0
    try:
        pg_lock.hold_for_shared_ddl(connection, statements, transactional)
        while True:
            try:
                run_statements(connection, path, statements, transactional, progress, guard, start=start, done=done,
                               probe=probe, skip=skip)
                break
            except StatementFailed as exc:
                if not retry.lock_timed_out(exc) or not policy.per_try:
                    raise
                seen = probe.seen if probe is not None else retry.Seen([])
                if not transactional and MAY_COMMIT.match(exc.statement.text):
                    raise _not_retried(exc, seen, backoff)
                delay = backoff.next_delay() if policy.budget else None
                if delay is None:
                    raise retry.gave_up(exc, seen, backoff)
                retry.say_retry(exc, seen, backoff, delay)
                if transactional:  # the whole file again, in a new transaction (as if this try never ran)
                    with connection.cursor() as cursor:
                        cursor.execute("ROLLBACK")
                        cursor.execute("BEGIN")
                    start = done = 0
                else:
                    start, done = (exc.opened if exc.opened is not None else exc.index), exc.done
                try:
                    retry.sleep(delay)
                except interrupt.Interrupted:
                    if progress:
                        progress(done, started=False)
                    raise
                if transactional:
                    pg_lock.hold_for_shared_ddl(connection, statements, transactional)
    finally:
        if probe is not None:
            probe.close()
    if not transactional:
        invalid = concurrently.invalid_after(connection, statements, before)
        if invalid:
            raise IndexLeftInvalid(invalid, path, statements)
        migration.built_indexes = concurrently.built(connection, statements, before)


# A DO block or a CALL may COMMIT inside (PostgreSQL 11+): in a non-transactional file what it committed before the
# lock timeout stays, so running it again would do that part twice.
MAY_COMMIT = lazy_re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/)*(?:do|call)\b", re.IGNORECASE | re.DOTALL)


def _not_retried(exc, seen, backoff):
    retry.gave_up(exc, seen, backoff)
    exc.todo = ("not retried: a DO block or CALL may have committed part of its work before the lock timeout, and a "
                "retry would run that part again; " + exc.todo.split("; ", 1)[1])
    return exc


class IndexLeftInvalid(StatementFailed):
    """A file ran to its end but an index one of its CONCURRENTLY builds names is INVALID: not recorded."""

    def __init__(self, invalid: list[tuple[int, str]], path: Path, statements):
        index, name = invalid[0]
        cause = RuntimeError(
            f"index {name} is INVALID (an earlier failed build that IF NOT EXISTS skipped, or a build that failed "
            "without an error here), so the migration is not recorded as applied")
        super().__init__(cause, path, statements, index, False, len(statements), None)
        self.todo = ("run migrate again: it drops the INVALID index (DROP INDEX CONCURRENTLY) and builds it again; "
                     "or drop it yourself and run again")

    def committed(self) -> str:
        return progress(self.statements, self.done, "not recorded as applied")


IDLE = 0  # psycopg2's TRANSACTION_STATUS_IDLE: no transaction open


class SearchPathGuard:
    """A tenant's run: the search_path the runner gave the session, watched while the file runs, for what
    the text check cannot see (a path built at run time, 'search' || '_path'). PostgreSQL 18+ reports each
    change of search_path to the client, so every statement is checked at no cost; an older server is asked
    after each statement of a non-transactional file, and about a transactional one in the checksum step,
    before its transaction commits."""

    def __init__(self, connection):
        self.connection = connection
        self.reported = connection.info.parameter_status("search_path") is not None
        self.expected = connection.info.parameter_status("search_path") or self._ask()

    def _ask(self) -> str:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_catalog.current_setting('search_path')")
            return cursor.fetchone()[0]

    def changed(self, transactional: bool) -> str | None:
        """The session's search_path if it is no longer the runner's, else None."""
        if self.reported:
            now = self.connection.info.parameter_status("search_path")
        elif transactional:
            return None  # asked once, with the checksum
        else:
            now = self._ask()
        return None if now == self.expected else now


# Objects this transaction created or changed (catalog rows it wrote: their xmin is one of its own xids, the
# only in-progress ones a snapshot can see) in a schema other than the tenant's, an extension's members aside.
# A qualified or run-time-built name (EXECUTE format('%I.t', 'b'), a path set and restored inside one DO block)
# is caught here whatever the text looked like. Not seen: data written elsewhere, and drops.
MADE_OUTSIDE = """
WITH me AS (SELECT (pg_catalog.pg_current_xact_id()::text::bigint %% 4294967296)::text::xid AS xid,
                   pg_catalog.pg_current_xact_id()::text::bigint AS top),
written AS (
    SELECT n.nspname, c.relname::text AS name, c.xmin, 'pg_class'::regclass AS catalog, c.oid
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    UNION ALL
    SELECT n.nspname, p.proname::text || '()', p.xmin, 'pg_proc'::regclass, p.oid
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    UNION ALL
    SELECT n.nspname, t.typname::text, t.xmin, 'pg_type'::regclass, t.oid
    FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
    UNION ALL
    SELECT n.nspname, '(the schema)', n.xmin, 'pg_namespace'::regclass, n.oid FROM pg_catalog.pg_namespace n
)
SELECT DISTINCT pg_catalog.quote_ident(w.nspname) || '.' || w.name
FROM written w, me
WHERE w.nspname <> %(tenant)s AND w.nspname <> 'information_schema' AND w.nspname NOT LIKE 'pg\\_%%'
  -- written since this transaction began (few rows; CASE: only those reach pg_xact_status), and still in
  -- progress: ours or our subtransactions', which come at or after our top-level xid (the 64-bit xid rebuilt)
  AND CASE WHEN pg_catalog.age(w.xmin) <= pg_catalog.age(me.xid) THEN pg_catalog.pg_xact_status(
        (me.top + ((w.xmin::text::bigint - me.top %% 4294967296) %% 4294967296 + 4294967296) %% 4294967296)::text::xid8)
        = 'in progress' ELSE false END
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = w.catalog AND d.objid = w.oid AND d.deptype = 'e')
ORDER BY 1 LIMIT 5
"""


def made_outside(connection, tenant: str) -> list[str]:
    """What this (tenant's, transactional) migration created or changed outside its schema, before it commits."""
    with connection.cursor() as cursor:
        cursor.execute(MADE_OUTSIDE, {"tenant": tenant})
        return [row[0] for row in cursor.fetchall()]


class ReachedOutside(StatementFailed):
    """A tenant's file created or changed objects in another schema: its transaction rolls back."""

    def __init__(self, outside: list[str], tenant: str, path: Path, statements):
        cause = RuntimeError(
            f"it created or changed {', '.join(outside)} outside tenant {tenant}'s schema (a qualified name, or one "
            "built at run time); write names unqualified so each tenant's objects stay in its schema (extensions: "
            "CREATE EXTENSION ... SCHEMA public)")
        super().__init__(cause, path, statements, len(statements) - 1, True, 0, None)

    def committed(self) -> str:
        return "nothing of it was committed: its transaction rolled back"


class SearchPathMoved(StatementFailed):
    """A tenant's file changed its session's search_path: it stops there, and says what committed."""

    def __init__(self, found: str, expected: str, path: Path, statements, index: int, transactional: bool,
                 done: int, opened: int | None, at_end: bool = False):
        what = "by its end the file" if at_end else "this statement"
        cause = RuntimeError(
            f"{what} changed search_path to '{found}' (a tenant's migration runs with '{expected}', its schema then "
            "public), so what follows would land in another schema; remove what sets search_path (the text check "
            "cannot see a name built at run time), and give a function SET search_path FROM CURRENT")
        super().__init__(cause, path, statements, index, transactional, done, opened)

    def committed(self) -> str:
        if self.transactional:
            return "nothing of it was committed: its transaction rolled back"
        then = "the rest did not run"
        if self.opened is not None:
            then = (f"statements {self.opened + 1}-{self.index + 1} ran inside the transaction the file opened at "
                    f"line {self.statements[self.opened].line}, which rolled back; {then}")
        return progress(self.statements, self.done, then)


class Progress:
    """A non-transactional file's progress, recorded on the run's own connection (autocommit) before
    it starts and as each statement commits: whatever stops the run, `status` then says the truth."""

    def __init__(self, backend, migration, statements, rollback: bool):
        self.backend, self.migration, self.statements = backend, migration, statements
        self.prefix = checksums.ROLLBACK if rollback else ""

    def start(self) -> None:
        if self.migration.earlier_failure is None:  # else keep what an earlier run left until this one commits
            self(0)

    def __call__(self, done: int, started: bool = True) -> None:
        if done < len(self.statements) and not started:
            then = (f"stopped between statements: nothing from statement {done + 1} (line {self.statements[done].line}) "
                    "on committed (the next statement never started)")
        elif done < len(self.statements):
            then = (f"interrupted in statement {done + 1} (line {self.statements[done].line}), "
                    "which may or may not have committed")
        else:
            then = "interrupted before it was recorded as " + ("rolled back" if self.prefix else "applied")
        checksums.record_failure(self.backend, self.migration.id, self.prefix + progress(self.statements, done, then))


@functools.cache
def _migration_class():
    from yoyo.migrations import Migration, StepBase

    class FileStep(StepBase):
        """The whole file, then its checksum; rolled back by its .rollback.sql."""

        def __init__(self, migration):
            self.id = 0
            self.migration = migration
            path = Path(migration.path)
            self.statements = backfill.marked(path, files.statements(path, in_transaction=migration.use_transactions),
                                              migration.use_transactions)
            self.sha = checksums.file_sha256(Path(migration.path))

        def apply(self, backend, force=False):
            self._run(backend, Path(self.migration.path), self.statements, self.sha, rollback=False)

        def rollback(self, backend, force=False):
            self._run(backend, rollback_path(self.migration), self.migration.rollback_statements(), None, rollback=True)

        def _run(self, backend, path: Path, statements, sha: str | None, rollback: bool) -> None:
            migration = self.migration
            transactional = migration.use_transactions  # the rollback file's own mode while rolling back
            progress = None
            if not transactional:
                progress = Progress(backend.parent, migration, statements, rollback)
                progress.start()
            # SCHEMA_NAME=public is the plain history, as a run without schemas: no tenant to guard
            guard = SearchPathGuard(backend.connection) if backend.schema not in (None, "public") else None
            started = time.monotonic()
            run_retrying(backend, migration, path, statements, transactional, progress, guard)
            try:
                migration.record_after_commit = not checksums.record(
                    backend.connection, backend.bookkeeping_schema, migration.id, sha, guard and guard.expected)
            except checksums.SearchPathChanged as exc:
                raise SearchPathMoved(exc.found, guard.expected, path, statements, len(statements) - 1, transactional,
                                      0 if transactional else len(statements), None, at_end=True)
            # Flyway's own row too, in the same transaction (a read-only one: after the commit, apply.py)
            if flyway.parse(Path(migration.path).name) and not migration.record_after_commit:
                history_path = Path(migration.path)
                if rollback:
                    history.forget(backend.connection, backend.bookkeeping_schema, backend.flyway_table, history_path)
                else:
                    history.record(backend.connection, backend.bookkeeping_schema, backend.flyway_table, history_path,
                                   round((time.monotonic() - started) * 1000))
            if guard is not None and transactional:  # still before the commit: raising rolls it all back
                outside = made_outside(backend.connection, backend.schema)
                if outside:
                    raise ReachedOutside(outside, backend.schema, path, statements)

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
            try:
                super().process_steps(backend, direction, force)
            finally:
                self.use_transactions = applying

        def rollback_statements(self):
            if self._rollback_statements is None:
                path = rollback_path(self)
                if not path.is_file():
                    raise MigratorError(f"{path} not found: {self.id} cannot be rolled back; write its rollback "
                                        "file first (nothing was rolled back)")
                transactional = self.rollback_transactional()
                self._rollback_statements = backfill.marked(path, files.statements(path, in_transaction=transactional),
                                                            transactional)
            return self._rollback_statements

    return SqlFileMigration
