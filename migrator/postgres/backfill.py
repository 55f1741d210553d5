"""`-- backfill: batch`: a batched backfill without a hand-made loop (issue 24).

A comment line `-- backfill: batch` (optionally `-- backfill: batch every N`: a progress line every N batches,
default 10; `... max M`: at most M batches, else BACKFILL_MAX_BATCHES, 100,000) right before an UPDATE or DELETE
in a `-- transactional: false` file makes the runner repeat that statement, each run committed on its own, until
it touches no row (one still touching rows after its most batches stops with one line: it never loops for ever).
Each run must touch a bounded batch and leave the rows it did out of the next one, e.g.

    -- backfill: batch
    UPDATE hcm_report_metadata SET ref = gen_random_uuid()
    WHERE id IN (SELECT id FROM hcm_report_metadata WHERE ref IS NULL LIMIT 5000);

so each batch holds its row locks for milliseconds and the application goes on between batches; a failure or
SIGTERM keeps the batches already committed, and a rerun goes on where it stopped. The file still runs as is with
`psql -f` (the statement then does one batch). In a transactional file the batches could not commit: refused
before anything runs. An empty batch means done only if the bound's SELECT then picks no row either (checked), so
bounds that can pick none while rows remain (TABLESAMPLE, SKIP LOCKED, OFFSET, random()) are refused.
"""

from __future__ import annotations

import contextvars
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from migrator import lazy_re
from migrator.errors import USAGE, MigratorError
from migrator.postgres.backfill_progress import Tally, Watch
from migrator.postgres.splitter import Statement
from migrator.postgres.transaction_status import IDLE

DIRECTIVE = lazy_re.compile(r"^[ \t]*--[ \t]*backfill[ \t]*:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)
_VALUE = lazy_re.compile(r"batch(?:\s+every\s+([1-9][0-9]{0,5}))?(?:\s+max\s+([1-9][0-9]{0,8}))?", re.IGNORECASE)
_MENTIONED = lazy_re.compile("backfill", re.IGNORECASE)
EVERY = 10
MAX_BATCHES = 100_000  # default most batches of one statement: 500 M rows at 5,000 a batch, yet never for ever
MAX_LIMIT = 100_000  # a batch's most rows: more holds its row locks (and the application) for seconds
# A batch the lock probe ended (application sessions waited on its rows past the try's bound: lock_waiters.py)
SMALLER = ("not retried (the next batch would hold its rows as long again): give the statement's bound a smaller "
           "LIMIT (a batch keeps every row it changed locked to its COMMIT), then run migrate again: the batches "
           "committed stay, the rerun goes on where it stopped")
SAFE = "WHERE id IN (SELECT id FROM <its table> WHERE <not done> LIMIT 5000) with id its primary key"
# A single-column unique index without predicate on the column: the bound's rows are exactly the batch's rows.
_KEY = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
               ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid
               AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = %s)
"""


class Bound(NamedTuple):
    """What bounds a batched statement's batch."""

    select: str  # the bound's SELECT without its locking clause (empty once no row is left: see _confirm_done)
    reason: str | None  # what in it can pick no row while rows remain (TABLESAMPLE, SKIP LOCKED, ...), or None
    column: str  # the statement's column the SELECT picks: a key of the table (or ctid), else a batch is no batch
    table: str  # the statement's table as written (quoted), for to_regclass()
    limit: str | None  # why its LIMIT is no bound (LIMIT ALL, a LIMIT over MAX_LIMIT, a non-constant one), or None
    outer: str | None = None  # a table of the statement outside the SELECT that it names (it cannot run alone)
# The file run's Tally, whose note is told (statement, Committed) after each committed batch: the run records it, so
# whatever stops the run, `status` says how much of the backfill committed over its runs (file_step.Progress).
COMMITTED = contextvars.ContextVar("backfill_committed", default=None)


