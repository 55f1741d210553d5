"""A cancel that does not take, and a statement the application waited on that committed anyway (attack24t 4, 6).

The lock probe ends a try by cancelling its running statement (lock_probe.py). Code that catches query_canceled (a
DO block's hand-written "retry on timeout" loop: statement_timeout raises it too) swallows that cancel while the
locks it took outside the caught block stay held: the application kept waiting, and the probe's repeated cancels
only stretched the loop. So when a cancel has not ended its statement within GRACE, the probe ends the migration's
OWN session (pg_terminate_backend, from its connection: the server then rolls back what that session's open
transaction did and releases its locks), and the try fails in one line, not retried (its code would swallow the
next cancel too). While the probe is blind it has no connection to do so: it shuts the migration connection's socket
instead, and the server ends the session at its next client check (client_connection_check_interval, 2 s).

A statement that ran past the bound and committed on its own (autocommit: a non-transactional file's statement)
is never a plain success: the run fails saying that it COMMITTED (the probe's flag was only read before a next
statement, so a file's last statement escaped it).
"""

from __future__ import annotations

import time

from migrator.durations import seconds_text
from migrator.postgres.lock_waiters import shown
from migrator.postgres.transaction_status import IDLE

FROZEN_SENT = 0.5  # s: a cancel sent this soon after the runner thawed was sent for the freeze's time
GRACE = 0.1  # seconds a cancelled statement has to end before its session is ended
# Blind: the clock's cancel is sent again every 0.1 s (one landing between a backfill's round trips is dropped:
# lock_probe.RESEND_AFTER); the connection is shut only once a few of those went unheeded.
BLIND_GRACE = 0.3
QUERY_CANCELED = "57014"
# Only while a statement runs (state 'disabled': track_activities off, attack24t 7; the probe's `_sending` lock pins
# the statement, so the next one cannot have started).
_TERMINATE = """SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
WHERE pid = %s AND state IN ('active', 'disabled')"""
_CATCHES = ("its own code catches query_canceled, as an EXCEPTION WHEN query_canceled (or OTHERS) block in a loop "
            "does")
_TODO = ("not retried (its code would swallow the next cancel too): let query_canceled through (catch "
         "lock_not_available only, or RAISE again), or run it in a quiet window")


def escalate(probe, cursor, since: float | None) -> bool:
    """On the probe's thread (`cursor` its connection's): the running statement (started at `since`) was cancelled
    GRACE ago or more and still runs: its session ended. True once done (Seen.ended_session)."""
    seen = probe.seen
    if since is None or seen.sent is None or seen.ended_session or time.monotonic() - seen.sent < GRACE:
        return False
    with probe._sending:  # (the statement's end waits for it: this is still the statement cancelled)
        if probe._since != since:
            return False
        cursor.execute(_TERMINATE, (probe.pid,))
        row = cursor.fetchone()
        seen.ended_session = bool(row and row[0])
    return seen.ended_session


def cut_off(probe, since: float | None) -> bool:
    """Blind (no connection to end the session from): the running statement was first cancelled BLIND_GRACE ago or
    more and still runs: the migration connection's socket is shut. The server, checking the client every 2 s
    (client_connection_check_interval, session_options), then ends the session, rolling back its open transaction.
    True once done."""
    seen = probe.seen
    if probe._shut is None or seen.sent is None or seen.ended_session or time.monotonic() - seen.sent < BLIND_GRACE:
        return seen.ended_session
    with probe._sending:
        if probe._since == since:
            probe._shut()
            seen.ended_session = True
    return seen.ended_session


def after_statement(probe, connection, transactional: bool) -> None:
    """Right after a statement ended without an error: a cancel sent to it that did not take (it ran on past GRACE,
    or it committed) fails the try, not retried (CancelIgnored); so does the application's wait past the bound on a
    statement that committed on its own (the probe's HeldTooLong, marked `committed`)."""
    seen = probe.seen
    committed = not transactional and connection.info.transaction_status == IDLE
    if probe.overheld is not None:
        if committed:
            earlier = probe.overheld.held_earlier  # (autocommit: its own lock, unless the probe saw an earlier one)
            try:
                probe.raise_held(ran=True)
            except Exception as held:
                held.committed, probe.seen.held_earlier = True, earlier
                raise
        return  # (in a transaction: the runner's raise_held ends the try before its next statement)
    if seen.cancelled and seen.sent is not None and (committed or time.monotonic() - seen.sent > GRACE):
        thawed = probe.thawed  # (a cancel sent as the runner thawed: the statement ended while it was frozen)
        frozen = thawed[1] if committed and thawed and 0 <= seen.sent - thawed[0] < FROZEN_SENT else None
        raise CancelIgnored(time.monotonic() - seen.sent, committed, seen.blind, frozen)


