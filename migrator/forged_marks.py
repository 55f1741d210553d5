"""A mark no run wrote: yoyo's mark of a migration with neither an apply (or mark) of it in yoyo's log nor the runner's
checksum row, both of which every run writes with it (attack23u 7). `sql trust-history` shows it as forged
(history_review.py); migrate refuses it and status counts it pending (attack23v 2). A plain folder's only (a Flyway
folder's record is Flyway's table)."""

from __future__ import annotations

UNLOGGED = " is marked applied, yet "


def log_entries(backend) -> tuple[dict, set]:
    """({hash: (its last operation, when)} of yoyo's log, the hashes it has an apply or a mark of)."""
    last, logged = {}, set()
    if backend.execute("SELECT to_regclass(:t) IS NOT NULL", {"t": backend.log_table_quoted}).fetchone()[0]:
        for key, operation, at in backend.execute(f"SELECT migration_hash, operation, created_at_utc FROM "
                                                  f"{backend.log_table_quoted} ORDER BY created_at_utc").fetchall():
            last[key] = (operation, at)
            logged.update([key] if operation in ("apply", "mark") else [])
    return last, logged


def unlogged(backend, books, logged: set) -> dict[str, str]:
    """attack23u 7: a mark with neither a log entry nor a checksum row (the runner writes both: a row it never writes
    alone), one sign each with its fix; a plain folder's only."""
    if books.flyway is not None:
        return {}
    schema, log = backend.bookkeeping_schema, backend.log_table
    return {migration_id: f"{migration_id}{UNLOGGED}{schema}.{log} has no apply of it and no checksum row "
            f"exists: if it did not run, DELETE FROM {schema}.{backend.migration_table} WHERE migration_hash = "
            f"'{key}'; if it ran, record it: {log_entry(schema, log, key, migration_id)}"
            for key, migration_id in books.keyed.items()
            if migration_id in books.marked and migration_id not in books.sums and key not in logged}


def forged(backend, books) -> dict[str, str]:
    """{id: sign} of the marks trust-history calls forged (unlogged), for migrate and status: not applied. The log
    is read only when a mark has no checksum row (cost follows the work: a run's own marks all have one)."""
    if books.flyway is not None or books.migrations is None or books.marked <= set(books.sums):
        return {}
    return unlogged(backend, books, log_entries(backend)[1])


def log_entry(schema: str, log: str, key: str, migration_id: str) -> str:
    """The INSERT of a yoyo log entry marking `migration_id` applied (what sql mark writes)."""
    return (f"INSERT INTO {schema}.{log} (id, migration_hash, migration_id, operation, created_at_utc) VALUES "
            f"(gen_random_uuid(), '{key}', '{migration_id}', 'mark', now())")
