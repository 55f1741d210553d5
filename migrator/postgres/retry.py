"""Lock retries: a statement that cannot get its locks within lock_timeout is tried again, with backoff and
jitter, until the run's lock retry budget is spent.

Each try waits at most lock_timeout (300 ms by default) for its locks, so the application queries that queue
behind the migration's lock request never wait longer; between tries nothing is requested and the application
runs. A transactional file is retried as a whole (its transaction rolled back: as if that try never ran), a
non-transactional one from the statement that failed (or from the BEGIN of a block the file opened itself).

A try's lock waits are bounded as a whole, not per statement: in a transaction, a later statement waits while
holding the locks the earlier ones took, so the application queued behind those would wait n x lock_timeout.
Each statement after the try's first gets what is left of lock_timeout since that first statement started
(TryBudget; the time the earlier ones ran counts), never less than a floor: when nothing is left, a statement
whose lock is free still runs and one that would wait ends the try after the floor. lock_timeout bounds each lock
wait, though, and one statement may wait for several in turn (a partitioned table's partitions, a foreign key's
two tables, LOCK TABLE a, b, a batch's row locks), holding those it got: the probe (below) ends such a statement
once the try's time is spent, and that cancel is a lock timeout like the server's. A file's own SET lock_timeout
(pg_dump's header: 0) is overridden, with a note: the runner's bound wins.

Who blocks is seen from a second connection while a try waits (pg_blocking_pids): once the try has failed its
lock request is gone, and the server no longer says. Another session is described as the progress lines describe
it (postgres.sessions): who it is and the lock it holds, its query only with --show-blocker-query, without literals.
"""

from __future__ import annotations

import random
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from migrator import interrupt, output
from migrator.durations import pg_seconds
from migrator.postgres import autovacuum, sessions

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (or NOWAIT)
FIRST_DELAY, MAX_DELAY = 0.5, 10.0  # seconds between tries: doubling, jittered, capped
PROBE_AFTER = 0.01  # seconds a statement runs before the probe asks who blocks it, then every PROBE_EVERY
PROBE_EVERY = 0.01  # (soon enough to see a wait of the floor's 20-30 ms; every 50 ms after SLOWER_AFTER)
SLOWER_AFTER = 0.2
PROBE_NAME = "hcm-db-migrations lock probe"
RECONNECT_FIRST, RECONNECT_MAX = 0.1, 2.0  # seconds between the probe's tries to connect again, doubling
FLOOR_SHARE, FLOOR_MIN = 0.1, 0.02  # the least a later statement may wait: a tenth of lock_timeout, >= 20 ms
STEP_MS = 10  # lock_timeout is set again once what is left fell by this much (not before every statement)
IN_TRANSACTION = 2  # psycopg2's TRANSACTION_STATUS_INTRANS: a transaction open, no statement running


@dataclass
class Policy:
    per_try: float  # seconds each try waits for a lock (lock_timeout); 0: forever, so nothing to retry
    budget: float  # seconds of retrying in all; 0: no retry
    quick_autovacuum_cancel: bool = False  # the session's deadlock_timeout lowered below per_try (autovacuum.py)

    @classmethod
    def of(cls, limits) -> "Policy":
        if limits is None:
            return cls(0.0, 0.0)
        return cls(pg_seconds(limits.lock_timeout), pg_seconds(limits.lock_retry_budget, "s"))


def lock_timed_out(exc) -> bool:
    """A StatementFailed whose statement gave up waiting for a lock."""
    return getattr(getattr(exc, "cause", None), "pgcode", None) == LOCK_NOT_AVAILABLE


class Backoff:
    """The waits between the tries of one file: doubling from FIRST_DELAY to MAX_DELAY, each jittered (so
    runners retrying together spread out), none beyond the budget."""

    def __init__(self, policy: Policy):
        self.policy, self.started, self.tries = policy, time.monotonic(), 1

    def spent(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return max(0.0, self.policy.budget - self.spent())

    def next_delay(self) -> float | None:
        """Seconds to wait before the next try, or None when the budget is spent."""
        left = self.left()
        if left <= 0:
            return None
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (self.tries - 1))
        self.tries += 1
        return min(left, delay / 2 + random.uniform(0, delay / 2))


def sleep(seconds: float) -> None:
    """The wait between tries. SIGTERM (or SIGINT) ends it at once: Interrupted, nothing of the next try started."""
    end = time.monotonic() + seconds
    while True:
        signum = interrupt.requested()
        if signum is not None:
            stopped = interrupt.Interrupted(signum)
            stopped.before_block = True
            raise stopped
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(0.05, remaining))


