"""One runner at a time: an atomic lock document with an owner and an expiry, kept by a heartbeat.

Taking it is one insert of a fixed _id (a duplicate key for everyone else: atomic on MongoDB, DocumentDB
and FerretDB); an expired lock, left by a runner that died, is taken over by the one runner whose
claim for that holder and expiry (another fixed _id) is inserted first. While held, a thread renews
it every TTL/4; a renewal that matches nothing means another runner took it over (this one
stalled longer than the TTL): the lock is lost, and `check()` stops the runner before its next
write. A patch running then (`stopping()`) is stopped at once: the heartbeat signals the main thread
(STOP_SIGNAL), whose handler raises `Lost` there, so the patch's process group is killed as on SIGTERM.
Times are the server's clock (this client's, shifted by the offset `hello` shows), so a runner
whose clock runs ahead does not take over a live lock, nor one behind keep a dead one.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Iterator

from migrator import output, whoami
from migrator.errors import LOCKED, MigratorError, words
from migrator.mongo.log import utcnow

COLLECTION = "applied_patches_lock"
LOCK_ID = "mongo-patches"
TTL = timedelta(minutes=2)  # a dead runner's lock is taken over this long after its last heartbeat
CLAIMS_KEPT = timedelta(days=1)  # a killed runner's takeover claim (released ones are removed) is removed after this
STOP_SIGNAL = signal.SIGUSR1  # the heartbeat's word to the main thread: the lock is lost, stop the running patch


class Lost(BaseException):
    """Raised in the main thread while a patch runs (`stopping()`), the moment the heartbeat finds the lock lost."""


class Lock:
    def __init__(self, db, where: str = ""):
        from pymongo import ReadPreference

        self.collection = db.get_collection(COLLECTION, read_preference=ReadPreference.PRIMARY)
        self.where = where or db.name
        self.owner = f"{whoami.host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.skew = server_skew(db)  # the server's clock minus this one's
        self.lost_at: str | None = None  # why the lock was lost, once it is
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watching = False  # a patch runs: the heartbeat stops it on a loss (under _mutex, with the handler's state)
        self._mutex = threading.Lock()

    def now(self) -> datetime:
        return utcnow() + self.skew

    def try_take(self) -> bool:
        now = self.now()
        fields = {"owner": self.owner, "host": whoami.host(), "pid": os.getpid(), "since": now,
                  "expires": now + TTL}
        if self._insert({"_id": LOCK_ID, **fields}):
            return True
        # Taken: an expired lock is taken over by whoever first inserts the claim for that very holder and
        # expiry (a duplicate key for every other runner), never by a conditional update. FerretDB runs
        # findAndModify and update as a read, then a write by _id, so under a race several runners "won"
        # find_one_and_update({expires: {$lt: now}}); a unique key is atomic on every server.
        current = self.holder() or {}
        expires = current.get("expires")
        if not isinstance(expires, datetime):  # gone meanwhile (the next try inserts), or no expiry: never taken over
            return False
        expires = expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)
        if expires >= now:
            return False
        claim = f"takeover:{current.get('owner')}:{expires.isoformat()}"
        if not self._insert({"_id": claim, "by": self.owner, "at": now}):
            return False
        self.collection.delete_one({"_id": LOCK_ID, "owner": current.get("owner")})
        self.collection.delete_many({"_id": {"$regex": "^takeover:"}, "at": {"$lt": now - CLAIMS_KEPT}})
        return self._insert({"_id": LOCK_ID, **fields})  # a runner that found it free meanwhile wins instead

    def _insert(self, document: dict) -> bool:
        from pymongo.errors import DuplicateKeyError

        try:
            self.collection.insert_one(document)
            return True
        except DuplicateKeyError:
            return False

    def renew(self) -> bool:
        """Push the expiry out; False (and the lock marked lost) when this runner no longer owns it."""
        if self.lost_at is None:
            done = self.collection.update_one({"_id": LOCK_ID, "owner": self.owner}, {"$set": {"expires": self.now() + TTL}})
            if done.matched_count == 0:
                holder = self.holder() or {}
                self.lost_at = (f"{utcnow():%Y-%m-%d %H:%M:%S} UTC, now held by {holder.get('host', 'nobody')} "
                                f"pid {holder.get('pid', '?')}" if holder else f"{utcnow():%Y-%m-%d %H:%M:%S} UTC, removed")
        return self.lost_at is None

    def check(self) -> None:
        """Before a write this runner controls: still ours (renewed now), or stop saying so."""
        if not self.renew():
            raise MigratorError(
                f"lost the patch lock on {self.where} ({self.lost_at}): this runner stops here, writing no record and "
                "starting no patch; "
                f"this runner stalled longer than the lock's TTL ({TTL.total_seconds():g} s) and another runner took "
                "it over, or the lock document was removed; run `runner.py mongo status` to see what was settled",
                LOCKED)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost_at is None:
            self.collection.delete_one({"_id": LOCK_ID, "owner": self.owner})
            self.collection.delete_many({"_id": {"$regex": "^takeover:"}, "by": self.owner})  # kept while held

    def holder(self) -> dict | None:
        return self.collection.find_one({"_id": LOCK_ID})

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="mongo-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = TTL.total_seconds() / 4
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    return self._lost()
                last_ok = time.monotonic()
            except Exception as exc:  # the server is away: lost once the lock may have expired
                if time.monotonic() - last_ok >= TTL.total_seconds():
                    self.lost_at = (f"not renewed for {TTL.total_seconds():g} s: the server did not answer "
                                    f"({_reason(exc)})")
                    return self._lost()

    def _lost(self) -> None:
        """A patch running now would go on writing under a lock another runner may hold: its stop, at once."""
        with self._mutex:
            if self._watching:
                signal.pthread_kill(threading.main_thread().ident, STOP_SIGNAL)

    def _on_signal(self, _signum, _frame) -> None:
        from migrator import interrupt

        # (not while a patch's end is being handled: its cleanup and record come first, then check() says it)
        if self._watching and self.lost_at is not None and (interrupt.is_live() or not interrupt.guarded()):
            raise Lost(self.lost_at)

    @contextmanager
    def stopping(self) -> Iterator[None]:
        """While the block (a patch's run) goes on, a loss of the lock raises `Lost` in it at once (main thread only:
        signals reach it alone; elsewhere the loss is said after the patch returns)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(STOP_SIGNAL, self._on_signal)
        with self._mutex:
            self._watching = True
        try:
            if self.lost_at is not None:
                raise Lost(self.lost_at)
            yield
        finally:
            with self._mutex:  # (the heartbeat signals only while this holds: never to the handler restored below)
                self._watching = False
            signal.signal(STOP_SIGNAL, previous)


