"""What a running migration is doing, read from a second, read-only connection while it runs.

The migration's session is followed by its pid (the backend hands each migration session to the
watcher). Once a statement has run for FIRST_AFTER seconds, a line says how long, the phase and
percentage of an index build (pg_stat_progress_create_index) or of VACUUM, CLUSTER, ANALYZE and COPY
(their pg_stat_progress_* views), and, while it waits on a lock, who holds that lock (postgres.sessions:
pid, application_name, user, client address, state, the lock; its query only with --show-blocker-query,
without literals), so the operator knows what to end. On a
terminal the line is rewritten every POLL seconds; in a log a timestamped line every LOG_EVERY seconds.
The watcher never stops a migration: if it cannot read, it says so once and goes quiet. Its connection
resolves functions in pg_catalog alone (connection.watcher_params), so relations are named by relname (a
regclass would print schema-qualified there).
"""

from __future__ import annotations

import contextvars
import threading
import time

from migrator import output
from migrator.errors import MigratorError
from migrator.postgres import failures, sessions
from migrator.postgres.sessions import duration

FIRST_AFTER = 3.0  # seconds a statement runs before it is reported
POLL = 1.0
MIN_WAIT = 0.02  # (a look due now still waits this long: never a busy loop)
LOG_EVERY = 5.0  # a log, unlike a terminal, gets a line this often
APPLICATION_NAME = "hcm-db-migrations watcher"

_ACTIVITY = """
SELECT state, extract(epoch FROM clock_timestamp() - query_start), wait_event_type, query_start, query
FROM pg_catalog.pg_stat_activity WHERE pid = %s
"""
# (view, what runs, phase, done, total, unit, relation): the progress views PostgreSQL has.
_PROGRESS = [
    ("pg_stat_progress_create_index", "command", "blocks_done", "blocks_total", "tuples_done", "tuples_total"),
    ("pg_stat_progress_cluster", "command", "heap_blks_scanned", "heap_blks_total", "heap_tuples_written", "NULL"),
    ("pg_stat_progress_vacuum", "'VACUUM'", "heap_blks_scanned", "heap_blks_total", "NULL", "NULL"),
    ("pg_stat_progress_analyze", "'ANALYZE'", "sample_blks_scanned", "sample_blks_total", "NULL", "NULL"),
]


# A CONCURRENTLY build's wait for older transactions: the pid it waits for now (no query text).
_SNAPSHOT_WAIT = """
SELECT p.command, (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = p.relid), p.phase, p.lockers_done,
       p.lockers_total, p.current_locker_pid,
       b.application_name, b.usename, b.state, extract(epoch FROM clock_timestamp() - b.state_change)
FROM pg_catalog.pg_stat_progress_create_index p
LEFT JOIN pg_catalog.pg_stat_activity b ON b.pid = p.current_locker_pid
WHERE p.pid = %s AND p.phase LIKE 'waiting for%%'
"""