@dataclass
class Seen:
    """Who blocked a statement, as the probe last saw it: its blockers (sessions.blockers) and what it waited for;
    `cancelled`: the probe ended the statement (the try's bound spent), after `waited` seconds of lock waits."""
    blockers: list[dict]
    waiting_for: str | None = None
    cancelled: bool = False
    waited: float | None = None
    lock_timeout: float | None = None  # seconds the statement's lock_timeout was (TryBudget's), if not the policy's
    blind: str | None = None  # why the probe could not see the session when it ended the try (Probe: blind)


# The probe's cancel of the migration session: only while it still waits for a lock (one query: the check and the
# signal together), and only once its transaction is older than the try's time too (a backfill's batch commits
# and starts afresh: each batch is a try). Whether the try's time is spent and this wait outlasted the floor the
# probe knows.
_CANCEL = """SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity
WHERE pid = %s AND state = 'active' AND wait_event_type = 'Lock' AND (wait_event = 'relation' OR NOT %s)
  AND clock_timestamp() - xact_start > pg_catalog.make_interval(secs => %s)"""
_WAIT = "SELECT wait_event FROM pg_catalog.pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'"
QUERY_CANCELED = "57014"


class Probe:
    """Who blocks the migration session's running statement, asked from a second (read-only) connection every
    PROBE_EVERY seconds while a statement has run longer than PROBE_AFTER; `seen` is the last answer that named
    someone. A statement only stamps when it started (no cost per statement); the connection is opened the first
    time one runs long enough. If it cannot be, the retries go on without naming the blocker.

    It also bounds the try as a whole (lock_timeout bounds each lock wait, and one statement may wait for several
    locks in turn, holding those it got: a partitioned table's partitions, LOCK TABLE a, b, a foreign key's two
    tables): once the try's lock waits, as sampled, pass `per_try` and `floor` (a single wait is the server's
    lock_timeout to end; the statements' own work is not counted) and the current wait has lasted longer than
    `floor`, the probe cancels the statement, and the runner takes that cancel as a lock timeout.
    The cancel is sent under `_sending`, which the statement's end waits for, so it can only reach the statement
    it was meant for (a cancel that reaches an idle session is dropped by the server).

    Blind: its connection may be refused (the role's CONNECTION LIMIT, max_connections full) or closed under it
    (an admin's pg_terminate_backend, a failover). It connects again, waiting longer each time (RECONNECT_FIRST
    doubling to RECONNECT_MAX), and says once why it is blind. Meanwhile it cannot tell a lock wait from work, so
    it bounds by the clock the statements that may take a lock the application's queries wait on (clock_bound.py:
    DDL, LOCK TABLE, DO, CALL, ...): one that ran longer than `per_try` + `floor` is cancelled through the migration
    connection's own cancel request (libpq's, which needs no session slot), as a lock timeout: it never stalls
    the application longer than when seen, at the cost of retrying such a statement that was merely slow. Data
    changes, queries, a backfill's batches, CONCURRENTLY statements, work on tables this run created or the file
    accepts a rewrite of are left alone (clock_bound.py)."""

    def __init__(self, params: dict | None, pid: int, show_query: bool = False, per_try: float = 0.0,
                 floor: float = 0.0, cancel=None):
        self.params, self.pid, self.show_query, self._cancel = params, pid, show_query, cancel
        self.per_try, self.floor = per_try, floor
        self.seen = Seen([])
        self._since: float | None = None  # when the running statement started; None: none runs
        self._try: float | None = None  # when the try's first statement started
        self._waiting: float | None = None  # when the probe first saw the running statement wait for a lock
        self._waited = 0.0  # the try's lock waits so far, as the probe saw them (its work is not counted)
        self._seen_waiting: float | None = None  # the probe's last sample that saw a wait, if the latest did
        self._sending = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None
        self.blind: str | None = None  # why the probe cannot see the session now (its connection refused or lost)
        self._reconnect_at, self._reconnect_wait = 0.0, RECONNECT_FIRST
        self._clock_bound = True  # the running statement may be ended by the clock while the probe is blind
        self._relations = False  # only its waits for a table's lock count (a detach: not those for older snapshots)

    @contextmanager
    def statement(self, try_started: float | None = None, bounded: bool = True,
                  clock_bound: bool = True, relations: bool = False) -> Iterator[None]:
        """Around one statement (`try_started`: when the try's first statement started, if not this one;
        not `bounded`: a CONCURRENTLY build, whose waits block no one, is never cancelled; not `clock_bound`:
        not ended by the clock while the probe is blind, a backfill's batches; `relations`: only its waits for a
        table's lock are bounded, a DETACH ... CONCURRENTLY's waits for older snapshots block no one)."""
        now = time.monotonic()
        started = (try_started or now) if bounded else None
        if started != self._try:
            self._waited = 0.0
        self.seen, self._waiting, self._seen_waiting, self._try = Seen([]), None, None, started
        self._clock_bound, self._relations = clock_bound, relations
        self._since = now
        if self._thread is None and self.params is not None:
            self._thread = threading.Thread(target=self._run, name="lock-probe", daemon=True)
            self._thread.start()
        try:
            yield
        finally:
            with self._sending:  # a cancel being sent lands on this statement, never on the next
                self._since = None

    def cancelled(self, exc) -> bool:
        """The statement failed because the probe cancelled it (not a user's Ctrl-C or statement_timeout)."""
        return self.seen.cancelled and getattr(getattr(exc, "cause", None), "pgcode", None) == QUERY_CANCELED

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        import psycopg2

        while not self._stop.wait(PROBE_EVERY):
            since = self._since
            running = time.monotonic() - since if since is not None else 0.0
            # a lock is mostly asked for as a statement starts; later on, every 50 ms, after 5 s once a second
            if running < PROBE_AFTER or (running > SLOWER_AFTER and int(running / PROBE_EVERY) % 5) or (
                    running > 5 and int(running / PROBE_EVERY) % int(1 / PROBE_EVERY)):
                continue
            if self._conn is None and time.monotonic() < self._reconnect_at:
                self._bound_by_clock(since)
                continue
            try:
                if self._conn is None:
                    self._conn = psycopg2.connect(**{**self.params, "application_name": PROBE_NAME})
                    self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    self._sees_again()
                    found = sessions.blockers(cur, self.pid, self.show_query)
                    wanted = sessions.waiting_for(cur, self.pid, found) if found else None
                    # both read while it still waited (two queries: the try may time out between them), and still
                    # the statement it asked about
                    if self._relations and found and wanted:  # waiting out older snapshots: named, not counted
                        cur.execute(_WAIT, (self.pid,))
                        if (cur.fetchone() or ("",))[0] != "relation":
                            if self._since == since:
                                self.seen = Seen(found, wanted)
                            found = None
                    if not (found and wanted and self._since == since):
                        self._waiting = None if self._since == since else self._waiting
                        self._seen_waiting = None
                        continue
                    now = time.monotonic()
                    self._waiting = self._waiting or now
                    if self._seen_waiting is not None:
                        self._waited += now - self._seen_waiting
                    self._seen_waiting = now
                    # past the try's time by the floor: a single wait is the server's lock_timeout to end (its
                    # own, truer line); the probe ends only what that cannot bound, several waits in turn
                    spent = self._try is not None and self._waited > self.per_try + self.floor
                    if self.per_try and spent and now - self._waiting >= self.floor:
                        with self._sending:
                            if self._since == since:
                                cur.execute(_CANCEL, (self.pid, self._relations, self.per_try))
                                row = cur.fetchone()
                                sent = bool(row and row[0])
                                self.seen = Seen(found, wanted, sent, self._waited)
                                continue
                    if self._since == since:
                        self.seen = Seen(found, wanted)
            except psycopg2.Error as exc:
                self._lost(exc)
                self._bound_by_clock(since)

    def _lost(self, exc) -> None:
        """The probe's connection was refused or closed: blind until it connects again (one line says so)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._reconnect_at = time.monotonic() + self._reconnect_wait
        self._reconnect_wait = min(RECONNECT_MAX, self._reconnect_wait * 2)
        if self.blind is None:
            self.blind = (output.scrub(str(exc)).strip().splitlines() or [type(exc).__name__])[0]
            output.note(f"note: the lock probe cannot see the migration session ({self.blind}): until it connects "
                        f"again, a statement that may lock what the app uses (DDL, LOCK, DO, CALL) running longer than "
                        f"{seconds_text(self.per_try + self.floor)} "
                        "is ended as a lock wait and retried, blockers unnamed; free a connection for it (the role's "
                        "CONNECTION LIMIT, max_connections)")

    def _sees_again(self) -> None:
        self.blind, self._reconnect_wait = None, RECONNECT_FIRST

    def _bound_by_clock(self, since: float | None) -> None:
        """Blind: the bound kept by the clock (see the class): the statement cancelled, once, past it."""
        if (self.blind is None or self._cancel is None or not self.per_try or not self._clock_bound
                or self._try is None or since is None or self.seen.cancelled):
            return
        ran = time.monotonic() - since
        if ran <= self.per_try + self.floor:
            return
        import psycopg2

        with self._sending:
            if self._since == since:
                try:
                    self._cancel()
                except psycopg2.Error:  # the migration session itself is gone: its statement fails on its own
                    return
                self.seen = Seen([], None, True, ran, blind=self.blind)


class TryBudget:
    """lock_timeout, per statement, of what is left of the try's: from the first statement of a transaction (a
    transactional file's try, or a BEGIN ... COMMIT block a non-transactional file opens) on, the time spent
    counts. Outside a transaction each statement commits and frees its locks: it gets the whole lock_timeout.
    A file's own SET lock_timeout is overridden (override): the runner's bound wins, unless the file's is stricter.
    `retried`: a try that timed out is retried (the lock retry budget is not 0)."""

    def __init__(self, per_try: float, retried: bool = True):
        self.per_try_ms, self.retried = round(per_try * 1000), retried
        self.file_ms: int | None = None  # a stricter lock_timeout the file set itself: kept, never loosened
        self.floor_ms = min(self.per_try_ms, max(round(FLOOR_MIN * 1000), round(self.per_try_ms * FLOOR_SHARE)))
        self.noted: set[int] = set()  # the lines whose SET lock_timeout was said overridden (once, not each try)
        self.restart()

    def restart(self) -> None:
        """A new try (the transaction rolled back and begun again): nothing spent, lock_timeout the session's."""
        self.started: float | None = None
        self.set_ms: int | None = None

    def before(self, cursor) -> None:
        """Before a statement: lock_timeout set to what is left (SET LOCAL: gone with the transaction)."""
        if cursor.connection.info.transaction_status != IN_TRANSACTION:
            self.restart()
            return
        now = time.monotonic()
        if self.started is None:
            self.started = now  # the try's first statement: the session's lock_timeout
            return
        left = max(self.floor_ms, int(self.per_try_ms - (now - self.started) * 1000))
        if self.file_ms is not None and self.file_ms <= left:
            return  # the file's own, stricter, is in force (SET LOCAL of what is left would loosen it)
        if (self.set_ms if self.set_ms is not None else self.per_try_ms) - left >= STEP_MS:
            cursor.execute(f"SET LOCAL lock_timeout = '{left}ms'")
            self.set_ms = left

    def override(self, cursor, path, statement) -> None:
        """After a statement of the file that set lock_timeout (pg_dump's header: 0, which would lift the bound
        and the retries): the session's own again (the runner's, given at connect), with a note. A stricter
        value (a file's 100ms) is kept: it only makes each wait, and so each application stall, shorter."""
        cursor.execute("SELECT setting::int FROM pg_catalog.pg_settings WHERE name = 'lock_timeout'")
        ms = cursor.fetchone()[0]
        if 0 < ms <= self.per_try_ms:
            self.file_ms = ms
            return
        cursor.execute("RESET lock_timeout")
        self.set_ms = None  # the next statement of a try sets what is left again
        if statement.line in self.noted:
            return
        self.noted.add(statement.line)
        output.note(f"{path}:{statement.line}: the file's SET lock_timeout is overridden: each try waits at most "
                    f"{seconds_text(self.per_try_ms / 1000)} for its locks, then "
                    f"{'is retried' if self.retried else 'fails (the lock retry budget is 0: no retry)'} "
                    "(--ddl-lock-timeout sets that; remove the line from the file to drop this note)")

    def done(self, cursor) -> None:
        """After the last statement: the session's lock_timeout again for the rest of the transaction (the
        runner's bookkeeping)."""
        if self.set_ms is not None and cursor.connection.info.transaction_status == IN_TRANSACTION:
            cursor.execute("SET LOCAL lock_timeout TO DEFAULT")
        self.restart()


