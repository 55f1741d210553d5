"""Stress psycopg2's cross-thread calls against a real server: does another thread's cancel() or fileno()+shutdown
racing close() corrupt memory, or cut someone else's connection? (the segfault of a fresh-clone run, issue segv)

Per round, a connection runs pg_sleep in one thread; a second thread cancels it and shuts its socket down (what
SIGTERM's cancel and cut-off and the read bound's timer do) while the main thread closes it; a fourth thread keeps
connecting and querying all along (the crashed test's watch thread). `raw` makes the calls as the runner did before
(connection.cancel(), os.dup(connection.fileno()), connection.close()); `guarded` through failures.cancel/shut/close.
It counts the fourth thread's connections cut (a shutdown that landed on its socket: the closed connection's
descriptor number, reused) and how the statements ended. Run it with the heap checks on, e.g.

    MALLOC_CHECK_=3 MALLOC_PERTURB_=165 PYTHONMALLOC=debug .venv/bin/python bench/thread_races.py raw 600 \
        "host=/tmp/pg port=5432 dbname=postgres user=postgres"

(glibc or Python aborts on a heap it finds corrupted; valgrind serialises the threads and so hides the race).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402

from migrator.postgres import failures  # noqa: E402


def raw_touch(conn) -> None:
    conn.cancel()
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def guarded_touch(conn) -> None:
    failures.cancel(conn)
    failures.shut(conn)


def main(mode: str, rounds: int, dsn: str) -> dict:
    touch, close = (raw_touch, psycopg2.extensions.connection.close) if mode == "raw" else (guarded_touch,
                                                                                           failures.close)
    stop = threading.Event()
    count = {"connects": 0, "cut": 0, "statements": {}}

    def connector() -> None:
        while not stop.is_set():
            try:
                conn = psycopg2.connect(dsn)
                conn.cursor().execute("SELECT 1")
                conn.close()
                count["connects"] += 1
            except psycopg2.Error:
                count["cut"] += 1

    threading.Thread(target=connector, daemon=True).start()
    for i in range(rounds):
        conn = psycopg2.connect(dsn)

        def run() -> None:
            try:
                conn.cursor().execute("SELECT pg_catalog.pg_sleep(5)")
                ended = "finished"
            except psycopg2.Error as exc:
                ended = type(exc).__name__
            count["statements"][ended] = count["statements"].get(ended, 0) + 1

        def poke() -> None:
            for _ in range(50):
                try:
                    touch(conn)
                except (psycopg2.Error, OSError):
                    return

        threads = [threading.Thread(target=run), threading.Thread(target=poke)]
        for thread in threads:
            thread.start()
        time.sleep(0.002 * (i % 5))
        close(conn)
        for thread in threads:
            thread.join()
    stop.set()
    return count


if __name__ == "__main__":
    print(sys.argv[1], sys.argv[2], main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
