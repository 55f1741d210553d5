"""What a patch's processes leave behind: processes started in a session of their own (a daemon) escape the kill of
the patch's process group, and would outlive the run (a dry run's sealed ones too, past --patch-timeout).

While a patch runs, the runner is a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): whatever the patch's processes
orphan is re-parented to the runner instead of init. `Orphans.end()`, once the patch's own process is dead, SIGKILLs
and reaps every child of the runner that was not there before the patch, until none is left (a daemon's children are
re-parented in turn). The runner starts nothing else while a patch runs, so every new child then is the patch's.
Elsewhere (not Linux) nothing is done, and the docs say so. A runner killed by SIGKILL cannot do this: its orphans
go to init.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
ROUNDS = 1000  # each round kills one generation; a patch would need that many nested daemons to outlast it


def _prctl(value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children() -> set[int]:
    """This process's children, from /proc (their parent is the 4th field of stat, after the name in parentheses)."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.add(int(entry))
    return found


class Orphans:
    """Made just before a patch's process starts; end() after it is dead (and reaped)."""

    def __init__(self):
        self.on = sys.platform.startswith("linux") and _prctl(1)
        self.before = children() if self.on else set()  # the runner's own (a server it started): never touched

    def end(self) -> None:
        if not self.on:
            return
        try:
            for _ in range(ROUNDS):
                left = children() - self.before
                if not left:
                    break
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                    except (ProcessLookupError, ChildProcessError):
                        pass  # reaped by someone else meanwhile
        finally:
            _prctl(0)
            self.on = False