@dataclass(frozen=True)
class Batched(Statement):
    """A statement repeated in committed batches until it touches no row."""

    every: int = EVERY  # a progress line every this many batches
    most: int | None = None  # `max N`: its most batches (else the run's BACKFILL_MAX_BATCHES)
    bound: str | None = None  # the SELECT picking a batch's rows: empty once no row is left (see _confirm_done)
    column: str = "ctid"  # the column the bound picks (checked to be a key before the first batch)
    table: str = ""  # the statement's table, as written

    def run(self, connection, cursor, path: Path, most: int = MAX_BATCHES, batch_started=None,
            batch_ended=None) -> None:
        """Batches until one touches no row; a statement still touching rows after `most` batches (its own
        `max N` first) stops with one line: a WHERE that never leaves its done rows out would loop for ever.
        `batch_started()` is called as each batch starts (the blind probe's clock: each batch a try), `batch_ended()`
        as it committed."""
        if connection.info.transaction_status != IDLE:
            raise InTransaction(f"`-- backfill: batch` at line {self.line} runs inside the transaction this file opened "
                                "(BEGIN): its batches could not commit one by one; remove the BEGIN around it")
        if self.column != "ctid":
            from migrator.pinned import catalog_path

            cursor.execute("SELECT pg_catalog.to_regclass(%s)::pg_catalog.oid", (self.table,))  # on the file's path
            oid = cursor.fetchone()[0]
            with catalog_path(cursor):  # (pg_catalog's operators alone: the file's path may hold others)
                cursor.execute(_KEY, (oid, self.column))
                key = cursor.fetchone()[0]
            if not key:
                raise NotKey(not_key(self.line, self.column, self.table) + " (the statement did not run)")
        tally = COMMITTED.get() or Tally()
        try:
            self._batches(cursor, path, most, tally, batch_started, batch_ended)
        except Exception as exc:  # (the batches committed before it: the error line and `status` say so)
            exc.backfill_committed = tally.committed(self.line)
            raise

    def _batches(self, cursor, path: Path, most: int, tally: Tally, batch_started=None, batch_ended=None) -> None:
        from migrator import output

        started = time.monotonic()
        counts = tally.counts(self.line)  # this run's batches and rows (a lock retry goes on counting)
        watch = Watch(cursor, self)
        touched = 0
        while True:
            if batch_started is not None:
                batch_started()
            touched, xid = watch.batch(watch.due(counts[1], touched))
            if batch_ended is not None:
                batch_ended()
            counts[0] += 1
            counts[1] += touched
            batches, rows = counts
            if tally.note is not None and touched:
                tally.note(self, tally.committed(self.line))
            if touched:  # (what a batch set reaches all that follows it on the session: stopped first, attack23y 7)
                watch.readable(self.text, "its next batch")
            if touched == 0:
                self._confirm_done(cursor, watch, batches, rows)
            else:  # (before its progress line: rows counted again are no progress)
                watch.check(xid, batches, rows)
            if touched == 0 or batches % self.every == 0:
                done = " done" if touched == 0 else ""
                output.progress(f"{path}:{self.line}: backfill{done}: {rows} row(s) in {batches} committed batch(es), "
                                f"{time.monotonic() - started:.1f} s", kind="backfill", file=str(path), line=self.line,
                                rows=rows, batches=batches, done=touched == 0)
            if touched == 0:
                return
            if batches >= (self.most or most):
                raise TooManyBatches(
                    f"`-- backfill: batch` at line {self.line} ran {batches} committed batches ({rows} rows) and its "
                    "last one still touched rows; they stay committed; check that its WHERE leaves the rows it did "
                    "out of the next batch, then raise the limit if the table needs more: `-- backfill: batch max N` "
                    f"or BACKFILL_MAX_BATCHES (now {self.most or most}), and run again")

    def _confirm_done(self, cursor, watch: Watch, batches: int, rows: int) -> None:
        """A batch that touched no row proves the backfill done only if its bound picks no row either: a
        condition outside the subquery (`... LIMIT 5000) AND tenant_id = 7`) can leave every picked row untouched
        while rows remain, and the migration must not be recorded as applied then."""
        if self.bound is None:
            return
        import psycopg2

        query = f"SELECT EXISTS ({self.bound})"
        watch.readable(query, "the runner's check that no row is left (its subquery)")
        try:
            cursor.execute(query)
            left = cursor.fetchone()[0]
        except psycopg2.Error as exc:
            from migrator.postgres.errors import server_message

            raise NotDone(f"`-- backfill: batch` at line {self.line}: its {batches} batches ({rows} rows) COMMITTED and "
                          "the last touched no row, but the check that no row is left (its subquery run alone) could "
                          f"not run: {server_message(exc)}; so it is not recorded as applied: make the subquery "
                          "runnable alone (WHERE id IN (SELECT id FROM <its table> WHERE <not done> LIMIT 5000)) "
                          "and run again") from exc
        if left:
            raise NotDone(
                f"`-- backfill: batch` at line {self.line}: its last batch touched no row, yet its subquery still "
                f"picks rows, so rows remain to do ({rows} rows in {batches} committed batches stay committed): its "
                "WHERE outside the subquery leaves the picked rows out; put the whole not-done condition inside it "
                "(WHERE id IN (SELECT id FROM <its table> WHERE <not done> LIMIT 5000)) and run again")


