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
import time
from dataclasses import dataclass

from migrator import interrupt, output, server_session
from migrator.durations import pg_milliseconds, pg_seconds
from migrator.postgres import autovacuum, deadlocks, failures, sessions
from migrator.postgres import session_locks, session_options
from migrator.postgres.session_options import idle_in_try_ms
from migrator.postgres.transaction_status import IN_TRANSACTION
# the probe has its own module (lock_probe.py); its names stay reachable here for the runner's modules
from migrator.postgres.lock_probe import PROBE_NAME, QUERY_CANCELED, Probe, Seen, seconds_text  # noqa: F401

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (or NOWAIT)
FIRST_DELAY, MAX_DELAY = 0.5, 10.0  # seconds between tries: doubling, jittered, capped
FLOOR_SHARE, FLOOR_MIN = 0.1, 0.02  # the least a later statement may wait: a tenth of lock_timeout, >= 20 ms
STEP_MS = 10  # lock_timeout is set again once what is left fell by this much (not before every statement)


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
    """A StatementFailed whose statement gave up waiting for a lock, or lost a deadlock (a try that lost too)."""
    return getattr(getattr(exc, "cause", None), "pgcode", None) in (LOCK_NOT_AVAILABLE, deadlocks.DEADLOCK)


class Backoff:
    """The waits between the tries of one file: doubling from FIRST_DELAY to MAX_DELAY, each jittered (so
    runners retrying together spread out), none beyond the budget."""

    def __init__(self, policy: Policy):
        self.policy, self.started, self.tries = policy, time.monotonic(), 1
        self.blocked: list[list[dict]] = []  # each failed try's blockers (rotating() compares them)

    def saw(self, seen: Seen) -> None:
        """A try failed, blocked by `seen.blockers` (kept for the final line's comparison across tries)."""
        self.blocked.append(list(seen.blockers))

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
            self.started = now  # the try's first statement: the session's lock_timeout; the server's bound on a
            # frozen or cut-off runner holding the try's locks, to its transaction's end (session_options)
            idle = session_options.TRY_IDLE[cursor.connection] = idle_in_try_ms(self.per_try_ms + self.floor_ms)
            cursor.execute(f"SET LOCAL idle_in_transaction_session_timeout = {idle}")
            return
        left = max(self.floor_ms, int(self.per_try_ms - (now - self.started) * 1000))
        if self.file_ms is not None and self.file_ms <= left:
            return  # the file's own, stricter, is in force (SET LOCAL of what is left would loosen it)
        if (self.set_ms if self.set_ms is not None else self.per_try_ms) - left >= STEP_MS:
            cursor.execute(f"SET LOCAL lock_timeout = '{left}ms'")
            self.set_ms = left

    def override(self, cursor, path, statement) -> None:
        """After a statement of the file that could have set lock_timeout (pg_dump's header: 0, which would lift the
        bound and the retries; a set_config of a computed name, so that the probe's sampled cancel bounded the try,
        not the server's timer: attack24t 9): read back, the session's own again (the runner's, given at connect),
        with a note. A stricter value (a file's 100ms) is kept: it only makes each wait, and so each application
        stall, shorter."""
        cursor.execute("SHOW lock_timeout")
        ms = pg_milliseconds(cursor.fetchone()[0])
        if ms in (self.set_ms, self.file_ms) or self.set_ms is None and ms == self.per_try_ms:
            return  # as the runner left it (or the file's stricter one, kept)
        if 0 < ms <= self.per_try_ms:
            self.file_ms, self.set_ms = ms, None  # (the next statement of a try sets what is left if that is less)
            return
        cursor.execute("RESET lock_timeout")
        self.set_ms = self.file_ms = None  # the next statement of a try sets what is left again
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


def probe(backend, connection, budget: TryBudget | None = None) -> Probe:
    """The probe of the migration session on `connection`: on the watcher's connection keywords (read-only, no
    limits) and with its --show-blocker-query, when the run has a watcher (else it never connects); bounding each
    try as `budget` says (its lock_timeout and floor), blind or not (the connection's own cancel request)."""
    pid = server_session.of(connection).pid  # (the server's: a pooler hands the client a pid of its own)
    watcher = getattr(getattr(backend, "parent", None), "watcher", None)
    if watcher is None:
        return Probe(None, pid)
    bound = (budget.per_try_ms / 1000, budget.floor_ms / 1000) if budget is not None else (0, 0)
    if not hasattr(backend.parent, "blind_said"):
        backend.parent.blind_said = []
    return Probe(dict(watcher.params), pid, watcher.show_query, *bound, cancel=lambda: failures.cancel(connection),
                 status=lambda: connection.info.transaction_status,
                 session_locks=lambda: session_locks.held(connection), said=backend.parent.blind_said,
                 shut=lambda: failures.shut(connection))


def say_retry(exc, seen: Seen, backoff: Backoff, delay: float) -> None:
    """One line per retry: which statement, who blocks it (and how to end that), when the next try comes."""
    backoff.saw(seen)
    text = f"{exc.path}:{exc.line}: {_at_commit(exc)}{_not_granted(seen, backoff.policy)}"
    if seen.waiting_for:
        text += f" waiting for {seen.waiting_for}"
    if not seen.deadlock:
        text += f"; blocked by {_who(seen)}"
    text += (f"; try {backoff.tries} in {delay:.1f} s, {seconds_text(backoff.left())} of the lock retry budget left")
    schema = output.event_context().get("schema")
    output.progress(f"[{schema}] {text}" if schema else text, kind="lock_retry", file=str(exc.path), line=exc.line,
                    next_try=backoff.tries, delay_s=round(delay, 2), lock_timeout_s=backoff.policy.per_try,
                    budget_s=backoff.policy.budget, budget_left_s=round(backoff.left(), 1),
                    waiting_for=seen.waiting_for, blocked_by=seen.blockers)


