"""A non-transactional file's CONCURRENTLY builds and REINDEXes looked at right before each runs, in the migration's
session: the session's search_path is then the one the file's earlier statements really left (a DO block's EXECUTE,
a computed set_config: paths the judge cannot read, attack24x 3), so an unqualified name resolves as the server
resolves it in the statement. Where it resolved is kept for the checks after the file (concurrently.invalid_after,
built, skipped). When an earlier try of the migration stopped part-way (its failure record), that try's work is
found there too:

- an INVALID index of the build's name on its table is that try's leftover, dropped (CONCURRENTLY) so the build runs
  again; a VALID one with the same definition is that try's work, which the server finished after the runner died:
  the statement is counted as done. The INVALID copies an interrupted `REINDEX INDEX CONCURRENTLY` leaves beside its
  index (name_ccnew...) are dropped before it runs again.
"""

from __future__ import annotations

from migrator import interrupt, output
from migrator.errors import USAGE, MigratorError
from migrator.postgres import concurrently, file_search_path
from migrator.postgres.concurrently import Build, _find, _oid, on_table, reindex_leftovers, without_lock_timeout
from migrator.postgres.index_definition import made_since, named_like, quoted, same, server_name
from migrator.postgres.transaction_status import IDLE


def _drop(cursor, qualified: str) -> None:
    """A leftover dropped as the file's own statements run: SIGTERM cancels the drop's wait for older transactions at
    once (cancel.on_sigterm), the index stays INVALID for the next run (attack24v 2: it waited out a pg_dump)."""
    with interrupt.live(), without_lock_timeout(cursor):
        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}")


class Done(set):
    """The statements counted as done (the index they build is already there, valid), and those indexes' oids; where
    the session resolved each CONCURRENTLY statement's table or index ({statement index: qualified}); the indexes on
    those tables before the statement ran (`before`: not the file's work)."""

    def __init__(self, rerun: bool = False, record=None):
        super().__init__()
        self.oids: set[int] = set()
        self.rerun, self.record = rerun, record  # (an earlier try stopped part-way; its failure record)
        self.tables: dict[int, str] = {}
        self.before: set[int] = set()


def prepare(earlier_failure: str | None, record=None) -> Done:
    """A non-transactional file's Done, before it runs. `record`: (the failures table, the migration's id), see
    made_since."""
    return Done(earlier_failure is not None, record)


def before_statement(connection, statements, index: int, path, done: Done) -> None:
    """Right before statement `index` runs (once per run), if it is a CONCURRENTLY build or REINDEX: its table (or
    index) resolved on the session's path and kept; on a rerun, the earlier try's leftovers dropped and a VALID index
    of its definition counted as done (the statement added to `done`)."""
    statement = statements[index]
    if index in done.tables or connection.info.transaction_status != IDLE \
            or not concurrently.is_concurrent(statement.text):
        return
    where = f"{path}:{statement.line}"
    with connection.cursor() as cursor:
        for reindex in concurrently.reindexes([statement]):
            if reindex.kind != "schema":
                reindex.target = _here(cursor, reindex.target)
            done.tables[index] = reindex.target  # (looked at once a run)
            for leftover in reindex_leftovers(cursor, reindex):
                if not done.rerun:
                    done.before.add(_oid(cursor, leftover))
                    continue
                _drop(cursor, leftover)
                output.note(f"note: {where}: dropped INVALID index {leftover}, left by an earlier try of this "
                            "migration's REINDEX")
        for build in concurrently.builds([statement]):
            build.index, build.table = index, _here(cursor, build.table)
            done.tables[index] = build.table
            found = None
            if done.rerun:
                found = _unnamed(cursor, build, where, done.record) if build.name is None else \
                    _named(cursor, build, where, record=done.record)
            if found is not None:
                done.add(index)
                done.oids.add(found)
            done.before.update(row[4] for row in on_table(cursor, build))
        done.before.difference_update(done.oids)  # (an accepted one is the statement's work)


def _here(cursor, name: str) -> str:
    """`name` (quoted) qualified as it resolves on the session's path now; as written when nothing has that name."""
    found = file_search_path.relation(cursor, None, name)
    return quoted(*found) if found else name