def not_key(line: int, column: str, table: str) -> str:
    """The one line for a batch bound on a column that is no key of its table."""
    return (f"`-- backfill: batch` at line {line} bounds its batch by {column}, which is no key of {table} (no "
            f"unique index on exactly it): a batch would write every row sharing the picked values, again and "
            f"again as rows come in; use {SAFE}, or WHERE ctid = ANY(ARRAY(SELECT ctid FROM <its table> WHERE "
            "<not done> LIMIT 5000))")


class NotKey(Exception):
    """A batched backfill bound by a column that is no key (so it fails as a statement, before its first batch)."""

    pgcode = "42P10"


class NotDone(Exception):
    """A batched backfill whose empty batch does not mean no row is left (so it fails as a statement)."""

    pgcode = "55000"


class TooManyBatches(Exception):
    """A batched backfill past its most batches (program_limit_exceeded, so it fails as a statement)."""

    pgcode = "54000"


class InTransaction(Exception):
    """A batched backfill inside a BEGIN the file ran itself (the server's code for it, so it fails as a statement)."""

    pgcode = "25001"


def marked(path: Path, statements: list[Statement], transactional: bool) -> list[Statement]:
    """The file's statements with each one a `-- backfill:` line comes right before made Batched; the directive
    in a transactional file, before a statement that is no UPDATE/DELETE, or before an unbounded one, refused."""
    found, problems = _read(path, statements, transactional)
    if problems:
        line, message = problems[0]
        raise MigratorError(f"{path}:{line}: {message} (nothing was run)", USAGE)
    return found


def problems(path: Path, *, in_transaction: bool) -> list[tuple[int, str]]:
    """(line, message) of each misused directive in the file (for `sql lint`)."""
    from migrator.postgres.files import read_text
    from migrator.postgres.splitter import SplitError, split

    try:
        statements = split(read_text(path))
    except SplitError:
        return []  # the file's own check says what is wrong with it
    return _read(path, statements, in_transaction)[1]


