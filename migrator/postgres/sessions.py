"""Other sessions as the runner names them (who blocks a migration): pid, application_name, user, client
address, state and for how long, how old its transaction is, and the lock it holds that the migration waits
for. Never what it runs: another session's query text may hold `ALTER ROLE ... PASSWORD '...'` or an API key
in a literal. Only when asked (--show-blocker-query) is the text shown, and then without its literals,
comments and numbers (`without_literals`).
"""

from __future__ import annotations

import re

from migrator import lazy_re, output
from migrator.postgres.psql_tokens import IDENTIFIER, NOT_AFTER_IDENT
from migrator.postgres.splitter import TAG_CHAR, TAG_START

# Each session blocking `pid`, and the modes it was granted on the very lock `pid` waits for (NULL: it holds
# none of it but is queued ahead for it). `{query}` is NULL unless the text was asked for. A prepared transaction
# is a row of pid 0 and nothing else (_PREPARED then says which, only then: it reads pg_locks three times).
_BLOCKERS = """
SELECT p.pid, b.application_name, b.usename, host(b.client_addr), b.state,
       extract(epoch FROM clock_timestamp() - b.state_change), extract(epoch FROM clock_timestamp() - b.xact_start),
       extract(epoch FROM b.xact_start),
       CASE WHEN b.pid IS NOT NULL THEN
       (SELECT pg_catalog.string_agg(DISTINCT h.mode, ',') FROM pg_catalog.pg_locks h, pg_catalog.pg_locks w
        WHERE w.pid = %(pid)s AND NOT w.granted AND h.pid = b.pid AND h.granted AND h.locktype = w.locktype
          AND h.database IS NOT DISTINCT FROM w.database AND h.relation IS NOT DISTINCT FROM w.relation
          AND h.page IS NOT DISTINCT FROM w.page AND h.tuple IS NOT DISTINCT FROM w.tuple
          AND h.virtualxid IS NOT DISTINCT FROM w.virtualxid
          AND h.transactionid IS NOT DISTINCT FROM w.transactionid AND h.classid IS NOT DISTINCT FROM w.classid
          AND h.objid IS NOT DISTINCT FROM w.objid AND h.objsubid IS NOT DISTINCT FROM w.objsubid) END,
       {query}, b.backend_type, b.usesysid IS NULL, b.query LIKE 'autovacuum:%%(to prevent wraparound)%%',
       CASE WHEN b.datname IS DISTINCT FROM pg_catalog.current_database() THEN b.datname END,
       ARRAY(SELECT ARRAY[q.pid::text, coalesce(o.application_name, '')]
             FROM unnest(pg_catalog.pg_blocking_pids(b.pid)) AS q(pid)
             LEFT JOIN pg_catalog.pg_stat_activity o ON o.pid = q.pid WHERE q.pid <> %(pid)s ORDER BY q.pid)
FROM unnest(pg_catalog.pg_blocking_pids(%(pid)s)) AS p(pid) LEFT JOIN pg_catalog.pg_stat_activity b ON b.pid = p.pid
WHERE b.pid IS NOT NULL OR p.pid = 0
ORDER BY p.pid
"""


# The prepared transactions (two-phase commit: no session, pg_blocking_pids says 0) holding the lock `pid` waits
# for: their locks have no pid and share the virtual transaction of the one on their own transaction id.
_PREPARED = """
SELECT x.gid, x.owner, x.database, extract(epoch FROM clock_timestamp() - x.prepared),
       pg_catalog.string_agg(DISTINCT h.mode, ',')
FROM pg_catalog.pg_prepared_xacts x
JOIN pg_catalog.pg_locks t ON t.pid IS NULL AND t.locktype = 'transactionid' AND t.transactionid = x.transaction
JOIN pg_catalog.pg_locks h ON h.pid IS NULL AND h.granted AND h.virtualtransaction = t.virtualtransaction
JOIN pg_catalog.pg_locks w ON w.pid = %(pid)s AND NOT w.granted AND h.locktype = w.locktype
 AND h.database IS NOT DISTINCT FROM w.database AND h.relation IS NOT DISTINCT FROM w.relation
 AND h.page IS NOT DISTINCT FROM w.page AND h.tuple IS NOT DISTINCT FROM w.tuple
 AND h.transactionid IS NOT DISTINCT FROM w.transactionid AND h.classid IS NOT DISTINCT FROM w.classid
 AND h.objid IS NOT DISTINCT FROM w.objid AND h.objsubid IS NOT DISTINCT FROM w.objsubid
GROUP BY x.gid, x.owner, x.database, x.prepared ORDER BY x.prepared
"""


