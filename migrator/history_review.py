"""What `sql trust-history` shows of an unconfirmed history, and what keeps `--yes` from confirming it.

The review is the operator's only look at rows others could write: every row a run would act on is shown (yoyo's
marks, a checksum without its mark, failure records, a Flyway folder's rows, another folder's Flyway table's rows), each id escaped (a forged id could
read as another line, attack23s 6). `--yes` refuses what it cannot confirm safely: a checksum without its mark (migrate
would mark that migration applied without running it, attack23s 3), a mark whose hash is not its id's (yoyo would
count another migration applied, attack23s 4), and a distrust this very run recorded (rights taken again: rows may
have been written after the review the operator saw, attack23s 7).
A Flyway folder's rows are shown one by one as what they are (a BASELINE counts versions applied that never ran
here, a DELETE or UNDO takes one back), and a removed record is looked for (attack23t 3: a mark deleted, or a Flyway
DELETE row added, made migrate run an applied data migration again): yoyo's log still says the migration was applied
and never rolled back. `--yes` refuses such signs, a DELETE/UNDO row, and a BASELINE written after applied rows
(Flyway baselines only an empty history), naming the row and the fix. With every record gone, a pending migration
older than the newest applied is the sign (attack23u 8); a mark with no log entry and no checksum row, or a Flyway row
without the version of the versioned script it names, is a forged one (attack23u 7, 10).
"""

from __future__ import annotations

from migrator import checksums, output
from migrator.forged_marks import UNLOGGED, log_entries, log_entry, unlogged
from migrator.postgres import flyway
from migrator.postgres.history import MIGRATION_TYPES

_TAKES_BACK = ("DELETE", "UNDO_SQL")
_BASELINE = ("BASELINE", "SQL_BASELINE")


def lines(books, removed: list[str] = ()) -> list[str]:
    """The review's lines for the bookkeeping `books` (state.Bookkeeping): every row, ids escaped; `removed`: the
    signs of removed records (removed())."""
    said = [f"  recorded as applied: {i} ({at:%Y-%m-%d %H:%M})" if at else f"  recorded as applied: {i}"
            for i, at in books.applied.items()]
    said += [f"  mark for {i} carries migration_hash {h}, not its own: yoyo would count "
             f"{books.keyed.get(h, 'another migration')} applied" for i, h in books.mismatched]
    said += [f"  checksum without a mark: {i} (migrate would mark it applied without running it)"
             for i in unmarked(books)]
    said += [f"  failure recorded: {i}: {what}" for i, what in sorted(books.failures.items())]
    said += [_row_line(books, row) for row in (books.flyway.rows if books.flyway else ())]
    said += [f"  record {'forged' if UNLOGGED in sign else 'removed'}? {sign}" for sign in removed]
    todo = [i for i in books.keyed.values() if i not in books.applied]
    said += [f"  migrate would run next: {', '.join(todo)} (any of them that ran before had its record removed: "
             "restore it before --yes)"] if todo else []
    return [output.visible(line) for line in said]


def _versions(books) -> dict[tuple[int, ...], str]:
    """{Flyway version key: this folder's migration id}."""
    return {flyway.version_key(m["version"]): i for i in books.keyed.values()
            if (m := flyway.parse(i + ".sql")) and m["kind"] == "V"}


def _row_line(books, row) -> str:
    """One row of a Flyway folder's table, as what it does."""
    head = f"  {books.flyway.table} row {row.rank}: {row.type}"
    if _versionless(row):
        return (f"{head} {row.script} without its version: forged? (the runner records a versioned file's version): "
                "counts that file applied without running it")
    mine, key = _versions(books), flyway.version_key(row.version) if row.version else None
    if row.type in _BASELINE and key:
        covered = [i for k, i in sorted(mine.items()) if k <= key]
        return (f"{head} at version {row.version}: counts {', '.join(covered) or 'no file here'} applied without "
                "running it")
    if row.type in _TAKES_BACK and key:
        return f"{head} of version {row.version}: takes back {mine.get(key, row.script)}: migrate would run it again"
    said = f"{head} {row.script}" + (f" (version {row.version})" if row.version else "")
    return said + (f", {'success' if row.success else 'FAILED'}, {row.installed_on:%Y-%m-%d %H:%M}"
                   if row.type in MIGRATION_TYPES else "")


