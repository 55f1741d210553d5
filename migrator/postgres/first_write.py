"""A run's first write to its bookkeeping, made safe against a CREATE TRIGGER still open (issue 23, attack23q 1).

A role that held TRIGGER on the runner's tables may have begun `CREATE TRIGGER` before its rights were taken (a
DBA's REVOKE, or an earlier run's): with pg_class.relhastriggers already true nothing conflicts with it, the run's
catalog read cannot see it, and the run's INSERT waits for it, then fires what it commits, as the migration role.
So the first write of a run (its lock row) begins, in the same statement and transaction, by locking the tables
verified at connect in ROW EXCLUSIVE mode when another session holds a CREATE TRIGGER's lock on one (the mode
its writes take anyway: two runners still wait on each other as before; a CREATE TRIGGER conflicts with it, and
none can begin while it is held), bounded by the run's lock_timeout, then reads trust's PLANTED check again and
refuses before writing. Once it commits no new trigger can begin: no other role may create one any more. No round
trip of its own: it rides on the lock row's INSERT.
"""

from __future__ import annotations

from migrator import trust
from migrator.errors import USAGE, MigratorError
from migrator.grant_text import ident

_PLANTED_FOUND = "hcm-db-migrations: planted on the bookkeeping"
# (psycopg2 fills the parameters in client side: inside the DO body they are plain literals)
# Locked only while another session holds or awaits a CREATE TRIGGER's mode on one (a DBA's EXCLUSIVE lock on a
# table the run writes later still times out that write, as it did: test_bookkeeping_busy). One granted later is
# no trigger: CREATE TRIGGER checks the TRIGGER right once it holds the lock, and no other role has it any more.
_GUARD = ("DO $hcm_first_write$ BEGIN IF EXISTS (SELECT FROM pg_catalog.pg_locks l WHERE l.locktype "
          "OPERATOR(pg_catalog.=) 'relation' AND l.mode OPERATOR(pg_catalog.=) 'ShareRowExclusiveLock' "
          "AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid() AND l.relation OPERATOR(pg_catalog.=) ANY ("
          "CAST(CAST(%(hcm_names)s AS pg_catalog.regclass[]) AS pg_catalog.oid[]))) THEN "
          "LOCK TABLE {tables} IN ROW EXCLUSIVE MODE; END IF; "
          "IF ({planted}) OPERATOR(pg_catalog.>) 0 THEN RAISE EXCEPTION '" + _PLANTED_FOUND + "'; END IF; "
          "END $hcm_first_write$; ")
# Whether trust's PLANTED finds anything planted: its CTEs alone, counted (the rest of its row, the rights and the
# words, is the connect check's and refuse()'s): in the run's new session half the guard's time (issue 22).
_CTES, _FOUND, _ = trust._ON_CURSOR.partition("\nSELECT n.oid IS NOT NULL")
if not _FOUND:
    raise ImportError("first_write: trust.PLANTED no longer ends in its SELECT n.oid IS NOT NULL: read its CTEs anew")
_ANY_PLANTED = (_CTES + "\nSELECT pg_catalog.count(*) FROM planted").replace("%(s)s", "%(hcm_s)s") \
    .replace("%(tables)s", "%(hcm_tables)s")


def tables(connection, schema: str) -> list[str]:
    """The tables of `schema` this connection's verify() found present: those a trigger may have been begun on."""
    return sorted(table for s, table in trust._VERIFIED.get(connection, ()) if s == schema)


def guard(connection, schema: str) -> tuple[str, dict]:
    """The statement to send before the first write, in its round trip (%(name)s parameters), and its
    parameters; none when this run verified no table there (it makes them: no one else could begin a trigger)."""
    present = tables(connection, schema)
    if not present:
        return "", {}
    names = ", ".join(f"{ident(schema)}.{ident(t)}" for t in present)
    return _GUARD.format(tables=names, planted=_ANY_PLANTED), {
        "hcm_s": schema, "hcm_tables": present, "hcm_names": [f"{ident(schema)}.{ident(t)}" for t in present]}


def refuse(backend, exc: BaseException, where: str) -> None:
    """The guard's failure as the run's one line (after the transaction's rollback): a trigger, rule or policy that
    appeared (exit 2), or a lock it could not get within lock_timeout (exit 4, naming who holds it)."""
    schema = backend.bookkeeping_schema
    if getattr(exc, "pgcode", None) == "P0001" and _PLANTED_FOUND in str(exc):
        with backend.connection.cursor() as cursor:
            cursor.execute(trust._ON_CURSOR, {"s": schema, "tables": tables(backend.connection, schema), "rights": []})
            state = cursor.fetchone()
        raise MigratorError(trust.planted_error(schema, state[2], state[3] or ["(gone again)"], state[6], where),
                            USAGE) from None
    context = getattr(getattr(exc, "diag", None), "context", None) or ""
    if getattr(exc, "pgcode", None) == trust.LOCK_NOT_AVAILABLE and "LOCK TABLE" in context:
        from migrator.postgres import bookkeeping_busy

        held = bookkeeping_busy.held(backend.connection, [f"{ident(schema)}.{ident(t)}"
                                                          for t in tables(backend.connection, schema)])
        raise bookkeeping_busy.error(
            backend.connection, held, where, "nothing was run",
            "another session holds it in an open transaction (a trigger being created, a LOCK TABLE): find it in "
            "pg_locks, end it, and run again, or raise --ddl-lock-timeout") from None
