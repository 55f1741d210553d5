"""SIGTERM cancels the statement a migration is running, instead of waiting for it to end.

Python runs a signal handler only between bytecodes, and while a statement runs the main thread is
inside libpq. The C-level handler still writes the signal's number to the wakeup fd: a thread reads
it and sends the server a cancel request for the migration's session (connection.cancel()), but only
while the migration's own statements run (interrupt.is_live(): never the bookkeeping). The statement
ends at once, and the runner's SIGTERM handler (interrupt.py) stops the run in order, as it does
between statements.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from migrator import interrupt


@contextmanager
def on_sigterm(session: Callable[[], object]) -> Iterator[None]:
    """For the block, SIGTERM cancels what `session()` (a psycopg2 connection, or None) is running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end)

    def watch() -> None:
        while data := os.read(read_end, 64):
            connection = session()
            if signal.SIGTERM in data and connection is not None and not connection.closed and interrupt.is_live():
                connection.cancel()

    thread = threading.Thread(target=watch, name="cancel-on-sigterm", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        os.close(write_end)  # the thread reads the end of the pipe
        thread.join(timeout=5)
        os.close(read_end)
