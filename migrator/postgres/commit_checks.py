"""A transactional file's last statement of each try, run by the runner (running.py): its deferred constraint
checks and the lock its checksum record needs, so that what COMMIT would wait for is waited for inside the try,
bounded and retried like any other lock wait.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from migrator import checksums, interrupt
from migrator.postgres import retry
from migrator.postgres.errors import StatementFailed


def records(backend) -> str | None:
    """The checksum table the file's transaction writes its record to before its COMMIT, qualified (None: a run
    that keeps no such record here)."""
    books = backend.parent
    return books.qualified(checksums.TABLE) if hasattr(books, "qualified") else None


# The lock the file's record (checksums.record: an UPSERT, or a DELETE for a rollback) takes, as the role that
# writes it, taken as the try's last statement: unless the file made its transaction read-only (no record then).
# (pg_catalog's functions and casts alone, no operator: the file's search_path may hold planted ones)
_RECORDS_LOCK = ("; RESET SESSION AUTHORIZATION; SET ROLE NONE; DO $hcm_records$ BEGIN IF NOT "
                 "pg_catalog.current_setting('transaction_read_only')::pg_catalog.bool "
                 "AND pg_catalog.to_regclass({name}) IS NOT NULL THEN "
                 "EXECUTE pg_catalog.format('LOCK TABLE %s IN ROW EXCLUSIVE MODE', {name}); END IF; END $hcm_records$")


def deferred_checks(connection, path: Path, statements, probe=None, budget=None,
                    records: str | None = None) -> None:
    """A transactional file's deferred constraint checks (a DEFERRABLE foreign key, a constraint trigger) run at
    its COMMIT, where a lock wait (the parent row an app transaction holds) would fail outside the retries: run
    them here as the try's last statement (SET CONSTRAINTS ALL IMMEDIATE checks what is outstanding, as COMMIT
    would), so such a wait is a try's like any other, its blocker named, the file retried as a whole. With them
    (same round trip) the lock on `records`, the checksum table the runner's record writes before the COMMIT: a
    session holding that table (a co-tenant's SHARE) would make the record wait while the file's locks queue the
    application, past the try's bound and unwatched; taken here, that wait is the try's too (attack24m 5)."""
    with connection.cursor() as cursor:
        try:
            with interrupt.live():
                if budget is not None:
                    budget.before(cursor)
                # (no blind clock of its own, checking many rows is work, not a wait; the try's still runs)
                with probe.statement(budget.started if budget else None, True, False) if probe else contextlib.nullcontext():
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE" + (
                        _RECORDS_LOCK.format(name=_literal(records)) if records and "$hcm" not in records else ""))
        except Exception as exc:
            if getattr(exc, "pgcode", None) not in (retry.LOCK_NOT_AVAILABLE, retry.QUERY_CANCELED):
                raise  # a violation: the file's error at COMMIT, as it was
            failed = StatementFailed(exc, path, statements, len(statements) - 1, True)
            context = getattr(getattr(exc, "diag", None), "context", None) or ""
            failed.at_commit = "records" if "LOCK TABLE" in context else True  # (the DO block's, not a check's)
            failed.records = records
            raise failed from exc


def _literal(text: str) -> str:
    """`text` as an SQL string literal (inside the DO block's $hcm_records$ quoting, which the caller keeps out of
    it)."""
    return "'" + text.replace("'", "''") + "'"