# The lock `pid` waits for now: its mode and the relation's name (else an object's description, a shared one's or
# this database's: `database od`; else the lock's type).
_WAITED_FOR = """
SELECT l.mode, coalesce(c.relname::text, CASE WHEN l.locktype = 'object' AND l.database IN (0, (SELECT d.oid FROM
  pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()))
  THEN pg_catalog.pg_describe_object(l.classid, l.objid, l.objsubid) END, l.locktype) FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_class c ON l.locktype = 'relation' AND c.oid = l.relation
WHERE l.pid = %s AND NOT l.granted LIMIT 1
"""


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min" + (f" {seconds % 60} s" if seconds % 60 and seconds < 600 else "")
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def lock_mode(mode: str) -> str:
    """AccessExclusiveLock -> ACCESS EXCLUSIVE."""
    import re

    return " ".join(re.findall(r"[A-Z][a-z]+", mode.removesuffix("Lock"))).upper()


def waiting_for(cursor, pid: int, holders: list[dict]) -> str | None:
    """What `pid` waits for, in words (`ACCESS EXCLUSIVE lock on hcm_report_metadata`, or a row lock and whose
    transaction holds it), given its blockers(); None when it waits for no lock (any more)."""
    cursor.execute(_WAITED_FOR, (pid,))
    wanted = cursor.fetchone()
    if wanted is None:
        return None
    if wanted[1] in ("transactionid", "tuple"):  # a row another transaction changed or locked
        if holders and holders[0].get("prepared") is not None:
            return f"a row lock held by prepared transaction {output.quoted(holders[0]['prepared'])}"
        return "a row lock" + (f" held by the transaction of pid {holders[0]['pid']}" if holders else "")
    return f"{lock_mode(wanted[0])} lock on {output.visible(wanted[1])}"


def blockers(cursor, pid: int, show_query: bool = False) -> list[dict]:
    """The sessions blocking `pid`, each as blocker() makes it."""
    cursor.execute(_BLOCKERS.format(query="left(b.query, 1000)" if show_query else "NULL"), {"pid": pid})
    rows = cursor.fetchall()
    found = [blocker(row) for row in rows if row[0] != 0]
    if len(found) == len(rows):
        return found
    cursor.execute(_PREPARED, {"pid": pid})
    return found + [prepared(row) for row in cursor.fetchall()]


# This database's prepared transactions, oldest first: what a CONCURRENTLY build waiting on "pid 0" waits for.
_PREPARED_HERE = """
SELECT gid, owner, database, extract(epoch FROM clock_timestamp() - prepared), NULL
FROM pg_catalog.pg_prepared_xacts WHERE database = pg_catalog.current_database() ORDER BY prepared
"""


def prepared_here(cursor) -> list[dict]:
    """This database's prepared transactions, each as prepared() makes it."""
    cursor.execute(_PREPARED_HERE)
    return [prepared(row) for row in cursor.fetchall()]


def prepared(row) -> dict:
    """One row of _PREPARED: a prepared transaction (pid 0: it has no session), by its gid."""
    gid, owner, database, age, holds = row
    return {"pid": 0, "prepared": output.scrub(gid), "user": owner, "database": database,
            "transaction_for_s": round(float(age or 0)), "holds": [lock_mode(m) for m in (holds or "").split(",") if m]}


def blocker(row) -> dict:
    """One row of _BLOCKERS as the fields the runner prints (JSON-able); never the query unless the row has it."""
    pid, app, user, addr, state, in_state, in_xact, xact_start, holds, query, kind, no_role, wraparound, *more = row
    database, waits = more if more else (None, None)  # (bookkeeping_busy's rows have neither)
    if state is None:  # another role's session (or a role-less server process), and this one lacks pg_read_all_stats
        return {"pid": pid, "hidden": True, **({"no_role": True} if no_role else {})}
    found = {"pid": pid, "application_name": output.scrub(app or ""), "user": user, "client_addr": addr or "local",
             "state": state, "state_for_s": round(float(in_state or 0)),
             "transaction_for_s": None if in_xact is None else round(float(in_xact)),
             # (when it began, epoch seconds: the same transaction seen by two tries, told from the next one)
             "transaction_started": None if xact_start is None else round(float(xact_start), 3),
             "holds": [lock_mode(m) for m in holds.split(",")] if holds else []}
    if database is not None:  # connected to another database (a lock on a shared object: a database's, a role's)
        found["database"] = database
    if waits:  # itself waiting for a lock: the sessions whose end would free it
        found["waiting_for"] = [{"pid": int(p), "application_name": output.scrub(a)} for p, a in waits]
    if kind == "autovacuum worker":
        found.update(autovacuum=True, wraparound=bool(wraparound))
    if query is not None:
        found["query"] = output.scrub(without_literals(output.one_line(query)))[:300]
    return found