class Watcher:
    """Follows one migration session at a time (follow()), reporting from its own thread.

    Its connection is opened only once a migration has run FIRST_AFTER seconds (after the migration's
    own session, so it never takes a connection slot the migration needs) and closed when the next
    migration starts (`label`); when it cannot connect, one note says so and the run stays quiet."""

    def __init__(self, params: dict, show: bool = True, show_query: bool = False):
        self.params = params  # psycopg2.connect() keywords
        self.show = show  # False (--quiet): no progress, but SIGTERM still cancels the running statement
        self.show_query = show_query  # --show-blocker-query: a blocker's query, without its literals
        self._session = None  # the migration's connection
        self._label = ""  # the migration running now
        self._pid: int | None = None
        self._server = None  # the followed session's server_session.ServerSession
        self._since = 0.0  # when the followed session started
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the side connection: the thread polls it, the main thread closes it
        self._thread: threading.Thread | None = None
        self._conn = None
        self._gave_up = False
        self._shown: tuple | None = None  # (pid, query_start) of the statement last reported
        self._last = 0.0
        self._live = False
        self.last_wait: tuple[str, str] | None = None  # (the statement's text, what it waited for): waited()
        self._query = ""
        self._first_in: float | None = None  # seconds until the running statement's first look (poll)

    @property
    def label(self) -> str:
        return self._label

    @label.setter
    def label(self, value: str) -> None:
        """A migration starts (before its session opens): the side connection of the previous one goes."""
        self._label, self._pid, self._session, self.last_wait = value, None, None, None
        self._let_go()
        self._end_line()

    def follow(self, connection) -> None:
        """The migration session that runs next (called with its connection when yoyo opens it)."""
        from migrator import server_session

        self._server = server_session.of(connection)  # (the server's pid: a pooler hands the client one of its own)
        self._session, self._pid, self._since = connection, self._server.pid, time.monotonic()
        self.last_wait = None

    def waited(self, statement_text: str) -> str | None:
        """What the followed session's statement `statement_text` was last seen waiting for (a lock and its holders,
        or a CONCURRENTLY build's older transaction), in words; None if it was not seen waiting (or ran under
        FIRST_AFTER: not looked at). For the line of a statement statement_timeout ended (errors.py)."""
        wait = self.last_wait
        if wait is None or not wait[0] or not statement_text.strip().startswith(wait[0]):
            return None
        return wait[1]

    def end_cut_off(self, in_transaction: bool) -> str | None:
        """The followed session, if a silent path cut it off (failures.shut cut the client's side): ended on the
        server, and what became of it (cancel.end_session); None: it was not cut off."""
        from migrator.postgres import cancel, failures

        session, pid = self._session, self._pid
        if session is None or pid is None or not failures.was_cut_off(session):
            return None
        return cancel.end_session(self.params, self._server, self._where(), in_transaction)

    def _where(self) -> str:
        return f"{self.params.get('host')}:{self.params.get('port')}"

    def __enter__(self) -> "Watcher":
        from contextlib import ExitStack

        from migrator.postgres import cancel

        self._cancelling = ExitStack()
        self._cancelling.enter_context(cancel.on_sigterm(lambda: self._session, lambda _: cancel.by_pid(
            self.params, self._server, self._where())))
        if self.show:
            run = contextvars.copy_context().run  # its events keep the part's fields (a tenant's schema)
            self._thread = threading.Thread(target=run, args=(self._run,), name="migration-watcher", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._cancelling.close()
        self._stop.set()
        self._let_go(failures.STOPPING)  # (first: a poll stuck on a silent path would hold the join)
        if self._thread:
            self._thread.join(timeout=failures.LET_GO)
        self._end_line()

    def _let_go(self, wait: float = failures.LET_GO) -> None:
        """The side connection closed, never waiting long behind a poll a silent path holds in libpq (its lock):
        past `wait` its socket is shut from outside, which ends the poll (its thread then closes it)."""
        if not self._lock.acquire(timeout=wait):
            if (conn := self._conn) is not None:
                failures.shut(conn)
            if not self._lock.acquire(timeout=failures.LET_GO):  # (left to its thread: it closes it as it fails)
                return
        try:
            self._close()
        finally:
            self._lock.release()

    def _close(self) -> None:
        if self._conn is not None:
            failures.close(self._conn)  # (after a shut of it: _let_go)
            self._conn = None

    def _connected(self) -> bool:
        """The side connection, opened now if a statement has run long enough; False: stay quiet."""
        import psycopg2

        if self._conn is not None:
            return True
        if self._gave_up or self._stop.is_set() or self._pid is None or time.monotonic() - self._since < FIRST_AFTER:
            return False
        try:
            self._conn = failures.side_connection(self.params)
            self._conn.autocommit = True
        except psycopg2.Error as exc:
            self._gave_up = True
            output.note(f"note: no live progress: the watcher cannot connect ({output.one_line(str(exc))})")
            return False
        return True

    def _run(self) -> None:
        import psycopg2

        while not self._stop.wait(self._next_look()):
            with self._lock:
                try:
                    if self._connected():
                        self.poll()
                except (psycopg2.Error, MigratorError) as exc:  # (MigratorError: its read bound, a silent path)
                    if self._pid is not None and not self._stop.is_set():
                        output.note(f"note: live progress stopped: {output.one_line(str(exc))}")
                    self._gave_up = True
                    self._close()
                    return

    def _next_look(self) -> float:
        """Seconds to the next look: POLL, or less when FIRST_AFTER comes sooner (a statement's first look, or the
        connection's opening). Every POLL alone, the first look came up to POLL late (at 4 s, not 3 s): a
        statement_timeout ending a lock wait in between left no look to name its holder by."""
        if self._conn is None:
            if self._pid is None or self._gave_up:
                return POLL
            return min(POLL, max(MIN_WAIT, FIRST_AFTER - (time.monotonic() - self._since)))
        return min(POLL, max(MIN_WAIT, self._first_in)) if self._first_in is not None else POLL

    def poll(self) -> None:
        pid = self._pid
        self._first_in = None
        if pid is None:
            return
        with self._conn.cursor() as cur:
            cur.execute(_ACTIVITY, (pid,))
            row = cur.fetchone()
            if row is None or row[0] != "active" or row[1] is None or row[1] < FIRST_AFTER:
                if row is not None and row[0] == "active" and row[1] is not None:  # (its first look: at FIRST_AFTER)
                    self._first_in = FIRST_AFTER - float(row[1])
                self._end_line()
                return
            state, elapsed, wait_type, started, query = row
            now = time.monotonic()
            new = self._shown != (pid, started)
            # (a lock wait is read every poll even when not said, so a statement_timeout names its last holder)
            say = new or self._live_terminal() or now - self._last >= LOG_EVERY
            if not say and wait_type != "Lock":
                return
            if say:
                self._shown, self._last = (pid, started), now
            statement = output.scrub(output.one_line(query or "")).rstrip(";")
            fields = {"migration": self.label, "pid": pid, "elapsed_s": round(float(elapsed), 1),
                      "statement": statement[:200]}
            text = f"{self.label}: running for {duration(elapsed)}: {statement[:80]}"
            self._query = (query or "").strip()[:900]
            if wait_type == "Lock" and self._say_snapshot_wait(cur, pid, text, fields, say):
                return
            if wait_type == "Lock":
                self._say_lock_wait(cur, pid, text, fields, say)
                return
            step = self._progress(cur, pid)
            if step:
                fields.update(step)
                text += f"; {step['command']} {step['phase']}" + (f" {step['percent']}%" if step.get("percent") is not None else "")
            self._say(text, "progress", fields)

    def _progress(self, cur, pid: int) -> dict | None:
        for view, command, done, total, rows_done, rows_total in _PROGRESS:
            cur.execute(f"SELECT {command}, phase, {done}, {total}, {rows_done}, {rows_total}, "
                        "(SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = relid) "
                        f"FROM pg_catalog.{view} WHERE pid = %s", (pid,))
            row = cur.fetchone()
            if row:
                command, phase, done_n, total_n, rows_n, rows_total_n, relation = row
                percent = None
                if total_n:
                    percent = round(100.0 * done_n / total_n, 1)
                elif rows_total_n:
                    percent = round(100.0 * rows_n / rows_total_n, 1)
                return {"command": f"{command} on {output.visible(str(relation))}", "phase": phase, "percent": percent}
        return None

    def _say_lock_wait(self, cur, pid: int, text: str, fields: dict, say: bool = True) -> None:
        holders = sessions.blockers(cur, pid, self.show_query)
        found = sessions.waiting_for(cur, pid, holders)
        what = found or "a lock"
        wait = sessions.wait_words(what, holders)
        if (found and holders) or not (self.last_wait and self.last_wait[0] == self._query):
            self.last_wait = (self._query, wait)  # (a look that saw less keeps what an earlier one saw)
        fields.update(waiting_for=what, held_by=holders)
        if say:
            self._say(f"{text}; {wait}", "lock_wait", fields)

    def _say_snapshot_wait(self, cur, pid: int, text: str, fields: dict, say: bool = True) -> bool:
        """A CONCURRENTLY build waiting for older transactions (its 'waiting for ...' phases): which one it waits
        for now, and whose it is (no query text). It blocks no application query. False: not such a wait."""
        cur.execute(_SNAPSHOT_WAIT, (pid,))
        row = cur.fetchone()
        if row is None:
            return False
        command, relation, phase, done, total, locker, app, user, state, age = row
        text += f"; {command} on {output.visible(str(relation))} {phase} ({done} of {total} done)"
        start = len(text)  # (what it waits for, from here: last_wait)
        holder = None
        if locker:
            holder = {"pid": locker, "application_name": output.scrub(app or ""), "user": user, "state": state,
                      "state_for_s": round(float(age or 0))}
            who = (f"pid {locker} (application_name {sessions.named(holder['application_name'])}, user "
                   f"{output.role(user)}, {state} for {duration(holder['state_for_s'])})" if state is not None
                   else f"pid {locker} (another role's session)")
            text += (f", now the transaction of {who}; the build blocks no application query"
                     f" -- to end it: SELECT pg_terminate_backend({locker})")
        elif locker == 0 and (held := sessions.prepared_here(cur)):  # pid 0: a prepared transaction (no session)
            holder = held[0]
            text += (f", now (most likely) {sessions.describe(holder)}; the build blocks no application query -- "
                     f"{sessions.ending(holder)}")
        fields.update(command=f"{command} on {relation}", phase=phase, waiting_for_pid=locker, held_by=holder)
        self.last_wait = (self._query, f"{phase} ({done} of {total} done){text[start:]}")
        if say:
            self._say(text, "snapshot_wait", fields)
        return True

    def _live_terminal(self) -> bool:
        import sys

        return not output.json_format() and sys.stderr.isatty()

    def _say(self, text: str, kind: str, fields: dict) -> None:
        self._live = self._live_terminal()
        schema = output.event_context().get("schema")  # a tenant's part: its lines say which, as its others do
        output.progress(f"[{schema}] {text}" if schema else text, live=True, kind=kind, **fields)

    def _end_line(self) -> None:
        if self._live:
            output.progress_done()
            self._live = False