def removed(backend, books) -> list[str]:
    """Signs that a record of an applied migration was removed, one line each with its fix: a Flyway row taking one
    back; a BASELINE row after applied rows; this folder's migration that nothing counts applied now, while yoyo's log
    (keyed by the mark's hash) says it was applied and not rolled back since, or a failure record says its rollback
    stopped part-way (it stays applied), or it is older than the newest applied; and forged rows (_versionless, a mark
    the runner would have logged)."""
    signs, taken = [], set()  # (taken: the ids a Flyway row takes back, named by that row's sign)
    if books.flyway is not None:
        first = min((r.rank for r in books.flyway.rows if r.type in MIGRATION_TYPES), default=None)
        for row in books.flyway.rows:
            if row.type in _TAKES_BACK and row.version:
                taken.add(_versions(books).get(flyway.version_key(row.version)))
            kind = f"{row.script} without its version" if _versionless(row) else None
            if kind or row.type in _TAKES_BACK or (row.type in _BASELINE and first is not None and row.rank > first):
                signs.append(f"{books.flyway.table} row {row.rank} ({kind or f'{row.type} of version {row.version}'}): "
                             f"DELETE FROM {backend.qualified(books.flyway.table)} WHERE installed_rank = {row.rank} "
                             "if you did not write it")
    schema, log = backend.bookkeeping_schema, backend.log_table
    last, logged = log_entries(backend)
    order = list(books.keyed.values())  # (migrate's order)
    position = {i: n for n, i in enumerate(order)}
    newest = max((n for n, i in enumerate(order) if i in books.applied), default=-1)
    for key, migration_id in books.keyed.items():
        if migration_id in books.applied or migration_id in taken:
            continue
        operation, at = last.get(key, ("", None))
        ran, undo = [], []
        if operation in ("apply", "mark"):
            ran.append(f"{schema}.{log}: {operation} {at:%Y-%m-%d %H:%M}, never rolled back")
            undo.append(f"DELETE FROM {schema}.{log} WHERE migration_hash = '{key}'")
        if books.failures.get(migration_id, "").startswith(checksums.ROLLBACK):
            ran.append(f"{schema}.{checksums.FAILURES}: its rollback stopped part-way")
            undo.append(f"DELETE FROM {schema}.{checksums.FAILURES} WHERE migration_id = '{migration_id}'")
        mark = (f"INSERT INTO {schema}.{backend.migration_table} (migration_hash, migration_id, applied_at_utc) "
                f"VALUES ('{key}', '{migration_id}', now())")
        if ran:
            restore = f"its row in {schema}.{books.flyway.table}" if books.flyway is not None else f"its mark: {mark}"
            signs.append(f"{migration_id} was applied, yet nothing records it now ({'; '.join(ran)}): if it ran, "
                         f"restore {restore}; if it did not, {' and '.join(undo)}")
        elif books.flyway is None and position[migration_id] < newest:  # attack23u 8: all its records deleted
            signs.append(f"{migration_id} is not recorded applied, yet {order[newest]} after it is: if it ran, restore "
                         f"its mark and log entry: {mark}; {log_entry(schema, log, key, migration_id)}; if it never "
                         f"ran, rename its file after {order[newest]}")
    return signs + list(unlogged(backend, books, logged).values())


def _versionless(row) -> bool:
    """A success row with no version naming a versioned script (attack23u 10): never the runner's (it records the
    file's version), yet counted applied as a repeatable's row would be."""
    return bool(row.version is None and row.success and row.type in MIGRATION_TYPES and
                (found := flyway.parse(row.script.rsplit("/", 1)[-1])) and found["kind"] == "V")


def flyway_rows(backend, table: str) -> list[str]:
    """Every row of a Flyway table this folder does not read (another service's, in the same schema: attack23s 6 of
    the second report): confirming it must not pass rows nobody was shown."""
    rows = backend.execute(f"SELECT installed_rank, version, script, success FROM {backend.qualified(table)} "
                           "ORDER BY installed_rank").fetchall()
    return [output.visible(f"  {table} row (another folder's history): installed_rank {rank}, version {version}, "
                           f"script {script}, {'success' if ok else 'FAILED'}") for rank, version, script, ok in rows]


def unmarked(books) -> list[str]:
    """The ids with a checksum but no mark (a plain folder's: a Flyway folder reads no checksums)."""
    return sorted(i for i in books.sums if i not in books.marked)


def blocked(schema: str, books, fresh: dict, removed: list[str] = ()) -> str | None:
    """Why `--yes` must not confirm now, in one line; None when it may (`removed`: removed()'s signs)."""
    if fresh:
        return (f"not confirmed: this run had to revoke write rights on the history in schema {schema} again "
                f"({', '.join(sorted(fresh))}): rows may have been written after your review; run sql trust-history "
                "again without --yes, review what it shows, then confirm")
    bad = [f"checksum row of {i} (no mark)" for i in unmarked(books)]
    bad += [f"mark for {i} (another migration's hash)" for i, _ in books.mismatched]
    bad += list(removed)
    if bad:
        return output.visible(
            f"not confirmed: the history in schema {schema} holds rows migrate would act on wrongly: {'; '.join(bad)}; "
            "check what really ran, delete those rows (or mark what ran with sql mark after confirming), then run "
            "again with --yes")
    return None