# A statement that sets (or resets) the session's lock_timeout: SET / RESET as a statement, after any comments;
# the word in a literal, a comment or a column name is not one.
SETS_LOCK_TIMEOUT = re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/)*(?:set(?:\s+(?:session|local))?|reset)\s+"
                               r"(?:lock_timeout|\"lock_timeout\")(?![\w$])", re.IGNORECASE | re.DOTALL)


def probe(backend, connection, budget: TryBudget | None = None) -> Probe:
    """The probe of the migration session on `connection`: on the watcher's connection keywords (read-only, no
    limits) and with its --show-blocker-query, when the run has a watcher (else it never connects); bounding each
    try as `budget` says (its lock_timeout and floor), blind or not (the connection's own cancel request)."""
    pid = connection.info.backend_pid
    watcher = getattr(getattr(backend, "parent", None), "watcher", None)
    if watcher is None:
        return Probe(None, pid)
    bound = (budget.per_try_ms / 1000, budget.floor_ms / 1000) if budget is not None else (0, 0)
    return Probe(dict(watcher.params), pid, watcher.show_query, *bound, cancel=connection.cancel)


def say_retry(exc, seen: Seen, backoff: Backoff, delay: float) -> None:
    """One line per retry: which statement, who blocks it (and how to end that), when the next try comes."""
    text = f"{exc.path}:{exc.line}: {_at_commit(exc)}{_not_granted(seen, backoff.policy)}"
    if seen.waiting_for:
        text += f" waiting for {seen.waiting_for}"
    text += f"; blocked by {_who(seen)}"
    text += (f"; try {backoff.tries} in {delay:.1f} s, {seconds_text(backoff.left())} of the lock retry budget left")
    schema = output.event_context().get("schema")
    output.progress(f"[{schema}] {text}" if schema else text, kind="lock_retry", file=str(exc.path), line=exc.line,
                    next_try=backoff.tries, delay_s=round(delay, 2), lock_timeout_s=backoff.policy.per_try,
                    budget_s=backoff.policy.budget, budget_left_s=round(backoff.left(), 1),
                    waiting_for=seen.waiting_for, blocked_by=seen.blockers)


