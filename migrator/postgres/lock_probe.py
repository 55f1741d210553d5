"""The lock probe: who blocks the migration session's running statement, seen from a second connection while it
waits (pg_blocking_pids: once the try has failed its lock request is gone, and the server no longer says), and the
bound on a try as a whole that lock_timeout alone cannot keep (retry.py says how tries and retries work).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from migrator import output
from migrator.durations import seconds_text  # noqa: F401 (reachable here for the runner's modules)
from migrator.errors import MigratorError
from migrator.postgres import cancel_ignored, failures, lock_waiters, sessions
from migrator.postgres.transaction_status import IDLE

PROBE_AFTER = 0.01  # seconds a statement runs before the probe asks who blocks it, then every PROBE_EVERY
PROBE_EVERY = 0.01  # (soon enough to see a wait of the floor's 20-30 ms; every 50 ms after SLOWER_AFTER)
SLOWER_AFTER = 0.2
PROBE_NAME = "hcm-db-migrations lock probe"
FROZEN_GAP = 1.0  # s between two of the thread's 10 ms ticks: the process was stopped (SIGSTOP, a VM pause)
ASK_GAP = 0.05  # s: between statements, a look at the waiters this recent still holds (a freeze makes the gap longer)
RECONNECT_FIRST, RECONNECT_MAX = 0.1, 2.0  # seconds between the probe's tries to connect again, doubling
# Blind: seconds after which the clock's cancel is sent again while the statement still runs (one that reached the
# session idle between a backfill's round trips is dropped by the server: attack24s 2)
RESEND_AFTER = 0.1


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
    deadlock: str | None = None  # the try was ended by a deadlock: with whom, over what (deadlocks.py)
    held: dict | None = None  # ended holding a lock an application session waited on too long (lock_waiters.py)
    held_earlier: bool = False  # that lock taken by an earlier statement of the transaction, not this one
    sent: float | None = None  # when the first cancel went to the statement (cancel_ignored.py: its grace)
    ended_session: bool = False  # that cancel did not take: the probe ended the migration's session

    def __post_init__(self):
        if self.cancelled and self.sent is None:
            self.sent = time.monotonic()


# The probe's cancel of the migration session: only while it still waits for a lock (one query: the check and the
# signal together), and only once its transaction is older than the try's time too (a backfill's batch commits
# and starts afresh: each batch is a try). Whether the try's time is spent and this wait outlasted the floor the
# probe knows.
# With track_activities off the session shows state 'disabled', no wait event, no xact_start (attack24t 7): the wait
# is read from pg_locks, and `_sending` pins the statement (the server drops a cancel reaching an idle session).
_CANCEL = """SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity a
WHERE pid = %s AND state IN ('active', 'disabled') AND EXISTS (SELECT FROM pg_catalog.pg_locks l
    WHERE l.pid = a.pid AND NOT l.granted AND (l.locktype = 'relation' OR NOT %s))
  AND (xact_start IS NULL OR clock_timestamp() - xact_start > pg_catalog.make_interval(secs => %s))"""
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

    It also bounds what the try HOLDS (lock_waiters.py): from its first statement (once it ran PROBE_AFTER) to the
    end of its transaction (`status`: the migration connection's, read as each statement ends), whatever runs, and
    between statements too, every PROBE_EVERY (every 50 ms after SLOWER_AFTER) it asks who waits on the session (a
    table lock or a row's). Once an application session waited past `per_try` + `floor`, it ends the running
    statement (unless the session is itself waiting for a lock: that is a lock retry) and raises `overheld`, which
    the runner reads before sending the next statement (no round trip): the run fails, not retried. A backfill's
    batches are watched as one statement (each batch commits, its waiters served: what a waiter waited is one
    batch's); CONCURRENTLY statements are not (a build blocks no query).

    Blind: its connection may be refused (the role's CONNECTION LIMIT, max_connections full) or closed under it
    (an admin's pg_terminate_backend, a failover). It connects again, waiting longer each time (RECONNECT_FIRST
    doubling to RECONNECT_MAX), and says once why it is blind. Meanwhile it cannot tell a lock wait from work, nor
    see what user code (a trigger, a DEFAULT, a view, an operator) or row locks make the application wait for, so
    it bounds by the clock the try from its first statement not harmless by construction (clock_bound.py: any but
    SET/SHOW/transaction control, a plain CREATE TABLE and other catalog-only CREATEs, INSERT ... VALUES of
    constants into a plain table this run created) to its COMMIT, whatever runs meanwhile (a SELECT of pg_sleep,
    5,000 INSERTs): once that is longer than `per_try` + `floor` the running statement is cancelled through the
    migration connection's own cancel request (libpq's, which needs no session slot), or the runner ends the try
    before its next statement (raise_blind_spent), as a lock timeout: it never stalls the application longer than
    when seen, at the cost of retrying such a try that was merely slow. Left alone: a try of harmless statements
    only, CONCURRENTLY index builds and a VALIDATE CONSTRAINT running no user code; a backfill's batches are each
    a try of their own (batch_started)."""

    def __init__(self, params: dict | None, pid: int, show_query: bool = False, per_try: float = 0.0,
                 floor: float = 0.0, cancel=None, status=None, session_locks=None, said: list | None = None,
                 shut=None):
        self.params, self.pid, self.show_query, self._cancel, self._status = params, pid, show_query, cancel, status
        self._shut = shut  # () -> the migration connection's socket shut (blind: cancel_ignored.cut_off)
        self._said = [] if said is None else said  # the blind note, said once a run (a list the run keeps)
        self._session_locks = session_locks  # () -> the session holds a session-level (advisory) lock
        self._session_locked: float | None = None  # since when it has held one across its tries (blind: the clock)
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
        self._clock_only = False  # ...though it is no try's bounded statement (a build running code)
        self._cancel_sent = 0.0  # when the clock's cancel was last sent (blind)
        self._locked_since: float | None = None  # blind: when the try's first statement that may lock started
        self._relations = False  # only its waits for a table's lock count (a detach: not those for older snapshots)
        self._held_since: float | None = None  # when the watched try's first statement started (lock_waiters.py)
        self._first = True  # the running statement is its try's first
        self._batch: float | None = None  # when the running backfill's last batch started
        self._between = False  # the running backfill is between two batches (batch_ended)
        self._looked = 0.0  # when the waiters were last read (the thread's look or ask_now's)
        self._held_due: tuple | None = None  # (held since, when): the next look at its waiters, when one will pass the bound
        self.overheld: Seen | None = None  # an application session waited past the bound on what the try holds
        self.thawed: tuple | None = None  # (when, seconds frozen): the thread's last tick after a freeze
        self.exempt: set | frozenset = frozenset()  # (schema or None, table): waits the run accepts (running._accepted)

    @contextmanager
    def statement(self, try_started: float | None = None, bounded: bool = True,
                  clock_bound: bool = True, relations: bool = False, held: bool = True,
                  calls: bool = False, clock_only: bool = False) -> Iterator[None]:
        """Around one statement (`try_started`: when the try's first statement started, if not this one;
        not `bounded`: a CONCURRENTLY build, whose waits block no one, is never cancelled; not `clock_bound`: it
        starts no blind clock of the try (clock_bound.py), a backfill's batches; `relations`: only its waits for a
        table's lock are bounded, a DETACH ... CONCURRENTLY's waits for older snapshots block no one; not `held`:
        what it holds is not watched, a CONCURRENTLY build; `calls`: a query, which takes no table lock the app waits on
        by itself, so such a lock may be an earlier statement's; `clock_only`: not `bounded` by its waits, but by the
        blind clock: a CONCURRENTLY build running code not known built-in, clock_bound.py)."""
        now = time.monotonic()
        started = (try_started or now) if bounded else None
        self._first = started != self._try
        if self._first:
            self._waited, self.overheld = 0.0, None  # (a session lock outlives its try: its clock and watch run on)
            self._held_since = self._locked_since = self._session_locked
        if held and self._held_since is None:  # (a build running code is watched though never bounded)
            self._held_since = now  # (kept by a transaction to its end)
        if clock_bound and (bounded or clock_only) and self._locked_since is None:  # (`calls` too)
            self._locked_since = now  # (blind: the clock runs from here to the COMMIT, whatever runs meanwhile)
        self.seen, self._waiting, self._seen_waiting, self._try = Seen([]), None, None, started
        self._batch, self._between = None, False  # (a backfill's: when its last batch started; between two)
        self._clock_bound, self._relations = clock_bound and not calls, relations
        self._clock_only = clock_only
        self._since = now
        if self._thread is None and self.params is not None:
            self._thread = threading.Thread(target=self._run, name="lock-probe", daemon=True)
            self._thread.start()
        try:
            yield
        finally:
            with self._sending:  # a cancel being sent lands on this statement, never on the next
                self._since = None
            if self._status is not None and self._status() == IDLE:  # committed (autocommit): nothing held now...
                locked, self._held_since, self._locked_since = self._locked_since, None, None
                # ...but a session lock (asked after a try that was on the clock: a harmless one takes none)
                if self._session_locks is not None and self.per_try and (
                        locked is not None or self._session_locked is not None) and self._session_locks():
                    self._session_locked = self._locked_since = self._session_locked or locked or time.monotonic()
                else:
                    self._session_locked = None
                self._held_since = self._session_locked  # (its waiters watched between statements too: attack24u 6)

    def batch_started(self) -> None:
        """A backfill's batch starts: the blind clock runs from here (the batches before it committed), or from when
        the session took the session-level lock it still holds (attack24r 9: it outlives each batch's COMMIT); spent
        (blind), no batch starts (BlindSpent): the clock's cancel may have reached the session idle between two
        batches, where the server drops it (attack24s 2: the batches ran on unbounded, app 13-16 s, exit 0). Blind,
        the session (idle between batches) is asked after each batch whether it holds one: a lock the batch statement
        itself took (a function it calls, attack24u 1) runs the clock from the first batch that left it held."""
        now = time.monotonic()
        if self._batch is not None and self.blind is not None and self.per_try and self._session_locks is not None:
            self._session_locked = (self._session_locked or self._batch) if self._session_locks() else None
        self._batch = now
        if self._locked_since is not None:
            self._locked_since = self._session_locked or now
            self.raise_blind_spent()
        self._between = False

    def batch_ended(self) -> None:
        """A backfill's batch committed: until the next starts the session runs none of its work (the runner records
        and checks it), so the blind clock sends no cancel (one reaching it idle is dropped, and the resent ones took
        it for a cancel ignored: its connection was shut); spent by then, the next batch does not start."""
        with self._sending:
            self._between = True

    def session_locked(self) -> bool:
        """The session holds a session-level (advisory) lock that outlived the file's earlier tries: a retry would
        keep it, so the application would wait on it for the whole retry budget (attack24s 5)."""
        return self._session_locked is not None

    def clock_running(self) -> bool:
        """The try's blind clock has started (a statement not known harmless ran in its open transaction)."""
        return self._locked_since is not None

    def ended(self) -> None:
        """The try ended (committed, or failed and rolled back): nothing it held is watched any more."""
        self._held_since, self.overheld, self._try, self._locked_since = None, None, None, None

    def raise_held(self, ran: bool = False) -> None:
        """Before the runner sends the next statement of a try: `overheld` raised (HeldTooLong), `seen` its waiter.
        `ran`: asked after the statement it names ran (ask_now), not before it."""
        if self.overheld is not None:
            self.seen = self.overheld
            self.seen.held_earlier = self.seen.held_earlier or ran  # (what it held: its own lock or an earlier one's)
            held = lock_waiters.HeldTooLong("application sessions waited past the try's bound on what it holds")
            held.ran = ran
            raise held

    def ask_now(self) -> None:
        """After a statement of a try that has held its locks past the bound, before the next one or the COMMIT: who
        waited on them, asked now rather than by the thread's next look (the runner frozen meanwhile, SIGSTOP or a
        VM pause, froze the thread too, and a thawed runner commits at once: attack24r 10). Sets `overheld`."""
        held, conn, now, due = self._held_since, self._conn, time.monotonic(), self._held_due
        if held is None or not self.per_try or now - held <= self.per_try + self.floor:
            return
        if now - self._looked < ASK_GAP and not (due and due[0] == held and now >= due[1]):
            return  # (a long data load: not one waiters' query per statement, which doubled its run)
        import psycopg2

        own = conn is None  # (frozen before the thread first connected: a connection of its own, this once)
        if own and (self.params is None or self.blind is not None):
            return
        try:
            if own:
                conn = failures.side_connection({**self.params, "application_name": PROBE_NAME})
                conn.autocommit = True
            with conn.cursor() as cur:  # (psycopg2 serializes the thread's use of the connection with this one)
                self._ended_holder(cur, None, held)
        except (psycopg2.Error, MigratorError):  # (the thread says what became of its connection)
            pass
        finally:
            if own and conn is not None:
                failures.close(conn)

    def raise_blind_spent(self) -> None:
        """Before the runner sends the next statement of a try, blind: the try has held what may lock the app past
        the bound (its statements each too short for a cancel to reach): ended as the clock's cancel would."""
        locked = self._locked_since
        if self.blind is None or not self.per_try or locked is None:
            return
        ran = time.monotonic() - locked
        if ran > self.per_try + self.floor:
            self.seen = Seen([], None, True, ran, blind=self.blind)
            raise BlindSpent("the try held its locks past its bound while the lock probe was blind")

    def cancelled(self, exc) -> bool:
        """The statement failed because the probe cancelled it (not a user's Ctrl-C or statement_timeout)."""
        return self.seen.cancelled and getattr(getattr(exc, "cause", None), "pgcode", None) == QUERY_CANCELED

    def held(self, exc) -> bool:
        """The probe ended the statement (or the try, between statements) because application sessions waited on a
        lock it held (not retried)."""
        return (isinstance(getattr(exc, "cause", None), lock_waiters.HeldTooLong)
                or self.cancelled(exc) and self.seen.held is not None)

    def close(self) -> None:
        """Never blocks behind its thread: one stuck in libpq (a silent path) is cut off (failures.let_go)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=failures.STOPPING)
        conn = self._conn
        if conn is not None and failures.let_go(conn, self._thread):
            self._conn = None

    def _run(self) -> None:
        import psycopg2

        last = time.monotonic()
        while not self._stop.wait(PROBE_EVERY):
            since, held = self._since, self._held_since
            now = time.monotonic()
            self.thawed, last = (now, now - last) if now - last > FROZEN_GAP else self.thawed, now
            running = now - since if since is not None else 0.0
            holding = now - held if held is not None else 0.0
            # a lock is mostly asked for as a statement starts; later on, every 50 ms, after 5 s once a second
            asks = not (running < PROBE_AFTER or (running > SLOWER_AFTER and int(running / PROBE_EVERY) % 5) or (
                running > 5 and held is None and int(running / PROBE_EVERY) % int(1 / PROBE_EVERY)))
            # what the try holds: every 50 ms to its end (its waiters' stall is the bound), between statements too
            watches = bool(self.per_try) and not (
                holding < PROBE_AFTER or (holding > SLOWER_AFTER and int(holding / PROBE_EVERY) % 5))
            due = self._held_due  # (a waiter seen short of the bound: looked at again as it passes it, attack24u 6)
            due = due is not None and due[0] == held and now >= due[1]
            watches = watches or due
            if self._conn is None:  # blind: the clock kept to the tick, not to the 50 ms looks (attack24u 6)
                self._bound_by_clock(since)
            if not (asks or watches):
                continue
            if self._conn is None and time.monotonic() < self._reconnect_at:
                continue
            try:
                if self._conn is None:
                    self._conn = failures.side_connection({**self.params, "application_name": PROBE_NAME})
                    self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    if cancel_ignored.escalate(self, cur, since):  # a cancel that did not take: its session ended
                        continue
                    if not asks or due:  # between statements, a statement not due for a look, or a waiter due
                        if self._ended_holder(cur, since, held) or not asks:  # (first: the blockers' look is slow)
                            continue
                    found = sessions.blockers(cur, self.pid, self.show_query)
                    self._sees_again()  # (once answered: a path gone silent lets it connect, never read)
                    wanted = sessions.waiting_for(cur, self.pid, found) if found else None
                    # both read while it still waited (two queries: the try may time out between them), and still
                    # the statement it asked about
                    if self._relations and found and wanted:  # waiting out older snapshots: named, not counted
                        cur.execute(_WAIT, (self.pid,))
                        if (cur.fetchone() or ("",))[0] != "relation":
                            if self._since == since:
                                self.seen = Seen(found, wanted)
                            found = None
                    # (an unbounded statement's waits, a build's for older snapshots, are no lock retry: what it
                    # holds is watched while it waits too, a session lock the app waits on: attack24u 5)
                    if (not found or self._try is None) and watches and self._since == since \
                            and self._ended_holder(cur, since, held):
                        continue
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
                                self.seen = Seen(found, wanted, sent, self._waited, sent=self.seen.sent)
                                continue
                    if self._since == since:
                        self.seen = Seen(found, wanted)
            except (psycopg2.Error, MigratorError) as exc:  # (MigratorError: its read bound, a silent path)
                if self._stop.is_set():  # cut off by close(): it closes the connection
                    return
                self._lost(exc)
                self._bound_by_clock(since)
        if (conn := self._conn) is not None:  # (opened after close() stopped waiting for it)
            failures.close(conn)

    def _ended_holder(self, cur, since: float | None, held: float | None) -> bool:
        """Not waiting itself: an application session that waited on a lock the migration session holds longer
        than the try's bound (`per_try` + `floor`, as a wait's) ends the running statement, if one runs, and raises
        `overheld` for the runner to end the try before its next statement (lock_waiters.py)."""
        asked = time.monotonic()  # (not when the answer was read: a freeze may come between, the answer then stale)
        waiting = lock_waiters.waiters(cur, self.pid, self.exempt)
        self._looked = asked
        self._sees_again()
        bound = self.per_try + self.floor
        if not waiting or waiting[0]["waited_s"] <= bound:
            self._held_due = (held, time.monotonic() + bound - waiting[0]["waited_s"]) if waiting else None
            return False
        with self._sending:
            if self._held_since != held:  # the try ended meanwhile: its locks are gone, its waiters served
                return True
            seen = Seen([], held=waiting[0], held_earlier=not self._first and not self._clock_bound)
            if since is not None and self._since == since:
                cur.execute(lock_waiters.CANCEL_HOLDER, (self.pid,))
                row = cur.fetchone()
                if row and row[0]:
                    self.seen = Seen([], cancelled=True, held=waiting[0], held_earlier=seen.held_earlier,
                                     sent=self.seen.sent)
            self.overheld = seen
        return True

    def _lost(self, exc) -> None:
        """The probe's connection was refused or closed: blind until it connects again (one line says so)."""
        if self._conn is not None:
            failures.close(self._conn)
            self._conn = None
        self._reconnect_at = time.monotonic() + self._reconnect_wait
        self._reconnect_wait = min(RECONNECT_MAX, self._reconnect_wait * 2)
        if self.blind is None:
            self.blind = (output.scrub(str(exc)).strip().splitlines() or [type(exc).__name__])[0]
        if not self._said:  # (lost again after it saw again: the note stands; each retry's line says it is blind)
            self._said.append(self.blind)
            output.note(f"note: the lock probe cannot see the migration session ({self.blind}): until it connects "
                        f"again, a try running longer than {seconds_text(self.per_try + self.floor)} "
                        "(from its first statement other than SET, SHOW, BEGIN, a plain CREATE or an INSERT of "
                        "constants into a plain table this run made, to its COMMIT, whatever runs between) "
                        "is ended as a lock wait and retried, blockers unnamed; free a connection for it (the role's "
                        "CONNECTION LIMIT, max_connections)")

    def _sees_again(self) -> None:
        self.blind, self._reconnect_wait = None, RECONNECT_FIRST

    def _bound_by_clock(self, since: float | None) -> None:
        """Blind: the bound kept by the clock (see the class): the statement cancelled past it, again every
        RESEND_AFTER while it still runs."""
        locked = self._locked_since
        if (self.blind is None or self._cancel is None or not self.per_try or locked is None or self._between
                or (self._try is None and not self._clock_only) or since is None
                or self.seen.cancelled and time.monotonic() - self._cancel_sent < RESEND_AFTER):
            return  # (sent again while the statement runs on: a cancel landing between its round trips is dropped)
        if self.seen.cancelled and cancel_ignored.cut_off(self, since):  # resent, and still runs: connection shut
            return
        ran = time.monotonic() - locked
        if ran <= self.per_try + self.floor:
            return
        import psycopg2

        with self._sending:
            if self._since == since:
                try:
                    self._cancel()
                except psycopg2.Error:  # the migration session itself is gone: its statement fails on its own
                    return
                self._cancel_sent = time.monotonic()
                self.seen = Seen([], None, True, ran, blind=self.blind, sent=self.seen.sent)


class BlindSpent(RuntimeError):
    """Probe.raise_blind_spent: the try ended between its statements, taken as a lock timeout (the probe's cancel)."""
    pgcode = QUERY_CANCELED