def explain(exc, probe, progress=None) -> bool:
    """In the runner's handler of a failed try (`exc` a StatementFailed): a cancel that did not take (its session
    ended by the probe, or the statement ran on): the one line, not retried; True if so. A statement that committed
    (CancelIgnored, HeldTooLong) is counted as committed (`progress` told)."""
    cause = exc.cause
    if getattr(cause, "committed", False) and not exc.transactional:
        exc.done = exc.index + 1
        if progress:
            progress(exc.done)
        rest = "the rest did not run" if exc.done < exc.total else "the migration is not recorded as applied"
        exc.committed = lambda: _progress(exc.statements, exc.done, rest)
    if not isinstance(cause, CancelIgnored):
        if not probe.seen.ended_session or getattr(cause, "pgcode", None) == QUERY_CANCELED:  # (it took, just late)
            return False
        exc.cause = cause = CancelIgnored(None, False, probe.seen.blind)
    cause.args = (f"{shown(exc.statement.text)} {cause.args[0]}",)  # (the line names the statement)
    exc.todo = _TODO if not cause.raced else _FROZEN_TODO if cause.frozen is not None else _RACED_TODO
    if not exc.transactional and not cause.committed:
        exc.committed = lambda: _progress(
            exc.statements, exc.done, f"whether statement {exc.index + 1} took effect is unknown (its session was "
            "ended while it ran, so most likely it rolled back: check before running again); the rest did not run")
    return True


_RACED_TODO = ("not retried: let the lock probe connect (the migration role's "
               "CONNECTION LIMIT, max_connections) so that it tells a lock wait from work, see `runner.py status` and "
               "make the file safe to re-run (a rerun runs it from its first statement), then run again")
_FROZEN_TODO = ("not retried: keep the runner from being stopped (a node's or VM's pause), see `runner.py status` and "
                "make the file safe to re-run (a rerun runs it from its first statement), then run again")


class CancelIgnored(RuntimeError):
    """The runner cancelled a statement and it did not end: it ran on (`ran_on` seconds past the cancel), or its
    session was ended (`ran_on` None). `pgcode` None: a failure of the file's, not a lock timeout (not retried).
    `frozen` (seconds): the runner was stopped meanwhile, and the cancel went once it was thawed (attack24w 1)."""
    pgcode = None

    def __init__(self, ran_on: float | None, committed: bool, blind: str | None, frozen: float | None = None):
        self.committed, self.frozen = committed, frozen
        self.raced = committed and (frozen is not None or ran_on is not None and ran_on < GRACE)
        if self.raced:  # (a cancel that came as it ended is dropped by the server: no code of its own swallowed it)
            when = (f"ran while the runner was frozen for {seconds_text(frozen)} (SIGSTOP, a VM pause: its clock and "
                    "the lock probe's stopped) and ended before the cancel the runner sent once thawed"
                    if frozen is not None else
                    f"ended {seconds_text(ran_on)} after the runner's cancel at the try's bound was sent, before it "
                    "took")
            super().__init__(f"{when}: it COMMITTED (autocommit), past the try's bound" + (
                " (the lock probe was blind: the bound was kept by the clock)" if blind else ""))
            return
        if ran_on is None and blind:
            what = (f"so the runner closed its connection {seconds_text(BLIND_GRACE)} later (the lock probe was "
                    "blind: no connection to end the session from); the server ends the session within 2 s "
                    "(client_connection_check_interval), which releases the locks it held")
        elif ran_on is None:
            what = (f"so the runner ended its session (pg_terminate_backend) {seconds_text(GRACE)} later, which "
                    "released the locks it held")
        else:
            what = f"it ran on {seconds_text(ran_on)} past the cancel" + (
                " (the lock probe was blind: it could not end the session)" if blind else "")
            if committed:
                what += ", and COMMITTED (autocommit), past the try's bound"
        super().__init__(f"did not end when the runner cancelled it at the try's bound ({_CATCHES}): {what}")


def _progress(statements, done: int, then: str) -> str:
    from migrator.postgres.errors import progress

    return progress(statements, done, then)
