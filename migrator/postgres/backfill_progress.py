"""A `-- backfill: batch` statement's progress: what its batches committed over its runs, and whether they make any.

The batches of a rerun add to those the earlier runs recorded (the failure record's words, written and read here
only). A batch whose rows its WHERE still picks once it committed (an UPDATE that leaves them as they were picked,
a NULL source say) would rewrite them batch after batch up to BACKFILL_MAX_BATCHES: a few batches are checked (the
1st, 2nd, 4th ... 32nd, then every 64th, and each once the rows counted pass the table's estimated rows), and the
first that is picked again stops the run in one line.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from migrator.postgres.transaction_status import IDLE

SPACING = 64  # past the first batches, every this many is checked: the check reads one batch's rows again

# How the record says what a backfill committed (errors.progress words it): read back by a rerun to add to it.
_RECORDED = re.compile(r"the backfill at line (\d+) COMMITTED (\d+) row\(s\) in (\d+) batch\(es\)")


class Committed(NamedTuple):
    """What a backfill statement committed: in this run (its lock retries too), and in the runs before it."""

    line: int
    batches: int
    rows: int
    before_batches: int = 0
    before_rows: int = 0


def words(committed: Committed, record: bool = False) -> str | None:
    """The backfill's part of what a file committed (None: no batch in any run). The error line says this run's
    first; the record (`record`) the total, which the next run reads back."""
    line, batches, rows, before_batches, before_rows = committed
    total = f"{rows + before_rows} row(s) in {batches + before_batches} batch(es)"
    if not batches + before_batches:
        return None
    if not before_batches:
        return f"the backfill at line {line} COMMITTED {total}"
    if record:
        return f"the backfill at line {line} COMMITTED {total} in all runs"
    now = f"{rows} row(s) in {batches} batch(es)" if batches else "no batch"
    return f"the backfill at line {line} COMMITTED {now} in this run, {total} in all runs"


def as_record(text: str, committed: Committed | None) -> str:
    """A failed file's words (StatementFailed.committed) as its record says them: the backfill's total first."""
    said = words(committed) if committed else None
    return text.replace(said, words(committed, record=True)) if said else text


class Tally:
    """A file run's backfill batches: this run's per statement line (summed over its lock retries), the earlier
    runs' read from the record they left (`earlier`); `note(statement, Committed)` told as each batch commits."""

    def __init__(self, earlier: str | None = None, note=None):
        self.before = {int(m[1]): (int(m[3]), int(m[2])) for m in _RECORDED.finditer(earlier or "")}
        self.now: dict[int, list[int]] = {}
        self.note = note

    def counts(self, line: int) -> list[int]:
        """[batches, rows] this run committed of the statement at `line`, updated in place."""
        return self.now.setdefault(line, [0, 0])

    def committed(self, line: int) -> Committed:
        return Committed(line, *self.now.get(line, (0, 0)), *self.before.get(line, (0, 0)))


class NoProgress(Exception):
    """A batch whose rows the statement's WHERE picks again (so it fails as a statement)."""

    pgcode = "55000"