def _read(path: Path, statements: list[Statement], transactional: bool):
    from migrator.postgres.files import read_text
    from migrator.postgres.splitter import newlines

    text = read_text(path)
    if not _MENTIONED.search(text):
        return statements, []
    found, problems = list(statements), []
    for match in DIRECTIVE.finditer(text):
        if any(s.offset <= match.start() < s.offset + len(s.text) for s in statements):
            continue  # inside a statement (a function's body, a string): not a directive
        line = newlines(text, 0, match.start()) + 1
        what = f"`-- backfill: {match[1]}`"
        value = _VALUE.fullmatch(match[1])
        index = next((i for i, s in enumerate(found) if s.offset > match.start()), None)
        between = text[match.end():found[index].offset] if index is not None else ""
        statement = found[index] if index is not None else None
        if value is None:
            problems.append((line, f"{what}: write `-- backfill: batch` (or `-- backfill: batch every N` for a "
                                   "progress line every N batches, `max M` for at most M batches)"))
        elif transactional:
            problems.append((line, f"{what} repeats its statement in committed batches, which a transactional file "
                                   "cannot do (it runs in one transaction); put it in its own file whose first line "
                                   "is `-- transactional: false`"))
        elif statement is None or between.strip() and not all(
                part.strip().startswith("--") for part in between.strip().splitlines()):
            problems.append((line, f"{what} must come right before the UPDATE or DELETE it repeats"))
        elif (bound := _bound(statement.text)) is not None and bound.reason:
            problems.append((line, f"{what}: the statement at line {statement.line} bounds its batch with {bound.reason}, "
                                   "which can pick no row while rows remain, so an empty batch would not mean done: "
                                   "use WHERE id IN (SELECT id FROM <its table> WHERE <not done> LIMIT 5000)"))
        elif bound is not None and bound.outer:
            problems.append((line, f"{what}: the subquery bounding the statement at line {statement.line} names "
                                   f"{bound.outer}, a table outside it, so it cannot run alone to check that the "
                                   "backfill is done: name only the subquery's own table in it (WHERE id IN (SELECT "
                                   "id FROM <its table> WHERE <not done> LIMIT 5000))"))
        elif bound is not None and bound.limit:
            problems.append((line, f"{what}: the statement at line {statement.line} bounds its batch with "
                                   f"{bound.limit}, which is no bound: each batch holds the row locks of all its rows "
                                   f"until it commits; use at most LIMIT {MAX_LIMIT} (5000 is a good batch)"))
        elif bound is None:
            problems.append((line, f"{what}: the statement at line {statement.line} must be an UPDATE or DELETE "
                                   "that touches a bounded batch of its own table's rows: WHERE id IN (SELECT id FROM "
                                   "<its table> WHERE <not done> LIMIT 5000) with id a key, or WHERE ctid = ANY(ARRAY("
                                   "SELECT ctid FROM <its table> WHERE <not done> LIMIT 5000)); a LIMIT over another "
                                   "table bounds that table's rows, not the batch"))
        else:
            found[index] = Batched(statement.text, statement.line, statement.offset, statement.terminated,
                                   int(value[1] or EVERY), int(value[2]) if value[2] else None, bound.select,
                                   bound.column, bound.table)
    return found, problems


def _bound(text: str) -> Bound | None:
    """None unless an UPDATE or DELETE (its own rows counted: no final SELECT over a WITH) whose WHERE bounds the
    rows of its own table, read with PostgreSQL's parser (pglast), never in a string or a comment: a top-level
    condition `col IN (SELECT col FROM <its table> ... LIMIT n)` (or `= ANY(...)`, `= (SELECT ...)`, a WITH query of
    that shape) or `ctid = ANY(ARRAY(SELECT ctid FROM <its table> ... LIMIT n))`. A LIMIT over another table
    (`tenant_id IN (SELECT id FROM tenants LIMIT 50)`) bounds that table's rows, not this one's. Else (the bound's
    SELECT, without its locking clause, to check it is empty at the end; what in it can make a batch empty while
    rows remain: TABLESAMPLE, SKIP LOCKED, OFFSET, random(), else None)."""
    from pglast import ast, parse_sql
    from pglast.parser import ParseError

    try:
        trees = [raw.stmt for raw in parse_sql(text)]
    except ParseError:
        return None
    if len(trees) != 1 or not isinstance(trees[0], (ast.UpdateStmt, ast.DeleteStmt)):
        return None
    return batch_bound(trees[0])