def named(application_name: str) -> str:
    """A session's application_name, its own to choose (a forged one may read as more fields): quoted."""
    return output.quoted(application_name) if application_name else "(none)"


def describe(h: dict) -> str:
    """A blocker in words, for a progress line or an error."""
    if h.get("prepared") is not None:
        return (f"prepared transaction {output.quoted(h['prepared'])} (two-phase commit: no session, it never ends by itself; "
                f"owner {output.role(h['user'])}, database {output.role(h['database'])}, prepared {duration(h['transaction_for_s'])} ago; "
                f"{_holds(h)})")
    if h.get("autovacuum"):
        what = ("an anti-wraparound autovacuum, which PostgreSQL never cancels" if h.get("wraparound") else
                "an autovacuum, which PostgreSQL cancels once a lock request waited deadlock_timeout")
        return f"pid {h['pid']} (autovacuum worker: {what}; running for {duration(h['state_for_s'])}; {_holds(h)})"
    if h.get("no_role"):
        return (f"pid {h['pid']} (a server process with no role, most likely an autovacuum worker: this role cannot "
                "see which; grant it pg_read_all_stats to see)")
    if h.get("hidden"):
        return (f"pid {h['pid']} (another role's session: this role cannot see who it is or what it runs; "
                "grant it pg_read_all_stats to see)")
    xact = f", transaction open {duration(h['transaction_for_s'])}" if h.get("transaction_for_s") is not None else ""
    other = f", in database {output.role(h['database'])}" if h.get("database") else ""
    text = (f"pid {h['pid']} (application_name {named(h['application_name'])}, user {output.role(h['user'])}, "
            f"from {h['client_addr']}{other}, {h['state']} for {duration(h['state_for_s'])}{xact}; {_holds(h)}"
            f"{_waits(h)})")
    return text + (f": {h['query'][:120]}" if h.get("query") else "")


def _waits(h: dict) -> str:
    """A blocker itself waiting for a lock: for whom (ending that one frees it)."""
    waits = h.get("waiting_for")
    if not waits:
        return ""
    named_ = ", ".join(f"pid {w['pid']} (application_name {named(w['application_name'])})" for w in waits[:SHOWN])
    return f"; itself waiting for a lock held by {named_}{' and more' if len(waits) > SHOWN else ''}"


def _holds(h: dict) -> str:
    return f"holds {' and '.join(h['holds'])}" if h.get("holds") else "queued ahead for the same lock"


SHOWN = 3  # blockers named in a line; the rest counted (40 idle sessions would make each line 8 KB)


def describe_all(holders: list[dict]) -> str:
    """The blockers in words (the first SHOWN, then how many more), each with the statement that ends it (the
    operator's way out)."""
    named = "; ".join(f"{describe(h)} -- {ending(h)}" for h in holders[:SHOWN])
    more = len(holders) - SHOWN
    return named + (f"; and {more} more session{'s' if more > 1 else ''} (pg_blocking_pids lists them)" if more > 0 else "")


def way_out(holders: list[dict]) -> str:
    """What to do about the blockers, in the final failure (each one's statement is in its description)."""
    if holders and all(h.get("prepared") is not None for h in holders):
        return "commit or roll back the prepared transaction" + ("s" if len(holders) > 1 else "") + ", then run again"
    if len(holders) > 1:
        return "end those sessions, or run again once they have ended"
    return "end that session, or run again once it has ended"


