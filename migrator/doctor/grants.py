"""Doctor's word on who else may write the runner's bookkeeping: the tables are its own, and a role that writes
them forges a live lock (migrate waits, break-lock refuses) or deletes history (a migration applied twice).
migrate takes such rights on the tables its user owns (trust.disown), a column's and MAINTAIN included; the roles
the user is granted to (they act as it) are for a DBA; the members of pg_write_all_data (it writes every table)
migrate refuses unless SCHEMA_CREATORS_TRUSTED names them (history_writers.py)."""

from __future__ import annotations

from migrator import history_writers, planted
from migrator.grant_text import grants_list, revoke_advice, revoke_sql, runnable
from migrator.doctor import FAIL, OK, WARN, Check, DoctorReport

def bookkeeping_grants(report: DoctorReport, backend, schema: str, user: str, accepted: tuple[str, ...] = ()) -> None:
    """A WARN for rights migrate takes, a FAIL for those on tables it does not own, a WARN naming the members, and
    a FAIL naming who writes every table (pg_write_all_data: migrate refuses them), a WARN for those `accepted`
    (SCHEMA_CREATORS_TRUSTED)."""
    grants, members = (backend.verified[8], backend.verified[9]) if len(backend.verified) > 9 else ([], [])
    mine = [grant for grant in grants if grant[3] == "true"]
    others = [grant for grant in grants if grant[3] != "true"]
    # (a forged mark for a pending migration: the migrate that revokes records the history unconfirmed: history_trust)
    harm = "they could forge its lock, delete its history, or add rows that skip a migration"
    if mine:
        report.add(Check("postgres bookkeeping grants", WARN, f"other roles may write the runner's bookkeeping: "
                         f"{grants_list(schema, mine)}; {harm}",
                         "review the history afterwards (it may hold forged rows): the next migrate revokes it and "
                         "refuses until `sql trust-history --yes`, or run "
                         f"{runnable(revoke_sql(schema, mine))}"))
    if others:
        report.add(Check("postgres bookkeeping grants", FAIL, f"other roles may write the runner's bookkeeping: "
                         f"{grants_list(schema, others)}; {harm} (migrate refuses: it cannot take them)",
                         revoke_advice(schema, others)))
    through = backend.verified[14] if len(backend.verified) > 14 else []
    if through:
        said, fix_it = planted.views(schema, through)
        report.add(Check("postgres bookkeeping grants", FAIL, f"other roles may write the runner's bookkeeping through "
                         f"a view: {said}; the write runs with the view owner's rights (migrate refuses)", fix_it))
    if backend.distrusted:
        from migrator import history_trust

        tables = ", ".join(f"{schema}.{table}" for table in sorted(backend.distrusted))
        schema_option = f" --schema {schema}" if getattr(backend, "schema", None) else ""
        report.add(Check("postgres history trust", FAIL, f"history {tables} is unconfirmed: other roles could write "
                         "it until a run revoked their rights, so what it records as applied may be forged; migrate "
                         "refuses until it is confirmed",
                         f"review what `runner.py status{schema_option}` lists as applied (delete the rows of "
                         f"migrations that never ran), then run `{history_trust.CONFIRM}{schema_option}`"))
    if getattr(backend, "others_distrusted", None):
        tables = ", ".join(f"{schema}.{table}" for table in sorted(backend.others_distrusted))
        report.add(Check("postgres history trust", WARN, f"history {tables} (another folder's, not this one's) is "
                         "unconfirmed: that service's migrate refuses until its operator confirms it",
                         "run `sql trust-history` with that service's folder, review, then --yes"))
    writers, quoted_user = history_writers.writers(backend)
    if members:
        report.add(Check("postgres bookkeeping grants", WARN, f"roles {', '.join(members)} are granted user {user}: "
                         "they act as it and may write the runner's bookkeeping (forge its lock, delete its history)",
                         f"{runnable('REVOKE ' + quoted_user + ' FROM ' + ', '.join(members))}; give the application a "
                         "role of its own"))
    left = history_writers.untrusted(writers, accepted)
    if left:
        report.add(Check("postgres bookkeeping grants", FAIL, f"roles {', '.join(left)} are members of "
                         f"pg_write_all_data: {history_writers.HARM} (migrate refuses)", history_writers.fix(left)))
    if len(left) < len(writers):
        kept = [name for name in writers if name not in left]
        report.add(Check("postgres bookkeeping grants", WARN, f"roles {', '.join(kept)} are members of "
                         f"pg_write_all_data: {history_writers.HARM}; accepted by {planted.SETTING}",
                         "if that is not a deliberate choice, "
                         f"{runnable('REVOKE pg_write_all_data FROM ' + ', '.join(kept))}"))


def schema_creators(report: DoctorReport, backend, schema: str, accepted: tuple[str, ...]) -> None:
    """Who else may plant objects in the schema (planted.py): a FAIL while migrate refuses, a WARN for roles
    SCHEMA_CREATORS_TRUSTED accepts (what they plant still runs as the user), else OK."""
    state = backend.verified
    found = planted.untrusted(state, ())
    if not any(found):
        report.add(Check("postgres schema creators", OK, f"no other role may create in schema {schema}, owns "
                         "objects there or may add triggers to its tables"))
        return
    left = planted.untrusted(state, accepted)
    harm = planted.harm(state[2], left if any(left) else found)
    if any(left):
        report.add(Check("postgres schema creators", FAIL, f"{planted.found(schema, *left)}: {harm} (migrate "
                         "refuses)", planted.fix(schema, *left, user=state[2])))
    else:
        report.add(Check("postgres schema creators", WARN, f"{planted.found(schema, *found)}: {harm}; accepted by "
                         f"{planted.SETTING}", f"if that is not deliberate: "
                         f"{planted.fix(schema, *found, accept=False, user=state[2])}"))


def bookkeeping_locks(report: DoctorReport, backend, schema: str) -> None:
    """A lock on a bookkeeping table that every write command's first write would wait for, then stop on (exit 4):
    a CREATE TRIGGER left open or PREPAREd (attack23r 5), a LOCK TABLE. A prepared transaction outlives sessions and
    restarts: FAIL; a session may end: WARN. Nothing said when none holds one."""
    from migrator.grant_text import ident
    from migrator.postgres import bookkeeping_busy

    tables = [f"{ident(schema)}.{ident(t)}" for t in backend.verified[7] if t not in backend.verified[6]]
    if not tables:
        return
    name = bookkeeping_busy.held(backend.connection, tables)
    who = bookkeeping_busy.holders(backend.connection, name)
    if who != bookkeeping_busy.NONE_NOW:
        stuck = "prepared transaction" in who
        report.add(Check("postgres bookkeeping locks", FAIL if stuck else WARN, f"{name} is locked against the "
                         f"runner's writes by {who}", "every write command waits --ddl-lock-timeout for it, then "
                         "stops (exit 4) with nothing run: end it as said"))