def _reason(exc: Exception) -> str:
    """What the driver said, first line (`_OperationCancelled`: the renewal was abandoned when the pool reset
    after the server went away)."""
    return (output.scrub(words(exc)).splitlines() or [""])[0][:200]


def server_skew(db) -> timedelta:
    """The server's clock (hello's localTime, on MongoDB, DocumentDB and FerretDB; FerretDB 1.24 has no $$NOW and no
    pipeline updates) minus this client's; zero when the server does not say (mongomock)."""
    from pymongo.errors import PyMongoError

    before = utcnow()
    try:
        at = db.client.admin.command("hello").get("localTime")
    except (PyMongoError, NotImplementedError, AttributeError):
        return timedelta(0)
    if not isinstance(at, datetime):
        return timedelta(0)
    after = utcnow()
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return at - (before + (after - before) / 2)


def server_now(db) -> datetime:
    return utcnow() + server_skew(db)


@contextmanager
def held(db, where: str, wait: float, poll: float = 0.2) -> Iterator[Lock]:
    """The lock, renewed by a heartbeat until the block ends."""
    lock = Lock(db, where)
    deadline = time.monotonic() + wait
    while not lock.try_take():
        if time.monotonic() >= deadline:
            raise MigratorError(_held_by(lock.holder() or {}, where, wait), LOCKED)
        time.sleep(poll)
    lock.start_heartbeat()
    try:
        yield lock
    except BaseException:
        from pymongo.errors import PyMongoError

        try:  # the server may be gone: the error that stopped the run is the one to say (the lock then expires)
            lock.release()
        except PyMongoError:
            pass
        raise
    lock.release()


def _held_by(holder: dict, where: str, wait: float) -> str:
    since = holder.get("since")
    if not since:
        return f"the patch lock on {where} is held by another runner (waited {wait:g} s); wait for it to finish"
    held = (f"the patch lock on {where} is held by {holder.get('host', '?')} pid {holder.get('pid', '?')} "
            f"since {since:%Y-%m-%d %H:%M:%S} UTC (waited {wait:g} s); ")
    if exited(holder):
        # killed, or stopped by an error that kept it from the server (a lost connection): either way it is gone
        return held + (f"pid {holder['pid']} no longer exists on this host (that runner ended without releasing it): "
                       f"the lock expires {TTL.total_seconds():g} s after its last heartbeat, then run again")
    return held + (f"wait for it to finish, or if that runner died the lock expires {TTL.total_seconds():g} s after "
                   "its last heartbeat")


def alive(holder: dict) -> bool:
    """A runner on this very host whose pid still exists: it may be writing still (it stalled, then went on). Not this
    process's own pid: a container with a fixed hostname starts every run as the same PID 1."""
    pid = holder.get("pid")
    return (holder.get("host") == whoami.host() and isinstance(pid, int) and 0 < pid != os.getpid()
            and not exited(holder))


def exited(holder: dict) -> bool:
    """A runner on this very host whose pid is gone (killed, or the server went away under it): not running now,
    though its lock or record says so. On another host nothing can be told."""
    pid = holder.get("pid")
    if holder.get("host") != whoami.host() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False
