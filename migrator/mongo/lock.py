"""One runner at a time: an atomic lock document with an owner and an expiry.

Taking it is one insert of a fixed _id (atomic on MongoDB and DocumentDB); an expired lock, left
by a runner that died, is taken over with one conditional update. It is renewed before each
patch and released on exit.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

from migrator.errors import LOCKED, MigratorError
from migrator.mongo.log import utcnow

COLLECTION = "applied_patches_lock"
LOCK_ID = "mongo-patches"
TTL = timedelta(minutes=15)


class Lock:
    def __init__(self, db):
        self.collection = db[COLLECTION]
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def try_take(self) -> bool:
        from pymongo import ReturnDocument
        from pymongo.errors import DuplicateKeyError

        now = utcnow()
        fields = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "since": now, "expires": now + TTL}
        try:
            self.collection.insert_one({"_id": LOCK_ID, **fields})
            return True
        except DuplicateKeyError:
            taken = self.collection.find_one_and_update(
                {"_id": LOCK_ID, "expires": {"$lt": now}}, {"$set": fields}, return_document=ReturnDocument.AFTER)
            return taken is not None and taken["owner"] == self.owner

    def renew(self) -> None:
        self.collection.update_one({"_id": LOCK_ID, "owner": self.owner}, {"$set": {"expires": utcnow() + TTL}})

    def release(self) -> None:
        self.collection.delete_one({"_id": LOCK_ID, "owner": self.owner})

    def holder(self) -> dict | None:
        return self.collection.find_one({"_id": LOCK_ID})


@contextmanager
def held(db, where: str, wait: float, poll: float = 0.5) -> Iterator[Lock]:
    lock = Lock(db)
    deadline = time.monotonic() + wait
    while not lock.try_take():
        if time.monotonic() >= deadline:
            holder = lock.holder() or {}
            since = holder.get("since")
            raise MigratorError(
                f"the patch lock on {where} is held by {holder.get('host', '?')} pid {holder.get('pid', '?')} "
                f"since {since:%Y-%m-%d %H:%M:%S} UTC (waited {wait:g} s); wait for it to finish, or if that runner "
                f"died the lock expires {TTL.total_seconds() / 60:g} min after it was last renewed" if since else
                f"the patch lock on {where} is held by another runner (waited {wait:g} s); wait for it to finish",
                LOCKED,
            )
        time.sleep(poll)
    try:
        yield lock
    finally:
        lock.release()