def gave_up(exc, seen: Seen, backoff: Backoff):
    """The final failure: the statement's error, told who blocked it and what to do."""
    who = _who(seen)
    if seen.cancelled:  # the server says "canceling statement due to user request": say what ended it
        exc.cause = TryEnded(_not_granted(seen, backoff.policy))
    retried = (f"gave up after {backoff.tries} tries in {seconds_text(backoff.spent())} (lock retry budget "
               f"{seconds_text(backoff.policy.budget)}, each try waiting {seconds_text(backoff.policy.per_try)})"
               if backoff.policy.budget else "not retried (lock retry budget 0)")
    way_out = autovacuum.advice(seen.blockers, backoff.policy.per_try, backoff.policy.quick_autovacuum_cancel) or (
        "let the probe connect (allow the migration role one more connection: its CONNECTION LIMIT, or free a slot "
        "under max_connections), then run again" if seen.blind and seen.cancelled else None)
    exc.todo = (f"{_at_commit(exc)}{retried}; blocked by {who}; {way_out or sessions.way_out(seen.blockers)} "
                "(--lock-retry-budget / DB_LOCK_RETRY_BUDGET sets how long to keep retrying)")
    if not exc.transactional and exc.done:  # a rerun starts the file over: what committed runs again
        which = f"statements 1-{exc.done}, which COMMITTED, run" if exc.done > 1 else "statement 1, which COMMITTED, runs"
        exc.todo += (f"; a rerun runs the file from its first statement, so {which} again: make the file safe to "
                     "re-run (IF NOT EXISTS) before that")
    return exc


