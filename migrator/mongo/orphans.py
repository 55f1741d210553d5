"""What a patch's processes leave behind: processes started in a session of their own (a daemon) escape the kill of
the patch's process group, and would outlive the run (a dry run's sealed ones too, past --patch-timeout).

While a patch runs, the runner is a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): whatever the patch's processes
orphan is re-parented to the runner instead of init. While it runs, a thread reaps every such orphan that has exited
(a zombie holds a pid: a patch that forks and lets the parent exit, or runs `cmd &` per document, would exhaust the
host's pid space before the patch ends); the patch's own process is left to its Popen. `Orphans.end()`, once the
patch's own process is dead, SIGKILLs and reaps every child of the runner that was not there before the patch, until
none is left (a daemon's children are re-parented in turn). The runner starts nothing else while a patch runs, so
every new child then is the patch's. Elsewhere (not Linux) nothing is done, and the docs say so. A runner killed by
SIGKILL cannot do this: its orphans go to init.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_CHILD_SUBREAPER = 36
ROUNDS = 1000  # each round kills one generation; a patch would need that many nested daemons to outlast it
REAP_EVERY = 0.02  # seconds between two looks for exited orphans: a fast forker leaves a few dozen zombies at most


def _prctl(value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children() -> set[int]:
    """This process's children, from /proc/self/task/*/children (every thread's), else from every process's stat."""
    if not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):  # a kernel without CONFIG_PROC_CHILDREN
        return _scanned()
    found = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children", "rb") as f:
                found.update(map(int, f.read().split()))
        except OSError:
            pass  # that thread ended meanwhile
    return found


def _scanned() -> set[int]:
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


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for its Popen has)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X")


class Orphans:
    """Made just before a patch's process starts; end() after it is dead (and reaped)."""

    def __init__(self):
        self.on = sys.platform.startswith("linux") and _prctl(1)
        self.before = children() if self.on else set()  # the runner's own (a server it started): never touched
        self._stop, self._reaper = threading.Event(), None

    def reap(self, patch_pid: int) -> None:
        """Reap exited orphans from now until end(); `patch_pid`, the patch's own process, is left to its Popen."""
        if self.on:
            known = self.before | {patch_pid}
            self._reaper = threading.Thread(target=self._reap, args=(known, patch_pid), daemon=True, name="hcm-reaper")
            self._reaper.start()

    def _reap(self, known: set[int], patch_pid: int) -> None:
        while not self._stop.wait(REAP_EVERY) and _running(patch_pid):  # never outlives the patch's process: a
            for pid in children() - known:  # child the runner starts after it (mongosh, a test's) is not an orphan
                try:
                    os.waitpid(pid, os.WNOHANG)  # a zombie is reaped; a live one is left as it is
                except ChildProcessError:
                    pass  # reaped by end() meanwhile

    def end(self) -> None:
        if not self.on:
            return
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join()
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