def prepare_retry(connection, statements, index: int, path, done: Done, before: set[int], said: str = "") -> None:
    """Before the in-run retry of a CREATE INDEX CONCURRENTLY that failed part-way (a deadlock, a cancel): as a
    rerun's prepare, a named build's INVALID index dropped (it got past "already exists": its own), a VALID one of
    its definition counted as done; an unnamed build's INVALID index of its definition and server-given name that
    was not on the table before the file ran (not in `before`) dropped, else the retry builds `t_c_idx1` beside it.
    (`said`: the note's words after the name, when the build is not tried again.) A REINDEX's INVALID copies made
    since the file began (its tries': name_ccnew, name_ccnew1...) dropped, else each retry adds one (fix24ap)."""
    with connection.cursor() as cursor:
        for reindex in concurrently.reindexes(statements, cursor, done.tables):
            if reindex.index == index:
                for leftover in reindex_leftovers(cursor, reindex):
                    if _oid(cursor, leftover) not in before:
                        _drop(cursor, leftover)
        for build in concurrently.builds(statements, cursor, done.tables):
            if build.index == index:
                where = f"{path}:{statements[index].line}"
                found = _unnamed(cursor, build, where, None, before, said) if build.name is None else \
                    _named(cursor, build, where, said, before=before)
                if found is not None:
                    done.add(index)
                    done.oids.add(found)



DONE = ("is already built and valid (an earlier try's build, finished by the server after that runner stopped): "
        "counted as done")
DROPPED = "left by an earlier try of this migration; building it again"


def _named(cursor, build: Build, where: str, said: str = "", record=None, before: set[int] | None = None) -> int | None:
    """A named build's index: dropped when INVALID, its oid when VALID with the build's definition (index_definition:
    with `record`, one this role cannot compare counts when the interrupted try made it; in the run's own retry,
    `before`, an INVALID one made since the file ran)."""
    found = _find(cursor, build)
    if found is None:
        return None
    valid, _, _, qualified, oid, _ = found
    ours = _ours(cursor, build, found, record, before)
    if not valid and not ours:
        why = "another definition" if ours is False else "its definition could not be compared: no TEMPORARY privilege"
        raise MigratorError(f"{where}: an INVALID index {qualified} is in the way of this build but is "
                            f"not what it builds ({why}): not this migration's leftover, so it is "
                            f"not dropped; look at it, drop it yourself (DROP INDEX CONCURRENTLY {qualified}) "
                            "or rename the build, then run again", USAGE)
    if not valid:
        _drop(cursor, qualified)
        output.note(f"note: {where}: dropped INVALID index {qualified}, {said or DROPPED}")
    elif ours:
        output.note(f"note: {where}: index {qualified} {DONE}")
        return oid
    return None


def _ours(cursor, build: Build, row, record, before: set[int] | None) -> bool | None:
    """index_definition.same, and in the run's own retry (`before`: the table's indexes before the file ran) an
    INVALID index not there before, which this role cannot compare (no TEMP), is the failed try's: no other statement
    of the file left one (it would have stopped the file), and the name is this build's (attack24t 5)."""
    ours = same(cursor, build, row, record)
    return True if ours is None and before is not None and not row[0] and row[4] not in before else ours


def _unnamed(cursor, build: Build, where: str, record, before: set[int] | None = None, said: str = "") -> int | None:
    """An unnamed build's earlier try: an index on its table with its definition and the name the server gives
    it (`t_c_idx`, or `t_c_idx1`... when taken) is that try's: dropped when INVALID; when VALID, counted as the
    statement's work only if it was made after the migration's failure record was last written (a twin someone
    made before the migration ran is not its work: the file's build runs, as written). Those in `before` are left."""
    base = server_name(cursor, build)
    if base is None:
        return None
    accepted = None
    for row in on_table(cursor, build):
        valid, _, _, qualified, oid, name = row
        if oid in (before or ()) or not named_like(base, name) or not _ours(cursor, build, row, record, before):
            continue
        if not valid:
            _drop(cursor, qualified)
            output.note(f"note: {where}: dropped INVALID index {qualified}, {said or DROPPED}")
        elif accepted is None and made_since(cursor, oid, record):
            output.note(f"note: {where}: index {qualified} {DONE}")
            accepted = oid
    return accepted


