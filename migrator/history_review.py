"""What `sql trust-history` shows of an unconfirmed history, and what keeps `--yes` from confirming it.

The review is the operator's only look at rows others could write: every row a run would act on is shown (yoyo's
marks, a checksum without its mark, failure records, a Flyway folder's rows, another folder's Flyway table's rows), each id escaped (a forged id could
read as another line, attack23s 6). `--yes` refuses what it cannot confirm safely: a checksum without its mark (migrate
would mark that migration applied without running it, attack23s 3), a mark whose hash is not its id's (yoyo would
count another migration applied, attack23s 4), and a distrust this very run recorded (rights taken again: rows may
have been written after the review the operator saw, attack23s 7).
"""

from __future__ import annotations

from migrator import output


def lines(books) -> list[str]:
    """The review's lines for the bookkeeping `books` (state.Bookkeeping): every row, ids escaped."""
    said = [f"  recorded as applied: {i} ({at:%Y-%m-%d %H:%M})" if at else f"  recorded as applied: {i}"
            for i, at in books.applied.items()]
    said += [f"  mark for {i} carries migration_hash {h}, not its own: yoyo would count "
             f"{books.keyed.get(h, 'another migration')} applied" for i, h in books.mismatched]
    said += [f"  checksum without a mark: {i} (migrate would mark it applied without running it)"
             for i in unmarked(books)]
    said += [f"  failure recorded: {i}: {what}" for i, what in sorted(books.failures.items())]
    return [output.visible(line) for line in said]


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


def blocked(schema: str, books, fresh: dict) -> str | None:
    """Why `--yes` must not confirm now, in one line; None when it may."""
    if fresh:
        return (f"not confirmed: this run had to revoke write rights on the history in schema {schema} again "
                f"({', '.join(sorted(fresh))}): rows may have been written after your review; run sql trust-history "
                "again without --yes, review what it shows, then confirm")
    bad = [f"checksum row of {i} (no mark)" for i in unmarked(books)]
    bad += [f"mark for {i} (another migration's hash)" for i, _ in books.mismatched]
    if bad:
        return output.visible(
            f"not confirmed: the history in schema {schema} holds rows migrate would act on wrongly: {'; '.join(bad)}; "
            "check what really ran, delete those rows (or mark what ran with sql mark after confirming), then run "
            "again with --yes")
    return None