def batch_bound(tree) -> Bound | None:
    """_bound of a parsed UPDATE or DELETE."""
    from pglast import ast, enums

    target = (tree.relation.schemaname, tree.relation.relname)
    table = ".".join('"' + part.replace('"', '""') + '"' for part in target if part)
    ctes = {cte.ctename: cte.ctequery for cte in (tree.withClause.ctes if tree.withClause else ())}
    where = tree.whereClause
    conditions = where.args if isinstance(where, ast.BoolExpr) and where.boolop == enums.BoolExprType.AND_EXPR \
        else [where]

    found = []  # the SELECT over its own table that bounds the batch

    def column(node) -> str | None:
        if isinstance(node, ast.ColumnRef) and isinstance(node.fields[-1], ast.String):
            return node.fields[-1].sval
        return None

    def over_target(select, name: str, depth: int = 0) -> bool:
        """`select` picks `name` from the statement's own table, at most n rows of it (or a WITH query that does)."""
        if not isinstance(select, ast.SelectStmt) or len(select.fromClause or ()) != 1 \
                or len(select.targetList or ()) != 1 or column(select.targetList[0].val) != name:
            return False
        source = select.fromClause[0]
        sampled = isinstance(source, ast.RangeTableSample)
        relation = source.relation if sampled else source
        if not isinstance(relation, ast.RangeVar):
            return False
        if relation.schemaname is None and relation.relname in ctes and depth == 0:
            return over_target(ctes[relation.relname], name, 1)
        same = relation.relname == target[1] and None in (relation.schemaname, target[0]) \
            or (relation.schemaname, relation.relname) == target
        if same and (select.limitCount is not None or sampled):
            found.append(select)
            return True
        return False

    for condition in conditions:
        if isinstance(condition, ast.SubLink) and condition.subLinkType == enums.SubLinkType.ANY_SUBLINK:
            name = column(condition.testexpr)
            if name and over_target(condition.subselect, name):
                return _checked(found[-1], name, table)
        elif isinstance(condition, ast.A_Expr) and isinstance(condition.rexpr, ast.SubLink) \
                and [n.sval for n in condition.name] == ["="]:
            name, link = column(condition.lexpr), condition.rexpr
            if name and link.subLinkType in (enums.SubLinkType.ARRAY_SUBLINK, enums.SubLinkType.EXPR_SUBLINK) \
                    and over_target(link.subselect, name):
                return _checked(found[-1], name, table)
        elif isinstance(condition, ast.A_Expr) and condition.kind == enums.A_Expr_Kind.AEXPR_OP_ANY \
                and isinstance(condition.rexpr, ast.SubLink):
            name = column(condition.lexpr)
            if name and over_target(condition.rexpr.subselect, name):
                return _checked(found[-1], name, table)
    return None


_RANDOM = {"random", "random_normal", "setseed"}


def _checked(select, column: str, table: str) -> Bound:
    """The Bound of a batch picked by `select` (its `column`s of `table`)."""
    from pglast import ast, enums
    from pglast.stream import RawStream
    from pglast.visitors import Visitor

    class Calls(Visitor):
        def __init__(self):
            self.names = set()

        def visit_FuncCall(self, ancestors, node):
            self.names.add(node.funcname[-1].sval)

    calls = Calls()
    if select.whereClause is not None:
        calls(select.whereClause)
    reason = ("TABLESAMPLE" if isinstance(select.fromClause[0], ast.RangeTableSample)
              else "SKIP LOCKED" if any(clause.waitPolicy == enums.LockWaitPolicy.LockWaitSkip
                                        for clause in select.lockingClause or ())
              else "OFFSET" if select.limitOffset is not None
              else f"{sorted(calls.names & _RANDOM)[0]}()" if calls.names & _RANDOM else None)
    count, limit = select.limitCount, None
    if isinstance(count, ast.A_Const) and count.isnull:
        limit = "LIMIT ALL"
    elif count is not None and not (isinstance(count, ast.A_Const) and isinstance(count.val, ast.Integer)):
        limit = f"a LIMIT that is no number ({RawStream()(count)})"
    elif count is not None and count.val.ival > MAX_LIMIT:
        limit = f"LIMIT {count.val.ival} (more than {MAX_LIMIT} rows a batch)"
    select.lockingClause = None  # the check only reads: it must neither lock rows nor wait on them
    return Bound(RawStream()(select), reason, column, table, limit, _outer(select))


def _outer(select) -> str | None:
    """The qualifier of a column the SELECT names that no table inside it is called (`m.tenant_id` of the UPDATE's
    `m`): such a SELECT cannot run alone, as the done check runs it."""
    from pglast import ast
    from pglast.visitors import Visitor

    names, qualifiers = set(), []

    class Names(Visitor):
        def visit_RangeVar(self, _ancestors, node):
            names.add(node.alias.aliasname if node.alias else node.relname)

        def visit_RangeSubselect(self, _ancestors, node):
            if node.alias:
                names.add(node.alias.aliasname)

        def visit_CommonTableExpr(self, _ancestors, node):
            names.add(node.ctename)

        def visit_ColumnRef(self, _ancestors, node):
            if len(node.fields) > 1 and isinstance(node.fields[-2], ast.String):
                qualifiers.append(node.fields[-2].sval)

    Names()(select)
    return next((q for q in qualifiers if q not in names), None)