class TryEnded(RuntimeError):
    """A try the probe ended (its statement cancelled) because its lock waits outlasted the try's bound."""


def _not_granted(seen: Seen, policy: Policy) -> str:
    """What ended the try, with the real wait: the probe's cancel, or lock_timeout as the statement had it."""
    if seen.cancelled and seen.blind:
        return (f"ended by the runner after {seconds_text(seen.waited or 0)}, past the try's "
                f"{seconds_text(policy.per_try)}, taken as a lock wait: the lock probe was blind, so a wait could not "
                "be told from work")
    if seen.cancelled:
        return (f"locks not all granted within the try's {seconds_text(policy.per_try)} (ended by the runner after "
                f"{seconds_text(seen.waited or 0)} of lock waits in this try, holding the locks it got meanwhile)")
    waited = seen.lock_timeout if seen.lock_timeout is not None else policy.per_try
    return f"lock not granted within {seconds_text(waited)} (lock_timeout)"


def _at_commit(exc) -> str:
    """Where a transactional file's wait was when it was its COMMIT's (running.deferred_checks)."""
    return "at COMMIT (the file's deferred constraint checks), " if getattr(exc, "at_commit", False) else ""


def _who(seen: Seen) -> str:
    if seen.blockers:
        return sessions.describe_all(seen.blockers)
    if seen.blind and seen.cancelled:  # maybe no one: a slow statement looks the same
        return (f"no session the runner could name: the lock probe cannot connect ({seen.blind}), so it could not "
                "tell a lock wait from work and ended the statement by the clock")
    if seen.blind:
        return f"a session the runner could not see (the lock probe cannot connect: {seen.blind})"
    return "a session not seen in time"


def seconds_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    return f"{int(seconds // 60)} min" + (f" {int(seconds % 60)} s" if int(seconds % 60) else "")