class Watch:
    """Which batches of a statement are checked for progress, and the check."""

    def __init__(self, cursor, statement):
        self.cursor, self.statement = cursor, statement
        self.ran = 0
        self.table_rows: float | None = None
        self.blind = False  # the check cannot run (its subquery names the statement's other tables)

    def due(self, rows: int, last: int) -> bool:
        """Whether the next batch is checked (`rows`: those this run's batches counted so far, `last` the last
        batch's): once the next may count past the table's rows, each is, so no progress line counts past them."""
        self.ran += 1
        if self.statement.bound is None:
            return False
        if self.ran % SPACING == 0 or self.ran < SPACING and self.ran & (self.ran - 1) == 0:
            return True
        if self.table_rows is None:
            self.table_rows = self._estimate()
        return rows + last > self.table_rows

    def readable(self, text: str, what: str) -> None:
        """Before `text` (the statement's, or the runner's holding part of it) is sent again on the file's session:
        refused as running.execute refuses a statement, when a batch changed how the server reads it (a computed
        set_config of client_encoding or standard_conforming_strings: attack23y 7). No round trip."""
        from migrator.postgres import conforming

        conforming.readable(self.cursor.connection, text, by="its last batch", what=what)

    def _estimate(self) -> float:
        """The planner's estimate of the table's rows (on the file's path, as the statement names it)."""
        import psycopg2

        query = f"EXPLAIN (FORMAT JSON) SELECT FROM {self.statement.table}"
        self.readable(query, "the runner's estimate of its table's rows")
        try:
            self.cursor.execute(query)
            plan = self.cursor.fetchone()[0]
        except psycopg2.Error as exc:
            if not _cannot_run(exc):
                raise  # (a cancel, a lost session: the run's to handle)
            return float("inf")  # (the checks at their spacing still run)
        return float(plan[0]["Plan"]["Plan Rows"])

    def batch(self, checked: bool) -> tuple[int, str | None]:
        """One batch of the statement as written, committed: (rows it touched, its transaction's id if `checked`).
        A checked batch runs in BEGIN ... COMMIT, to learn that id before its COMMIT."""
        cursor = self.cursor
        self.readable(self.statement.text, "its next batch")
        if not checked:
            cursor.execute(self.statement.text)  # autocommit (a non-transactional file): the batch commits here
            return max(cursor.rowcount, 0), None
        cursor.execute("BEGIN")
        try:
            cursor.execute(self.statement.text)
            touched = max(cursor.rowcount, 0)
            cursor.execute("SELECT pg_catalog.pg_current_xact_id_if_assigned()::pg_catalog.text")
            xid = cursor.fetchone()[0]
            cursor.execute("COMMIT")
        except BaseException:
            _rolled_back(cursor)
            raise
        return touched, xid

    def check(self, xid: str | None, batches: int, rows: int) -> None:
        """NoProgress if the rows the statement's WHERE picks now include rows its last batch (`xid`) wrote."""
        import psycopg2

        if xid is None or self.blind:
            return
        column = '"' + self.statement.column.replace('"', '""') + '"'
        # (a ctid names a row only within one table: a child's rows are never taken for the parent's)
        only = "ONLY " if self.statement.column == "ctid" else ""
        query = (f"SELECT pg_catalog.count(*), pg_catalog.min(b.{column}::pg_catalog.text) FROM {only}"
                 f"{self.statement.table} b WHERE b.{column} OPERATOR(pg_catalog.=) ANY ({self.statement.bound}) "
                 f"AND b.xmin OPERATOR(pg_catalog.=) pg_catalog.xid('{int(xid)}'::pg_catalog.xid8)")
        self.readable(query, "the runner's progress check (its subquery)")
        try:
            self.cursor.execute(query)
        except psycopg2.Error as exc:
            if not _cannot_run(exc):
                raise
            # (a subquery that cannot run alone: the done check says so at the end; a key type without
            # pg_catalog's `=`, whose own the check does not call: unchecked, as before)
            self.blind = True
            return
        again, sample = self.cursor.fetchone()
        if again:
            line = self.statement.line
            raise NoProgress(
                f"`-- backfill: batch` at line {line} makes no progress: its WHERE picks again {again} row(s) its "
                f"batch {batches} updated ({self.statement.column} {sample} among them), so every next batch would "
                "update them again: the UPDATE leaves them as its WHERE picks them (a NULL source, say); its "
                f"{batches} batches ({rows} rows) stay committed; make the subquery's WHERE leave out the rows the "
                "UPDATE cannot finish (e.g. AND <its source> IS NOT NULL), or fix those rows, then run again")


def _cannot_run(exc) -> bool:
    """The server refused the check's query itself (SQLSTATE class 42: a column or table it cannot see, a
    privilege), not its run (a cancel, a timeout, a lost session)."""
    return (getattr(exc, "pgcode", None) or "").startswith("42")


def _rolled_back(cursor) -> None:
    """After a failed checked batch: its transaction rolled back, as the statement's own failure would leave it."""
    import psycopg2

    connection = cursor.connection
    if connection.closed or connection.info.transaction_status == IDLE:
        return
    try:
        cursor.execute("ROLLBACK")
    except psycopg2.Error:
        pass  # (a lost session: the server rolls it back)