def ending(h: dict) -> str:
    """The statement that ends a blocker."""
    if h.get("prepared") is not None:
        gid = h["prepared"].replace("'", "''")
        if not gid.isprintable():  # (its quoted name above shows it escaped, which SQL would not read back)
            return "to end it: COMMIT PREPARED or ROLLBACK PREPARED it by its gid in pg_prepared_xacts"
        return (f"to end it, connected to database {h['database']} as its owner or a superuser: COMMIT PREPARED "
                f"'{gid}' or ROLLBACK PREPARED '{gid}' (whichever its transaction manager meant)")
    if h.get("wraparound"):
        return "it ends once the table is frozen (cancelled, it starts again)"
    if h.get("autovacuum") or h.get("no_role"):  # (it restarts later, as the server's own cancel would)
        return (f"to end it: SELECT pg_cancel_backend({h['pid']}) (as a superuser, or a member of "
                "pg_signal_autovacuum_worker on PostgreSQL 18+)")
    end = f"to end it: SELECT pg_terminate_backend({h['pid']})"
    if h.get("waiting_for"):  # (what it waits for may be the one to end: a stuck job, not the application)
        end += f", or free it: SELECT pg_terminate_backend({h['waiting_for'][0]['pid']})"
    return end


# What may hold a value, left to right as PostgreSQL's lexer reads them; a construct cut short (the server keeps
# only the first track_activity_query_size bytes) runs to the end. A plain '...' holding a backslash reads
# differently with standard_conforming_strings on and off, and which the session had is unknown: everything from
# it on goes. Quoted identifiers and words are names, kept; a number inside a word (t1) stays with it. A /* comment
# nests, as the server's does (/* a /* b */ c */ is one): its end is found by counting (_comment_end).
_VALUE = lazy_re.compile(rf"""
    (?P<comment>--[^\n]*|/\*)
  | (?P<estring>[Ee]'(?:[^'\\]|\\.|'')*(?:'|\Z))
  | (?P<string>(?:[Uu]&|[BbXxNn])?'(?:[^'\\]|'')*(?:'|\Z))
  | (?P<backslash>'.*)
  | (?P<dollar>{NOT_AFTER_IDENT}\$(?P<tag>{TAG_START}{TAG_CHAR}*)?\$.*?(?:\$(?P=tag)\$|\Z))
  | (?P<ident>(?:[Uu]&)?"(?:[^"]|"")*(?:"|\Z))
  | (?P<param>\$[0-9]+)
  | (?P<word>{IDENTIFIER})
  | (?P<number>0[xXoObB][0-9A-Fa-f_]+|(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[Ee][+-]?[0-9]+)?)
""", re.VERBOSE | re.DOTALL)


# A setting's value in a statement that sets one (SET, ALTER ROLE/DATABASE/SYSTEM ... SET, a function's SET):
# `SET app.key = sk_live_abc` takes a bare word as a value, which the literals' pass keeps as a name. Everything
# after `SET name =|TO` to the statement's end goes (an UPDATE's SET names columns: its statement starts otherwise).
_SETTING = lazy_re.compile(r"""(?ix)
    ^(\s*(?:(?:ALTER|CREATE)\b.*?\b)?SET\s+(?:(?:SESSION|LOCAL)\s+)?[^\s=;()]+\s*(?:=|\bTO\b))[^;]*""", re.DOTALL)


def without_literals(query: str) -> str:
    """`query` with every string, dollar-quoted body and number replaced by `?` and comments left out, and the
    value a statement sets a setting to: what it does stays readable (SELECT, ALTER ROLE app PASSWORD ?,
    SET app.key = ?), no value in it does."""
    def replace(match: re.Match) -> str:
        kind = match.lastgroup if match.lastgroup != "tag" else "dollar"
        if kind == "comment":
            return " "
        if kind in ("ident", "param", "word"):
            return match.group()
        return "?" if kind != "backslash" else "?..."

    parts, at = [], 0
    while (match := _VALUE.search(query, at)) is not None:
        parts.append(query[at:match.start()] + replace(match))
        at = _comment_end(query, match.end()) if match.group() == "/*" else match.end()
    scrubbed = "".join(parts) + query[at:]
    return ";".join(_SETTING.sub(r"\1 ?", statement) for statement in scrubbed.split(";"))


def _comment_end(query: str, at: int) -> int:
    """Where the /* comment whose body starts at `at` ends, nested ones inside it counted (the text's end if it
    was cut short)."""
    depth = 1
    while depth and at < len(query):
        if query.startswith("/*", at):
            depth, at = depth + 1, at + 2
        elif query.startswith("*/", at):
            depth, at = depth - 1, at + 2
        else:
            at += 1
    return len(query) if depth else at


def wait_words(what: str | None, holders: list[dict]) -> str:
    """A wait in words: what it waits for and who holds it (the watcher's lines, a statement_timeout's)."""
    return f"waiting for {what or 'a lock'}" + (", held by " + describe_all(holders) if holders else "")