def gave_up(exc, seen: Seen, backoff: Backoff):
    """The final failure: the statement's error, told who blocked it and what to do."""
    backoff.saw(seen)
    who = _who(seen)
    if seen.cancelled:  # the server says "canceling statement due to user request": say what ended it
        exc.cause = TryEnded(_not_granted(seen, backoff.policy))
    retried = (f"gave up after {backoff.tries} tries in {seconds_text(backoff.spent())} (lock retry budget "
               f"{seconds_text(backoff.policy.budget)}, each try waiting {seconds_text(backoff.policy.per_try)})"
               if backoff.policy.budget else "not retried (lock retry budget 0)")
    way_out = autovacuum.advice(seen.blockers, backoff.policy.per_try, backoff.policy.quick_autovacuum_cancel) or (
        "let the probe connect (allow the migration role one more connection: its CONNECTION LIMIT, or free a slot "
        "under max_connections), then run again" if seen.blind and seen.cancelled else None)
    if (busy := rotating(backoff.blocked)) is not None:  # ending them would only end live requests
        who, way_out = busy, ("ending them does not help, new ones take their place: deploy when the traffic is "
                              "lower, raise the lock retry budget, or shorten the application's transactions on that "
                              "table")
    if seen.deadlock:  # not the file's fault: the application takes the same locks in the other order
        exc.cause = TryEnded(_not_granted(seen, backoff.policy))
        who, way_out = "", ("run again when the application is quieter, or take the file's locks in the order the "
                            "application takes them (a LOCK TABLE of both first)")
    # the JSON log's final events carry what the retry events do (apply._run_one, cli.app)
    exc.event_fields = {"tries": backoff.tries, "spent_s": round(backoff.spent(), 1),
                        "lock_timeout_s": backoff.policy.per_try, "budget_s": backoff.policy.budget,
                        "waiting_for": seen.waiting_for, "blocked_by": seen.blockers}
    wanted = f"waiting for {seen.waiting_for}; " if seen.waiting_for and not seen.deadlock else ""
    exc.todo = (f"{_at_commit(exc)}{retried}; {wanted}{f'blocked by {who}; ' if who else ''}"
                f"{way_out or sessions.way_out(seen.blockers)} "
                "(--lock-retry-budget / DB_LOCK_RETRY_BUDGET sets how long to keep retrying)")
    if not exc.transactional and exc.done:  # a rerun starts the file over: what committed runs again
        which = f"statements 1-{exc.done}, which COMMITTED, run" if exc.done > 1 else "statement 1, which COMMITTED, runs"
        exc.todo += (f"; a rerun runs the file from its first statement, so {which} again: make the file safe to "
                     "re-run (IF NOT EXISTS) before that")
    return exc


YOUNG = 5.0  # seconds: a blocker's transaction no older than this is one of the application's ordinary requests


def rotating(blocked: list[list[dict]]) -> str | None:
    """The blockers of every try, in words, when they are the application's own short transactions: at least two
    tries blocked, by ordinary sessions only (no prepared transaction, autovacuum or hidden session), none of the
    first blocked try's transactions still blocking the last (a pooled connection's next transaction is another:
    told by when it began), the last try's all younger than YOUNG. Else None (a blocker that outlived the tries is
    one to name and end)."""
    tries = [b for b in blocked if b]
    every = [h for b in tries for h in b]
    if len(tries) < 2 or any(h.get("transaction_started") is None or h.get("prepared") is not None
                             or h.get("autovacuum") or h.get("hidden") for h in every):
        return None
    first, last = ({(h["pid"], h["transaction_started"]) for h in b} for b in (tries[0], tries[-1]))
    if first & last or any((h.get("transaction_for_s") or 0) > YOUNG for h in tries[-1]):
        return None
    apps = sorted({sessions.named(h["application_name"]) for h in every})
    count = len({(h["pid"], h["transaction_started"]) for h in every})
    oldest = max(h.get("transaction_for_s") or 0 for h in every)
    return (f"the application's own short transactions: {count} different transactions over {len(tries)} tries, "
            f"each ended and replaced by others, the oldest open {sessions.duration(oldest)} (application_name "
            f"{', '.join(apps[:3])}{' ...' if len(apps) > 3 else ''}; last: "
            f"{'; '.join(sessions.describe(h) for h in tries[-1][:2])})")


class TryEnded(RuntimeError):
    """A try the probe ended (its statement cancelled) because its lock waits outlasted the try's bound."""


def _not_granted(seen: Seen, policy: Policy) -> str:
    """What ended the try, with the real wait: the probe's cancel, or lock_timeout as the statement had it."""
    if seen.deadlock:
        return f"deadlock: PostgreSQL ended this try (rolled back) so the other side could go on: {seen.deadlock}"
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
    """Where a transactional file's wait was when it was its COMMIT's (commit_checks.deferred_checks)."""
    at_commit = getattr(exc, "at_commit", False)
    if at_commit == "records":
        return f"before COMMIT (the lock on {output.visible(exc.records)} the runner's record of the file needs), "
    return "at COMMIT (the file's deferred constraint checks), " if at_commit else ""


def _who(seen: Seen) -> str:
    if seen.blockers:
        return sessions.describe_all(seen.blockers)
    if seen.blind and seen.cancelled:  # maybe no one: a slow statement looks the same
        return (f"no session the runner could name: the lock probe cannot connect ({seen.blind}), so it could not "
                "tell a lock wait from work and ended the statement by the clock")
    if seen.blind:
        return f"a session the runner could not see (the lock probe cannot connect: {seen.blind})"
    return "a session not seen in time"
